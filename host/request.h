/* request: the C-owned state of one HTTP request, from its first byte to the access log line. */
#ifndef MERCATO_REQUEST_H
#define MERCATO_REQUEST_H

#include <microhttpd.h>
#include <stddef.h>
#include <stdint.h>

#include "router.h"

struct worker;

typedef struct request {
    struct worker *w;
    struct MHD_Connection *conn;
    char *uri;                  /* raw request target as sent: path[?query] (owned) */
    size_t path_len;            /* the path is uri[0, path_len) */
    const char *query;          /* after '?', NUL-terminated, or NULL */
    char method[8];
    uint64_t generation;        /* snapshot generation the route was matched in */
    int route;                  /* route index or ROUTER_NOT_FOUND / ROUTER_METHOD_NOT_ALLOWED */
    int slot;                   /* metrics slot */
    router_match_t match;
    size_t max_body;
    char *body;                 /* owned, NUL-terminated */
    size_t body_len, body_cap;
    int body_too_large;
    int started;                /* the first access-handler call is past */
    int status;                 /* status queued, 0 until then */
    size_t resp_bytes;
    uint64_t start_ns;
    char id[72];                /* X-Request-Id: echoed (sanitised) or generated */
    int claims_ref;             /* registry ref to the verified token claims, or LUA_NOREF */
} request_t;

/* Monotonic clock in nanoseconds. */
uint64_t request_now_ns(void);

/* Percent-decode src into dst (capacity >= len + 1); '+' stays '+' unless plus_space. Returns
 * the decoded length. Invalid escapes are kept as they are. */
size_t request_unescape(char *dst, const char *src, size_t len, int plus_space);

#endif
