/* ratelimit: the Lua surface of the limiter (core/ratelimit.c).
 *   local ok, info = ratelimit.check("login", email, "5/min", { cost = 1, peek = false })
 *   -- info = { limit, remaining, reset_after, retry_after (whole seconds), backend }
 *   ratelimit.reset("login", email)                 -- e.g. after a successful login
 *   return 429, problem, ratelimit.headers(info)    -- Retry-After + RateLimit-*
 * Misuse raises; a Redis failure never does: the answer then comes from this process alone.
 * From a handler the check parks it while Redis answers. */
#include <lauxlib.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "../core/ratelimit.h"
#include "../host/bindings.h"
#include "../host/ratelimit_http.h"
#include "../host/request.h"
#include "../host/worker.h"

/* ---- Lua bindings ----------------------------------------------------------------------- */

static int valid_name(const char *s, size_t n)
{
    if (n < 1 || n >= RATELIMIT_NAME_MAX) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
              c == '.' || c == ':'))
            return 0;
    }
    return 1;
}

static worker_t *upworker(lua_State *L, const char *fn)
{
    worker_t *w = lua_touserdata(L, lua_upvalueindex(1));
    if (!w) luaL_error(L, "ratelimit.%s: no worker owns this Lua state (module load in the check state?); call it from a handler", fn);
    return w;
}

static const char *check_name(lua_State *L, const char *fn)
{
    size_t n;
    const char *name = lua_tolstring(L, 1, &n);
    if (lua_type(L, 1) != LUA_TSTRING || !valid_name(name, n))
        luaL_argerror(L, 1, lua_pushfstring(L, "ratelimit.%s: expecting a name of 1 to %d letters, digits or _-.:", fn, RATELIMIT_NAME_MAX - 1));
    return name;
}

static const char *check_key(lua_State *L, const char *fn, size_t *len)
{
    int t = lua_type(L, 2);
    *len = 0;
    const char *key = (t == LUA_TSTRING || t == LUA_TNUMBER) ? lua_tolstring(L, 2, len) : NULL;
    if (!key || *len == 0) luaL_argerror(L, 2, lua_pushfstring(L, "ratelimit.%s: expecting a non-empty key string, got %s", fn, luaL_typename(L, 2)));
    return key;
}

static void push_info(lua_State *L, const ratelimit_result_t *res)
{
    lua_createtable(L, 0, 5);
    lua_pushnumber(L, (lua_Number)res->limit);
    lua_setfield(L, -2, "limit");
    lua_pushnumber(L, (lua_Number)res->remaining);
    lua_setfield(L, -2, "remaining");
    lua_pushnumber(L, (lua_Number)ratelimit_seconds(res->reset_after_us));
    lua_setfield(L, -2, "reset_after");
    int64_t retry = ratelimit_seconds(res->retry_after_us);
    lua_pushnumber(L, (lua_Number)(res->allowed ? 0 : retry < 1 ? 1 : retry));
    lua_setfield(L, -2, "retry_after");
    lua_pushstring(L, res->local ? "local" : "redis");
    lua_setfield(L, -2, "backend");
}

/* ratelimit.check(name, key, limit, { cost = 1, peek = false }) → allowed, info. With peek the
 * answer is the one a real check would give, and nothing is stored. */
/* A parked handler's check is answered (on the loop): its two results onto the coroutine. */
static void lua_check_done(void *arg, const ratelimit_result_t *res)
{
    request_t *r = arg;
    lua_checkstack(r->co, 4);
    lua_pushboolean(r->co, res->allowed);
    push_info(r->co, res);
    worker_wake(r, 2);
}

static void lua_check_cancel(void *arg)
{
    ratelimit_wait_cancel(arg);
}

static int l_check(lua_State *L)
{
    const char *name = check_name(L, "check");
    size_t keylen;
    const char *key = check_key(L, "check", &keylen);
    ratelimit_limit_t lim;
    char err[160];
    if (ratelimit_parse(lua_tostring(L, 3), &lim, err, sizeof err) < 0 || lua_type(L, 3) != LUA_TSTRING)
        return luaL_argerror(L, 3, lua_pushfstring(L, "ratelimit.check: %s", err));
    lua_Number cost = 1;
    int peek = 0;
    if (!lua_isnoneornil(L, 4)) {
        luaL_checktype(L, 4, LUA_TTABLE);
        lua_getfield(L, 4, "cost");
        if (!lua_isnil(L, -1)) {
            cost = lua_tonumber(L, -1);
            /* The range first: casting NaN or 1e300 to an integer is undefined. */
            if (lua_type(L, -1) != LUA_TNUMBER || !(cost >= 0 && cost <= 1000000) || cost != (double)(int64_t)cost)
                return luaL_argerror(L, 4, "ratelimit.check: cost must be a whole number from 0 to 1000000");
        }
        lua_getfield(L, 4, "peek");
        peek = lua_toboolean(L, -1);
        lua_pop(L, 2);
    }
    worker_t *w = upworker(L, "check");
    ratelimit_result_t res;
    if (worker_can_yield(L)) {   /* a handler: park it while Redis answers */
        ratelimit_wait_t *wait;
        ratelimit_ctx_t cx = worker_limits(w);
        if (ratelimit_check_async(&cx, name, key, keylen, &lim, (int64_t)cost, peek, &res, lua_check_done, w->cur, &wait))
            return worker_wait(L, lua_check_cancel, wait);
    } else {
        ratelimit_ctx_t cx = worker_limits(w);
    ratelimit_check(&cx, name, key, keylen, &lim, (int64_t)cost, peek, &res);
    }
    if (lim.count == 0) { res.limit = 0; res.remaining = 0; }
    lua_pushboolean(L, res.allowed);
    push_info(L, &res);
    return 2;
}

/* ratelimit.reset(name, key): forget the key's bucket (full again). */
static int l_reset(lua_State *L)
{
    const char *name = check_name(L, "reset");
    size_t keylen;
    const char *key = check_key(L, "reset", &keylen);
    ratelimit_ctx_t cx = worker_limits(upworker(L, "reset"));
    ratelimit_reset(&cx, name, key, keylen);
    return 0;
}

/* ratelimit.headers(info) → { ["RateLimit-Limit"] = .., ..., ["Retry-After"] = .. (when denied) }. */
static int l_headers(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    static const char *const fields[] = { "limit", "remaining", "reset_after", "retry_after" };
    static const char *const names[] = { "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "Retry-After" };
    lua_createtable(L, 0, 4);
    for (int i = 0; i < 4; i++) {
        lua_getfield(L, 1, fields[i]);
        if (lua_type(L, -1) == LUA_TNUMBER && (i < 3 || lua_tonumber(L, -1) > 0)) {
            lua_pushfstring(L, "%d", (int)lua_tonumber(L, -1));
            lua_setfield(L, -3, names[i]);
        }
        lua_pop(L, 1);
    }
    return 1;
}

/* ratelimit.parse("10/min") → { count, period (seconds), burst }; raises on a bad string. */
static int l_parse(lua_State *L)
{
    ratelimit_limit_t lim;
    char err[160];
    if (ratelimit_parse(luaL_checkstring(L, 1), &lim, err, sizeof err) < 0) return luaL_argerror(L, 1, err);
    lua_createtable(L, 0, 3);
    lua_pushnumber(L, (lua_Number)lim.count);
    lua_setfield(L, -2, "count");
    lua_pushnumber(L, (lua_Number)lim.period_us / 1e6);
    lua_setfield(L, -2, "period");
    lua_pushnumber(L, (lua_Number)lim.burst);
    lua_setfield(L, -2, "burst");
    return 1;
}

/* ---- binding hooks ---------------------------------------------------------------------- */

static int rl_init(void) { return ratelimit_config_check(); }
static void rl_cleanup(void) { ratelimit_local_shutdown(); }

int luaopen_ratelimit(lua_State *L)
{
    static const luaL_Reg fns[] = {
        { "check", l_check }, { "reset", l_reset }, { "headers", l_headers }, { "parse", l_parse }, { NULL, NULL },
    };
    lua_newtable(L);
    lua_pushlightuserdata(L, worker_from_lua(L));   /* NULL in the scratch check state */
    luaL_setfuncs(L, fns, 1);
    return 1;
}

const binding_t binding_ratelimit = {
    .name = "ratelimit", .open = luaopen_ratelimit, .global_init = rl_init, .global_cleanup = rl_cleanup,
};
