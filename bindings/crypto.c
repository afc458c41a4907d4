/* crypto: hashes, MACs, constant-time compare, randomness, UUIDs, base64 and argon2id
 * password hashing for Lua (`require "crypto"`).
 *   local h = crypto.argon2_hash(password)            -- "$argon2id$v=19$m=19456,t=2,p=1$..."
 *   local ok, err, code = crypto.argon2_verify(h, password)
 * Argon2 runs on a pool of hashing threads (bindings/crypto_argon2.c): a handler parks until
 * its hash is done; past the pool's queue, nil, "busy", "unavailable". */
#include <lauxlib.h>

#include "../host/bindings.h"
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "crypto.h"

#define RANDOM_MAX (1 << 20)

/* ---- base64 and hex ---------------------------------------------------------------------- */

static const char b64_std[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char b64_url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t crypto_b64_encoded_len(size_t n, int url)
{
    return url ? n / 3 * 4 + (n % 3 ? n % 3 + 1 : 0) : (n + 2) / 3 * 4;
}

size_t crypto_b64_encode(char *dst, const void *src, size_t n, int url)
{
    const unsigned char *s = src;
    const char *alpha = url ? b64_url : b64_std;
    char *d = dst;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
        *d++ = alpha[v >> 18 & 63];
        *d++ = alpha[v >> 12 & 63];
        *d++ = alpha[v >> 6 & 63];
        *d++ = alpha[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)s[i] << 16;
        *d++ = alpha[v >> 18 & 63];
        *d++ = alpha[v >> 12 & 63];
        if (!url) { *d++ = '='; *d++ = '='; }
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8;
        *d++ = alpha[v >> 18 & 63];
        *d++ = alpha[v >> 12 & 63];
        *d++ = alpha[v >> 6 & 63];
        if (!url) *d++ = '=';
    }
    *d = 0;
    return (size_t)(d - dst);
}

/* The 6-bit value of c in the chosen alphabet, or -1. */
static int b64_value(unsigned char c, int url)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == (url ? '-' : '+')) return 62;
    if (c == (url ? '_' : '/')) return 63;
    return -1;
}

long crypto_b64_decode(void *dst, const char *src, size_t n, int url)
{
    unsigned char *d = dst;
    if (!url) {
        if (n % 4) return -1;
        if (n && src[n - 1] == '=') n--;
        if (n && src[n - 1] == '=') n--;
    }
    if (n % 4 == 1) return -1;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64_value((unsigned char)src[i], url);
        if (v < 0) return -1;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            d[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0) return -1;   /* non-canonical: leftover bits must be zero */
    d[o] = 0;
    return (long)o;
}

void crypto_hex(char *dst, const void *src, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    const unsigned char *s = src;
    for (size_t i = 0; i < n; i++) {
        dst[2 * i] = digits[s[i] >> 4];
        dst[2 * i + 1] = digits[s[i] & 15];
    }
    dst[2 * n] = 0;
}

/* ---- Lua bindings ----------------------------------------------------------------------- */

/* Push nil, err, code and return 3: the runtime-failure triple. */
static int fail(lua_State *L, const char *err, const char *code)
{
    lua_pushnil(L);
    lua_pushstring(L, err);
    lua_pushstring(L, code);
    return 3;
}

/* crypto.sha256(s) → the 32 raw bytes of SHA-256(s). */
static int l_sha256(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    unsigned char md[32];
    unsigned int mdlen = 0;
    if (EVP_Digest(s, n, md, &mdlen, EVP_sha256(), NULL) != 1) return luaL_error(L, "crypto.sha256: digest failed");
    lua_pushlstring(L, (const char *)md, mdlen);
    return 1;
}

/* crypto.hmac_sha256(key, msg) → the 32 raw bytes of HMAC-SHA-256. */
static int l_hmac_sha256(lua_State *L)
{
    size_t klen, mlen;
    const char *key = luaL_checklstring(L, 1, &klen);
    const char *msg = luaL_checklstring(L, 2, &mlen);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!HMAC(EVP_sha256(), key, (int)klen, (const unsigned char *)msg, mlen, md, &mdlen))
        return luaL_error(L, "crypto.hmac_sha256: HMAC failed");
    lua_pushlstring(L, (const char *)md, mdlen);
    return 1;
}

/* crypto.hex(s) → lower-case hex of the bytes of s. */
static int l_hex(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    char small[129];
    char *d = n <= 64 ? small : lua_newuserdata(L, 2 * n + 1);   /* scratch owned by the GC */
    crypto_hex(d, s, n);
    lua_pushlstring(L, d, 2 * n);
    return 1;
}

/* crypto.equal(a, b) → whether a == b, in time that depends only on the lengths. */
static int l_equal(lua_State *L)
{
    size_t alen, blen;
    const char *a = luaL_checklstring(L, 1, &alen);
    const char *b = luaL_checklstring(L, 2, &blen);
    lua_pushboolean(L, alen == blen && CRYPTO_memcmp(a, b, alen) == 0);
    return 1;
}

/* crypto.random(n) → n bytes from the OpenSSL CSPRNG, or nil, err, "unavailable". */
static int l_random(lua_State *L)
{
    lua_Integer n = luaL_checkinteger(L, 1);
    if (n < 0 || n > RANDOM_MAX) return luaL_argerror(L, 1, "expecting 0 to 1048576 bytes");
    unsigned char small[256];
    unsigned char *b = n <= (lua_Integer)sizeof small ? small : lua_newuserdata(L, (size_t)n);
    if (RAND_bytes(b, (int)n) != 1) return fail(L, "random generator failed", "unavailable");
    lua_pushlstring(L, (const char *)b, (size_t)n);
    return 1;
}

/* Format 16 bytes as the canonical 8-4-4-4-12 lower-case UUID string and push it. */
static void push_uuid(lua_State *L, const unsigned char u[16])
{
    char hex[33], s[37];
    crypto_hex(hex, u, 16);
    memcpy(s, hex, 8); s[8] = '-';
    memcpy(s + 9, hex + 8, 4); s[13] = '-';
    memcpy(s + 14, hex + 12, 4); s[18] = '-';
    memcpy(s + 19, hex + 16, 4); s[23] = '-';
    memcpy(s + 24, hex + 20, 12);
    lua_pushlstring(L, s, 36);
}

/* crypto.uuid4() → a random (version 4) UUID string. */
static int l_uuid4(lua_State *L)
{
    unsigned char u[16];
    if (RAND_bytes(u, sizeof u) != 1) return fail(L, "random generator failed", "unavailable");
    u[6] = (unsigned char)(0x40 | (u[6] & 0x0f));
    u[8] = (unsigned char)(0x80 | (u[8] & 0x3f));
    push_uuid(L, u);
    return 1;
}

/* Per-thread state that keeps uuid7s of one thread strictly increasing (RFC 9562 §6.2 method 1:
 * a 12-bit counter in rand_a, seeded at random each new millisecond). */
static __thread uint64_t tls_uuid7_ms;
static __thread unsigned tls_uuid7_seq;

/* crypto.uuid7() → a time-ordered (version 7) UUID string: 48-bit Unix ms, counter, random. */
static int l_uuid7(lua_State *L)
{
    unsigned char u[16];
    if (RAND_bytes(u, sizeof u) != 1) return fail(L, "random generator failed", "unavailable");
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
    if (ms > tls_uuid7_ms) {
        tls_uuid7_ms = ms;
        tls_uuid7_seq = (unsigned)(u[6] << 8 | u[7]) & 0x7ff;   /* top bit clear: room to count */
    } else if (++tls_uuid7_seq > 0xfff) {
        tls_uuid7_ms++;   /* counter exhausted: borrow the next millisecond */
        tls_uuid7_seq = 0;
    }
    for (int i = 0; i < 6; i++) u[i] = (unsigned char)(tls_uuid7_ms >> (40 - 8 * i));
    u[6] = (unsigned char)(0x70 | (tls_uuid7_seq >> 8));
    u[7] = (unsigned char)(tls_uuid7_seq & 0xff);
    u[8] = (unsigned char)(0x80 | (u[8] & 0x3f));
    push_uuid(L, u);
    return 1;
}

/* Shared body of the four base64 functions: encode or decode argument 1. */
static int b64(lua_State *L, int url, int encode)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    size_t cap = encode ? crypto_b64_encoded_len(n, url) + 1 : n / 4 * 3 + 3;
    char small[512];
    char *d = cap <= sizeof small ? small : lua_newuserdata(L, cap);   /* scratch owned by the GC */
    long len = encode ? (long)crypto_b64_encode(d, s, n, url) : crypto_b64_decode(d, s, n, url);
    if (len < 0) return fail(L, url ? "invalid base64url" : "invalid base64", "invalid");
    lua_pushlstring(L, d, (size_t)len);
    return 1;
}

static int l_b64url_encode(lua_State *L) { return b64(L, 1, 1); }
static int l_b64url_decode(lua_State *L) { return b64(L, 1, 0); }
static int l_b64_encode(lua_State *L) { return b64(L, 0, 1); }
static int l_b64_decode(lua_State *L) { return b64(L, 0, 0); }

int luaopen_crypto(lua_State *L)
{
    static const luaL_Reg fns[] = {
        { "sha256", l_sha256 }, { "hmac_sha256", l_hmac_sha256 }, { "hex", l_hex }, { "equal", l_equal },
        { "random", l_random }, { "uuid4", l_uuid4 }, { "uuid7", l_uuid7 },
        { "base64url_encode", l_b64url_encode }, { "base64url_decode", l_b64url_decode },
        { "base64_encode", l_b64_encode }, { "base64_decode", l_b64_decode }, { NULL, NULL },
    };
    lua_newtable(L);
    luaL_setfuncs(L, fns, 0);
    luaL_setfuncs(L, crypto_argon2_fns, 0);
    return 1;
}

const binding_t binding_crypto = {
    .name = "crypto",
    .open = luaopen_crypto,
    .global_init = crypto_argon2_init,            /* a bad ARGON2_* shows before the first login */
    .global_cleanup = crypto_argon2_cleanup,      /* joins the hashing threads */
    .worker_free = crypto_argon2_worker_free,     /* no job posts to a loop being freed */
};
