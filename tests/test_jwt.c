/* test_jwt: the jwt binding through a real Lua state with RSA keys made at test time — round
 * trip, every forgery we know of refused, JWKS export and fetch, and the verification rate. */
#include <arpa/inet.h>
#include <jwt.h>
#include <lauxlib.h>
#include <lualib.h>
#include <netinet/in.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "../core/base64.h"
#include "../bindings/crypto.h"
#include "../core/jwt_keys.h"
#include "test.h"

int luaopen_jwt(lua_State *L);
int luaopen_crypto(lua_State *L);

static lua_State *L;
static char key_a_path[] = "/tmp/mercato-test-jwt-XXXXXX";
static char *pub_a_pem, *priv_b_pem;
static EVP_PKEY *key_a;

/* The PEM text of key (private or public), malloc-ed. */
static char *pem_of(EVP_PKEY *key, int private)
{
    BIO *b = BIO_new(BIO_s_mem());
    if (private) PEM_write_bio_PrivateKey(b, key, NULL, NULL, 0, NULL, NULL);
    else PEM_write_bio_PUBKEY(b, key);
    char *data;
    long n = BIO_get_mem_data(b, &data);
    char *out = strndup(data, (size_t)n);
    BIO_free(b);
    return out;
}

/* Run chunk; its first result as a string in a static buffer ("<error: ...>" if it raised). */
static const char *eval(const char *chunk)
{
    static char out[8192];
    lua_settop(L, 0);
    if (luaL_dostring(L, chunk) != 0) {
        snprintf(out, sizeof out, "<error: %s>", lua_tostring(L, -1));
        return out;
    }
    const char *s = lua_gettop(L) ? lua_tostring(L, 1) : NULL;
    snprintf(out, sizeof out, "%s", s ? s : (lua_gettop(L) && lua_isboolean(L, 1)) ? (lua_toboolean(L, 1) ? "true" : "false") : "nil");
    return out;
}

static const char *lua_prelude =
    "jwt = require 'jwt' crypto = require 'crypto' cjson = require 'cjson'\n"
    "b64 = crypto.base64url_encode\n"
    "function claims(over) local c = { sub = 'u1', role = 'buyer', iss = 'mercato', aud = 'mercato',\n"
    "  exp = os.time() + 600 } for k, v in pairs(over or {}) do c[k] = v end return c end\n"
    "function forge(h, p, sig) return b64(cjson.encode(h)) .. '.' .. b64(cjson.encode(p)) .. '.' .. (sig or '') end\n"
    "function parts(t) return t:match('^([^.]+)%.([^.]+)%.([^.]+)$') end\n"
    "function code_of(t) local c, err, code = jwt.verify(t) return code or 'ok', err end\n";

TEST(sign_then_verify_round_trips_with_defaults_filled)
{
    CHECK_STR(eval("T = jwt.sign({ sub = 'u1', role = 'buyer', scope = 'a b' }) local c = assert(jwt.verify(T)) "
                   "return table.concat({ c.sub, c.role, c.scope, c.iss, c.aud, tostring(c.exp - c.iat) }, '|')"),
              "u1|buyer|a b|mercato|mercato|900");
    CHECK_STR(eval("local c = jwt.verify(T) return c.jti:match('^%x+%-%x+%-4%x+%-%x+%-%x+$') ~= nil"), "true");
    CHECK_STR(eval("local h = cjson.decode(crypto.base64url_decode(parts(T))) "
                   "return h.alg .. ' ' .. h.typ .. ' ' .. tostring(h.kid == jwt.kid())"),
              "RS256 JWT true");
    CHECK_STR(eval("return #jwt.kid()"), "43");   /* an RFC 7638 thumbprint */
    CHECK_STR(eval("local t = jwt.sign({ sub = 'x' }, { ttl = 60 }) local c = jwt.verify(t) return c.exp - c.iat"), "60");
}

/* Found by fuzz_jwt (tests/fuzz/corpus/fuzz_jwt/too_long_to_verify): claims of a few KiB made a
 * token longer than JWT_MAX_TOKEN, which every verifier refuses as malformed. */
TEST(a_token_too_long_to_verify_is_never_signed)
{
    CHECK_STR(eval("local t, err, code = jwt.sign(claims({ pad = string.rep('x', 6500) })) "
                   "return tostring(t) .. '|' .. tostring(code) .. '|' .. tostring(err)"),
              "nil|invalid|claims too large: the token would be longer than 8192 bytes");
    CHECK_STR(eval("local t = assert(jwt.sign(claims({ pad = string.rep('x', 5000) }))) local c, err = jwt.verify(t) "
                   "return tostring(#t <= 8192) .. ' ' .. tostring(c and #c.pad) .. ' ' .. tostring(err)"),
              "true 5000 nil");
}

TEST(libjwt_verifies_our_tokens_with_the_public_pem)
{
    const char *t = eval("return T");
    jwt_t *j = NULL;
    CHECK_INT(jwt_decode(&j, t, (const unsigned char *)pub_a_pem, (int)strlen(pub_a_pem)), 0);
    CHECK(j && jwt_get_alg(j) == JWT_ALG_RS256);
    CHECK_STR(j ? jwt_get_grant(j, "sub") : NULL, "u1");
    jwt_free(j);
}

TEST(alg_none_is_refused)
{
    CHECK_STR(eval("return code_of(forge({ alg = 'none', kid = jwt.kid() }, claims(), ''))"), "invalid");
    CHECK_STR(eval("local _, _, s = parts(T) return select(2, code_of(forge({ alg = 'none', kid = jwt.kid() }, claims(), s)))"),
              "token algorithm not allowed (only RS256)");
    CHECK_STR(eval("local _, _, s = parts(T) return code_of(forge({ alg = 'rs256', kid = jwt.kid() }, claims(), s))"), "invalid");
}

TEST(hs256_signed_with_the_public_key_pem_is_refused)
{
    jwt_t *j = NULL;
    char grants[256];
    snprintf(grants, sizeof grants, "{\"sub\":\"attacker\",\"role\":\"admin\",\"iss\":\"mercato\",\"aud\":\"mercato\",\"exp\":%ld}",
             (long)time(NULL) + 600);
    jwt_new(&j);
    jwt_add_grants_json(j, grants);
    jwt_add_header(j, "kid", eval("return jwt.kid()"));
    jwt_set_alg(j, JWT_ALG_HS256, (const unsigned char *)pub_a_pem, (int)strlen(pub_a_pem));
    char *forged = jwt_encode_str(j);
    jwt_free(j);
    jwt_t *d = NULL;
    int libjwt_rc = jwt_decode(&d, forged, (const unsigned char *)pub_a_pem, (int)strlen(pub_a_pem));
    printf("# libjwt 1.10 itself %s the HS256/public-PEM forgery\n", libjwt_rc == 0 ? "ACCEPTS" : "refuses");
    jwt_free(d);
    lua_pushstring(L, forged);
    lua_setglobal(L, "FORGED");
    free(forged);
    CHECK_STR(eval("return code_of(FORGED)"), "invalid");
    CHECK_STR(eval("return select(2, code_of(FORGED))"), "token algorithm not allowed (only RS256)");
}

TEST(a_token_from_another_key_is_refused_whatever_its_kid)
{
    CHECK_STR(eval("return select(2, code_of(jwt.sign(claims(), { key = PRIV_B, kid = jwt.kid() })))"), "token signature invalid");
    CHECK_STR(eval("return select(2, code_of(jwt.sign(claims(), { key = PRIV_B })))"), "token signed with an unknown key");
    CHECK_STR(eval("local _, p, s = parts(T) return code_of(forge({ alg = 'RS256' }, claims(), s))"), "invalid");   /* no kid */
}

TEST(expiry_is_checked_with_sixty_seconds_of_skew)
{
    CHECK_STR(eval("return code_of(jwt.sign(claims({ exp = os.time() - 120 })))"), "expired");
    CHECK_STR(eval("return code_of(jwt.sign(claims({ exp = os.time() - 30 })))"), "ok");
    CHECK_STR(eval("return code_of(jwt.sign(claims({ exp = tostring(os.time() + 60) })))"), "invalid");
}

TEST(not_before_in_the_future_is_refused)
{
    CHECK_STR(eval("return code_of(jwt.sign(claims({ nbf = os.time() + 300 })))"), "invalid");
    CHECK_STR(eval("return select(2, code_of(jwt.sign(claims({ nbf = os.time() + 300 }))))"), "token not yet valid");
    CHECK_STR(eval("return code_of(jwt.sign(claims({ nbf = os.time() + 30 })))"), "ok");
}

TEST(audience_and_issuer_must_match)
{
    CHECK_STR(eval("return select(2, code_of(jwt.sign(claims({ aud = 'billing' }))))"), "token audience not accepted");
    CHECK_STR(eval("return code_of(jwt.sign(claims({ aud = { 'billing', 'mercato' } })))"), "ok");
    CHECK_STR(eval("return code_of(jwt.sign(claims({ aud = { 'billing' } })))"), "invalid");
    CHECK_STR(eval("return select(2, code_of(jwt.sign(claims({ iss = 'evil' }))))"), "token issuer not accepted");
    CHECK_STR(eval("local c = jwt.verify(jwt.sign(claims({ aud = 'billing' })), { audience = 'billing' }) return c.aud"), "billing");
}

TEST(a_flipped_byte_anywhere_is_refused)
{
    CHECK_STR(eval("local h, p, s = parts(T) local c = s:sub(10, 10) == 'A' and 'B' or 'A' "
                   "return code_of(h .. '.' .. p .. '.' .. s:sub(1, 9) .. c .. s:sub(11))"),
              "invalid");
    CHECK_STR(eval("local h, p, s = parts(T) local c = p:sub(5, 5) == 'A' and 'B' or 'A' "
                   "return code_of(h .. '.' .. p:sub(1, 4) .. c .. p:sub(6) .. '.' .. s)"),
              "invalid");
    CHECK_STR(eval("local h, p, s = parts(T) return code_of(h .. '.' .. p .. '.' .. s:sub(1, -3))"), "invalid");
    CHECK_STR(eval("local h, p, s = parts(T) return code_of(h .. '.' .. p .. '.' .. s .. 'AA')"), "invalid");
}

TEST(garbage_is_refused_and_misuse_raises)
{
    CHECK_STR(eval("local out = {} for _, t in ipairs{ 'garbage', '', '.', '..', 'a.b', 'a.b.c', 'a.b.c.d', T .. '.', "
                   "'.' .. T, T:gsub('%.', '..', 1), ('x'):rep(9000) } do out[#out + 1] = code_of(t) end "
                   "return table.concat(out, ',')"),
              "invalid,invalid,invalid,invalid,invalid,invalid,invalid,invalid,invalid,invalid,invalid");
    CHECK_STR(eval("local h, p, s = parts(T) return code_of(forge({ alg = 'RS256', kid = jwt.kid(), crit = { 'exp' } }, claims(), s))"),
              "invalid");
    CHECK(strstr(eval("return jwt.verify(nil)"), "<error:") != NULL);
    CHECK(strstr(eval("return jwt.sign('claims')"), "<error:") != NULL);
    CHECK(strstr(eval("return jwt.sign({}, { key = 'not a pem' })"), "<error:") != NULL);
    CHECK(strstr(eval("return jwt.sign({}, { kid = 'a\"b' })"), "<error:") != NULL);
}

/* An RS256 token over exactly these header and claims bytes, signed with key A (what
 * jwt_token_sign would refuse to make): malloc-ed, the caller frees. */
static char *sign_raw(const char *header, const char *claims)
{
    size_t hn = strlen(header), cn = strlen(claims);
    char *out = malloc(base64_encoded_len(hn, 1) + base64_encoded_len(cn, 1) + 1024);
    size_t n = base64_encode(out, header, hn, 1);
    out[n++] = '.';
    n += base64_encode(out + n, claims, cn, 1);
    unsigned char sig[512];
    size_t siglen = sizeof sig;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, key_a) == 1 &&
             EVP_DigestSign(ctx, sig, &siglen, (const unsigned char *)out, n) == 1;
    EVP_MD_CTX_free(ctx);
    out[n++] = '.';
    n += ok ? base64_encode(out + n, (const char *)sig, siglen, 1) : 0;
    out[n] = 0;
    return out;
}

/* JSON text is UTF-8 (RFC 8259 §8.1): a token signed by our own key whose header or claims
 * carry other bytes in a string is not one we would ever have issued, and is refused. */
TEST(a_token_whose_header_or_claims_are_not_utf8_is_refused)
{
    char kid[64], header[160], claims[256];
    snprintf(kid, sizeof kid, "%s", eval("return jwt.kid()"));
    long exp = (long)time(NULL) + 600;
    const char *good_claims = "{\"sub\":\"u1\",\"name\":\"Cr\xc3\xa8me\",\"iss\":\"mercato\",\"aud\":\"mercato\",\"exp\":%ld}";
    const char *bad_claims = "{\"sub\":\"u1\",\"name\":\"Cr\xe8me\",\"iss\":\"mercato\",\"aud\":\"mercato\",\"exp\":%ld}";
    snprintf(header, sizeof header, "{\"alg\":\"RS256\",\"typ\":\"JWT\",\"kid\":\"%s\"}", kid);
    snprintf(claims, sizeof claims, good_claims, exp);
    char *t = sign_raw(header, claims);
    lua_pushstring(L, t);
    lua_setglobal(L, "RAW");
    free(t);
    CHECK_STR(eval("local c = assert(jwt.verify(RAW)) return c.name"), "Cr\xc3\xa8me");   /* the helper signs right */

    snprintf(claims, sizeof claims, bad_claims, exp);
    t = sign_raw(header, claims);
    lua_pushstring(L, t);
    lua_setglobal(L, "RAW");
    free(t);
    CHECK_STR(eval("return code_of(RAW)"), "invalid");

    snprintf(header, sizeof header, "{\"alg\":\"RS256\",\"typ\":\"JWT\",\"kid\":\"%s\",\"x\":\"\xff\"}", kid);
    snprintf(claims, sizeof claims, good_claims, exp);
    t = sign_raw(header, claims);
    lua_pushstring(L, t);
    lua_setglobal(L, "RAW");
    free(t);
    CHECK_STR(eval("return code_of(RAW)"), "invalid");

    /* and the signer never makes one */
    snprintf(claims, sizeof claims, bad_claims, exp);
    char out[4096];
    const char *err = NULL;
    CHECK_INT(jwt_token_sign(key_a, kid, claims, strlen(claims), out, sizeof out, &err), -1);
}

/* A token of header and claims (JSON texts, used verbatim) signed with key A; verify it and
 * return the error text ("ok" when accepted). */
static const char *verify_raw(const char *header, const char *claims)
{
    static char tok[4096], out[4096];
    size_t n = base64_encode(tok, header, strlen(header), 1);
    tok[n++] = '.';
    n += base64_encode(tok + n, claims, strlen(claims), 1);
    unsigned char sig[512];
    size_t siglen = sizeof sig;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, key_a) == 1 &&
             EVP_DigestSign(ctx, sig, &siglen, (const unsigned char *)tok, n) == 1;
    EVP_MD_CTX_free(ctx);
    if (!ok) return "<sign failed>";
    tok[n++] = '.';
    n += base64_encode(tok + n, sig, siglen, 1);
    const char *err = "ok";
    size_t clen;
    jwt_token_verify(tok, n, NULL, NULL, out, sizeof out, &clen, &err);
    return err;
}

TEST(duplicate_names_bad_utf8_and_nul_in_claims_are_refused)
{
    char hdr[256], base[256], c[512];
    snprintf(hdr, sizeof hdr, "{\"alg\":\"RS256\",\"typ\":\"JWT\",\"kid\":\"%s\"}", eval("return jwt.kid()"));
    snprintf(base, sizeof base, "{\"sub\":\"u1\",\"role\":\"buyer\",\"iss\":\"mercato\",\"aud\":\"mercato\",\"exp\":%ld",
             (long)time(NULL) + 600);
    snprintf(c, sizeof c, "%s}", base);
    CHECK_STR(verify_raw(hdr, c), "ok");
    const char *bad[] = { ",\"role\":\"admin\"}", ",\"\\u0072ole\":\"admin\"}", ",\"name\":\"\xc0\xaf\"}",
                          ",\"name\":\"\xed\xa0\x80\"}", ",\"name\":\"a\\u0000b\"}" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(c, sizeof c, "%s%s", base, bad[i]);
        CHECK_STR(verify_raw(hdr, c), "token claims are not one JSON object of distinct names");
    }
    snprintf(c, sizeof c, "%s,\"name\":\"Zo\xc3\xab \xe2\x9c\x93\"}", base);   /* real UTF-8 is fine */
    CHECK_STR(verify_raw(hdr, c), "ok");
    snprintf(c, sizeof c, "%s}", base);
    char dup[300];
    snprintf(dup, sizeof dup, "%s", hdr);
    snprintf(dup + strlen(dup) - 1, sizeof dup - strlen(dup) + 1, ",\"alg\":\"RS256\"}");
    CHECK_STR(verify_raw(dup, c), "token header repeats a member");
}

TEST(only_access_token_types_are_accepted)
{
    char c[256], h[256];
    snprintf(c, sizeof c, "{\"sub\":\"u1\",\"iss\":\"mercato\",\"aud\":\"mercato\",\"exp\":%ld}", (long)time(NULL) + 600);
    const char *ok[] = { "JWT", "jwt", "at+jwt", "application/at+JWT" };
    const char *bad[] = { "refresh+jwt", "dpop+jwt", "", "JWTX" };
    for (size_t i = 0; i < 4; i++) {
        snprintf(h, sizeof h, "{\"alg\":\"RS256\",\"typ\":\"%s\",\"kid\":\"%s\"}", ok[i], eval("return jwt.kid()"));
        CHECK_STR(verify_raw(h, c), "ok");
        snprintf(h, sizeof h, "{\"alg\":\"RS256\",\"typ\":\"%s\",\"kid\":\"%s\"}", bad[i], eval("return jwt.kid()"));
        CHECK_STR(verify_raw(h, c), "token type not accepted (typ must be JWT or at+jwt)");
    }
    snprintf(h, sizeof h, "{\"alg\":\"RS256\",\"kid\":\"%s\"}", eval("return jwt.kid()"));
    CHECK_STR(verify_raw(h, c), "token type not accepted (typ must be JWT or at+jwt)");
}

TEST(jwks_publishes_the_signing_key_modulus_and_exponent)
{
    BIGNUM *n = NULL;
    EVP_PKEY_get_bn_param(key_a, OSSL_PKEY_PARAM_RSA_N, &n);
    char *hex = BN_bn2hex(n);
    lua_pushstring(L, hex);
    lua_setglobal(L, "N_HEX");
    OPENSSL_free(hex);
    BN_free(n);
    CHECK_STR(eval("local s = cjson.decode(jwt.jwks()) local k = s.keys[1] "
                   "return table.concat({ #s.keys, k.kty, k.use, k.alg, tostring(k.kid == jwt.kid()), k.e }, ' ')"),
              "1 RSA sig RS256 true AQAB");
    CHECK_STR(eval("local k = cjson.decode(jwt.jwks()).keys[1] return crypto.hex(crypto.base64url_decode(k.n)):upper() == N_HEX"),
              "true");
}

TEST(thumbprint_matches_rfc_7638_example)
{
    static const char n64[] =
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMs"
        "tn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5"
        "hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
    unsigned char nb[300];
    long nn = base64_decode(nb, n64, strlen(n64), 1);
    BIGNUM *n = BN_bin2bn(nb, (int)nn, NULL), *e = BN_new();
    BN_set_word(e, 65537);
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n);
    OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e);
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    EVP_PKEY *key = NULL;
    EVP_PKEY_fromdata_init(ctx);
    EVP_PKEY_fromdata(ctx, &key, EVP_PKEY_PUBLIC_KEY, params);
    char tp[64] = "";
    CHECK(key && jwt_keys_thumbprint(key, tp, sizeof tp) == 0);
    CHECK_STR(tp, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    EVP_PKEY_free(key);
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(n);
    BN_free(e);
}

/* ---- a one-connection-at-a-time HTTP server that serves one JWKS document, or hangs ------ */

static struct {
    int fd, port, hits, stop, hang;
    int held[64], nheld;          /* hang: accepted connections, never answered */
    struct sockaddr_in addr;
    pthread_t thread;
    char body[8192];
} srv;

/* Answer every request with srv.body until srv.stop; with srv.hang, accept and say nothing. */
static void *serve(void *arg)
{
    (void)arg;
    for (;;) {
        int c = accept(srv.fd, NULL, NULL);
        if (c < 0 || srv.stop) { if (c >= 0) close(c); return NULL; }
        __atomic_add_fetch(&srv.hits, 1, __ATOMIC_SEQ_CST);
        if (srv.hang) {
            if (srv.nheld < 64) srv.held[srv.nheld++] = c;
            else close(c);
            continue;
        }
        char req[2048];
        if (read(c, req, sizeof req) > 0) {
            char head[256];
            int hn = snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                                                 "Connection: close\r\n\r\n", strlen(srv.body));
            if (write(c, head, (size_t)hn) < 0 || write(c, srv.body, strlen(srv.body)) < 0) {}
        }
        close(c);
    }
}

static void srv_start(void)
{
    memset(&srv.addr, 0, sizeof srv.addr);
    srv.addr.sin_family = AF_INET;
    srv.addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof srv.addr;
    srv.fd = socket(AF_INET, SOCK_STREAM, 0);
    bind(srv.fd, (struct sockaddr *)&srv.addr, sizeof srv.addr);
    listen(srv.fd, 8);
    getsockname(srv.fd, (struct sockaddr *)&srv.addr, &alen);
    srv.port = ntohs(srv.addr.sin_port);
    srv.hits = srv.stop = srv.hang = srv.nheld = 0;
    pthread_create(&srv.thread, NULL, serve, NULL);
}

static void srv_stop(void)
{
    srv.stop = 1;
    int c = socket(AF_INET, SOCK_STREAM, 0);
    connect(c, (struct sockaddr *)&srv.addr, sizeof srv.addr);
    close(c);
    pthread_join(srv.thread, NULL);
    for (int i = 0; i < srv.nheld; i++) close(srv.held[i]);
    close(srv.fd);
}

/* Point JWKS_URL at srv and load the keys again (init waits for the first fetch). */
static void verify_through_srv(void)
{
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/.well-known/jwks.json", srv.port);
    jwt_keys_cleanup();
    unsetenv("JWT_PRIVATE_KEY_FILE");
    setenv("JWKS_URL", url, 1);
    CHECK_INT(jwt_keys_init(), 0);
}

static double ms_since(const struct timespec *a)
{
    struct timespec b;
    clock_gettime(CLOCK_MONOTONIC, &b);
    return (double)(b.tv_sec - a->tv_sec) * 1e3 + (double)(b.tv_nsec - a->tv_nsec) / 1e6;
}

TEST(a_verifier_fetches_the_jwks_once_and_not_per_unknown_kid)
{
    snprintf(srv.body, sizeof srv.body, "%s", eval("return jwt.jwks()"));
    const char *other = eval("OTHER = jwt.sign(claims(), { key = PRIV_B }) return OTHER");
    CHECK(other[0] == 'e');
    srv_start();
    verify_through_srv();
    CHECK_INT(jwt_keys_fetch_attempts(), 1);   /* init waited for the first fetch */
    CHECK_STR(eval("return code_of(T)"), "ok");
    CHECK_INT(srv.hits, 1);
    CHECK_STR(eval("return code_of(OTHER) .. code_of(OTHER) .. code_of(OTHER)"), "invalidinvalidinvalid");
    struct timespec nap = { 0, 200 * 1000000L };
    nanosleep(&nap, NULL);
    CHECK_INT(srv.hits, 1);   /* unknown kids do not refetch within 30 s */
    CHECK_STR(eval("local t, err, code = jwt.sign(claims()) return code"), "unavailable");   /* no signing key here */
    srv_stop();

    jwt_keys_cleanup();   /* the JWKS server is gone now: verification is unavailable, not invalid */
    CHECK_INT(jwt_keys_init(), 0);
    CHECK_STR(eval("return code_of(T)"), "unavailable");
}

TEST(an_unknown_kid_never_waits_for_a_fetch_even_from_an_upstream_that_hangs)
{
    setenv("JWKS_MIN_REFETCH_S", "1", 1);
    srv_start();
    verify_through_srv();
    CHECK_STR(eval("return code_of(T)"), "ok");
    srv.hang = 1;   /* from now on: accepted, never answered (curl's timeout is 3 s) */
    double worst = 0;
    int n = 0;
    struct timespec a, t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (ms_since(&t0) < 2500) {
        clock_gettime(CLOCK_MONOTONIC, &a);
        const char *got = eval("return code_of(OTHER)");
        double ms = ms_since(&a);
        if (ms > worst) worst = ms;
        CHECK_STR(got, "invalid");
        CHECK_STR(eval("return code_of(T)"), "ok");   /* the keys it had keep working */
        n++;
        struct timespec nap = { 0, 10 * 1000000L };
        nanosleep(&nap, NULL);
    }
    printf("# %d unknown-kid verifications while the JWKS upstream hangs: the slowest took %.2f ms; %d fetches started\n",
           n, worst, srv.hits);
    CHECK(worst < 50);
    CHECK_INT(srv.hits, 2);   /* one refresh asked for (1 s after the first), still hanging */
    clock_gettime(CLOCK_MONOTONIC, &a);
    jwt_keys_cleanup();       /* aborts the hanging fetch */
    double stop_ms = ms_since(&a);
    printf("# cleanup with a fetch in flight took %.0f ms\n", stop_ms);
    CHECK(stop_ms < 1500);
    srv_stop();
    unsetenv("JWKS_MIN_REFETCH_S");
}

TEST(verification_is_fast)
{
    jwt_keys_cleanup();
    unsetenv("JWKS_URL");
    setenv("JWT_PRIVATE_KEY_FILE", key_a_path, 1);
    CHECK_INT(jwt_keys_init(), 0);
    const char *t = eval("return jwt.sign(claims({ exp = os.time() + 3600 }))");
    char token[4096], claims[4096];
    snprintf(token, sizeof token, "%s", t);
    size_t clen;
    const char *err;
    int n = 3000, ok = 0;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < n; i++) ok += jwt_token_verify(token, strlen(token), NULL, NULL, claims, sizeof claims, &clen, &err) == JWT_TOKEN_OK;
    clock_gettime(CLOCK_MONOTONIC, &b);
    double s = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    printf("# C jwt_token_verify (RSA-2048): %.0f verifications/s on one core (%.1f us each)\n", n / s, s / n * 1e6);
    CHECK_INT(ok, n);
    lua_pushstring(L, token);
    lua_setglobal(L, "FAST");
    clock_gettime(CLOCK_MONOTONIC, &a);
    CHECK_STR(eval("local c for _ = 1, 3000 do c = jwt.verify(FAST) end return c.sub"), "u1");
    clock_gettime(CLOCK_MONOTONIC, &b);
    s = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    printf("# Lua jwt.verify with claims table: %.0f/s on one core\n", n / s);
    clock_gettime(CLOCK_MONOTONIC, &a);
    eval("for _ = 1, 300 do jwt.sign(claims()) end");
    clock_gettime(CLOCK_MONOTONIC, &b);
    s = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    printf("# Lua jwt.sign: %.0f/s on one core\n", 300 / s);
}

int main(void)
{
    key_a = EVP_RSA_gen(2048);
    EVP_PKEY *key_b = EVP_RSA_gen(2048);
    pub_a_pem = pem_of(key_a, 0);
    priv_b_pem = pem_of(key_b, 1);
    char *priv_a = pem_of(key_a, 1);
    int fd = mkstemp(key_a_path);
    if (fd < 0 || write(fd, priv_a, strlen(priv_a)) < 0) return 1;
    close(fd);
    free(priv_a);
    unsetenv("JWKS_URL");
    unsetenv("JWT_PUBLIC_KEY_FILE");
    unsetenv("JWT_PUBLIC_KEYS_DIR");
    unsetenv("JWT_ISSUER");
    unsetenv("JWT_AUDIENCE");
    setenv("JWT_PRIVATE_KEY_FILE", key_a_path, 1);
    if (jwt_keys_init() != 0) return 1;

    L = luaL_newstate();
    luaL_openlibs(L);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, luaopen_jwt);
    lua_setfield(L, -2, "jwt");
    lua_pushcfunction(L, luaopen_crypto);
    lua_setfield(L, -2, "crypto");
    lua_pop(L, 2);
    lua_pushstring(L, priv_b_pem);
    lua_setglobal(L, "PRIV_B");
    if (luaL_dostring(L, lua_prelude) != 0) { printf("# %s\n", lua_tostring(L, -1)); return 1; }

    RUN(sign_then_verify_round_trips_with_defaults_filled);
    RUN(a_token_too_long_to_verify_is_never_signed);
    RUN(libjwt_verifies_our_tokens_with_the_public_pem);
    RUN(alg_none_is_refused);
    RUN(hs256_signed_with_the_public_key_pem_is_refused);
    RUN(a_token_from_another_key_is_refused_whatever_its_kid);
    RUN(expiry_is_checked_with_sixty_seconds_of_skew);
    RUN(not_before_in_the_future_is_refused);
    RUN(audience_and_issuer_must_match);
    RUN(a_flipped_byte_anywhere_is_refused);
    RUN(garbage_is_refused_and_misuse_raises);
    RUN(a_token_whose_header_or_claims_are_not_utf8_is_refused);
    RUN(duplicate_names_bad_utf8_and_nul_in_claims_are_refused);
    RUN(only_access_token_types_are_accepted);
    RUN(jwks_publishes_the_signing_key_modulus_and_exponent);
    RUN(thumbprint_matches_rfc_7638_example);
    RUN(a_verifier_fetches_the_jwks_once_and_not_per_unknown_kid);
    RUN(an_unknown_kid_never_waits_for_a_fetch_even_from_an_upstream_that_hangs);
    RUN(verification_is_fast);

    lua_close(L);
    jwt_keys_cleanup();
    unlink(key_a_path);
    free(pub_a_pem);
    free(priv_b_pem);
    EVP_PKEY_free(key_a);
    EVP_PKEY_free(key_b);
    return test_done();
}
