/* bindings: the C modules every Lua state can require, and their per-worker resources.
 * Adding a binding: its luaopen_* in the table below, its per-worker free and ready probe. */
#include "bindings.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>

#include "worker.h"

int luaopen_log(lua_State *L);
int luaopen_metrics(lua_State *L);
int luaopen_host(lua_State *L);

static const luaL_Reg modules[] = {
    { "log", luaopen_log },
    { "metrics", luaopen_metrics },
    { "host", luaopen_host },
    { NULL, NULL },
};

void bindings_preload(lua_State *L)
{
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    for (const luaL_Reg *m = modules; m->name; m++) {
        lua_pushcfunction(L, m->func);
        lua_setfield(L, -2, m->name);
    }
    lua_pop(L, 2);
}

void bindings_worker_free(worker_t *w)
{
    for (int i = 0; i < BIND_MAX; i++) w->binding[i] = NULL;
}

int bindings_ready(worker_t *w, buf_t *out)
{
    (void)w;
    buf_adds(out, "\"scripts\":\"up\"");
    return 0;
}

int bindings_global_init(void) { return 0; }
void bindings_global_cleanup(void) {}

int bindings_migrate(const config_t *cfg)
{
    (void)cfg;
    fprintf(stderr, "mercato migrate: the db binding is not built yet\n");
    return 1;
}
