/* log: JSON log lines from Lua — log.info("message", { key = value, ... }). */
#include <lauxlib.h>

#include "../host/bindings.h"
#include <stdio.h>
#include <string.h>

#include "../core/buf.h"
#include "../core/log.h"
#include "../host/request.h"
#include "../host/worker.h"

/* Append `"key":value` members for the string/number/boolean fields of the table at idx. */
static void add_fields(lua_State *L, int idx, buf_t *b)
{
    char esc[2048];
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        if (lua_type(L, -2) == LUA_TSTRING) {
            size_t klen;
            const char *k = lua_tolstring(L, -2, &klen);
            int t = lua_type(L, -1);
            if (t == LUA_TSTRING || t == LUA_TNUMBER || t == LUA_TBOOLEAN) {
                log_json_escape(esc, sizeof esc, k, klen);
                buf_addf(b, "%s\"%s\":", b->len ? "," : "", esc);
                if (t == LUA_TBOOLEAN) buf_adds(b, lua_toboolean(L, -1) ? "true" : "false");
                else if (t == LUA_TNUMBER) {
                    double d = lua_tonumber(L, -1);
                    if (d != d || d - d != 0) buf_adds(b, "null");   /* NaN, inf */
                    else buf_addf(b, "%.17g", d);
                } else {
                    size_t vlen;
                    const char *v = lua_tolstring(L, -1, &vlen);
                    log_json_escape(esc, sizeof esc, v, vlen);
                    buf_addf(b, "\"%s\"", esc);
                }
            }
        }
        lua_pop(L, 1);
    }
}

static int emit(lua_State *L, int level)
{
    const char *msg = luaL_checkstring(L, 1);
    if (!log_enabled(level)) return 0;
    worker_t *w = lua_touserdata(L, lua_upvalueindex(1));
    buf_t fields;
    buf_init(&fields);
    if (w && w->cur) buf_addf(&fields, "\"request_id\":\"%s\"", w->cur->id);
    if (lua_istable(L, 2)) add_fields(L, 2, &fields);
    log_line(level, fields.data, "%s", msg);
    buf_free(&fields);
    return 0;
}

static int l_debug(lua_State *L) { return emit(L, LOG_DEBUG); }
static int l_info(lua_State *L) { return emit(L, LOG_INFO); }
static int l_warn(lua_State *L) { return emit(L, LOG_WARN); }
static int l_error(lua_State *L) { return emit(L, LOG_ERROR); }

int luaopen_log(lua_State *L)
{
    static const luaL_Reg fns[] = {
        { "debug", l_debug }, { "info", l_info }, { "warn", l_warn }, { "error", l_error }, { NULL, NULL },
    };
    lua_newtable(L);
    lua_pushlightuserdata(L, worker_from_lua(L));
    luaL_setfuncs(L, fns, 1);
    return 1;
}

const binding_t binding_log = { .name = "log", .open = luaopen_log };
