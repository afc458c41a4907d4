/* worker: one thread's world — its Lua state, connections, metrics shard and log buffer. */
#include "worker.h"

#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <arpa/inet.h>

#include "bindings.h"
#include "gateway.h"
#include "ratelimit_http.h"
#include "../core/loop.h"
#include "../core/httpc.h"
#include "prelude.h"   /* generated: luaJIT_BC_prelude, the compiled host/lua/prelude.lua */
#include "request.h"

#define REG_WORKER "mercato.worker"

static int panic(lua_State *L)
{
    log_error("Lua panic (an unprotected call, a host bug): %s", lua_tostring(L, -1));
    abort();
}

void worker_state_close(lua_State *L)
{
    if (!L) return;
    lua_getfield(L, LUA_REGISTRYINDEX, "mercato.at_close");
    if (lua_isfunction(L, -1) && lua_pcall(L, 0, 0, 0) != 0) log_warn("closing a Lua state: %s", lua_tostring(L, -1));
    lua_settop(L, 0);
    lua_close(L);
}

worker_t *worker_from_lua(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, REG_WORKER);
    worker_t *w = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return w;
}

int worker_pcall(lua_State *L, int traceback_ref, int nargs, int nresults)
{
    int base = lua_gettop(L) - nargs;
    lua_rawgeti(L, LUA_REGISTRYINDEX, traceback_ref);
    lua_insert(L, base);
    int rc = lua_pcall(L, nargs, nresults, base);
    lua_remove(L, base);
    return rc == 0 ? 0 : -1;
}

/* ---- the snapshot's module loader (package.loaders[2]) ---------------------------------- */

static int load_from_snapshot(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    const snapshot_t *s = lua_touserdata(L, lua_upvalueindex(1));
    const snapshot_module_t *m = snapshot_module(s, name);
    if (!m) {
        lua_pushfstring(L, "\n\tno module '%s' in the service's scripts", name);
        return 1;
    }
    char chunkname[1024];
    snprintf(chunkname, sizeof chunkname, "@%s", m->path);
    if (luaL_loadbuffer(L, m->code, m->len, chunkname) != 0)
        return luaL_error(L, "error loading module '%s': %s", name, lua_tostring(L, -1));
    return 1;
}

/* The snapshot's loader goes second, after package.preload (the bindings). A service's states
 * keep no Lua file searcher (a module off package.path would bypass the checked snapshot and
 * hot reload), only the C searchers for the system's C modules (cjson); `mercato lua` (keep_path)
 * keeps them all, for scripts and specs. */
static void install_loader(lua_State *L, snapshot_t *s, int keep_path)
{
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "loaders");
    int n = (int)lua_objlen(L, -1);
    if (!keep_path && n >= 2) {   /* drop loaders[2], the Lua file searcher */
        for (int i = 2; i < n; i++) {
            lua_rawgeti(L, -1, i + 1);
            lua_rawseti(L, -2, i);
        }
        lua_pushnil(L);
        lua_rawseti(L, -2, n);
        n--;
    }
    for (int i = n; i >= 2; i--) {   /* shift loaders[2..n] up by one */
        lua_rawgeti(L, -1, i);
        lua_rawseti(L, -2, i + 1);
    }
    lua_pushlightuserdata(L, s);
    lua_pushcclosure(L, load_from_snapshot, 1);
    lua_rawseti(L, -2, 2);
    lua_pop(L, 2);
}

/* ---- mercato.request: the running request, read lazily from C ------------------------- */

static request_t *current(lua_State *L)
{
    worker_t *w = lua_touserdata(L, lua_upvalueindex(1));
    if (w && w->cur) return w->cur;
    luaL_error(L, "no request is being served (request objects live only during their handler)");
    return NULL;   /* not reached: luaL_error raises */
}

static int l_req_header(lua_State *L)
{
    request_t *r = current(L);
    const char *name = luaL_checkstring(L, 1);
    const char *v = request_header(r, name);
    if (v) lua_pushstring(L, v); else lua_pushnil(L);
    return 1;
}

/* Every header field by its lower-cased name (a repeated one: the last). */
static int l_req_headers(lua_State *L)
{
    request_t *r = current(L);
    lua_createtable(L, 0, r->nfields);
    for (int i = 0; i < r->nfields; i++) {
        const http1_field_t *f = &r->fields[i];
        char lower[256];
        if (f->name_len >= sizeof lower) continue;
        for (size_t k = 0; k <= f->name_len; k++)
            lower[k] = (char)((f->name[k] >= 'A' && f->name[k] <= 'Z') ? f->name[k] + 32 : f->name[k]);
        lua_pushlstring(L, f->value, f->value_len);
        lua_setfield(L, -2, lower);
    }
    return 1;
}

static int l_req_query_string(lua_State *L)
{
    request_t *r = current(L);
    if (r->query) lua_pushstring(L, r->query); else lua_pushnil(L);
    return 1;
}

static int l_req_body(lua_State *L)
{
    request_t *r = current(L);
    lua_pushlstring(L, r->body ? r->body : "", r->body_len);
    return 1;
}

static int l_req_remote_addr(lua_State *L)
{
    request_t *r = current(L);
    const struct sockaddr *sa = request_peer(r);
    char addr[INET6_ADDRSTRLEN] = "";
    if (sa) {
        if (sa->sa_family == AF_INET) inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, addr, sizeof addr);
        else if (sa->sa_family == AF_INET6) inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, addr, sizeof addr);
    }
    lua_pushstring(L, addr);
    return 1;
}

static int l_req_client_ip(lua_State *L)
{
    char addr[64];
    ratelimit_client_ip(current(L), addr, sizeof addr);
    lua_pushstring(L, addr);
    return 1;
}

static int l_req_claims(lua_State *L)
{
    request_t *r = current(L);
    if (r->claims_ref == LUA_NOREF || r->claims_ref == 0) lua_pushnil(L);
    else lua_rawgeti(L, LUA_REGISTRYINDEX, r->claims_ref);
    return 1;
}

static int open_request(lua_State *L)
{
    static const luaL_Reg fns[] = {
        { "header", l_req_header }, { "headers", l_req_headers }, { "query_string", l_req_query_string },
        { "body", l_req_body }, { "remote_addr", l_req_remote_addr }, { "claims", l_req_claims },
        { "client_ip", l_req_client_ip },
        { NULL, NULL },
    };
    lua_newtable(L);
    lua_getfield(L, LUA_REGISTRYINDEX, REG_WORKER);
    luaL_setfuncs(L, fns, 1);
    return 1;
}

/* ---- routes ---------------------------------------------------------------------------- */

/* A route's `rate_limit = { name = "auth", limit = "10/min", key = "ip" | "sub" }` at the top
 * of the stack. key "sub" needs the route's auth (it is checked after the token). "0"/"off"
 * leaves the route unlimited. 0 or -1 with err. */
static int read_rate_limit(lua_State *L, ratelimit_rule_t *rl, int auth, char *err, size_t errlen)
{
    if (!lua_istable(L, -1)) { snprintf(err, errlen, "rate_limit must be a table { name, limit, key }"); return -1; }
    lua_getfield(L, -1, "name");
    lua_getfield(L, -2, "limit");
    lua_getfield(L, -3, "key");
    const char *name = lua_type(L, -3) == LUA_TSTRING ? lua_tostring(L, -3) : NULL;
    const char *key = lua_isnil(L, -1) ? "ip" : lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "";
    int rc = -1;
    size_t n = name ? strlen(name) : 0;
    if (n < 1 || n >= sizeof rl->name || strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:") != n)
        snprintf(err, errlen, "rate_limit.name must be 1 to %d letters, digits or _-.:", (int)sizeof rl->name - 1);
    else if (lua_type(L, -2) != LUA_TSTRING)
        snprintf(err, errlen, "rate_limit.limit must be a string such as \"10/min\"");
    else if (strcmp(key, "ip") != 0 && strcmp(key, "sub") != 0)
        snprintf(err, errlen, "rate_limit.key must be \"ip\" or \"sub\"");
    else if (strcmp(key, "sub") == 0 && auth == AUTH_NONE)
        snprintf(err, errlen, "rate_limit.key \"sub\" needs the route's auth (\"required\" or \"optional\")");
    else if (ratelimit_parse(lua_tostring(L, -2), &rl->limit, err, errlen) == 0) {
        snprintf(rl->name, sizeof rl->name, "%s", name);
        rl->key = rl->limit.count == 0 ? RATELIMIT_KEY_NONE : strcmp(key, "sub") == 0 ? RATELIMIT_KEY_SUB : RATELIMIT_KEY_IP;
        rc = 0;
    }
    lua_pop(L, 3);
    return rc;
}

/* Read one route record at the top of the stack into ri (check mode). 0 or -1 with err. */
static int read_route(lua_State *L, int i, route_info_t *ri, const char *file, char *err, size_t errlen)
{
    memset(ri, 0, sizeof *ri);
    if (!lua_istable(L, -1)) { snprintf(err, errlen, "%s: route %d: expecting a table", file, i); return -1; }
    lua_rawgeti(L, -1, 1);
    lua_rawgeti(L, -2, 2);
    lua_rawgeti(L, -3, 3);
    if (lua_type(L, -3) != LUA_TSTRING || lua_type(L, -2) != LUA_TSTRING || !lua_isfunction(L, -1)) {
        snprintf(err, errlen, "%s: route %d: expecting { method, path, handler function }", file, i);
        lua_pop(L, 3);
        return -1;
    }
    snprintf(ri->method, sizeof ri->method, "%s", lua_tostring(L, -3));
    ri->pattern = strdup(lua_tostring(L, -2));
    lua_pop(L, 3);
    if (!router_method_valid(ri->method)) {
        snprintf(err, errlen, "%s: route %d: unknown method '%s'", file, i, ri->method);
        return -1;
    }

    lua_getfield(L, -1, "auth");
    if (lua_isstring(L, -1)) {
        const char *a = lua_tostring(L, -1);
        if (strcmp(a, "required") == 0) ri->auth = AUTH_REQUIRED;
        else if (strcmp(a, "optional") == 0) ri->auth = AUTH_OPTIONAL;
        else { snprintf(err, errlen, "%s: route %d: auth must be \"required\" or \"optional\"", file, i); lua_pop(L, 1); return -1; }
    } else if (lua_isboolean(L, -1)) {
        ri->auth = lua_toboolean(L, -1) ? AUTH_REQUIRED : AUTH_NONE;
    } else if (!lua_isnil(L, -1)) {
        snprintf(err, errlen, "%s: route %d: auth must be a string or boolean", file, i); lua_pop(L, 1); return -1;
    }
    lua_pop(L, 1);

    lua_getfield(L, -1, "roles");
    if (lua_istable(L, -1)) {
        int n = (int)lua_objlen(L, -1);
        if (n < 1 || n > ROUTE_MAX_ROLES) { snprintf(err, errlen, "%s: route %d: roles must list 1 to %d names", file, i, ROUTE_MAX_ROLES); lua_pop(L, 1); return -1; }
        for (int k = 1; k <= n; k++) {
            lua_rawgeti(L, -1, k);
            if (lua_type(L, -1) != LUA_TSTRING) { snprintf(err, errlen, "%s: route %d: roles must be strings", file, i); lua_pop(L, 2); return -1; }
            ri->roles[ri->nroles++] = strdup(lua_tostring(L, -1));
            lua_pop(L, 1);
        }
        ri->auth = AUTH_REQUIRED;
    } else if (!lua_isnil(L, -1)) {
        snprintf(err, errlen, "%s: route %d: roles must be a list", file, i); lua_pop(L, 1); return -1;
    }
    lua_pop(L, 1);

    lua_getfield(L, -1, "scope");
    if (lua_type(L, -1) == LUA_TSTRING) { ri->scope = strdup(lua_tostring(L, -1)); ri->auth = AUTH_REQUIRED; }
    else if (!lua_isnil(L, -1)) { snprintf(err, errlen, "%s: route %d: scope must be a string", file, i); lua_pop(L, 1); return -1; }
    lua_pop(L, 1);

    lua_getfield(L, -1, "max_body");
    if (lua_type(L, -1) == LUA_TNUMBER && lua_tonumber(L, -1) >= 0 && lua_tonumber(L, -1) <= (1 << 30)) ri->max_body = (size_t)lua_tonumber(L, -1);
    else if (!lua_isnil(L, -1)) { snprintf(err, errlen, "%s: route %d: max_body must be a byte count", file, i); lua_pop(L, 1); return -1; }
    lua_pop(L, 1);

    lua_getfield(L, -1, "idempotency");
    if (lua_isboolean(L, -1)) ri->idempotency = lua_toboolean(L, -1);
    else if (!lua_isnil(L, -1)) { snprintf(err, errlen, "%s: route %d: idempotency must be a boolean", file, i); lua_pop(L, 1); return -1; }
    lua_pop(L, 1);

    lua_getfield(L, -1, "rate_limit");
    int rc = lua_isnil(L, -1) ? 0 : read_rate_limit(L, &ri->rate_limit, ri->auth, err, errlen);
    lua_pop(L, 1);
    if (rc < 0) {
        char why[512];
        snprintf(why, sizeof why, "%s", err);
        snprintf(err, errlen, "%s: route %d: %s", file, i, why);
        return -1;
    }
    return 0;
}

/* Replace the handler on top of the stack by lib.idempotency.wrap(handler, "METHOD pattern"):
 * Idempotency-Key replay for a route declaring `idempotency = true` (scripts/lib/idempotency.lua). */
static int wrap_idempotent(lua_State *L, const route_info_t *ri, char *err, size_t errlen)
{
    lua_getglobal(L, "require");
    lua_pushliteral(L, "lib.idempotency");
    if (lua_pcall(L, 1, 1, 0) != 0 || !lua_istable(L, -1)) {
        snprintf(err, errlen, "idempotency = true needs lib.idempotency: %s",
                 lua_isstring(L, -1) ? lua_tostring(L, -1) : "it did not return a table");
        lua_pop(L, 1);
        return -1;
    }
    lua_getfield(L, -1, "wrap");
    lua_pushvalue(L, -3);
    lua_pushfstring(L, "%s %s", ri->method, ri->pattern);
    if (lua_pcall(L, 2, 1, 0) != 0 || !lua_isfunction(L, -1)) {
        snprintf(err, errlen, "lib.idempotency.wrap failed for %s %s: %s", ri->method, ri->pattern,
                 lua_isstring(L, -1) ? lua_tostring(L, -1) : "it did not return a function");
        lua_pop(L, 2);
        return -1;
    }
    lua_remove(L, -2);   /* the module */
    lua_replace(L, -2);  /* the bare handler */
    return 0;
}

/* With the routes table on top: check it and fill snap's route table (check mode), or store
 * the handlers for serving (w mode). Pops nothing. */
static int take_routes(lua_State *L, worker_t *w, snapshot_t *snap, int check, char *err, size_t errlen)
{
    char file[512];
    snprintf(file, sizeof file, "%s/services/%s/routes.lua", snap->cfg->scripts_dir, snap->cfg->service);
    if (!lua_istable(L, -1)) { snprintf(err, errlen, "%s: must return a list of routes", file); return -1; }
    int n = (int)lua_objlen(L, -1);
    if (check) {
        snap->routes = calloc((size_t)(n ? n : 1), sizeof *snap->routes);
        if (!snap->routes) { snprintf(err, errlen, "out of memory"); return -1; }
        for (int i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, i);
            int rc = read_route(L, i, &snap->routes[i - 1], file, err, errlen);
            if (rc == 0 && snap->routes[i - 1].idempotency) {   /* the wrapper must load: fail the check, not a request */
                lua_rawgeti(L, -1, 3);
                rc = wrap_idempotent(L, &snap->routes[i - 1], err, errlen);
                lua_pop(L, 1);   /* the wrapper, or the bare handler after a failure */
            }
            lua_pop(L, 1);
            snap->nroutes = i;   /* counts the partly filled one too, so it is freed */
            if (rc < 0) return -1;
        }
        return 0;
    }
    if (n != snap->nroutes) { snprintf(err, errlen, "%s: returned %d routes, expected %d", file, n, snap->nroutes); return -1; }
    lua_createtable(L, n, 0);
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, -2, i);
        lua_rawgeti(L, -1, 3);
        if (!lua_isfunction(L, -1)) { snprintf(err, errlen, "%s: route %d has no handler", file, i); lua_pop(L, 3); return -1; }
        if (snap->routes[i - 1].idempotency && wrap_idempotent(L, &snap->routes[i - 1], err, errlen) < 0) {
            lua_pop(L, 2);
            return -1;
        }
        lua_rawseti(L, -3, i);
        lua_pop(L, 1);
    }
    w->handlers_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

lua_State *worker_state_new(worker_t *w, snapshot_t *snap, int check, char *err, size_t errlen)
{
    lua_State *L = luaL_newstate();
    if (!L) { snprintf(err, errlen, "cannot create a Lua state (out of memory)"); return NULL; }
    lua_atpanic(L, panic);
    luaL_openlibs(L);
    lua_pushlightuserdata(L, w);
    lua_setfield(L, LUA_REGISTRYINDEX, REG_WORKER);
    lua_pushlightuserdata(L, snap);
    lua_setfield(L, LUA_REGISTRYINDEX, "mercato.snapshot");
    bindings_preload(L);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, open_request);
    lua_setfield(L, -2, "mercato.request");
    lua_pop(L, 2);
    install_loader(L, snap, w && w->kind && strcmp(w->kind, "cli") == 0);

    if (luaL_loadbuffer(L, (const char *)luaJIT_BC_prelude, luaJIT_BC_prelude_SIZE, "=prelude") != 0 ||
        lua_pcall(L, 0, 1, 0) != 0) {
        snprintf(err, errlen, "host prelude: %s", lua_tostring(L, -1));
        lua_close(L);
        return NULL;
    }
    /* The prelude's table: keep what C calls on every request. */
    int tb, enc, mt;
    lua_getfield(L, -1, "traceback");
    tb = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_getfield(L, -1, "encode");
    enc = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_getfield(L, -1, "request_mt");
    mt = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_getfield(L, -1, "at_close");
    lua_setfield(L, LUA_REGISTRYINDEX, "mercato.at_close");
    lua_getfield(L, -1, "lock_globals");
    lua_insert(L, -2);
    lua_pop(L, 1);   /* leaves lock_globals on the stack */

    /* Check mode runs only for services that have a routes module; serving states load it
     * when the checked snapshot has a router (the gateway and `mercato lua` have none). */
    if (snap->cfg->service && (check || snap->router)) {
        char routes[300];
        snprintf(routes, sizeof routes, "services.%s.routes", snap->cfg->service);
        lua_getglobal(L, "require");
        lua_pushstring(L, routes);
        if (worker_pcall(L, tb, 1, 1) != 0) {
            snprintf(err, errlen, "%s", lua_tostring(L, -1));
            lua_close(L);
            return NULL;
        }
        int rc = take_routes(L, w, snap, check, err, errlen);
        lua_pop(L, 1);
        if (rc < 0) { lua_close(L); return NULL; }
    }
    lua_call(L, 0, 0);   /* lock_globals */
    if (w) {
        w->traceback_ref = tb;
        w->encode_ref = enc;
        w->request_mt_ref = mt;
    }
    return L;
}

/* ---------------------------------------------------------------------------------------- */

worker_t *worker_new(int id, const char *kind, const config_t *cfg, snapshot_t *snap, char *err, size_t errlen)
{
    worker_t *w = calloc(1, sizeof *w);
    if (!w) { snprintf(err, errlen, "out of memory"); return NULL; }
    w->id = id;
    w->kind = kind;
    w->cfg = cfg;
    w->handlers_ref = LUA_NOREF;
    if (getrandom(w->rng, sizeof w->rng, 0) != sizeof w->rng) { w->rng[0] = (uint64_t)(uintptr_t)w ^ 0x9e3779b97f4a7c15ull; w->rng[1] = (uint64_t)id + 1; }
    if (!w->rng[0] && !w->rng[1]) w->rng[1] = 1;
    w->metrics = metrics_shard_new();
    if (!w->metrics || logbuf_init(&w->access, (size_t)64 * 1024) < 0) {
        snprintf(err, errlen, "out of memory");
        free(w);
        return NULL;
    }
    if (snap) snapshot_ref(snap);
    else snap = snapshot_current();
    if (!snap) { snprintf(err, errlen, "no scripts are loaded"); logbuf_free(&w->access); free(w); return NULL; }
    w->snap = snap;
    w->generation = snap->generation;
    w->L = worker_state_new(w, snap, 0, err, errlen);
    if (!w->L) {
        snapshot_unref(snap);
        logbuf_free(&w->access);
        free(w);
        return NULL;
    }
    return w;
}

void worker_free(worker_t *w)
{
    if (!w) return;
    worker_state_close(w->L);
    if (w->old_L) { worker_state_close(w->old_L); snapshot_unref(w->old_snap); }
    bindings_worker_free(w);
    httpc_free(w->httpc);   /* unwatches its connections: before the loop */
    gateway_worker_free(w);
    ratelimit_conn_free(w->ratelimit);   /* unwatches its async connection: before the loop */
    free(w->revocations);
    loop_free(w->loop);   /* after the bindings: their async connections are watched by it */
    snapshot_unref(w->snap);
    logbuf_free(&w->access);   /* flushes; the metrics shard stays registered until exit */
    free(w);
}

ratelimit_ctx_t worker_limits(worker_t *w)
{
    const char *url = w->cfg ? w->cfg->redis_url : NULL;
    if (!url) url = getenv("REDIS_URL");
    return (ratelimit_ctx_t){ &w->ratelimit, w->loop, url && *url ? url : NULL };
}

httpc_t *worker_httpc(worker_t *w)
{
    if (!w->httpc) w->httpc = httpc_new(w->loop);
    return w->httpc;
}

void worker_maybe_reload(worker_t *w)
{
    if (snapshot_generation() == w->generation) return;
    if (w->old_L) return;   /* the generation before still has parked handlers: after them */
    snapshot_t *snap = snapshot_current();
    if (!snap) return;
    if (snap->generation == w->generation) { snapshot_unref(snap); return; }
    char err[1024];
    int old_handlers = w->handlers_ref, old_tb = w->traceback_ref, old_enc = w->encode_ref, old_mt = w->request_mt_ref;
    lua_State *L = worker_state_new(w, snap, 0, err, sizeof err);
    if (!L) {
        /* The snapshot passed its check, so this is rare (memory): keep serving the old code,
         * and do not retry on every request. */
        log_error("worker %d: cannot build generation %llu, keeping %llu: %s", w->id,
                  (unsigned long long)snap->generation, (unsigned long long)w->generation, err);
        w->handlers_ref = old_handlers; w->traceback_ref = old_tb; w->encode_ref = old_enc; w->request_mt_ref = old_mt;
        w->generation = snap->generation;
        snapshot_unref(snap);
        return;
    }
    int live = 0;   /* parked handlers: coroutines of the old state (a forward has none) */
    for (request_t *r = w->waiting; r; r = r->wnext) live += r->co != NULL;
    if (live) {
        /* The old state lives on, retired, until the last of them ends
         * (worker_retired_done). New requests start in the new one. */
        w->old_L = w->L;
        w->old_snap = w->snap;
        w->old_traceback_ref = old_tb;
        w->old_encode_ref = old_enc;
        w->old_live = live;
        for (request_t *r = w->waiting; r; r = r->wnext) r->retired = r->co != NULL;
    } else {
        worker_state_close(w->L);
        snapshot_unref(w->snap);
    }
    w->L = L;
    w->nco_pool = 0;   /* those coroutines lived in the old state */
    w->snap = snap;
    w->generation = snap->generation;
    log_debug("worker %d: now serving generation %llu", w->id, (unsigned long long)w->generation);
}

static uint64_t xorshift128p(uint64_t s[2])
{
    uint64_t a = s[0];
    const uint64_t b = s[1];
    s[0] = b;
    a ^= a << 23;
    s[1] = a ^ b ^ (a >> 17) ^ (b >> 26);
    return s[1] + b;
}

void worker_request_id(worker_t *w, char *buf)
{
    static const char hex[] = "0123456789abcdef";
    uint64_t a = xorshift128p(w->rng), b = xorshift128p(w->rng);
    for (int i = 0; i < 16; i++) {
        buf[i] = hex[(a >> (i * 4)) & 15];
        buf[16 + i] = hex[(b >> (i * 4)) & 15];
    }
    buf[32] = 0;
}

void worker_traceparent(worker_t *w, const request_t *r, char *out)
{
    char span[33];
    do worker_request_id(w, span); while (memcmp(span, "0000000000000000", 16) == 0);
    span[16] = 0;
    const char *in = r->conn ? request_header(r, "traceparent") : NULL;
    httpc_traceparent(in, r->id, span, out);
}

/* ---- handler coroutines ----------------------------------------------------------------- */

int worker_can_yield(lua_State *L)
{
    worker_t *w = worker_from_lua(L);
    /* lua_isyieldable: false inside a callback of a C function (string.gsub, table.sort, a
     * metamethod called from C), where lua_yield would raise after the I/O was started. */
    return w && w->loop && w->cur && w->cur->co == L && lua_isyieldable(L);
}

int worker_wait(lua_State *L, void (*cancel)(void *arg), void *arg)
{
    request_t *r = worker_from_lua(L)->cur;
    /* A wait registered before whose yield raised (and the handler went on) is forgotten:
     * only the newest wait may wake the coroutine. */
    if (r->wait_cancel) r->wait_cancel(r->wait_arg);
    r->wait_cancel = cancel;
    r->wait_arg = arg;
    return lua_yield(L, 0);
}

static void wake_due(loop_t *loop, void *arg)
{
    request_t *r = arg;
    (void)loop;
    r->w->resume(r);
}

void worker_wake(request_t *r, int n)
{
    r->wait_cancel = NULL;
    r->wait_arg = NULL;
    r->resume_n = n;
    loop_defer(r->w->loop, &r->resume_defer, wake_due, r);   /* cannot fail: the link is r's */
}

void worker_cancel_wait(request_t *r)
{
    if (r->wait_cancel) r->wait_cancel(r->wait_arg);
    r->wait_cancel = NULL;
    r->wait_arg = NULL;
    loop_defer_cancel(r->w->loop, &r->resume_defer);
}

void worker_swap_retired(worker_t *w)
{
    lua_State *L = w->L;
    snapshot_t *snap = w->snap;
    int tb = w->traceback_ref, enc = w->encode_ref;
    w->L = w->old_L; w->snap = w->old_snap; w->traceback_ref = w->old_traceback_ref; w->encode_ref = w->old_encode_ref;
    w->old_L = L; w->old_snap = snap; w->old_traceback_ref = tb; w->old_encode_ref = enc;
}

void worker_retired_done(worker_t *w)
{
    if (--w->old_live > 0) return;
    worker_state_close(w->old_L);
    snapshot_unref(w->old_snap);
    w->old_L = NULL;
    w->old_snap = NULL;
    log_debug("worker %d: closed the previous generation after its last parked handler", w->id);
}
