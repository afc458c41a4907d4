/* db: PostgreSQL for Lua (libpq). The functions Lua sees are in bindings/lua/db.lua, over the
 * primitives here; a handler's statements run on the HTTP thread's pool without blocking it
 * (bindings/db_pool.c), everything else on the worker's own connection.
 *
 *   local rows, err, code = db.query("SELECT id, price FROM products WHERE seller = $1", seller)
 *   local row, err, code = db.query_one("SELECT * FROM products WHERE id = $1", id)  -- nil: none
 *   local n, err, code = db.exec("UPDATE products SET stock = stock - $1 WHERE id = $2", qty, id)
 *   local order, err, code = db.tx(function() ... return order end)
 *
 * Parameters ($1 only): nil and db.null → NULL, booleans, numbers (integers as integers),
 * strings, tables → JSON text. Columns by type: int2/int4/oid/float → number; int8 → number,
 * or a string beyond ±2^53; numeric → number when it is an integer within ±2^53, else the
 * exact decimal string ("19.99": money stays exact); bool → boolean; json/jsonb → decoded
 * table (JSON null is db.null); timestamptz → RFC 3339 UTC ("2024-05-01T10:00:00.5Z");
 * timestamp → "2024-05-01T10:00:00"; SQL NULL → db.null (== cjson.null, encodes as null);
 * everything else (text, uuid, date, bytea hex, arrays) → the server's text.
 *
 * Misuse raises (bad arguments, SQL the server cannot parse, wrong parameter count, SQL run
 * where no worker exists). Runtime failures return nil, message, code, sqlstate with code
 * one of unavailable, timeout, conflict, invalid; the message never holds the SQL text (it is
 * logged at debug level). */
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "../host/bindings.h"
#include "../core/log.h"
#include "../core/metrics.h"
#include "../host/request.h"
#include "../host/worker.h"
#include "db.h"

#include "db_lua.h"   /* generated: luaJIT_BC_db, the compiled bindings/lua/db.lua */

#define RESULT_MT "mercato.db.result"

/* Upvalues of every function: the worker (NULL in the scratch state that checks scripts),
 * json.encode, json.decode (the json binding: arrays stay arrays, integers stay exact). */
#define UV_WORKER lua_upvalueindex(1)
#define UV_ENCODE lua_upvalueindex(2)
#define UV_DECODE lua_upvalueindex(3)

static const char *const outcomes[] = { "ok", "conflict", "invalid", "timeout", "unavailable", "error" };
#define NOUTCOMES ((int)(sizeof outcomes / sizeof outcomes[0]))
static metric_cell_t *g_queries[NOUTCOMES];

void db_count(const char *outcome)
{
    for (int i = 0; i < NOUTCOMES; i++)
        if (!strcmp(outcomes[i], outcome)) { metrics_cell_add(g_queries[i], 1); return; }
}

/* ---- C-level helpers (no raising) ------------------------------------------------------- */

/* Push one column value of the current row. Raises only through the decoder (under pcall). */
static void push_value(lua_State *L, const PGresult *res, int row, int col, int decode)
{
    if (PQgetisnull(res, row, col)) { lua_pushlightuserdata(L, NULL); return; }
    const char *v = PQgetvalue(res, row, col);
    size_t len = (size_t)PQgetlength(res, row, col);
    double d;
    char buf[64];
    switch (db_type_of_oid(PQftype(res, col))) {
    case DB_T_INT: lua_pushnumber(L, (lua_Number)strtoll(v, NULL, 10)); return;
    case DB_T_INT8:
    case DB_T_NUMERIC:
        if (db_parse_exact_integer(v, &d)) lua_pushnumber(L, d);
        else lua_pushlstring(L, v, len);
        return;
    case DB_T_FLOAT: lua_pushnumber(L, strtod(v, NULL)); return;
    case DB_T_BOOL: lua_pushboolean(L, v[0] == 't'); return;
    case DB_T_JSON:
        lua_pushvalue(L, decode);
        lua_pushlstring(L, v, len);
        lua_call(L, 1, 1);
        return;
    case DB_T_TIMESTAMPTZ:
        if (db_timestamptz_rfc3339(v, buf, sizeof buf) == 0) lua_pushstring(L, buf);
        else lua_pushlstring(L, v, len);   /* infinity, BC */
        return;
    case DB_T_TIMESTAMP:
        if (len < sizeof buf && len > 10 && v[10] == ' ') {
            memcpy(buf, v, len);
            buf[10] = 'T';
            lua_pushlstring(L, buf, len);
        } else {
            lua_pushlstring(L, v, len);
        }
        return;
    case DB_T_TEXT: break;
    }
    lua_pushlstring(L, v, len);
}

/* res as rows (an array), or its first row (nil when none); decode is json.decode's index. */
static int push_rows(lua_State *L, const PGresult *res, int mode, int decode)
{
    int nrows = PQntuples(res), ncols = PQnfields(res);
    if (mode == DB_MODE_ONE) {
        if (nrows == 0) { lua_pushnil(L); return 1; }
        nrows = 1;
    }
    luaL_checkstack(L, ncols + 8, "too many columns");
    int names = lua_gettop(L) + 1;
    for (int j = 0; j < ncols; j++) lua_pushstring(L, PQfname(res, j));   /* interned once */
    if (mode == DB_MODE_ROWS) {
        /* Marked as a JSON array, so `return 200, { items = rows }` says [] when empty. */
        lua_createtable(L, nrows, 0);
        luaL_getmetatable(L, "mercato.json.array");
        lua_setmetatable(L, -2);
    }
    for (int i = 0; i < nrows; i++) {
        lua_createtable(L, 0, ncols);
        for (int j = 0; j < ncols; j++) {
            lua_pushvalue(L, names + j);
            push_value(L, res, i, j, decode);
            lua_rawset(L, -3);
        }
        if (mode == DB_MODE_ROWS) lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

/* ---- results and failures as the primitives return them ---------------------------------- */

typedef struct { PGresult *res; } result_ud_t;

void db_push_result(lua_State *L, PGresult *res, int mode)
{
    if (mode == DB_MODE_EXEC || mode == DB_MODE_COMMAND) {
        const char *tuples = PQcmdTuples(res);
        lua_Number affected = *tuples ? (lua_Number)strtoll(tuples, NULL, 10) : 0;
        PQclear(res);
        if (mode == DB_MODE_EXEC) lua_pushnumber(L, affected); else lua_pushboolean(L, 1);
        return;
    }
    result_ud_t *u = lua_newuserdata(L, sizeof *u);   /* on a memory error res leaks: nothing else can */
    u->res = res;
    luaL_getmetatable(L, RESULT_MT);
    lua_setmetatable(L, -2);
}

int db_push_failure(lua_State *L, const char *fn, const db_error_t *err)
{
    if (err->misuse) {
        lua_pushboolean(L, 0);
        lua_pushfstring(L, "%s: %s (SQLSTATE %s)%s", fn, err->msg, err->sqlstate,
                        strcmp(err->sqlstate, "25P02") ? "" : "; a nested db.tx recovers from a failed statement");
        return 2;
    }
    lua_pushnil(L);
    lua_pushstring(L, err->msg);
    lua_pushstring(L, err->code);
    if (err->sqlstate[0]) lua_pushstring(L, err->sqlstate); else lua_pushnil(L);
    return 4;
}

static int misuse(lua_State *L, const char *fn, const char *msg)
{
    lua_pushboolean(L, 0);
    lua_pushfstring(L, "%s: %s", fn, msg);
    return 2;
}

static int result_gc(lua_State *L)
{
    result_ud_t *u = luaL_checkudata(L, 1, RESULT_MT);
    PQclear(u->res);
    u->res = NULL;
    return 0;
}

/* C.take(result, mode) → rows / row / nil; the result is freed at once. */
static int l_take(lua_State *L)
{
    result_ud_t *u = luaL_checkudata(L, 1, RESULT_MT);
    int mode = (int)luaL_checkinteger(L, 2);
    if (!u->res) return luaL_error(L, "db: a result taken twice");
    lua_settop(L, 2);
    push_rows(L, u->res, mode, UV_DECODE);   /* a raising decoder leaves res to __gc */
    PQclear(u->res);
    u->res = NULL;
    return 1;
}

/* ---- the primitives ------------------------------------------------------------------------ */

static worker_t *worker_of(lua_State *L, const char *fn)
{
    worker_t *w = lua_touserdata(L, UV_WORKER);
    if (!w) luaL_error(L, "%s: no database here (scripts are being checked, not served); query from handlers", fn);
    return w;
}

db_conn_t *db_blocking_conn(worker_t *w, db_error_t *err)
{
    request_t *r = w->loop ? w->cur : NULL;
    if (r && r->db) {
        /* The request's own transaction, from a coroutine the handler made (it cannot park):
         * the connection carries nothing else then, so it leaves pipeline mode for this
         * statement (the pool re-enters it for the next one), as db_pool_idle does. */
        db_conn_t *c = r->db;
        if (c->pg && PQpipelineStatus(c->pg) != PQ_PIPELINE_OFF && (c->inflight || !PQexitPipelineMode(c->pg))) {
            db_set_error(err, "unavailable", "database busy: %s", "the transaction's connection has statements in flight");
            return NULL;
        }
        return c;
    }
    db_conn_t *c = r ? db_pool_idle(w) : NULL;
    if (!c) c = db_conn_of(w);
    if (!c) {
        db_set_error(err, "unavailable", "database unavailable: %s", "out of memory");
        return NULL;
    }
    if (c->owner && c->owner != r) {
        db_set_error(err, "unavailable", "database busy: %s", "every connection of this thread is in use");
        return NULL;
    }
    return c;
}

/* The arguments first..first+n-1 as text parameters into values (NULL = SQL NULL). The texts
 * live on the Lua stack (pushed above the arguments) until the call returns. Raises for
 * values that have no SQL form; -1 with err for a string PostgreSQL cannot hold. */
static int params_to_text(lua_State *L, const char *fn, int first, int n, const char **values, db_error_t *err)
{
    luaL_checkstack(L, n + 8, "too many parameters");
    for (int i = 0; i < n; i++) {
        int idx = first + i;
        char num[64];
        size_t len;
        switch (lua_type(L, idx)) {
        case LUA_TNIL: values[i] = NULL; break;
        case LUA_TBOOLEAN: values[i] = lua_toboolean(L, idx) ? "true" : "false"; break;
        case LUA_TNUMBER:
            db_format_number(lua_tonumber(L, idx), num, sizeof num);
            lua_pushstring(L, num);
            values[i] = lua_tostring(L, -1);
            break;
        case LUA_TSTRING:
            values[i] = lua_tolstring(L, idx, &len);
            if (strlen(values[i]) != len) {
                memset(err, 0, sizeof *err);
                snprintf(err->msg, sizeof err->msg, "parameter $%d contains a NUL byte, which text cannot hold", i + 1);
                err->code = "invalid";
                return -1;
            }
            break;
        case LUA_TLIGHTUSERDATA:
            if (lua_touserdata(L, idx) == NULL) { values[i] = NULL; break; }   /* db.null */
            /* fall through */
        default:
            if (lua_type(L, idx) != LUA_TTABLE)
                return luaL_error(L, "%s: parameter $%d: cannot send a %s to the database", fn, i + 1, luaL_typename(L, idx));
            lua_pushvalue(L, UV_ENCODE);
            lua_pushvalue(L, idx);
            if (lua_pcall(L, 1, 1, 0) != 0)
                return luaL_error(L, "%s: parameter $%d: %s", fn, i + 1, lua_tostring(L, -1));
            values[i] = lua_tostring(L, -1);
            break;
        }
    }
    return 0;
}

const char *db_tx_misuse(const db_conn_t *c, const PGresult *res)
{
    const char *tag = PQcmdStatus((PGresult *)res);
    if (c->tx_depth == 0 && (!strcmp(tag, "BEGIN") || !strcmp(tag, "START TRANSACTION")))
        return "transaction control statements are not allowed; use db.tx(function() ... end)";
    if (c->tx_depth > 0 && (!strcmp(tag, "COMMIT") || !strcmp(tag, "ROLLBACK") || !strcmp(tag, "PREPARE TRANSACTION")))
        return "the statement ended the transaction of db.tx; let db.tx commit or roll back";
    return NULL;
}

void db_tx_begin_sql(int depth, char *buf, size_t cap)
{
    if (depth == 0) snprintf(buf, cap, "BEGIN");
    else snprintf(buf, cap, "SAVEPOINT mercato_sp%d", depth);
}

void db_tx_end_sql(int depth, int commit, char *buf, size_t cap)
{
    if (depth == 0) snprintf(buf, cap, commit ? "COMMIT" : "ROLLBACK");
    else if (commit) snprintf(buf, cap, "RELEASE SAVEPOINT mercato_sp%d", depth);
    else snprintf(buf, cap, "ROLLBACK TO SAVEPOINT mercato_sp%d; RELEASE SAVEPOINT mercato_sp%d", depth, depth);
}

/* C.run(mode, fn, sql, ...) → a result (ROWS, ONE) | count (EXEC), or nil, message, code,
 * sqlstate, or false, message (misuse: db.lua raises it). Parks in handlers. */
static int l_run(lua_State *L)
{
    int mode = (int)luaL_checkinteger(L, 1);
    const char *fn = luaL_checkstring(L, 2);
    worker_t *w = worker_of(L, fn);
    if (lua_type(L, 3) != LUA_TSTRING) return luaL_error(L, "%s: expecting SQL string, got %s", fn, luaL_typename(L, 3));
    size_t len;
    const char *sql = lua_tolstring(L, 3, &len);
    if (strlen(sql) != len) return luaL_error(L, "%s: the SQL contains a NUL byte", fn);
    int n = lua_gettop(L) - 3;
    if (n > DB_MAX_PARAMS) return luaL_error(L, "%s: at most %d parameters", fn, DB_MAX_PARAMS);
    const char **values = n ? lua_newuserdata(L, (size_t)n * sizeof *values) : NULL;
    db_error_t err = { .code = "invalid" };
    if (params_to_text(L, fn, 4, n, values, &err) < 0) { db_count("invalid"); return db_push_failure(L, fn, &err); }

    db_pool_t *p = db_pool_for(L, w);
    if (p) return db_pool_run(L, p, mode, fn, sql, len, n, values);

    db_conn_t *c = db_blocking_conn(w, &err);
    if (!c) { db_count(err.code); return db_push_failure(L, fn, &err); }
    PGresult *res = db_conn_query(c, sql, len, n, values, &err);
    if (!res) {
        db_count(err.misuse ? "error" : err.code);
        log_debug("db: %s failed: %s (%s %s); sql: %s", fn, err.msg, err.code, err.sqlstate, sql);
        if (c->tx_depth > 0) c->tx_err = err;
        return db_push_failure(L, fn, &err);
    }
    const char *bad = db_tx_misuse(c, res);
    if (bad) {
        PQclear(res);
        if (c->tx_depth == 0) {   /* a raw BEGIN would leave the connection in a transaction across requests */
            db_error_t ignored;
            if (c->pool || db_conn_command(c, "ROLLBACK", &ignored) < 0) db_conn_close(c);
        }
        db_count("error");
        return misuse(L, fn, bad);
    }
    db_count("ok");
    db_push_result(L, res, mode);
    return 1;
}

/* End the db.tx level that started at `depth`: COMMIT / RELEASE, or ROLLBACK / ROLLBACK TO.
 * Whatever fails, the connection leaves no transaction behind at depth 0. 0 or -1 with err. */
static int tx_end(db_conn_t *c, int depth, int commit, db_error_t *err)
{
    char sql[96];
    int rc = 0;
    if (c->tx_lost || !c->pg) {
        memset(err, 0, sizeof *err);
        snprintf(err->msg, sizeof err->msg, "database unavailable: the connection was lost inside the transaction");
        err->code = "unavailable";
        rc = -1;
    } else {
        if (commit && PQtransactionStatus(c->pg) == PQTRANS_INERROR) {
            /* A statement failed and the function went on: COMMIT would silently roll back. */
            *err = c->tx_err;
            if (!err->code) snprintf(err->msg, sizeof err->msg, "a statement in the transaction failed"), err->code = "invalid";
            commit = 0;
            rc = -1;
        }
        db_tx_end_sql(depth, commit, sql, sizeof sql);
        db_error_t e;
        if (db_conn_command(c, sql, &e) < 0) {
            if (rc == 0) *err = e;
            rc = -1;
            if (!commit && depth > 0) db_conn_close(c);   /* the savepoint is unusable: lose the whole tx */
        }
    }
    c->tx_depth = depth;
    if (depth == 0) {
        if (c->pg && PQtransactionStatus(c->pg) != PQTRANS_IDLE) db_conn_close(c);
        c->tx_lost = 0;
        memset(&c->tx_err, 0, sizeof c->tx_err);
    }
    return rc;
}

/* The connection of the request's (or, off the loop, the worker's) open db.tx, or NULL. */
static db_conn_t *tx_conn(worker_t *w)
{
    request_t *r = w->loop ? w->cur : NULL;
    if (r) return r->db;
    db_conn_t *c = w->binding[BIND_DB];
    return c && c->tx_depth > 0 ? c : NULL;
}

/* C.begin() → the depth the transaction starts at (0 at the top, n inside n open ones), or
 * nil, message, code, sqlstate. BEGIN, or SAVEPOINT when nested. */
static int l_begin(lua_State *L)
{
    worker_t *w = worker_of(L, "db.tx");
    db_error_t err = { .code = "unavailable" };
    db_conn_t *c = tx_conn(w);
    db_pool_t *p = db_pool_for(L, w);
    if (p && (!c || c->pool)) return db_pool_begin(L, p);
    if (!c && !(c = db_blocking_conn(w, &err))) { db_count(err.code); return db_push_failure(L, "db.tx", &err); }
    int depth = c->tx_depth;
    char sql[48];
    db_tx_begin_sql(depth, sql, sizeof sql);
    if (db_conn_command(c, sql, &err) < 0) {
        db_count(err.code);
        return db_push_failure(L, "db.tx", &err);
    }
    c->tx_depth = depth + 1;
    request_t *r = w->loop ? w->cur : NULL;
    if (r && depth == 0) {
        r->db = c;
        if (c->pool) db_pool_lend(c, r); else c->owner = r;
    }
    lua_pushinteger(L, depth);
    return 1;
}

/* C.finish(depth, commit) → true, or nil, message, code, sqlstate. */
static int l_finish(lua_State *L)
{
    worker_t *w = worker_of(L, "db.tx");
    int depth = (int)luaL_checkinteger(L, 1), commit = lua_toboolean(L, 2);
    db_conn_t *c = tx_conn(w);
    if (!c || c->tx_depth != depth + 1) return luaL_error(L, "db.tx: the transaction ended out of order");
    db_pool_t *p = db_pool_for(L, w);
    if (p && c->pool) return db_pool_end(L, p, c, depth, commit);
    db_error_t err = { .code = "unavailable" };
    int rc = tx_end(c, depth, commit, &err);
    request_t *r = w->loop ? w->cur : NULL;
    if (depth == 0 && r && r->db == c) {
        r->db = NULL;
        if (c->pool) db_pool_give_back(c); else c->owner = NULL;
    }
    if (rc < 0) {
        if (commit) db_count(err.code);
        return db_push_failure(L, "db.tx", &err);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* ---- binding ------------------------------------------------------------------------------ */

static int db_global_init(void)
{
    db_settings_load();
    char err[128];
    const char *label[] = { "outcome" };
    metric_family_t *f = metrics_family("db_queries_total", "Database statements run from Lua, by outcome.",
                                        METRIC_COUNTER, 1, label, 0, NULL, err, sizeof err);
    for (int i = 0; f && i < NOUTCOMES; i++) g_queries[i] = metrics_cell(f, &outcomes[i]);
    db_pool_metrics_init();
    return 0;
}

/* Readiness: `SELECT 1` on a free pooled connection, else on the worker's own. */
static int db_ready(worker_t *w, char *why, size_t whylen)
{
    if (!w->cfg || !w->cfg->database_url) return -1;
    db_conn_t *c = w->loop ? db_pool_idle(w) : NULL;
    if (!c) c = db_conn_of(w);
    if (!c) { snprintf(why, whylen, "out of memory"); return 0; }
    db_error_t err;
    PGresult *res = db_conn_query(c, "SELECT 1", 8, 0, NULL, &err);
    if (!res) { snprintf(why, whylen, "%s", err.msg); return 0; }
    PQclear(res);
    return 1;
}

/* The strong definition (host/bindings.c has a weak one for builds without a database). It
 * lives here, not in db_migrate.c: the linker takes an archive member only for a symbol still
 * undefined, and the weak default already defines this one. */
int bindings_migrate(const struct config *cfg, const migrate_gate_t *gate) { return db_migrate(cfg, gate); }

/* db.in_tx() → whether this request (or, off the loop, this worker) is inside db.tx
 * (outbox.add refuses to run outside one). */
static int l_in_tx(lua_State *L)
{
    worker_t *w = lua_touserdata(L, UV_WORKER);
    db_conn_t *c = w ? tx_conn(w) : NULL;
    lua_pushboolean(L, c && c->tx_depth > 0);
    return 1;
}

int luaopen_db(lua_State *L)
{
    static const luaL_Reg fns[] = {
        { "run", l_run }, { "take", l_take }, { "begin", l_begin }, { "finish", l_finish }, { "in_tx", l_in_tx },
        { "wait_notify", db_l_wait_notify }, { NULL, NULL },
    };
    if (luaL_newmetatable(L, RESULT_MT)) {
        lua_pushcfunction(L, result_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    worker_t *w = worker_from_lua(L);
    if (luaL_loadbuffer(L, (const char *)luaJIT_BC_db, luaJIT_BC_db_SIZE, "=db.lua") != 0) return lua_error(L);
    lua_getglobal(L, "require");
    lua_pushstring(L, "json");
    lua_call(L, 1, 1);
    int json = lua_gettop(L);
    lua_newtable(L);   /* C: the primitives */
    lua_pushlightuserdata(L, w);
    lua_getfield(L, json, "encode");
    lua_getfield(L, json, "decode");
    luaL_setfuncs(L, fns, 3);
    lua_getfield(L, json, "null");   /* db.null == json.null == cjson.null: NULL encodes as null */
    lua_setfield(L, -2, "null");
    lua_remove(L, json);
    lua_pushinteger(L, DB_MODE_ROWS);
    lua_pushinteger(L, DB_MODE_ONE);
    lua_pushinteger(L, DB_MODE_EXEC);
    lua_call(L, 4, 1);   /* db.lua(C, ROWS, ONE, EXEC) → the module */
    return 1;
}

static void db_request_end_hook(worker_t *w, request_t *r)
{
    if (r->db) db_request_end(w, r);
}

static void db_worker_free_all(worker_t *w)
{
    db_pool_free(w);
    db_worker_free(w);
}

const binding_t binding_db = {
    .name = "db",
    .open = luaopen_db,
    .global_init = db_global_init,
    .worker_free = db_worker_free_all,
    .request_end = db_request_end_hook,
    .ready = db_ready,
};
