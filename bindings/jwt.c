/* jwt: RS256 access tokens for Lua (`require "jwt"`), on the process keyset of jwt_keys.c.
 *   local token = jwt.sign({ sub = id, role = "buyer", scope = "" })   -- iss/aud/iat/exp/jti filled
 *   local claims, err, code = jwt.verify(token)   -- code: "invalid" | "expired" | "unavailable"
 *   return 200, jwt.jwks(), { ["Cache-Control"] = "max-age=300" }      -- the JWK Set JSON
 * Keys are loaded at process start (global_init) from the environment; see jwt_keys.c. */
#include <lauxlib.h>

#include "../host/bindings.h"
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>

#include "../core/jwt_keys.h"
#include "../core/json_reader.h"

#define DEFAULT_TTL 900   /* CONTRACT §3: access tokens live 15 minutes */

/* Push nil, err, code and return 3: the runtime-failure triple. */
static int fail(lua_State *L, const char *err, const char *code)
{
    lua_pushnil(L);
    lua_pushstring(L, err);
    lua_pushstring(L, code);
    return 3;
}

/* Set t[k] = the value on top of the stack unless t[k] is already set (pops the value). */
static void set_default(lua_State *L, int t, const char *k)
{
    lua_getfield(L, t, k);
    int present = !lua_isnil(L, -1);
    lua_pop(L, 1);
    if (present) lua_pop(L, 1);
    else lua_setfield(L, t, k);
}

/* Push a fresh random UUID (version 4) string, the default jti. */
static void push_jti(lua_State *L)
{
    unsigned char u[16];
    char s[37];
    RAND_bytes(u, sizeof u);
    u[6] = (unsigned char)(0x40 | (u[6] & 0x0f));
    u[8] = (unsigned char)(0x80 | (u[8] & 0x3f));
    snprintf(s, sizeof s, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1], u[2], u[3],
             u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
    lua_pushstring(L, s);
}

/* jwt.sign(claims[, opts]) → token, or nil, err, "unavailable" when no signing key is loaded.
 * opts: key = PEM private key (default: JWT_PRIVATE_KEY_FILE), kid (default: the key's RFC 7638
 * thumbprint), ttl = seconds (default 900). A copy of claims gets iss, aud, iat, exp and jti
 * unless they are set. */
static int l_sign(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    if (lua_isnil(L, 2)) {
        lua_newtable(L);
        lua_replace(L, 2);
    }
    lua_getfield(L, 2, "key");   /* 3 */
    lua_getfield(L, 2, "kid");   /* 4 */
    lua_getfield(L, 2, "ttl");   /* 5 */
    size_t pemlen = 0;
    const char *pem = lua_isnil(L, 3) ? NULL : lua_tolstring(L, 3, &pemlen);
    const char *kid_opt = lua_isnil(L, 4) ? NULL : lua_tostring(L, 4);
    if (!lua_isnil(L, 3) && !pem) return luaL_argerror(L, 2, "opts.key must be a PEM string");
    if (!lua_isnil(L, 4) && (!kid_opt || !*kid_opt || strlen(kid_opt) >= JWT_KID_MAX || strpbrk(kid_opt, "\"\\")))
        return luaL_argerror(L, 2, "opts.kid must be a short string without quotes or backslashes");
    double ttl = lua_isnil(L, 5) ? DEFAULT_TTL : lua_tonumber(L, 5);
    if (ttl <= 0) return luaL_argerror(L, 2, "opts.ttl must be a positive number of seconds");

    lua_newtable(L);   /* 6: the claims that get signed */
    lua_pushnil(L);
    while (lua_next(L, 1)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, 6);
    }
    time_t now = time(NULL);
    lua_pushstring(L, jwt_keys_issuer()); set_default(L, 6, "iss");
    lua_pushstring(L, jwt_keys_audience()); set_default(L, 6, "aud");
    lua_pushnumber(L, (lua_Number)now); set_default(L, 6, "iat");
    lua_pushnumber(L, (lua_Number)now + (lua_Number)(long)ttl); set_default(L, 6, "exp");
    push_jti(L); set_default(L, 6, "jti");
    lua_getglobal(L, "require");
    lua_pushliteral(L, "cjson");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "encode");
    lua_pushvalue(L, 6);
    lua_call(L, 1, 1);   /* raises on claims JSON cannot hold (functions, ...): misuse */
    size_t jlen;
    const char *json = lua_tolstring(L, -1, &jlen);
    size_t cap = jwt_token_sign_cap(jlen);
    char *out = lua_newuserdata(L, cap);   /* GC-owned; nothing C-owned is held yet */

    const char *err = NULL;
    char kid[JWT_KID_MAX] = "";
    EVP_PKEY *key = pem ? jwt_keys_parse_pem(pem, pemlen, 1, &err) : jwt_keys_signing(kid, sizeof kid);
    if (!key && pem) return luaL_argerror(L, 2, err);
    if (!key) return fail(L, "no signing key loaded (JWT_PRIVATE_KEY_FILE)", "unavailable");
    if (kid_opt) snprintf(kid, sizeof kid, "%s", kid_opt);
    else if (pem && jwt_keys_thumbprint(key, kid, sizeof kid) != 0) kid[0] = 0;
    long n = kid[0] ? jwt_token_sign(key, kid, json, jlen, out, cap, &err) : (err = "cannot derive a key id", -1);
    EVP_PKEY_free(key);
    if (n < 0) return fail(L, err, strncmp(err, "claims", 6) == 0 ? "invalid" : "unavailable");
    lua_pushlstring(L, out, (size_t)n);
    return 1;
}

/* jwt.verify(token[, opts]) → claims table, or nil, err, code ("invalid", "expired",
 * "unavailable"). opts: issuer, audience (default JWT_ISSUER, JWT_AUDIENCE). */
static int l_verify(lua_State *L)
{
    size_t len;
    const char *token = luaL_checklstring(L, 1, &len);
    const char *iss = NULL, *aud = NULL;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lua_getfield(L, 2, "issuer");
        lua_getfield(L, 2, "audience");
        iss = lua_tostring(L, -2);   /* kept alive by opts */
        aud = lua_tostring(L, -1);
    }
    if (len > JWT_MAX_TOKEN) return fail(L, "malformed token", "invalid");
    char *claims = lua_newuserdata(L, len + 1);   /* GC-owned scratch for the decoded claims */
    size_t clen = 0;
    const char *err = NULL;
    int code = jwt_token_verify(token, len, iss, aud, claims, len + 1, &clen, &err);
    if (code != JWT_TOKEN_OK) return fail(L, err, jwt_token_code_name(code));
    if (json_reader_push(L, claims, clen) != 0) return fail(L, "malformed token payload", "invalid");
    return 1;
}

/* jwt.jwks() → the JSON Web Key Set of the verification keys (kty, use, alg, kid, n, e). */
static int l_jwks(lua_State *L)
{
    for (;;) {
        size_t want = jwt_keys_jwks(NULL, 0);
        char *out = lua_newuserdata(L, want + 1);   /* GC-owned; sized outside the lock */
        size_t n = jwt_keys_jwks(out, want + 1);
        if (n <= want) {
            lua_pushlstring(L, out, n);
            return 1;
        }
        lua_pop(L, 1);   /* the keyset grew in between: measure again */
    }
}

/* jwt.kid() → the kid tokens are signed with, or nil without a signing key. */
static int l_kid(lua_State *L)
{
    char kid[JWT_KID_MAX];
    EVP_PKEY *key = jwt_keys_signing(kid, sizeof kid);
    EVP_PKEY_free(key);
    if (key) lua_pushstring(L, kid);
    else lua_pushnil(L);
    return 1;
}

int luaopen_jwt(lua_State *L)
{
    static const luaL_Reg fns[] = {
        { "sign", l_sign }, { "verify", l_verify }, { "jwks", l_jwks }, { "kid", l_kid }, { NULL, NULL },
    };
    lua_newtable(L);
    luaL_setfuncs(L, fns, 0);
    lua_pushinteger(L, JWT_CLOCK_SKEW);
    lua_setfield(L, -2, "clock_skew");
    return 1;
}

const binding_t binding_jwt = {
    .name = "jwt", .open = luaopen_jwt, .global_init = jwt_keys_init, .global_cleanup = jwt_keys_cleanup,
};
