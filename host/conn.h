/* conn: HTTP/1.1 connections on one thread's loop — accepting them, reading each request (its
 * head, then its body by Content-Length or chunks), writing each answer, keep-alive and
 * pipelining, idle and slow-client deadlines. What a request means is the server's
 * (host/server.c), reached through hooks; a request waiting on I/O costs the connection
 * nothing (no watch changes): its answer is written when it comes. */
#ifndef MERCATO_CONN_H
#define MERCATO_CONN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "../core/http1.h"
#include "../core/loop.h"
#include "response.h"

struct request;
typedef struct conn conn_t;
typedef struct conn_set conn_set_t;

/* A request head as the server gets it: every string points into mem, one allocation the
 * begin hook takes over (freed with free()). */
typedef struct conn_head {
    char *mem;
    const char *method, *target;
    size_t method_len, target_len;
    const http1_field_t *fields;
    int nfields;
    uint64_t start_ns;          /* its first byte came (loop_now_ns) */
} conn_head_t;

typedef struct conn_hooks {
    /* A head is in: make the request (its owner is the server from here, head->mem with it),
     * or NULL when out of memory (the connection is answered 503 and closed; mem is the
     * hook's to free either way). May answer at once (conn_respond), e.g. 413 by length. */
    struct request *(*begin)(void *arg, conn_t *c, conn_head_t *head);
    /* Body bytes, decoded, as they arrive. */
    void (*body)(struct request *r, const char *data, size_t n);
    /* The whole request is in (not called when it was answered before its body was read). */
    void (*end)(struct request *r);
    /* The body's framing is broken (chunks): answer `status` (400) — the connection closes. */
    void (*bad)(struct request *r, int status);
    /* The request is over: its answer written, or its connection gone. The hook frees it. */
    void (*done)(struct request *r);
} conn_hooks_t;

typedef struct conn_limits {
    int idle_timeout_ms;        /* a keep-alive connection with no request, or a stalled write */
    int head_timeout_ms;        /* a head must be complete within this from its first byte (0: none) */
    int (*admit)(const struct sockaddr *addr);   /* at accept: 0 closes the connection at once */
    void (*opened)(conn_t *c, int open);         /* counts connections (open 1, then 0) */
    void (*head_late)(void);                     /* a head missed head_timeout_ms: it is closed */
} conn_limits_t;

/* One thread's connections, on its loop. NULL when out of memory. */
conn_set_t *conn_set_new(loop_t *loop, const conn_hooks_t *hooks, void *arg, const conn_limits_t *lim);
/* Close every connection (a request in flight gets its done hook), then free the set. */
void conn_set_free(conn_set_t *s);

/* Accept connections from listen_fd (non-blocking) on the loop; -1 if it cannot be watched. */
int conn_set_listen(conn_set_t *s, int listen_fd);
/* Stop accepting (the socket stays open: it is its owner's). */
void conn_set_unlisten(conn_set_t *s);
/* Take over an accepted socket as if the set had accepted it. 0, or -1 (fd closed). */
int conn_set_adopt(conn_set_t *s, int fd, const struct sockaddr *sa, socklen_t salen);
/* From now on every answer closes its connection ("Connection: close"). */
void conn_set_draining(conn_set_t *s);
/* Close the connections that wait for a request with nothing of one read. */
void conn_set_close_idle(conn_set_t *s);
unsigned conn_set_count(const conn_set_t *s);

/* Answer the connection's current request: status, resp's headers and body (taken: freed by
 * the connection). HEAD gets the headers only. -1 if it was answered already (resp freed). */
int conn_respond(conn_t *c, int status, response_t *resp);
/* The current request ends with no answer: the connection is closed once it is done. */
void conn_abort(conn_t *c);

int conn_fd(const conn_t *c);
/* The client's address (AF_INET or AF_INET6). */
const struct sockaddr *conn_peer(const conn_t *c);
/* The per-connection word the limits' `opened` hook may keep (e.g. "counted per IP"). */
void **conn_tag(conn_t *c);

#endif
