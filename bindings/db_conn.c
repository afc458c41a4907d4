/* db_conn: a worker's PostgreSQL connection — connect with deadlines, the prepared statement
 * cache, reconnect and retry, and the SQLSTATE → error code vocabulary. No Lua here. */
#include "db.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../core/log.h"
#include "../core/loop.h"
#include "../core/metrics.h"
#include "../host/worker.h"

db_settings_t db_settings = { .statement_timeout_ms = 5000, .connect_timeout_s = 3, .stmt_cache_max = DB_STMT_CACHE_MAX,
                               .pool_wait_ms = 1000 };

static metric_cell_t *g_connections, *g_reconnects, *g_connect_failures;

/* The client waits this much longer than statement_timeout before it gives up on the server. */
#define DB_CLIENT_GRACE_MS 2000

static long env_long(const char *name, long def, long min, long max)
{
    const char *v = getenv(name);
    if (!v || !*v) return def;
    char *end;
    long n = strtol(v, &end, 10);
    if (*end || n < min || n > max) {
        log_warn("%s=%s is not a whole number in %ld..%ld: using %ld", name, v, min, max, def);
        return def;
    }
    return n;
}

void db_settings_load(void)
{
    db_settings.statement_timeout_ms = (int)env_long("DB_STATEMENT_TIMEOUT_MS", 5000, 0, 3600000L);
    db_settings.connect_timeout_s = (int)env_long("DB_CONNECT_TIMEOUT_S", 3, 2, 60);
    db_settings.stmt_cache_max = (int)env_long("DB_STMT_CACHE", DB_STMT_CACHE_MAX, 0, DB_STMT_CACHE_MAX);
    db_settings.pool_size = (int)env_long("DB_POOL_SIZE", 0, 0, 10000);   /* 0: 4 per HTTP thread */
    db_settings.pool_wait_ms = (int)env_long("DB_POOL_WAIT_MS", 1000, 0, 600000L);
    g_connections = metrics_gauge0("db_connections", "Open PostgreSQL connections (pooled and per worker).");
    g_reconnects = metrics_counter0("db_reconnects_total", "PostgreSQL connections found dead and replaced.");
    g_connect_failures = metrics_counter0("db_connect_failures_total", "Failed attempts to connect to PostgreSQL.");
}

void db_count_reconnect(void)
{
    metrics_cell_add(g_reconnects, 1);
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- errors ---------------------------------------------------------------------------- */

const char *db_code_for_sqlstate(const char *s, int *misuse)
{
    *misuse = 0;
    if (!s || strlen(s) != 5) return "unavailable";
    if (!strcmp(s, "23505") || !strcmp(s, "40001") || !strcmp(s, "40P01")) return "conflict";
    if (!strcmp(s, "57014") || !strcmp(s, "55P03")) return "timeout";   /* statement / lock timeout */
    if (!strcmp(s, "08P01")) { *misuse = 1; return "invalid"; }     /* e.g. wrong parameter count */
    char cls[3] = { s[0], s[1], 0 };
    /* The statement is wrong, whatever the data: a bug in the caller, raised. */
    static const char *const bug[] = { "42", "0A", "26", "34", "25", "2F", "3F", "0L", "0P", NULL };
    for (int i = 0; bug[i]; i++)
        if (!strcmp(cls, bug[i])) { *misuse = 1; return "invalid"; }
    static const char *const down[] = { "08", "28", "3D", "53", "57", "58", "XX", "F0", NULL };
    for (int i = 0; down[i]; i++)
        if (!strcmp(cls, down[i])) return "unavailable";
    if (!strcmp(s, "40003")) return "unavailable";                   /* completion unknown */
    return "invalid";   /* 22 data, 23 constraints, P0 raised by PL/pgSQL, 21, 44, ... */
}

/* Copy the first line of src (trailing spaces dropped). */
static void one_line(char *dst, size_t cap, const char *src)
{
    size_t n = 0;
    while (src && src[n] && src[n] != '\n' && n + 1 < cap) n++;
    while (n && (src[n - 1] == ' ' || src[n - 1] == '\r')) n--;
    memcpy(dst, src ? src : "", n);
    dst[n] = 0;
}

void db_set_error(db_error_t *err, const char *code, const char *fmt, const char *detail)
{
    char line[200];
    one_line(line, sizeof line, detail);
    /* The plain fields first: cppcheck's ctuuninitvar takes the snprintf into msg for a read. */
    err->sqlstate[0] = 0;
    err->code = code;
    err->misuse = 0;
    err->position = 0;
    snprintf(err->msg, sizeof err->msg, fmt, line);
}

void db_error_from(db_error_t *err, PGconn *pg, const PGresult *res)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (!primary) primary = res && *PQresultErrorMessage(res) ? PQresultErrorMessage(res) : PQerrorMessage(pg);
    if (!strncmp(primary, "ERROR:  ", 8) || !strncmp(primary, "FATAL:  ", 8)) primary += 8;
    int bad = !pg || PQstatus(pg) == CONNECTION_BAD;
    const char *pos = res ? PQresultErrorField(res, PG_DIAG_STATEMENT_POSITION) : NULL;
    err->position = pos ? atoi(pos) : 0;
    if (state && *state && !bad) {
        one_line(err->msg, sizeof err->msg, primary);
        snprintf(err->sqlstate, sizeof err->sqlstate, "%s", state);
        err->code = db_code_for_sqlstate(state, &err->misuse);
        return;
    }
    db_set_error(err, "unavailable", "database unavailable: %s", primary);
    if (state) snprintf(err->sqlstate, sizeof err->sqlstate, "%s", state);
}

int db_url_check(const char *url, db_error_t *err)
{
    /* libpq takes a dbname that is neither a URI nor key=value pairs as a database name, and
     * its parse errors quote the text: check it here, and say what is wrong without it. */
    int uri = !strncmp(url, "postgresql://", 13) || !strncmp(url, "postgres://", 11);
    if (!uri && !strchr(url, '=')) {
        db_set_error(err, "unavailable", "database unavailable: %s",
                     "DATABASE_URL is neither a postgresql URI nor a key=value connection string (the value is not shown)");
        return -1;
    }
    char *why = NULL;
    PQconninfoOption *opts = PQconninfoParse(url, &why);
    PQfreemem(why);   /* it may quote the URL: never shown */
    if (!opts) {
        db_set_error(err, "unavailable", "database unavailable: %s", "DATABASE_URL cannot be parsed (the value is not shown)");
        return -1;
    }
    PQconninfoFree(opts);
    return 0;
}

/* ---- connection ------------------------------------------------------------------------ */

static void notice_to_log(void *arg, const char *message)
{
    (void)arg;
    char line[256];
    one_line(line, sizeof line, message);
    log_debug("db: server notice: %s", line);
}

void db_conn_init(db_conn_t *c, worker_t *w)
{
    c->url = w->cfg ? w->cfg->database_url : NULL;
    c->app_name = w->cfg && w->cfg->service ? w->cfg->service : w->kind;
    c->timeout_ms = db_settings.statement_timeout_ms;
    c->fd = -1;
}

db_conn_t *db_conn_of(worker_t *w)
{
    if (!w->binding[BIND_DB]) {
        db_conn_t *c = calloc(1, sizeof *c);
        if (!c) return NULL;
        db_conn_init(c, w);
        w->binding[BIND_DB] = c;
    }
    return w->binding[BIND_DB];
}

void db_stmt_forget_all(db_conn_t *c)
{
    for (int i = 0; i < c->nstmts; i++) free(c->stmts[i].sql);
    c->nstmts = 0;
}

void db_conn_close(db_conn_t *c)
{
    if (c->fd >= 0 && c->loop) loop_unwatch(c->loop, c->fd);
    c->fd = -1;
    if (c->pg) {
        PQfinish(c->pg);
        c->pg = NULL;
        metrics_cell_add(g_connections, -1);
        if (c->tx_depth > 0) c->tx_lost = 1;
    }
    db_stmt_forget_all(c);
    c->listening = 0;
}

void db_worker_free(worker_t *w)
{
    db_conn_t *c = w->binding[BIND_DB];
    if (!c) return;
    db_conn_close(c);
    free(c);
    w->binding[BIND_DB] = NULL;
}

/* The session runs in UTC with ISO dates and the statement timeout. No GSSAPI encryption
 * unless the URL asks for it (gssencmode=prefer, libpq's default, first loads Kerberos and asks
 * the server for it: one round trip more on every connection, for a mode nobody here uses).
 * Settings in the URL win over these defaults (they come later in the expanded parameter list). */
void db_conn_params(const db_conn_t *c, db_params_t *p)
{
    snprintf(p->connect_timeout, sizeof p->connect_timeout, "%d", db_settings.connect_timeout_s);
    snprintf(p->options, sizeof p->options, "-c statement_timeout=%d -c TimeZone=UTC -c DateStyle=ISO,YMD", c->timeout_ms);
    snprintf(p->app, sizeof p->app, "mercato-%s", c->app_name ? c->app_name : "host");
    snprintf(p->user_timeout, sizeof p->user_timeout, "%d", c->timeout_ms ? c->timeout_ms + 10000 : 0);
    const char *keys[] = { "connect_timeout", "options", "application_name", "client_encoding", "keepalives_idle",
                           "keepalives_interval", "keepalives_count", "tcp_user_timeout", "gssencmode", "dbname", NULL };
    const char *vals[] = { p->connect_timeout, p->options, p->app, "UTF8", "30", "10", "3", p->user_timeout, "disable",
                           c->url, NULL };
    _Static_assert(sizeof keys <= sizeof p->keys && sizeof vals <= sizeof p->vals, "db_params_t is too small");
    memcpy(p->keys, keys, sizeof keys);
    memcpy(p->vals, vals, sizeof vals);
}

int db_conn_may_connect(db_conn_t *c, db_error_t *err)
{
    if (!c->url || !*c->url) {
        db_set_error(err, "unavailable", "database unavailable: %s", "DATABASE_URL is not set");
        return -1;
    }
    if (db_url_check(c->url, err) < 0) return -1;
    if (now_ms() < c->retry_at_ms) {
        db_set_error(err, "unavailable", "database unavailable: %s", "the last connection attempt failed, retrying shortly");
        return -1;
    }
    return 0;
}

int db_conn_adopt(db_conn_t *c, PGconn *pg, db_error_t *err)
{
    if (!pg || PQstatus(pg) != CONNECTION_OK) {
        db_set_error(err, "unavailable", "database unavailable: %s", pg ? PQerrorMessage(pg) : "out of memory");
        log_warn("db: cannot connect: %s", err->msg);   /* libpq names host and port; never the URL */
        PQfinish(pg);
        c->backoff_ms = c->backoff_ms ? (c->backoff_ms * 2 > 2000 ? 2000 : c->backoff_ms * 2) : 100;
        c->retry_at_ms = now_ms() + c->backoff_ms;
        metrics_cell_add(g_connect_failures, 1);
        return -1;
    }
    PQsetNoticeProcessor(pg, notice_to_log, NULL);
    c->pg = pg;
    c->backoff_ms = 0;
    c->retry_at_ms = 0;
    metrics_cell_add(g_connections, 1);
    return 0;
}

/* Connect, blocking up to connect_timeout. */
static int conn_open(db_conn_t *c, db_error_t *err)
{
    if (db_conn_may_connect(c, err) < 0) return -1;
    db_params_t p = { 0 };
    db_conn_params(c, &p);
    return db_conn_adopt(c, PQconnectdbParams(p.keys, p.vals, 1), err);
}

/* Whether the idle connection was closed by the server (restart, pg_terminate_backend): its
 * socket is readable while no statement is outstanding. Costs one poll(2). */
int db_conn_dead(db_conn_t *c)
{
    if (PQstatus(c->pg) != CONNECTION_OK) return 1;
    struct pollfd p = { .fd = PQsocket(c->pg), .events = POLLIN };
    if (p.fd < 0) return 1;
    /* A terminated backend sends its FATAL message, then closes: read until the socket is
     * quiet, so that the end of file behind the message is seen too. */
    for (int i = 0; i < 4 && poll(&p, 1, 0) > 0; i++) {
        if (!PQconsumeInput(c->pg) || PQstatus(c->pg) != CONNECTION_OK) return 1;
        (void)PQisBusy(c->pg);   /* parses what arrived: the FATAL goes to the notice processor */
    }
    return 0;
}

/* A usable connection: made or remade outside a transaction; inside one, a lost connection
 * is final (its work is gone, and a fresh one would silently run in autocommit). */
static int conn_ensure(db_conn_t *c, db_error_t *err)
{
    if (c->tx_depth > 0) {
        if (!c->tx_lost && c->pg && !db_conn_dead(c)) return 0;
        if (c->pg) db_conn_close(c);
        c->tx_lost = 1;
        db_set_error(err, "unavailable", "database unavailable: %s", "the connection was lost inside the transaction");
        return -1;
    }
    if (c->pg && db_conn_dead(c)) {
        log_info("db: the connection was closed by the server; reconnecting");
        db_conn_close(c);
        metrics_cell_add(g_reconnects, 1);
    }
    return c->pg ? 0 : conn_open(c, err);
}

/* Wait for the outstanding statement's result until the deadline (0: none). Returns the
 * error result if there was one, else the last; NULL with *timed_out when time ran out. */
static PGresult *wait_result(PGconn *pg, uint64_t deadline, int *timed_out)
{
    PGresult *keep = NULL;
    *timed_out = 0;
    for (;;) {
        while (PQisBusy(pg)) {
            int ms = -1;
            if (deadline) {
                uint64_t now = now_ms();
                if (now >= deadline) { *timed_out = 1; PQclear(keep); return NULL; }
                ms = (int)(deadline - now);
            }
            struct pollfd p = { .fd = PQsocket(pg), .events = POLLIN };
            if (p.fd < 0) break;
            int r = poll(&p, 1, ms);
            if (r < 0 && errno != EINTR) break;
            if (r > 0 && !PQconsumeInput(pg)) break;   /* PQgetResult reports the failure */
        }
        PGresult *r = PQgetResult(pg);
        if (!r) break;
        ExecStatusType st = keep ? PQresultStatus(keep) : PGRES_COMMAND_OK;
        if (!keep || st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) { PQclear(keep); keep = r; }
        else PQclear(r);
    }
    return keep;
}

static uint64_t deadline_for(const db_conn_t *c)
{
    return c->timeout_ms ? now_ms() + (uint64_t)c->timeout_ms + DB_CLIENT_GRACE_MS : 0;
}

/* The server gave up on the session before running anything (terminated backend, shutdown). */
int db_not_run(const db_error_t *err)
{
    const char *s = err->sqlstate;
    return !strcmp(s, "57P01") || !strcmp(s, "57P02") || !strcmp(s, "57P03") || (!strncmp(s, "08", 2) && strcmp(s, "08P01") != 0);
}

/* Send-and-wait for the simple or the extended protocol; fills err on failure. *safe: the
 * failure proves the statement did not run. */
static PGresult *await_result(db_conn_t *c, int sent, uint64_t deadline, db_error_t *err, int *safe)
{
    PGconn *pg = c->pg;
    if (!sent) {
        db_error_from(err, pg, NULL);
        *safe = 1;
        db_conn_close(c);
        return NULL;
    }
    int timed_out;
    /* A pooled connection is non-blocking: push the whole statement out first. */
    while (PQflush(pg) == 1) {
        struct pollfd p = { .fd = PQsocket(pg), .events = POLLOUT | POLLIN };
        if (poll(&p, 1, 1000) < 0 && errno != EINTR) break;
        if ((p.revents & POLLIN) && !PQconsumeInput(pg)) break;
    }
    PGresult *res = wait_result(pg, deadline, &timed_out);
    if (timed_out) {
        /* The server did not answer within statement_timeout plus grace: the session cannot be
         * trusted to be idle again, so drop it (the next call reconnects). */
        db_set_error(err, "timeout", "database timeout: %s", "no answer within the statement timeout");
        db_conn_close(c);
        return NULL;
    }
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return res;
    db_error_from(err, pg, res);
    PQclear(res);
    if (PQstatus(pg) == CONNECTION_BAD) {
        *safe = db_not_run(err);
        db_conn_close(c);
    }
    return NULL;
}

/* ---- prepared statements --------------------------------------------------------------- */

uint64_t db_hash(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

db_stmt_t *db_stmt_find(db_conn_t *c, const char *sql, size_t len, uint64_t h)
{
    for (int i = 0; i < c->nstmts; i++) {
        db_stmt_t *s = &c->stmts[i];
        if (s->hash == h && s->len == len && memcmp(s->sql, sql, len) == 0) return s;
    }
    return NULL;
}

/* Forget a statement the server no longer has. */
void db_stmt_forget(db_conn_t *c, db_stmt_t *s)
{
    free(s->sql);
    *s = c->stmts[--c->nstmts];
}

db_stmt_t *db_stmt_add(db_conn_t *c, const char *sql, size_t len, uint64_t h, unsigned id)
{
    char *copy = malloc(len + 1);
    if (!copy) return NULL;
    memcpy(copy, sql, len);
    copy[len] = 0;
    db_stmt_t *s = &c->stmts[c->nstmts++];
    *s = (db_stmt_t){ .sql = copy, .len = len, .hash = h, .id = id };
    return s;
}

db_stmt_t *db_stmt_lru(db_conn_t *c)
{
    int lru = 0;
    for (int i = 1; i < c->nstmts; i++)
        if (c->stmts[i].used < c->stmts[lru].used) lru = i;
    return &c->stmts[lru];
}

/* Drop a statement from the cache and from the server (only outside a transaction: inside an
 * aborted one every command fails). 0, or -1 when the server could not be told. */
static int stmt_drop(db_conn_t *c, db_stmt_t *s, db_error_t *err)
{
    char sql[48];
    snprintf(sql, sizeof sql, "DEALLOCATE mercato_%u", s->id);
    db_stmt_forget(c, s);
    int safe = 0;
    PGresult *res = await_result(c, PQsendQuery(c->pg, sql), deadline_for(c), err, &safe);
    if (!res) return -1;
    PQclear(res);
    return 0;
}

/* Make room for one more statement: 1 when there is room, 0 when the statement should run
 * unnamed (cache full inside a transaction, or disabled), -1 on a connection failure. */
static int stmt_room(db_conn_t *c, db_error_t *err)
{
    if (c->nstmts < db_settings.stmt_cache_max) return 1;
    if (!db_settings.stmt_cache_max || PQtransactionStatus(c->pg) != PQTRANS_IDLE) return 0;
    return stmt_drop(c, db_stmt_lru(c), err) < 0 ? -1 : 1;
}

/* One attempt: prepare (once per connection and SQL text), then execute. */
static PGresult *query_once(db_conn_t *c, const char *sql, size_t len, int n, const char *const *values,
                            db_error_t *err, int *safe, int *stale)
{
    if (conn_ensure(c, err) < 0) return NULL;
    uint64_t deadline = deadline_for(c), h = db_hash(sql, len);
    db_stmt_t *s = db_stmt_find(c, sql, len, h);
    char name[32] = "";
    if (s) {
        snprintf(name, sizeof name, "mercato_%u", s->id);
    } else {
        int room = stmt_room(c, err);
        if (room < 0) return NULL;
        if (!room)   /* uncached: parse, bind and execute in one round trip */
            return await_result(c, PQsendQueryParams(c->pg, sql, n, NULL, values, NULL, NULL, 0), deadline, err, safe);
        unsigned id = ++c->next_id;
        snprintf(name, sizeof name, "mercato_%u", id);
        PGresult *res = await_result(c, PQsendPrepare(c->pg, name, sql, 0, NULL), deadline, err, safe);
        if (!res) {
            *safe = 1;   /* preparing runs nothing */
            return NULL;
        }
        PQclear(res);
        s = db_stmt_add(c, sql, len, h, id);   /* NULL (out of memory): runs once under its name, uncached */
    }
    if (s) s->used = ++c->tick;
    PGresult *res = await_result(c, PQsendQueryPrepared(c->pg, name, n, values, NULL, NULL, 0), deadline, err, safe);
    if (!res && s && c->pg) {
        /* Nothing ran: the server forgot its statements (DEALLOCATE ALL, DISCARD ALL: all of
         * them, so forget all), or this plan's result type changed (a migration altered the
         * table). Prepare again; inside a transaction the error has aborted it already. */
        if (!strcmp(err->sqlstate, "26000")) {
            db_stmt_forget_all(c);
            *stale = 1;
        } else if (!strcmp(err->sqlstate, "0A000") && c->tx_depth == 0 && stmt_drop(c, s, err) == 0) {
            *stale = 1;
        }
    }
    return res;
}

PGresult *db_conn_query(db_conn_t *c, const char *sql, size_t len, int n, const char *const *values, db_error_t *err)
{
    for (int attempt = 0;; attempt++) {
        int safe = 0, stale = 0, in_tx = c->tx_depth > 0;
        PGresult *res = query_once(c, sql, len, n, values, err, &safe, &stale);
        if (res || attempt > 0 || in_tx || !(stale || (safe && !strcmp(err->code, "unavailable")))) return res;
        if (!stale) {
            log_info("db: the connection failed before the statement ran (%s); retrying once", err->msg);
            if (c->pg) db_conn_close(c);
            metrics_cell_add(g_reconnects, 1);
        }
    }
}

int db_conn_command(db_conn_t *c, const char *sql, db_error_t *err)
{
    for (int attempt = 0;; attempt++) {
        int safe = 0, in_tx = c->tx_depth > 0;
        if (conn_ensure(c, err) < 0) return -1;
        PGresult *res = await_result(c, PQsendQuery(c->pg, sql), deadline_for(c), err, &safe);
        if (res) { PQclear(res); return 0; }
        if (attempt > 0 || in_tx || !safe) return -1;
        metrics_cell_add(g_reconnects, 1);
    }
}
