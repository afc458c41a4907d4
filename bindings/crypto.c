/* crypto: hashes, MACs, constant-time compare, randomness, UUIDs, base64 and argon2id
 * password hashing for Lua (`require "crypto"`).
 *   local h = crypto.argon2_hash(password)            -- "$argon2id$v=19$m=19456,t=2,p=1$..."
 *   local ok, err, code = crypto.argon2_verify(h, password)
 * Argon2 runs on the calling worker thread; a process-wide semaphore (ARGON2_MAX_CONCURRENT,
 * default 2 x cores) caps how many 19 MiB hashes are in flight, and a caller that waits longer
 * than ARGON2_WAIT_MS (default 2000) gets nil, "busy", "unavailable". */
#include <lauxlib.h>

#include "../host/bindings.h"
#include <argon2.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "crypto.h"

/* OWASP password storage cheat sheet, argon2id: m = 19 MiB, t = 2, p = 1. */
#define ARGON2_T 2
#define ARGON2_M_KIB 19456
#define ARGON2_P 1
#define ARGON2_SALT_LEN 16
#define ARGON2_HASH_LEN 32
#define ARGON2_MAX_M_KIB (256UL * 1024)   /* refuse to verify hashes asking for more memory */
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

/* ---- argon2 gate ------------------------------------------------------------------------ */

static sem_t g_argon2_sem;
static long g_argon2_wait_ms = 2000;
static const char *g_argon2_bad_env;   /* the variable that held an invalid value, or NULL */
static pthread_once_t g_argon2_once = PTHREAD_ONCE_INIT;
static pthread_once_t g_dummy_once = PTHREAD_ONCE_INIT;
static char g_dummy_hash[128];

/* Size the semaphore from ARGON2_MAX_CONCURRENT / ARGON2_WAIT_MS, once per process. */
static void argon2_gate_init(void)
{
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    long slots = 2 * (cores > 0 ? cores : 1);
    const char *v = getenv("ARGON2_MAX_CONCURRENT");
    char *end;
    if (v && *v) {
        long n = strtol(v, &end, 10);
        if (*end || n < 1 || n > 4096) g_argon2_bad_env = "ARGON2_MAX_CONCURRENT";
        else slots = n;
    }
    v = getenv("ARGON2_WAIT_MS");
    if (v && *v) {
        long n = strtol(v, &end, 10);
        if (*end || n < 0 || n > 600000) g_argon2_bad_env = "ARGON2_WAIT_MS";
        else g_argon2_wait_ms = n;
    }
    sem_init(&g_argon2_sem, 0, (unsigned)slots);
}

/* Take an argon2 slot, waiting at most ARGON2_WAIT_MS; 0 when taken, -1 when busy. */
static int argon2_acquire(void)
{
    pthread_once(&g_argon2_once, argon2_gate_init);
    if (sem_trywait(&g_argon2_sem) == 0) return 0;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += g_argon2_wait_ms / 1000;
    ts.tv_nsec += g_argon2_wait_ms % 1000 * 1000000L;
    if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
    int rc;
    while ((rc = sem_timedwait(&g_argon2_sem, &ts)) != 0 && errno == EINTR) {}
    return rc == 0 ? 0 : -1;
}

static void argon2_release(void) { sem_post(&g_argon2_sem); }

/* Hash pw with fresh salt into out (capacity outlen); 0, or -1 with err set. */
static int argon2_hash_into(const char *pw, size_t pwlen, char *out, size_t outlen, const char **err)
{
    unsigned char salt[ARGON2_SALT_LEN];
    if (RAND_bytes(salt, sizeof salt) != 1) { *err = "random generator failed"; return -1; }
    int rc = argon2id_hash_encoded(ARGON2_T, ARGON2_M_KIB, ARGON2_P, pw, pwlen, salt, sizeof salt,
                                   ARGON2_HASH_LEN, out, outlen);
    if (rc != ARGON2_OK) { *err = argon2_error_message(rc); return -1; }
    return 0;
}

/* The hash unknown-user logins are checked against, made once with the real parameters. */
static void dummy_hash_init(void)
{
    const char *err;
    if (argon2_hash_into("mercato-dummy-password", 22, g_dummy_hash, sizeof g_dummy_hash, &err) != 0)
        g_dummy_hash[0] = 0;
}

/* Whether an encoded hash asks for no more than ARGON2_MAX_M_KIB of memory. */
static int argon2_memory_ok(const char *encoded)
{
    const char *m = strstr(encoded, "$m=");
    if (!m) return 0;
    char *end;
    unsigned long kib = strtoul(m + 3, &end, 10);
    return end != m + 3 && kib <= ARGON2_MAX_M_KIB;
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

/* crypto.argon2_hash(password) → PHC string, or nil, err, code ("busy" → "unavailable"). */
static int l_argon2_hash(lua_State *L)
{
    size_t n;
    const char *pw = luaL_checklstring(L, 1, &n);
    char out[128];
    const char *err = NULL;
    if (argon2_acquire() != 0) return fail(L, "busy", "unavailable");
    int rc = argon2_hash_into(pw, n, out, sizeof out, &err);
    argon2_release();
    if (rc != 0) return fail(L, err, "unavailable");
    lua_pushstring(L, out);
    return 1;
}

/* Verify pw against encoded under the gate: 1 match, 0 mismatch, -1 busy, -2 malformed hash. */
static int argon2_check(const char *encoded, const char *pw, size_t n)
{
    if (strncmp(encoded, "$argon2id$", 10) != 0 || !argon2_memory_ok(encoded)) return -2;
    if (argon2_acquire() != 0) return -1;
    int rc = argon2id_verify(encoded, pw, n);
    argon2_release();
    if (rc == ARGON2_OK) return 1;
    if (rc == ARGON2_VERIFY_MISMATCH) return 0;
    return -2;
}

/* crypto.argon2_verify(hash, password) → true | false | nil, err, code. */
static int l_argon2_verify(lua_State *L)
{
    const char *encoded = luaL_checkstring(L, 1);
    size_t n;
    const char *pw = luaL_checklstring(L, 2, &n);
    int rc = argon2_check(encoded, pw, n);
    if (rc == -1) return fail(L, "busy", "unavailable");
    if (rc == -2) return fail(L, "malformed argon2id hash", "invalid");
    lua_pushboolean(L, rc);
    return 1;
}

/* crypto.dummy_verify(password) → false, after the work a real verify costs (unknown users). */
static int l_dummy_verify(lua_State *L)
{
    size_t n;
    const char *pw = luaL_checklstring(L, 1, &n);
    pthread_once(&g_dummy_once, dummy_hash_init);
    if (!g_dummy_hash[0]) return fail(L, "argon2 unavailable", "unavailable");
    if (argon2_check(g_dummy_hash, pw, n) == -1) return fail(L, "busy", "unavailable");
    lua_pushboolean(L, 0);
    return 1;
}

int luaopen_crypto(lua_State *L)
{
    static const luaL_Reg fns[] = {
        { "sha256", l_sha256 }, { "hmac_sha256", l_hmac_sha256 }, { "hex", l_hex }, { "equal", l_equal },
        { "random", l_random }, { "uuid4", l_uuid4 }, { "uuid7", l_uuid7 },
        { "base64url_encode", l_b64url_encode }, { "base64url_decode", l_b64url_decode },
        { "base64_encode", l_b64_encode }, { "base64_decode", l_b64_decode },
        { "argon2_hash", l_argon2_hash }, { "argon2_verify", l_argon2_verify },
        { "dummy_verify", l_dummy_verify }, { NULL, NULL },
    };
    lua_newtable(L);
    luaL_setfuncs(L, fns, 0);
    return 1;
}

/* Size the argon2 gate at start-up, so a bad environment shows before the first login. */
static int crypto_global_init(void)
{
    pthread_once(&g_argon2_once, argon2_gate_init);
    if (!g_argon2_bad_env) return 0;
    fprintf(stderr, "mercato: %s must be a positive number\n", g_argon2_bad_env);
    return -1;
}

const binding_t binding_crypto = { .name = "crypto", .open = luaopen_crypto, .global_init = crypto_global_init };
