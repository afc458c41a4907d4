/* test_lua.h: Lua states shaped like a worker's, for the binding tests — every C module
 * preloaded, the worker pointer in the registry (NULL: like the scratch check state). */
#ifndef MERCATO_TEST_LUA_H
#define MERCATO_TEST_LUA_H

#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>

#include "bindings.h"
#include "worker.h"

/* A state for w with `module` required into the global of the same name. */
static inline lua_State *test_state(worker_t *w, const char *module)
{
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    if (w) {
        lua_pushlightuserdata(L, w);
        lua_setfield(L, LUA_REGISTRYINDEX, "mercato.worker");
    }
    bindings_preload(L);
    lua_getglobal(L, "require");
    lua_pushstring(L, module);
    lua_call(L, 1, 1);
    lua_setglobal(L, module);
    return L;
}

/* Run chunk on a cleared stack: 0 with its results left, or -1 with the error message left. */
static inline int test_run(lua_State *L, const char *chunk)
{
    lua_settop(L, 0);
    if (luaL_loadstring(L, chunk) != 0) return -1;
    return lua_pcall(L, 0, LUA_MULTRET, 0) == 0 ? 0 : -1;
}

/* Run chunk; its first result as a string ("error: ..." when it raised, "(nil)" for none).
 * The buffer is static: use the result before the next call. */
static inline const char *test_eval(lua_State *L, const char *chunk)
{
    static char out[512];
    if (luaL_loadstring(L, chunk) != 0 || lua_pcall(L, 0, 1, 0) != 0)
        snprintf(out, sizeof out, "error: %s", lua_tostring(L, -1));
    else
        snprintf(out, sizeof out, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "(nil)");
    lua_pop(L, 1);
    return out;
}

#endif
