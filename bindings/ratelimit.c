/* ratelimit: GCRA limits held in Redis (one EVALSHA on server time, so every replica shares
 * one bucket per key), falling back to the in-process table when Redis is down or unset.
 *   local ok, info = ratelimit.check("login", email, "5/min", { cost = 1, peek = false })
 *   -- info = { limit, remaining, reset_after, retry_after (whole seconds), backend }
 *   ratelimit.reset("login", email)                 -- e.g. after a successful login
 *   return 429, problem, ratelimit.headers(info)    -- Retry-After + RateLimit-*
 * Misuse raises; a Redis failure never does: the answer then comes from this process alone
 * (logged once per switch, counted in rate_limit_fallbacks_total). */
#include <errno.h>
#include <hiredis/hiredis.h>
#include <lauxlib.h>
#include <openssl/evp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../host/bindings.h"
#include "../host/config.h"
#include "../core/log.h"
#include "../core/metrics.h"
#include "../host/request.h"
#include "../host/worker.h"
#include "cache.h"
#include "ratelimit.h"

#define KEY_MAX 64                    /* longer keys are stored as their SHA-1 */
#define RETRY_REDIS_US 1000000ll      /* after a failure, answer locally this long */
#define DEFAULT_TIMEOUT_MS 250

/* KEYS[1] the bucket; ARGV: emission interval T (µs), tolerance tau = T * burst, cost, peek.
 * Returns { allowed, remaining, retry_after_us, reset_after_us } — ratelimit_gcra in Lua. */
static const char script[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local T, tau, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])\n"
    "local tat = tonumber(redis.call('GET', KEYS[1])) or now\n"
    "if tat < now then tat = now end\n"
    "local nxt = tat + T * cost\n"
    "if now < nxt - tau then\n"
    "  return { 0, math.max(0, math.floor((tau - (tat - now)) / T)), nxt - tau - now, tat - now }\n"
    "end\n"
    "if ARGV[4] ~= '1' then\n"
    "  redis.call('SET', KEYS[1], string.format('%.0f', nxt), 'PX', math.max(1, math.ceil((nxt - now) / 1000)))\n"
    "end\n"
    "return { 1, math.floor((tau - (nxt - now)) / T), 0, nxt - now }\n";

static char g_sha[41];
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static int g_timeout_ms = DEFAULT_TIMEOUT_MS;
static metric_family_t *g_rejections;
static metric_cell_t *g_fallbacks;
static _Atomic int64_t g_redis_retry_at;   /* monotonic µs: before it, skip Redis */
static _Atomic int g_local_mode;           /* 1 while answering locally after a failure */
static _Atomic int g_unset_logged;

/* w->binding[BIND_RATELIMIT]: this worker's own connection (hiredis is one thread per handle). */
typedef struct rl_conn {
    redisContext *c;         /* the blocking path: runners, the CLI, Lua's ratelimit.check */
    cache_async_t *as;       /* the loop's path: the host's checks on HTTP threads */
} rl_conn_t;

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void sha1_hex(const void *data, size_t len, char out[41])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (!EVP_Digest(data, len, md, &n, EVP_sha1(), NULL) || n != 20) memset(md, 0, 20);
    for (size_t i = 0; i < 20; i++) snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static void setup(void)
{
    sha1_hex(script, sizeof script - 1, g_sha);
    const char *v = getenv("RATE_LIMIT_TIMEOUT_MS");
    long ms = v && *v ? config_parse_number(v, 0) : -1;
    if (ms > 0 && ms <= 60000) g_timeout_ms = (int)ms;
    static const char *const labels[] = { "name" };
    char err[256];
    g_rejections = metrics_family("rate_limit_rejections_total", "Requests the host refused with 429, by limit name.",
                                  METRIC_COUNTER, 1, labels, 0, NULL, err, sizeof err);
    g_fallbacks = metrics_counter0("rate_limit_fallbacks_total",
                                   "Switches from Redis to the in-process rate-limit table (Redis down).");
}

void ratelimit_count_rejection(const char *name)
{
    pthread_once(&g_once, setup);
    if (!g_rejections) return;
    const char *labels[] = { name };
    metrics_cell_add(metrics_cell(g_rejections, labels), 1);
}

/* ---- Redis ------------------------------------------------------------------------------ */

static const char *redis_url_of(worker_t *w)
{
    const char *u = w && w->cfg ? w->cfg->redis_url : NULL;
    if (!u) u = getenv("REDIS_URL");
    return u && *u ? u : NULL;
}

static void conn_drop(rl_conn_t *rc)
{
    if (rc->c) redisFree(rc->c);
    rc->c = NULL;
}

static int conn_open(worker_t *w, rl_conn_t *rc, const char *url, char *err, size_t errlen)
{
    cache_url_t u;
    if (cache_url_parse(url, &u, err, errlen) < 0) return -1;
    struct timeval tv = { .tv_sec = g_timeout_ms / 1000, .tv_usec = (suseconds_t)(g_timeout_ms % 1000) * 1000 };
    redisContext *c = redisConnectWithTimeout(u.host, u.port, tv);
    if (!c || c->err) {
        snprintf(err, errlen, "redis connect %s:%d: %s", u.host, u.port, c ? c->errstr : "out of memory");
        if (c) redisFree(c);
        return -1;
    }
    redisSetTimeout(c, tv);
    char db[16];
    snprintf(db, sizeof db, "%d", u.db);
    const char *auth[] = { "AUTH", u.user[0] ? u.user : u.password, u.password }, *sel[] = { "SELECT", db };
    redisReply *r = NULL;
    int ok = 1;
    if (u.password[0]) {
        r = redisCommandArgv(c, u.user[0] ? 3 : 2, auth, NULL);
        ok = r && r->type != REDIS_REPLY_ERROR;
        if (r) freeReplyObject(r);
    }
    if (ok && u.db) {
        r = redisCommandArgv(c, 2, sel, NULL);
        ok = r && r->type != REDIS_REPLY_ERROR;
        if (r) freeReplyObject(r);
    }
    if (!ok) { snprintf(err, errlen, "redis AUTH/SELECT failed"); redisFree(c); return -1; }
    (void)w;
    rc->c = c;
    return 0;
}

static rl_conn_t *conn_of(worker_t *w)
{
    if (!w->binding[BIND_RATELIMIT]) w->binding[BIND_RATELIMIT] = calloc(1, sizeof(rl_conn_t));
    return w->binding[BIND_RATELIMIT];
}

/* The Redis key of (name, key): "ratelimit:<name>:<key>", a long key replaced by its SHA-1. */
static size_t redis_key(char *out, size_t outlen, const char *name, const char *key, size_t keylen)
{
    char h[41];
    if (keylen > KEY_MAX) { sha1_hex(key, keylen, h); key = h; keylen = 40; }
    int n = snprintf(out, outlen, "ratelimit:%s:", name);
    if (n < 0 || (size_t)n + keylen >= outlen) return 0;
    memcpy(out + n, key, keylen);
    return (size_t)n + keylen;
}

/* One command on this worker's connection; a stale idle connection is reopened first. */
static redisReply *run(worker_t *w, int argc, const char **argv, const size_t *len, char *err, size_t errlen)
{
    rl_conn_t *rc = conn_of(w);
    if (!rc) { snprintf(err, errlen, "out of memory"); return NULL; }
    if (rc->c) {
        struct pollfd p = { .fd = rc->c->fd, .events = POLLIN };
        if (poll(&p, 1, 0) != 0) conn_drop(rc);   /* Redis never writes to an idle client */
    }
    const char *url = redis_url_of(w);
    if (!rc->c && conn_open(w, rc, url, err, errlen) < 0) return NULL;
    redisReply *r = redisCommandArgv(rc->c, argc, argv, len);
    if (!r) {
        snprintf(err, errlen, "redis: %s", rc->c->errstr[0] ? rc->c->errstr : strerror(errno));
        conn_drop(rc);
    }
    return r;
}

/* The GCRA check in Redis. 0, or -1 with err (the caller falls back). */
static int redis_check(worker_t *w, const char *rkey, size_t rklen, const ratelimit_limit_t *lim, int64_t cost,
                       int peek, ratelimit_result_t *out, char *err, size_t errlen)
{
    int64_t t = lim->period_us / lim->count;
    if (t < 1) t = 1;
    char a1[24], a2[24], a3[24];
    const char *argv[8] = { "EVALSHA", g_sha, "1", rkey, a1, a2, a3, peek ? "1" : "0" };
    size_t len[8] = { 7, 40, 1, rklen, 0, 0, 0, 1 };
    len[4] = (size_t)snprintf(a1, sizeof a1, "%lld", (long long)t);
    len[5] = (size_t)snprintf(a2, sizeof a2, "%lld", (long long)t * lim->burst);
    len[6] = (size_t)snprintf(a3, sizeof a3, "%lld", (long long)cost);
    redisReply *r = run(w, 8, argv, len, err, errlen);
    if (r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0) {
        freeReplyObject(r);
        argv[0] = "EVAL"; len[0] = 4;
        argv[1] = script; len[1] = sizeof script - 1;
        r = run(w, 8, argv, len, err, errlen);
    }
    if (!r) return -1;
    int ok = r->type == REDIS_REPLY_ARRAY && r->elements == 4;
    for (size_t i = 0; ok && i < 4; i++) ok = r->element[i]->type == REDIS_REPLY_INTEGER;
    if (ok) {
        out->allowed = r->element[0]->integer == 1;
        out->limit = lim->burst;
        out->remaining = r->element[1]->integer;
        out->retry_after_us = r->element[2]->integer;
        out->reset_after_us = r->element[3]->integer;
        out->local = 0;
    } else {
        snprintf(err, errlen, "redis: unexpected reply to the rate-limit script%s%s", r->type == REDIS_REPLY_ERROR ? ": " : "",
                 r->type == REDIS_REPLY_ERROR ? r->str : "");
    }
    freeReplyObject(r);
    return ok ? 0 : -1;
}

/* Should this check try Redis? Logs the first time REDIS_URL turns out to be unset. */
static int use_redis(worker_t *w)
{
    if (!w || !redis_url_of(w)) {
        if (!atomic_exchange(&g_unset_logged, 1))
            log_info("rate limits: REDIS_URL is unset, limits are held in this process only");
        return 0;
    }
    return now_us() >= atomic_load_explicit(&g_redis_retry_at, memory_order_relaxed);
}

static void redis_failed(const char *err)
{
    atomic_store(&g_redis_retry_at, now_us() + RETRY_REDIS_US);
    if (!atomic_exchange(&g_local_mode, 1)) {
        log_warn("rate limits: Redis is unavailable (%s); limits are held in this process until it is back", err);
        metrics_cell_add(g_fallbacks, 1);
    }
}

static void redis_ok(void)
{
    if (atomic_load_explicit(&g_local_mode, memory_order_relaxed) && atomic_exchange(&g_local_mode, 0))
        log_info("rate limits: Redis is back; limits are shared again");
}

void ratelimit_check(worker_t *w, const char *name, const char *key, size_t keylen, const ratelimit_limit_t *lim,
                     int64_t cost, int peek, ratelimit_result_t *out)
{
    pthread_once(&g_once, setup);
    memset(out, 0, sizeof *out);
    if (lim->count <= 0) { out->allowed = 1; return; }
    if (use_redis(w)) {
        char rkey[RATELIMIT_NAME_MAX + KEY_MAX + 16], err[512];
        size_t rklen = redis_key(rkey, sizeof rkey, name, key, keylen);
        if (rklen && redis_check(w, rkey, rklen, lim, cost, peek, out, err, sizeof err) == 0) { redis_ok(); return; }
        redis_failed(err);
    }
    ratelimit_local_check(name, key, keylen, lim, cost, peek, now_us(), out);
}

/* ---- the same check on the loop ----------------------------------------------------------- */

struct ratelimit_wait {
    cache_op_t *op;
    ratelimit_done_cb done;
    void *arg;
    ratelimit_limit_t lim;
    int64_t cost;
    int peek;
    size_t keylen;
    char name[RATELIMIT_NAME_MAX];
    char key[];              /* for the in-process answer when Redis fails */
};

/* Read the script's reply into out: 0, or -1 with err. */
static int take_result(const redisReply *r, const ratelimit_limit_t *lim, ratelimit_result_t *out, char *err, size_t errlen)
{
    int ok = r->type == REDIS_REPLY_ARRAY && r->elements == 4;
    for (size_t i = 0; ok && i < 4; i++) ok = r->element[i]->type == REDIS_REPLY_INTEGER;
    if (!ok) {
        snprintf(err, errlen, "redis: unexpected reply to the rate-limit script%s%s", r->type == REDIS_REPLY_ERROR ? ": " : "",
                 r->type == REDIS_REPLY_ERROR ? r->str : "");
        return -1;
    }
    memset(out, 0, sizeof *out);
    out->allowed = r->element[0]->integer == 1;
    out->limit = lim->burst;
    out->remaining = r->element[1]->integer;
    out->retry_after_us = r->element[2]->integer;
    out->reset_after_us = r->element[3]->integer;
    return 0;
}

static void on_async_reply(void *arg, const redisReply *reply, const char *err, const char *code)
{
    ratelimit_wait_t *wt = arg;
    ratelimit_result_t res;
    char why[512];
    (void)code;
    if (reply && take_result(reply, &wt->lim, &res, why, sizeof why) == 0) {
        redis_ok();
    } else {
        redis_failed(reply ? why : err);
        memset(&res, 0, sizeof res);
        ratelimit_local_check(wt->name, wt->key, wt->keylen, &wt->lim, wt->cost, wt->peek, now_us(), &res);
    }
    ratelimit_done_cb done = wt->done;
    void *darg = wt->arg;
    free(wt);
    done(darg, &res);
}

int ratelimit_check_async(worker_t *w, const char *name, const char *key, size_t keylen, const ratelimit_limit_t *lim,
                          int64_t cost, int peek, ratelimit_result_t *out, ratelimit_done_cb done, void *arg,
                          ratelimit_wait_t **wait)
{
    pthread_once(&g_once, setup);
    memset(out, 0, sizeof *out);
    *wait = NULL;
    if (lim->count <= 0) { out->allowed = 1; return 0; }
    if (w->loop && use_redis(w)) {
        char rkey[RATELIMIT_NAME_MAX + KEY_MAX + 16], err[512];
        size_t rklen = redis_key(rkey, sizeof rkey, name, key, keylen);
        rl_conn_t *rc = conn_of(w);
        ratelimit_wait_t *wt = rklen && rc ? malloc(sizeof *wt + keylen + 1) : NULL;
        if (wt) {
            int64_t t = lim->period_us / lim->count;
            if (t < 1) t = 1;
            char a1[24], a2[24], a3[24];
            const char *argv[8] = { "EVALSHA", g_sha, "1", rkey, a1, a2, a3, peek ? "1" : "0" };
            size_t len[8] = { 7, 40, 1, rklen, 0, 0, 0, 1 };
            len[4] = (size_t)snprintf(a1, sizeof a1, "%lld", (long long)t);
            len[5] = (size_t)snprintf(a2, sizeof a2, "%lld", (long long)t * lim->burst);
            len[6] = (size_t)snprintf(a3, sizeof a3, "%lld", (long long)cost);
            cache_cmd_t cmd = { 8, argv, len };
            wt->done = done;
            wt->arg = arg;
            wt->lim = *lim;
            wt->cost = cost;
            wt->peek = peek;
            snprintf(wt->name, sizeof wt->name, "%s", name);
            memcpy(wt->key, key, keylen);
            wt->key[keylen] = 0;
            wt->keylen = keylen;
            wt->op = cache_async_call(&rc->as, w, redis_url_of(w), g_timeout_ms, CACHE_EVAL, &cmd, script, sizeof script - 1,
                                      on_async_reply, wt, err, sizeof err);
            if (wt->op) { *wait = wt; return 1; }
            free(wt);
            redis_failed(err);
        }
    }
    ratelimit_local_check(name, key, keylen, lim, cost, peek, now_us(), out);
    return 0;
}

void ratelimit_wait_cancel(ratelimit_wait_t *wt)
{
    if (!wt) return;
    cache_async_forget(wt->op);
    free(wt);
}

void ratelimit_reset(worker_t *w, const char *name, const char *key, size_t keylen)
{
    pthread_once(&g_once, setup);
    ratelimit_local_reset(name, key, keylen);
    if (!use_redis(w)) return;
    char rkey[RATELIMIT_NAME_MAX + KEY_MAX + 16], err[512];
    size_t rklen = redis_key(rkey, sizeof rkey, name, key, keylen);
    const char *argv[] = { "DEL", rkey };
    size_t len[] = { 3, rklen };
    redisReply *r = rklen ? run(w, 2, argv, len, err, sizeof err) : NULL;
    if (r) freeReplyObject(r);
    else if (rklen) redis_failed(err);
}

int64_t ratelimit_seconds(int64_t us)
{
    if (us <= 0) return 0;
    return (us + 999999) / 1000000;
}

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
        if (ratelimit_check_async(w, name, key, keylen, &lim, (int64_t)cost, peek, &res, lua_check_done, w->cur, &wait))
            return worker_wait(L, lua_check_cancel, wait);
    } else {
        ratelimit_check(w, name, key, keylen, &lim, (int64_t)cost, peek, &res);
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
    ratelimit_reset(upworker(L, "reset"), name, key, keylen);
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

static void rl_worker_free(worker_t *w)
{
    rl_conn_t *rc = w->binding[BIND_RATELIMIT];
    if (!rc) return;
    conn_drop(rc);
    cache_async_free(rc->as);
    free(rc);
    w->binding[BIND_RATELIMIT] = NULL;
}

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
    .name = "ratelimit", .open = luaopen_ratelimit, .global_init = rl_init, .global_cleanup = rl_cleanup, .worker_free = rl_worker_free,
};
