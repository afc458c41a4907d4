/* httpc: libcurl transfers on a thread's loop (see httpc.h). */
#include "httpc.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "loop.h"

#define HTTPC_MAX_HEADERS_BYTES ((size_t)64 * 1024)
#define HTTPC_IDLE_CALLS 64          /* finished calls (and their easy handles) kept for reuse */

static long g_max_per_host = 256;    /* HTTP_MAX_CONNS_PER_HOST, per thread */

struct httpc {
    struct loop *loop;           /* NULL: blocking only */
    CURLM *multi;                /* NULL until the first started call */
    loop_timer_t *timer;         /* curl's one timeout, or NULL */
    httpc_call_t *running;       /* started calls, not yet done */
    int nrunning;
    httpc_call_t *idle[HTTPC_IDLE_CALLS];
    int nidle;
};

int httpc_global_init(void)
{
    const char *v = getenv("HTTP_MAX_CONNS_PER_HOST");
    if (v && *v) {
        char *end;
        long n = strtol(v, &end, 10);
        if (*end || n < 1 || n > 100000) {
            fprintf(stderr, "mercato: HTTP_MAX_CONNS_PER_HOST: expecting a number from 1 to 100000, got '%s'\n", v);
            return -1;
        }
        g_max_per_host = n;
    }
    return 0;
}

/* ---- response collectors --------------------------------------------------------------- */

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    http_resp_t *r = ud;
    size_t len = size * n;
    if (r->max_body && r->body.len + len > r->max_body) {
        r->too_large = 1;
        return 0;   /* aborts the transfer with CURLE_WRITE_ERROR */
    }
    buf_add(&r->body, p, len);
    return r->body.failed ? 0 : len;
}

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    http_resp_t *r = ud;
    size_t len = size * n;
    if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) { r->head.len = 0; return len; }   /* a new (final or interim) response */
    if (len <= 2 || p[0] == ' ' || p[0] == '\t') return len;   /* the blank line; obsolete line folding */
    if (r->head.len + len > HTTPC_MAX_HEADERS_BYTES) return 0;
    buf_add(&r->head, p, len);
    return r->head.failed ? 0 : len;
}

/* ---- calls ----------------------------------------------------------------------------- */

static void call_defaults(httpc_call_t *c)
{
    CURL *h = c->easy;
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(h, CURLOPT_MAXCONNECTS, 16L);      /* a blocking handle's own cache */
    curl_easy_setopt(h, CURLOPT_MAXAGE_CONN, 60L);      /* under the services' 75 s idle close */
    curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, c->errbuf);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &c->resp);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &c->resp);
    curl_easy_setopt(h, CURLOPT_PRIVATE, c);
}

httpc_call_t *httpc_call_new(httpc_t *hc)
{
    httpc_call_t *c;
    if (hc->nidle) {
        c = hc->idle[--hc->nidle];
        curl_easy_reset(c->easy);   /* keeps its DNS and TLS session caches */
    } else {
        c = calloc(1, sizeof *c);
        if (!c) return NULL;
        c->easy = curl_easy_init();
        if (!c->easy) { free(c); return NULL; }
    }
    c->hc = hc;
    c->errbuf[0] = 0;
    c->headers = NULL;
    c->done = NULL;
    c->arg = NULL;
    memset(&c->resp, 0, sizeof c->resp);
    buf_init(&c->resp.head);
    buf_init(&c->resp.body);
    call_defaults(c);
    return c;
}

static void unlink_running(httpc_call_t *c)
{
    httpc_t *hc = c->hc;
    curl_multi_remove_handle(hc->multi, c->easy);
    *c->pprev = c->next;
    if (c->next) c->next->pprev = c->pprev;
    c->next = NULL;
    c->pprev = NULL;
    c->running = 0;
    hc->nrunning--;
}

void httpc_call_free(httpc_call_t *c)
{
    if (!c) return;
    httpc_t *hc = c->hc;
    if (c->running) unlink_running(c);
    buf_free(&c->resp.head);
    buf_free(&c->resp.body);
    curl_slist_free_all(c->headers);
    c->headers = NULL;
    if (hc->nidle < HTTPC_IDLE_CALLS) {
        hc->idle[hc->nidle++] = c;
    } else {
        curl_easy_cleanup(c->easy);
        free(c);
    }
}

CURLcode httpc_call_perform(httpc_call_t *c)
{
    curl_easy_setopt(c->easy, CURLOPT_HTTPHEADER, c->headers);
    CURLcode rc = curl_easy_perform(c->easy);
    c->resp.status = 0;
    curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &c->resp.status);
    return rc;
}

/* ---- the multi handle on the loop ------------------------------------------------------- */

/* Hand every finished transfer to its caller. */
static void finish_done(httpc_t *hc)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(hc->multi, &left))) {
        if (m->msg != CURLMSG_DONE) continue;
        httpc_call_t *c = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&c);
        CURLcode rc = m->data.result;   /* m is invalid after remove_handle */
        if (!c || !c->running) continue;
        unlink_running(c);
        c->resp.status = 0;
        curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &c->resp.status);
        c->done(c, rc, c->arg);   /* may free c, start or free other calls */
    }
}

static void on_socket_ready(loop_t *loop, int fd, int events, void *arg)
{
    httpc_t *hc = arg;
    int still;
    (void)loop;
    int flags = (events & LOOP_READ ? CURL_CSELECT_IN : 0) | (events & LOOP_WRITE ? CURL_CSELECT_OUT : 0);
    curl_multi_socket_action(hc->multi, fd, flags, &still);
    finish_done(hc);
}

static void on_timeout(loop_t *loop, void *arg)
{
    httpc_t *hc = arg;
    int still;
    (void)loop;
    hc->timer = NULL;   /* the loop frees a fired timer */
    curl_multi_socket_action(hc->multi, CURL_SOCKET_TIMEOUT, 0, &still);
    finish_done(hc);
}

/* CURLMOPT_SOCKETFUNCTION: curl says what to watch on s (called from inside curl: only the
 * loop's table changes here). */
static int on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    httpc_t *hc = userp;
    (void)easy; (void)socketp;
    if (what == CURL_POLL_REMOVE) {
        loop_unwatch(hc->loop, s);
        return 0;
    }
    int events = (what & CURL_POLL_IN ? LOOP_READ : 0) | (what & CURL_POLL_OUT ? LOOP_WRITE : 0);
    if (loop_watch(hc->loop, s, events, on_socket_ready, hc) < 0) {
        log_warn("http: cannot watch a socket: %s", strerror(errno));
        return -1;   /* curl fails the transfers on it */
    }
    return 0;
}

/* CURLMOPT_TIMERFUNCTION: one timer, replaced on every call; -1 removes it. */
static int on_timer(CURLM *multi, long timeout_ms, void *userp)
{
    httpc_t *hc = userp;
    (void)multi;
    if (hc->timer) loop_timer_cancel(hc->loop, hc->timer);
    hc->timer = NULL;
    if (timeout_ms >= 0) {
        hc->timer = loop_timer_add(hc->loop, (uint64_t)timeout_ms, on_timeout, hc);
        if (!hc->timer) return -1;
    }
    return 0;
}

static int multi_open(httpc_t *hc)
{
    if (hc->multi) return 0;
    hc->multi = curl_multi_init();
    if (!hc->multi) return -1;
    curl_multi_setopt(hc->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(hc->multi, CURLMOPT_SOCKETDATA, hc);
    curl_multi_setopt(hc->multi, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(hc->multi, CURLMOPT_TIMERDATA, hc);
    curl_multi_setopt(hc->multi, CURLMOPT_MAX_HOST_CONNECTIONS, g_max_per_host);
    curl_multi_setopt(hc->multi, CURLMOPT_MAXCONNECTS, g_max_per_host);
    curl_multi_setopt(hc->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_NOTHING);
    return 0;
}

int httpc_call_start(httpc_call_t *c, httpc_done_cb done, void *arg)
{
    httpc_t *hc = c->hc;
    if (!hc->loop || c->running || multi_open(hc) < 0) return -1;
    curl_easy_setopt(c->easy, CURLOPT_HTTPHEADER, c->headers);
    c->done = done;
    c->arg = arg;
    if (curl_multi_add_handle(hc->multi, c->easy) != CURLM_OK) return -1;   /* only schedules curl's timer */
    c->running = 1;
    c->next = hc->running;
    c->pprev = &hc->running;
    if (hc->running) hc->running->pprev = &c->next;
    hc->running = c;
    hc->nrunning++;
    return 0;
}

int httpc_running(const httpc_t *hc) { return hc ? hc->nrunning : 0; }

/* ---- the client ------------------------------------------------------------------------ */

httpc_t *httpc_new(struct loop *loop)
{
    httpc_t *hc = calloc(1, sizeof *hc);
    if (!hc) return NULL;
    hc->loop = loop;
    return hc;
}

void httpc_free(httpc_t *hc)
{
    if (!hc) return;
    httpc_call_t *next;
    for (httpc_call_t *c = hc->running; c; c = next) {   /* none by now: cancelled at shutdown */
        next = c->next;
        curl_multi_remove_handle(hc->multi, c->easy);
        buf_free(&c->resp.head);
        buf_free(&c->resp.body);
        curl_slist_free_all(c->headers);
        curl_easy_cleanup(c->easy);
        free(c);
    }
    hc->running = NULL;
    if (hc->multi) curl_multi_cleanup(hc->multi);   /* closes the connections (unwatching them) */
    if (hc->timer) loop_timer_cancel(hc->loop, hc->timer);
    for (int i = 0; i < hc->nidle; i++) {
        curl_easy_cleanup(hc->idle[i]->easy);
        free(hc->idle[i]);
    }
    free(hc);
}

/* ---- helpers --------------------------------------------------------------------------- */

const char *httpc_error_code(CURLcode rc)
{
    return rc == CURLE_OPERATION_TIMEDOUT ? "timeout" : "unavailable";
}

int httpc_head_next(const char **p, const char *end, const char **name, size_t *nlen,
                    const char **value, size_t *vlen)
{
    while (*p < end) {
        const char *line = *p;
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        if (!eol) eol = end;
        *p = eol < end ? eol + 1 : end;
        const char *stop = eol;
        while (stop > line && (stop[-1] == '\r' || stop[-1] == ' ' || stop[-1] == '\t')) stop--;
        const char *colon = memchr(line, ':', (size_t)(stop - line));
        if (!colon || colon == line) continue;
        const char *v = colon + 1;
        while (v < stop && (*v == ' ' || *v == '\t')) v++;
        *name = line;
        *nlen = (size_t)(colon - line);
        *value = v;
        *vlen = (size_t)(stop - v);
        return 1;
    }
    return 0;
}

static int is_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
    return 1;
}

static int all_zero(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != '0') return 0;
    return 1;
}

/* A valid version-00 traceparent: 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>. */
static int traceparent_valid(const char *v)
{
    return strlen(v) >= 55 && (v[55] == 0 || v[55] == '-') && memcmp(v, "00-", 3) == 0 && v[35] == '-' &&
           v[52] == '-' && is_hex(v + 3, 32) && !all_zero(v + 3, 32) && is_hex(v + 36, 16) &&
           !all_zero(v + 36, 16) && is_hex(v + 53, 2);
}

static uint64_t fnv1a(const char *s, uint64_t h)
{
    for (; *s; s++) { h ^= (unsigned char)*s; h *= 0x100000001b3ull; }
    return h;
}

/* "00-<trace>-<span>-<flags>" from a 32-, a 16- and a 2-digit hex string. */
static void compose_traceparent(char *out, const char *trace, const char *span, const char *flags)
{
    memcpy(out, "00-", 3);
    memcpy(out + 3, trace, 32);
    out[35] = '-';
    memcpy(out + 36, span, 16);
    out[52] = '-';
    memcpy(out + 53, flags, 2);
    out[55] = 0;
}

void httpc_traceparent(const char *in, const char *request_id, const char *span, char *out)
{
    static const char hex[] = "0123456789abcdef";
    if (in && traceparent_valid(in)) {
        compose_traceparent(out, in + 3, span, in + 53);
        return;
    }
    char trace[33];
    if (strlen(request_id) == 32 && is_hex(request_id, 32) && !all_zero(request_id, 32)) {
        memcpy(trace, request_id, 33);
    } else {   /* a client-chosen request id: hash it, so the trace is still one per request */
        uint64_t a = fnv1a(request_id, 0xcbf29ce484222325ull), b = fnv1a(request_id, a ^ 0x9e3779b97f4a7c15ull) | 1;
        for (int i = 0; i < 16; i++) {
            trace[i] = hex[(a >> (60 - i * 4)) & 15];
            trace[16 + i] = hex[(b >> (60 - i * 4)) & 15];
        }
        trace[32] = 0;
    }
    compose_traceparent(out, trace, span, "01");
}
