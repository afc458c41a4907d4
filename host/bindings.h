/* bindings: the C modules every Lua state can require, and their per-worker resources.
 *
 * Each bindings/<name>.c defines one `const binding_t binding_<name>` and is listed in
 * host/bindings.c. A binding keeps its per-thread connections in w->binding[BIND_*] (created
 * on first use, never at require time), so a hot reload that closes a Lua state closes none. */
#ifndef MERCATO_BINDINGS_H
#define MERCATO_BINDINGS_H

#include <lua.h>
#include <stddef.h>

#include "../core/buf.h"

struct worker;
struct config;
struct request;

typedef struct binding {
    const char *name;                                 /* the Lua module name */
    lua_CFunction open;                               /* luaopen_<name> */
    int (*global_init)(void);                         /* once per process, or NULL; 0 = ok */
    void (*global_cleanup)(void);                     /* or NULL */
    void (*worker_free)(struct worker *w);            /* free w->binding[...], or NULL */
    /* Probe the dependency from this worker: 1 up, 0 down (why filled), -1 not configured
     * (left out of /ready). NULL: nothing to probe. */
    int (*ready)(struct worker *w, char *why, size_t whylen);
    /* A request of this worker is done (answered, or dropped while parked): let go of what
     * the binding lent it. Or NULL. */
    void (*request_end)(struct worker *w, struct request *r);
} binding_t;

/* Register every C module in package.preload (opened on first require). */
void bindings_preload(lua_State *L);

/* Free the worker's per-binding resources (connections); the Lua state is already closed. */
void bindings_worker_free(struct worker *w);

/* A request is done: the bindings' request_end hooks. */
void bindings_request_end(struct worker *w, struct request *r);

/* Probe each configured dependency from this worker; append "name":"up"|"down: why" JSON
 * members to out. Returns the number that are down. */
int bindings_ready(struct worker *w, buf_t *out);

/* Where a start-up migration meets the script build running beside it (host/start_migration.c).
 * may_apply waits for the scripts' verdict and says whether pending files may be applied (a
 * release whose scripts do not load changes no schema); schema_ready is called once, when the
 * schema is current (rc 0) or cannot be (rc 1), before the migration's last checks. */
typedef struct migrate_gate {
    int (*may_apply)(void *ctx);
    void (*schema_ready)(void *ctx, int rc);
    void *ctx;
} migrate_gate_t;

/* Apply the service's migrations; the exit status. gate NULL (`mercato migrate`): apply at once. */
int bindings_migrate(const struct config *cfg, const migrate_gate_t *gate);

/* Process-wide set-up and tear-down of the libraries (curl_global_init, ...). */
int bindings_global_init(void);
void bindings_global_cleanup(void);

#endif
