/* upstream: a lean HTTP/1.1 client for a reverse proxy — keep-alive connections to one plain
 * http origin per thread, on the thread's loop. The gateway forwards through it: a request is
 * one prepared byte string (request line, headers, body), the answer comes back as its status,
 * header lines and de-chunked body. libcurl (core/httpc.c) stays the general client; this one
 * exists because a proxy's hot path is syscalls, and it makes two per request on a kept-alive
 * connection (send, recv) where curl made ten (liveness poll, epoll changes, EAGAIN reads).
 *
 * Connections stay registered for reading for their whole life, idle ones included, so a
 * server that closes an idle connection is noticed at once. A request that finds its reused
 * connection closed before any byte of the answer is retried once on a new connection when it
 * is safe to repeat (`retry_ok`). Past `max_conns` connections requests wait for one.
 * Not thread-safe: an upstream_t is made, used and freed by one thread. */
#ifndef MERCATO_UPSTREAM_H
#define MERCATO_UPSTREAM_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "buf.h"

struct loop;

typedef struct upstream upstream_t;
typedef struct upstream_req upstream_req_t;

enum upstream_err {
    UPSTREAM_OK = 0,
    UPSTREAM_TIMEOUT,      /* the deadline passed (connect included) */
    UPSTREAM_UNAVAILABLE,  /* refused, reset, closed early, a malformed answer */
    UPSTREAM_TOO_LARGE,    /* the answer's body passed max_body */
};

/* The answer: status, "Name: value\r\n" header lines as received (framing headers included),
 * the body with any chunked encoding removed. Owned by the request; valid in the callback. */
typedef struct upstream_resp {
    int status;
    buf_t head;
    buf_t body;
} upstream_resp_t;

/* Called once from the loop when req ended (resp NULL unless err is UPSTREAM_OK); the request
 * is freed right after it returns. The callee may take resp->body (buf_take). */
typedef void (*upstream_done_cb)(upstream_req_t *req, enum upstream_err err, const char *why,
                                 upstream_resp_t *resp, void *arg);

typedef struct upstream_opts {
    struct sockaddr_storage addr;   /* the origin */
    socklen_t addrlen;
    int max_conns;                  /* open connections at most (busy, idle and connecting) */
    long timeout_ms;                /* whole request, from upstream_send to the last byte */
    long connect_ms;                /* connect deadline */
    size_t max_body;                /* answers larger fail with UPSTREAM_TOO_LARGE */
    long idle_ms;                   /* an idle connection is closed after this long */
    int max_idle;                   /* idle connections kept at most, the least recently used
                                     * past it closed (nginx's `keepalive N`); 0: max_conns */
} upstream_opts_t;

upstream_t *upstream_new(struct loop *loop, const upstream_opts_t *opts);
/* Close every connection; requests still running end without a callback (their owners
 * cancelled them first). */
void upstream_free(upstream_t *u);

/* Send `bytes` (a complete HTTP/1.1 request; `head_only` when it is a HEAD) and call done with
 * the answer. bytes are taken over (the caller's buffer is emptied). retry_ok: repeating it is
 * harmless (an idempotent method, or an Idempotency-Key). Returns the request (for
 * upstream_cancel), or NULL when out of memory (no callback then). */
upstream_req_t *upstream_send(upstream_t *u, buf_t *bytes, int head_only, int retry_ok,
                              upstream_done_cb done, void *arg);

/* Forget req: no callback; its connection is closed when it was mid-answer. */
void upstream_cancel(upstream_req_t *req);

/* The origin moved (a name resolved to another address): new connections go to addr, idle
 * ones to the old address are closed; busy ones finish their request, then close. */
void upstream_set_addr(upstream_t *u, const struct sockaddr_storage *addr, socklen_t addrlen);

/* Open connections (for tests and metrics). */
int upstream_connections(const upstream_t *u);

#endif
