/* jwt_token: RS256 compact JWS signing and verification with OpenSSL and cached keys.
 *
 * Why not libjwt here: libjwt 1.10 parses the PEM key on every jwt_decode (too slow for every
 * request), lets the token header choose the algorithm (it accepts HS256 keyed with the RSA
 * public key PEM), reports alg "none" when decoding without a key, and checks no claims. So the
 * algorithm is pinned before any key is touched: a header whose alg is not exactly "RS256" is
 * refused, and the signature is only ever checked as RSASSA-PKCS1-v1_5 with SHA-256. */
#include "jwt_keys.h"

#include <openssl/err.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "base64.h"
#include "json_reader.h"

#define HEADER_MAX 1024   /* base64url characters of the JOSE header */
#define SIG_MAX 1368      /* base64url characters of an 8192-bit RSA signature */

/* ---- helpers --------------------------------------------------------------------------- */

const char *jwt_token_code_name(int code)
{
    return code == JWT_TOKEN_EXPIRED ? "expired" : code == JWT_TOKEN_UNAVAILABLE ? "unavailable" : "invalid";
}

int jwt_token_has_scope(const char *scopes, const char *want)
{
    size_t wl = strlen(want);
    for (const char *p = scopes; p && *p;) {
        while (*p == ' ') p++;
        size_t n = strcspn(p, " ");
        if (n == wl && n && memcmp(p, want, n) == 0) return 1;
        p += n;
    }
    return 0;
}

/* Whether the aud claim (a string or an array of strings) names want. */
static int aud_matches(json_span_t aud, const char *want)
{
    char s[256];
    json_iter_t it;
    json_span_t elem;
    if (json_reader_string(aud, s, sizeof s) == 0) return strcmp(s, want) == 0;
    if (json_reader_iter(aud, &it) != 0) return 0;
    while (json_reader_next(&it, &elem) == 1)
        if (json_reader_string(elem, s, sizeof s) == 0 && strcmp(s, want) == 0) return 1;
    return 0;
}

/* Whether typ names an access token (RFC 7519 §5.1 "JWT", RFC 9068 "at+jwt"; media types
 * compare case-insensitively, the "application/" prefix may be left out). Explicit typing
 * (RFC 8725 §3.11): a JWT of another kind (refresh, logout, DPoP proof …) is never an access token. */
static int access_token_type(const char *typ)
{
    if (strncasecmp(typ, "application/", 12) == 0) typ += 12;
    return strcasecmp(typ, "JWT") == 0 || strcasecmp(typ, "at+jwt") == 0;
}

/* Check the JOSE header: alg exactly RS256, members once each, an access-token typ, no crit,
 * a usable kid copied out. 0 or -1 + err. */
static int check_header(const char *b64, size_t n, char *kid, size_t kidlen, const char **err)
{
    char hdr[HEADER_MAX / 4 * 3 + 3], alg[16], typ[32];
    json_span_t v;
    long hn = n <= HEADER_MAX ? base64_decode(hdr, b64, n, 1) : -1;
    json_span_t obj = { hdr, hdr + (hn > 0 ? hn : 0) };
    if (hn <= 0 || !json_reader_valid(hdr, (size_t)hn)) { *err = "malformed token header"; return -1; }
    if (json_reader_member(obj, "alg", &v) != 0 || json_reader_string(v, alg, sizeof alg) != 0 || strcmp(alg, "RS256") != 0) {
        *err = "token algorithm not allowed (only RS256)";
        return -1;
    }
    if (!json_reader_unique(obj)) { *err = "token header repeats a member"; return -1; }
    if (json_reader_member(obj, "typ", &v) != 0 || json_reader_string(v, typ, sizeof typ) != 0 || !access_token_type(typ)) {
        *err = "token type not accepted (typ must be JWT or at+jwt)";
        return -1;
    }
    if (json_reader_member(obj, "crit", &v) == 0) { *err = "token has unsupported critical headers"; return -1; }
    if (json_reader_member(obj, "kid", &v) != 0 || json_reader_string(v, kid, kidlen) != 0 || !*kid) {
        *err = "token has no usable key id";
        return -1;
    }
    return 0;
}

/* RSASSA-PKCS1-v1_5 SHA-256 check of sig over data with key: 1 valid, 0 not. */
static int rs256_valid(EVP_PKEY *key, const char *data, size_t n, const unsigned char *sig, size_t siglen)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx && EVP_DigestVerifyInit(ctx, NULL, jwt_keys_sha256(), NULL, key) == 1 &&
             EVP_DigestVerify(ctx, sig, siglen, (const unsigned char *)data, n) == 1;
    EVP_MD_CTX_free(ctx);
    ERR_clear_error();
    return ok;
}

/* Check the registered claims of a verified payload (exp required). JWT_TOKEN_* + err. */
static int check_claims(const char *json, size_t n, const char *iss, const char *aud, const char **err)
{
    json_span_t obj = { json, json + n }, v;
    double exp, nbf;
    char s[256];
    time_t now = time(NULL);
    if (!json_reader_valid(json, n) || !json_reader_unique(obj) || memmem(json, n, "\\u0000", 6)) {
        *err = "token claims are not one JSON object of distinct names";   /* RFC 7519 §4, RFC 7515 §5.2 */
        return JWT_TOKEN_INVALID;
    }
    if (json_reader_member(obj, "exp", &v) != 0 || json_reader_number(v, &exp) != 0) {
        *err = "token has no valid exp claim";
        return JWT_TOKEN_INVALID;
    }
    if ((double)now > exp + JWT_CLOCK_SKEW) { *err = "token expired"; return JWT_TOKEN_EXPIRED; }
    if (json_reader_member(obj, "nbf", &v) == 0 && (json_reader_number(v, &nbf) != 0 || nbf > (double)now + JWT_CLOCK_SKEW)) {
        *err = "token not yet valid";
        return JWT_TOKEN_INVALID;
    }
    if (json_reader_member(obj, "iss", &v) != 0 || json_reader_string(v, s, sizeof s) != 0 || strcmp(s, iss) != 0) {
        *err = "token issuer not accepted";
        return JWT_TOKEN_INVALID;
    }
    if (json_reader_member(obj, "aud", &v) != 0 || !aud_matches(v, aud)) {
        *err = "token audience not accepted";
        return JWT_TOKEN_INVALID;
    }
    return JWT_TOKEN_OK;
}

/* ---- C API ------------------------------------------------------------------------------ */

int jwt_token_verify(const char *token, size_t len, const char *iss, const char *aud,
                     char *claims, size_t cap, size_t *claims_len, const char **err)
{
    *claims_len = 0;
    const char *d1 = len && len <= JWT_MAX_TOKEN && cap >= len ? memchr(token, '.', len) : NULL;
    const char *d2 = d1 ? memchr(d1 + 1, '.', (size_t)(token + len - d1 - 1)) : NULL;
    if (!d2 || d1 == token || d2 == d1 + 1 || d2 + 1 == token + len || memchr(d2 + 1, '.', (size_t)(token + len - d2 - 1))) {
        *err = "malformed token";
        return JWT_TOKEN_INVALID;
    }
    char kid[JWT_KID_MAX];
    if (check_header(token, (size_t)(d1 - token), kid, sizeof kid, err) != 0) return JWT_TOKEN_INVALID;

    unsigned char sig[SIG_MAX / 4 * 3 + 3];
    size_t slen = (size_t)(token + len - d2 - 1);
    long sn = slen <= SIG_MAX ? base64_decode(sig, d2 + 1, slen, 1) : -1;
    if (sn <= 0) { *err = "malformed token signature"; return JWT_TOKEN_INVALID; }
    int unavailable = 0;
    EVP_PKEY *key = jwt_keys_lookup(kid, &unavailable);
    if (!key) {
        *err = unavailable ? "no verification keys available" : "token signed with an unknown key";
        return unavailable ? JWT_TOKEN_UNAVAILABLE : JWT_TOKEN_INVALID;
    }
    int ok = sn == EVP_PKEY_get_size(key) && rs256_valid(key, token, (size_t)(d2 - token), sig, (size_t)sn);
    EVP_PKEY_free(key);
    if (!ok) { *err = "token signature invalid"; return JWT_TOKEN_INVALID; }

    /* The payload decodes to at most 3/4 of its length + 1 NUL: it fits in cap >= len. */
    long pn = base64_decode(claims, d1 + 1, (size_t)(d2 - d1 - 1), 1);
    if (pn <= 0) { *err = "malformed token payload"; return JWT_TOKEN_INVALID; }
    int code = check_claims(claims, (size_t)pn, iss ? iss : jwt_keys_issuer(), aud ? aud : jwt_keys_audience(), err);
    if (code == JWT_TOKEN_OK) *claims_len = (size_t)pn;
    return code;
}

#define TEXT_OF_(x) #x
#define TEXT_OF(x) TEXT_OF_(x)   /* a number macro as a string literal */

size_t jwt_token_sign_cap(size_t claims_len)
{
    return base64_encoded_len(JWT_KID_MAX + 64, 1) + base64_encoded_len(claims_len, 1) + SIG_MAX + 3;
}

long jwt_token_sign(EVP_PKEY *key, const char *kid, const char *claims_json, size_t len, char *out, size_t cap,
                    const char **err)
{
    json_span_t obj = { claims_json, claims_json + len }, v;
    if (!json_reader_valid(claims_json, len) || json_reader_member(obj, "exp", &v) != 0) {
        *err = "claims must be a JSON object with exp";
        return -1;
    }
    char hdr[JWT_KID_MAX + 64];
    int hn = snprintf(hdr, sizeof hdr, "{\"alg\":\"RS256\",\"typ\":\"JWT\",\"kid\":\"%s\"}", kid);
    if (strlen(kid) >= JWT_KID_MAX || cap < jwt_token_sign_cap(len) || EVP_PKEY_get_size(key) > 1024) {
        *err = "key id too long, key too large or buffer too small";
        return -1;
    }
    /* Never make a token that verifiers refuse unread (longer than JWT_MAX_TOKEN). */
    if (base64_encoded_len((size_t)hn, 1) + base64_encoded_len(len, 1) +
            base64_encoded_len((size_t)EVP_PKEY_get_size(key), 1) + 2 > JWT_MAX_TOKEN) {
        *err = "claims too large: the token would be longer than " TEXT_OF(JWT_MAX_TOKEN) " bytes";
        return -1;
    }
    size_t n = base64_encode(out, hdr, (size_t)hn, 1);
    out[n++] = '.';
    n += base64_encode(out + n, claims_json, len, 1);
    unsigned char sig[1024];
    size_t siglen = sizeof sig;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx && EVP_DigestSignInit(ctx, NULL, jwt_keys_sha256(), NULL, key) == 1 &&
             EVP_DigestSign(ctx, sig, &siglen, (const unsigned char *)out, n) == 1;
    EVP_MD_CTX_free(ctx);
    ERR_clear_error();
    if (!ok) { *err = "signing failed (is the key private?)"; return -1; }
    out[n++] = '.';
    n += base64_encode(out + n, sig, siglen, 1);
    return (long)n;
}
