/* inventory: stock reservations for Lua (`require "inventory"`). The module is Lua over the db
 * module (bindings/lua/inventory.lua, compiled into the binary); this file gives it its C
 * primitives — argument checks that raise on misuse and answer nil, err, "invalid" for values
 * a client could have sent, the item order, the outcome counter — and loads it.
 *
 *   local ok, info, code = inventory.reserve(reservation_id, { { product_id = p, quantity = 2 } }, 900)
 *   -- true, { status = "reserved", replayed = false, items = { { product_id = p, quantity = 2, name = "Lamp",
 *   --   unit_price_cents = 1250, currency = "eur", seller_id = s } } }   (only active products are taken)
 *   -- nil, { insufficient = { { product_id = p, requested = 2, available = 1 } } }, "conflict"
 *   -- nil, { currencies = { "eur", "usd" } }, "invalid"   (one reservation, one currency)
 *   -- nil, "message", "unavailable" | "timeout" | "invalid" | "conflict"
 *   local ok, err, code = inventory.commit(id)     -- true, "committed", product_ids | bare nil (unknown id)
 *   local ok, err, code = inventory.release(id)    -- true, "released", product_ids | bare nil (idempotent)
 *   -- a second commit or release: true, "already", {}
 *   local n, ids = inventory.expire(100)           -- reservations released past their TTL, product ids touched
 *   local lvl, err, code = inventory.set_stock(product_id, 40, 7)  -- { stock, reserved, version }
 *   local lvl, err, code = inventory.get(product_id)                -- or bare nil
 *   local a, err, code = inventory.audit(product_id)  -- { ..., balanced = true }
 *
 * A set_stock on a stale version returns nil, message, "conflict", { stock, reserved, version }
 * (the current level). In a handler every statement parks it; inside the caller's db.tx an
 * operation is a savepoint of that transaction. */
#include "inventory.h"

#include <ctype.h>
#include <lauxlib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../host/bindings.h"
#include "../core/metrics.h"
#include "../host/worker.h"
#include "inventory_lua.h"   /* generated: luaJIT_BC_inventory, the compiled bindings/lua/inventory.lua */

#define UV_WORKER lua_upvalueindex(1)

static const char *const outcomes[] = { "reserved", "replayed", "insufficient", "invalid", "error" };
#define N_OUTCOMES (int)(sizeof outcomes / sizeof outcomes[0])
static metric_cell_t *g_reservations[N_OUTCOMES];

/* ---- C API ------------------------------------------------------------------------------- */

int inventory_uuid(const char *s, size_t len, char out[37])
{
    if (!s || len != 36) return 0;
    for (size_t i = 0; i < 36; i++) {
        char ch = s[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (ch != '-') return 0;
        } else if (!isxdigit((unsigned char)ch)) {
            return 0;
        }
        out[i] = (char)tolower((unsigned char)ch);
    }
    out[36] = 0;
    return 1;
}

static int by_product(const void *a, const void *b)
{
    return strcmp(((const inv_item_t *)a)->product_id, ((const inv_item_t *)b)->product_id);
}

int inventory_sort_items(inv_item_t *items, int n)
{
    if (n <= 1) return n;
    qsort(items, (size_t)n, sizeof *items, by_product);
    int out = 0;
    for (int i = 0; i < n; i++) {
        if (out > 0 && strcmp(items[out - 1].product_id, items[i].product_id) == 0) {
            items[out - 1].quantity += items[i].quantity;
        } else {
            items[out++] = items[i];
        }
    }
    return out;
}

/* ---- argument checks (the primitives the Lua module calls first) --------------------------- */

/* Raise unless this state can reach a database (the scratch check state has no worker). */
static void need_worker(lua_State *L, const char *fn)
{
    if (!lua_touserdata(L, UV_WORKER))
        luaL_error(L, "%s: no database here (scripts are being checked, not served); call from handlers", fn);
}

/* Misuse: "bad argument #idx to 'fn' (fn: expecting what, got type)". */
static int arg_type_error(lua_State *L, int idx, const char *fn, const char *what, int have)
{
    return luaL_error(L, "bad argument #%d to '%s' (%s: expecting %s, got %s)", idx, fn, fn, what, lua_typename(L, have));
}

static int push_invalid(lua_State *L, const char *msg)
{
    lua_pushnil(L);
    lua_pushstring(L, msg);
    lua_pushliteral(L, "invalid");
    return 3;
}

/* Argument idx as a canonical UUID in out; raises when it is not a string. 0 when malformed. */
static int uuid_arg(lua_State *L, int idx, const char *fn, const char *what, char out[37])
{
    if (lua_type(L, idx) != LUA_TSTRING) return arg_type_error(L, idx, fn, what, lua_type(L, idx));
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    return inventory_uuid(s, len, out);
}

/* A whole number in [min, max] at idx (raises when not a number). */
static int int_arg(lua_State *L, int idx, const char *fn, const char *what, double min, double max, double *out)
{
    if (lua_type(L, idx) != LUA_TNUMBER) return arg_type_error(L, idx, fn, what, lua_type(L, idx));
    double d = lua_tonumber(L, idx);
    *out = d;
    return d == floor(d) && d >= min && d <= max;
}

/* C.reserve(reservation_id, items, ttl) → rid, sorted items { {product_id, quantity}, ... }, ttl
 * | nil, err, "invalid". */
static int l_check_reserve(lua_State *L)
{
    const char *fn = "inventory.reserve";
    need_worker(L, fn);
    char rid[37];
    int rid_ok = uuid_arg(L, 1, fn, "a reservation_id string", rid);
    if (!lua_istable(L, 2)) return arg_type_error(L, 2, fn, "an items table", lua_type(L, 2));
    double ttl = 900;
    int ttl_ok = lua_isnoneornil(L, 3) || int_arg(L, 3, fn, "a ttl_seconds number", 1, INV_MAX_TTL_S, &ttl);
    int n = (int)lua_objlen(L, 2);
    if (n > INV_MAX_ITEMS) return push_invalid(L, "too many items in one reservation");
    /* The array lives in a userdata: a raise below frees it with the state. */
    inv_item_t *items = lua_newuserdata(L, (size_t)(n ? n : 1) * sizeof *items);
    const char *bad = !rid_ok ? "reservation_id is not a UUID" : !ttl_ok ? "ttl_seconds must be a whole number of seconds, 1 to 7 days" : NULL;
    if (!bad && n == 0) bad = "a reservation needs at least one item";
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, 2, i + 1);
        if (!lua_istable(L, -1)) return luaL_error(L, "bad argument #2 to '%s' (%s: item %d is not a table)", fn, fn, i + 1);
        lua_getfield(L, -1, "product_id");
        lua_getfield(L, -2, "quantity");
        int top = lua_gettop(L);
        memset(&items[i], 0, sizeof items[i]);
        if (!uuid_arg(L, top - 1, fn, "an item's product_id string", items[i].product_id) && !bad) bad = "an item's product_id is not a UUID";
        double qn = 0;
        if (!int_arg(L, top, fn, "an item's quantity number", 1, INV_MAX_QUANTITY, &qn) && !bad) bad = "an item's quantity must be a whole number from 1 to 1000000";
        items[i].quantity = qn >= 1 && qn <= INV_MAX_QUANTITY ? (long)qn : 0;   /* no cast of NaN or 1e300 */
        lua_pop(L, 3);
    }
    if (bad) return push_invalid(L, bad);
    n = inventory_sort_items(items, n);
    for (int i = 0; i < n; i++)
        if (items[i].quantity > INV_MAX_QUANTITY) return push_invalid(L, "an item's quantity must be a whole number from 1 to 1000000");
    lua_pushstring(L, rid);
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
        lua_createtable(L, 0, 2);
        lua_pushstring(L, items[i].product_id);
        lua_setfield(L, -2, "product_id");
        lua_pushnumber(L, (lua_Number)items[i].quantity);
        lua_setfield(L, -2, "quantity");
        lua_rawseti(L, -2, i + 1);
    }
    lua_pushnumber(L, ttl);
    return 3;
}

/* C.<check>(fn, id) → the lower-case id, or nil when it is not a UUID (nothing has that id).
 * Raises when it is not a string, naming `what`. */
static int check_id(lua_State *L, const char *what)
{
    const char *fn = luaL_checkstring(L, 1);
    need_worker(L, fn);
    lua_remove(L, 1);
    char id[37];
    if (!uuid_arg(L, 1, fn, what, id)) { lua_pushnil(L); return 1; }
    lua_pushstring(L, id);
    return 1;
}

/* C.rid(fn, reservation_id), C.pid(fn, product_id). */
static int l_check_rid(lua_State *L) { return check_id(L, "a reservation_id string"); }
static int l_check_pid(lua_State *L) { return check_id(L, "a product_id string"); }

/* C.set_stock(product_id, stock[, expected_version]) → pid, stock, expected (or nil) | nil (not
 * a UUID) | nil, err, code. */
static int l_check_set_stock(lua_State *L)
{
    const char *fn = "inventory.set_stock";
    need_worker(L, fn);
    char pid[37];
    int pid_ok = uuid_arg(L, 1, fn, "a product_id string", pid);
    double stock = 0, version = -1;
    int stock_ok = int_arg(L, 2, fn, "a stock number", 0, 2147483647.0, &stock);
    int version_ok = lua_isnoneornil(L, 3) || int_arg(L, 3, fn, "an expected version number", 0, 9007199254740992.0, &version);
    if (!pid_ok) { lua_pushnil(L); return 1; }   /* no product has that id */
    if (!stock_ok) return push_invalid(L, "stock must be a whole number from 0 to 2147483647");
    if (!version_ok) {
        lua_pushnil(L);
        lua_pushliteral(L, "the expected version is not a version of this inventory");
        lua_pushliteral(L, "conflict");
        return 3;
    }
    lua_pushstring(L, pid);
    lua_pushnumber(L, stock);
    if (version >= 0) lua_pushnumber(L, version); else lua_pushnil(L);
    return 3;
}

/* C.limit([limit]) → the expire batch, or nil, err, "invalid". */
static int l_check_limit(lua_State *L)
{
    need_worker(L, "inventory.expire");
    double limit = 100;
    if (!lua_isnoneornil(L, 1) && !int_arg(L, 1, "inventory.expire", "a limit number", 1, 100000, &limit))
        return push_invalid(L, "limit must be a whole number from 1 to 100000");
    lua_pushnumber(L, limit);
    return 1;
}

/* C.array(t) → t, marked as a JSON array (an empty one encodes as []). */
static int l_array(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_getmetatable(L, "mercato.json.array");
    lua_setmetatable(L, 1);
    lua_settop(L, 1);
    return 1;
}

/* C.count(outcome): inventory_reservations_total{outcome}. */
static int l_count(lua_State *L)
{
    const char *o = luaL_checkstring(L, 1);
    for (int i = 0; i < N_OUTCOMES; i++)
        if (strcmp(o, outcomes[i]) == 0 && g_reservations[i]) metrics_cell_add(g_reservations[i], 1);
    return 0;
}

/* ---- module ------------------------------------------------------------------------------- */

static int inventory_global_init(void)
{
    char err[128];
    const char *label[] = { "outcome" };
    metric_family_t *f = metrics_family("inventory_reservations_total", "Stock reservation attempts, by outcome.",
                                        METRIC_COUNTER, 1, label, 0, NULL, err, sizeof err);
    for (int i = 0; f && i < N_OUTCOMES; i++) g_reservations[i] = metrics_cell(f, &outcomes[i]);
    return 0;
}

int luaopen_inventory(lua_State *L)
{
    static const luaL_Reg fns[] = {
        { "reserve", l_check_reserve }, { "rid", l_check_rid }, { "pid", l_check_pid },
        { "set_stock", l_check_set_stock }, { "limit", l_check_limit }, { "array", l_array }, { "count", l_count },
        { NULL, NULL },
    };
    if (luaL_loadbuffer(L, (const char *)luaJIT_BC_inventory, luaJIT_BC_inventory_SIZE, "=inventory.lua") != 0)
        return lua_error(L);
    lua_newtable(L);   /* C: the primitives */
    lua_pushlightuserdata(L, worker_from_lua(L));   /* NULL in the scratch check state: calls raise */
    luaL_setfuncs(L, fns, 1);
    lua_call(L, 1, 1);   /* inventory.lua(C) → the module */
    return 1;
}

const binding_t binding_inventory = {
    .name = "inventory",
    .open = luaopen_inventory,
    .global_init = inventory_global_init,
};
