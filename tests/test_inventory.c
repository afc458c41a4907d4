/* test_inventory: the inventory binding without a server — UUIDs, item ordering and merging
 * (the lock order that prevents deadlocks), misuse that raises, values that return "invalid",
 * and an unreachable database through a real lua_State. The database paths are covered by
 * spec/integration/inventory_spec.lua against PostgreSQL. */
#include <lauxlib.h>
#include <lualib.h>
#include <stdlib.h>

#include "../bindings/db.h"
#include "../bindings/inventory.h"
#include "../core/log.h"
#include "../core/metrics.h"
#include "../host/worker.h"
#include "test.h"
#include "test_lua.h"

int luaopen_inventory(lua_State *L);

TEST(uuids_are_checked_and_lowered)
{
    char out[37];
    CHECK(inventory_uuid("0B7E4A1C-1D2E-4F00-8A9B-ABCDEF012345", 36, out));
    CHECK_STR(out, "0b7e4a1c-1d2e-4f00-8a9b-abcdef012345");
    CHECK(!inventory_uuid("0b7e4a1c1d2e-4f00-8a9b-abcdef0123456", 36, out));
    CHECK(!inventory_uuid("0b7e4a1c-1d2e-4f00-8a9b-abcdef01234", 35, out));
    CHECK(!inventory_uuid("0b7e4a1c-1d2e-4f00-8a9b-abcdef01234g", 36, out));
    CHECK(!inventory_uuid("'; DROP TABLE inventory; --xxxxxxxxx", 36, out));
    CHECK(!inventory_uuid(NULL, 0, out));
}

TEST(items_are_sorted_by_product_and_duplicates_merged)
{
    inv_item_t it[4] = {
        { .product_id = "cccccccc-0000-0000-0000-000000000000", .quantity = 1 },
        { .product_id = "aaaaaaaa-0000-0000-0000-000000000000", .quantity = 2 },
        { .product_id = "cccccccc-0000-0000-0000-000000000000", .quantity = 3 },
        { .product_id = "bbbbbbbb-0000-0000-0000-000000000000", .quantity = 4 },
    };
    int n = inventory_sort_items(it, 4);
    CHECK_INT(n, 3);
    CHECK_STR(it[0].product_id, "aaaaaaaa-0000-0000-0000-000000000000");
    CHECK_STR(it[1].product_id, "bbbbbbbb-0000-0000-0000-000000000000");
    CHECK_STR(it[2].product_id, "cccccccc-0000-0000-0000-000000000000");
    CHECK_INT(it[2].quantity, 4);
    CHECK_INT(inventory_sort_items(it, 1), 1);
}

/* ---- through a lua_State ------------------------------------------------------------------ */

static config_t g_cfg;


#define RID "'0b7e4a1c-1d2e-4f00-8a9b-abcdef012345'"
#define PID "'1b7e4a1c-1d2e-4f00-8a9b-abcdef012345'"

TEST(calls_raise_where_there_is_no_worker)
{
    lua_State *L = test_state(NULL, "inventory");
    CHECK(strstr(test_eval(L, "return inventory.get(" PID ")"), "inventory.get: no database here") != NULL);
    CHECK(strstr(test_eval(L, "return inventory.reserve(" RID ", {})"), "inventory.reserve: no database here") != NULL);
    lua_close(L);
}

TEST(misuse_raises_and_bad_values_return_invalid_before_anything_is_sent)
{
    worker_t w = { .cfg = &g_cfg, .kind = "cli" };
    g_cfg.database_url = "postgresql://postgres@127.0.0.1:1/none";
    lua_State *L = test_state(&w, "inventory");
    CHECK(strstr(test_eval(L, "return inventory.reserve(nil, {})"), "expecting a reservation_id string, got nil") != NULL);
    CHECK(strstr(test_eval(L, "return inventory.reserve(" RID ", 'x')"), "expecting an items table, got string") != NULL);
    CHECK(strstr(test_eval(L, "return inventory.reserve(" RID ", { 'x' })"), "item 1 is not a table") != NULL);
    CHECK(strstr(test_eval(L, "return inventory.reserve(" RID ", { { product_id = 1, quantity = 1 } })"),
                 "expecting an item's product_id string, got number") != NULL);
    CHECK(strstr(test_eval(L, "return inventory.reserve(" RID ", { { product_id = " PID ", quantity = '1' } })"),
                 "expecting an item's quantity number, got string") != NULL);
    CHECK(strstr(test_eval(L, "return inventory.reserve(" RID ", { { product_id = " PID ", quantity = 1 } }, 'x')"),
                 "expecting a ttl_seconds number") != NULL);
    CHECK(strstr(test_eval(L, "return inventory.set_stock(" PID ", nil)"), "expecting a stock number, got nil") != NULL);
    CHECK(strstr(test_eval(L, "return inventory.commit({})"), "expecting a reservation_id string, got table") != NULL);

    CHECK_STR(test_eval(L, "local ok, err, code = inventory.reserve('nope', { { product_id = " PID ", quantity = 1 } });"
                     "return code .. ': ' .. err"), "invalid: reservation_id is not a UUID");
    CHECK_STR(test_eval(L, "local ok, err, code = inventory.reserve(" RID ", {}); return code .. ': ' .. err"),
              "invalid: a reservation needs at least one item");
    CHECK_STR(test_eval(L, "local ok, err, code = inventory.reserve(" RID ", { { product_id = " PID ", quantity = 0 } });"
                     "return code"), "invalid");
    CHECK_STR(test_eval(L, "local ok, err, code = inventory.reserve(" RID ", { { product_id = " PID ", quantity = 1.5 } });"
                     "return code"), "invalid");
    CHECK_STR(test_eval(L, "local ok, err, code = inventory.reserve(" RID ", { { product_id = " PID ", quantity = 600000 },"
                     "{ product_id = " PID ", quantity = 600000 } }); return code .. ': ' .. err"),
              "invalid: an item's quantity must be a whole number from 1 to 1000000");
    CHECK_STR(test_eval(L, "local ok, err, code = inventory.reserve(" RID ", { { product_id = " PID ", quantity = 1 } }, 0);"
                     "return code"), "invalid");
    CHECK_STR(test_eval(L, "local ok, err, code = inventory.set_stock(" PID ", -1); return code"), "invalid");
    CHECK_STR(test_eval(L, "return select('#', inventory.get('not-a-uuid')) .. tostring(inventory.get('not-a-uuid'))"), "1nil");
    CHECK_STR(test_eval(L, "return tostring(inventory.release('x'))"), "nil");
    CHECK(w.binding[BIND_DB] == NULL || ((db_conn_t *)w.binding[BIND_DB])->pg == NULL);
    lua_close(L);
    db_worker_free(&w);
}

TEST(an_unreachable_database_returns_unavailable)
{
    worker_t w = { .cfg = &g_cfg, .kind = "cli" };
    g_cfg.database_url = "postgresql://postgres@127.0.0.1:1/none";
    lua_State *L = test_state(&w, "inventory");
    CHECK_STR(test_eval(L, "local ok, err, code = inventory.reserve(" RID ", { { product_id = " PID ", quantity = 1 } });"
                     "return tostring(ok) .. ' ' .. code"), "nil unavailable");
    CHECK_STR(test_eval(L, "local ok, err, code = inventory.get(" PID "); return code"), "unavailable");
    CHECK_STR(test_eval(L, "local n, err, code = inventory.expire(10); return code"), "unavailable");
    db_conn_t *c = w.binding[BIND_DB];
    CHECK(c && c->tx_depth == 0);
    lua_close(L);
    db_worker_free(&w);
}

int main(void)
{
    log_init(LOG_ERROR, "test_inventory");
    db_settings_load();
    RUN(uuids_are_checked_and_lowered);
    RUN(items_are_sorted_by_product_and_duplicates_merged);
    RUN(calls_raise_where_there_is_no_worker);
    RUN(misuse_raises_and_bad_values_return_invalid_before_anything_is_sent);
    RUN(an_unreachable_database_returns_unavailable);
    int rc = test_done();
    metrics_shutdown();
    return rc;
}
