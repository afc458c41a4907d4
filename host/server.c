/* server: the HTTP front — N worker threads, each with its own event loop, its own
 * connections (host/conn.c) on one shared listening socket (or one socket each with
 * LISTEN_MODE=reuseport) and its own Lua state; and what a request goes through, from its head
 * to its access line.
 *
 * One loop per thread pins every connection, request and Lua call to one thread we created,
 * gives each thread an idle moment to flush its access log, and lets a request park on I/O at
 * no cost. A connection is accepted by whichever idle thread wins the accept, so a thread busy
 * in a handler does not collect new clients. */
#include "server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "access_log.h"
#include "bindings.h"
#include "builtins.h"
#include "conn.h"
#include "dispatch.h"
#include "gateway.h"
#include "response.h"
#include "quota.h"
#include "secure_headers.h"
#include "../core/log.h"
#include "../core/loop.h"
#include "../core/metrics.h"
#include "../core/utf8.h"
#include "worker.h"


typedef struct http_thread {
    server_t *srv;
    int index;
    pthread_t thread;
    worker_t *w;
    conn_set_t *conns;
    int wake_fd;                 /* eventfd: wakes the loop to notice a stop */
    int listen_fd;               /* this thread's SO_REUSEPORT socket, or the shared one */
    long inflight;               /* requests begun and not completed (this thread only) */
    int started;                 /* 1 ready, -1 failed */
    char err[512];
} http_thread_t;

static _Atomic int g_stopping;   /* one server per process: read when building responses */
static int g_fail_worker = -1;   /* SERVER_TEST_FAIL_WORKER (specs): this worker fails once its connections are set up */
static int g_builtin_slot[4];   /* metrics slots of /health, /ready, /metrics, /openapi.json */

struct server {
    const config_t *cfg;
    int listen_fd;
    int nthreads;
    http_thread_t *threads;
    pthread_mutex_t lock;
    pthread_cond_t cond;         /* start-up: each thread reports ready or failed */
};

int server_stopping(void)
{
    return atomic_load_explicit(&g_stopping, memory_order_relaxed);
}

/* ---- responses ------------------------------------------------------------------------- */

int server_queue(request_t *r, int status, response_t *resp, size_t len)
{
    response_add_header(resp, "X-Request-Id", r->id);
    secure_headers_add(resp, secure_headers_private(r, status));
    if (atomic_load_explicit(&g_stopping, memory_order_relaxed)) resp->close = 1;
    if (conn_respond(r->conn, status, resp) != 0) return -1;
    r->status = status;
    r->resp_bytes = len;
    return 0;
}

int server_respond(request_t *r, int status, const char *ctype, const char *body, size_t len)
{
    response_t *resp = response_new(body, len, RESPONSE_COPY);
    if (!resp) return -1;
    if (ctype) response_add_header(resp, "Content-Type", ctype);
    return server_queue(r, status, resp, len);
}

int server_problem(request_t *r, int status, const char *title, const char *detail,
                   const char *header, const char *value)
{
    char t[256], d[1024], body[1600];
    log_json_escape(t, sizeof t, title, strlen(title));
    log_json_escape(d, sizeof d, detail ? detail : "", detail ? strlen(detail) : 0);
    int n = snprintf(body, sizeof body,
                     "{\"type\":\"about:blank\",\"title\":\"%s\",\"status\":%d%s%s%s,\"request_id\":\"%s\"}",
                     t, status, detail ? ",\"detail\":\"" : "", detail ? d : "", detail ? "\"" : "", r->id);
    response_t *resp = response_new(body, (size_t)n, RESPONSE_COPY);
    if (!resp) return -1;
    response_add_header(resp, "Content-Type", "application/problem+json");
    if (header) response_add_header(resp, header, value);
    return server_queue(r, status, resp, (size_t)n);
}

void server_resumed(request_t *r)
{
    if (!r->status) conn_abort(r->conn);   /* cancelled, or its answer could not be made */
}

/* ---- a request, from its head to its access line ---------------------------------------- */

static int valid_request_id(const char *v)
{
    size_t n = 0;
    for (; v[n]; n++) {
        char c = v[n];
        if (n >= 64 || !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                         c == '-' || c == '_' || c == '.' || c == ':'))
            return 0;
    }
    return n > 0;
}

/* The head is in: the request is born, matched to a route, and refused at once when its
 * Content-Length says its body is too large. */
static request_t *on_begin(void *arg, conn_t *c, conn_head_t *head)
{
    http_thread_t *t = arg;
    worker_t *w = t->w;
    request_t *r = calloc(1, sizeof *r);
    if (!r) { free(head->mem); return NULL; }
    r->head = head->mem;
    r->fields = head->fields;
    r->nfields = head->nfields;
    r->uri = (char *)head->target;   /* in head: ours to cut at the '?' */
    char *q = strchr(r->uri, '?');
    if (q) { *q = 0; r->query = q + 1; }
    r->path_len = strlen(r->uri);
    r->w = w;
    r->start_ns = head->start_ns;
    r->claims_ref = LUA_NOREF;
    r->conn = c;
    r->started = 1;
    t->inflight++;
    metrics_shard_add_inflight(w->metrics, 1);
    quota_read_start(r);   /* the body must follow within REQUEST_READ_TIMEOUT_MS of the first byte */

    /* A method longer than any this server knows stays empty (501 below), never cut down to
     * one it knows ("OPTIONSX" is not OPTIONS). */
    if (head->method_len < sizeof r->method) memcpy(r->method, head->method, head->method_len + 1);
    else r->method[0] = 0;
    const char *rid = request_header(r, "X-Request-Id");
    if (rid && valid_request_id(rid)) snprintf(r->id, sizeof r->id, "%s", rid);
    else worker_request_id(w, r->id);
    int builtin = builtins_match(r);
    if (builtin) {
        r->route = builtin;
        r->slot = g_builtin_slot[builtin - BUILTIN_HEALTH];
    } else if (w->cfg->service && strcmp(w->cfg->service, "gateway") == 0) {
        r->route = ROUTER_GATEWAY;
    } else {
        dispatch_match(r, NULL, 0);
    }
    r->max_body = w->cfg->max_body;
    if (r->route >= 0 && w->snap->routes[r->route].max_body) r->max_body = w->snap->routes[r->route].max_body;
    if (r->route == ROUTER_GATEWAY) r->max_body = gateway_max_body(w->cfg);
    const char *cl = request_header(r, "Content-Length");
    if (cl && strtoull(cl, NULL, 10) > r->max_body) {
        r->body_too_large = 1;
        server_problem(r, 413, "Content Too Large", "The request body is larger than this endpoint accepts.", NULL, NULL);
    }
    return r;
}

static void on_body(request_t *r, const char *data, size_t n)
{
    if (r->body_too_large || r->body_over_budget || r->status) return;
    if (r->body_len + n > r->max_body) {
        /* Chunks past the limit: what came is dropped, the rest read and dropped as it
         * arrives (REQUEST_READ_TIMEOUT_MS bounds it), 413 at the end. */
        r->body_too_large = 1;
        quota_body_drop(r);
        return;
    }
    int rc = quota_body_append(r, data, n);
    if (rc == -1 || rc == -2) {   /* the process buffers all it may, or no memory: answered 503 */
        r->body_over_budget = 1;
        quota_body_drop(r);
    }
}

static void on_bad(request_t *r, int status)
{
    quota_read_done(r);
    server_problem(r, status, "Bad Request", "The request body's chunked framing is malformed.", NULL, NULL);
}

/* The whole request is in: the checks no handler should have to make, then its route. */
static void on_end(request_t *r)
{
    worker_t *w = r->w;
    quota_read_done(r);
    if (r->status) return;   /* already answered */
    if (r->body_too_large) {
        server_problem(r, 413, "Content Too Large", "The request body is larger than this endpoint accepts.", NULL, NULL);
        return;
    }
    if (r->body_over_budget) {
        server_problem(r, 503, "Service Unavailable", "The server is buffering as many request bodies as it may; retry shortly.",
                       "Retry-After", "1");
        return;
    }
    worker_maybe_reload(w);
    if (r->generation != w->generation &&
        (r->route >= 0 || r->route == ROUTER_NOT_FOUND || r->route == ROUTER_METHOD_NOT_ALLOWED))
        dispatch_match(r, NULL, 0);   /* a reload happened while the body arrived */

    if (!r->method[0]) {
        server_problem(r, 501, "Not Implemented", "This server does not implement this method.", NULL, NULL);
        return;
    }
    if (request_is_builtin(r->route)) { builtins_serve(r); return; }
    if (r->route == ROUTER_GATEWAY) { gateway_handle(r); return; }
    if (r->route == ROUTER_NOT_FOUND) {
        server_problem(r, 404, "Not Found", "No resource lives at this path.", NULL, NULL);
        return;
    }
    if (r->route == ROUTER_METHOD_NOT_ALLOWED && !router_method_valid(r->method)) {
        server_problem(r, 501, "Not Implemented", "This server does not implement this method.", NULL, NULL);
        return;
    }
    if (r->route == ROUTER_METHOD_NOT_ALLOWED) {
        char allow[128];
        dispatch_match(r, allow, sizeof allow);
        server_problem(r, 405, "Method Not Allowed", "This resource does not answer this method.", "Allow", allow);
        return;
    }
    /* Client text reaches handlers as UTF-8 only: a path that is not is no resource here, a
     * query string that is not a bad request (the handler never sees either). */
    if (!request_text_valid(r->uri, r->path_len)) {
        server_problem(r, 404, "Not Found", "No resource lives at this path.", NULL, NULL);
        return;
    }
    if (r->query && !request_text_valid(r->query, strlen(r->query))) {
        server_problem(r, 400, "Bad Request", "The query string is not valid UTF-8 once percent-decoded.", NULL, NULL);
        return;
    }
    dispatch_route(r);
    if (!r->status && r->park != REQ_PARKED && !r->co) conn_abort(r->conn);   /* no answer could be made */
}

/* The request is over: its answer written, or its connection gone. */
static void on_done(request_t *r)
{
    worker_t *w = r->w;
    http_thread_t *t = w->http;
    if (r->co || r->park == REQ_PARKED) {   /* still waiting (client gone, stopping): nothing may resume it */
        dispatch_forget(r);
    }
    if (r->db) bindings_request_end(w, r);
    uint64_t ns = request_now_ns() - r->start_ns;
    int status = r->status ? r->status : 499;   /* the client went away before an answer */
    /* Slots are process-wide, so a slot matched in an older generation is still right. */
    metrics_observe_request(w->metrics, r->slot, status, ns);
    if (w->cfg->access_log) access_log_write(w, r, status, ns);
    metrics_shard_add_inflight(w->metrics, -1);
    t->inflight--;
    quota_read_done(r);
    quota_body_drop(r);
    free(r->head);
    free(r);
}

static const conn_hooks_t g_hooks = { on_begin, on_body, on_end, on_bad, on_done };

/* ---- threads --------------------------------------------------------------------------- */

static void report_started(http_thread_t *t, int started)
{
    pthread_mutex_lock(&t->srv->lock);
    t->started = started;
    pthread_cond_broadcast(&t->srv->cond);
    pthread_mutex_unlock(&t->srv->lock);
}

/* server_stop's nudge: drain the eventfd; g_stopping is what counts. */
static void on_wake(loop_t *loop, int fd, int events, void *arg)
{
    uint64_t v;
    (void)loop; (void)events; (void)arg;
    if (read(fd, &v, sizeof v) < 0) { /* nothing to do */ }
}

/* How long a stopping reuseport process keeps its open connections for requests (ms). */
#define DRAIN_LINGER_MS 500
/* A keep-alive connection with no request (or a client that stopped reading) is closed after. */
#define IDLE_TIMEOUT_MS 75000

/* LISTEN_MODE=reuseport, at SIGTERM: this thread's socket leaves the port's group at once, so
 * the kernel sends new connections to the process that replaces this one. Connections already
 * queued on it (handshake done, never accepted) are taken over first — a closed listener
 * resets them — and served like the open ones. Between the last accept and the close a
 * connection can still land here (microseconds; none with net.ipv4.tcp_migrate_req=1, which
 * moves them to another socket of the group). Returns how many were taken over. */
static int release_listener(http_thread_t *t)
{
    int n = 0;
    conn_set_unlisten(t->conns);
    for (;;) {
        struct sockaddr_storage sa;
        socklen_t len = sizeof sa;
        int fd = accept4(t->listen_fd, (struct sockaddr *)&sa, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            break;   /* EAGAIN: the queue is empty */
        }
        if (conn_set_adopt(t->conns, fd, (struct sockaddr *)&sa, len) == 0) n++;   /* the set owns fd */
    }
    close(t->listen_fd);
    t->listen_fd = -1;
    return n;
}

static void *http_thread_main(void *arg)
{
    http_thread_t *t = arg;
    server_t *s = t->srv;
    t->w = worker_new(t->index, "http", s->cfg, NULL, t->err, sizeof t->err);
    if (!t->w) { report_started(t, -1); return NULL; }
    t->w->http = t;
    loop_t *loop = loop_new();
    conn_limits_t lim = {
        .idle_timeout_ms = IDLE_TIMEOUT_MS, .head_timeout_ms = quota_read_timeout_ms(),
        .admit = quota_admit, .opened = quota_opened, .head_late = quota_read_timed_out,
    };
    t->conns = loop ? conn_set_new(loop, &g_hooks, t, &lim) : NULL;
    if (!t->conns || conn_set_listen(t->conns, t->listen_fd) < 0 ||
        loop_watch(loop, t->wake_fd, LOOP_READ, on_wake, t) < 0 || t->index == g_fail_worker) {
        snprintf(t->err, sizeof t->err, "cannot start the HTTP daemon on worker %d", t->index);
        conn_set_free(t->conns);   /* the listening socket is the server's: not closed */
        t->conns = NULL;
        loop_free(loop);
        worker_free(t->w);
        t->w = NULL;
        report_started(t, -1);
        return NULL;
    }
    t->w->loop = loop;   /* the worker owns it from here: bindings watch their sockets on it */
    t->w->resume = dispatch_resume;
    report_started(t, 1);

    int quiesced = 0;
    int own_socket = t->listen_fd != s->listen_fd;   /* LISTEN_MODE=reuseport */
    uint64_t deadline = 0, linger_until = 0, last_flush = request_now_ns();
    for (;;) {
        int timeout = quiesced ? 50 : 1000;
        int n = loop_run_once(loop, timeout);   /* connections, bindings' sockets and timers, resumes */
        uint64_t now = request_now_ns();
        /* Access lines go out when the buffer fills, when the loop idles, or once a second. */
        if (t->w->access.len && (n == 0 || now - last_flush > 1000000000ull)) {
            logbuf_flush(&t->w->access);
            last_flush = now;
        }
        if (atomic_load(&g_stopping)) {
            if (!quiesced) {
                quiesced = 1;
                conn_set_draining(t->conns);
                deadline = now + (uint64_t)s->cfg->shutdown_timeout_ms * 1000000ull;
                /* reuseport: another process may be taking over this port. Connections taken
                 * from the queue and keep-alive ones get DRAIN_LINGER_MS to send their request
                 * (answered with Connection: close) before idle ones are closed. */
                if (own_socket) {
                    int taken = release_listener(t);
                    if (taken) log_info("worker %d: took over %d queued connections", t->index, taken);
                    int linger = DRAIN_LINGER_MS < s->cfg->shutdown_timeout_ms ? DRAIN_LINGER_MS : s->cfg->shutdown_timeout_ms;
                    linger_until = now + (uint64_t)linger * 1000000ull;
                } else {
                    conn_set_unlisten(t->conns);
                }
            }
            if (now >= linger_until) conn_set_close_idle(t->conns);
            if ((t->inflight == 0 && (now >= linger_until || conn_set_count(t->conns) == 0)) || now >= deadline) break;
        }
    }
    dispatch_cancel_parked(t->w);
    if (t->inflight) log_warn("worker %d: stopping with %ld requests still in flight", t->index, t->inflight);
    conn_set_free(t->conns);   /* requests still in flight end as 499 */
    t->conns = NULL;
    worker_free(t->w);   /* frees the loop after the bindings' async connections */
    t->w = NULL;
    return NULL;
}

static int open_listener(const config_t *cfg, int reuseport, char *err, size_t errlen)
{
    struct sockaddr_in6 a6;
    struct sockaddr_in a4;
    struct sockaddr *sa;
    socklen_t salen;
    int family;
    memset(&a4, 0, sizeof a4);
    memset(&a6, 0, sizeof a6);
    if (inet_pton(AF_INET, cfg->listen_addr, &a4.sin_addr) == 1) {
        a4.sin_family = AF_INET;
        a4.sin_port = htons((uint16_t)cfg->port);
        sa = (struct sockaddr *)&a4; salen = sizeof a4; family = AF_INET;
    } else if (inet_pton(AF_INET6, cfg->listen_addr, &a6.sin6_addr) == 1) {
        a6.sin6_family = AF_INET6;
        a6.sin6_port = htons((uint16_t)cfg->port);
        sa = (struct sockaddr *)&a6; salen = sizeof a6; family = AF_INET6;
    } else {
        snprintf(err, errlen, "LISTEN_ADDR: '%s' is not an IPv4 or IPv6 address", cfg->listen_addr);
        return -1;
    }
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) { snprintf(err, errlen, "socket: %s", strerror(errno)); return -1; }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (reuseport) setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (bind(fd, sa, salen) < 0 || listen(fd, 1024) < 0) {
        snprintf(err, errlen, "cannot listen on %s:%d: %s", cfg->listen_addr, cfg->port, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

server_t *server_start(const config_t *cfg, char *err, size_t errlen)
{
    server_t *s = calloc(1, sizeof *s);
    if (!s) { snprintf(err, errlen, "out of memory"); return NULL; }
    s->cfg = cfg;
    quota_init(cfg);
    secure_headers_init(cfg);
    static const char *const builtin_paths[] = { "/health", "/ready", "/metrics", "/openapi.json" };
    for (int i = 0; i < 4; i++) g_builtin_slot[i] = metrics_route_slot("GET", builtin_paths[i]);
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    atomic_store(&g_stopping, 0);
    if (cfg->service && strcmp(cfg->service, "gateway") == 0) gateway_init();   /* resolves upstreams: not on an HTTP thread */
    const char *async = getenv("ASYNC");
    dispatch_init(!(async && strcmp(async, "0") == 0));
    const char *mode = getenv("LISTEN_MODE");
    int reuseport = mode && strcmp(mode, "reuseport") == 0;
    const char *fail = getenv("SERVER_TEST_FAIL_WORKER");
    g_fail_worker = fail && *fail ? atoi(fail) : -1;
    s->listen_fd = reuseport ? -1 : open_listener(cfg, 0, err, errlen);
    if (!reuseport && s->listen_fd < 0) { free(s); return NULL; }
    s->nthreads = cfg->workers;
    s->threads = calloc((size_t)s->nthreads, sizeof *s->threads);
    if (!s->threads) { close(s->listen_fd); free(s); snprintf(err, errlen, "out of memory"); return NULL; }
    int failed = 0, launched = 0;
    for (int i = 0; i < s->nthreads; i++) {
        http_thread_t *t = &s->threads[i];
        t->srv = s;
        t->index = i;
        t->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        t->listen_fd = reuseport ? open_listener(cfg, 1, err, errlen) : s->listen_fd;
        if (t->listen_fd < 0) { if (t->wake_fd >= 0) close(t->wake_fd); t->wake_fd = -1; failed = 1; break; }
        if (t->wake_fd < 0 || pthread_create(&t->thread, NULL, http_thread_main, t) != 0) {
            snprintf(err, errlen, "cannot start worker thread %d", i);
            if (t->wake_fd >= 0) close(t->wake_fd);
            t->wake_fd = -1;
            if (reuseport) close(t->listen_fd);   /* its own: server_stop only sees launched threads */
            t->listen_fd = -1;
            failed = 1;
            break;
        }
        launched++;
    }
    /* Wait until every launched thread has its state and daemon, or says why not. */
    pthread_mutex_lock(&s->lock);
    for (int i = 0; i < launched; i++)
        while (s->threads[i].started == 0) pthread_cond_wait(&s->cond, &s->lock);
    pthread_mutex_unlock(&s->lock);
    for (int i = 0; i < launched; i++) {
        if (s->threads[i].started < 0 && !failed) {
            snprintf(err, errlen, "%s", s->threads[i].err);
            failed = 1;
        }
    }
    if (failed) {
        s->nthreads = launched;
        server_stop(s);
        return NULL;
    }
    return s;
}

void server_stop(server_t *s)
{
    if (!s) return;
    atomic_store(&g_stopping, 1);
    for (int i = 0; i < s->nthreads; i++) {
        uint64_t one = 1;
        if (s->threads[i].wake_fd >= 0 && write(s->threads[i].wake_fd, &one, sizeof one) < 0) { /* loop wakes within 1 s anyway */ }
    }
    for (int i = 0; i < s->nthreads; i++) {
        pthread_join(s->threads[i].thread, NULL);
        if (s->threads[i].wake_fd >= 0) close(s->threads[i].wake_fd);
        if (s->threads[i].listen_fd >= 0 && s->threads[i].listen_fd != s->listen_fd) close(s->threads[i].listen_fd);
    }
    if (s->listen_fd >= 0) close(s->listen_fd);
    quota_free();   /* no daemon accepts any more */
    free(s->threads);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    free(s);
}
