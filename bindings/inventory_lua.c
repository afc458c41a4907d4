/* inventory_lua: the `inventory` Lua module over bindings/inventory.c.
 *
 *   local ok, info, code = inventory.reserve(reservation_id, { { product_id = p, quantity = 2 } }, 900)
 *   -- true, { status = "reserved", replayed = false }
 *   -- nil, { insufficient = { { product_id = p, requested = 2, available = 1 } } }, "conflict"
 *   -- nil, "message", "unavailable" | "timeout" | "invalid" | "conflict"
 *   local ok, err, code = inventory.commit(id)     -- true, "committed", product_ids | bare nil (unknown id)
 *   local ok, err, code = inventory.release(id)    -- true, "released", product_ids | bare nil (idempotent)
 *   -- a second commit or release: true, "already", {}
 *   local n, err, code = inventory.expire(100)     -- reservations released past their TTL
 *   local lvl, err, code = inventory.set_stock(product_id, 40, 7)  -- { stock, reserved, version }
 *   local lvl, err, code = inventory.get(product_id)                -- or bare nil
 *   local a, err, code = inventory.audit(product_id)  -- { ..., balanced = true }
 *
 * Wrong argument types raise; values a client could have sent (a malformed UUID, a zero
 * quantity) return nil, message, "invalid"; a set_stock on a stale version returns
 * nil, message, "conflict", { stock, reserved, version } (the current level). */
#include <lauxlib.h>
#include <math.h>
#include <string.h>

#include "../host/bindings.h"
#include "../core/metrics.h"
#include "../host/worker.h"
#include "inventory.h"

#define UV_WORKER lua_upvalueindex(1)

static const char *const outcomes[] = { "reserved", "replayed", "insufficient", "error" };
static metric_cell_t *g_reservations[4];

/* ---- helpers ------------------------------------------------------------------------------ */

/* The connection of the caller's db.tx when one is open (the reservation joins it as a
 * savepoint), else a free one; NULL with err when none is free. Blocking: this is C's hot path. */
static db_conn_t *conn_of(lua_State *L, const char *fn, db_error_t *err)
{
    worker_t *w = lua_touserdata(L, UV_WORKER);
    if (!w) luaL_error(L, "%s: no database here (scripts are being checked, not served); call from handlers", fn);
    return db_blocking_conn(w, err);
}

static int push_fail(lua_State *L, const char *code, const char *msg)
{
    lua_pushnil(L);
    lua_pushstring(L, msg);
    lua_pushstring(L, code);
    return 3;
}

/* A failure of the C API: misuse (SQL the server refused as a statement error) raises. */
static int push_error(lua_State *L, const char *fn, const db_error_t *err)
{
    if (err->misuse) return luaL_error(L, "%s: %s (SQLSTATE %s)", fn, err->msg, err->sqlstate);
    return push_fail(L, err->code ? err->code : "unavailable", err->msg);
}

/* Argument idx as a canonical UUID in out; raises when it is not a string. 0 when malformed. */
static int uuid_arg(lua_State *L, int idx, const char *fn, const char *what, char out[37])
{
    if (lua_type(L, idx) != LUA_TSTRING)
        return luaL_argerror(L, idx, lua_pushfstring(L, "%s: expecting %s string, got %s", fn, what, luaL_typename(L, idx)));
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    return inventory_uuid(s, len, out);
}

/* A whole number in [min, max] at idx (raises when not a number). */
static int int_arg(lua_State *L, int idx, const char *fn, const char *what, double min, double max, double *out)
{
    if (lua_type(L, idx) != LUA_TNUMBER)
        return luaL_argerror(L, idx, lua_pushfstring(L, "%s: expecting %s number, got %s", fn, what, luaL_typename(L, idx)));
    double d = lua_tonumber(L, idx);
    *out = d;
    return d == floor(d) && d >= min && d <= max;
}

static void push_level(lua_State *L, const inv_level_t *lv)
{
    lua_createtable(L, 0, 3);
    lua_pushnumber(L, (lua_Number)lv->stock);
    lua_setfield(L, -2, "stock");
    lua_pushnumber(L, (lua_Number)lv->reserved);
    lua_setfield(L, -2, "reserved");
    lua_pushnumber(L, (lua_Number)lv->version);
    lua_setfield(L, -2, "version");
}

/* ---- Lua bindings ------------------------------------------------------------------------- */

/* inventory.reserve(reservation_id, items, ttl_seconds) */
static int l_reserve(lua_State *L)
{
    const char *fn = "inventory.reserve";
    db_error_t cerr;
    db_conn_t *c = conn_of(L, fn, &cerr);
    if (!c) return push_error(L, fn, &cerr);
    char rid[37];
    int rid_ok = uuid_arg(L, 1, fn, "a reservation_id", rid);
    luaL_checktype(L, 2, LUA_TTABLE);
    double ttl = 900;
    int ttl_ok = lua_isnoneornil(L, 3) || int_arg(L, 3, fn, "a ttl_seconds", 1, INV_MAX_TTL_S, &ttl);
    int n = (int)lua_objlen(L, 2);
    if (n > INV_MAX_ITEMS) return push_fail(L, "invalid", "too many items in one reservation");
    /* The array lives in a userdata: a raise below frees it with the state. */
    inv_item_t *items = lua_newuserdata(L, (size_t)(n ? n : 1) * sizeof *items);
    const char *bad = !rid_ok ? "reservation_id is not a UUID" : !ttl_ok ? "ttl_seconds must be a whole number of seconds, 1 to 7 days" : NULL;
    if (!bad && n == 0) bad = "a reservation needs at least one item";
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, 2, i + 1);
        if (!lua_istable(L, -1)) return luaL_argerror(L, 2, lua_pushfstring(L, "%s: item %d is not a table", fn, i + 1));
        lua_getfield(L, -1, "product_id");
        lua_getfield(L, -2, "quantity");
        int top = lua_gettop(L);
        memset(&items[i], 0, sizeof items[i]);
        if (!uuid_arg(L, top - 1, fn, "an item's product_id", items[i].product_id) && !bad) bad = "an item's product_id is not a UUID";
        double qn = 0;
        if (!int_arg(L, top, fn, "an item's quantity", 1, INV_MAX_QUANTITY, &qn) && !bad) bad = "an item's quantity must be a whole number from 1 to 1000000";
        items[i].quantity = qn >= 1 && qn <= INV_MAX_QUANTITY ? (long)qn : 0;   /* no cast of NaN or 1e300 */
        lua_pop(L, 3);
    }
    if (bad) return push_fail(L, "invalid", bad);
    n = inventory_sort_items(items, n);
    for (int i = 0; i < n; i++)
        if (items[i].quantity > INV_MAX_QUANTITY) return push_fail(L, "invalid", "an item's quantity must be a whole number from 1 to 1000000");

    char status[16];
    db_error_t err;
    int r = inventory_reserve(c, rid, items, n, (long)ttl, status, &err);
    metrics_cell_add(g_reservations[r == INV_DONE ? 0 : r == INV_REPLAYED ? 1 : r == INV_INSUFFICIENT ? 2 : 3], 1);
    if (r < 0) return push_error(L, fn, &err);
    if (r == INV_INSUFFICIENT) {
        lua_pushnil(L);
        lua_createtable(L, 0, 1);
        lua_newtable(L);
        luaL_getmetatable(L, "mercato.json.array");
        lua_setmetatable(L, -2);
        for (int i = 0, k = 0; i < n; i++) {
            if (!items[i].is_short) continue;
            lua_createtable(L, 0, 3);
            lua_pushstring(L, items[i].product_id);
            lua_setfield(L, -2, "product_id");
            lua_pushnumber(L, (lua_Number)items[i].quantity);
            lua_setfield(L, -2, "requested");
            lua_pushnumber(L, (lua_Number)items[i].available);
            lua_setfield(L, -2, "available");
            lua_rawseti(L, -2, ++k);
        }
        lua_setfield(L, -2, "insufficient");
        lua_pushstring(L, "conflict");
        return 3;
    }
    lua_pushboolean(L, 1);
    lua_createtable(L, 0, 2);
    lua_pushstring(L, status);
    lua_setfield(L, -2, "status");
    lua_pushboolean(L, r == INV_REPLAYED);
    lua_setfield(L, -2, "replayed");
    return 2;
}

/* commit and release: one implementation, `op` picks the C function. */
static int change(lua_State *L, const char *fn, int (*op)(db_conn_t *, const char *, inv_ids_t *, db_error_t *),
                  const char *done)
{
    db_error_t cerr;
    db_conn_t *c = conn_of(L, fn, &cerr);
    if (!c) return push_error(L, fn, &cerr);
    char rid[37];
    if (!uuid_arg(L, 1, fn, "a reservation_id", rid)) {   /* no reservation has that id */
        lua_pushnil(L);
        return 1;
    }
    db_error_t err;
    inv_ids_t *ids = lua_newuserdata(L, sizeof *ids);   /* freed by the GC, whatever happens */
    int r = op(c, rid, ids, &err);
    if (r < 0) return push_error(L, fn, &err);
    if (r == INV_NOT_FOUND) { lua_pushnil(L); return 1; }
    if (r == INV_STATE) return push_fail(L, "conflict", err.msg);
    lua_pushboolean(L, 1);
    lua_pushstring(L, r == INV_DONE ? done : "already");
    lua_createtable(L, ids->n, 0);
    for (int i = 0; i < ids->n; i++) {
        lua_pushstring(L, ids->id[i]);
        lua_rawseti(L, -2, i + 1);
    }
    return 3;
}

static int l_commit(lua_State *L) { return change(L, "inventory.commit", inventory_commit, "committed"); }
static int l_release(lua_State *L) { return change(L, "inventory.release", inventory_release, "released"); }

/* inventory.expire([limit]) → how many reservations were released */
static int l_expire(lua_State *L)
{
    db_error_t cerr;
    db_conn_t *c = conn_of(L, "inventory.expire", &cerr);
    if (!c) return push_error(L, "inventory.expire", &cerr);
    double limit = 100;
    if (!lua_isnoneornil(L, 1) && !int_arg(L, 1, "inventory.expire", "a limit", 1, 100000, &limit))
        return push_fail(L, "invalid", "limit must be a whole number from 1 to 100000");
    db_error_t err;
    int n = inventory_expire(c, (int)limit, &err);
    if (n < 0) return push_error(L, "inventory.expire", &err);
    lua_pushinteger(L, n);
    return 1;
}

/* inventory.set_stock(product_id, stock[, expected_version]) */
static int l_set_stock(lua_State *L)
{
    const char *fn = "inventory.set_stock";
    db_error_t cerr;
    db_conn_t *c = conn_of(L, fn, &cerr);
    if (!c) return push_error(L, fn, &cerr);
    char pid[37];
    int pid_ok = uuid_arg(L, 1, fn, "a product_id", pid);
    double stock = 0, version = -1;
    int stock_ok = int_arg(L, 2, fn, "a stock", 0, 2147483647.0, &stock);
    int version_ok = lua_isnoneornil(L, 3) || int_arg(L, 3, fn, "an expected version", 0, 9007199254740992.0, &version);
    if (!pid_ok) { lua_pushnil(L); return 1; }   /* no product has that id */
    if (!stock_ok) return push_fail(L, "invalid", "stock must be a whole number from 0 to 2147483647");
    if (!version_ok) return push_fail(L, "conflict", "the expected version is not a version of this inventory");
    inv_level_t lv = { 0 };
    db_error_t err;
    int r = inventory_set_stock(c, pid, (long)stock, (long long)version, &lv, &err);
    if (r < 0) return push_error(L, fn, &err);
    if (r == INV_NOT_FOUND) { lua_pushnil(L); return 1; }
    if (r == INV_STALE) {
        push_fail(L, "conflict", err.msg);
        push_level(L, &lv);
        return 4;
    }
    push_level(L, &lv);
    return 1;
}

/* inventory.get(product_id) → { stock, reserved, version } or bare nil */
static int l_get(lua_State *L)
{
    db_error_t cerr;
    db_conn_t *c = conn_of(L, "inventory.get", &cerr);
    if (!c) return push_error(L, "inventory.get", &cerr);
    char pid[37];
    if (!uuid_arg(L, 1, "inventory.get", "a product_id", pid)) { lua_pushnil(L); return 1; }
    inv_level_t lv;
    db_error_t err;
    int r = inventory_get(c, pid, &lv, &err);
    if (r < 0) return push_error(L, "inventory.get", &err);
    if (r == INV_NOT_FOUND) { lua_pushnil(L); return 1; }
    push_level(L, &lv);
    return 1;
}

/* inventory.audit(product_id) → the ledger's account, or bare nil */
static int l_audit(lua_State *L)
{
    db_error_t cerr;
    db_conn_t *c = conn_of(L, "inventory.audit", &cerr);
    if (!c) return push_error(L, "inventory.audit", &cerr);
    char pid[37];
    if (!uuid_arg(L, 1, "inventory.audit", "a product_id", pid)) { lua_pushnil(L); return 1; }
    inv_audit_t a;
    db_error_t err;
    int r = inventory_audit(c, pid, &a, &err);
    if (r < 0) return push_error(L, "inventory.audit", &err);
    if (r == INV_NOT_FOUND) { lua_pushnil(L); return 1; }
    const char *names[] = { "stock", "reserved", "initial", "restocks", "sold", "held", "open_items" };
    const long long vals[] = { a.stock, a.reserved, a.initial, a.restocks, a.sold, a.held, a.open_items };
    lua_createtable(L, 0, 8);
    for (int i = 0; i < 7; i++) {
        lua_pushnumber(L, (lua_Number)vals[i]);
        lua_setfield(L, -2, names[i]);
    }
    lua_pushboolean(L, a.balanced);
    lua_setfield(L, -2, "balanced");
    return 1;
}

/* ---- module ------------------------------------------------------------------------------- */

static int inventory_global_init(void)
{
    char err[128];
    const char *label[] = { "outcome" };
    metric_family_t *f = metrics_family("inventory_reservations_total", "Stock reservation attempts, by outcome.",
                                        METRIC_COUNTER, 1, label, 0, NULL, err, sizeof err);
    for (int i = 0; f && i < 4; i++) g_reservations[i] = metrics_cell(f, &outcomes[i]);
    return 0;
}

int luaopen_inventory(lua_State *L)
{
    static const luaL_Reg fns[] = {
        { "reserve", l_reserve }, { "commit", l_commit }, { "release", l_release }, { "expire", l_expire },
        { "set_stock", l_set_stock }, { "get", l_get }, { "audit", l_audit }, { NULL, NULL },
    };
    lua_newtable(L);
    lua_pushlightuserdata(L, worker_from_lua(L));   /* NULL in the scratch check state: calls raise */
    luaL_setfuncs(L, fns, 1);
    return 1;
}

const binding_t binding_inventory = {
    .name = "inventory",
    .open = luaopen_inventory,
    .global_init = inventory_global_init,
};
