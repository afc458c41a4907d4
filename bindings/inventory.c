/* inventory: stock reservations in C on the worker's PostgreSQL connection (the hot path of
 * checkout). The C API (bindings/inventory.h) is here; the Lua module is inventory_lua.c. */
#include "inventory.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../core/log.h"

/* ---- helpers ----------------------------------------------------------------------------- */

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

static void fail(db_error_t *err, const char *code, const char *msg)
{
    memset(err, 0, sizeof *err);
    snprintf(err->msg, sizeof err->msg, "%s", msg);
    err->code = code;
}

static int retryable(const db_error_t *err)
{
    return !strcmp(err->sqlstate, "40001") || !strcmp(err->sqlstate, "40P01");
}

/* One statement through the connection's prepared statement cache. */
static PGresult *q(db_conn_t *c, const char *sql, int n, const char *const *v, db_error_t *err)
{
    return db_conn_query(c, sql, strlen(sql), n, v, err);
}

static long long col_ll(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? 0 : strtoll(PQgetvalue(r, row, col), NULL, 10);
}

/* ---- transactions -------------------------------------------------------------------------- */

/* BEGIN at the top level, a savepoint inside the caller's db.tx; tx_depth is raised so that
 * the connection is never silently replaced in the middle (db_conn_query's rule). */
static int tx_begin(db_conn_t *c, int depth, db_error_t *err)
{
    const char *sql = depth == 0 ? "BEGIN ISOLATION LEVEL READ COMMITTED" : "SAVEPOINT mercato_inventory";
    if (db_conn_command(c, sql, err) < 0) return -1;
    c->tx_depth = depth + 1;
    return 0;
}

/* COMMIT / RELEASE, or ROLLBACK / ROLLBACK TO; whatever fails, no transaction of ours is left
 * open at the top level, and a savepoint that cannot be rolled back loses the outer db.tx
 * (marked lost, as db.tx itself does). 0 or -1 with err. */
static int tx_finish(db_conn_t *c, int depth, int commit, db_error_t *err)
{
    int rc = 0;
    if (c->tx_lost || !c->pg) {
        fail(err, "unavailable", "database unavailable: the connection was lost inside the transaction");
        rc = -1;
    } else {
        const char *sql = depth == 0 ? (commit ? "COMMIT" : "ROLLBACK")
                          : commit ? "RELEASE SAVEPOINT mercato_inventory"
                                   : "ROLLBACK TO SAVEPOINT mercato_inventory; RELEASE SAVEPOINT mercato_inventory";
        if (db_conn_command(c, sql, err) < 0) {
            rc = -1;
            if (depth > 0) db_conn_close(c);   /* tx_depth > 0 here: the outer db.tx is marked lost */
        } else if (commit && depth == 0 && PQtransactionStatus(c->pg) != PQTRANS_IDLE) {
            rc = -1;
            fail(err, "unavailable", "database unavailable: COMMIT left the transaction open");
        }
    }
    c->tx_depth = depth;
    if (depth == 0) {
        if (c->pg && PQtransactionStatus(c->pg) != PQTRANS_IDLE) db_conn_close(c);
        c->tx_lost = 0;
    }
    return rc;
}

/* The body of one transaction: its outcome (>= 0) with *commit set, or -1 with err. */
typedef int (*tx_body_fn)(db_conn_t *c, void *arg, int *commit, db_error_t *err);

/* Run body in a transaction, again (up to INV_RETRIES times, top level only) after a deadlock
 * or serialization failure: the rolled-back attempt changed nothing. */
static int with_tx(db_conn_t *c, tx_body_fn body, void *arg, db_error_t *err)
{
    int depth = c->tx_depth;
    for (int attempt = 0;; attempt++) {
        if (tx_begin(c, depth, err) < 0) return -1;
        int commit = 0;
        int r = body(c, arg, &commit, err);
        db_error_t end;
        if (tx_finish(c, depth, r >= 0 && commit, &end) < 0 && r >= 0 && commit) {
            *err = end;
            r = -1;
        }
        if (r >= 0) return r;
        if (depth > 0 || attempt >= INV_RETRIES || !retryable(err)) return -1;
        log_info("inventory: %s (SQLSTATE %s); retrying", err->msg, err->sqlstate);
        struct timespec ts = { 0, (long)(1 + attempt * 4 + rand() % 5) * 1000000L };
        nanosleep(&ts, NULL);
    }
}

/* ---- reserve ------------------------------------------------------------------------------ */

/* Claim the reservation id; a row already there means a replay (or a concurrent duplicate,
 * which waits here for the first to finish). */
#define SQL_CLAIM \
    "INSERT INTO reservations (id, status, expires_at) VALUES ($1::uuid, 'reserved', now() + make_interval(secs => $2::float8)) " \
    "ON CONFLICT (id) DO NOTHING RETURNING status"

/* Take one item: the conditional update, its ledger row and the reservation item together. */
#define SQL_TAKE \
    "WITH u AS (UPDATE inventory SET stock = stock - $2::int, reserved = reserved + $2::int, version = version + 1 " \
    "WHERE product_id = $1::uuid AND stock >= $2::int RETURNING product_id, stock, reserved), " \
    "l AS (INSERT INTO inventory_ledger (product_id, kind, quantity, reservation_id, stock_after, reserved_after) " \
    "SELECT product_id, 'reserve', $2::int, $3::uuid, stock, reserved FROM u), " \
    "i AS (INSERT INTO reservation_items (reservation_id, product_id, quantity) SELECT $3::uuid, product_id, $2::int FROM u) " \
    "SELECT stock FROM u"

#define SQL_AVAILABLE "SELECT stock FROM inventory WHERE product_id = $1::uuid"

typedef struct reserve_arg {
    const char *rid;
    inv_item_t *items;
    int n;
    long ttl_s;
    char *status;
} reserve_arg_t;

/* The id exists: the same items → a replay reporting its current status; others → invalid. */
static int reserve_replay(db_conn_t *c, reserve_arg_t *a, db_error_t *err)
{
    const char *v[] = { a->rid };
    PGresult *r = q(c, "SELECT status FROM reservations WHERE id = $1::uuid", 1, v, err);
    if (!r) return -1;
    snprintf(a->status, 16, "%s", PQntuples(r) ? PQgetvalue(r, 0, 0) : "released");
    PQclear(r);
    r = q(c, "SELECT product_id, quantity FROM reservation_items WHERE reservation_id = $1::uuid ORDER BY product_id", 1, v, err);
    if (!r) return -1;
    int same = PQntuples(r) == a->n;
    for (int i = 0; same && i < a->n; i++)
        same = !strcmp(PQgetvalue(r, i, 0), a->items[i].product_id) && col_ll(r, i, 1) == a->items[i].quantity;
    PQclear(r);
    if (!same) {
        fail(err, "invalid", "this reservation_id was already used with other items");
        return -1;
    }
    return INV_REPLAYED;
}

/* How much of item i is available now; NULL result → -1. */
static long available_now(db_conn_t *c, const inv_item_t *it, db_error_t *err)
{
    const char *v[] = { it->product_id };
    PGresult *r = q(c, SQL_AVAILABLE, 1, v, err);
    if (!r) return -1;
    long have = PQntuples(r) ? (long)col_ll(r, 0, 0) : 0;
    PQclear(r);
    return have;
}

static int reserve_body(db_conn_t *c, void *arg, int *commit, db_error_t *err)
{
    reserve_arg_t *a = arg;
    char ttl[24];
    snprintf(ttl, sizeof ttl, "%ld", a->ttl_s);
    const char *cv[] = { a->rid, ttl };
    PGresult *r = q(c, SQL_CLAIM, 2, cv, err);
    if (!r) return -1;
    int claimed = PQntuples(r) == 1;
    PQclear(r);
    if (!claimed) return reserve_replay(c, a, err);

    int nshort = 0;
    for (int i = 0; i < a->n; i++) {
        inv_item_t *it = &a->items[i];
        it->is_short = 0;
        long have = 0;
        if (nshort == 0) {
            char qty[24];
            snprintf(qty, sizeof qty, "%ld", it->quantity);
            const char *v[] = { it->product_id, qty, a->rid };
            /* A shortfall seen by the UPDATE may be gone by the SELECT (a release committed in
             * between): take again rather than report "requested 3, available 5". */
            int taken = 0;
            for (int tries = 0; tries < 3 && !taken; tries++) {
                r = q(c, SQL_TAKE, 3, v, err);
                if (!r) return -1;
                taken = PQntuples(r) == 1;
                PQclear(r);
                if (taken) break;
                if ((have = available_now(c, it, err)) < 0) return -1;
                if (have < it->quantity) break;
            }
            if (taken) continue;
        } else if ((have = available_now(c, it, err)) < 0) {
            return -1;
        }
        if (nshort == 0 || have < it->quantity) {
            it->is_short = 1;
            it->available = have < it->quantity ? have : it->quantity - 1;
            nshort++;
        }
    }
    if (nshort) return INV_INSUFFICIENT;   /* rolled back: nothing was reserved, not even the id */
    snprintf(a->status, 16, "reserved");
    *commit = 1;
    return INV_DONE;
}

int inventory_reserve(db_conn_t *c, const char *rid, inv_item_t *items, int n, long ttl_s, char status[16],
                      db_error_t *err)
{
    reserve_arg_t a = { rid, items, n, ttl_s, status };
    status[0] = 0;
    return with_tx(c, reserve_body, &a, err);
}

/* ---- commit, release, expire ----------------------------------------------------------------- */

#define SQL_LOCK_RESERVATION "SELECT status FROM reservations WHERE id = $1::uuid FOR UPDATE"

/* The reservation's inventory rows, locked in product_id order (the ORDER BY is applied
 * before the row locks, so every transaction takes them in the same order). */
#define SQL_LOCK_ROWS \
    "SELECT product_id FROM inventory WHERE product_id IN " \
    "(SELECT product_id FROM reservation_items WHERE reservation_id = $1::uuid) ORDER BY product_id FOR UPDATE"

#define SQL_APPLY_COMMIT \
    "WITH u AS (UPDATE inventory i SET reserved = i.reserved - ri.quantity, version = i.version + 1 " \
    "FROM reservation_items ri WHERE ri.reservation_id = $1::uuid AND i.product_id = ri.product_id " \
    "RETURNING i.product_id, ri.quantity, i.stock, i.reserved) " \
    "INSERT INTO inventory_ledger (product_id, kind, quantity, reservation_id, stock_after, reserved_after) " \
    "SELECT product_id, 'commit', quantity, $1::uuid, stock, reserved FROM u"

/* $2: 1 when the reservation still holds its stock (release, expire), 0 for a return of sold
 * goods (stock back, nothing held). */
#define SQL_APPLY_RELEASE \
    "WITH u AS (UPDATE inventory i SET stock = i.stock + ri.quantity, " \
    "reserved = i.reserved - CASE WHEN $2::int = 1 THEN ri.quantity ELSE 0 END, version = i.version + 1 " \
    "FROM reservation_items ri WHERE ri.reservation_id = $1::uuid AND i.product_id = ri.product_id " \
    "RETURNING i.product_id, ri.quantity, i.stock, i.reserved) " \
    "INSERT INTO inventory_ledger (product_id, kind, quantity, reservation_id, stock_after, reserved_after) " \
    "SELECT product_id, $3::text, quantity, $1::uuid, stock, reserved FROM u"

#define SQL_SET_STATUS "UPDATE reservations SET status = $2::text, updated_at = now() WHERE id = $1::uuid"

typedef struct change_arg {
    const char *rid;
    int op;              /* 'c' commit, 'r' release, 'e' expire (rid filled by the body) */
    char id[37];
    inv_ids_t *ids;      /* may be NULL */
} change_arg_t;

/* Run the statements in order; the first one's product_id column goes into ids. */
static int run_all(db_conn_t *c, const char *const *sql, const char *const *const *vals, const int *n, int count,
                   inv_ids_t *ids, db_error_t *err)
{
    for (int i = 0; i < count; i++) {
        PGresult *r = q(c, sql[i], n[i], vals[i], err);
        if (!r) return -1;
        for (int k = 0; i == 0 && ids && k < PQntuples(r) && ids->n < INV_MAX_ITEMS; k++)
            snprintf(ids->id[ids->n++], 37, "%s", PQgetvalue(r, k, 0));
        PQclear(r);
    }
    return 0;
}

/* Apply a state change to a reservation locked by this transaction whose status is st. */
static int apply_change(db_conn_t *c, const char *rid, int op, const char *st, inv_ids_t *ids, int *commit,
                        db_error_t *err)
{
    int held = !strcmp(st, "reserved"), sold = !strcmp(st, "committed");
    if (op == 'c') {
        if (sold) return INV_ALREADY;
        if (!held) {
            fail(err, "conflict", "the reservation was released or expired; it cannot be committed");
            return INV_STATE;
        }
    } else if (!held && !sold) {
        return INV_ALREADY;   /* released or expired before: the stock is back already */
    }
    const char *id1[] = { rid };
    const char *rel[] = { rid, held ? "1" : "0", op == 'e' ? "expire" : held ? "release" : "return" };
    const char *setv[] = { rid, op == 'c' ? "committed" : op == 'e' ? "expired" : "released" };
    const char *sql[] = { SQL_LOCK_ROWS, op == 'c' ? SQL_APPLY_COMMIT : SQL_APPLY_RELEASE, SQL_SET_STATUS };
    const char *const *vals[] = { id1, op == 'c' ? id1 : rel, setv };
    const int n[] = { 1, op == 'c' ? 1 : 3, 2 };
    if (ids) ids->n = 0;   /* a retried attempt starts over */
    if (run_all(c, sql, vals, n, 3, ids, err) < 0) return -1;
    *commit = 1;
    return INV_DONE;
}

static int change_body(db_conn_t *c, void *arg, int *commit, db_error_t *err)
{
    change_arg_t *a = arg;
    PGresult *r;
    if (a->op == 'e') {
        r = q(c, "SELECT id, status FROM reservations WHERE status = 'reserved' AND expires_at < now() "
                 "ORDER BY expires_at LIMIT 1 FOR UPDATE SKIP LOCKED", 0, NULL, err);
    } else {
        const char *v[] = { a->rid };
        r = q(c, "SELECT id, status FROM reservations WHERE id = $1::uuid FOR UPDATE", 1, v, err);
    }
    if (!r) return -1;
    if (PQntuples(r) == 0) { PQclear(r); return INV_NOT_FOUND; }
    char st[16];
    snprintf(a->id, sizeof a->id, "%s", PQgetvalue(r, 0, 0));
    snprintf(st, sizeof st, "%s", PQgetvalue(r, 0, 1));
    PQclear(r);
    return apply_change(c, a->id, a->op, st, a->ids, commit, err);
}

int inventory_commit(db_conn_t *c, const char *rid, inv_ids_t *ids, db_error_t *err)
{
    if (ids) ids->n = 0;
    change_arg_t a = { .rid = rid, .op = 'c', .ids = ids };
    return with_tx(c, change_body, &a, err);
}

int inventory_release(db_conn_t *c, const char *rid, inv_ids_t *ids, db_error_t *err)
{
    if (ids) ids->n = 0;
    change_arg_t a = { .rid = rid, .op = 'r', .ids = ids };
    return with_tx(c, change_body, &a, err);
}

int inventory_expire(db_conn_t *c, int limit, db_error_t *err)
{
    int done = 0;
    while (done < limit) {
        change_arg_t a = { .op = 'e' };
        int r = with_tx(c, change_body, &a, err);
        if (r < 0) return done > 0 ? done : -1;
        if (r == INV_NOT_FOUND) break;
        if (r == INV_DONE) {
            log_info("inventory: reservation %s expired; its stock is released", a.id);
            done++;
        }
    }
    return done;
}

/* ---- stock levels ---------------------------------------------------------------------------- */

typedef struct stock_arg {
    const char *pid;
    long stock;
    long long expected;
    inv_level_t *out;
} stock_arg_t;

#define SQL_SET_STOCK \
    "WITH u AS (UPDATE inventory SET stock = $2::int, version = version + 1 WHERE product_id = $1::uuid " \
    "RETURNING product_id, stock, reserved, version), " \
    "l AS (INSERT INTO inventory_ledger (product_id, kind, quantity, stock_after, reserved_after) " \
    "SELECT product_id, 'restock', $2::int - $3::int, stock, reserved FROM u WHERE $2::int <> $3::int) " \
    "SELECT stock, reserved, version FROM u"

static void level_from(const PGresult *r, inv_level_t *out)
{
    out->stock = col_ll(r, 0, 0);
    out->reserved = col_ll(r, 0, 1);
    out->version = col_ll(r, 0, 2);
}

static int stock_body(db_conn_t *c, void *arg, int *commit, db_error_t *err)
{
    stock_arg_t *a = arg;
    const char *v[] = { a->pid };
    PGresult *r = q(c, "SELECT stock, reserved, version FROM inventory WHERE product_id = $1::uuid FOR UPDATE", 1, v, err);
    if (!r) return -1;
    if (PQntuples(r) == 0) { PQclear(r); return INV_NOT_FOUND; }
    level_from(r, a->out);
    PQclear(r);
    if (a->expected >= 0 && a->expected != a->out->version) {
        fail(err, "conflict", "the inventory changed since that version was read");
        return INV_STALE;
    }
    char stock[24], old[24];
    snprintf(stock, sizeof stock, "%ld", a->stock);
    snprintf(old, sizeof old, "%lld", a->out->stock);
    const char *sv[] = { a->pid, stock, old };
    if (!(r = q(c, SQL_SET_STOCK, 3, sv, err))) return -1;
    level_from(r, a->out);
    PQclear(r);
    *commit = 1;
    return INV_DONE;
}

int inventory_set_stock(db_conn_t *c, const char *pid, long stock, long long expected_version, inv_level_t *out,
                        db_error_t *err)
{
    stock_arg_t a = { pid, stock, expected_version, out };
    return with_tx(c, stock_body, &a, err);
}

int inventory_get(db_conn_t *c, const char *pid, inv_level_t *out, db_error_t *err)
{
    const char *v[] = { pid };
    PGresult *r = q(c, "SELECT stock, reserved, version FROM inventory WHERE product_id = $1::uuid", 1, v, err);
    if (!r) return -1;
    int found = PQntuples(r) == 1;
    if (found) level_from(r, out);
    PQclear(r);
    return found ? INV_DONE : INV_NOT_FOUND;
}

#define SQL_AUDIT \
    "SELECT i.stock, i.reserved, " \
    "COALESCE(SUM(l.quantity) FILTER (WHERE l.kind = 'initial'), 0), " \
    "COALESCE(SUM(l.quantity) FILTER (WHERE l.kind = 'restock'), 0), " \
    "COALESCE(SUM(l.quantity) FILTER (WHERE l.kind = 'commit'), 0) - COALESCE(SUM(l.quantity) FILTER (WHERE l.kind = 'return'), 0), " \
    "COALESCE(SUM(l.quantity) FILTER (WHERE l.kind = 'reserve'), 0) - " \
    "COALESCE(SUM(l.quantity) FILTER (WHERE l.kind IN ('commit', 'release', 'expire')), 0), " \
    "(SELECT COALESCE(SUM(ri.quantity), 0) FROM reservation_items ri JOIN reservations r ON r.id = ri.reservation_id " \
    "WHERE ri.product_id = i.product_id AND r.status = 'reserved') " \
    "FROM inventory i LEFT JOIN inventory_ledger l ON l.product_id = i.product_id " \
    "WHERE i.product_id = $1::uuid GROUP BY i.product_id, i.stock, i.reserved"

int inventory_audit(db_conn_t *c, const char *pid, inv_audit_t *out, db_error_t *err)
{
    const char *v[] = { pid };
    PGresult *r = q(c, SQL_AUDIT, 1, v, err);
    if (!r) return -1;
    if (PQntuples(r) == 0) { PQclear(r); return INV_NOT_FOUND; }
    long long *f[] = { &out->stock, &out->reserved, &out->initial, &out->restocks, &out->sold, &out->held, &out->open_items };
    for (int i = 0; i < 7; i++) *f[i] = col_ll(r, 0, i);
    PQclear(r);
    out->balanced = out->initial + out->restocks - out->sold - out->held == out->stock && out->held == out->reserved &&
                    out->open_items == out->reserved;
    return INV_DONE;
}
