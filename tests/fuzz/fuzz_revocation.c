/* fuzz_revocation: the token revocation record every host reads from Redis (host/revocation.c,
 * written by services/user/revocations.lua) on arbitrary bytes — a Redis value is input too.
 * Properties: a record parses only into non-negative times and a role that fits; written
 * back in the user service's format it parses to the same record; refusal is monotonic (a
 * token refused at iat is refused at every earlier iat) and a role is only ever given to a
 * token older than role_s. */
#include <inttypes.h>

#include "../../host/revocation.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 8) return 0;
    double iat;
    memcpy(&iat, data, sizeof iat);   /* any double, NaN and infinities included */
    data += 8;
    size -= 8;
    char *s = fuzz_strndup(data, size);
    revocation_t r;
    if (revocation_parse(s, size, &r) == 0) {
        FUZZ_ASSERT(r.revoked_s >= 0 && r.role_s >= 0);
        FUZZ_ASSERT(memchr(r.role, 0, sizeof r.role) != NULL);
        char again[96];
        int n = snprintf(again, sizeof again, "%" PRId64 " %" PRId64 " %s", r.revoked_s, r.role_s, r.role[0] ? r.role : "-");
        revocation_t r2;
        FUZZ_ASSERT(n > 0 && (size_t)n < sizeof again && revocation_parse(again, (size_t)n, &r2) == 0);
        FUZZ_ASSERT(r2.revoked_s == r.revoked_s && r2.role_s == r.role_s && strcmp(r2.role, r.role) == 0);
        const char *role = NULL;
        int refused = revocation_refuses(&r, iat, &role);
        if (refused) FUZZ_ASSERT(revocation_refuses(&r, iat - 1, NULL) == 1 || iat - 1 == iat);
        else if (role) FUZZ_ASSERT(iat < (double)r.role_s && role == r.role);
    }
    free(s);
    return 0;
}
