/* worker: one thread's world — its Lua state, its connections, its metrics shard, its log
 * buffer. Nothing in a worker is touched by another thread (metrics are read, never written). */
#ifndef MERCATO_WORKER_H
#define MERCATO_WORKER_H

#include <lua.h>
#include <stdint.h>

#include "config.h"
#include "log.h"
#include "metrics.h"
#include "snapshot.h"

/* Per-thread contexts of the bindings that hold connections; each binding frees its own. */
enum { BIND_DB, BIND_CACHE, BIND_QUEUE, BIND_HTTP, BIND_JWT, BIND_MAX };

struct request;

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
} worker_t;

/* Make a worker: Lua state from the published snapshot (or `snap` when given). Returns NULL
 * with err on failure. `kind` is a static string. */
worker_t *worker_new(int id, const char *kind, const config_t *cfg, snapshot_t *snap, char *err, size_t errlen);
void worker_free(worker_t *w);

/* If a newer generation was published, build a fresh state from it and close the old one.
 * On failure the old state keeps serving. Call only between requests. */
void worker_maybe_reload(worker_t *w);

/* The worker that owns L (set when the state is made). */
worker_t *worker_from_lua(lua_State *L);

/* A fresh random request id ("5f0c...", 32 hex digits) into buf (>= 33 bytes). */
void worker_request_id(worker_t *w, char *buf);

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

#endif
