/* http: the C half of the http binding (bindings/http.c), shared with the gateway. */
#ifndef MERCATO_HTTP_H
#define MERCATO_HTTP_H

#include <curl/curl.h>
#include <stddef.h>

#include "../host/buf.h"
#include "../host/request.h"

struct worker;

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
