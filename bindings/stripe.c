/* stripe: the fast binding for Stripe's API (`require "stripe"`).
 *   local pi, err, code, e = stripe.request("POST", "/v1/payment_intents",
 *       { amount = 1999, currency = "eur", metadata = { order_id = id }, expand = { "latest_charge" } },
 *       { idempotency_key = id })
 *   local ok, err = stripe.verify_webhook(raw_body, req:header("Stripe-Signature"), secret, 300)
 *
 * The C half (here): form encoding of nested parameters (`metadata[order_id]=…`, `expand[]=…`,
 * `items[0][price]=…`), webhook signatures (HMAC-SHA256 over "t.payload", any v1, tolerance,
 * constant-time compare), the retry rule and its back-off, the error vocabulary. The Lua half
 * (bindings/lua/stripe.lua, compiled into the binary) sends the request through the `http`
 * binding — so a handler parks on the loop, never blocks its thread — with the pinned
 * Stripe-Version, an Idempotency-Key on every POST (kept across retries), and retries with
 * back-off (`host.sleep`, which parks too) on network errors, 409, 429 and 5xx as
 * `Stripe-Should-Retry` allows. Misuse raises; Stripe's error object comes back as
 * `nil, message, code, error_table`. */
#include <lauxlib.h>
#include <math.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "../core/base64.h"
#include "../core/buf.h"
#include "../host/bindings.h"
#include "../host/worker.h"
#include "stripe.h"

#include "stripe_lua.h"   /* generated: luaJIT_BC_stripe, the compiled bindings/lua/stripe.lua */

#define SIG_HEADER_MAX 8192
#define FORM_MAX_DEPTH 8

/* ---- webhook signatures ---------------------------------------------------------------- */

static int is_space(char c) { return c == ' ' || c == '\t'; }

/* Parse "t=...": digits only, at most 12 of them. -1 when not a timestamp. */
static long parse_timestamp(const char *v, size_t n)
{
    if (n == 0 || n > 12) return -1;
    long t = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9') return -1;
        t = t * 10 + (v[i] - '0');
    }
    return t;
}

/* HMAC-SHA256(secret, "<t>.<payload>") as 64 lower-case hex digits into hex[65]. */
static int expected_signature(const char *t, size_t tn, const char *payload, size_t plen,
                              const char *secret, size_t slen, char hex[65])
{
    size_t n = tn + 1 + plen;
    char small[4096];
    char *msg = n <= sizeof small ? small : malloc(n);
    if (!msg) return -1;
    memcpy(msg, t, tn);
    msg[tn] = '.';
    memcpy(msg + tn + 1, payload, plen);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    int ok = HMAC(EVP_sha256(), secret, (int)slen, (const unsigned char *)msg, n, md, &mdlen) != NULL && mdlen == 32;
    if (msg != small) free(msg);
    if (!ok) return -1;
    base64_hex(hex, md, 32);
    return 0;
}

int stripe_verify_signature(const char *payload, size_t plen, const char *header, size_t hlen,
                            const char *secret, size_t slen, long tolerance, long now, const char **err)
{
    if (!header || hlen == 0) { *err = "missing Stripe-Signature header"; return -1; }
    if (hlen > SIG_HEADER_MAX) { *err = "malformed Stripe-Signature header"; return -1; }
    const char *t = NULL, *end = header + hlen;
    size_t tn = 0;
    int v1s = 0;
    /* First pass: the timestamp (exactly one) and whether any v1 is present. */
    for (const char *p = header; p < end;) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *item_end = comma ? comma : end;
        while (p < item_end && is_space(*p)) p++;
        const char *ie = item_end;
        while (ie > p && is_space(ie[-1])) ie--;
        const char *eq = memchr(p, '=', (size_t)(ie - p));
        if (!eq || eq == p) { *err = "malformed Stripe-Signature header"; return -1; }
        size_t kn = (size_t)(eq - p);
        if (kn == 1 && p[0] == 't') {
            if (t || parse_timestamp(eq + 1, (size_t)(ie - eq - 1)) < 0) { *err = "malformed Stripe-Signature header"; return -1; }
            t = eq + 1;
            tn = (size_t)(ie - eq - 1);
        } else if (kn == 2 && p[0] == 'v' && p[1] == '1') {
            v1s++;
        }
        p = comma ? comma + 1 : end;
    }
    if (!t) { *err = "malformed Stripe-Signature header"; return -1; }
    if (!v1s) { *err = "no v1 signature in Stripe-Signature"; return -1; }
    char want[65];
    if (expected_signature(t, tn, payload, plen, secret, slen, want) < 0) { *err = "signature check failed"; return -1; }
    /* Second pass: every v1 is compared in full, in constant time for its length. */
    int match = 0;
    for (const char *p = header; p < end;) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *ie = comma ? comma : end;
        while (p < ie && is_space(*p)) p++;
        while (ie > p && is_space(ie[-1])) ie--;
        if (ie - p == 3 + 64 && p[0] == 'v' && p[1] == '1' && p[2] == '=')
            match |= CRYPTO_memcmp(p + 3, want, 64) == 0;
        p = comma ? comma + 1 : end;
    }
    if (!match) { *err = "no signature matches the payload"; return -1; }
    long ts = parse_timestamp(t, tn);
    if (tolerance > 0 && (now - ts > tolerance || ts - now > tolerance)) {
        *err = "timestamp outside the tolerance";
        return -1;
    }
    return 0;
}

/* ---- retries and errors ------------------------------------------------------------------ */

int stripe_should_retry(long status, const char *should_retry)
{
    if (status == 0) return 1;
    if (should_retry && strcasecmp(should_retry, "true") == 0) return 1;
    if (should_retry && strcasecmp(should_retry, "false") == 0) return 0;
    return status == 409 || status == 429 || status >= 500;
}

double stripe_backoff_s(int attempt, double r)
{
    if (attempt < 1) attempt = 1;
    double d = 0.5 * pow(2.0, attempt - 1 > 10 ? 10 : attempt - 1);
    if (d > 8.0) d = 8.0;
    if (r < 0) r = 0;
    if (r >= 1) r = 0.999999;
    return d * (0.5 + r / 2);
}

const char *stripe_error_code(long status)
{
    if (status == 400 || status == 402) return "invalid";
    if (status == 404) return "not_found";
    if (status == 409) return "conflict";
    return "unavailable";
}

/* ---- form encoding ----------------------------------------------------------------------- */

static void add_escaped(buf_t *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if ((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' ||
            ch == '.' || ch == '_' || ch == '~') {
            buf_add(b, &s[i], 1);
        } else {
            char e[3] = { '%', hex[ch >> 4], hex[ch & 15] };
            buf_add(b, e, 3);
        }
    }
}

/* A number as Stripe reads it: integers without a fraction or exponent. */
static void add_number(buf_t *b, lua_Number v)
{
    if (v == floor(v) && fabs(v) < 9007199254740992.0) buf_addf(b, "%lld", (long long)v);
    else buf_addf(b, "%.17g", (double)v);
}

static int cmp_keys(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

/* A table whose keys are exactly 1..n (n >= 1): an array. */
static size_t array_length(lua_State *L, int t)
{
    size_t n = lua_objlen(L, t), count = 0;
    if (n == 0) return 0;
    lua_pushnil(L);
    while (lua_next(L, t) != 0) {
        count++;
        lua_pop(L, 1);
    }
    return count == n ? n : 0;
}

static int encode_value(lua_State *L, buf_t *b, buf_t *prefix, int depth, const char **err);

/* One "prefix=value" pair, or the nested pairs of a table under prefix. */
static int encode_pair(lua_State *L, buf_t *b, buf_t *prefix, int depth, const char **err)
{
    int vt = lua_type(L, -1);
    if (vt == LUA_TTABLE) return encode_value(L, b, prefix, depth + 1, err);
    if (b->len) buf_add(b, "&", 1);
    buf_add(b, prefix->data, prefix->len);
    buf_add(b, "=", 1);
    if (vt == LUA_TSTRING) {
        size_t n;
        const char *s = lua_tolstring(L, -1, &n);
        add_escaped(b, s, n);
    } else if (vt == LUA_TNUMBER) {
        add_number(b, lua_tonumber(L, -1));
    } else if (vt == LUA_TBOOLEAN) {
        buf_adds(b, lua_toboolean(L, -1) ? "true" : "false");
    } else {
        *err = "values must be strings, numbers, booleans or tables";
        return -1;
    }
    return 0;
}

/* The table on top of the stack, its pairs under prefix (empty prefix: the top level). */
static int encode_value(lua_State *L, buf_t *b, buf_t *prefix, int depth, const char **err)
{
    if (depth > FORM_MAX_DEPTH) { *err = "parameters nest too deep (a cycle?)"; return -1; }
    if (!lua_checkstack(L, 8)) { *err = "parameters nest too deep"; return -1; }
    int t = lua_gettop(L);
    size_t base = prefix->len;
    size_t n = array_length(L, t);
    if (n) {
        for (size_t i = 1; i <= n; i++) {
            lua_rawgeti(L, t, (int)i);
            prefix->len = base;
            if (lua_type(L, -1) == LUA_TTABLE) buf_addf(prefix, "[%zu]", i - 1);   /* items[0][price] */
            else buf_adds(prefix, "[]");                                           /* expand[] */
            int rc = encode_pair(L, b, prefix, depth, err);
            lua_pop(L, 1);
            if (rc < 0) return -1;
        }
        prefix->len = base;
        return 0;
    }
    /* An object: keys sorted, so one request always encodes the same. */
    size_t count = 0;
    lua_pushnil(L);
    while (lua_next(L, t) != 0) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING) { lua_pop(L, 1); *err = "parameter names must be strings"; return -1; }
        count++;
    }
    if (count == 0) {   /* an empty object: `metadata=` (Stripe reads it as "unset") */
        if (base == 0) return 0;
        if (b->len) buf_add(b, "&", 1);
        buf_add(b, prefix->data, prefix->len);
        buf_add(b, "=", 1);
        return 0;
    }
    const char **keys = malloc(count * sizeof *keys);
    if (!keys) { *err = "out of memory"; return -1; }
    size_t k = 0;
    lua_pushnil(L);
    while (lua_next(L, t) != 0) {   /* the key strings stay alive: they are keys of t */
        lua_pop(L, 1);
        keys[k++] = lua_tostring(L, -1);
    }
    qsort(keys, count, sizeof *keys, cmp_keys);
    int rc = 0;
    for (k = 0; k < count && rc == 0; k++) {
        prefix->len = base;
        if (base) buf_add(prefix, "[", 1);
        add_escaped(prefix, keys[k], strlen(keys[k]));
        if (base) buf_add(prefix, "]", 1);
        lua_getfield(L, t, keys[k]);
        rc = encode_pair(L, b, prefix, depth, err);
        lua_pop(L, 1);
    }
    free(keys);
    prefix->len = base;
    return rc;
}

/* ---- Lua bindings ---------------------------------------------------------------------- */

/* stripe.form(params) → "amount=1999&expand[]=latest_charge&metadata[order_id]=..." */
static int l_form(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    buf_t b, prefix;
    buf_init(&b);
    buf_init(&prefix);
    const char *err = NULL;
    int rc = encode_value(L, &b, &prefix, 0, &err);
    if (rc == 0 && (b.failed || prefix.failed)) { rc = -1; err = "out of memory"; }
    if (rc == 0) lua_pushlstring(L, b.data ? b.data : "", b.len);
    buf_free(&b);
    buf_free(&prefix);
    if (rc < 0) return luaL_error(L, "stripe.form: %s", err);
    return 1;
}

/* stripe.verify_webhook(payload, header, secret[, tolerance[, now]]) → true, timestamp, or
 * nil, err, "invalid". A missing header (nil) is a failure, not misuse. */
static int l_verify_webhook(lua_State *L)
{
    size_t plen, hlen = 0, slen;
    const char *payload = luaL_checklstring(L, 1, &plen);
    const char *header = lua_isnoneornil(L, 2) ? NULL : luaL_checklstring(L, 2, &hlen);
    const char *secret = luaL_checklstring(L, 3, &slen);
    if (slen == 0) return luaL_argerror(L, 3, "expecting a non-empty webhook secret");
    lua_Number tol = luaL_optnumber(L, 4, STRIPE_DEFAULT_TOLERANCE);
    if (!(tol >= 0 && tol <= 86400 * 365)) return luaL_argerror(L, 4, "expecting a tolerance of 0 to 31536000 seconds");
    long now = lua_isnoneornil(L, 5) ? (long)time(NULL) : (long)luaL_checknumber(L, 5);
    const char *err = NULL;
    if (stripe_verify_signature(payload, plen, header, hlen, secret, slen, (long)tol, now, &err) < 0) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        lua_pushliteral(L, "invalid");
        return 3;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* stripe.should_retry(status, should_retry_header) → boolean (status 0 or nil: network). */
static int l_should_retry(lua_State *L)
{
    long status = (long)luaL_optnumber(L, 1, 0);
    const char *h = luaL_optstring(L, 2, NULL);
    lua_pushboolean(L, stripe_should_retry(status, h));
    return 1;
}

/* stripe.backoff(attempt) → seconds to wait before that retry, with random jitter. */
static int l_backoff(lua_State *L)
{
    int attempt = (int)luaL_checkinteger(L, 1);
    uint32_t r = 0;
    if (RAND_bytes((unsigned char *)&r, sizeof r) != 1) r = 0x80000000u;
    lua_pushnumber(L, stripe_backoff_s(attempt, (double)r / 4294967296.0));
    return 1;
}

/* stripe.error_code(status) → "invalid" | "not_found" | "conflict" | "unavailable". */
static int l_error_code(lua_State *L)
{
    lua_pushstring(L, stripe_error_code((long)luaL_checknumber(L, 1)));
    return 1;
}

/* ---- module ---------------------------------------------------------------------------- */

int luaopen_stripe(lua_State *L)
{
    static const luaL_Reg fns[] = {
        { "form", l_form }, { "verify_webhook", l_verify_webhook }, { "should_retry", l_should_retry },
        { "backoff", l_backoff }, { "error_code", l_error_code }, { NULL, NULL },
    };
    if (luaL_loadbuffer(L, (const char *)luaJIT_BC_stripe, luaJIT_BC_stripe_SIZE, "=stripe.lua") != 0) return lua_error(L);
    lua_newtable(L);
    luaL_setfuncs(L, fns, 0);
    lua_pushliteral(L, STRIPE_API_VERSION);
    lua_setfield(L, -2, "api_version");
    lua_call(L, 1, 1);   /* stripe.lua(C) → the module */
    return 1;
}

const binding_t binding_stripe = {
    .name = "stripe",
    .open = luaopen_stripe,
};
