/* inventory: the C API behind the `inventory` Lua module (bindings/inventory.c), shared with
 * tests/test_inventory.c.
 *
 * Every operation runs on the worker's own PostgreSQL connection (bindings/db.h): at the top
 * level in a READ COMMITTED transaction of its own, inside a db.tx under a savepoint, so a
 * reservation made in a handler's transaction commits or rolls back with it. Rows are locked
 * in product_id order everywhere (items sorted; commit and release lock with ORDER BY ... FOR
 * UPDATE), so overlapping multi-item reservations cannot deadlock. Stock is taken with one
 * conditional UPDATE per item (`WHERE stock >= n`), which PostgreSQL re-checks against the
 * newly committed row when a concurrent update blocked it; `CHECK (stock >= 0)` on the table
 * is the last line of defence. Every change writes an inventory_ledger row, so
 * initial + restocks - sold - reserved = stock can be audited. */
#ifndef MERCATO_INVENTORY_H
#define MERCATO_INVENTORY_H

#include "db.h"

#define INV_MAX_ITEMS 256            /* items per reservation */
#define INV_MAX_QUANTITY 1000000     /* per item */
#define INV_MAX_TTL_S (7 * 86400)
#define INV_RETRIES 3                /* extra attempts after a deadlock / serialization failure */

typedef struct inv_item {
    char product_id[37];             /* canonical lower-case UUID text */
    long quantity;                   /* requested (duplicates of one product merged) */
    long available;                  /* filled when the item is short */
    int is_short;
} inv_item_t;

/* Outcomes (>= 0) of the operations; -1 is a failure described by a db_error_t. */
enum {
    INV_NOT_FOUND = 0,               /* no such reservation / product */
    INV_DONE,                        /* the change was made */
    INV_REPLAYED,                    /* reserve: the id exists with the same items; nothing done */
    INV_ALREADY,                     /* commit/release: already in the wanted state (idempotent) */
    INV_INSUFFICIENT,                /* reserve: some items are short; nothing was reserved */
    INV_STATE,                       /* commit of a released reservation: a conflict */
    INV_STALE,                       /* set_stock: the expected version is not the current one */
};

typedef struct inv_level {
    long long stock, reserved, version;
} inv_level_t;

typedef struct inv_audit {
    long long stock, reserved;       /* the inventory row */
    long long initial, restocks, sold, held;   /* from the ledger */
    long long open_items;            /* quantities of reservations still 'reserved' */
    int balanced;                    /* initial + restocks - sold - held == stock, held == reserved == open_items */
} inv_audit_t;

/* A canonical UUID (8-4-4-4-12 hex digits, either case): 1 with the lower-case form in out[37]. */
int inventory_uuid(const char *s, size_t len, char out[37]);

/* Sort items by product_id and merge duplicates (quantities added). Returns the new count. */
int inventory_sort_items(inv_item_t *items, int n);

/* Reserve every item or none, under reservation id rid (a UUID) for ttl_s seconds.
 * INV_DONE / INV_REPLAYED with status[16] ("reserved", "committed", ...), INV_INSUFFICIENT
 * with items[].is_short/available filled, or -1 (err; code "invalid" when rid was used with
 * other items). items must be sorted (inventory_sort_items). */
int inventory_reserve(db_conn_t *c, const char *rid, inv_item_t *items, int n, long ttl_s,
                      char status[16], db_error_t *err);

/* The products a commit or release touched (for cache invalidation). */
typedef struct inv_ids {
    char id[INV_MAX_ITEMS][37];
    int n;
} inv_ids_t;

/* reserved → committed (sold). INV_DONE, INV_ALREADY, INV_NOT_FOUND, INV_STATE (released or
 * expired: err filled, code "conflict"), or -1. */
int inventory_commit(db_conn_t *c, const char *rid, inv_ids_t *ids, db_error_t *err);

/* Give the stock back: reserved → released (stock up, reserved down), committed → released
 * (a return: stock up, sold down). INV_DONE, INV_ALREADY (released or expired before),
 * INV_NOT_FOUND, or -1. ids (may be NULL) receives the products whose rows changed. */
int inventory_release(db_conn_t *c, const char *rid, inv_ids_t *ids, db_error_t *err);

/* Release up to limit reservations whose TTL has passed (status 'expired'), each in its own
 * transaction, skipping rows another worker holds. The count, or -1. */
int inventory_expire(db_conn_t *c, int limit, db_error_t *err);

/* Set the available stock; expected_version < 0 means unconditional. INV_DONE (out = the new
 * level), INV_STALE (out = the current level), INV_NOT_FOUND, or -1. */
int inventory_set_stock(db_conn_t *c, const char *pid, long stock, long long expected_version,
                        inv_level_t *out, db_error_t *err);

/* The product's level: INV_DONE, INV_NOT_FOUND, or -1. */
int inventory_get(db_conn_t *c, const char *pid, inv_level_t *out, db_error_t *err);

/* The ledger's account of one product: INV_DONE, INV_NOT_FOUND, or -1. */
int inventory_audit(db_conn_t *c, const char *pid, inv_audit_t *out, db_error_t *err);

#endif
