/* fuzz_lua.h: what the libFuzzer targets over the services' Lua share (tests/fuzz/fuzz_lua_*.c).
 *
 * The Lua state is the host's own: the product service's scripts are built into a snapshot and
 * a worker state made from it exactly as a serving thread makes one (worker_new: the prelude,
 * every binding preloaded, the snapshot's module loader, locked globals), once per process. A
 * target names a property file under tests/fuzz/lua/, which returns function(input): it calls
 * the real module (`require "lib.validate"`, ...) on the input and raises an error starting with
 * "fuzz property failed" when the code breaks its contract. Any Lua error at all is a finding
 * (the property file itself catches the errors a contract allows, e.g. template.compile's),
 * so is a state that keeps growing past FUZZ_LUA_MAX_KB after a full collection.
 *
 * libFuzzer sees the C it instruments, not the Lua the input drives, so a line hook hashes each
 * (previous line, line) pair of Lua code into an extra-counters section libFuzzer reads as
 * coverage: inputs that reach new Lua lines are kept. (The hook keeps LuaJIT interpreting.) */
#ifndef MERCATO_FUZZ_LUA_H
#define MERCATO_FUZZ_LUA_H

#include <lauxlib.h>
#include <lua.h>

#include "../../core/log.h"
#include "../../host/bindings.h"
#include "../../host/config.h"
#include "../../host/snapshot.h"
#include "../../host/worker.h"
#include "fuzz.h"

#define FUZZ_LUA_MAX_KB (256 * 1024)   /* live Lua heap after a full collection */

/* Lua line edges, read by libFuzzer as coverage (its extra counters section). */
__attribute__((used, section("__libfuzzer_extra_counters"))) static uint8_t fuzz_lua_edges[1 << 16];

static config_t fuzz_lua_cfg;
static worker_t *fuzz_lua_worker;
static int fuzz_lua_check_ref = LUA_NOREF;
static uintptr_t fuzz_lua_prev;
static unsigned long fuzz_lua_runs;

static void fuzz_lua_line(lua_State *L, lua_Debug *ar)
{
    if (!lua_getinfo(L, "S", ar)) return;
    uintptr_t here = (uintptr_t)ar->source * 31u + (uintptr_t)ar->currentline;
    uintptr_t h = (here ^ (fuzz_lua_prev >> 1)) * 0x9e3779b97f4a7c15ull;
    fuzz_lua_edges[(h >> 40) & (sizeof fuzz_lua_edges - 1)]++;
    fuzz_lua_prev = here;
}

/* Build the product service's worker state once and load the property file (its path from the
 * repository root, where scripts/dev/fuzz.sh runs the targets). Aborts when either fails. */
static void fuzz_lua_init(const char *property_file)
{
    char err[2048];
    log_init(LOG_ERROR, "fuzz");
    setenv("SERVICE", "product", 1);
    setenv("SCRIPTS_DIR", "scripts", 1);   /* the repository's own scripts, whatever the environment says */
    if (config_load(&fuzz_lua_cfg, 1, err, sizeof err) != 0 || bindings_global_init() != 0) {
        fprintf(stderr, "fuzz_lua: configuration: %s\n", err);
        abort();
    }
    snapshot_t *s = snapshot_build(&fuzz_lua_cfg, err, sizeof err);
    if (!s) { fprintf(stderr, "fuzz_lua: scripts: %s\n", err); abort(); }
    snapshot_publish(s);
    fuzz_lua_worker = worker_new(0, "http", &fuzz_lua_cfg, NULL, err, sizeof err);
    if (!fuzz_lua_worker) { fprintf(stderr, "fuzz_lua: worker state: %s\n", err); abort(); }
    lua_State *L = fuzz_lua_worker->L;
    if (luaL_loadfile(L, property_file) != 0 || worker_pcall(L, fuzz_lua_worker->traceback_ref, 0, 1) != 0
        || !lua_isfunction(L, -1)) {
        fprintf(stderr, "fuzz_lua: %s must return a function: %s\n", property_file,
                lua_isstring(L, -1) ? lua_tostring(L, -1) : luaL_typename(L, -1));
        abort();
    }
    fuzz_lua_check_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_sethook(L, fuzz_lua_line, LUA_MASKLINE, 0);
}

/* One input through the property file's function: any error is a finding. */
static int fuzz_lua_run(const char *property_file, const uint8_t *data, size_t size)
{
    if (!fuzz_lua_worker) fuzz_lua_init(property_file);
    lua_State *L = fuzz_lua_worker->L;
    int top = lua_gettop(L);
    fuzz_lua_prev = 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, fuzz_lua_check_ref);
    lua_pushlstring(L, (const char *)data, size);
    if (worker_pcall(L, fuzz_lua_worker->traceback_ref, 1, 0) != 0) {
        const char *msg = lua_tostring(L, -1);
        fprintf(stderr, "%s%s\n", msg && strstr(msg, "fuzz property failed") ? "" : "fuzz property failed: a Lua error: ",
                msg ? msg : "(not a string)");
        abort();
    }
    lua_settop(L, top);
    if (++fuzz_lua_runs % 256 == 0) {
        lua_gc(L, LUA_GCCOLLECT, 0);
        int kb = lua_gc(L, LUA_GCCOUNT, 0);
        if (kb > FUZZ_LUA_MAX_KB) {
            fprintf(stderr, "fuzz property failed: the Lua heap holds %d KiB after a full collection\n", kb);
            abort();
        }
    }
    return 0;
}

#endif
