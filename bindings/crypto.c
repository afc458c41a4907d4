/* crypto: hashes, MACs, constant-time compare, randomness, UUIDs, base64 and argon2id
 * password hashing for Lua (`require "crypto"`).
 *   local h = crypto.argon2_hash(password)            -- "$argon2id$v=19$m=19456,t=2,p=1$..."
 *   local ok, err, code = crypto.argon2_verify(h, password)
 * Argon2 runs on a pool of hashing threads (bindings/crypto_argon2.c): a handler parks until
 * its hash is done; past the pool's queue, nil, "busy", "unavailable". */
#include <lauxlib.h>

#include "../core/base64.h"
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
    base64_hex(d, s, n);
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
    base64_hex(hex, u, 16);
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
    size_t cap = encode ? base64_encoded_len(n, url) + 1 : n / 4 * 3 + 3;
    char small[512];
    char *d = cap <= sizeof small ? small : lua_newuserdata(L, cap);   /* scratch owned by the GC */
    long len = encode ? (long)base64_encode(d, s, n, url) : base64_decode(d, s, n, url);
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
