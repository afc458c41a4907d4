/* db.wait_notify(channel, timeout_s): wait for a PostgreSQL NOTIFY on the worker's own
 * connection — for runners, which may block (the outbox relay wakes on its service's commits
 * instead of polling; lib.outbox). Never on an HTTP thread: it refuses there (the loop rule).
 *
 *   local got, err, code = db.wait_notify("mercato_outbox", 0.15)   -- true | false (timeout)
 *
 * The first call LISTENs on the session (again after a reconnect: db_conn_close clears
 * `listening`); notifications that arrived while the relay ran its own statements are queued
 * by libpq and returned at once. All pending notifications are drained per call: one wake-up
 * covers a burst of commits. */
#include <errno.h>
#include <lauxlib.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "db.h"
#include "../host/worker.h"

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Drain libpq's queue. → how many notifications on channel were in it. */
static int drain(PGconn *pg, const char *channel)
{
    int n = 0;
    PGnotify *nt;
    while ((nt = PQnotifies(pg)) != NULL) {
        if (strcmp(nt->relname, channel) == 0) n++;
        PQfreemem(nt);
    }
    return n;
}

static int failed(lua_State *L, db_conn_t *c, const char *why)
{
    db_error_t err;
    memset(&err, 0, sizeof err);
    db_set_error(&err, "unavailable", "database unavailable: %s", why);
    if (c) db_conn_close(c);
    return db_push_failure(L, "db.wait_notify", &err);
}

int db_l_wait_notify(lua_State *L)
{
    worker_t *w = lua_touserdata(L, lua_upvalueindex(1));
    size_t len;
    const char *channel = luaL_checklstring(L, 1, &len);
    double timeout = luaL_checknumber(L, 2);
    if (!w) return luaL_error(L, "db.wait_notify: no database here (scripts are being checked)");
    if (w->loop) return luaL_error(L, "db.wait_notify blocks: call it from a runner (consumers.lua, jobs.lua), never a handler");
    if (len < 1 || len > 63 || strspn(channel, "abcdefghijklmnopqrstuvwxyz0123456789_") != len)
        return luaL_argerror(L, 1, "a channel name of 1 to 63 lower-case letters, digits or _");
    if (!(timeout >= 0 && timeout <= 3600)) return luaL_argerror(L, 2, "a timeout of 0 to 3600 seconds");

    db_conn_t *c = db_conn_of(w);
    if (!c) return failed(L, NULL, "out of memory");
    if (c->tx_depth > 0) return luaL_error(L, "db.wait_notify inside db.tx: a NOTIFY is only seen between transactions");
    if (!c->listening || !c->pg) {
        char sql[96];
        db_error_t err;
        memset(&err, 0, sizeof err);
        snprintf(sql, sizeof sql, "LISTEN %s", channel);
        if (db_conn_command(c, sql, &err) < 0) return db_push_failure(L, "db.wait_notify", &err);
        c->listening = 1;
    }
    uint64_t deadline = now_ms() + (uint64_t)(timeout * 1000.0);
    for (;;) {
        if (!PQconsumeInput(c->pg)) return failed(L, c, PQerrorMessage(c->pg));
        if (drain(c->pg, channel) > 0) { lua_pushboolean(L, 1); return 1; }
        uint64_t now = now_ms();
        if (now >= deadline) { lua_pushboolean(L, 0); return 1; }
        struct pollfd p = { .fd = PQsocket(c->pg), .events = POLLIN };
        if (p.fd < 0) return failed(L, c, "no socket");
        int rc = poll(&p, 1, (int)(deadline - now));
        if (rc < 0 && errno != EINTR) return failed(L, c, strerror(errno));
        if (rc > 0 && (p.revents & (POLLERR | POLLHUP | POLLNVAL))) return failed(L, c, "the connection was closed");
    }
}
