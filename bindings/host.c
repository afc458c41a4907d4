/* host: what a script may ask of the host — its service, its assets, the clock. */
#include <lauxlib.h>

#include "../host/bindings.h"
#include <stdlib.h>
#include <time.h>

#include "../host/snapshot.h"
#include "../host/worker.h"

static const snapshot_t *snap_of(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, "mercato.snapshot");
    const snapshot_t *s = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return s;
}

/* host.asset("services/notification/templates/x.html") → contents, or nil when absent. */
static int l_asset(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    const snapshot_asset_t *a = snap_of(L) ? snapshot_asset(snap_of(L), name) : NULL;
    if (!a) { lua_pushnil(L); return 1; }
    lua_pushlstring(L, a->data, a->len);
    return 1;
}

static int l_generation(lua_State *L)
{
    const snapshot_t *s = snap_of(L);
    lua_pushnumber(L, s ? (lua_Number)s->generation : 0);
    return 1;
}

/* host.now() → seconds since the epoch, with sub-millisecond precision. */
static int l_now(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
    return 1;
}

/* host.sleep(seconds): block this thread (runners pacing themselves; never in a handler). */
static int l_sleep(lua_State *L)
{
    lua_Number s = luaL_checknumber(L, 1);
    if (s < 0 || s > 3600) return luaL_argerror(L, 1, "expecting 0 to 3600 seconds");
    struct timespec ts = { .tv_sec = (time_t)s, .tv_nsec = (long)((s - (lua_Number)(time_t)s) * 1e9) };
    while (nanosleep(&ts, &ts) != 0) {}
    return 0;
}

/* host.env("NAME") → value or nil; the process environment as read at start-up. */
static int l_env(lua_State *L)
{
    const char *v = getenv(luaL_checkstring(L, 1));
    if (v) lua_pushstring(L, v); else lua_pushnil(L);
    return 1;
}

int luaopen_host(lua_State *L)
{
    static const luaL_Reg fns[] = {
        { "asset", l_asset }, { "generation", l_generation }, { "now", l_now }, { "env", l_env }, { "sleep", l_sleep }, { NULL, NULL },
    };
    lua_newtable(L);
    luaL_setfuncs(L, fns, 0);
    const snapshot_t *s = snap_of(L);
    worker_t *w = worker_from_lua(L);
    lua_pushstring(L, s && s->cfg->service ? s->cfg->service : "");
    lua_setfield(L, -2, "service");
    lua_pushinteger(L, w ? w->id : -1);
    lua_setfield(L, -2, "worker_id");
    return 1;
}

const binding_t binding_host = { .name = "host", .open = luaopen_host };
