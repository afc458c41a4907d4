/* gateway: SERVICE=gateway — path-prefix routing to the upstream services (CONTRACT §5). */
#ifndef MERCATO_GATEWAY_H
#define MERCATO_GATEWAY_H

#include <curl/curl.h>
#include <stddef.h>

#include "buf.h"
#include "config.h"
#include "request.h"

struct worker;

/* ---- routing (pure functions, tested in tests/test_gateway.c) ---------------------------- */

enum { GW_USER, GW_PRODUCT, GW_ORDER, GW_PAYMENT, GW_NOTIFICATION, GW_NUPSTREAMS };
enum { GW_UNKNOWN = -1, GW_FORBIDDEN = -2 };

/* The upstream for a raw request path (no query): GW_USER..GW_NOTIFICATION, GW_UNKNOWN when
 * no prefix matches whole segments, GW_FORBIDDEN when any segment, percent-decoded, is
 * "internal" (any case) or a dot segment ("." / ".."), which never leave the gateway. */
int gateway_route(const char *path, size_t len);

/* Does any segment of path, percent-decoded, equal "internal" (case-insensitive)? */
int gateway_path_is_internal(const char *path, size_t len);

/* "product", and the variable naming its base URL, "PRODUCT_SERVICE_URL". */
const char *gateway_upstream_name(int upstream);
const char *gateway_upstream_env(int upstream);

/* Is this header hop-by-hop (RFC 9110 §7.6.1: Connection, Keep-Alive, TE, Trailer,
 * Transfer-Encoding, Upgrade, Proxy-*), so that a proxy must not forward it? */
int gateway_hop_by_hop(const char *name);

/* ---- serving ------------------------------------------------------------------------------ */

/* Largest body the gateway forwards (images are the largest: 5 MiB). */
size_t gateway_max_body(const config_t *cfg);

/* Forward r to its upstream and queue the upstream's answer (or a 404/502/504 problem). */
void gateway_handle(request_t *r);

/* ---- the http binding's C half (bindings/http.c), shared with the gateway ----------------- */

/* One response being received: the final response's header lines and its body, capped. */
typedef struct http_resp {
    buf_t head;          /* "Name: value\r\n" lines of the final response (interim ones dropped) */
    buf_t body;
    size_t max_body;     /* 0 = no cap */
    int too_large;       /* the body passed max_body: the transfer was aborted */
    long status;
} http_resp_t;

/* The worker's libcurl easy handle, reset to the host's defaults (no signals, HTTP/1.1,
 * http/https only); created on first use and kept in w->binding[BIND_HTTP] so that its
 * connection cache (keep-alive) outlives calls and Lua states. NULL when out of memory. */
CURL *http_easy(struct worker *w);

/* Run the transfer set up on h, collecting into resp (initialised by the caller, who frees
 * its buffers). Returns CURLE_OK or the failure; resp->status is 0 when nothing came back. */
CURLcode http_perform(CURL *h, http_resp_t *resp);

/* The error vocabulary for a failed transfer: "timeout" or "unavailable". */
const char *http_error_code(CURLcode rc);

/* Next header of a head buffer: *p walks it; name/value slices, trimmed. 0 at the end. */
int http_head_next(const char **p, const char *end, const char **name, size_t *nlen,
                   const char **value, size_t *vlen);

/* A W3C traceparent for a call made while serving r: r's incoming traceparent with a new
 * parent (span) id, or a new trace whose id derives from r's request id, so every call made
 * for one request shares one trace. out needs HTTP_TRACEPARENT_SIZE bytes. */
#define HTTP_TRACEPARENT_SIZE 56
void http_traceparent(struct worker *w, const request_t *r, char *out);

#endif
