/* server: the HTTP front — N worker threads, each running its own libmicrohttpd daemon in
 * external-epoll mode on one shared listening socket, each with its own Lua state.
 *
 * Owning the loop (rather than MHD's internal pool) pins every connection, request and Lua
 * call to one thread we created, gives each thread an idle moment to flush its access log,
 * and leaves room to park requests on I/O later. A connection is accepted by whichever idle
 * thread wins the accept, so a thread busy in a handler does not collect new clients. */
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
#include "dispatch.h"
#include "gateway.h"
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
    struct MHD_Daemon *daemon;
    int wake_fd;                 /* eventfd: wakes the loop to notice a stop */
    int listen_fd;               /* this thread's SO_REUSEPORT socket, or the shared one */
    long inflight;               /* requests begun and not completed (this thread only) */
    int started;                 /* 1 ready, -1 failed */
    char err[512];
} http_thread_t;

static _Atomic int g_stopping;   /* one server per process: read when building responses */
static int g_fail_worker = -1;   /* SERVER_TEST_FAIL_WORKER (specs): this worker fails once its daemon is up */
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

int server_queue(request_t *r, int status, struct MHD_Response *resp, size_t len)
{
    MHD_add_response_header(resp, "X-Request-Id", r->id);
    secure_headers_add(resp, secure_headers_private(r->conn, r->method, status));
    if (atomic_load_explicit(&g_stopping, memory_order_relaxed))
        MHD_add_response_header(resp, "Connection", "close");
    if (r->park == REQ_PARKED) {
        /* The handler finished while parked: MHD takes it on the resumed access call. */
        if (r->pending) MHD_destroy_response(r->pending);
        r->pending = resp;
        r->pending_status = (unsigned)status;
        r->status = status;
        r->resp_bytes = len;
        return 0;
    }
    int rc = MHD_queue_response(r->conn, (unsigned)status, resp) == MHD_YES ? 0 : -1;
    MHD_destroy_response(resp);
    if (rc == 0) {
        r->status = status;
        r->resp_bytes = len;
    }
    return rc;
}

int server_respond(request_t *r, int status, const char *ctype, const char *body, size_t len)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, (void *)(body ? body : ""), MHD_RESPMEM_MUST_COPY);
    if (!resp) return -1;
    if (ctype) MHD_add_response_header(resp, "Content-Type", ctype);
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
    struct MHD_Response *resp = MHD_create_response_from_buffer((size_t)n, body, MHD_RESPMEM_MUST_COPY);
    if (!resp) return -1;
    MHD_add_response_header(resp, "Content-Type", "application/problem+json");
    if (header) MHD_add_response_header(resp, header, value);
    return server_queue(r, status, resp, (size_t)n);
}

/* The resumed access call of a request that was parked: queue what its handler made, or
 * close the connection when there is nothing (cancelled at shutdown, out of memory). */
static enum MHD_Result queue_pending(request_t *r)
{
    if (!r->pending) return MHD_NO;
    enum MHD_Result rc = MHD_queue_response(r->conn, r->pending_status, r->pending);
    MHD_destroy_response(r->pending);
    r->pending = NULL;
    return rc;
}

/* ---- MHD callbacks --------------------------------------------------------------------- */

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

/* Called with the raw request target before anything else: its return value becomes the
 * connection's per-request pointer, so this is where the request is born. */
static void *uri_cb(void *cls, const char *uri, struct MHD_Connection *conn)
{
    http_thread_t *t = cls;
    request_t *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->uri = strdup(uri ? uri : "/");
    if (!r->uri) { free(r); return NULL; }
    char *q = strchr(r->uri, '?');
    if (q) { *q = 0; r->query = q + 1; }
    r->path_len = strlen(r->uri);
    r->w = t->w;
    r->start_ns = request_now_ns();
    r->claims_ref = LUA_NOREF;
    r->conn = conn;
    quota_read_start(r);   /* headers and body must follow within REQUEST_READ_TIMEOUT_MS */
    t->inflight++;
    metrics_shard_add_inflight(t->w->metrics, 1);
    return r;
}

static enum MHD_Result access_cb(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                 const char *version, const char *upload_data, size_t *upload_data_size,
                                 void **con_cls)
{
    http_thread_t *t = cls;
    worker_t *w = t->w;
    request_t *r = *con_cls;
    (void)url; (void)version;
    if (!r) return MHD_NO;   /* out of memory in uri_cb: drop the connection */
    if (r->park == REQ_RESUMED) return queue_pending(r);   /* back from a parked handler */

    if (!r->started) {
        /* First call: headers are in. Answer nothing yet unless refusing the body: a response
         * queued here would make MHD close the connection. */
        r->started = 1;
        r->conn = conn;
        /* A method longer than any this server knows stays empty (501 below), never cut down
         * to one it knows ("OPTIONSX" is not OPTIONS). */
        if (strlen(method) < sizeof r->method) memcpy(r->method, method, strlen(method) + 1);
        else r->method[0] = 0;
        const char *rid = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id");
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
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > r->max_body) {
            r->body_too_large = 1;
            server_problem(r, 413, "Content Too Large", "The request body is larger than this endpoint accepts.", NULL, NULL);
        }
        return MHD_YES;
    }

    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (r->body_too_large || r->body_over_budget) return MHD_YES;
        if (r->body_len + n > r->max_body) {
            /* MHD 0.9.75 cannot queue a response mid-upload: drop what came, discard the
             * rest as it arrives, answer 413 at the end (REQUEST_READ_TIMEOUT_MS bounds it). */
            r->body_too_large = 1;
            quota_body_drop(r);
            return MHD_YES;
        }
        int rc = quota_body_append(r, upload_data, n);
        if (rc == -2) return MHD_NO;
        if (rc == -1) {   /* the process buffers all it may: the same, answered 503 */
            r->body_over_budget = 1;
            quota_body_drop(r);
        }
        return MHD_YES;
    }

    /* Final call: the whole request is here. */
    quota_read_done(r);
    if (r->status) return MHD_YES;   /* already answered (413 by Content-Length) */
    if (r->body_too_large) {
        server_problem(r, 413, "Content Too Large", "The request body is larger than this endpoint accepts.", NULL, NULL);
        return MHD_YES;
    }
    if (r->body_over_budget) {
        server_problem(r, 503, "Service Unavailable", "The server is buffering as many request bodies as it may; retry shortly.",
                       "Retry-After", "1");
        return MHD_YES;
    }
    worker_maybe_reload(w);
    if (r->generation != w->generation &&
        (r->route >= 0 || r->route == ROUTER_NOT_FOUND || r->route == ROUTER_METHOD_NOT_ALLOWED))
        dispatch_match(r, NULL, 0);   /* a reload happened while the body arrived */

    if (!r->method[0]) {
        server_problem(r, 501, "Not Implemented", "This server does not implement this method.", NULL, NULL);
        return MHD_YES;
    }
    if (request_is_builtin(r->route)) { builtins_serve(r); return MHD_YES; }
    if (r->route == ROUTER_GATEWAY) { gateway_handle(r); return MHD_YES; }
    if (r->route == ROUTER_NOT_FOUND) {
        server_problem(r, 404, "Not Found", "No resource lives at this path.", NULL, NULL);
        return MHD_YES;
    }
    if (r->route == ROUTER_METHOD_NOT_ALLOWED && !router_method_valid(r->method)) {
        server_problem(r, 501, "Not Implemented", "This server does not implement this method.", NULL, NULL);
        return MHD_YES;
    }
    if (r->route == ROUTER_METHOD_NOT_ALLOWED) {
        char allow[128];
        dispatch_match(r, allow, sizeof allow);
        server_problem(r, 405, "Method Not Allowed", "This resource does not answer this method.", "Allow", allow);
        return MHD_YES;
    }
    /* Client text reaches handlers as UTF-8 only: a path that is not is no resource here, a
     * query string that is not a bad request (the handler never sees either). */
    if (!request_text_valid(r->uri, r->path_len)) {
        server_problem(r, 404, "Not Found", "No resource lives at this path.", NULL, NULL);
        return MHD_YES;
    }
    if (r->query && !request_text_valid(r->query, strlen(r->query))) {
        server_problem(r, 400, "Bad Request", "The query string is not valid UTF-8 once percent-decoded.", NULL, NULL);
        return MHD_YES;
    }
    dispatch_route(r);
    return MHD_YES;
}

static void completed_cb(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    http_thread_t *t = cls;
    request_t *r = *con_cls;
    (void)conn; (void)toe;
    if (!r) return;
    *con_cls = NULL;
    if (r->co || r->park == REQ_PARKED) {   /* parked (the daemon is stopping): nothing may resume it */
        dispatch_forget(r);
    }
    if (r->pending) MHD_destroy_response(r->pending);
    if (r->db) bindings_request_end(t->w, r);
    uint64_t ns = request_now_ns() - r->start_ns;
    int status = r->status ? r->status : 499;   /* the client went away before an answer */
    if (r->started) {
        /* Slots are process-wide, so a slot matched in an older generation is still right. */
        metrics_observe_request(t->w->metrics, r->slot, status, ns);
        if (t->w->cfg->access_log) access_log_write(t->w, r, status, ns);
    }
    metrics_shard_add_inflight(t->w->metrics, -1);
    t->inflight--;
    quota_read_done(r);
    quota_body_drop(r);
    free(r->uri);
    free(r);
}

static void mhd_logger(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = 0;
    log_line(LOG_DEBUG, NULL, "libmicrohttpd: %s", msg);
}

/* ---- threads --------------------------------------------------------------------------- */

static void report_started(http_thread_t *t, int started)
{
    pthread_mutex_lock(&t->srv->lock);
    t->started = started;
    pthread_cond_broadcast(&t->srv->cond);
    pthread_mutex_unlock(&t->srv->lock);
}

/* The daemon's epoll fd is ready: MHD_run, called on every iteration, takes it from here. */
static void on_mhd_ready(loop_t *loop, int fd, int events, void *arg)
{
    (void)loop; (void)fd; (void)events; (void)arg;
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

static unsigned open_connections(http_thread_t *t)
{
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(t->daemon, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
    return di ? di->num_connections : 0;
}

/* LISTEN_MODE=reuseport, at SIGTERM: this thread's socket leaves the port's group at once, so
 * the kernel sends new connections to the process that replaces this one. Connections already
 * queued on it (handshake done, never accepted) are handed to MHD first — a closed listener
 * resets them — and served like the open ones. Between the last accept and the close a
 * connection can still land here (microseconds; none with net.ipv4.tcp_migrate_req=1, which
 * moves them to another socket of the group). Returns how many were taken over. */
static int release_listener(http_thread_t *t)
{
    int n = 0;
    for (;;) {
        struct sockaddr_storage sa;
        socklen_t len = sizeof sa;
        int fd = accept4(t->listen_fd, (struct sockaddr *)&sa, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            break;   /* EAGAIN: the queue is empty */
        }
        if (MHD_add_connection(t->daemon, fd, (struct sockaddr *)&sa, len) == MHD_YES) n++;   /* MHD owns fd */
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
    unsigned flags = MHD_USE_EPOLL | MHD_USE_TURBO | MHD_USE_ERROR_LOG | MHD_ALLOW_SUSPEND_RESUME;   /* parked handlers, forwards */
    t->daemon = MHD_start_daemon(flags, 0, quota_accept, NULL, access_cb, t,
                                 MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, NULL,
                                 MHD_OPTION_NOTIFY_CONNECTION, quota_connection, NULL,
                                 MHD_OPTION_CONNECTION_LIMIT, quota_max_connections(),   /* process-wide in quota.c */
                                 MHD_OPTION_LISTEN_SOCKET, t->listen_fd,
                                 MHD_OPTION_STRICT_FOR_CLIENT, (int)1,   /* HTTP/1.1 without Host → 400 */
                                 MHD_OPTION_URI_LOG_CALLBACK, uri_cb, t,
                                 MHD_OPTION_NOTIFY_COMPLETED, completed_cb, t,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)75,
                                 MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(16 * 1024),   /* MHD zeroes it per request */
                                 MHD_OPTION_END);
    const union MHD_DaemonInfo *di = t->daemon ? MHD_get_daemon_info(t->daemon, MHD_DAEMON_INFO_EPOLL_FD) : NULL;
    loop_t *loop = loop_new();
    if (!t->daemon || !di || !loop || loop_watch(loop, di->epoll_fd, LOOP_READ, on_mhd_ready, t) < 0 ||
        loop_watch(loop, t->wake_fd, LOOP_READ, on_wake, t) < 0 || t->index == g_fail_worker) {
        snprintf(t->err, sizeof t->err, "cannot start the HTTP daemon on worker %d", t->index);
        loop_free(loop);
        /* Quiesce first: MHD_stop_daemon would close the listening socket, which belongs to
         * the server (shared by the other threads, or closed by server_stop). */
        if (t->daemon) {
            MHD_quiesce_daemon(t->daemon);
            MHD_stop_daemon(t->daemon);
        }
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
        MHD_UNSIGNED_LONG_LONG mhd_to;
        int timeout = 1000;
        if (MHD_get_timeout(t->daemon, &mhd_to) == MHD_YES && mhd_to < (MHD_UNSIGNED_LONG_LONG)timeout) timeout = (int)mhd_to;
        if (quiesced && timeout > 50) timeout = 50;
        int n = loop_run_once(loop, timeout);   /* bindings' sockets and timers, resumes */
        MHD_run(t->daemon);                     /* then HTTP: new requests, resumed connections */
        uint64_t now = request_now_ns();
        /* Access lines go out when the buffer fills, when the loop idles, or once a second. */
        if (t->w->access.len && (n == 0 || now - last_flush > 1000000000ull)) {
            logbuf_flush(&t->w->access);
            last_flush = now;
        }
        if (atomic_load(&g_stopping)) {
            if (!quiesced) {
                MHD_quiesce_daemon(t->daemon);
                quiesced = 1;
                deadline = now + (uint64_t)s->cfg->shutdown_timeout_ms * 1000000ull;
                /* reuseport: another process may be taking over this port. Connections taken
                 * from the queue and keep-alive ones get DRAIN_LINGER_MS to send their request
                 * (answered with Connection: close) before idle ones are closed. */
                if (own_socket) {
                    int taken = release_listener(t);
                    if (taken) log_info("worker %d: took over %d queued connections", t->index, taken);
                    int linger = DRAIN_LINGER_MS < s->cfg->shutdown_timeout_ms ? DRAIN_LINGER_MS : s->cfg->shutdown_timeout_ms;
                    linger_until = now + (uint64_t)linger * 1000000ull;
                }
            }
            if ((t->inflight == 0 && (now >= linger_until || open_connections(t) == 0)) || now >= deadline) break;
        }
    }
    dispatch_cancel_parked(t->w);
    if (t->inflight) log_warn("worker %d: stopping with %ld requests still in flight", t->index, t->inflight);
    MHD_stop_daemon(t->daemon);
    t->daemon = NULL;
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
