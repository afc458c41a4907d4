/* fuzz_stripe_signature: the Stripe-Signature header check (bindings/stripe.c) on arbitrary
 * bytes: "<header>\n<payload>", secret "whsec_fuzz", clock fixed at 1700000000, tolerance 300 s.
 * Property beside memory safety: it accepts exactly when the header has one well-formed t
 * within the tolerance and a v1 equal to HMAC-SHA256(secret, "<t>.<payload>") — recomputed here
 * independently (the seed corpus holds valid headers for the fuzzer to mutate). */
#include <openssl/hmac.h>

#include "../../bindings/stripe.h"
#include "fuzz.h"

#define SECRET "whsec_fuzz"
#define NOW 1700000000L

/* Whether item [p, e) (spaces trimmed) is "v1=<the HMAC for t>". */
static int v1_matches(const char *p, const char *e, const char *t, size_t tn, const uint8_t *pl, size_t pn)
{
    while (p < e && (*p == ' ' || *p == '\t')) p++;
    while (e > p && (e[-1] == ' ' || e[-1] == '\t')) e--;
    if (e - p != 67 || memcmp(p, "v1=", 3) != 0) return 0;
    size_t n = tn + 1 + pn;
    unsigned char *msg = malloc(n + 1), md[32];
    memcpy(msg, t, tn);
    msg[tn] = '.';
    memcpy(msg + tn + 1, pl, pn);
    unsigned int mdlen = 0;
    HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), msg, n, md, &mdlen);
    free(msg);
    char hex[65];
    for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", md[i]);
    return memcmp(p + 3, hex, 64) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t hn, pn;
    const uint8_t *payload;
    fuzz_split(data, size, '\n', &hn, &payload, &pn);
    char *header = fuzz_strndup(data, hn);
    const char *err = NULL;
    int rc = stripe_verify_signature((const char *)payload, pn, header, hn, SECRET, strlen(SECRET), 300, NOW, &err);
    FUZZ_ASSERT(rc == 0 || rc == -1);
    FUZZ_ASSERT(rc == 0 || err != NULL);
    if (rc == 0) {
        /* The one t (digits only, in tolerance) and a matching v1 must be there. */
        const char *t = NULL, *e = header + hn;
        size_t tn = 0;
        for (const char *p = header; p < e;) {
            const char *c = memchr(p, ',', (size_t)(e - p)), *ie = c ? c : e;
            const char *q = p;
            while (q < ie && (*q == ' ' || *q == '\t')) q++;
            if (ie - q >= 2 && q[0] == 't' && q[1] == '=') {
                FUZZ_ASSERT(t == NULL);
                t = q + 2;
                const char *te = ie;
                while (te > t && (te[-1] == ' ' || te[-1] == '\t')) te--;
                tn = (size_t)(te - t);
            }
            p = c ? c + 1 : e;
        }
        FUZZ_ASSERT(t != NULL && tn > 0 && tn <= 12);
        long ts = strtol(t, NULL, 10);
        FUZZ_ASSERT(ts >= NOW - 300 && ts <= NOW + 300);
        int found = 0;
        for (const char *p = header; p < e && !found;) {
            const char *c = memchr(p, ',', (size_t)(e - p)), *ie = c ? c : e;
            found = v1_matches(p, ie, t, tn, payload, pn);
            p = c ? c + 1 : e;
        }
        FUZZ_ASSERT(found);
    }
    free(header);
    return 0;
}
