/* fuzz_query_decode: what C decodes of a request target before Lua sees it — percent-decoding
 * (request_unescape, used for route parameters and by the query/form check), the UTF-8 check
 * on query strings (request_text_valid) and the gateway's path screening (gateway_route,
 * gateway_path_is_internal). Query and form *parsing* (splitting on & and =) is Lua
 * (host/lua/prelude.lua parse_query, scripts/services/user form parsing), not C.
 * Properties, each against a second, plain reading of the same bytes:
 *   - the decoded length never exceeds the input's, and plus_space only turns '+' into ' ';
 *   - request_text_valid(s) == utf8_valid(request_unescape(s));
 *   - the gateway refuses (GW_FORBIDDEN) exactly the paths whose once-decoded segments include
 *     "internal" (any case), "." or ".." (segments over 256 bytes excepted), and
 *     gateway_path_is_internal agrees on "internal". */
#include <strings.h>

#include "../../host/gateway.h"
#include "../../host/request.h"
#include "../../core/utf8.h"
#include "fuzz.h"

/* Which forbidden segment kinds the decoded path d[0, n) holds: 1 internal, 2 dot segment. */
static int decoded_segments(const char *d, size_t n)
{
    int found = 0;
    for (size_t i = 0; i <= n;) {
        const char *s = memchr(d + i, '/', n - i);
        size_t e = s ? (size_t)(s - d) : n, len = e - i;
        if (len == 8 && strncasecmp(d + i, "internal", 8) == 0) found |= 1;
        if ((len == 1 && d[i] == '.') || (len == 2 && d[i] == '.' && d[i + 1] == '.')) found |= 2;
        if (len > 256) found |= 4;
        i = e + 1;
    }
    return found;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *src = fuzz_strndup(data, size);
    char *dec = malloc(size + 1), *dec_plus = malloc(size + 1);
    size_t n = request_unescape(dec, src, size, 0);
    size_t np = request_unescape(dec_plus, src, size, 1);
    FUZZ_ASSERT(n <= size && np == n && dec[n] == 0);
    for (size_t i = 0; i < n; i++) FUZZ_ASSERT(dec_plus[i] == dec[i] || (dec[i] == '+' && dec_plus[i] == ' '));

    FUZZ_ASSERT(request_text_valid(src, size) == utf8_valid(dec, n));

    int kinds = decoded_segments(dec, n);
    int route = gateway_route(src, size);
    int internal = gateway_path_is_internal(src, size);
    if (!(kinds & 4)) {
        FUZZ_ASSERT(!!internal == !!(kinds & 1));
        if (size && src[0] == '/') FUZZ_ASSERT((route == GW_FORBIDDEN) == (kinds != 0));
    }
    if (kinds & 1) FUZZ_ASSERT(internal);
    free(src);
    free(dec);
    free(dec_plus);
    return 0;
}
