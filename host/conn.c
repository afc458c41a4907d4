/* conn: HTTP/1.1 connections on one thread's loop — see conn.h.
 *
 * The common exchange costs three system calls: the loop's epoll_wait, one recv that brings
 * the whole request, one sendmsg that writes the status line, headers and body together. A
 * request that waits on I/O changes no watch (level-triggered: a connection stays watched for
 * reading, and bytes that arrive meanwhile are kept for the next request), so parking is free.
 *
 * Nothing here frees a request while the server may be using it: a connection is closed, and
 * a request's done hook called, only from the loop's own callbacks (I/O, timers, deferred
 * calls) — never inside conn_respond or a hook. */
#include "conn.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "../core/log.h"
#include "secure_headers.h"

#define IN_START 4096            /* a connection's input buffer at first */
#define HEAD_MAX ((size_t)16 * 1024)   /* a request head, request line and fields (431/414 past it) */
#define BODY_READ 65536          /* the input buffer while a large body streams in */
#define LINGER_MS 2000           /* after an answer that left input unread: discard, then close */
#define ACCEPT_BATCH 32

enum conn_state {
    C_HEAD,      /* waiting for a request head (maybe part of one is in) */
    C_BODY,      /* the head is in, its body is arriving */
    C_WAIT,      /* the request is in: its answer is awaited or being written */
    C_LINGER     /* answered and closing: input is read and dropped until the client closes */
};

struct conn {
    conn_set_t *set;
    conn_t *next, *prev;
    int fd;
    int watched;                 /* the events the loop watches for */
    struct sockaddr_storage peer;
    void *tag;
    enum conn_state state;

    char *in;                    /* input: in[in_off, in_len) is unread */
    size_t in_len, in_off, in_cap;
    size_t scan;                 /* http1_head_end's resume point */
    uint64_t last_ns;            /* the last byte read or written */
    uint64_t head_ns;            /* the first byte of the head being read (0: none yet) */
    uint64_t linger_ns;          /* C_LINGER: closed at this time at the latest */

    struct request *req;         /* the request being served */
    enum http1_framing framing;
    unsigned long long body_left;
    http1_chunked_t chunked;
    unsigned head_only : 1;      /* HEAD: headers only */
    unsigned http10 : 1;         /* an HTTP/1.0 client: keep-alive is said, not assumed */
    unsigned keep : 1;           /* the connection outlives this exchange */
    unsigned answered : 1;       /* conn_respond was called for this request */
    unsigned aborted : 1;        /* conn_abort: close once done */
    unsigned peer_eof : 1;       /* the client's side ended: answer, then close */
    unsigned broken : 1;         /* a write failed: close */
    unsigned paused : 1;         /* input full while a request runs: not read */
    unsigned writing : 1;        /* an answer is partly written: watched for writing */

    response_t *resp;            /* the answer being written */
    char *out;                   /* its status line and header block */
    size_t out_len, out_cap;
    size_t wpos;                 /* bytes written of out, then of the body */
    size_t body_len;             /* bytes of resp's body to write (0 for HEAD) */
    loop_defer_t finish;         /* the answer is written: end the exchange */
};

struct conn_set {
    loop_t *loop;
    const conn_hooks_t *hooks;
    void *arg;
    conn_limits_t lim;
    int listen_fd;
    conn_t *all;
    unsigned count;
    int draining;
    loop_timer_t *sweep;
    int sweep_ms;
    time_t date_sec;
    char date[40];
    http1_head_t head;           /* scratch: the head being parsed */
};

static int process(conn_t *c);
static void on_io(loop_t *loop, int fd, int events, void *arg);

/* ---- plumbing ------------------------------------------------------------------------------ */

static void watch(conn_t *c)
{
    int ev = (c->paused || c->peer_eof ? 0 : LOOP_READ) | (c->writing ? LOOP_WRITE : 0);
    if (ev == c->watched) return;
    if (loop_watch(c->set->loop, c->fd, ev, on_io, c) == 0) c->watched = ev;
}

static void conn_close(conn_t *c)
{
    conn_set_t *s = c->set;
    loop_defer_cancel(s->loop, &c->finish);
    loop_unwatch(s->loop, c->fd);
    close(c->fd);
    if (c->req) {
        struct request *r = c->req;
        c->req = NULL;
        s->hooks->done(r);
    }
    if (s->lim.opened) s->lim.opened(c, 0);
    if (c->prev) c->prev->next = c->next; else s->all = c->next;
    if (c->next) c->next->prev = c->prev;
    s->count--;
    response_free(c->resp);
    free(c->in);
    free(c->out);
    free(c);
}

static const char *http_date(conn_set_t *s)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    if (ts.tv_sec != s->date_sec) {
        struct tm tm;
        gmtime_r(&ts.tv_sec, &tm);
        strftime(s->date, sizeof s->date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        s->date_sec = ts.tv_sec;
    }
    return s->date;
}

/* ---- writing ------------------------------------------------------------------------------- */

/* Write what is left of the answer: 1 all written, 0 the socket is full (watched for
 * writing), -1 the connection is broken. Never closes. */
static int flush(conn_t *c)
{
    while (c->resp) {
        struct iovec iov[2];
        int n = 0;
        if (c->wpos < c->out_len) iov[n++] = (struct iovec){ c->out + c->wpos, c->out_len - c->wpos };
        size_t bpos = c->wpos > c->out_len ? c->wpos - c->out_len : 0;
        if (bpos < c->body_len) iov[n++] = (struct iovec){ c->resp->body + bpos, c->body_len - bpos };
        if (!n) break;
        struct msghdr m = { .msg_iov = iov, .msg_iovlen = (size_t)n };
        ssize_t k = sendmsg(c->fd, &m, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                c->writing = 1;
                watch(c);
                return 0;
            }
            c->broken = 1;
            return -1;
        }
        c->wpos += (size_t)k;
        c->last_ns = loop_now_ns();
    }
    response_free(c->resp);
    c->resp = NULL;
    if (c->writing) {
        c->writing = 0;
        watch(c);
    }
    return 1;
}

static void finish(loop_t *loop, void *arg);

/* Serialise the status line and framing headers, then write (the rest when the socket is
 * writable). The exchange ends in a deferred call, outside whatever code answered. */
static int respond(conn_t *c, int status, response_t *resp)
{
    conn_set_t *s = c->set;
    c->answered = 1;
    int unread = c->state != C_WAIT;   /* answered before its body was read */
    c->keep = c->keep && !resp->close && !s->draining && !c->peer_eof && !unread;
    int no_body = (status >= 100 && status < 200) || status == 204 || status == 304;
    size_t need = resp->hlen + 160;
    if (need > c->out_cap) {
        char *o = realloc(c->out, need);
        if (!o) { response_free(resp); c->broken = 1; loop_defer(s->loop, &c->finish, finish, c); return -1; }
        c->out = o;
        c->out_cap = need;
    }
    char *p = c->out;
    p += sprintf(p, "HTTP/1.1 %d %s\r\n", status, http1_reason(status));
    memcpy(p, resp->hdr, resp->hlen);
    p += resp->hlen;
    p += sprintf(p, "Date: %s\r\n", http_date(s));
    if (!no_body) p += sprintf(p, "Content-Length: %zu\r\n", resp->len);
    if (!c->keep) p += sprintf(p, "Connection: close\r\n");
    else if (c->http10) p += sprintf(p, "Connection: keep-alive\r\n");
    *p++ = '\r'; *p++ = '\n';
    c->out_len = (size_t)(p - c->out);
    c->resp = resp;
    c->wpos = 0;
    c->body_len = no_body || c->head_only ? 0 : resp->len;
    if (flush(c) != 0) loop_defer(s->loop, &c->finish, finish, c);
    return 0;
}

/* An answer of the connection's own, before or instead of a request (malformed head, out of
 * memory): a problem document, then the connection closes. */
static void fail(conn_t *c, int status)
{
    char body[160];
    int n = snprintf(body, sizeof body, "{\"type\":\"about:blank\",\"title\":\"%s\",\"status\":%d}", http1_reason(status), status);
    response_t *resp = response_new(body, (size_t)n, RESPONSE_COPY);
    if (!resp) { c->broken = 1; loop_defer(c->set->loop, &c->finish, finish, c); return; }
    response_add_header(resp, "Content-Type", "application/problem+json");
    secure_headers_add(resp, 1);
    c->keep = 0;
    if (c->state == C_HEAD) c->state = C_BODY;   /* what follows the head is unread: linger */
    c->head_only = 0;
    respond(c, status, resp);
}

/* ---- ending an exchange -------------------------------------------------------------------- */

static void linger(conn_t *c)
{
    shutdown(c->fd, SHUT_WR);
    c->state = C_LINGER;
    c->linger_ns = loop_now_ns() + (uint64_t)LINGER_MS * 1000000ull;
    c->in_off = c->in_len = 0;
    c->paused = 0;
    watch(c);
}

/* The answer is written (or the request aborted, or the socket broke): end the request, then
 * close, linger, or read the next request. */
static void finish(loop_t *loop, void *arg)
{
    conn_t *c = arg;
    (void)loop;
    if (c->resp && !c->broken) return;   /* still writing: the writable callback comes back */
    struct request *r = c->req;
    c->req = NULL;
    if (r) c->set->hooks->done(r);
    if (c->broken || c->aborted || c->peer_eof) { conn_close(c); return; }
    if (!c->keep) {
        if (c->state != C_WAIT) linger(c);
        else conn_close(c);
        return;
    }
    c->state = C_HEAD;
    c->answered = 0;
    c->head_only = 0;
    c->scan = 0;
    c->head_ns = 0;
    if (c->in_off == c->in_len) c->in_off = c->in_len = 0;
    if (c->in_cap > IN_START && c->in_len == 0) {   /* a large body grew it: give it back */
        free(c->in);
        c->in = NULL;
        c->in_cap = 0;
    }
    if (c->paused) {
        c->paused = 0;
        watch(c);
    }
    process(c);   /* a pipelined request may be in already */
}

/* ---- reading ------------------------------------------------------------------------------- */

/* The head in[in_off, in_off + n) is complete: parse it, hand it to the server. 1, or 0 when
 * the connection was closed. */
static int begin(conn_t *c, size_t n)
{
    conn_set_t *s = c->set;
    char *h = c->in + c->in_off;
    http1_head_t *hd = &s->head;
    int rc = http1_parse_head(h, n, hd);
    uint64_t start_ns = c->head_ns ? c->head_ns : loop_now_ns();
    c->in_off += n;
    c->scan = 0;
    c->head_ns = 0;
    if (rc == HTTP1_NOT_HTTP) { conn_close(c); return 0; }
    if (rc) { fail(c, rc); return 1; }

    size_t fsz = (size_t)hd->nfields * sizeof(http1_field_t);
    char *mem = malloc(fsz + n);
    if (!mem) { fail(c, 503); return 1; }
    char *copy = mem + fsz;
    memcpy(copy, h, n);
    http1_field_t *f = (http1_field_t *)(void *)mem;
    for (int i = 0; i < hd->nfields; i++) {
        f[i].name = copy + (hd->fields[i].name - h);
        f[i].value = copy + (hd->fields[i].value - h);
        f[i].name_len = hd->fields[i].name_len;
        f[i].value_len = hd->fields[i].value_len;
    }
    conn_head_t ch = {
        .mem = mem, .method = copy + (hd->method - h), .target = copy + (hd->target - h),
        .method_len = hd->method_len, .target_len = hd->target_len, .fields = f, .nfields = hd->nfields,
        .start_ns = start_ns,
    };
    c->head_only = hd->method_len == 4 && memcmp(hd->method, "HEAD", 4) == 0;
    c->keep = hd->keep_alive;
    c->http10 = hd->minor == 0;
    c->framing = hd->framing;
    c->body_left = hd->content_length;
    memset(&c->chunked, 0, sizeof c->chunked);
    c->answered = 0;
    c->state = hd->framing == HTTP1_NO_BODY ? C_WAIT : C_BODY;
    int expect = hd->expect_continue;
    struct request *r = s->hooks->begin(s->arg, c, &ch);
    if (!r) { fail(c, 503); return 1; }
    c->req = r;
    if (c->answered) return 1;   /* answered at once (413 by length): the body is not read */
    if (expect && c->in_off == c->in_len) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        if (send(c->fd, cont, sizeof cont - 1, MSG_NOSIGNAL) < 0) { /* the body may still come; the answer will tell */ }
    }
    if (c->state == C_WAIT) s->hooks->end(r);
    return 1;
}

/* Use what is in the input buffer: heads, bodies. 1, or 0 when the connection was closed. */
static int process(conn_t *c)
{
    conn_set_t *s = c->set;
    for (;;) {
        size_t avail = c->in_len - c->in_off;
        if (c->state == C_HEAD) {
            if (!avail) break;
            if (!c->head_ns) c->head_ns = loop_now_ns();
            size_t n = http1_head_end(c->in + c->in_off, avail, &c->scan);
            if (!n) {
                if (avail >= HEAD_MAX) {
                    /* No end in sight: a request line that long is 414, else the fields are 431. */
                    fail(c, memchr(c->in + c->in_off, '\n', avail) ? 431 : 414);
                }
                break;
            }
            if (n > HEAD_MAX) { fail(c, 431); break; }
            if (!begin(c, n)) return 0;
            continue;
        }
        if (c->state != C_BODY || c->answered || !avail) break;
        char *p = c->in + c->in_off;
        if (c->framing == HTTP1_LENGTH) {
            size_t k = avail < c->body_left ? avail : (size_t)c->body_left;
            s->hooks->body(c->req, p, k);
            c->in_off += k;
            c->body_left -= k;
            if (c->body_left) continue;
        } else {
            size_t used = 0;
            int done = 0;
            ssize_t out = http1_chunked_decode(&c->chunked, p, avail, &used, &done);
            if (out < 0) {
                s->hooks->bad(c->req, 400);
                if (!c->answered) fail(c, 400);
                break;
            }
            if (out) s->hooks->body(c->req, p, (size_t)out);
            c->in_off += used;
            if (!done) continue;
        }
        c->state = C_WAIT;
        if (!c->answered) s->hooks->end(c->req);
        break;
    }
    if (c->in_off == c->in_len) c->in_off = c->in_len = 0;
    return 1;
}

/* Make room to read into: 1, or 0 when this request may not buffer more (reading pauses). */
static int room(conn_t *c)
{
    if (c->in_len < c->in_cap) return 1;
    if (c->in_off) {
        memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
        c->in_len -= c->in_off;
        c->in_off = 0;
        return 1;
    }
    size_t max = c->state == C_HEAD ? HEAD_MAX : c->state == C_BODY ? BODY_READ : 0;
    if (c->in_cap >= max) return 0;
    size_t cap = c->in_cap ? c->in_cap * 2 : IN_START;
    if (cap > max) cap = max;
    char *b = realloc(c->in, cap);
    if (!b) return 0;
    c->in = b;
    c->in_cap = cap;
    return 1;
}

static void on_readable(conn_t *c)
{
    if (c->state == C_LINGER) {
        char drop[4096];
        ssize_t n = recv(c->fd, drop, sizeof drop, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) conn_close(c);
        return;
    }
    if (!room(c)) {
        if (c->state == C_WAIT) {   /* pipelined requests pile up behind a slow one */
            c->paused = 1;
            watch(c);
            return;
        }
        conn_close(c);   /* out of memory */
        return;
    }
    ssize_t n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
    if (n > 0) {
        c->in_len += (size_t)n;
        c->last_ns = loop_now_ns();
        process(c);
        return;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    if (c->state == C_WAIT && c->req) {
        /* The client's side ended while its request is served: answer it, then close. */
        c->peer_eof = 1;
        if (n < 0) c->broken = 1;
        watch(c);
        return;
    }
    conn_close(c);
}

static void on_io(loop_t *loop, int fd, int events, void *arg)
{
    conn_t *c = arg;
    (void)loop; (void)fd;
    if ((events & LOOP_WRITE) && c->writing) {
        int rc = flush(c);
        if (rc != 0) { finish(loop, c); return; }
    }
    if (events & LOOP_READ) on_readable(c);
}

/* ---- accepting ----------------------------------------------------------------------------- */

int conn_set_adopt(conn_set_t *s, int fd, const struct sockaddr *sa, socklen_t salen)
{
    if (s->lim.admit && !s->lim.admit(sa)) { close(fd); return -1; }
    conn_t *c = calloc(1, sizeof *c);
    if (!c) { close(fd); return -1; }
    c->set = s;
    c->fd = fd;
    if (salen > sizeof c->peer) salen = sizeof c->peer;
    memcpy(&c->peer, sa, salen);
    c->last_ns = loop_now_ns();
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (loop_watch(s->loop, fd, LOOP_READ, on_io, c) < 0) { close(fd); free(c); return -1; }
    c->watched = LOOP_READ;
    c->next = s->all;
    if (s->all) s->all->prev = c;
    s->all = c;
    s->count++;
    if (s->lim.opened) s->lim.opened(c, 1);
    return 0;
}

static void on_accept(loop_t *loop, int fd, int events, void *arg)
{
    conn_set_t *s = arg;
    (void)loop; (void)events;
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        struct sockaddr_storage sa;
        socklen_t len = sizeof sa;
        int cfd = accept4(fd, (struct sockaddr *)&sa, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno == EMFILE || errno == ENFILE) log_warn("accept: %s", strerror(errno));
            return;   /* EAGAIN: another thread took it, or the queue is empty */
        }
        conn_set_adopt(s, cfd, (struct sockaddr *)&sa, len);
    }
}

/* ---- deadlines ----------------------------------------------------------------------------- */

static void sweep(loop_t *loop, void *arg)
{
    conn_set_t *s = arg;
    uint64_t now = loop_now_ns(), idle = (uint64_t)s->lim.idle_timeout_ms * 1000000ull;
    uint64_t head = (uint64_t)s->lim.head_timeout_ms * 1000000ull;
    for (conn_t *c = s->all, *next; c; c = next) {
        next = c->next;
        int late = 0;
        if (c->state == C_LINGER) {
            late = now >= c->linger_ns;
        } else if (c->state == C_HEAD && c->in_len > c->in_off && !c->writing) {   /* a head coming */
            late = head && c->head_ns && now - c->head_ns > head;
            if (late && s->lim.head_late) s->lim.head_late();
        } else if (c->writing || c->state == C_HEAD) {   /* a stalled reader, or an idle keep-alive */
            late = idle && now - c->last_ns > idle;
        }
        if (late) conn_close(c);
    }
    s->sweep = loop_timer_add(loop, (uint64_t)s->sweep_ms, sweep, s);
}

/* ---- the set ------------------------------------------------------------------------------- */

conn_set_t *conn_set_new(loop_t *loop, const conn_hooks_t *hooks, void *arg, const conn_limits_t *lim)
{
    conn_set_t *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->loop = loop;
    s->hooks = hooks;
    s->arg = arg;
    s->lim = *lim;
    s->listen_fd = -1;
    s->sweep_ms = 1000;
    if (lim->head_timeout_ms > 0 && lim->head_timeout_ms / 4 < s->sweep_ms)
        s->sweep_ms = lim->head_timeout_ms / 4 > 10 ? lim->head_timeout_ms / 4 : 10;
    s->sweep = loop_timer_add(loop, (uint64_t)s->sweep_ms, sweep, s);
    if (!s->sweep) { free(s); return NULL; }
    return s;
}

void conn_set_free(conn_set_t *s)
{
    if (!s) return;
    conn_set_unlisten(s);
    for (conn_t *c = s->all, *next; c; c = next) {
        next = c->next;
        conn_close(c);
    }
    if (s->sweep) loop_timer_cancel(s->loop, s->sweep);
    free(s);
}

int conn_set_listen(conn_set_t *s, int listen_fd)
{
    if (loop_watch(s->loop, listen_fd, LOOP_READ, on_accept, s) < 0) return -1;
    s->listen_fd = listen_fd;
    return 0;
}

void conn_set_unlisten(conn_set_t *s)
{
    if (s->listen_fd < 0) return;
    loop_unwatch(s->loop, s->listen_fd);
    s->listen_fd = -1;
}

void conn_set_draining(conn_set_t *s)
{
    s->draining = 1;
}

void conn_set_close_idle(conn_set_t *s)
{
    for (conn_t *c = s->all, *next; c; c = next) {
        next = c->next;
        if (c->state == C_HEAD && c->in_len == c->in_off && !c->req) conn_close(c);
    }
}

unsigned conn_set_count(const conn_set_t *s)
{
    return s->count;
}

/* ---- for the server ------------------------------------------------------------------------ */

int conn_respond(conn_t *c, int status, response_t *resp)
{
    if (c->answered || c->state == C_LINGER || c->broken) {
        response_free(resp);
        return -1;
    }
    return respond(c, status, resp);
}

void conn_abort(conn_t *c)
{
    c->aborted = 1;
    if (!c->resp) loop_defer(c->set->loop, &c->finish, finish, c);
}

int conn_fd(const conn_t *c) { return c->fd; }

const struct sockaddr *conn_peer(const conn_t *c) { return (const struct sockaddr *)&c->peer; }

void **conn_tag(conn_t *c) { return &c->tag; }
