/* fuzz_jwt: RS256 verification (core/jwt_token.c) and signing on arbitrary bytes. The first
 * byte picks a mode:
 *   0  the rest is a compact token, verified as a bearer token would be;
 *   1  the rest is "<JOSE header JSON>\n<claims JSON>", signed here with the key the keyset
 *      knows as "fuzz" — so the header and claims checks behind the signature are reached;
 *   2  the rest is claims JSON signed by jwt_token_sign and verified again.
 * Properties: nothing reads outside its buffers; an OK verification hands back claims that
 * are valid JSON inside the caller's buffer; a token jwt_token_sign made always passes the
 * header and signature checks (only the claims may refuse it). */
#include <openssl/evp.h>
#include <openssl/rsa.h>

#include "../../core/base64.h"
#include "../../core/json_reader.h"
#include "../../core/jwt_keys.h"
#include "fuzz.h"

static EVP_PKEY *key;

static void setup(void)
{
    unsetenv("JWT_PRIVATE_KEY_FILE");
    unsetenv("JWT_PUBLIC_KEY_FILE");
    unsetenv("JWT_PUBLIC_KEYS_DIR");
    unsetenv("JWKS_URL");
    unsetenv("JWT_ISSUER");
    unsetenv("JWT_AUDIENCE");
    if (jwt_keys_init() != 0) abort();
    key = EVP_RSA_gen(2048);
    if (!key || jwt_keys_add(key, "fuzz") != 0) abort();
}

/* Verify token[0, n) and check what an OK answer promises. */
static int verify(const char *token, size_t n, const char **err)
{
    char *claims = malloc(n + 1);
    size_t claims_len = 0;
    *err = NULL;
    int code = jwt_token_verify(token, n, NULL, NULL, claims, n + 1, &claims_len, err);
    if (code == JWT_TOKEN_OK) {
        FUZZ_ASSERT(claims_len <= n);
        FUZZ_ASSERT(json_reader_valid(claims, claims_len));
    } else {
        FUZZ_ASSERT(*err != NULL && claims_len == 0);
    }
    free(claims);
    return code;
}

/* "<b64url header>.<b64url claims>.<b64url RS256 signature>" of the two JSON texts. */
static char *sign_raw(const uint8_t *hdr, size_t hn, const uint8_t *cl, size_t cn, size_t *len)
{
    size_t cap = base64_encoded_len(hn, 1) + base64_encoded_len(cn, 1) + 512 + 4;
    char *out = malloc(cap);
    size_t n = base64_encode(out, hdr, hn, 1);
    out[n++] = '.';
    n += base64_encode(out + n, cl, cn, 1);
    unsigned char sig[512];
    size_t siglen = sizeof sig;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx || EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, key) != 1 ||
        EVP_DigestSign(ctx, sig, &siglen, (const unsigned char *)out, n) != 1)
        abort();
    EVP_MD_CTX_free(ctx);
    out[n++] = '.';
    n += base64_encode(out + n, sig, siglen, 1);
    *len = n;
    return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!key) setup();
    if (size < 1 || size > JWT_MAX_TOKEN) return 0;
    int mode = data[0] % 3;
    data++;
    size--;
    const char *err;
    if (mode == 0) {
        char *token = fuzz_strndup(data, size);
        verify(token, size, &err);
        free(token);
    } else if (mode == 1) {
        size_t hn, cn;
        const uint8_t *cl;
        fuzz_split(data, size, '\n', &hn, &cl, &cn);
        size_t n;
        char *token = sign_raw(data, hn, cl, cn, &n);
        verify(token, n, &err);
        free(token);
    } else {
        char *claims = fuzz_strndup(data, size);
        size_t cap = jwt_token_sign_cap(size);
        char *token = malloc(cap);
        long n = jwt_token_sign(key, "fuzz", claims, size, token, cap, &err);
        if (n >= 0) {
            FUZZ_ASSERT((size_t)n < cap);
            int code = verify(token, (size_t)n, &err);
            FUZZ_ASSERT(code != JWT_TOKEN_UNAVAILABLE);
            if (code != JWT_TOKEN_OK)   /* refused for its claims only, never for what we signed */
                FUZZ_ASSERT(strstr(err, "header") == NULL && strstr(err, "signature") == NULL &&
                            strstr(err, "malformed token") == NULL && strstr(err, "key") == NULL &&
                            strstr(err, "algorithm") == NULL);
        }
        free(token);
        free(claims);
    }
    return 0;
}
