/* cache_async: the cache binding's non-blocking path — a handler's cache.call/pipeline/eval
 * go out on the thread's Redis connection on the loop (core/redis.c) and park its coroutine
 * until the replies are in, so one thread serves many requests waiting on Redis at once.
 * Replies map to Lua exactly as on the blocking path (cache_push_reply, cache_error_code). */
#include "cache.h"

#include <lauxlib.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "../core/loop.h"
#include "../core/metrics.h"
#include "../host/request.h"
#include "../host/worker.h"

/* A parked handler's call: what its replies become. Freed when it is answered or forgotten. */
typedef struct {
    request_t *r;
    redis_op_t *op;
    int kind, n, got;
    uint64_t sent_ns;   /* loop clock when it went out: redis_command_duration_seconds */
} lua_wait_t;

/* redis_command_duration_seconds: a handler's call from sending to its answer (all replies of
 * a pipeline; errors and timeouts too), one histogram for the process. */
static metric_cell_t *g_latency;
static pthread_once_t g_latency_once = PTHREAD_ONCE_INIT;

static void latency_init(void)
{
    static const double buckets[] = { 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                      0.25, 0.5, 1 };
    char err[128];
    metric_family_t *f = metrics_family("redis_command_duration_seconds",
                                        "Redis calls of handlers, from sending to the answer (a pipeline counts once).",
                                        METRIC_HISTOGRAM, 0, NULL, (int)(sizeof buckets / sizeof buckets[0]), buckets,
                                        err, sizeof err);
    g_latency = f ? metrics_cell(f, NULL) : NULL;
}

static void finish(lua_wait_t *lw, int nvals)
{
    request_t *r = lw->r;
    metrics_cell_observe(g_latency, (double)(loop_now_ns() - lw->sent_ns) / 1e9);
    free(lw);
    worker_wake(r, nvals);
}

/* Each reply of the op in turn, or the failure (reply NULL): onto the handler's coroutine. */
static void on_reply(void *arg, int i, const redisReply *rep, const char *err, const char *code)
{
    lua_wait_t *lw = arg;
    lua_State *co = lw->r->co;
    lua_checkstack(co, 8);
    (void)i;
    if (!rep) {
        if (lw->kind == CACHE_PIPELINE && lw->got) lua_pop(co, 1);   /* the partly filled table */
        lua_pushnil(co);
        lua_pushstring(co, err);
        lua_pushstring(co, code);
        finish(lw, 3);
        return;
    }
    if (lw->kind == CACHE_PIPELINE) {
        if (!lw->got) lua_createtable(co, lw->n, 0);
        cache_push_reply(co, rep, 1);
        lua_rawseti(co, -2, ++lw->got);
        if (lw->got == lw->n) finish(lw, 1);
        return;
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        lua_pushnil(co);
        lua_pushlstring(co, rep->str, rep->len);
        lua_pushstring(co, cache_error_code(rep->str));
        finish(lw, 3);
        return;
    }
    cache_push_reply(co, rep, 0);
    finish(lw, 1);
}

/* worker_wait's cancel hook: the request is gone; the op's late replies go nowhere. */
static void cancel(void *arg)
{
    lua_wait_t *lw = arg;
    redis_async_forget(lw->op);
    free(lw);
}

static int fail(lua_State *L, const char *err, const char *code)
{
    lua_pushnil(L);
    lua_pushstring(L, err);
    lua_pushstring(L, code);
    return 3;
}

int cache_async_exec(lua_State *L, redis_async_t **asp, worker_t *w, const char *url, int timeout_ms,
                     int kind, int n, const cache_cmd_t *cmds, const char *script, size_t script_len)
{
    char err[512];
    if (!url) return fail(L, "cache: REDIS_URL is not set", "unavailable");
    if (!*asp && !(*asp = redis_async_new(w->loop, url))) return fail(L, "cache: out of memory", "unavailable");
    pthread_once(&g_latency_once, latency_init);
    lua_wait_t *lw = calloc(1, sizeof *lw);
    if (!lw) return fail(L, "cache: out of memory", "unavailable");
    lw->sent_ns = loop_now_ns();
    lw->r = w->cur;
    lw->kind = kind;
    lw->n = n;
    lw->op = redis_async_send(*asp, timeout_ms, n, cmds, kind == CACHE_EVAL ? script : NULL, script_len,
                              on_reply, lw, err, sizeof err);
    if (!lw->op) { free(lw); return fail(L, err, "unavailable"); }
    return worker_wait(L, cancel, lw);
}
