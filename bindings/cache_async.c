/* cache_async: the cache binding's non-blocking path — one redisAsyncContext per HTTP thread,
 * watched on the thread's loop; a handler's cache.call/pipeline/eval parks its coroutine
 * until the replies are in, so one thread serves many requests waiting on Redis at once.
 * Replies map to Lua exactly as on the blocking path (cache_push_reply, cache_error_code). */
#include "cache.h"

#include <hiredis/async.h>
#include <errno.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/log.h"
#include "../host/loop.h"
#include "../host/request.h"
#include "../host/worker.h"

/* The thread's connection state: owned by the cache binding's per-worker context. */
struct cache_async {
    worker_t *w;
    redisAsyncContext *ac;   /* NULL until first use, and once hiredis or we dropped it */
    int fd;                  /* ac's socket while watched, else -1 */
    int events;              /* LOOP_* asked for by hiredis */
    const char *drop_code;   /* set while we drop ac on purpose: the code its waiters get */
};

/* One Lua call: its commands' callbacks (refs) all point here; freed when the last one has
 * come back and no request is attached. */
struct cache_op {
    cache_async_t *as;
    request_t *r;            /* the parked request (Lua mode), NULL once answered or forgotten */
    cache_async_done done;   /* C mode: called once with the reply, NULL once answered or forgotten */
    void *done_arg;
    loop_timer_t *timer;
    int kind;                /* CACHE_* */
    int n, got;              /* replies expected / taken (CACHE_PIPELINE) */
    int refs;                /* hiredis callbacks still to come */
    int timeout_ms;
    char *eval_cmd;          /* CACHE_EVAL: the formatted EVAL fallback (malloc) */
    int eval_len;
};

/* ---- the hiredis adapter onto the loop ---------------------------------------------------- */

static void on_io(loop_t *loop, int fd, int events, void *arg)
{
    cache_async_t *as = arg;
    redisAsyncContext *ac = as->ac;
    (void)loop; (void)fd;
    if (!ac) return;
    if (events & LOOP_WRITE) {
        redisAsyncHandleWrite(ac);
        if (as->ac != ac) return;   /* freed on an error (cleanup cleared as->ac) */
    }
    if (events & LOOP_READ) redisAsyncHandleRead(ac);
}

static void ev_set(cache_async_t *as, int events)
{
    if (events == as->events || as->fd < 0) return;
    as->events = events;
    if (loop_watch(as->w->loop, as->fd, events, on_io, as) < 0)
        log_warn("cache: cannot watch the Redis socket: %s", strerror(errno));
}

static void ev_add_read(void *p) { cache_async_t *as = p; ev_set(as, as->events | LOOP_READ); }
static void ev_del_read(void *p) { cache_async_t *as = p; ev_set(as, as->events & ~LOOP_READ); }
static void ev_add_write(void *p) { cache_async_t *as = p; ev_set(as, as->events | LOOP_WRITE); }
static void ev_del_write(void *p) { cache_async_t *as = p; ev_set(as, as->events & ~LOOP_WRITE); }

/* hiredis is freeing the context (an error, a disconnect, or our drop). */
static void ev_cleanup(void *p)
{
    cache_async_t *as = p;
    if (as->fd >= 0) loop_unwatch(as->w->loop, as->fd);
    as->fd = -1;
    as->events = 0;
    as->ac = NULL;
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    if (status != REDIS_OK) log_debug("cache: connect failed: %s", ac->errstr);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    if (status != REDIS_OK) log_debug("cache: disconnected: %s", ac->errstr);
}

/* AUTH / SELECT on a fresh connection: a failure shows in the commands behind it (NOAUTH). */
static void on_setup_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    const redisReply *r = reply;
    (void)ac;
    if (r && r->type == REDIS_REPLY_ERROR) log_warn("cache: %s: %s", (const char *)privdata, r->str);
}

static int as_connect(cache_async_t *as, const char *url, char *err, size_t errlen)
{
    cache_url_t u;
    if (!url) { snprintf(err, errlen, "cache: REDIS_URL is not set"); return -1; }
    if (cache_url_parse(url, &u, err, errlen) < 0) return -1;
    redisAsyncContext *ac = redisAsyncConnect(u.host, u.port);
    if (!ac) { snprintf(err, errlen, "redis connect: out of memory"); return -1; }
    if (ac->err) {
        snprintf(err, errlen, "redis connect: %s (%s:%d)", ac->errstr, u.host, u.port);
        redisAsyncFree(ac);
        return -1;
    }
    as->ac = ac;
    as->fd = ac->c.fd;
    as->events = -1;   /* nothing registered yet: the first ev_set adds the fd */
    ac->data = as;
    ac->ev.data = as;
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    ev_set(as, 0);
    char db[16];
    snprintf(db, sizeof db, "%d", u.db);
    const char *auth[] = { "AUTH", u.user[0] ? u.user : u.password, u.password }, *sel[] = { "SELECT", db };
    if (u.password[0]) redisAsyncCommandArgv(ac, on_setup_reply, "AUTH", u.user[0] ? 3 : 2, auth, NULL);
    if (u.db) redisAsyncCommandArgv(ac, on_setup_reply, "SELECT", 2, sel, NULL);
    return 0;
}

/* Free ac now: every command still on it calls back with no reply, answered with code. */
static void as_drop(cache_async_t *as, const char *code)
{
    redisAsyncContext *ac = as->ac;
    if (!ac) return;
    as->drop_code = code;
    redisAsyncFree(ac);   /* runs the callbacks, then ev_cleanup */
    as->drop_code = NULL;
    as->ac = NULL;
}

/* ---- operations --------------------------------------------------------------------------- */

static void op_free(cache_op_t *op)
{
    if (op->eval_cmd) redisFreeCommand(op->eval_cmd);
    free(op);
}

/* Is a waiter still attached to op (a parked handler or a C caller)? */
static int op_live(const cache_op_t *op) { return op->r || op->done; }

/* The op's values are on r->co: detach and let the loop resume the handler. */
static void op_finish(cache_op_t *op, int nvals)
{
    request_t *r = op->r;
    if (op->timer) loop_timer_cancel(op->as->w->loop, op->timer);
    op->timer = NULL;
    op->r = NULL;
    worker_wake(r, nvals);
}

/* C mode: detach, then hand the reply (or the failure) to the caller. */
static void op_deliver(cache_op_t *op, const redisReply *rep, const char *err, const char *code)
{
    cache_async_done done = op->done;
    if (op->timer) loop_timer_cancel(op->as->w->loop, op->timer);
    op->timer = NULL;
    op->done = NULL;
    done(op->done_arg, rep, err, code);
}

static void op_fail(cache_op_t *op, const char *err, const char *code)
{
    if (op->done) { op_deliver(op, NULL, err, code); return; }
    lua_State *co = op->r->co;
    if (op->kind == CACHE_PIPELINE && op->got) lua_pop(co, 1);   /* the partly filled table */
    lua_pushnil(co);
    lua_pushstring(co, err);
    lua_pushstring(co, code);
    op_finish(op, 3);
}

/* worker_wait's cancel hook: the request is gone; the callbacks still to come free the op. */
static void op_cancel(void *arg)
{
    cache_op_t *op = arg;
    if (op->timer) loop_timer_cancel(op->as->w->loop, op->timer);
    op->timer = NULL;
    op->r = NULL;
    op->done = NULL;
    if (!op->refs) op_free(op);
}

void cache_async_forget(cache_op_t *op)
{
    op_cancel(op);
}

static void on_timeout(loop_t *loop, void *arg)
{
    cache_op_t *op = arg;
    cache_async_t *as = op->as;
    char err[96];
    (void)loop;
    op->timer = NULL;
    snprintf(err, sizeof err, "redis read: no reply within %d ms", op->timeout_ms);
    op_fail(op, err, "timeout");
    /* The replies may never come (a blocked server): start afresh. This frees the op through
     * its callbacks, so it is the last thing done with it. */
    as_drop(as, "timeout");
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata);

/* A reply (or NULL: the connection failed or was dropped) for one of the op's commands. */
static void take_reply(cache_op_t *op, redisAsyncContext *ac, redisReply *rep)
{
    if (!rep) {
        char err[256];
        const char *code = op->as->drop_code ? op->as->drop_code : "unavailable";
        if (ac->err) snprintf(err, sizeof err, "redis: %s", ac->errstr);
        else snprintf(err, sizeof err, "redis: the connection was %s", op->as->drop_code ? "dropped after a timeout" : "closed");
        op_fail(op, err, code);
        return;
    }
    lua_State *co = op->r ? op->r->co : NULL;
    if (op->kind == CACHE_PIPELINE && co) {
        if (!op->got) lua_createtable(co, op->n, 0);
        cache_push_reply(co, rep, 1);
        lua_rawseti(co, -2, ++op->got);
        if (op->got == op->n) op_finish(op, 1);
        return;
    }
    if (op->kind == CACHE_EVAL && op->eval_cmd && rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "NOSCRIPT", 8) == 0) {
        /* Not cached on this server (a restart, SCRIPT FLUSH): EVAL loads it. */
        char *cmd = op->eval_cmd;
        op->eval_cmd = NULL;
        int rc = redisAsyncFormattedCommand(ac, on_reply, op, cmd, (size_t)op->eval_len);
        redisFreeCommand(cmd);
        if (rc != REDIS_OK) { op_fail(op, "redis: cannot send EVAL", "unavailable"); return; }
        op->refs++;
        return;
    }
    if (op->done) { op_deliver(op, rep, NULL, NULL); return; }
    if (rep->type == REDIS_REPLY_ERROR) {
        lua_pushnil(co);
        lua_pushlstring(co, rep->str, rep->len);
        lua_pushstring(co, cache_error_code(rep->str));
        op_finish(op, 3);
        return;
    }
    cache_push_reply(co, rep, 0);
    op_finish(op, 1);
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    cache_op_t *op = privdata;
    op->refs--;
    if (op_live(op)) take_reply(op, ac, reply);
    if (!op->refs && !op_live(op)) op_free(op);
}

/* ---- the entry ---------------------------------------------------------------------------- */

static int fail(lua_State *L, const char *err, const char *code)
{
    lua_pushnil(L);
    lua_pushstring(L, err);
    lua_pushstring(L, code);
    return 3;
}

/* A new op with every command of cmds queued on the worker's connection (made on first use).
 * NULL with err when it cannot be sent (nothing is waiting then). */
static cache_op_t *op_start(cache_async_t **asp, worker_t *w, const char *url, int timeout_ms, int kind, int n,
                            const cache_cmd_t *cmds, const char *script, size_t script_len, char *err, size_t errlen)
{
    if (!*asp) {
        *asp = calloc(1, sizeof **asp);
        if (!*asp) { snprintf(err, errlen, "cache: out of memory"); return NULL; }
        (*asp)->w = w;
        (*asp)->fd = -1;
    }
    cache_async_t *as = *asp;
    if (!as->ac && as_connect(as, url, err, errlen) < 0) return NULL;
    cache_op_t *op = calloc(1, sizeof *op);
    if (!op) { snprintf(err, errlen, "cache: out of memory"); return NULL; }
    op->as = as;
    op->kind = kind;
    op->n = n;
    op->timeout_ms = timeout_ms;
    if (kind == CACHE_EVAL) {
        /* EVAL script numkeys keys... args..., formatted now: the Lua strings will not wait. */
        const char *argv0 = cmds[0].argv[0], *argv1 = cmds[0].argv[1];
        size_t len0 = cmds[0].len[0], len1 = cmds[0].len[1];
        cmds[0].argv[0] = "EVAL"; cmds[0].len[0] = 4;
        cmds[0].argv[1] = script; cmds[0].len[1] = script_len;
        op->eval_len = redisFormatCommandArgv(&op->eval_cmd, cmds[0].argc, cmds[0].argv, cmds[0].len);
        cmds[0].argv[0] = argv0; cmds[0].len[0] = len0;
        cmds[0].argv[1] = argv1; cmds[0].len[1] = len1;
        if (op->eval_len < 0) { op_free(op); snprintf(err, errlen, "cache: out of memory"); return NULL; }
    }
    for (int i = 0; i < n; i++) {
        if (redisAsyncCommandArgv(as->ac, on_reply, op, cmds[i].argc, cmds[i].argv, cmds[i].len) != REDIS_OK) {
            snprintf(err, errlen, "redis: %s", as->ac->errstr[0] ? as->ac->errstr : "cannot queue the command");
            if (!op->refs) op_free(op);   /* else the queued ones' callbacks free it */
            return NULL;
        }
        op->refs++;
    }
    op->timer = loop_timer_add(w->loop, (uint64_t)timeout_ms, on_timeout, op);
    if (!op->timer) { snprintf(err, errlen, "cache: out of memory"); return NULL; }   /* refs > 0: freed by its callbacks */
    return op;
}

int cache_async_exec(lua_State *L, cache_async_t **asp, worker_t *w, const char *url, int timeout_ms,
                     int kind, int n, const cache_cmd_t *cmds, const char *script, size_t script_len)
{
    char err[512];
    cache_op_t *op = op_start(asp, w, url, timeout_ms, kind, n, cmds, script, script_len, err, sizeof err);
    if (!op) return fail(L, err, "unavailable");
    op->r = w->cur;
    return worker_wait(L, op_cancel, op);
}

cache_op_t *cache_async_call(cache_async_t **asp, worker_t *w, const char *url, int timeout_ms, int kind,
                             const cache_cmd_t *cmd, const char *script, size_t script_len,
                             cache_async_done done, void *arg, char *err, size_t errlen)
{
    cache_op_t *op = op_start(asp, w, url, timeout_ms, kind, 1, cmd, script, script_len, err, errlen);
    if (!op) return NULL;
    op->done = done;
    op->done_arg = arg;
    return op;
}

void cache_async_reset(cache_async_t *as)
{
    if (as) as_drop(as, "unavailable");
}

void cache_async_free(cache_async_t *as)
{
    if (!as) return;
    as_drop(as, "unavailable");
    free(as);
}
