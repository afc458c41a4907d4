/* redis: URL, blocking set-up and the loop's connection (see redis.h). */
#include "redis.h"

#include <errno.h>
#include <hiredis/async.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "loop.h"
#include "hex.h"

/* ---- the URL ----------------------------------------------------------------------------- */

/* Copy s[0..n) %-decoded into out (outlen > 0). 0, or -1 if it does not fit or is malformed. */
static int pct_decode(const char *s, size_t n, char *out, size_t outlen)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int ch = (unsigned char)s[i];
        if (ch == '%') {
            if (i + 2 >= n) return -1;
            int hi = hex_digit(s[i + 1]), lo = hex_digit(s[i + 2]);
            if (hi < 0 || lo < 0) return -1;
            ch = hi * 16 + lo;
            i += 2;
        }
        if (o + 1 >= outlen) return -1;
        out[o++] = (char)ch;
    }
    out[o] = 0;
    return 0;
}

int redis_url_parse(const char *url, redis_url_t *u, char *err, size_t errlen)
{
    memset(u, 0, sizeof *u);
    u->port = 6379;
    /* No message here shows the URL: it may hold the password. */
    if (url && strncmp(url, "rediss:", 7) == 0) {
        snprintf(err, errlen, "REDIS_URL: the rediss scheme (TLS) is not supported");
        return -1;
    }
    if (!url || strncmp(url, "redis://", 8) != 0) {
        snprintf(err, errlen, "REDIS_URL: expecting the redis scheme with [:password@]host[:port][/db] (the value is not shown)");
        return -1;
    }
    const char *p = url + 8;
    const char *end = p + strcspn(p, "/?#");
    const char *at = NULL;
    for (const char *q = p; q < end; q++) if (*q == '@') at = q;
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *uend = colon ? colon : at;
        if (pct_decode(p, (size_t)(uend - p), u->user, sizeof u->user) < 0 ||
            (colon && pct_decode(colon + 1, (size_t)(at - colon - 1), u->password, sizeof u->password) < 0)) {
            snprintf(err, errlen, "REDIS_URL: malformed or too long user or password");
            return -1;
        }
        p = at + 1;
    }
    const char *hend, *port = NULL;
    if (*p == '[') {
        const char *rb = memchr(p, ']', (size_t)(end - p));
        if (!rb) { snprintf(err, errlen, "REDIS_URL: unterminated [IPv6] host"); return -1; }
        if (rb + 1 < end && rb[1] == ':') port = rb + 2;
        else if (rb + 1 != end) { snprintf(err, errlen, "REDIS_URL: junk after ]"); return -1; }
        p++;
        hend = rb;
    } else {
        const char *colon = memchr(p, ':', (size_t)(end - p));
        hend = colon ? colon : end;
        if (colon) port = colon + 1;
    }
    size_t hlen = (size_t)(hend - p);
    if (hlen == 0 || hlen >= sizeof u->host) { snprintf(err, errlen, "REDIS_URL: missing or too long host"); return -1; }
    memcpy(u->host, p, hlen);
    u->host[hlen] = 0;
    if (port) {
        char *e;
        long v = strtol(port, &e, 10);
        if (port == e || e != end || v < 1 || v > 65535) { snprintf(err, errlen, "REDIS_URL: bad port"); return -1; }
        u->port = (int)v;
    }
    if (*end == '/' && end[1] && end[1] != '?' && end[1] != '#') {
        char *e;
        long v = strtol(end + 1, &e, 10);
        if (e == end + 1 || (*e && *e != '?' && *e != '#') || v < 0 || v > 1000000) {
            snprintf(err, errlen, "REDIS_URL: the path must be a database number");
            return -1;
        }
        u->db = (int)v;
    }
    return 0;
}

/* ---- the blocking connection -------------------------------------------------------------- */

const char *redis_io_error(const redisContext *c, int saved_errno, const char *what, char *err, size_t errlen)
{
    snprintf(err, errlen, "redis %s: %s", what, c && c->errstr[0] ? c->errstr : strerror(saved_errno));
    if (c && c->err == REDIS_ERR_EOF) return "unavailable";
    if (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK || saved_errno == ETIMEDOUT || saved_errno == EINPROGRESS)
        return "timeout";
    return "unavailable";
}

int redis_stale(const redisContext *c)
{
    struct pollfd p = { .fd = c->fd, .events = POLLIN };
    return poll(&p, 1, 0) != 0;
}

/* Run one command on a fresh connection during connect (AUTH, SELECT). 0 or -1 with err. */
static int setup_cmd(redisContext *c, int argc, const char **argv, char *err, size_t errlen, const char **code)
{
    redisReply *r = redisCommandArgv(c, argc, argv, NULL);
    if (!r) { *code = redis_io_error(c, errno, argv[0], err, errlen); return -1; }
    int ok = r->type != REDIS_REPLY_ERROR;
    if (!ok) { snprintf(err, errlen, "redis %s: %s", argv[0], r->str); *code = "unavailable"; }
    freeReplyObject(r);
    return ok ? 0 : -1;
}

redisContext *redis_connect(const char *url, int timeout_ms, char *err, size_t errlen, const char **code)
{
    *code = "unavailable";
    if (!url) { snprintf(err, errlen, "REDIS_URL is not set"); return NULL; }
    redis_url_t u;
    if (redis_url_parse(url, &u, err, errlen) < 0) return NULL;
    struct timeval tv = { .tv_sec = timeout_ms / 1000, .tv_usec = (suseconds_t)(timeout_ms % 1000) * 1000 };
    errno = 0;
    redisContext *c = redisConnectWithTimeout(u.host, u.port, tv);
    if (!c) { snprintf(err, errlen, "redis connect: out of memory"); return NULL; }
    if (c->err) {
        int e = errno;
        char why[512];
        *code = redis_io_error(c, e, "connect", why, sizeof why);
        snprintf(err, errlen, "%s (%s:%d)", why, u.host, u.port);
        redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    redisEnableKeepAlive(c);
    char db[16];
    snprintf(db, sizeof db, "%d", u.db);
    const char *auth2[] = { "AUTH", u.password }, *auth3[] = { "AUTH", u.user, u.password }, *sel[] = { "SELECT", db };
    if ((u.password[0] && setup_cmd(c, u.user[0] ? 3 : 2, u.user[0] ? auth3 : auth2, err, errlen, code) < 0) ||
        (u.db && setup_cmd(c, 2, sel, err, errlen, code) < 0)) {
        redisFree(c);
        return NULL;
    }
    return c;
}

/* ---- the loop's connection ---------------------------------------------------------------- */

struct redis_async {
    struct loop *loop;
    char *url;               /* owned */
    redisAsyncContext *ac;   /* NULL until first use, and once hiredis or we dropped it */
    int fd;                  /* ac's socket while watched, else -1 */
    int events;              /* LOOP_* asked for by hiredis */
    const char *drop_code;   /* set while we drop ac on purpose: the code its waiters get */
};

/* One send: its commands' callbacks (refs) all point here; freed when the last one has come
 * back and nobody waits on it. */
struct redis_op {
    redis_async_t *as;
    redis_reply_cb cb;       /* NULL once finished, failed or forgotten */
    void *arg;
    loop_timer_t *timer;
    int n, got;              /* replies expected / delivered */
    int refs;                /* hiredis callbacks still to come */
    int timeout_ms;
    char *eval_cmd;          /* the formatted EVAL fallback (malloc), or NULL */
    int eval_len;
};

static void on_io(loop_t *loop, int fd, int events, void *arg)
{
    redis_async_t *as = arg;
    redisAsyncContext *ac = as->ac;
    (void)loop; (void)fd;
    if (!ac) return;
    if (events & LOOP_WRITE) {
        redisAsyncHandleWrite(ac);
        if (as->ac != ac) return;   /* freed on an error (cleanup cleared as->ac) */
    }
    if (events & LOOP_READ) redisAsyncHandleRead(ac);
}

static void ev_set(redis_async_t *as, int events)
{
    if (events == as->events || as->fd < 0) return;
    as->events = events;
    if (loop_watch(as->loop, as->fd, events, on_io, as) < 0)
        log_warn("redis: cannot watch the socket: %s", strerror(errno));
}

static void ev_add_read(void *p) { redis_async_t *as = p; ev_set(as, as->events | LOOP_READ); }
static void ev_del_read(void *p) { redis_async_t *as = p; ev_set(as, as->events & ~LOOP_READ); }
static void ev_add_write(void *p) { redis_async_t *as = p; ev_set(as, as->events | LOOP_WRITE); }
static void ev_del_write(void *p) { redis_async_t *as = p; ev_set(as, as->events & ~LOOP_WRITE); }

/* hiredis is freeing the context (an error, a disconnect, or our drop). */
static void ev_cleanup(void *p)
{
    redis_async_t *as = p;
    if (as->fd >= 0) loop_unwatch(as->loop, as->fd);
    as->fd = -1;
    as->events = 0;
    as->ac = NULL;
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    if (status != REDIS_OK) log_debug("redis: connect failed: %s", ac->errstr);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    if (status != REDIS_OK) log_debug("redis: disconnected: %s", ac->errstr);
}

/* AUTH / SELECT on a fresh connection: a failure shows in the commands behind it (NOAUTH). */
static void on_setup_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    const redisReply *r = reply;
    (void)ac;
    if (r && r->type == REDIS_REPLY_ERROR) log_warn("redis: %s: %s", (const char *)privdata, r->str);
}

static int as_connect(redis_async_t *as, char *err, size_t errlen)
{
    redis_url_t u;
    if (!as->url) { snprintf(err, errlen, "REDIS_URL is not set"); return -1; }
    if (redis_url_parse(as->url, &u, err, errlen) < 0) return -1;
    redisAsyncContext *ac = redisAsyncConnect(u.host, u.port);
    if (!ac) { snprintf(err, errlen, "redis connect: out of memory"); return -1; }
    if (ac->err) {
        snprintf(err, errlen, "redis connect: %s (%s:%d)", ac->errstr, u.host, u.port);
        redisAsyncFree(ac);
        return -1;
    }
    as->ac = ac;
    as->fd = ac->c.fd;
    as->events = -1;   /* nothing registered yet: the first ev_set adds the fd */
    ac->data = as;
    ac->ev.data = as;
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    ev_set(as, 0);
    char db[16];
    snprintf(db, sizeof db, "%d", u.db);
    const char *auth[] = { "AUTH", u.user[0] ? u.user : u.password, u.password }, *sel[] = { "SELECT", db };
    if (u.password[0]) redisAsyncCommandArgv(ac, on_setup_reply, "AUTH", u.user[0] ? 3 : 2, auth, NULL);
    if (u.db) redisAsyncCommandArgv(ac, on_setup_reply, "SELECT", 2, sel, NULL);
    return 0;
}

/* Free ac now: every command still on it calls back with no reply, answered with code. */
static void as_drop(redis_async_t *as, const char *code)
{
    redisAsyncContext *ac = as->ac;
    if (!ac) return;
    as->drop_code = code;
    redisAsyncFree(ac);   /* runs the callbacks, then ev_cleanup */
    as->drop_code = NULL;
    as->ac = NULL;
}

static void op_free(redis_op_t *op)
{
    if (op->eval_cmd) redisFreeCommand(op->eval_cmd);
    free(op);
}

/* The op is over for its caller (all replies in, or failed): no more calls. */
static void op_end(redis_op_t *op)
{
    if (op->timer) loop_timer_cancel(op->as->loop, op->timer);
    op->timer = NULL;
    op->cb = NULL;
}

static void op_fail(redis_op_t *op, const char *err, const char *code)
{
    redis_reply_cb cb = op->cb;
    void *arg = op->arg;
    int i = op->got;
    op_end(op);
    cb(arg, i, NULL, err, code);
}

void redis_async_forget(redis_op_t *op)
{
    op_end(op);
    if (!op->refs) op_free(op);
}

static void on_timeout(loop_t *loop, void *arg)
{
    redis_op_t *op = arg;
    redis_async_t *as = op->as;
    char err[96];
    (void)loop;
    op->timer = NULL;
    snprintf(err, sizeof err, "redis read: no reply within %d ms", op->timeout_ms);
    op_fail(op, err, "timeout");
    /* The replies may never come (a blocked server): start afresh. This frees the op through
     * its callbacks, so it is the last thing done with it. */
    as_drop(as, "timeout");
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata);

/* A reply (or NULL: the connection failed or was dropped) for one of the op's commands. */
static void take_reply(redis_op_t *op, redisAsyncContext *ac, const redisReply *rep)
{
    if (!rep) {
        char err[256];
        const char *code = op->as->drop_code ? op->as->drop_code : "unavailable";
        if (ac->err) snprintf(err, sizeof err, "redis: %s", ac->errstr);
        else snprintf(err, sizeof err, "redis: the connection was %s", op->as->drop_code ? "dropped after a timeout" : "closed");
        op_fail(op, err, code);
        return;
    }
    if (op->eval_cmd && rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "NOSCRIPT", 8) == 0) {
        /* Not cached on this server (a restart, SCRIPT FLUSH): EVAL loads it. */
        char *cmd = op->eval_cmd;
        op->eval_cmd = NULL;
        int rc = redisAsyncFormattedCommand(ac, on_reply, op, cmd, (size_t)op->eval_len);
        redisFreeCommand(cmd);
        if (rc != REDIS_OK) { op_fail(op, "redis: cannot send EVAL", "unavailable"); return; }
        op->refs++;
        return;
    }
    int i = op->got++;
    redis_reply_cb cb = op->cb;
    void *arg = op->arg;
    if (op->got == op->n) op_end(op);
    cb(arg, i, rep, NULL, NULL);
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    redis_op_t *op = privdata;
    op->refs--;
    if (op->cb) take_reply(op, ac, reply);
    if (!op->refs && !op->cb) op_free(op);
}

redis_async_t *redis_async_new(struct loop *loop, const char *url)
{
    redis_async_t *as = calloc(1, sizeof *as);
    if (!as) return NULL;
    as->loop = loop;
    as->fd = -1;
    if (url && !(as->url = strdup(url))) { free(as); return NULL; }
    return as;
}

void redis_async_reset(redis_async_t *as)
{
    if (as) as_drop(as, "unavailable");
}

void redis_async_free(redis_async_t *as)
{
    if (!as) return;
    as_drop(as, "unavailable");
    free(as->url);
    free(as);
}

redis_op_t *redis_async_send(redis_async_t *as, int timeout_ms, int n, const redis_cmd_t *cmds,
                             const char *script, size_t script_len, redis_reply_cb cb, void *arg,
                             char *err, size_t errlen)
{
    if (!as->ac && as_connect(as, err, errlen) < 0) return NULL;
    redis_op_t *op = calloc(1, sizeof *op);
    if (!op) { snprintf(err, errlen, "redis: out of memory"); return NULL; }
    op->as = as;
    op->n = n;
    op->timeout_ms = timeout_ms;
    if (script && n == 1) {
        /* EVAL script numkeys keys... args..., formatted now: the caller's strings will not wait. */
        const char **argv = cmds[0].argv;
        size_t *len = cmds[0].len;
        const char *argv0 = argv[0], *argv1 = argv[1];
        size_t len0 = len[0], len1 = len[1];
        argv[0] = "EVAL"; len[0] = 4;
        argv[1] = script; len[1] = script_len;
        op->eval_len = redisFormatCommandArgv(&op->eval_cmd, cmds[0].argc, argv, len);
        argv[0] = argv0; len[0] = len0;
        argv[1] = argv1; len[1] = len1;
        if (op->eval_len < 0) { op_free(op); snprintf(err, errlen, "redis: out of memory"); return NULL; }
    }
    for (int i = 0; i < n; i++) {
        if (redisAsyncCommandArgv(as->ac, on_reply, op, cmds[i].argc, cmds[i].argv, cmds[i].len) != REDIS_OK) {
            snprintf(err, errlen, "redis: %s", as->ac->errstr[0] ? as->ac->errstr : "cannot queue the command");
            if (!op->refs) op_free(op);   /* else the queued ones' callbacks free it (cb is NULL) */
            return NULL;
        }
        op->refs++;
    }
    op->timer = loop_timer_add(as->loop, (uint64_t)timeout_ms, on_timeout, op);
    if (!op->timer) { snprintf(err, errlen, "redis: out of memory"); return NULL; }   /* refs > 0: freed by its callbacks */
    op->cb = cb;
    op->arg = arg;
    return op;
}
