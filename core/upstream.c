/* upstream: keep-alive HTTP/1.1 to one origin on a thread's loop (see upstream.h). */
#include "upstream.h"

#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "loop.h"

#define MAX_HEAD_BYTES ((size_t)64 * 1024)
#define READ_CHUNK 16384

enum { C_CONNECTING, C_BUSY, C_IDLE };
enum { F_NONE, F_LENGTH, F_CHUNKED, F_CLOSE };
enum { K_SIZE, K_DATA, K_DATA_END, K_TRAILER, K_DONE };

typedef struct conn conn_t;

struct conn {
    upstream_t *u;
    int fd;
    int state;
    int events;                  /* LOOP_* registered */
    int reused;                  /* it has answered a request before */
    upstream_req_t *req;         /* C_CONNECTING / C_BUSY */
    loop_timer_t *ctimer;        /* connect deadline */
    uint64_t idle_since;
    unsigned addr_gen;           /* u's address generation it was opened to */
    conn_t *next, *prev;         /* u->conns */
    conn_t *inext, *iprev;       /* u->idle (most recent first) */
};

struct upstream_req {
    upstream_t *u;
    conn_t *c;
    buf_t out;                   /* the request bytes (owned) */
    size_t sent;
    int head_only, retry_ok, retried;
    upstream_done_cb done;
    void *arg;
    loop_timer_t *timer;         /* the whole request's deadline */
    upstream_req_t *wnext;       /* u's queue of requests waiting for a connection */
    int waiting;
    /* the answer */
    buf_t in;                    /* head, and a chunked body before decoding */
    size_t pos;                  /* parsed up to here in `in` */
    int got_head, framing, chunk, keep_alive;
    uint64_t remaining;          /* F_LENGTH: body bytes; F_CHUNKED: of the current chunk */
    size_t received;
    upstream_resp_t resp;
    enum upstream_err end_err;   /* an end deferred out of upstream_send (end_defer) */
    char why[96];
    loop_defer_t end_defer;
};

struct upstream {
    loop_t *loop;
    upstream_opts_t o;
    conn_t *conns, *idle, *idle_tail;   /* idle: most recently used first */
    int nconns, nidle;
    upstream_req_t *wait_head, *wait_tail;
    unsigned addr_gen;           /* bumped by upstream_set_addr */
    int sending;                 /* inside upstream_send: callbacks are deferred to the loop */
};

static void dispatch(upstream_t *u, upstream_req_t *q);
static void pump(upstream_t *u);
static void on_io(loop_t *loop, int fd, int events, void *arg);

/* ---- connections ----------------------------------------------------------------------- */

static void watch(conn_t *c, int events)
{
    if (c->events == events) return;   /* no syscall for an unchanged interest */
    c->events = events;
    loop_watch(c->u->loop, c->fd, events, on_io, c);
}

static void idle_unlink(conn_t *c)
{
    upstream_t *u = c->u;
    if (c->iprev) c->iprev->inext = c->inext; else u->idle = c->inext;
    if (c->inext) c->inext->iprev = c->iprev; else u->idle_tail = c->iprev;
    c->inext = c->iprev = NULL;
    u->nidle--;
}

/* Take the most recently used idle connection off the list (u->idle non-empty). */
static conn_t *idle_pop(upstream_t *u)
{
    conn_t *c = u->idle;
    u->idle = c->inext;
    if (u->idle) u->idle->iprev = NULL; else u->idle_tail = NULL;
    c->inext = c->iprev = NULL;
    u->nidle--;
    c->state = C_BUSY;
    return c;
}

static void conn_close(conn_t *c)
{
    upstream_t *u = c->u;
    if (c->state == C_IDLE) idle_unlink(c);
    if (c->ctimer) loop_timer_cancel(u->loop, c->ctimer);
    loop_unwatch(u->loop, c->fd);
    close(c->fd);
    if (c->prev) c->prev->next = c->next; else u->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    u->nconns--;
    free(c);
}

static void on_connect_timeout(loop_t *loop, void *arg);

/* A new connection for q (connect started); NULL with errno when the socket fails. */
static conn_t *conn_open(upstream_t *u, upstream_req_t *q)
{
    conn_t *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->fd = socket(u->o.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) { free(c); return NULL; }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->u = u;
    c->addr_gen = u->addr_gen;
    c->events = -1;
    c->next = u->conns;
    if (u->conns) u->conns->prev = c;
    u->conns = c;
    u->nconns++;
    c->req = q;
    q->c = c;
    if (connect(c->fd, (const struct sockaddr *)&u->o.addr, u->o.addrlen) == 0) {
        c->state = C_BUSY;
    } else if (errno == EINPROGRESS) {
        c->state = C_CONNECTING;
        c->ctimer = loop_timer_add(u->loop, (uint64_t)u->o.connect_ms, on_connect_timeout, c);
    } else {
        int e = errno;
        q->c = NULL;
        conn_close(c);
        errno = e;
        return NULL;
    }
    watch(c, LOOP_READ | LOOP_WRITE);
    return c;
}

/* ---- ending a request ------------------------------------------------------------------ */

static void req_free(upstream_req_t *q)
{
    if (q->timer) loop_timer_cancel(q->u->loop, q->timer);
    loop_defer_cancel(q->u->loop, &q->end_defer);
    buf_free(&q->out);
    buf_free(&q->in);
    buf_free(&q->resp.head);
    buf_free(&q->resp.body);
    free(q);
}

static void req_end(upstream_req_t *q, enum upstream_err err, const char *why);

static void on_end_later(loop_t *loop, void *arg)
{
    upstream_req_t *q = arg;
    (void)loop;
    req_end(q, q->end_err, q->why);
}

/* Call q back and free it; its connection (if any) has been dealt with. Never from inside
 * upstream_send: the caller has not even got q yet, so the end waits for the loop. */
static void req_end(upstream_req_t *q, enum upstream_err err, const char *why)
{
    upstream_t *u = q->u;
    q->c = NULL;
    if (u->sending) {
        q->end_err = err;
        if (why != q->why) snprintf(q->why, sizeof q->why, "%s", why ? why : "");
        if (q->timer) loop_timer_cancel(u->loop, q->timer);   /* the deadline no longer applies */
        q->timer = NULL;
        loop_defer(u->loop, &q->end_defer, on_end_later, q);
        return;
    }
    q->done(q, err, why, err == UPSTREAM_OK ? &q->resp : NULL, q->arg);
    req_free(q);
    pump(u);
}

/* q failed on its connection: close it, then retry once on a fresh one when the connection
 * was reused, nothing came back and repeating is safe; else call q back. */
static void req_fail(upstream_req_t *q, enum upstream_err err, const char *why)
{
    conn_t *c = q->c;
    int retry = err == UPSTREAM_UNAVAILABLE && c && c->reused && q->received == 0 && q->retry_ok && !q->retried;
    if (c) { c->req = NULL; conn_close(c); }
    q->c = NULL;
    if (retry) {
        q->retried = 1;
        q->sent = 0;
        dispatch(q->u, q);
        return;
    }
    req_end(q, err, why);
}

/* The answer is complete: the connection goes back to the idle list when it can serve more. */
static void req_done(upstream_req_t *q)
{
    conn_t *c = q->c;
    upstream_t *u = q->u;
    c->req = NULL;
    if (q->keep_alive && q->framing != F_CLOSE && q->pos == q->in.len && c->addr_gen == u->addr_gen) {
        c->state = C_IDLE;
        c->reused = 1;
        c->idle_since = loop_now_ns();
        c->inext = u->idle;
        c->iprev = NULL;
        if (u->idle) u->idle->iprev = c; else u->idle_tail = c;
        u->idle = c;
        u->nidle++;
        watch(c, LOOP_READ);   /* a close by the server is seen while idle */
        if (u->nidle > u->o.max_idle) conn_close(u->idle_tail);   /* the least recently used */
    } else {
        conn_close(c);
    }
    req_end(q, UPSTREAM_OK, NULL);
}

static void on_timeout(loop_t *loop, void *arg)
{
    upstream_req_t *q = arg;
    (void)loop;
    q->timer = NULL;   /* freed by the loop */
    if (q->waiting) {
        upstream_t *u = q->u;
        upstream_req_t **pp = &u->wait_head, *prev = NULL;
        while (*pp != q) { prev = *pp; pp = &(*pp)->wnext; }
        *pp = q->wnext;
        if (u->wait_tail == q) u->wait_tail = prev;
        q->waiting = 0;
    }
    q->retried = 1;   /* never retried past its deadline */
    req_fail(q, UPSTREAM_TIMEOUT, "the upstream did not answer in time");
}

static void on_connect_timeout(loop_t *loop, void *arg)
{
    conn_t *c = arg;
    (void)loop;
    c->ctimer = NULL;
    upstream_req_t *q = c->req;
    q->retried = 1;
    req_fail(q, UPSTREAM_TIMEOUT, "connect timed out");
}

/* ---- sending --------------------------------------------------------------------------- */

/* Send what is left of c's request. 0, or -1 when it failed (c is gone). */
static int do_write(conn_t *c)
{
    upstream_req_t *q = c->req;
    while (q->sent < q->out.len) {
        ssize_t n = send(c->fd, q->out.data + q->sent, q->out.len - q->sent, MSG_NOSIGNAL);
        if (n > 0) { q->sent += (size_t)n; continue; }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) { watch(c, LOOP_READ | LOOP_WRITE); return 0; }
        char why[96];
        snprintf(why, sizeof why, "send: %s", strerror(errno));
        req_fail(q, UPSTREAM_UNAVAILABLE, why);
        return -1;
    }
    watch(c, LOOP_READ);
    return 0;
}

/* ---- parsing the answer ---------------------------------------------------------------- */

static int header_is(const char *name, size_t n, const char *want)
{
    return strlen(want) == n && strncasecmp(name, want, n) == 0;
}

static int value_has_token(const char *v, size_t n, const char *token)
{
    size_t t = strlen(token);
    for (size_t i = 0; i + t <= n; i++)
        if (strncasecmp(v + i, token, t) == 0 && (i == 0 || v[i - 1] == ' ' || v[i - 1] == ',') &&
            (i + t == n || v[i + t] == ' ' || v[i + t] == ',' || v[i + t] == ';'))
            return 1;
    return 0;
}

/* Parse the head in q->in[0, end): status, header lines, framing. 0, 1 for an interim (1xx)
 * answer to skip, -1 when malformed. */
static int parse_head(upstream_req_t *q, size_t end)
{
    const char *p = q->in.data, *stop = p + end;
    const char *eol = memchr(p, '\n', (size_t)(stop - p));
    if (!eol || eol - p < 12 || memcmp(p, "HTTP/1.", 7) != 0 || p[8] != ' ') return -1;
    int http10 = p[7] == '0';
    int status = 0;
    for (int i = 9; i < 12; i++) {
        if (p[i] < '0' || p[i] > '9') return -1;
        status = status * 10 + (p[i] - '0');
    }
    if (status < 100 || status > 599) return -1;
    if (status < 200) return 1;
    int chunked = 0, has_length = 0, close = http10, keep = 0;
    uint64_t length = 0;
    q->resp.head.len = 0;
    for (p = eol + 1; p < stop;) {
        const char *e = memchr(p, '\n', (size_t)(stop - p));
        if (!e) e = stop;
        const char *lend = e;
        while (lend > p && (lend[-1] == '\r')) lend--;
        if (lend > p) {
            const char *colon = memchr(p, ':', (size_t)(lend - p));
            if (!colon || colon == p) return -1;
            const char *v = colon + 1;
            while (v < lend && (*v == ' ' || *v == '\t')) v++;
            size_t nn = (size_t)(colon - p), vn = (size_t)(lend - v);
            if (header_is(p, nn, "Content-Length")) {
                uint64_t n = 0;
                if (!vn) return -1;
                for (size_t i = 0; i < vn; i++) {
                    if (v[i] < '0' || v[i] > '9' || n > UINT64_MAX / 10 - 10) return -1;
                    n = n * 10 + (uint64_t)(v[i] - '0');
                }
                if (has_length && n != length) return -1;   /* conflicting lengths (RFC 9112 §6.3) */
                has_length = 1;
                length = n;
            } else if (header_is(p, nn, "Transfer-Encoding")) {
                if (!value_has_token(v, vn, "chunked")) return -1;   /* no other coding is ours to undo */
                chunked = 1;
            } else if (header_is(p, nn, "Connection")) {
                if (value_has_token(v, vn, "close")) close = 1;
                if (value_has_token(v, vn, "keep-alive")) keep = 1;
            }
            buf_add(&q->resp.head, p, (size_t)(lend - p));
            buf_add(&q->resp.head, "\r\n", 2);
        }
        p = e + 1;
    }
    if (q->resp.head.failed) return -1;
    q->resp.status = status;
    q->keep_alive = !close || (http10 && keep);
    if (q->head_only || status == 204 || status == 304) q->framing = F_NONE;
    else if (chunked) { q->framing = F_CHUNKED; q->chunk = K_SIZE; }
    else if (has_length) { q->framing = length ? F_LENGTH : F_NONE; q->remaining = length; }
    else { q->framing = F_CLOSE; q->keep_alive = 0; }
    return 0;
}

/* Decode the chunked body in q->in from q->pos into resp.body. 1 when the last chunk and the
 * trailers are in, 0 for more, -1 when malformed. */
static int dechunk(upstream_req_t *q)
{
    for (;;) {
        const char *p = q->in.data + q->pos;
        size_t avail = q->in.len - q->pos;
        if (q->chunk == K_SIZE || q->chunk == K_TRAILER) {
            const char *eol = memchr(p, '\n', avail);
            if (!eol) return avail > 1024 ? -1 : 0;
            size_t line = (size_t)(eol - p) + 1;
            if (q->chunk == K_TRAILER) {
                q->pos += line;
                if (line <= 2) { q->chunk = K_DONE; return 1; }   /* the empty line */
                continue;
            }
            uint64_t n = 0;
            size_t i = 0;
            for (; i < line; i++) {
                char ch = p[i];
                int d = ch >= '0' && ch <= '9' ? ch - '0' : (ch | 32) >= 'a' && (ch | 32) <= 'f' ? (ch | 32) - 'a' + 10 : -1;
                if (d < 0) break;
                if (n > (UINT64_MAX >> 4)) return -1;
                n = n * 16 + (uint64_t)d;
            }
            if (i == 0 || (p[i] != '\r' && p[i] != '\n' && p[i] != ';' && p[i] != ' ')) return -1;
            q->pos += line;
            q->remaining = n;
            q->chunk = n ? K_DATA : K_TRAILER;
        } else if (q->chunk == K_DATA) {
            if (!avail) return 0;
            size_t take = avail < q->remaining ? avail : (size_t)q->remaining;
            buf_add(&q->resp.body, p, take);
            q->pos += take;
            q->remaining -= take;
            if (!q->remaining) q->chunk = K_DATA_END;
        } else if (q->chunk == K_DATA_END) {
            if (avail < 2) {
                if (avail == 1 && p[0] != '\r' && p[0] != '\n') return -1;
                if (avail == 1 && p[0] == '\n') { q->pos++; q->chunk = K_SIZE; continue; }
                return 0;
            }
            if (p[0] == '\r' && p[1] == '\n') q->pos += 2;
            else if (p[0] == '\n') q->pos += 1;
            else return -1;
            q->chunk = K_SIZE;
        } else {
            return 1;
        }
        if (q->resp.body.failed) return -1;
        /* Everything parsed so far is dropped now and then, so `in` stays small. */
        if (q->pos > 65536 && q->pos == q->in.len) { q->in.len = 0; q->pos = 0; }
    }
}

/* Take the n bytes just read into the answer: 1 complete, 0 more to come, -1 failed (q was
 * called back and freed, or retried). */
static int take(upstream_req_t *q, int eof)
{
    upstream_t *u = q->u;
    if (!q->got_head) {
        for (;;) {
            const char *p = q->in.data + q->pos;
            size_t avail = q->in.len - q->pos;
            const char *end = avail >= 4 ? memmem(p, avail, "\r\n\r\n", 4) : NULL;
            if (!end) {
                if (avail > MAX_HEAD_BYTES) { req_fail(q, UPSTREAM_UNAVAILABLE, "the upstream's header is too large"); return -1; }
                if (eof) { req_fail(q, UPSTREAM_UNAVAILABLE, "the upstream closed the connection before answering"); return -1; }
                return 0;
            }
            size_t head_end = (size_t)(end - q->in.data) + 4;
            /* parse_head reads from the start of `in`: drop what came before (an interim answer) */
            if (q->pos) {
                memmove(q->in.data, q->in.data + q->pos, q->in.len - q->pos);
                q->in.len -= q->pos;
                head_end -= q->pos;
                q->pos = 0;
            }
            int rc = parse_head(q, head_end);
            if (rc < 0) { q->retried = 1; req_fail(q, UPSTREAM_UNAVAILABLE, "the upstream sent a malformed answer"); return -1; }
            q->pos = head_end;
            if (rc == 1) continue;   /* 1xx: the real answer follows */
            q->got_head = 1;
            break;
        }
        if (q->framing == F_LENGTH || q->framing == F_CLOSE) {   /* the rest is body */
            buf_add(&q->resp.body, q->in.data + q->pos, q->in.len - q->pos);
            if (q->framing == F_LENGTH) {
                size_t n = q->in.len - q->pos;
                if (n > q->remaining) { q->keep_alive = 0; q->resp.body.len -= n - (size_t)q->remaining; n = (size_t)q->remaining; }
                q->remaining -= n;
            }
            q->pos = q->in.len;
        }
    }
    if (u->o.max_body && q->resp.body.len > u->o.max_body) {
        q->retried = 1;
        req_fail(q, UPSTREAM_TOO_LARGE, "the upstream's answer is too large");
        return -1;
    }
    switch (q->framing) {
    case F_NONE: return 1;
    case F_LENGTH:
        if (!q->remaining) return 1;
        break;
    case F_CHUNKED: {
        int rc = dechunk(q);
        if (rc < 0) { q->retried = 1; req_fail(q, UPSTREAM_UNAVAILABLE, "the upstream sent a malformed chunked body"); return -1; }
        if (rc == 1) return 1;
        break;
    }
    case F_CLOSE:
        if (eof) return 1;
        return 0;
    }
    if (eof) { q->retried = 1; req_fail(q, UPSTREAM_UNAVAILABLE, "the upstream closed the connection mid-answer"); return -1; }
    if (q->resp.body.failed || q->in.failed) { q->retried = 1; req_fail(q, UPSTREAM_UNAVAILABLE, "out of memory"); return -1; }
    return 0;
}

static void do_read(conn_t *c)
{
    upstream_req_t *q = c->req;
    char tmp[READ_CHUNK];   /* one recv into the stack, then exactly what came into the heap */
    for (;;) {
        size_t room = sizeof tmp;
        int direct = q->got_head && q->framing == F_LENGTH;
        if (direct && q->remaining < room) room = (size_t)q->remaining;
        ssize_t n = recv(c->fd, tmp, room, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (n < 0) {
            char why[96];
            snprintf(why, sizeof why, "recv: %s", strerror(errno));
            req_fail(q, UPSTREAM_UNAVAILABLE, why);
            return;
        }
        q->received += (size_t)n;
        /* Body bytes of a known length go straight into the body, the rest through `in`. */
        if (direct) {
            buf_add(&q->resp.body, tmp, (size_t)n);
            q->remaining -= (uint64_t)n;
        } else {
            buf_add(&q->in, tmp, (size_t)n);
        }
        int rc = take(q, n == 0);
        if (rc < 0) return;
        if (rc == 1) { req_done(q); return; }
        if ((size_t)n < room) return;   /* drained for now: epoll says when there is more */
    }
}

static void on_io(loop_t *loop, int fd, int events, void *arg)
{
    conn_t *c = arg;
    (void)loop; (void)fd;
    if (c->state == C_IDLE) {   /* the server closed it (or sent what nobody asked for) */
        conn_close(c);
        return;
    }
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
        if (err) {
            char why[96];
            snprintf(why, sizeof why, "connect: %s", strerror(err));
            c->req->retried = 1;
            req_fail(c->req, UPSTREAM_UNAVAILABLE, why);
            return;
        }
        c->state = C_BUSY;
        if (c->ctimer) loop_timer_cancel(c->u->loop, c->ctimer);
        c->ctimer = NULL;
        do_write(c);
        return;
    }
    if ((events & LOOP_WRITE) && c->req->sent < c->req->out.len && do_write(c) < 0) return;
    if (events & LOOP_READ) do_read(c);
}

/* ---- dispatching ----------------------------------------------------------------------- */

/* Put q on a connection: an idle one, a new one, or in line for one. */
static void dispatch(upstream_t *u, upstream_req_t *q)
{
    uint64_t now = loop_now_ns();
    while (u->idle) {
        conn_t *c = idle_pop(u);
        if ((now - c->idle_since) / 1000000 >= (uint64_t)u->o.idle_ms) { conn_close(c); continue; }
        c->req = q;
        q->c = c;
        do_write(c);
        return;
    }
    if (u->nconns < u->o.max_conns) {
        conn_t *c = conn_open(u, q);
        if (!c) {
            snprintf(q->why, sizeof q->why, "connect: %s", strerror(errno));
            q->retried = 1;
            req_end(q, UPSTREAM_UNAVAILABLE, q->why);
            return;
        }
        if (c->state == C_BUSY) do_write(c);
        return;
    }
    q->waiting = 1;
    q->wnext = NULL;
    if (u->wait_tail) u->wait_tail->wnext = q; else u->wait_head = q;
    u->wait_tail = q;
}

/* A connection came free: serve the requests in line. */
static void pump(upstream_t *u)
{
    while (u->wait_head && (u->idle || u->nconns < u->o.max_conns)) {
        upstream_req_t *q = u->wait_head;
        u->wait_head = q->wnext;
        if (!u->wait_head) u->wait_tail = NULL;
        q->waiting = 0;
        dispatch(u, q);
    }
}

/* ---- API ------------------------------------------------------------------------------- */

upstream_t *upstream_new(loop_t *loop, const upstream_opts_t *opts)
{
    upstream_t *u = calloc(1, sizeof *u);
    if (!u) return NULL;
    u->loop = loop;
    u->o = *opts;
    if (u->o.max_conns < 1) u->o.max_conns = 1;
    if (u->o.max_idle < 1 || u->o.max_idle > u->o.max_conns) u->o.max_idle = u->o.max_conns;
    return u;
}

void upstream_free(upstream_t *u)
{
    if (!u) return;
    while (u->wait_head) {
        upstream_req_t *q = u->wait_head;
        u->wait_head = q->wnext;
        req_free(q);
    }
    conn_t *next;
    for (conn_t *c = u->conns; c; c = next) {
        next = c->next;
        if (c->req) req_free(c->req);
        if (c->ctimer) loop_timer_cancel(u->loop, c->ctimer);
        loop_unwatch(u->loop, c->fd);
        close(c->fd);
        free(c);
    }
    free(u);
}

upstream_req_t *upstream_send(upstream_t *u, buf_t *bytes, int head_only, int retry_ok,
                              upstream_done_cb done, void *arg)
{
    upstream_req_t *q = calloc(1, sizeof *q);
    if (!q) return NULL;
    q->timer = loop_timer_add(u->loop, (uint64_t)u->o.timeout_ms, on_timeout, q);
    if (!q->timer) { free(q); return NULL; }
    q->u = u;
    q->out = *bytes;
    buf_init(bytes);
    q->head_only = head_only;
    q->retry_ok = retry_ok;
    q->done = done;
    q->arg = arg;
    buf_init(&q->in);
    buf_init(&q->resp.head);
    buf_init(&q->resp.body);
    u->sending = 1;
    dispatch(u, q);
    u->sending = 0;
    return q;
}

void upstream_cancel(upstream_req_t *q)
{
    upstream_t *u = q->u;
    if (q->waiting) {
        upstream_req_t **pp = &u->wait_head, *prev = NULL;
        while (*pp != q) { prev = *pp; pp = &(*pp)->wnext; }
        *pp = q->wnext;
        if (u->wait_tail == q) u->wait_tail = prev;
    }
    if (q->c) { q->c->req = NULL; conn_close(q->c); }
    req_free(q);
    pump(u);
}

void upstream_set_addr(upstream_t *u, const struct sockaddr_storage *addr, socklen_t addrlen)
{
    memcpy(&u->o.addr, addr, sizeof u->o.addr);
    u->o.addrlen = addrlen;
    u->addr_gen++;
    while (u->idle) conn_close(idle_pop(u));   /* idle ones to the old address */
}

int upstream_connections(const upstream_t *u) { return u ? u->nconns : 0; }
