/* worker: one thread's world — its Lua state, its connections, its metrics shard, its log
 * buffer. Nothing in a worker is touched by another thread (metrics are read, never written). */
#ifndef MERCATO_WORKER_H
#define MERCATO_WORKER_H

#include <lua.h>
#include <stdint.h>

#include "config.h"
#include "../core/log.h"
#include "../core/metrics.h"
#include "snapshot.h"
#include "../core/ratelimit.h"

/* Per-thread contexts of the bindings that hold connections; each binding frees its own. */
enum { BIND_DB, BIND_DB_POOL, BIND_CACHE, BIND_QUEUE, BIND_JWT, BIND_SMTP, BIND_MAX };

struct request;
struct loop;
struct httpc;

#define WORKER_CO_POOL 64        /* idle handler coroutines kept per HTTP worker */

typedef struct worker {
    int id;
    const char *kind;            /* "http", "consumer", "job", "cli" */
    const config_t *cfg;
    lua_State *L;                /* created, used and closed by this worker's thread only */
    snapshot_t *snap;            /* the generation L was built from (one reference) */
    uint64_t generation;
    int handlers_ref;            /* registry: route index + 1 → handler function */
    int traceback_ref;           /* registry: debug.traceback-based message handler */
    int encode_ref;              /* registry: JSON encoder for table bodies */
    int request_mt_ref;          /* registry: metatable of request objects */
    metrics_shard_t *metrics;
    logbuf_t access;
    struct request *cur;         /* the request whose handler is running, for req:header() */
    void *binding[BIND_MAX];     /* owned by the binding; freed through bindings_worker_free */
    uint64_t rng[2];             /* xorshift128+ state for request ids */
    /* The HTTP thread's event loop (owned; freed by worker_free after the bindings, whose
     * async connections watch it). NULL for runner and cli workers: bindings block there. */
    struct loop *loop;
    struct httpc *httpc;         /* outbound HTTP on loop (or blocking); owned, made on first use */
    void *gateway;               /* SERVICE=gateway: its upstream connections (host/gateway.c) */
    struct ratelimit_conn *ratelimit;   /* its connections to Redis for limits (owned) */
    void *revocations;           /* host/revocation.c: its cache of token revocation records (owned) */
    struct request *waiting;     /* requests whose handler coroutine is parked on I/O */
    int nwaiting;
    void (*resume)(struct request *r);   /* server.c: resume r->co with r->resume_n values */
    void *http;                          /* server.c: the HTTP thread running this worker */
    /* Finished handler coroutines kept for reuse (registry refs of w->L; emptied on reload). */
    struct { lua_State *co; int ref; } co_pool[WORKER_CO_POOL];
    int nco_pool;
    /* The previous generation, kept after a reload while handlers parked in it still run
     * (requests marked `retired`); closed when the last one ends. */
    lua_State *old_L;
    snapshot_t *old_snap;
    int old_traceback_ref, old_encode_ref;
    int old_live;
} worker_t;

/* Make a worker: Lua state from the published snapshot (or `snap` when given). Returns NULL
 * with err on failure. `kind` is a static string. */
worker_t *worker_new(int id, const char *kind, const config_t *cfg, snapshot_t *snap, char *err, size_t errlen);
void worker_free(worker_t *w);

/* If a newer generation was published, build a fresh state from it and close the old one.
 * On failure the old state keeps serving. Call only between requests. */
void worker_maybe_reload(worker_t *w);

/* The worker's HTTP client (on its loop when it has one), made on first use; NULL when out of
 * memory. */
struct httpc *worker_httpc(worker_t *w);

/* Where this worker's rate-limit checks go: its connections, its loop, REDIS_URL. */
ratelimit_ctx_t worker_limits(worker_t *w);

/* The worker that owns L (set when the state is made). */
worker_t *worker_from_lua(lua_State *L);

/* A fresh random request id ("5f0c...", 32 hex digits) into buf (>= 33 bytes). */
void worker_request_id(worker_t *w, char *buf);

/* The traceparent of an outgoing call made while serving r: r's incoming trace with a fresh
 * span id, or a trace of its own (httpc_traceparent). out needs 56 bytes. */
void worker_traceparent(worker_t *w, const struct request *r, char *out);

/* Build a Lua state for snap: libraries, bindings, the snapshot's module loader, the prelude.
 * With `check` it also validates the routes module and fills snap's route table (used once, by
 * snapshot_build, in a scratch state); otherwise it stores the handlers for serving. Returns
 * NULL with err on failure. The state's worker pointer is w (may be NULL for scratch states). */
lua_State *worker_state_new(worker_t *w, snapshot_t *snap, int check, char *err, size_t errlen);

/* Close a state built by worker_state_new, running its at-close hook first (coverage). */
void worker_state_close(lua_State *L);

/* Call the function on top of the stack with nargs under the traceback handler. Returns 0, or
 * -1 with the message + traceback left on the stack. */
int worker_pcall(lua_State *L, int traceback_ref, int nargs, int nresults);

/* ---- handler coroutines: how a binding parks a request on I/O ------------------------------
 *   if (worker_can_yield(L)) { ...start the I/O, remember w->cur...; return worker_wait(L, cancel, op); }
 *   ...later, from a loop callback: push n values onto r->co, then worker_wake(r, n).
 * The values become the results of the binding's call. */

/* True only inside the handler coroutine of the request an HTTP worker is serving (not in a
 * coroutine the handler made itself, a runner, `mercato lua` or the check state), and only
 * where it can yield (not inside a callback of a C function such as string.gsub). */
int worker_can_yield(lua_State *L);

/* Park the running handler: cancel(arg) is called if the request goes away before
 * worker_wake (the binding then must never touch the request again). Use as
 * `return worker_wait(L, cancel, arg);` from the binding's lua_CFunction. */
int worker_wait(lua_State *L, void (*cancel)(void *arg), void *arg);

/* The I/O of a parked request is done and n values are pushed onto r->co: resume it from
 * the loop (never from inside the caller, which may be deep in a library callback). */
void worker_wake(struct request *r, int n);

/* Swap the current and the retired generation (L, snapshot, refs) in w: around the run of a
 * retired request's coroutine, so that the host and bindings see the state it lives in. */
void worker_swap_retired(worker_t *w);

/* A retired request's coroutine is released: close the old generation after the last one. */
void worker_retired_done(worker_t *w);

/* The request goes away while parked: tell the binding to forget it, drop a scheduled
 * resume. The coroutine itself is released by the caller. */
void worker_cancel_wait(struct request *r);

#endif
