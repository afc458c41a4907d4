/* bindings: the C modules every Lua state can require, and their per-worker resources. */
#ifndef MERCATO_BINDINGS_H
#define MERCATO_BINDINGS_H

#include <lua.h>

#include "buf.h"

struct worker;

/* Register every C module in package.preload (opened on first require). */
void bindings_preload(lua_State *L);

/* Free the worker's per-binding resources (connections); the Lua state is already closed. */
void bindings_worker_free(struct worker *w);

/* Probe each configured dependency from this worker; append {"name":"up"|"down: why",...}
 * members to out. Returns the number that are down. */
int bindings_ready(struct worker *w, buf_t *out);

/* `mercato migrate`: apply the service's migrations; exit status. */
struct config;
int bindings_migrate(const struct config *cfg);

/* Process-wide set-up and tear-down of the libraries (curl_global_init, ...). */
int bindings_global_init(void);
void bindings_global_cleanup(void);

#endif
