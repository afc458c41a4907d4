/* db_pool: an HTTP thread's PostgreSQL connections, driven by its loop, pipelined.
 *
 * A handler's statement is sent without blocking and the handler parks until its answer is in;
 * meanwhile the thread serves other requests. Connections run in libpq's pipeline mode: the
 * statements of many requests go down one connection back to back, each in its own sync group
 * (its own implicit transaction, so one's error touches no other), and their answers come
 * back in order — one wake-up of the server and one read here for many statements, as a Redis
 * connection is used. A statement goes to the open shared connection with the fewest in
 * flight; another connection is opened (up to the pool's size) once all have
 * DB_PIPELINE_SPREAD in flight. db.tx's BEGIN takes a connection for the request alone until
 * COMMIT or ROLLBACK. With none to take, a statement waits in line at most DB_POOL_WAIT_MS,
 * then fails `unavailable` (a 503): never an unbounded queue.
 *
 * The rules of the blocking path (db_conn.c) hold: a statement is prepared once per
 * connection and SQL text (LRU beyond DB_STMT_CACHE), a statement is retried once only when it
 * cannot have run and no transaction is open, and an answer later than statement_timeout plus
 * grace drops the session. */
#include "db.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/log.h"
#include "../core/loop.h"
#include "../core/metrics.h"
#include "../host/request.h"
#include "../host/worker.h"

#define DB_CLIENT_GRACE_MS 2000
#define DB_POOL_PER_THREAD 4     /* default pool size per HTTP thread */
#define DB_PIPELINE_SPREAD 64    /* in flight on every open shared connection before another opens */
#define DB_PIPELINE_MAX 256      /* in flight on one connection at most */
#define DB_STALL_MS 500          /* busy without an answer this long: no new statements for it */

struct db_pool {
    worker_t *w;
    db_conn_t *conns;
    int size;
    struct db_op *head, *tail;   /* statements waiting for a connection, oldest first */
    int dispatching;
};

enum { K_QUERY, K_BEGIN, K_END };

typedef struct db_op {
    db_pool_t *p;
    request_t *r;                /* the request it answers; NULL once that went away */
    db_conn_t *c;                /* its connection; NULL while waiting for one */
    struct db_op *next;          /* in the pool's line or the connection's queue */
    loop_timer_t *timer;         /* the wait or statement deadline */
    PGresult *keep;              /* the answer so far: the first error, else the last result */
    int kind, mode, attempt;
    int waiting, sent, timed_out;
    int inline_call;             /* still inside the Lua call that made it */
    int nvals;                   /* set when answered inside that call */
    int nres, prep_idx;          /* results seen; the index of its Parse's result, or -1 */
    int prep_failed;
    unsigned prep_id;            /* the statement it prepared (cached optimistically) */
    unsigned exec_id;            /* the statement it ran by name (0: unnamed) */
    int unnamed;                 /* run it unnamed (its retry after a sibling's failed Parse) */
    int depth, commit, end_rc;   /* K_BEGIN / K_END */
    db_error_t err, end_err;     /* the failure; K_END's decided before sending */
    char fn[16];                 /* db.query, db.tx, ... for messages */
    uint64_t hash;
    int n;
    const char **values;         /* into text */
    const char *sql;             /* into text */
    size_t len;
    char text[];
} db_op_t;

static metric_cell_t *g_waiting, *g_wait_timeouts;

static void dispatch(db_pool_t *p);
static void finish_op(db_op_t *op);
static void conn_fail(db_conn_t *c, const db_error_t *err);
static void connect_fail(db_conn_t *c, const db_error_t *err);

/* ---- the pool ------------------------------------------------------------------------------ */

void db_pool_metrics_init(void)
{
    g_waiting = metrics_gauge0("db_pool_waiting", "Handler statements waiting for a pooled PostgreSQL connection.");
    g_wait_timeouts = metrics_counter0("db_pool_wait_timeouts_total",
                                       "Handler statements refused (503) after DB_POOL_WAIT_MS without a connection.");
}

int db_pool_per_thread(int workers)
{
    if (workers < 1) workers = 1;
    return db_settings.pool_size ? (db_settings.pool_size + workers - 1) / workers : DB_POOL_PER_THREAD;
}

static db_pool_t *pool_of(worker_t *w)
{
    db_pool_t *p = w->binding[BIND_DB_POOL];
    if (p || !w->loop || !w->cfg || !w->cfg->database_url) return p;
    int size = db_pool_per_thread(w->cfg->workers);
    p = calloc(1, sizeof *p);
    if (!p || !(p->conns = calloc((size_t)size, sizeof *p->conns))) { free(p); return NULL; }
    p->w = w;
    p->size = size;
    for (int i = 0; i < size; i++) {
        db_conn_t *c = &p->conns[i];
        db_conn_init(c, w);
        c->pool = p;
        c->loop = w->loop;
    }
    w->binding[BIND_DB_POOL] = p;
    return p;
}

db_pool_t *db_pool_for(lua_State *L, worker_t *w)
{
    if (!w->loop || !worker_can_yield(L)) return NULL;
    return pool_of(w);
}

/* A shared connection with nothing in flight, for blocking use (taken out of pipeline mode). */
db_conn_t *db_pool_idle(worker_t *w)
{
    db_pool_t *p = pool_of(w);
    if (!p) return NULL;
    db_conn_t *closed = NULL;
    for (int i = 0; i < p->size; i++) {
        db_conn_t *c = &p->conns[i];
        if (c->owner || c->inflight || c->connecting) continue;
        if (c->pg) {
            if (PQpipelineStatus(c->pg) != PQ_PIPELINE_OFF && !PQexitPipelineMode(c->pg)) continue;
            return c;
        }
        if (!closed) closed = c;
    }
    return closed;
}

void db_pool_lend(db_conn_t *c, request_t *r)
{
    c->owner = r;
}

void db_pool_give_back(db_conn_t *c)
{
    c->owner = NULL;
    dispatch(c->pool);
}

/* ---- the socket on the loop ---------------------------------------------------------------- */

static void conn_io(loop_t *loop, int fd, int events, void *arg);

static void watch(db_conn_t *c, int fd, int events)
{
    if (fd != c->fd) {
        if (c->fd >= 0) loop_unwatch(c->loop, c->fd);
        c->fd = fd;
        c->events = -1;
    }
    if (fd < 0 || events == c->events) return;
    c->events = events;
    if (loop_watch(c->loop, fd, events, conn_io, c) < 0) log_warn("db: cannot watch the PostgreSQL socket");
}

static void arm(db_op_t *op, uint64_t ms, loop_timer_cb cb)
{
    loop_t *loop = op->p->w->loop;
    if (op->timer) loop_timer_cancel(loop, op->timer);
    op->timer = loop_timer_add(loop, ms, cb, op);   /* NULL (out of memory): no deadline */
}

static void queue_push(db_conn_t *c, db_op_t *op)
{
    op->next = NULL;
    op->c = c;
    if (c->tail) c->tail->next = op; else c->head = op;
    c->tail = op;
    if (!c->inflight++) c->progress_ns = loop_now_ns();
}

static db_op_t *queue_pop(db_conn_t *c)
{
    db_op_t *op = c->head;
    if (!op) return NULL;
    c->head = op->next;
    if (!c->head) c->tail = NULL;
    c->inflight--;
    op->next = NULL;
    return op;
}

static void line_remove(db_pool_t *p, db_op_t *op)
{
    db_op_t **pp = &p->head, *prev = NULL;
    while (*pp && *pp != op) { prev = *pp; pp = &(*pp)->next; }
    if (!*pp) return;
    *pp = op->next;
    if (p->tail == op) p->tail = prev;
    op->next = NULL;
    op->waiting = 0;
    metrics_cell_add(g_waiting, -1);
}

/* ---- sending ------------------------------------------------------------------------------- */

static void on_statement_timeout(loop_t *loop, void *arg)
{
    db_op_t *op = arg;
    (void)loop;
    op->timer = NULL;
    db_set_error(&op->err, "timeout", "database timeout: %s", "no answer within the statement timeout");
    op->timed_out = 1;
    /* The session cannot be trusted again: drop it, and with it the statements behind. */
    db_error_t err;
    db_set_error(&err, "unavailable", "database unavailable: %s", "the connection was dropped after a statement timed out");
    conn_fail(op->c, &err);
}

/* The statement at the head of c's pipeline is the one the server works on: its deadline
 * (statement_timeout plus grace) starts now, not when it was queued — time spent behind the
 * statements before it on the connection is not its own. */
static void arm_head(db_conn_t *c)
{
    if (c->head && c->timeout_ms) arm(c->head, (uint64_t)c->timeout_ms + DB_CLIENT_GRACE_MS, on_statement_timeout);
}

/* Put op's messages into the connection's pipeline: one sync group. 0, or -1 (the connection
 * failed; op is not queued). */
static int send_op(db_conn_t *c, db_op_t *op)
{
    PGconn *pg = c->pg;
    int ok = 1;
    char name[32], dealloc[48] = "";
    /* A connection used blocking meanwhile (db_pool_idle) left pipeline mode. */
    if (!PQisnonblocking(pg) && PQsetnonblocking(pg, 1) != 0) return -1;
    if (PQpipelineStatus(pg) == PQ_PIPELINE_OFF && !PQenterPipelineMode(pg)) return -1;
    op->nres = 0;
    op->prep_idx = -1;
    op->prep_id = 0;
    op->prep_failed = 0;
    op->exec_id = 0;
    if (op->kind != K_QUERY) {
        /* "A; B" is not allowed in a pipeline: ROLLBACK TO and RELEASE go as two messages. */
        const char *semi = strchr(op->sql, ';');
        if (semi) {
            char first[96];
            snprintf(first, sizeof first, "%.*s", (int)(semi - op->sql), op->sql);
            ok = PQsendQueryParams(pg, first, 0, NULL, NULL, NULL, NULL, 0) &&
                 PQsendQueryParams(pg, semi + 2, 0, NULL, NULL, NULL, NULL, 0);
        } else {
            ok = PQsendQueryParams(pg, op->sql, 0, NULL, NULL, NULL, NULL, 0);
        }
    } else if (op->unnamed) {
        /* Its retry after a sibling's failed Parse: parse, bind and execute at once, so that the
         * answer is this SQL's own, never a statement name another op cached optimistically. */
        ok = PQsendQueryParams(pg, op->sql, op->n, NULL, op->values, NULL, NULL, 0);
    } else {
        db_stmt_t *s = db_stmt_find(c, op->sql, op->len, op->hash);
        if (!s && c->nstmts >= db_settings.stmt_cache_max && db_settings.stmt_cache_max && c->tx_depth == 0) {
            db_stmt_t *old = db_stmt_lru(c);
            snprintf(dealloc, sizeof dealloc, "DEALLOCATE mercato_%u", old->id);
            db_stmt_forget(c, old);
            ok = PQsendQueryParams(pg, dealloc, 0, NULL, NULL, NULL, NULL, 0);
        }
        if (s) {
            s->used = ++c->tick;
            op->exec_id = s->id;
            snprintf(name, sizeof name, "mercato_%u", s->id);
            ok = ok && PQsendQueryPrepared(pg, name, op->n, op->values, NULL, NULL, 0);
        } else if (c->nstmts < db_settings.stmt_cache_max) {
            /* Cached now: a statement right behind this one on the connection runs it by name. */
            unsigned id = ++c->next_id;
            snprintf(name, sizeof name, "mercato_%u", id);
            op->prep_idx = dealloc[0] ? 1 : 0;
            ok = ok && PQsendPrepare(pg, name, op->sql, 0, NULL) &&
                 PQsendQueryPrepared(pg, name, op->n, op->values, NULL, NULL, 0);
            if (ok && (s = db_stmt_add(c, op->sql, op->len, op->hash, id))) {
                s->used = ++c->tick;
                op->prep_id = id;
            }
        } else {   /* cache full inside a transaction, or disabled: parse, bind, execute at once */
            ok = ok && PQsendQueryParams(pg, op->sql, op->n, NULL, op->values, NULL, NULL, 0);
        }
    }
    ok = ok && PQpipelineSync(pg);
    int f = ok ? PQflush(pg) : -1;
    if (f < 0) return -1;
    watch(c, PQsocket(pg), f ? LOOP_READ | LOOP_WRITE : LOOP_READ);
    op->sent = 1;
    queue_push(c, op);
    if (c->head == op) arm_head(c);
    return 0;
}

/* Send op on c (ready), or fail the connection. */
static void send_or_fail(db_conn_t *c, db_op_t *op)
{
    if (send_op(c, op) == 0) return;
    db_error_t err;
    db_error_from(&err, c->pg, NULL);
    queue_push(c, op);   /* failed with the others: nothing of it was sent whole */
    op->sent = 0;
    conn_fail(c, &err);
}

/* ---- connecting ---------------------------------------------------------------------------- */

static void on_connect_timeout(loop_t *loop, void *arg)
{
    db_op_t *op = arg;   /* the first statement waiting for the connection carries the timer */
    (void)loop;
    op->timer = NULL;
    db_error_t err;
    db_set_error(&err, "unavailable", "database unavailable: %s", "timeout while connecting");
    connect_fail(op->c, &err);   /* finishes the connection being made, too */
}

/* Start connecting c for op (queued on c until the connection is up). */
static void connect_start(db_conn_t *c, db_op_t *op)
{
    db_error_t err;
    queue_push(c, op);
    if (db_conn_may_connect(c, &err) < 0) { connect_fail(c, &err); return; }
    db_params_t prm = { 0 };
    db_conn_params(c, &prm);
    PGconn *pg = PQconnectStartParams(prm.keys, prm.vals, 1);
    if (!pg || PQstatus(pg) == CONNECTION_BAD) {
        db_conn_adopt(c, pg, &err);   /* fails: logs, backs off */
        connect_fail(c, &err);
        return;
    }
    c->connecting = pg;
    arm(op, (uint64_t)db_settings.connect_timeout_s * 1000, on_connect_timeout);
    watch(c, PQsocket(pg), LOOP_WRITE);
}

static void connect_poll(db_conn_t *c)
{
    PGconn *pg = c->connecting;
    db_error_t err;
    switch (PQconnectPoll(pg)) {
    case PGRES_POLLING_READING: watch(c, PQsocket(pg), LOOP_READ); return;
    case PGRES_POLLING_WRITING: watch(c, PQsocket(pg), LOOP_WRITE); return;
    case PGRES_POLLING_OK: break;
    default:
        c->connecting = NULL;
        watch(c, -1, 0);
        db_conn_adopt(c, pg, &err);   /* fails: logs, backs off */
        connect_fail(c, &err);
        return;
    }
    c->connecting = NULL;
    if (db_conn_adopt(c, pg, &err) < 0) { watch(c, -1, 0); connect_fail(c, &err); return; }
    if (PQsetnonblocking(pg, 1) != 0 || !PQenterPipelineMode(pg)) {
        db_set_error(&err, "unavailable", "database unavailable: %s", "cannot enter pipeline mode");
        connect_fail(c, &err);
        return;
    }
    watch(c, PQsocket(pg), LOOP_READ);
    /* Send what waited for the connection. */
    db_op_t *waiting = c->head;
    c->head = c->tail = NULL;
    c->inflight = 0;
    while (waiting) {
        db_op_t *op = waiting;
        waiting = op->next;
        if (op->timer) loop_timer_cancel(c->loop, op->timer);
        op->timer = NULL;
        if (!c->pg) { queue_push(c, op); continue; }   /* failed meanwhile: conn_fail below */
        if (send_op(c, op) < 0) {
            db_error_from(&err, c->pg, NULL);
            queue_push(c, op);
            db_conn_close(c);
        }
    }
    if (!c->pg) conn_fail(c, &err);
    dispatch(c->pool);
}

/* ---- placing a statement ------------------------------------------------------------------- */

/* Where op can go now: the request's own connection, the open shared one with the fewest in
 * flight, or a closed one to open. NULL: wait. *open set when the connection must be opened.
 * A connection that has answered nothing for DB_STALL_MS while busy (a slow statement at its
 * head, a hung server, a connect that does not finish) takes nothing new: what is behind it
 * would wait for it. */
static db_conn_t *choose(db_pool_t *p, db_op_t *op, int *open)
{
    *open = 0;
    db_conn_t *best = NULL, *closed = NULL;
    uint64_t now = loop_now_ns();
    for (int i = 0; i < p->size; i++) {
        db_conn_t *c = &p->conns[i];
        if (c->owner) continue;
        if (!c->pg && !c->connecting) {
            if (!closed) closed = c;
            continue;
        }
        if (c->inflight >= DB_PIPELINE_MAX) continue;
        if (c->inflight && now - c->progress_ns > DB_STALL_MS * 1000000ull) continue;
        if (!best || c->inflight < best->inflight) best = c;
    }
    if (closed && (!best || best->inflight >= DB_PIPELINE_SPREAD)) {
        *open = 1;
        return closed;
    }
    (void)op;
    return best;
}

/* Send op on c, or open c for it. */
static void place(db_conn_t *c, db_op_t *op, int open)
{
    op->c = c;
    if (op->kind == K_BEGIN && op->depth == 0) c->owner = op->r;   /* the request's alone from now */
    if (open) connect_start(c, op);
    else if (c->connecting) queue_push(c, op);
    else send_or_fail(c, op);
}

static void line_timeout(loop_t *loop, void *arg)
{
    db_op_t *op = arg;
    (void)loop;
    op->timer = NULL;
    line_remove(op->p, op);
    metrics_cell_add(g_wait_timeouts, 1);
    char msg[96];
    snprintf(msg, sizeof msg, "no connection free within %d ms (DB_POOL_WAIT_MS)", db_settings.pool_wait_ms);
    db_set_error(&op->err, "unavailable", "database busy: %s", msg);
    finish_op(op);
}

/* Hand connections to the statements in line, oldest first. */
static void dispatch(db_pool_t *p)
{
    if (p->dispatching) return;
    p->dispatching = 1;
    while (p->head) {
        int open;
        db_conn_t *c = choose(p, p->head, &open);
        if (!c) break;
        db_op_t *op = p->head;
        line_remove(p, op);
        if (op->timer) loop_timer_cancel(p->w->loop, op->timer);
        op->timer = NULL;
        place(c, op, open);
    }
    p->dispatching = 0;
}

/* A new statement, or one tried again after a failure that proved it did not run. */
static void submit(db_pool_t *p, db_op_t *op)
{
    request_t *r = op->r;
    db_conn_t *mine = r ? r->db : NULL;
    if (mine) {   /* inside the request's db.tx: its connection, whatever state it is in */
        op->c = mine;
        if (mine->tx_lost || !mine->pg) {
            if (mine->pg) db_conn_close(mine);
            mine->tx_lost = 1;
            db_set_error(&op->err, "unavailable", "database unavailable: %s", "the connection was lost inside the transaction");
            finish_op(op);
            return;
        }
        if (PQpipelineStatus(mine->pg) == PQ_PIPELINE_OFF && !PQenterPipelineMode(mine->pg)) {
            db_set_error(&op->err, "unavailable", "database unavailable: %s", "cannot enter pipeline mode");
            finish_op(op);
            return;
        }
        send_or_fail(mine, op);
        return;
    }
    int open;
    db_conn_t *c = p->head ? NULL : choose(p, op, &open);   /* nobody jumps the line */
    if (c) { place(c, op, open); return; }
    if (db_settings.pool_wait_ms <= 0) {
        db_set_error(&op->err, "unavailable", "database busy: %s", "no connection free (DB_POOL_WAIT_MS=0)");
        finish_op(op);
        return;
    }
    op->waiting = 1;
    op->c = NULL;
    if (p->tail) p->tail->next = op; else p->head = op;
    p->tail = op;
    metrics_cell_add(g_waiting, 1);
    arm(op, (uint64_t)db_settings.pool_wait_ms, line_timeout);
}

/* ---- failures ------------------------------------------------------------------------------ */

/* The failure may be answered by trying once more: it proved the statement did not run, no
 * transaction is open around it, and it was not tried again already. */
static int may_retry(const db_op_t *op, int safe)
{
    return safe && op->attempt == 0 && op->r && !op->r->db && !strcmp(op->err.code, "unavailable") &&
           (op->kind == K_QUERY || (op->kind == K_BEGIN && op->depth == 0));
}

/* The connection is unusable: close it and answer (or retry) everything queued on it. Only a
 * statement never sent whole, or a failure that proves the server ran none of them (it ended
 * the session first), is tried again: the server runs what it already received even after
 * this side closes. */
static void fail_all(db_conn_t *c, const db_error_t *err, int retry_ok);

static void conn_fail(db_conn_t *c, const db_error_t *err) { fail_all(c, err, 1); }

/* No connection could be made: nothing is tried again (a retry would only meet the back-off). */
static void connect_fail(db_conn_t *c, const db_error_t *err) { fail_all(c, err, 0); }

static void fail_all(db_conn_t *c, const db_error_t *err, int retry_ok)
{
    db_op_t *list = c->head;
    int was_owned = c->owner != NULL;
    int all_safe = db_not_run(err);
    c->head = c->tail = NULL;
    c->inflight = 0;
    if (c->connecting) {
        watch(c, -1, 0);
        PQfinish(c->connecting);
        c->connecting = NULL;
    }
    if (c->pg) db_conn_close(c);   /* marks an open db.tx lost */
    if (was_owned && !c->tx_depth) c->owner = NULL;   /* a BEGIN that never took */
    while (list) {
        db_op_t *op = list;
        list = op->next;
        op->next = NULL;
        op->c = NULL;
        PQclear(op->keep);
        op->keep = NULL;
        if (!op->timed_out) op->err = *err;   /* the one that timed out keeps its own error */
        if (retry_ok && may_retry(op, !op->timed_out && (!op->sent || all_safe))) {
            log_info("db: the connection failed before the statement ran (%s); retrying once", op->err.msg);
            db_count_reconnect();
            op->attempt++;
            op->sent = 0;
            if (op->timer) loop_timer_cancel(c->loop, op->timer);
            op->timer = NULL;
            submit(op->p, op);
        } else {
            op->c = c;
            finish_op(op);
        }
    }
    dispatch(c->pool);
}

/* ---- answers ------------------------------------------------------------------------------- */

static void keep_result(db_op_t *op, PGresult *res)
{
    ExecStatusType st = PQresultStatus(res);
    int idx = op->nres++;
    int ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
    if (!ok && st != PGRES_PIPELINE_ABORTED && idx == op->prep_idx) op->prep_failed = 1;
    ExecStatusType kept = op->keep ? PQresultStatus(op->keep) : PGRES_COMMAND_OK;
    int kept_ok = kept == PGRES_COMMAND_OK || kept == PGRES_TUPLES_OK;
    /* The first error wins; else the last result (the Execute's, after Parse's). */
    if (!op->keep || kept_ok || (kept == PGRES_PIPELINE_ABORTED && !ok && st != PGRES_PIPELINE_ABORTED)) {
        PQclear(op->keep);
        op->keep = res;
    } else {
        PQclear(res);
    }
}

/* op's sync point came back: its answer is complete. */
static void op_done(db_conn_t *c, db_op_t *op)
{
    if (op->timer) loop_timer_cancel(c->loop, op->timer);
    op->timer = NULL;
    PGresult *res = op->keep;
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) { finish_op(op); return; }
    db_error_from(&op->err, c->pg, st == PGRES_PIPELINE_ABORTED ? NULL : res);
    PQclear(res);
    op->keep = NULL;
    if (op->prep_failed && op->prep_id) {   /* the statement was cached before the server said no */
        for (int i = 0; i < c->nstmts; i++)
            if (c->stmts[i].id == op->prep_id) { db_stmt_forget(c, &c->stmts[i]); break; }
    }
    if (op->kind == K_QUERY && op->attempt == 0 && op->r && !op->prep_failed) {
        /* Nothing ran: the server forgot its statements (DEALLOCATE ALL, DISCARD ALL), or the
         * plan's result type changed (a migration altered the table). Prepare again; inside a
         * transaction the error has aborted it already. */
        int forgot = !strcmp(op->err.sqlstate, "26000");
        int changed = !strcmp(op->err.sqlstate, "0A000") && c->tx_depth == 0;
        if (forgot || changed) {
            /* 26000 for a name no longer cached: the op ahead of it that prepared it failed
             * (and forgot it in its op_done) — the server still has every other statement,
             * so the cache stays. Still cached: the server forgot them all. */
            if (forgot) {
                int named_cached = 0;
                for (int i = 0; i < c->nstmts && !named_cached; i++) named_cached = c->stmts[i].id == op->exec_id;
                if (named_cached || !op->exec_id) db_stmt_forget_all(c);
                else op->unnamed = 1;
            } else {
                db_stmt_t *s = db_stmt_find(c, op->sql, op->len, op->hash);
                if (s) db_stmt_forget(c, s);   /* left on the server: a new name is prepared */
            }
            op->attempt++;
            send_or_fail(c, op);
            return;
        }
    }
    finish_op(op);
}

/* Take every answer that has arrived. broken: the connection failed while reading. */
static void take_answers(db_conn_t *c, int broken)
{
    int nulls = 0;
    while (c->head && c->pg) {
        if (!broken && PQisBusy(c->pg)) break;
        PGresult *res = PQgetResult(c->pg);   /* does not block: not busy, or the socket is gone */
        if (!res) {
            if (++nulls > 1) break;   /* between two statements' answers: one NULL */
            continue;
        }
        nulls = 0;
        c->progress_ns = loop_now_ns();
        if (PQresultStatus(res) == PGRES_PIPELINE_SYNC) {
            PQclear(res);
            db_op_t *op = queue_pop(c);
            op->c = c;
            arm_head(c);   /* the next one's turn */
            op_done(c, op);
            continue;
        }
        keep_result(c->head, res);
    }
    if (c->pg && (broken || PQstatus(c->pg) == CONNECTION_BAD)) {
        db_error_t err;   /* the server's last word (57P01: it ended the session) when it sent one */
        const PGresult *last = c->head ? c->head->keep : NULL;
        db_error_from(&err, c->pg, last && PQresultStatus(last) == PGRES_FATAL_ERROR ? last : NULL);
        conn_fail(c, &err);
        return;
    }
    if (c->pg && !c->head) dispatch(c->pool);   /* it may take statements in line again */
}

static void conn_io(loop_t *loop, int fd, int events, void *arg)
{
    db_conn_t *c = arg;
    (void)loop; (void)fd;
    if (c->connecting) { connect_poll(c); return; }
    if (!c->pg) return;
    int broken = 0;
    if (events & LOOP_WRITE) {
        int f = PQflush(c->pg);
        if (f < 0) broken = 1;
        else if (f == 0) watch(c, c->fd, LOOP_READ);
    }
    if ((events & LOOP_READ) && !PQconsumeInput(c->pg)) broken = 1;
    if (!c->head && !broken && PQstatus(c->pg) != CONNECTION_BAD) return;   /* idle: a notice */
    if (!c->head) {
        log_info("db: a pooled connection was closed by the server");
        db_conn_close(c);
        dispatch(c->pool);
        return;
    }
    take_answers(c, broken);
}

static void op_free(db_op_t *op)
{
    if (op->timer) loop_timer_cancel(op->p->w->loop, op->timer);
    PQclear(op->keep);
    free(op);
}

/* The statement is over (op->keep: its result, else op->err): push what the primitive returns
 * onto the handler's coroutine, let go of the connection, wake the handler. */
static void finish_op(db_op_t *op)
{
    request_t *r = op->r;
    db_conn_t *c = op->c;
    PGresult *res = op->keep;
    op->keep = NULL;
    if (op->timer) loop_timer_cancel(op->p->w->loop, op->timer);
    op->timer = NULL;
    if (!r) {   /* its request went away: nobody to answer */
        int stray = op->kind == K_QUERY && res && c->tx_depth == 0 && db_tx_misuse(c, res);
        PQclear(res);
        op_free(op);
        if (stray) {   /* a raw BEGIN all the same: end it */
            db_error_t err;
            db_set_error(&err, "unavailable", "database unavailable: %s", "a statement opened a transaction on the connection");
            conn_fail(c, &err);
        }
        return;
    }
    lua_State *co = r->co;
    int n = 1;
    switch (op->kind) {
    case K_QUERY:
        if (res) {
            const char *bad = db_tx_misuse(c, res);
            if (bad) {
                PQclear(res);
                db_count("error");
                lua_pushboolean(co, 0);
                lua_pushfstring(co, "%s: %s", op->fn, bad);
                n = 2;
                if (c->tx_depth == 0) {   /* a raw BEGIN: end it, and whatever was sent behind it, by closing */
                    db_error_t err;
                    db_set_error(&err, "unavailable", "database unavailable: %s", "a statement opened a transaction on the connection");
                    conn_fail(c, &err);
                }
            } else {
                db_count("ok");
                db_push_result(co, res, op->mode);
            }
        } else {
            db_count(op->err.misuse ? "error" : op->err.code);
            log_debug("db: %s failed: %s (%s %s); sql: %s", op->fn, op->err.msg, op->err.code, op->err.sqlstate, op->sql);
            if (c && r->db == c && c->tx_depth > 0) c->tx_err = op->err;
            n = db_push_failure(co, op->fn, &op->err);
        }
        break;
    case K_BEGIN:
        if (res) {
            PQclear(res);
            c->tx_depth = op->depth + 1;
            if (op->depth == 0) r->db = c;
            lua_pushinteger(co, op->depth);
        } else {
            if (op->depth == 0 && c && c->owner == r) c->owner = NULL;
            db_count(op->err.code);
            n = db_push_failure(co, "db.tx", &op->err);
        }
        break;
    case K_END:
        if (res) {
            PQclear(res);
            if (!op->commit) memset(&c->tx_err, 0, sizeof c->tx_err);   /* rolled back: usable again */
        } else {
            if (op->end_rc == 0) op->end_err = op->err;
            op->end_rc = -1;
            /* An unusable savepoint loses the whole transaction; a failed COMMIT or ROLLBACK
             * leaves the session in a state not worth guessing. */
            if (c->pg) db_conn_close(c);
        }
        c->tx_depth = op->depth;
        if (op->depth == 0) {
            c->tx_lost = 0;
            memset(&c->tx_err, 0, sizeof c->tx_err);
            r->db = NULL;
            c->owner = NULL;
        }
        if (op->end_rc == 0) lua_pushboolean(co, 1);
        else {
            if (op->mode) db_count(op->end_err.code);   /* mode: the caller meant to commit */
            n = db_push_failure(co, "db.tx", &op->end_err);
        }
        break;
    }
    if (op->inline_call) { op->nvals = n; return; }   /* the call returns them itself */
    op_free(op);
    worker_wake(r, n);
    if (c && !c->owner) dispatch(c->pool);
}

/* worker_wait's cancel hook: the request is gone (the daemon is stopping). */
static void op_cancel(void *arg)
{
    db_op_t *op = arg;
    request_t *r = op->r;
    db_conn_t *c = op->c;
    op->r = NULL;
    if (op->waiting) { line_remove(op->p, op); op_free(op); return; }
    if (c && c->owner == r) {
        /* Its own connection (a db.tx): closing it rolls the transaction back. */
        db_error_t err;
        db_set_error(&err, "unavailable", "database unavailable: %s", "the request went away");
        conn_fail(c, &err);   /* answers op: freed, as it has no request */
        c->tx_depth = 0;
        c->tx_lost = 0;
        c->owner = NULL;
        if (r->db == c) r->db = NULL;
        dispatch(c->pool);
    }
    /* On a shared connection its answer is read and dropped when it comes. */
}

/* Start op for the running handler: answered at once (its values are on L), or parked. */
static int run_op(lua_State *L, db_pool_t *p, db_op_t *op)
{
    op->p = p;
    op->r = p->w->cur;
    op->inline_call = 1;
    submit(p, op);
    op->inline_call = 0;
    if (op->nvals) {
        int n = op->nvals;
        db_conn_t *c = op->c;
        op_free(op);
        if (c && !c->owner) dispatch(p);
        return n;
    }
    return worker_wait(L, op_cancel, op);
}

static db_op_t *op_new(lua_State *L, int kind, const char *fn, const char *sql, size_t len, int n, const char *const *values)
{
    size_t total = len + 1;
    for (int i = 0; i < n; i++) total += values[i] ? strlen(values[i]) + 1 : 0;
    db_op_t *op = calloc(1, sizeof *op + (size_t)n * sizeof(char *) + total);
    if (!op) {
        luaL_error(L, "db: out of memory");
        return NULL;   /* not reached: luaL_error raises */
    }
    op->kind = kind;
    snprintf(op->fn, sizeof op->fn, "%s", fn);
    op->values = (const char **)(void *)op->text;
    char *t = op->text + (size_t)n * sizeof(char *);
    memcpy(t, sql, len);
    t[len] = 0;
    op->sql = t;
    op->len = len;
    t += len + 1;
    for (int i = 0; i < n; i++) {
        if (!values[i]) { op->values[i] = NULL; continue; }
        size_t l = strlen(values[i]) + 1;
        memcpy(t, values[i], l);
        op->values[i] = t;
        t += l;
    }
    op->n = n;
    return op;
}

int db_pool_run(lua_State *L, db_pool_t *p, int mode, const char *fn, const char *sql, size_t len, int n,
                const char *const *values)
{
    db_op_t *op = op_new(L, K_QUERY, fn, sql, len, n, values);
    op->mode = mode;
    op->hash = db_hash(sql, len);
    return run_op(L, p, op);
}

int db_pool_begin(lua_State *L, db_pool_t *p)
{
    db_conn_t *c = p->w->cur->db;
    int depth = c ? c->tx_depth : 0;
    char sql[48];
    db_tx_begin_sql(depth, sql, sizeof sql);
    db_op_t *op = op_new(L, K_BEGIN, "db.tx", sql, strlen(sql), 0, NULL);
    op->depth = depth;
    return run_op(L, p, op);
}

int db_pool_end(lua_State *L, db_pool_t *p, db_conn_t *c, int depth, int commit)
{
    db_error_t pre = { .code = NULL };
    int rc = 0, lost = c->tx_lost || !c->pg, intent = commit;
    if (lost) {
        db_set_error(&pre, "unavailable", "database unavailable: %s", "the connection was lost inside the transaction");
        rc = -1;
    } else if (commit && c->tx_err.code) {
        /* A statement failed and the function went on: COMMIT would silently roll back. */
        pre = c->tx_err;
        if (!pre.code) db_set_error(&pre, "invalid", "%s", "a statement in the transaction failed");
        rc = -1;
        commit = 0;
    }
    char sql[96];
    db_tx_end_sql(depth, commit, sql, sizeof sql);
    db_op_t *op = op_new(L, K_END, "db.tx", sql, strlen(sql), 0, NULL);
    op->depth = depth;
    op->commit = commit;
    op->mode = intent;
    op->end_rc = rc;
    op->end_err = pre;
    return run_op(L, p, op);   /* a lost connection: submit answers at once, with the error set above */
}

void db_request_end(worker_t *w, request_t *r)
{
    db_conn_t *c = r->db;
    (void)w;
    r->db = NULL;
    if (!c) return;
    log_warn("db: request %s ended inside db.tx; its connection is closed, which rolls the transaction back", r->id);
    if (c->pool) {
        db_error_t err;
        db_set_error(&err, "unavailable", "database unavailable: %s", "the request went away");
        conn_fail(c, &err);
    } else {
        db_conn_close(c);
    }
    c->tx_depth = 0;
    c->tx_lost = 0;
    memset(&c->tx_err, 0, sizeof c->tx_err);
    c->owner = NULL;
    if (c->pool) dispatch(c->pool);
}

void db_pool_free(worker_t *w)
{
    db_pool_t *p = w->binding[BIND_DB_POOL];
    if (!p) return;
    while (p->head) {   /* none by now: parked requests were cancelled before the workers stop */
        db_op_t *op = p->head;
        line_remove(p, op);
        op_free(op);
    }
    for (int i = 0; i < p->size; i++) {
        db_conn_t *c = &p->conns[i];
        db_op_t *op;
        while ((op = queue_pop(c))) op_free(op);
        if (c->connecting) {
            watch(c, -1, 0);
            PQfinish(c->connecting);
            c->connecting = NULL;
        }
        db_conn_close(c);
    }
    free(p->conns);
    free(p);
    w->binding[BIND_DB_POOL] = NULL;
}
