/* cache: Redis for Lua over hiredis — one connection per worker thread, opened on first use.
 *   local v, err, code = cache.call("GET", "k")         -- missing key: bare nil
 *   local replies = cache.pipeline({ { "SET", "a", "1" }, { "INCR", "n" } })
 *   local r = cache.eval("return redis.call('GET', KEYS[1])", { "k" }, {})
 * Wrong arguments raise; I/O failure returns nil, err, "unavailable"|"timeout"; an error reply
 * returns nil, msg, "invalid" (or "unavailable" for BUSY/LOADING/READONLY/OOM/...). */
#include "cache.h"

#include <errno.h>
#include <lauxlib.h>
#include <math.h>
#include <openssl/evp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "../host/bindings.h"
#include "../host/config.h"
#include "../host/worker.h"

#define CACHE_DEFAULT_TIMEOUT_MS 1000

/* w->binding[BIND_CACHE]: owned by the worker, freed by cache_worker_free. */
typedef struct cache_conn {
    redisContext *c;       /* NULL until first use, and after an I/O error */
    redis_async_t *as;     /* the HTTP thread's non-blocking connection (core/redis.c), or NULL */
    int timeout_ms;        /* REDIS_TIMEOUT_MS, read once */
} cache_conn_t;

/* ---- URL, error codes, reply mapping ------------------------------------------------------ */

const char *cache_error_code(const char *msg)
{
    static const char *const unavailable[] = {
        "BUSY", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "READONLY", "OOM", "NOAUTH", NULL,
    };
    for (int i = 0; unavailable[i]; i++) {
        size_t n = strlen(unavailable[i]);
        if (strncmp(msg, unavailable[i], n) == 0 && (msg[n] == ' ' || msg[n] == 0)) return "unavailable";
    }
    return "invalid";
}

void cache_push_reply(lua_State *L, const redisReply *r, int nested)
{
    switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
        lua_pushlstring(L, r->str, r->len);
        break;
    case REDIS_REPLY_INTEGER:
        lua_pushnumber(L, (lua_Number)r->integer);
        break;
    case REDIS_REPLY_ARRAY:
        lua_createtable(L, (int)r->elements, 0);
        for (size_t i = 0; i < r->elements; i++) {
            cache_push_reply(L, r->element[i], 1);
            lua_rawseti(L, -2, (int)i + 1);
        }
        break;
    case REDIS_REPLY_ERROR:
        if (!nested) { lua_pushnil(L); break; }
        lua_createtable(L, 0, 1);
        lua_pushlstring(L, r->str, r->len);
        lua_setfield(L, -2, "err");
        break;
    default: /* REDIS_REPLY_NIL */
        if (nested) lua_pushboolean(L, 0); else lua_pushnil(L);
        break;
    }
}

/* ---- the connection ----------------------------------------------------------------------- */

static int timeout_ms(void)
{
    const char *s = getenv("REDIS_TIMEOUT_MS");
    long v = s && *s ? config_parse_number(s, 0) : -1;
    return v > 0 && v <= 600000 ? (int)v : CACHE_DEFAULT_TIMEOUT_MS;
}

static const char *redis_url_of(worker_t *w)
{
    const char *u = w->cfg ? w->cfg->redis_url : NULL;
    if (!u) u = getenv("REDIS_URL");
    return u && *u ? u : NULL;
}

static void conn_drop(cache_conn_t *cc)
{
    if (cc->c) redisFree(cc->c);
    cc->c = NULL;
}

/* Open cc->c from REDIS_URL with connect and command deadlines. 0, or -1 with err and code. */
static int conn_open(worker_t *w, cache_conn_t *cc, char *err, size_t errlen, const char **code)
{
    const char *url = redis_url_of(w);
    *code = "unavailable";
    if (!url) { snprintf(err, errlen, "cache: REDIS_URL is not set"); return -1; }
    cc->c = redis_connect(url, cc->timeout_ms, err, errlen, code);
    return cc->c ? 0 : -1;
}

static cache_conn_t *conn_of(worker_t *w)
{
    if (!w->binding[BIND_CACHE]) {
        cache_conn_t *cc = calloc(1, sizeof(cache_conn_t));
        if (cc) cc->timeout_ms = timeout_ms();
        w->binding[BIND_CACHE] = cc;
    }
    return w->binding[BIND_CACHE];
}

/* Inside an HTTP handler's coroutine: send on the thread's async connection and park the
 * handler until the replies are in (cache_async.c). The batch is copied before it returns. */
static int exec_async(lua_State *L, worker_t *w, int kind, int n, const cache_cmd_t *cmds, int script_idx)
{
    cache_conn_t *cc = conn_of(w);
    if (!cc) {
        lua_pushnil(L);
        lua_pushstring(L, "cache: out of memory");
        lua_pushstring(L, "unavailable");
        return 3;
    }
    size_t slen = 0;
    const char *script = script_idx ? lua_tolstring(L, script_idx, &slen) : NULL;
    return cache_async_exec(L, &cc->as, w, redis_url_of(w), cc->timeout_ms, kind, n, cmds, script, slen);
}

static void free_replies(redisReply **replies, int n)
{
    for (int i = 0; i < n; i++) if (replies[i]) { freeReplyObject(replies[i]); replies[i] = NULL; }
}

/* Send the commands as one pipeline and read their replies into replies[0..n) (caller frees
 * each). A connection found closed before sending, or whose write failed (so no command can
 * have run), is reopened and the batch retried once; a read failure is not retried — the
 * commands may have run. Returns 0, or -1 with err and code and no reply left allocated. */
static int cache_exec(worker_t *w, int n, const cache_cmd_t *cmds, redisReply **replies,
                      char *err, size_t errlen, const char **code)
{
    cache_conn_t *cc = conn_of(w);
    if (!cc) { snprintf(err, errlen, "cache: out of memory"); *code = "unavailable"; return -1; }
    for (int attempt = 0; attempt < 2; attempt++) {
        int reused = cc->c != NULL;
        if (cc->c && redis_stale(cc->c)) { conn_drop(cc); reused = 0; }
        if (!cc->c && conn_open(w, cc, err, errlen, code) < 0) return -1;
        for (int i = 0; i < n; i++)
            if (redisAppendCommandArgv(cc->c, cmds[i].argc, cmds[i].argv, cmds[i].len) != REDIS_OK) {
                snprintf(err, errlen, "redis: %s", cc->c->errstr);
                *code = "unavailable";
                conn_drop(cc);
                return -1;
            }
        int done = 0, failed = 0;
        while (!done)
            if (redisBufferWrite(cc->c, &done) != REDIS_OK) { failed = 1; break; }
        if (failed) {
            *code = redis_io_error(cc->c, errno, "write", err, errlen);
            conn_drop(cc);
            if (reused && attempt == 0) continue;
            return -1;
        }
        for (int i = 0; i < n; i++) {
            void *r = NULL;
            errno = 0;
            if (redisGetReply(cc->c, &r) != REDIS_OK || !r) {
                *code = redis_io_error(cc->c, errno, "read", err, errlen);
                conn_drop(cc);
                free_replies(replies, i);
                return -1;
            }
            replies[i] = r;
        }
        return 0;
    }
    return -1;
}

/* ---- argument batches --------------------------------------------------------------------- */

/* A command argument must be a string or a number (formatted exactly, never as 1e+15). */
static int arg_ok(lua_State *L, int idx)
{
    int t = lua_type(L, idx);
    return t == LUA_TSTRING || t == LUA_TNUMBER;
}

static size_t fmt_number(char *buf, size_t len, lua_Number x)
{
    if (x == floor(x) && fabs(x) < 9.2e18) return (size_t)snprintf(buf, len, "%lld", (long long)x);
    return (size_t)snprintf(buf, len, "%.17g", x);
}

/* Set argument slot k from the Lua value at idx (already checked by arg_ok). */
static void take_arg(lua_State *L, int idx, const char **argv, size_t *len, char *nums, int k)
{
    if (lua_type(L, idx) == LUA_TNUMBER) {
        char *b = nums + (size_t)k * 32;
        len[k] = fmt_number(b, 32, lua_tonumber(L, idx));
        argv[k] = b;
    } else {
        argv[k] = lua_tolstring(L, idx, &len[k]);
    }
}

/* One allocation for ncmds commands of total arguments; caller frees the returned block. */
static void *batch_alloc(int ncmds, int total, cache_cmd_t **cmds, const char ***argv, size_t **len, char **nums)
{
    size_t sz = (size_t)ncmds * sizeof **cmds + (size_t)total * (sizeof **argv + sizeof **len + 32);
    char *m = malloc(sz ? sz : 1);
    if (!m) return NULL;
    *cmds = (cache_cmd_t *)m;
    *argv = (const char **)(m + (size_t)ncmds * sizeof **cmds);
    *len = (size_t *)(*argv + total);
    *nums = (char *)(*len + total);
    return m;
}

/* ---- Lua bindings ------------------------------------------------------------------------- */

static worker_t *upworker(lua_State *L, const char *fn)
{
    worker_t *w = lua_touserdata(L, lua_upvalueindex(1));
    if (!w) luaL_error(L, "cache.%s: no worker owns this Lua state (module load in the check state?); call it from a handler", fn);
    return w;
}

/* Return the first reply (top-level mapping) and free every reply; an error reply → nil, msg, code. */
static int push_result(lua_State *L, redisReply *r)
{
    if (r->type == REDIS_REPLY_ERROR) {
        lua_pushnil(L);
        lua_pushlstring(L, r->str, r->len);
        lua_pushstring(L, cache_error_code(r->str));
        freeReplyObject(r);
        return 3;
    }
    cache_push_reply(L, r, 0);
    freeReplyObject(r);
    return 1;
}

static int fail(lua_State *L, const char *err, const char *code)
{
    lua_pushnil(L);
    lua_pushstring(L, err);
    lua_pushstring(L, code);
    return 3;
}

/* cache.call(cmd, args...) → the reply; nil for a missing key; nil, err, code on failure. */
static int l_call(lua_State *L)
{
    int n = lua_gettop(L);
    if (n < 1 || lua_type(L, 1) != LUA_TSTRING) return luaL_argerror(L, 1, "cache.call: expecting a command name string");
    for (int i = 2; i <= n; i++)
        if (!arg_ok(L, i)) return luaL_argerror(L, i, lua_pushfstring(L, "cache.call: expecting a string or number, got %s", luaL_typename(L, i)));
    worker_t *w = upworker(L, "call");
    cache_cmd_t *cmd;
    const char **argv;
    size_t *len;
    char *nums;
    void *block = batch_alloc(1, n, &cmd, &argv, &len, &nums);
    if (!block) return luaL_error(L, "cache.call: out of memory");
    for (int i = 1; i <= n; i++) take_arg(L, i, argv, len, nums, i - 1);
    *cmd = (cache_cmd_t){ .argc = n, .argv = argv, .len = len };
    if (worker_can_yield(L)) {
        int nret = exec_async(L, w, CACHE_ONE, 1, cmd, 0);
        free(block);
        return nret;
    }
    redisReply *r = NULL;
    char err[512];
    const char *code;
    int rc = cache_exec(w, 1, cmd, &r, err, sizeof err, &code);
    free(block);
    return rc < 0 ? fail(L, err, code) : push_result(L, r);
}

/* cache.pipeline({ {cmd, args...}, ... }) → { reply, ... } in order (inside: nil → false,
 * an error reply → { err = msg }), or nil, err, code when the connection failed. */
static int l_pipeline(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    int ncmds = (int)lua_objlen(L, 1), total = 0;
    if (ncmds < 1) return luaL_argerror(L, 1, "cache.pipeline: expecting a non-empty list of commands");
    for (int i = 1; i <= ncmds; i++) {
        lua_rawgeti(L, 1, i);
        int argc = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 0;
        if (argc < 1) return luaL_argerror(L, 1, lua_pushfstring(L, "cache.pipeline: command %d must be a non-empty list", i));
        for (int k = 1; k <= argc; k++) {
            lua_rawgeti(L, -1, k);
            int ok = k == 1 ? lua_type(L, -1) == LUA_TSTRING : arg_ok(L, -1);
            lua_pop(L, 1);
            if (!ok) return luaL_argerror(L, 1, lua_pushfstring(L, "cache.pipeline: command %d argument %d must be a %s", i, k, k == 1 ? "command name string" : "string or number"));
        }
        lua_pop(L, 1);
        total += argc;
    }
    worker_t *w = upworker(L, "pipeline");
    cache_cmd_t *cmds;
    const char **argv;
    size_t *len;
    char *nums;
    void *block = batch_alloc(ncmds, total, &cmds, &argv, &len, &nums);
    redisReply **replies = calloc((size_t)ncmds, sizeof(redisReply *));
    if (!block || !replies) { free(block); free(replies); return luaL_error(L, "cache.pipeline: out of memory"); }
    int k = 0;
    for (int i = 1; i <= ncmds; i++) {
        lua_rawgeti(L, 1, i);
        int argc = (int)lua_objlen(L, -1);
        cmds[i - 1] = (cache_cmd_t){ .argc = argc, .argv = argv + k, .len = len + k };
        for (int a = 1; a <= argc; a++, k++) {
            lua_rawgeti(L, -1, a);
            take_arg(L, -1, argv, len, nums, k);   /* strings stay alive in the table at 1 */
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    if (worker_can_yield(L)) {
        free(replies);
        int nret = exec_async(L, w, CACHE_PIPELINE, ncmds, cmds, 0);
        free(block);
        return nret;
    }
    char err[512];
    const char *code;
    int rc = cache_exec(w, ncmds, cmds, replies, err, sizeof err, &code);
    free(block);
    if (rc < 0) { free(replies); return fail(L, err, code); }
    lua_createtable(L, ncmds, 0);
    for (int i = 0; i < ncmds; i++) {
        cache_push_reply(L, replies[i], 1);
        lua_rawseti(L, -2, i + 1);
    }
    free_replies(replies, ncmds);
    free(replies);
    return 1;
}

/* The SHA-1 hex of script, cached per Lua state in the table at upvalue 2. Pushes nothing. */
static const char *script_sha(lua_State *L, int script_idx, char out[41])
{
    lua_pushvalue(L, script_idx);
    lua_rawget(L, lua_upvalueindex(2));
    if (lua_type(L, -1) == LUA_TSTRING) {
        memcpy(out, lua_tostring(L, -1), 41);
        lua_pop(L, 1);
        return out;
    }
    lua_pop(L, 1);
    size_t len;
    const char *s = lua_tolstring(L, script_idx, &len);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!EVP_Digest(s, len, md, &mdlen, EVP_sha1(), NULL) || mdlen != 20) return NULL;
    for (size_t i = 0; i < 20; i++) snprintf(out + 2 * i, 3, "%02x", md[i]);
    lua_pushvalue(L, script_idx);
    lua_pushlstring(L, out, 40);
    lua_rawset(L, lua_upvalueindex(2));
    return out;
}

static int check_list(lua_State *L, int idx, const char *what)
{
    if (lua_isnoneornil(L, idx)) return 0;
    if (!lua_istable(L, idx)) luaL_argerror(L, idx, lua_pushfstring(L, "cache.eval: expecting a list of %s", what));
    int n = (int)lua_objlen(L, idx);
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, idx, i);
        int ok = arg_ok(L, -1);
        lua_pop(L, 1);
        if (!ok) luaL_argerror(L, idx, lua_pushfstring(L, "cache.eval: %s[%d] must be a string or number", what, i));
    }
    return n;
}

/* cache.eval(script, keys, args) → the script's reply. EVALSHA first (the SHA cached per
 * state); on NOSCRIPT (a restart, SCRIPT FLUSH) EVAL, which also loads the script. */
static int l_eval(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TSTRING);
    int nkeys = check_list(L, 2, "keys"), nargs = check_list(L, 3, "args");
    worker_t *w = upworker(L, "eval");
    char sha[41];
    if (!script_sha(L, 1, sha)) return luaL_error(L, "cache.eval: cannot hash the script");
    int argc = 3 + nkeys + nargs;
    cache_cmd_t *cmd;
    const char **argv;
    size_t *len;
    char *nums;
    void *block = batch_alloc(1, argc, &cmd, &argv, &len, &nums);
    if (!block) return luaL_error(L, "cache.eval: out of memory");
    argv[0] = "EVALSHA"; len[0] = 7;
    argv[1] = sha; len[1] = 40;
    len[2] = fmt_number(nums + 64, 32, nkeys);
    argv[2] = nums + 64;
    int k = 3;
    for (int t = 2; t <= 3; t++)
        for (int i = 1; i <= (t == 2 ? nkeys : nargs); i++, k++) {
            lua_rawgeti(L, t, i);
            take_arg(L, -1, argv, len, nums, k);   /* strings stay alive in the table */
            lua_pop(L, 1);
        }
    *cmd = (cache_cmd_t){ .argc = argc, .argv = argv, .len = len };
    if (worker_can_yield(L)) {
        int nret = exec_async(L, w, CACHE_EVAL, 1, cmd, 1);
        free(block);
        return nret;
    }
    redisReply *r = NULL;
    char err[512];
    const char *code;
    int rc = cache_exec(w, 1, cmd, &r, err, sizeof err, &code);
    if (rc == 0 && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0) {
        freeReplyObject(r);
        r = NULL;
        argv[0] = "EVAL"; len[0] = 4;
        argv[1] = lua_tolstring(L, 1, &len[1]);
        rc = cache_exec(w, 1, cmd, &r, err, sizeof err, &code);
    }
    free(block);
    return rc < 0 ? fail(L, err, code) : push_result(L, r);
}

/* cache.reset() drops this worker's connection (the next call reconnects). */
static int l_reset(lua_State *L)
{
    worker_t *w = upworker(L, "reset");
    cache_conn_t *cc = w->binding[BIND_CACHE];
    if (cc) {
        conn_drop(cc);
        redis_async_reset(cc->as);
    }
    return 0;
}

/* ---- binding hooks ------------------------------------------------------------------------ */

static void cache_worker_free(worker_t *w)
{
    cache_conn_t *cc = w->binding[BIND_CACHE];
    if (!cc) return;
    conn_drop(cc);
    redis_async_free(cc->as);
    free(cc);
    w->binding[BIND_CACHE] = NULL;
}

/* PING from this worker's connection: 1 up, 0 down (why), -1 when REDIS_URL is unset. */
static int cache_ready(worker_t *w, char *why, size_t whylen)
{
    if (!redis_url_of(w)) return -1;
    const char *argv[] = { "PING" };
    size_t len[] = { 4 };
    cache_cmd_t cmd = { .argc = 1, .argv = argv, .len = len };
    redisReply *r = NULL;
    const char *code;
    if (cache_exec(w, 1, &cmd, &r, why, whylen, &code) < 0) return 0;
    int ok = r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0;
    if (!ok) snprintf(why, whylen, "PING answered %s", r->str ? r->str : "(no text)");
    freeReplyObject(r);
    return ok;
}

int luaopen_cache(lua_State *L)
{
    static const luaL_Reg fns[] = {
        { "call", l_call }, { "pipeline", l_pipeline }, { "eval", l_eval }, { "reset", l_reset }, { NULL, NULL },
    };
    lua_newtable(L);
    lua_pushlightuserdata(L, worker_from_lua(L));   /* NULL in the scratch check state */
    lua_newtable(L);                                /* script → SHA-1 hex */
    luaL_setfuncs(L, fns, 2);
    return 1;
}

const binding_t binding_cache = {
    .name = "cache", .open = luaopen_cache, .worker_free = cache_worker_free, .ready = cache_ready,
};
