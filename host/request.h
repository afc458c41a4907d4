/* request: the C-owned state of one HTTP request, from its first byte to the access log line. */
#ifndef MERCATO_REQUEST_H
#define MERCATO_REQUEST_H

#include <stddef.h>
#include <stdint.h>

#include "../core/http1.h"
#include "../core/ratelimit.h"
#include "../core/loop.h"
#include "router.h"

struct worker;
struct lua_State;
struct loop_timer;
struct conn;

/* Whether a request waits on I/O: served as usual, parked (linked in its worker's list, the
 * bindings' callbacks come back to it) while its handler or forward waits, resumed once done.
 * Its connection is not touched by parking: the answer is written when it is made. */
enum request_park { REQ_SERVED = 0, REQ_PARKED, REQ_RESUMED };

typedef struct request {
    struct worker *w;
    struct conn *conn;
    char *head;                 /* the request head as received (owned): what uri and fields point into */
    const http1_field_t *fields;
    int nfields;
    char *uri;                  /* raw request target as sent: path[?query] (in head) */
    size_t path_len;            /* the path is uri[0, path_len) */
    const char *query;          /* after '?', NUL-terminated, or NULL */
    char method[8];
    uint64_t generation;        /* snapshot generation the route was matched in */
    int route;                  /* route index or ROUTER_NOT_FOUND / ROUTER_METHOD_NOT_ALLOWED */
    int slot;                   /* metrics slot */
    router_match_t match;
    size_t max_body;
    char *body;                 /* owned, NUL-terminated; its bytes count against BODY_BUFFER_BUDGET
                                 * (grown by quota_body_append, freed by quota_body_drop) */
    size_t body_len, body_cap;
    int body_too_large;
    int body_over_budget;       /* BODY_BUFFER_BUDGET was full: the body is dropped, 503 at the end */
    struct loop_timer *read_timer;        /* REQUEST_READ_TIMEOUT_MS until the request is in (quota.c) */
    int started;                /* the first access-handler call is past */
    int status;                 /* status queued, 0 until then */
    size_t resp_bytes;
    uint64_t start_ns;
    char id[72];                /* X-Request-Id: echoed (sanitised) or generated */
    int claims_ref;             /* registry ref to the verified token claims, or LUA_NOREF */
    double auth_iat;            /* the verified token's iat (0 when absent) and role, kept while */
    char auth_role[32];         /* its revocation record is looked up (host/auth.c) */

    /* The handler's coroutine (HTTP workers with a loop, ASYNC on): set from its first resume
     * until it ends; co_ref anchors it in the registry, released in one place (server.c). */
    struct lua_State *co;
    int co_ref;
    enum request_park park;     /* whether its connection is suspended while it waits (below) */
    /* While parked: the binding's hook that makes it forget this request (client gone, daemon
     * stopping); cleared by worker_wake. */
    void (*wait_cancel)(void *arg);
    void *wait_arg;
    int resume_n;               /* values the binding pushed onto co for the resume */
    loop_defer_t resume_defer;            /* the scheduled resume (worker_wake), when queued */
    struct request *wnext, *wprev;        /* the worker's list of parked requests */
    int retired;                /* its coroutine lives in the worker's previous generation */
    ratelimit_result_t rl;      /* the route's rate-limit answer, kept for a resumed response */
    int has_rl;
    int step;                   /* server.c: how far the final call's checks have gone */
    struct db_conn *db;         /* the pooled connection lent to its open db.tx (bindings/db_pool.c) */
} request_t;

/* Route values besides router indexes and ROUTER_NOT_FOUND / ROUTER_METHOD_NOT_ALLOWED. */
enum { BUILTIN_HEALTH = -10, BUILTIN_READY, BUILTIN_METRICS, BUILTIN_OPENAPI, ROUTER_GATEWAY = -20 };

static inline int request_is_builtin(int route) { return route >= BUILTIN_HEALTH && route <= BUILTIN_OPENAPI; }

/* The first header field `name` (ASCII case-insensitive) as received, or NULL. */
const char *request_header(const request_t *r, const char *name);

/* The client's address (AF_INET or AF_INET6), or NULL. */
const struct sockaddr *request_peer(const request_t *r);

/* Monotonic clock in nanoseconds. */
uint64_t request_now_ns(void);

/* Percent-decode src into dst (capacity >= len + 1); '+' stays '+' unless plus_space. Returns
 * the decoded length. Invalid escapes are kept as they are. */
size_t request_unescape(char *dst, const char *src, size_t len, int plus_space);

/* 1 if src[0, len) is UTF-8 once percent-decoded (as request_unescape decodes), else 0. */
int request_text_valid(const char *src, size_t len);

#endif
