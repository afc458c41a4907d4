/* httpc: outbound HTTP for one thread — libcurl transfers on the thread's loop (curl multi,
 * driven by loop watches and timers), or blocking where there is no loop (runners, the CLI).
 * Used by the gateway (host) and by the http and s3 bindings; it knows neither.
 *
 *   httpc_call_t *c = httpc_call_new(hc);            -- an easy handle reset to the defaults
 *   curl_easy_setopt(c->easy, CURLOPT_URL, ...);      -- the caller sets the request up
 *   httpc_call_start(c, done, arg);                   -- parks nothing itself: done(c, rc, arg)
 *                                                        is called later from the loop
 *   ... in done, or when the waiter goes away: httpc_call_free(c);
 *
 * Connections are kept alive in the thread's multi handle and reused by later transfers, with
 * a cap per upstream host (HTTP_MAX_CONNS_PER_HOST): transfers past it wait for a connection.
 * Not thread-safe: an httpc_t is made, used and freed by one thread. */
#ifndef MERCATO_HTTPC_H
#define MERCATO_HTTPC_H

#include <curl/curl.h>
#include <stddef.h>

#include "buf.h"

struct loop;

typedef struct httpc httpc_t;
typedef struct httpc_call httpc_call_t;

/* One response being received: the final response's header lines and its body, capped. */
typedef struct http_resp {
    buf_t head;          /* "Name: value\r\n" lines of the final response (interim ones dropped) */
    buf_t body;
    size_t max_body;     /* 0 = no cap */
    int too_large;       /* the body passed max_body: the transfer was aborted */
    long status;         /* 0 when nothing came back */
} http_resp_t;

/* Called once, from the loop, when a started call ended: rc is CURLE_OK or the failure
 * (c->resp holds what came). The callee owns c from here and frees it (now or later). */
typedef void (*httpc_done_cb)(httpc_call_t *c, CURLcode rc, void *arg);

struct httpc_call {
    CURL *easy;                  /* set the request up on it; the call owns it */
    http_resp_t resp;            /* filled by the transfer; freed with the call */
    struct curl_slist *headers;  /* request headers the caller built; freed with the call */
    char errbuf[CURL_ERROR_SIZE];   /* libcurl's message for a failure ("" when none) */
    /* private */
    httpc_t *hc;
    httpc_done_cb done;
    void *arg;
    int running;                 /* in the multi handle */
    httpc_call_t *next;          /* the thread's running calls */
    httpc_call_t **pprev;
};

/* Process-wide settings (HTTP_MAX_CONNS_PER_HOST); once, before any thread makes one. 0 or -1
 * with a message on stderr. */
int httpc_global_init(void);

/* A client on loop (NULL: blocking only). NULL when out of memory. */
httpc_t *httpc_new(struct loop *loop);
/* Abort every running call without calling it back, close every connection. */
void httpc_free(httpc_t *hc);

/* A call with an easy handle reset to the host's defaults (no signals, HTTP/1.1, http/https
 * only, TCP_NODELAY) and the response collectors installed; resp.max_body is 0. NULL when out
 * of memory. */
httpc_call_t *httpc_call_new(httpc_t *hc);
/* Start c on the loop; done is called later, never from inside this function. 0, or -1 (no
 * loop, or curl refused it: the caller still owns c). */
int httpc_call_start(httpc_call_t *c, httpc_done_cb done, void *arg);
/* Run c to its end on this thread (runners, or where parking is impossible). */
CURLcode httpc_call_perform(httpc_call_t *c);
/* Stop c if it runs (no callback), free its buffers and headers, keep its handle for reuse. */
void httpc_call_free(httpc_call_t *c);

/* Transfers running on hc (for metrics and tests). */
int httpc_running(const httpc_t *hc);

/* The error vocabulary for a failed transfer: "timeout" or "unavailable". */
const char *httpc_error_code(CURLcode rc);

/* Next header of a head buffer: *p walks it; name/value slices, trimmed. 0 at the end. */
int httpc_head_next(const char **p, const char *end, const char **name, size_t *nlen,
                    const char **value, size_t *vlen);

/* A W3C traceparent for an outgoing call: the incoming one (`in`, may be NULL or invalid)
 * with `span` (16 hex digits, not all zero) as the new parent id, or a new trace whose id is
 * the request id when it is 32 hex digits, else a hash of it — so every call made for one
 * request shares one trace. out needs HTTPC_TRACEPARENT_SIZE bytes. */
#define HTTPC_TRACEPARENT_SIZE 56
void httpc_traceparent(const char *in, const char *request_id, const char *span, char *out);

#endif
