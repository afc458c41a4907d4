/* bindings: the list of C modules every Lua state can require. A new binding adds its
 * `extern const binding_t binding_<name>;` and one line in `all` — nothing else here. */
#include "bindings.h"

#include <lauxlib.h>
#include <stdio.h>
#include <string.h>

#include "../core/log.h"
#include "worker.h"

extern const binding_t binding_log;
extern const binding_t binding_metrics;
extern const binding_t binding_host;
extern const binding_t binding_json;
extern const binding_t binding_crypto;
extern const binding_t binding_jwt;
extern const binding_t binding_db;
extern const binding_t binding_http;
extern const binding_t binding_cache;
extern const binding_t binding_queue;
extern const binding_t binding_ratelimit;
extern const binding_t binding_inventory;
extern const binding_t binding_s3;
extern const binding_t binding_stripe;
extern const binding_t binding_smtp;

static const binding_t *const all[] = {
    &binding_log,
    &binding_metrics,
    &binding_host,
    &binding_json,
    &binding_crypto,
    &binding_jwt,
    &binding_db,
    &binding_http,
    &binding_cache,
    &binding_queue,
    &binding_ratelimit,
    &binding_inventory,
    &binding_s3,
    &binding_stripe,
    &binding_smtp,
};

#define NBINDINGS ((int)(sizeof all / sizeof all[0]))

void bindings_preload(lua_State *L)
{
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    for (int i = 0; i < NBINDINGS; i++) {
        lua_pushcfunction(L, all[i]->open);
        lua_setfield(L, -2, all[i]->name);
    }
    lua_pop(L, 2);
}

void bindings_worker_free(worker_t *w)
{
    for (int i = 0; i < NBINDINGS; i++)
        if (all[i]->worker_free) all[i]->worker_free(w);
}

void bindings_request_end(worker_t *w, struct request *r)
{
    for (int i = 0; i < NBINDINGS; i++)
        if (all[i]->request_end) all[i]->request_end(w, r);
}

int bindings_ready(worker_t *w, buf_t *out)
{
    int down = 0;
    buf_adds(out, "\"scripts\":\"up\"");
    for (int i = 0; i < NBINDINGS; i++) {
        if (!all[i]->ready) continue;
        char why[256] = "";
        int st = all[i]->ready(w, why, sizeof why);
        if (st < 0) continue;
        char esc[600];
        size_t n = log_redact(why);   /* a library's message may echo a connection string */
        log_json_escape(esc, sizeof esc, why, n);
        if (st) buf_addf(out, ",\"%s\":\"up\"", all[i]->name);
        else buf_addf(out, ",\"%s\":\"down: %s\"", all[i]->name, esc);
        down += !st;
    }
    return down;
}

int bindings_global_init(void)
{
    for (int i = 0; i < NBINDINGS; i++)
        if (all[i]->global_init && all[i]->global_init() != 0) {
            fprintf(stderr, "mercato: the %s binding failed to initialise\n", all[i]->name);
            return -1;
        }
    return 0;
}

void bindings_global_cleanup(void)
{
    for (int i = NBINDINGS - 1; i >= 0; i--)
        if (all[i]->global_cleanup) all[i]->global_cleanup();
}

/* Until the db binding lands (it defines the strong symbol) there is nothing to migrate. */
__attribute__((weak)) int bindings_migrate(const struct config *cfg, const migrate_gate_t *gate)
{
    (void)cfg;
    log_warn("no database binding is built in: no migrations applied");
    if (gate) gate->schema_ready(gate->ctx, 0);
    return 0;
}
