/* db: the internal API shared by bindings/db*.c (the `db` Lua module) and tests/test_db.c.
 *
 * One connection per worker thread, in w->binding[BIND_DB]: made on first use, kept across
 * requests and Lua state swaps, closed by bindings_worker_free. A worker runs one request at a
 * time and a db.tx pins the connection for its whole run, so a second connection per worker
 * would never be used; the process holds WORKERS connections (plus one while migrating). */
#ifndef MERCATO_DB_H
#define MERCATO_DB_H

#include <libpq-fe.h>
#include <stddef.h>
#include <stdint.h>

struct worker;

#define DB_STMT_CACHE_MAX 256      /* prepared statements kept per connection (LRU beyond) */
#define DB_MAX_PARAMS 4096         /* $n parameters per statement */

/* Read once from the environment by db_settings_load (binding global_init). */
typedef struct db_settings {
    int statement_timeout_ms;      /* DB_STATEMENT_TIMEOUT_MS, default 5000; 0 = none */
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
} db_conn_t;

/* The worker's connection slot (made on first call; NULL only when out of memory). */
db_conn_t *db_conn_of(struct worker *w);

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

/* Fill err from a failed result or from the connection state. */
void db_error_from(db_error_t *err, PGconn *pg, const PGresult *res);

/* The vocabulary code for an SQLSTATE; *misuse set for statement errors the caller raises. */
const char *db_code_for_sqlstate(const char *sqlstate, int *misuse);

/* Copy url into out with any password replaced by "***" (URI and key=value forms). */
void db_redact_url(const char *url, char *out, size_t cap);

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
int db_migrate(const struct config *cfg);

#endif
