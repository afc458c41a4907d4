/* inventory: the C half of the `inventory` Lua module (bindings/inventory.c) — argument checks,
 * UUIDs and the item order — shared with tests/test_inventory.c. The reservations themselves
 * are Lua over the db module (bindings/lua/inventory.lua), so that a handler parks on every
 * statement and a reservation joins the caller's db.tx. */
#ifndef MERCATO_INVENTORY_H
#define MERCATO_INVENTORY_H

#include <stddef.h>

#define INV_MAX_ITEMS 256            /* items per reservation */
#define INV_MAX_QUANTITY 1000000     /* per item */
#define INV_MAX_TTL_S (7 * 86400)

typedef struct inv_item {
    char product_id[37];             /* canonical lower-case UUID text */
    long quantity;                   /* requested (duplicates of one product merged) */
} inv_item_t;

/* A canonical UUID (8-4-4-4-12 hex digits, either case): 1 with the lower-case form in out[37]. */
int inventory_uuid(const char *s, size_t len, char out[37]);

/* Sort items by product_id and merge duplicates (quantities added): the order every
 * transaction locks rows in, so overlapping reservations cannot deadlock. The new count. */
int inventory_sort_items(inv_item_t *items, int n);

#endif
