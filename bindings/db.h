/* db: the internal API shared by bindings/db*.c (the `db` Lua module) and tests/test_db.c.
 *
 * Two kinds of connection, both made on first use and kept across requests and Lua state swaps:
 *  - each worker's own blocking connection, in w->binding[BIND_DB] (runners, `mercato lua`,
 *    and handler code that cannot park);
 *  - on HTTP threads, a pool of non-blocking connections driven by the thread's loop
 *    (w->binding[BIND_DB_POOL], bindings/db_pool.c): a handler's statement borrows one, parks
 *    until the answer is in and gives it back; a db.tx keeps it until COMMIT or ROLLBACK.
 * Closed by bindings_worker_free. */
#ifndef MERCATO_DB_H
#define MERCATO_DB_H

#include <libpq-fe.h>
#include <lua.h>
#include <stddef.h>
#include <stdint.h>

struct worker;

#define DB_STMT_CACHE_MAX 256      /* prepared statements kept per connection (LRU beyond) */
#define DB_MAX_PARAMS 4096         /* $n parameters per statement */

/* Read once from the environment by db_settings_load (binding global_init). */
typedef struct db_settings {
    int statement_timeout_ms;      /* DB_STATEMENT_TIMEOUT_MS, default 5000; 0 = none */
    int pool_size;                 /* DB_POOL_SIZE: pooled connections per process (split over
                                    * the HTTP threads, at least one each); default 4 per thread */
    int pool_wait_ms;              /* DB_POOL_WAIT_MS, default 1000: then `unavailable` (503) */
    int connect_timeout_s;         /* DB_CONNECT_TIMEOUT_S, default 3 (libpq's minimum is 2) */
    int stmt_cache_max;            /* DB_STMT_CACHE, default and cap DB_STMT_CACHE_MAX */
} db_settings_t;

extern db_settings_t db_settings;
void db_settings_load(void);

/* A failure as the Lua wrappers report it. `code` is a static string from the fixed vocabulary
 * (unavailable, timeout, conflict, invalid); `misuse` means the statement itself is wrong
 * (syntax, unknown column, parameter count): the wrapper raises instead of returning. */
typedef struct db_error {
    char msg[256];                 /* one line, never the SQL text */
    char sqlstate[6];              /* "" when the failure was not reported by the server */
    const char *code;
    int misuse;
    int position;                  /* 1-based character in the statement text, 0 if unknown */
} db_error_t;

typedef struct db_stmt {
    char *sql;                     /* owned; the cache key */
    size_t len;
    uint64_t hash;
    uint64_t used;                 /* tick of the last use, for LRU eviction */
    unsigned id;                   /* server-side name "mercato_<id>" */
} db_stmt_t;

struct request;
struct loop;
struct db_pool;
struct db_op;

typedef struct db_conn {
    PGconn *pg;                    /* NULL while not connected */
    int tx_depth;                  /* db.tx nesting (0: autocommit) */
    int tx_lost;                   /* the connection died inside the open db.tx */
    db_error_t tx_err;             /* the last failure inside the open db.tx (for COMMIT) */
    db_stmt_t stmts[DB_STMT_CACHE_MAX];
    int nstmts;
    uint64_t tick;
    unsigned next_id;
    uint64_t retry_at_ms;          /* after a failed connect, fail fast until then */
    unsigned backoff_ms;
    const char *url;               /* DATABASE_URL (the config's, not owned) */
    const char *app_name;          /* the service, for application_name (not owned) */
    int timeout_ms;                /* statement_timeout of the session; 0 = none (migrations) */
    int listening;                 /* db.wait_notify ran LISTEN on this session (reset on close) */
    /* Pooled connections only (NULL / -1 for a worker's own): */
    struct db_pool *pool;
    struct loop *loop;             /* the HTTP thread's loop its socket is watched on */
    int fd;                        /* the watched socket, or -1 */
    int events;                    /* LOOP_* it is watched for */
    struct request *owner;         /* the request whose db.tx holds it, or NULL (shared) */
    PGconn *connecting;            /* being connected on the loop (not yet pg) */
    struct db_op *head, *tail;     /* statements sent (or waiting for the connection), in order */
    int inflight;
    uint64_t progress_ns;          /* the last answer, or when it got busy (loop clock) */
} db_conn_t;

/* A zeroed connection set up for w's service (not connected). */
void db_conn_init(db_conn_t *c, struct worker *w);

/* The worker's connection slot (made on first call; NULL only when out of memory). */
db_conn_t *db_conn_of(struct worker *w);

/* The connection a blocking statement runs on: the one lent to the request being served for
 * its db.tx, a free pooled one, else the worker's own. NULL with err (unavailable) when that
 * one is lent to another request's db.tx. */
db_conn_t *db_blocking_conn(struct worker *w, db_error_t *err);

/* db.wait_notify(channel, timeout_s) for runners (bindings/db_listen.c). */
int db_l_wait_notify(lua_State *L);

/* Free the worker's connection (bindings_worker_free). */
void db_worker_free(struct worker *w);

/* Close the connection and forget its prepared statements; an open db.tx is marked lost. */
void db_conn_close(db_conn_t *c);

/* Run one statement with $n text parameters (NULL = SQL NULL) through the prepared statement
 * cache; connects or reconnects first when needed and retries once when that is safe (outside
 * a transaction, and the statement cannot have run). Returns a result with status
 * TUPLES_OK/COMMAND_OK that the caller PQclears, or NULL with err filled. */
PGresult *db_conn_query(db_conn_t *c, const char *sql, size_t len, int nparams, const char *const *values,
                        db_error_t *err);

/* Run a parameterless command (BEGIN, SAVEPOINT, a migration file) with the simple protocol.
 * 0, or -1 with err. Never reconnects inside a transaction. */
int db_conn_command(db_conn_t *c, const char *sql, db_error_t *err);

/* ---- shared by db_conn.c and db_pool.c (not for other callers) ---- */

/* The connection parameters of c (keys/vals NULL-terminated; the texts live in bufs). */
typedef struct db_params {
    const char *keys[12], *vals[12];
    char connect_timeout[16], options[160], app[80], user_timeout[16];
} db_params_t;
void db_conn_params(const db_conn_t *c, db_params_t *p);
/* 0 when a connection may be attempted now; -1 with err while a failed attempt backs off. */
int db_conn_may_connect(db_conn_t *c, db_error_t *err);
/* pg (made by either connect API, OK or not) becomes c's connection: 0, or -1 with err (pg
 * finished, the back-off started). */
int db_conn_adopt(db_conn_t *c, PGconn *pg, db_error_t *err);
/* Whether the idle connection was closed by the server (costs one poll(2)). */
int db_conn_dead(db_conn_t *c);
/* The server gave up on the session before running the statement (it may be retried). */
int db_not_run(const db_error_t *err);
void db_set_error(db_error_t *err, const char *code, const char *fmt, const char *detail);
/* The prepared statement cache of a connection. */
uint64_t db_hash(const char *s, size_t n);
db_stmt_t *db_stmt_find(db_conn_t *c, const char *sql, size_t len, uint64_t h);
db_stmt_t *db_stmt_add(db_conn_t *c, const char *sql, size_t len, uint64_t h, unsigned id);   /* NULL: no memory */
void db_stmt_forget(db_conn_t *c, db_stmt_t *s);
void db_stmt_forget_all(db_conn_t *c);
db_stmt_t *db_stmt_lru(db_conn_t *c);
/* Count a dead connection replaced, in db_reconnects_total. */
void db_count_reconnect(void);
/* Count a statement's outcome in db_queries_total. */
void db_count(const char *outcome);
/* A statement that began or ended a transaction behind db.tx's back (a raw BEGIN, COMMIT
 * inside db.tx), told by its command tag — in pipeline mode libpq reports the transaction
 * status only between pipelines: the message to raise, or NULL. The caller ends a stray
 * transaction (tx_depth 0). */
const char *db_tx_misuse(const db_conn_t *c, const PGresult *res);
/* The statement that opens a db.tx level at depth (BEGIN, or SAVEPOINT when nested), and the
 * one that ends it (COMMIT / RELEASE, or ROLLBACK / ROLLBACK TO + RELEASE). */
void db_tx_begin_sql(int depth, char *buf, size_t cap);
void db_tx_end_sql(int depth, int commit, char *buf, size_t cap);

/* ---- the HTTP thread's pool (db_pool.c) ---- */

typedef struct db_pool db_pool_t;
/* The pool of the worker running L's handler, when the statement may park there; else NULL. */
db_pool_t *db_pool_for(lua_State *L, struct worker *w);
/* A free pooled connection to use without parking (blocking), or NULL. Not lent. */
db_conn_t *db_pool_idle(struct worker *w);
/* Lend c to r for a db.tx / give it back (handing it to the next waiting statement). */
void db_pool_lend(db_conn_t *c, struct request *r);
void db_pool_give_back(db_conn_t *c);
/* Run a statement (sql, or a BEGIN/COMMIT text when mode is DB_MODE_COMMAND) from a
 * handler: borrows a connection (r->db's, a free one, or waits up to DB_POOL_WAIT_MS),
 * parks the handler, and resumes it with what db_push_outcome pushes. */
int db_pool_run(lua_State *L, db_pool_t *p, int mode, const char *fn, const char *sql, size_t len, int n,
                const char *const *values);
/* db.tx's BEGIN / end on the pool: resumes with depth | true, or nil, err, code, sqlstate. */
int db_pool_begin(lua_State *L, db_pool_t *p);
int db_pool_end(lua_State *L, db_pool_t *p, db_conn_t *c, int depth, int commit);
/* The request ends: a connection still lent to it (its handler never finished the db.tx) is
 * closed, which rolls the transaction back, and returned. */
void db_request_end(struct worker *w, struct request *r);
void db_pool_free(struct worker *w);
/* Pooled connections per HTTP thread: DB_POOL_SIZE split over the workers, or the default. */
int db_pool_per_thread(int workers);
/* Register the pool's metrics (once per process, from the binding's global_init). */
void db_pool_metrics_init(void);

enum { DB_MODE_ROWS, DB_MODE_ONE, DB_MODE_EXEC, DB_MODE_COMMAND };

/* Push what a db primitive returns for a finished statement onto L (see db.c):
 * ROWS / ONE → a result userdata (owns res); EXEC → the count (res cleared). */
void db_push_result(lua_State *L, PGresult *res, int mode);
/* nil, message, code, sqlstate — or, for misuse, false, "fn: message". Returns the count. */
int db_push_failure(lua_State *L, const char *fn, const db_error_t *err);

/* Fill err from a failed result or from the connection state. */
void db_error_from(db_error_t *err, PGconn *pg, const PGresult *res);

/* The vocabulary code for an SQLSTATE; *misuse set for statement errors the caller raises. */
const char *db_code_for_sqlstate(const char *sqlstate, int *misuse);

/* DATABASE_URL is a postgresql:// URI or a key=value string libpq can parse: 0, or -1 with
 * err saying so without quoting it (it holds the password). */
int db_url_check(const char *url, db_error_t *err);

/* How a column's text is turned into a Lua value. */
typedef enum {
    DB_T_TEXT,         /* text, varchar, uuid, date, bytea (hex), arrays, anything unknown */
    DB_T_INT,          /* int2, int4, oid → number */
    DB_T_INT8,         /* number, or string beyond ±2^53 */
    DB_T_NUMERIC,      /* number when an integer of ±2^53 at most, else the exact string */
    DB_T_FLOAT,        /* float4, float8 → number */
    DB_T_BOOL,
    DB_T_JSON,         /* json, jsonb → decoded with cjson */
    DB_T_TIMESTAMPTZ,  /* RFC 3339 UTC string */
    DB_T_TIMESTAMP,    /* "YYYY-MM-DDTHH:MM:SS[.ffffff]" (no zone) */
} db_type_t;

db_type_t db_type_of_oid(Oid oid);

/* A Lua number as a parameter: integers in ±2^63 as "%lld" (no exponent), others as "%.17g",
 * NaN and infinities in PostgreSQL's spelling. Returns the length written. */
int db_format_number(double d, char *buf, size_t cap);

/* An integer in text (int8 or numeric) that a double holds exactly: 1 with *out, else 0. */
int db_parse_exact_integer(const char *s, double *out);

/* PostgreSQL's ISO timestamptz output ("2024-05-01 12:00:00.5+02") as RFC 3339 UTC
 * ("2024-05-01T10:00:00.5Z"). 0, or -1 when it is not in that form (infinity, BC): the caller
 * keeps the server's text. */
int db_timestamptz_rfc3339(const char *in, char *out, size_t cap);

struct config;

/* Apply the service's migrations (bindings_migrate, defined in db.c so that linking the db
 * binding brings it in); the exit status. */
struct migrate_gate;
int db_migrate(const struct config *cfg, const struct migrate_gate *gate);

#endif
