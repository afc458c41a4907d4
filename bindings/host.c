/* host: what a script may ask of the host — its service, its assets, the clock. */
#include <lauxlib.h>

#include "../host/bindings.h"
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../core/loop.h"
#include "../host/request.h"
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

/* host.assets("services/notification/templates/") → the names of the assets under that prefix,
 * sorted (what `mercato check` compiles when a service checks its templates). */
static int l_assets(lua_State *L)
{
    size_t plen;
    const char *prefix = luaL_checklstring(L, 1, &plen);
    const snapshot_t *s = snap_of(L);
    lua_newtable(L);
    int n = 0;
    for (int i = 0; s && i < s->nassets; i++) {
        if (strncmp(s->assets[i].name, prefix, plen) != 0) continue;
        lua_pushstring(L, s->assets[i].name);
        lua_rawseti(L, -2, ++n);
    }
    return 1;
}

/* host.checking() → true in the scratch state that checks a snapshot before it is published
 * (`mercato check`, a hot reload's check): the one state without a worker. Work that only
 * proves the scripts sound (compiling every template) runs there, not in every serving state. */
static int l_checking(lua_State *L)
{
    lua_pushboolean(L, worker_from_lua(L) == NULL);
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

/* A handler's nap: its request and the loop timer that ends it (freed when either happens). */
typedef struct {
    request_t *r;
    loop_timer_t *timer;
} nap_t;

static void nap_done(loop_t *loop, void *arg)
{
    nap_t *nap = arg;
    request_t *r = nap->r;
    (void)loop;
    free(nap);   /* the loop frees the timer */
    worker_wake(r, 0);
}

/* The request went away during its nap. */
static void nap_cancel(void *arg)
{
    nap_t *nap = arg;
    loop_timer_cancel(nap->r->w->loop, nap->timer);
    free(nap);
}

/* host.sleep(seconds): in a handler, park it on a loop timer (its thread serves others, as
 * ngx.sleep); elsewhere (runners pacing themselves, `mercato lua`) block the thread. */
static int l_sleep(lua_State *L)
{
    lua_Number s = luaL_checknumber(L, 1);
    if (!(s >= 0 && s <= 3600)) return luaL_argerror(L, 1, "expecting 0 to 3600 seconds");
    if (worker_can_yield(L)) {
        worker_t *w = worker_from_lua(L);
        nap_t *nap = malloc(sizeof *nap);
        if (nap) {
            nap->r = w->cur;
            nap->timer = loop_timer_add(w->loop, (uint64_t)(s * 1000 + 0.5), nap_done, nap);
            if (nap->timer) return worker_wait(L, nap_cancel, nap);
            free(nap);
        }
    }
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
        { "asset", l_asset }, { "assets", l_assets }, { "checking", l_checking }, { "generation", l_generation }, { "now", l_now }, { "env", l_env }, { "sleep", l_sleep }, { NULL, NULL },
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
