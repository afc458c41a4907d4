/* server: the HTTP front — N worker threads, each running its own libmicrohttpd daemon in
 * external-epoll mode on one shared listening socket, each with its own Lua state.
 *
 * Owning the loop (rather than MHD's internal pool) pins every connection, request and Lua
 * call to one thread we created, gives each thread an idle moment to flush its access log,
 * and leaves room to park requests on I/O later. A connection is accepted by whichever idle
 * thread wins the accept, so a thread busy in a handler does not collect new clients. */
#include "ratelimit_http.h"
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

#include "auth.h"
#include "bindings.h"
#include "gateway.h"
#include "quota.h"
#include "../core/log.h"
#include "loop.h"
#include "../core/metrics.h"
#include "utf8.h"
#include "worker.h"

/* Route values besides router indexes and ROUTER_NOT_FOUND / ROUTER_METHOD_NOT_ALLOWED. */
enum { BUILTIN_HEALTH = -10, BUILTIN_READY, BUILTIN_METRICS, BUILTIN_OPENAPI, ROUTER_GATEWAY = -20 };

static int is_builtin(int route) { return route >= BUILTIN_HEALTH && route <= BUILTIN_OPENAPI; }

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
static int g_async;              /* ASYNC=1 (default): handlers run in coroutines that park on I/O */
static metric_cell_t *g_handler_errors;
static int g_builtin_slot[4];   /* metrics slots of /health, /ready, /metrics, /openapi.json */

struct server {
    const config_t *cfg;
    int listen_fd;
    int nthreads;
    http_thread_t *threads;
    pthread_mutex_t lock;
    pthread_cond_t cond;         /* start-up: each thread reports ready or failed */
};

uint64_t request_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

size_t request_unescape(char *dst, const char *src, size_t len, int plus_space)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char c = src[i];
        if (c == '%' && i + 2 < len) {
            int hi = (unsigned char)src[i + 1], lo = (unsigned char)src[i + 2];
            int h = (hi >= '0' && hi <= '9') ? hi - '0' : (hi | 32) >= 'a' && (hi | 32) <= 'f' ? (hi | 32) - 'a' + 10 : -1;
            int l = (lo >= '0' && lo <= '9') ? lo - '0' : (lo | 32) >= 'a' && (lo | 32) <= 'f' ? (lo | 32) - 'a' + 10 : -1;
            if (h >= 0 && l >= 0) {
                dst[o++] = (char)(h * 16 + l);
                i += 2;
                continue;
            }
        }
        dst[o++] = (plus_space && c == '+') ? ' ' : c;
    }
    dst[o] = 0;
    return o;
}

int request_text_valid(const char *src, size_t len)
{
    unsigned char seq[4];
    size_t have = 0, need = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)src[i];
        if (c == '%' && i + 2 < len) {
            int hi = (unsigned char)src[i + 1], lo = (unsigned char)src[i + 2];
            int h = (hi >= '0' && hi <= '9') ? hi - '0' : (hi | 32) >= 'a' && (hi | 32) <= 'f' ? (hi | 32) - 'a' + 10 : -1;
            int l = (lo >= '0' && lo <= '9') ? lo - '0' : (lo | 32) >= 'a' && (lo | 32) <= 'f' ? (lo | 32) - 'a' + 10 : -1;
            if (h >= 0 && l >= 0) {
                c = (unsigned char)(h * 16 + l);
                i += 2;
            }
        }
        if (!have) {
            if (c < 0x80) continue;
            need = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
            if (!need) return 0;
        }
        seq[have++] = c;
        if (have == need) {
            if (utf8_seq(seq, need) != need) return 0;
            have = 0;
        }
    }
    return have == 0;
}

/* ---- responses ------------------------------------------------------------------------- */

int server_queue(request_t *r, int status, struct MHD_Response *resp, size_t len)
{
    MHD_add_response_header(resp, "X-Request-Id", r->id);
    if (atomic_load_explicit(&g_stopping, memory_order_relaxed))
        MHD_add_response_header(resp, "Connection", "close");
    if (r->suspended == 1) {
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

/* ---- built-in endpoints ---------------------------------------------------------------- */

static int builtin_route(const request_t *r)
{
    if (strcmp(r->method, "GET") != 0 && strcmp(r->method, "HEAD") != 0) return 0;
    const char *p = r->uri;
    size_t n = r->path_len;
    if (n == 7 && memcmp(p, "/health", 7) == 0) return BUILTIN_HEALTH;
    if (n == 6 && memcmp(p, "/ready", 6) == 0) return BUILTIN_READY;
    if (n == 8 && memcmp(p, "/metrics", 8) == 0) return BUILTIN_METRICS;
    if (n == 13 && memcmp(p, "/openapi.json", 13) == 0) return BUILTIN_OPENAPI;
    return 0;
}

static void serve_builtin(request_t *r)
{
    worker_t *w = r->w;
    switch (r->route) {
    case BUILTIN_HEALTH:
        server_respond(r, 200, "application/json", "{\"status\":\"ok\"}", 15);
        break;
    case BUILTIN_READY: {
        buf_t b;
        buf_init(&b);
        buf_adds(&b, "{\"checks\":{");
        int down = bindings_ready(w, &b);
        if (atomic_load(&g_stopping)) { buf_adds(&b, ",\"server\":\"down: shutting down\""); down++; }
        buf_addf(&b, "},\"status\":\"%s\"}", down ? "unavailable" : "ready");
        server_respond(r, down ? 503 : 200, "application/json", b.data, b.len);
        buf_free(&b);
        break;
    }
    case BUILTIN_METRICS: {
        buf_t b;
        buf_init(&b);
        metrics_render(&b);
        server_respond(r, 200, "text/plain; version=0.0.4; charset=utf-8", b.data, b.len);
        buf_free(&b);
        break;
    }
    case BUILTIN_OPENAPI:
        if (w->snap->openapi) server_respond(r, 200, "application/json", w->snap->openapi, w->snap->openapi_len);
        else server_problem(r, 404, "Not Found", "This service publishes no OpenAPI document.", NULL, NULL);
        break;
    }
}

/* ---- Lua dispatch ---------------------------------------------------------------------- */

static void handler_failed(request_t *r, const char *what, const char *msg)
{
    worker_t *w = r->w;
    char fields[3000], esc[2048];
    log_json_escape(esc, sizeof esc, msg ? msg : "?", msg ? strlen(msg) : 1);
    snprintf(fields, sizeof fields, "\"request_id\":\"%s\",\"route\":\"%s\",\"error\":\"%s\"", r->id,
             r->route >= 0 ? w->snap->routes[r->route].pattern : "", esc);
    log_line(LOG_ERROR, fields, "%s", what);
    metrics_cell_add(g_handler_errors, 1);
    server_problem(r, 500, "Internal Server Error",
                   "The server failed to handle this request; quote the request id when reporting it.", NULL, NULL);
}

/* Turn the handler's (status, body, headers) at stack index base..base+2 into a response; a
 * limited route's check (r->rl) adds RateLimit-* unless the handler set its own. */
static void send_lua_response(request_t *r, int base)
{
    const ratelimit_result_t *rl = r->has_rl ? &r->rl : NULL;
    lua_State *L = r->w->L;
    int isnum = lua_type(L, base) == LUA_TNUMBER;
    lua_Number st = lua_tonumber(L, base);
    if (!isnum || st < 100 || st > 599 || st != (int)st) {
        handler_failed(r, "handler returned an invalid status", lua_typename(L, lua_type(L, base)));
        return;
    }
    int status = (int)st;
    size_t len = 0;
    const char *body = NULL;
    int bt = lua_type(L, base + 1);
    if (bt == LUA_TTABLE) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, r->w->encode_ref);
        lua_pushvalue(L, base + 1);
        if (worker_pcall(L, r->w->traceback_ref, 1, 1) != 0) {
            handler_failed(r, "handler returned a body that cannot be encoded as JSON", lua_tostring(L, -1));
            return;
        }
        lua_replace(L, base + 1);
        bt = LUA_TSTRING;
    }
    if (bt == LUA_TSTRING) body = lua_tolstring(L, base + 1, &len);
    else if (bt != LUA_TNIL) {
        handler_failed(r, "handler returned a body that is neither a table, a string nor nil", lua_typename(L, bt));
        return;
    }
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, (void *)(body ? body : ""), MHD_RESPMEM_MUST_COPY);
    if (!resp) { server_problem(r, 503, "Service Unavailable", "out of memory", NULL, NULL); return; }
    int has_ctype = 0;
    if (lua_type(L, base + 2) == LUA_TTABLE) {
        lua_pushnil(L);
        while (lua_next(L, base + 2) != 0) {
            if (lua_type(L, -2) == LUA_TSTRING && (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER)) {
                const char *k = lua_tostring(L, -2);
                if (strcasecmp(k, "Content-Type") == 0) has_ctype = 1;
                else if (rl && strcasecmp(k, "RateLimit-Limit") == 0) rl = NULL;   /* the handler's own policy */
                MHD_add_response_header(resp, k, lua_tostring(L, -1));
            }
            lua_pop(L, 1);
        }
    }
    if (!has_ctype && body) MHD_add_response_header(resp, "Content-Type", "application/json");
    if (rl) ratelimit_add_headers(resp, rl);
    server_queue(r, status, resp, len);
}

static void push_request(lua_State *L, request_t *r)
{
    lua_createtable(L, 0, 6);
    lua_pushstring(L, r->method);
    lua_setfield(L, -2, "method");
    lua_pushlstring(L, r->uri, r->path_len);
    lua_setfield(L, -2, "path");
    lua_pushstring(L, r->id);
    lua_setfield(L, -2, "id");
    lua_createtable(L, 0, r->match.nparams);
    for (int i = 0; i < r->match.nparams; i++) {
        const router_param_t *p = &r->match.params[i];
        char small[256];
        char *dst = p->value_len < sizeof small ? small : malloc(p->value_len + 1);
        if (!dst) continue;
        size_t n = request_unescape(dst, p->value, p->value_len, 0);
        lua_pushlstring(L, p->name, p->name_len);
        lua_pushlstring(L, dst, n);
        lua_rawset(L, -3);
        if (dst != small) free(dst);
    }
    lua_setfield(L, -2, "params");
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->w->request_mt_ref);
    lua_setmetatable(L, -2);
}

/* ---- handler coroutines (ASYNC=1) ------------------------------------------------------- */

static void park_link(worker_t *w, request_t *r)
{
    r->wprev = NULL;
    r->wnext = w->waiting;
    if (w->waiting) w->waiting->wprev = r;
    w->waiting = r;
    w->nwaiting++;
}

static void park_unlink(worker_t *w, request_t *r)
{
    if (r->wprev) r->wprev->wnext = r->wnext; else w->waiting = r->wnext;
    if (r->wnext) r->wnext->wprev = r->wprev;
    r->wnext = r->wprev = NULL;
    w->nwaiting--;
}

/* Let go of r's coroutine and claims: the one place co_ref is released. A coroutine whose
 * handler returned (reusable, its stack empty) goes back to the worker's pool. */
static void release_coroutine(request_t *r, int reusable)
{
    worker_t *w = r->w;
    lua_State *L = r->retired ? w->old_L : w->L;
    if (r->co && reusable && !r->retired && w->nco_pool < WORKER_CO_POOL && lua_status(r->co) == 0 && lua_gettop(r->co) == 0) {
        w->co_pool[w->nco_pool].co = r->co;
        w->co_pool[w->nco_pool++].ref = r->co_ref;
    } else if (r->co) {
        luaL_unref(L, LUA_REGISTRYINDEX, r->co_ref);
    }
    r->co = NULL;
    r->co_ref = LUA_NOREF;
    if (r->claims_ref != LUA_NOREF) {
        luaL_unref(L, LUA_REGISTRYINDEX, r->claims_ref);
        r->claims_ref = LUA_NOREF;
    }
    if (r->retired) {
        r->retired = 0;
        worker_retired_done(w);   /* may close the old state: nothing of it is used after */
    }
}

/* The error object at 1 as text: itself, its __tostring, or its type. Run under lua_pcall:
 * a __tostring may raise. */
static int error_text(lua_State *L)
{
    if (lua_type(L, 1) == LUA_TSTRING) return 1;
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) return 1;
    lua_pushfstring(L, "error object: %s", luaL_typename(L, 1));
    return 1;
}

/* The message and traceback of a coroutine that raised, pushed onto L (the coroutine is dead:
 * nothing is called on it, its error object is moved out first). */
static void push_coroutine_error(lua_State *L, lua_State *co)
{
    lua_pushcfunction(L, error_text);
    lua_xmove(co, L, 1);
    const char *type = luaL_typename(L, -1);
    if (lua_pcall(L, 1, 1, 0) != 0) {
        lua_pop(L, 1);
        lua_pushfstring(L, "error object: %s (its __tostring raised)", type);
    }
    luaL_traceback(L, co, lua_tostring(L, -1), 0);
}

/* Run r's handler coroutine with nargs values on its stack until it ends or parks. Ended: the
 * response is queued (or kept for the resumed call) and the connection resumed if parked. */
static void run_coroutine(request_t *r, int nargs)
{
    worker_t *w = r->w;
    int retired = r->retired;
    if (retired) worker_swap_retired(w);   /* run it in the generation it started in */
    lua_State *L = w->L, *co = r->co;
    w->cur = r;
    int rc = lua_resume(co, nargs);
    w->cur = NULL;
    if (rc == LUA_YIELD && r->wait_cancel) {   /* parked by a binding: wait for worker_wake */
        if (!r->suspended) {
            MHD_suspend_connection(r->conn);
            r->suspended = 1;
            park_link(w, r);
        }
        if (retired) worker_swap_retired(w);
        return;
    }
    worker_cancel_wait(r);   /* a wait it registered but never parked on (a raised yield) */
    lua_settop(L, 0);
    if (rc == LUA_YIELD) {
        handler_failed(r, "handler yielded outside an I/O binding", "coroutine.yield across the handler");
    } else if (rc != 0) {
        push_coroutine_error(L, co);
        handler_failed(r, "handler raised an error", lua_tostring(L, -1));
    } else {
        lua_settop(co, 3);
        lua_xmove(co, L, 3);
        send_lua_response(r, 1);
    }
    lua_settop(L, 0);
    if (retired) worker_swap_retired(w);
    release_coroutine(r, rc == 0);
    if (r->suspended == 1) {
        park_unlink(w, r);
        r->suspended = 2;
        MHD_resume_connection(r->conn);
    }
}

/* worker_t.resume: a parked request's I/O is done (worker_wake). */
static void resume_request(request_t *r)
{
    run_coroutine(r, r->resume_n);
}

void server_park(request_t *r, void (*cancel)(void *arg), void *arg)
{
    r->wait_cancel = cancel;
    r->wait_arg = arg;
    if (r->suspended == 1) return;   /* already parked (a rate-limit check came first) */
    MHD_suspend_connection(r->conn);
    r->suspended = 1;
    park_link(r->w, r);
}

void server_unpark(request_t *r)
{
    r->wait_cancel = NULL;
    r->wait_arg = NULL;
    park_unlink(r->w, r);
    r->suspended = 2;
    MHD_resume_connection(r->conn);
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

/* Shutdown deadline: forget every parked request and hand its connection back to MHD, which
 * closes it (MHD must not be stopped with connections still suspended). */
static void cancel_parked(worker_t *w)
{
    while (w->waiting) {
        request_t *r = w->waiting;
        worker_cancel_wait(r);
        park_unlink(w, r);
        release_coroutine(r, 0);
        r->suspended = 2;
        MHD_resume_connection(r->conn);
    }
}

static void dispatch_lua(request_t *r)
{
    worker_t *w = r->w;
    lua_State *L = w->L;
    lua_settop(L, 0);
    if (g_async && w->loop) {
        lua_State *co;
        if (w->nco_pool) {
            w->nco_pool--;
            co = w->co_pool[w->nco_pool].co;
            r->co_ref = w->co_pool[w->nco_pool].ref;
        } else {
            co = lua_newthread(L);
            r->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        }
        r->co = co;
        lua_rawgeti(co, LUA_REGISTRYINDEX, w->handlers_ref);
        lua_rawgeti(co, -1, r->route + 1);
        lua_remove(co, -2);
        push_request(co, r);
        run_coroutine(r, 1);
        return;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, w->handlers_ref);
    lua_rawgeti(L, -1, r->route + 1);
    lua_remove(L, -2);
    push_request(L, r);
    w->cur = r;
    if (worker_pcall(L, w->traceback_ref, 1, 3) != 0) handler_failed(r, "handler raised an error", lua_tostring(L, -1));
    else send_lua_response(r, 1);
    w->cur = NULL;
    if (r->claims_ref != LUA_NOREF) {
        luaL_unref(L, LUA_REGISTRYINDEX, r->claims_ref);
        r->claims_ref = LUA_NOREF;
    }
    lua_settop(L, 0);
}

/* ---- the route's checks, then its handler ---------------------------------------------- */

/* A route's rate limit by client IP before the token is looked at (refusing cheaply), its
 * auth, its rate limit by token subject after it (host-enforced, so no handler can forget
 * it), then the handler. A limit held in Redis parks the request while Redis answers. */
enum { STEP_LIMIT_IP, STEP_AUTH, STEP_LIMIT_SUB, STEP_HANDLER, STEP_DONE };

static void proceed(request_t *r);
static void match_route(request_t *r, char *allow, size_t allow_len);

/* A parked request with an answer queued and no handler running: hand it back to MHD. */
static void settle(request_t *r)
{
    if (r->suspended == 1 && !r->co) server_unpark(r);
}

static void limit_cancel(void *arg)
{
    ratelimit_wait_cancel(arg);
}

/* Redis answered a route's limit (on the loop): refuse, or go on where the checks were. */
static void limit_done(void *arg, const ratelimit_result_t *res)
{
    request_t *r = arg;
    r->wait_cancel = NULL;   /* the wait is over: its handle is freed by the limiter */
    r->wait_arg = NULL;
    r->rl = *res;
    worker_t *w = r->w;
    if (r->generation != w->generation) {
        /* A reload while Redis answered: the route table changed under the request. Its
         * claims (if any) belong to a state that may be gone; go round again from the top. */
        r->claims_ref = LUA_NOREF;
        match_route(r, NULL, 0);
        if (r->route < 0) {
            server_problem(r, 503, "Service Unavailable", "The service was reloaded; try again.", "Retry-After", "1");
            settle(r);
            return;
        }
        r->step = STEP_LIMIT_IP;
    } else if (!res->allowed) {
        ratelimit_refuse(r, w->snap->routes[r->route].rate_limit.name, res);
        settle(r);
        return;
    }
    proceed(r);
}

/* Run r's remaining steps until one answers, parks, or the handler has run. Called from the
 * final access call, and again from the loop when a parked check is answered. */
static void proceed(request_t *r)
{
    worker_t *w = r->w;
    const route_info_t *ri = &w->snap->routes[r->route];
    while (r->step != STEP_DONE) {
        int step = r->step++;
        if (step == STEP_LIMIT_IP || step == STEP_LIMIT_SUB) {
            /* The check's result stays on the request: the response (maybe after a parked
             * wait) carries its RateLimit-* headers. */
            if (!ri->rate_limit.key) continue;
            ratelimit_wait_t *wait;
            int rc = ratelimit_route(r, &ri->rate_limit, step == STEP_LIMIT_SUB, &r->rl, limit_done, r, &wait);
            if (rc == 1) { server_park(r, limit_cancel, wait); return; }
            if (rc < 0) break;   /* 429 queued */
        } else if (step == STEP_AUTH) {
            if (auth_check(r, ri) != 0) break;   /* answered 401/403 */
        } else {
            r->has_rl = r->rl.limit != 0;
            dispatch_lua(r);
            if (!r->status && !r->suspended) server_problem(r, 500, "Internal Server Error", "No response was produced.", NULL, NULL);
            if (r->co) return;   /* parked in its handler: run_coroutine resumes the connection */
            break;
        }
    }
    r->step = STEP_DONE;
    settle(r);
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

static void match_route(request_t *r, char *allow, size_t allow_len)
{
    worker_t *w = r->w;
    r->generation = w->generation;
    r->slot = 0;
    if (!w->snap->router) { r->route = ROUTER_NOT_FOUND; return; }
    r->route = router_match(w->snap->router, r->method, r->uri, r->path_len, &r->match, allow, allow_len);
    if (r->route >= 0) r->slot = w->snap->routes[r->route].metrics_slot;
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
    if (r->suspended == 2) return queue_pending(r);   /* back from a parked handler */

    if (!r->started) {
        /* First call: headers are in. Answer nothing yet unless refusing the body: a response
         * queued here would make MHD close the connection. */
        r->started = 1;
        r->conn = conn;
        snprintf(r->method, sizeof r->method, "%s", method);
        const char *rid = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id");
        if (rid && valid_request_id(rid)) snprintf(r->id, sizeof r->id, "%s", rid);
        else worker_request_id(w, r->id);
        int builtin = builtin_route(r);
        if (builtin) {
            r->route = builtin;
            r->slot = g_builtin_slot[builtin - BUILTIN_HEALTH];
        } else if (w->cfg->service && strcmp(w->cfg->service, "gateway") == 0) {
            r->route = ROUTER_GATEWAY;
        } else {
            match_route(r, NULL, 0);
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
        match_route(r, NULL, 0);   /* a reload happened while the body arrived */

    if (is_builtin(r->route)) { serve_builtin(r); return MHD_YES; }
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
        match_route(r, allow, sizeof allow);
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
    r->step = STEP_LIMIT_IP;
    proceed(r);
    return MHD_YES;
}

/* Per-thread cache of the second-resolution timestamp prefix for access lines. */
static __thread time_t tls_ts_sec;
static __thread char tls_ts[32];

/* Access-line writer: the line is built by hand, without printf, on a per-thread buffer —
 * it runs once per request (snprintf with a float cost about 2.5 us of ~17 us per request). */
typedef struct {
    char *p, *end;
} line_t;

static inline void put(line_t *o, const char *s, size_t n)
{
    if ((size_t)(o->end - o->p) < n) { o->p = o->end; return; }
    memcpy(o->p, s, n);
    o->p += n;
}

#define PUT_LIT(o, lit) put((o), (lit), sizeof(lit) - 1)

static inline void put_uint(line_t *o, uint64_t v)
{
    char tmp[24];
    int i = sizeof tmp;
    do { tmp[--i] = (char)('0' + v % 10); v /= 10; } while (v);
    put(o, tmp + i, sizeof tmp - (size_t)i);
}

/* A JSON string body: copied as is when nothing needs escaping (the usual case). */
static void put_json(line_t *o, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == '"' || c == '\\' || c >= 0x7f) {
            size_t room = (size_t)(o->end - o->p);
            if (room < 2) { o->p = o->end; return; }
            o->p += log_json_escape(o->p, room, s, n);
            return;
        }
    }
    put(o, s, n);
}

static void access_log(http_thread_t *t, request_t *r, int status, uint64_t ns)
{
    worker_t *w = t->w;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME_COARSE, &now);
    if (now.tv_sec != tls_ts_sec) {
        struct tm tm;
        gmtime_r(&now.tv_sec, &tm);
        strftime(tls_ts, sizeof tls_ts, "%Y-%m-%dT%H:%M:%S", &tm);
        tls_ts_sec = now.tv_sec;
    }
    /* A handler parked across a reload ends after the swap: its index is of the old table. */
    const char *route = r->route >= 0 && r->generation == w->generation ? w->snap->routes[r->route].pattern
                      : r->route >= 0 ? "(previous generation)"
                      : r->route == ROUTER_GATEWAY ? "gateway" : is_builtin(r->route) ? "builtin" : "unmatched";
    const char *service = w->cfg->service ? w->cfg->service : "";
    enum { MAX_LINE = 1400 };
    char *start = logbuf_reserve(&w->access, MAX_LINE);
    if (!start) return;
    line_t o = { start, start + MAX_LINE };
    long ms = now.tv_nsec / 1000000;
    char frac[5] = { '.', (char)('0' + ms / 100), (char)('0' + ms / 10 % 10), (char)('0' + ms % 10), 'Z' };
    uint64_t us = ns / 1000;
    char dur[4] = { '.', (char)('0' + us / 100 % 10), (char)('0' + us / 10 % 10), (char)('0' + us % 10) };
    PUT_LIT(&o, "{\"ts\":\"");
    put(&o, tls_ts, strlen(tls_ts));
    put(&o, frac, sizeof frac);
    PUT_LIT(&o, "\",\"level\":\"info\",\"service\":\"");
    put(&o, service, strlen(service));
    PUT_LIT(&o, "\",\"type\":\"access\",\"method\":\"");
    put_json(&o, r->method, strlen(r->method));
    PUT_LIT(&o, "\",\"path\":\"");
    put_json(&o, r->uri, r->path_len > 256 ? 256 : r->path_len);
    PUT_LIT(&o, "\",\"route\":\"");
    put(&o, route, strlen(route));
    PUT_LIT(&o, "\",\"status\":");
    put_uint(&o, (uint64_t)status);
    PUT_LIT(&o, ",\"duration_ms\":");
    put_uint(&o, us / 1000);
    put(&o, dur, sizeof dur);
    PUT_LIT(&o, ",\"bytes\":");
    put_uint(&o, r->resp_bytes);
    PUT_LIT(&o, ",\"request_id\":\"");
    put(&o, r->id, strlen(r->id));
    PUT_LIT(&o, "\"}\n");
    if (o.p < o.end) logbuf_commit(&w->access, (size_t)(o.p - start));   /* else: cut, dropped */
}

static void completed_cb(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    http_thread_t *t = cls;
    request_t *r = *con_cls;
    (void)conn; (void)toe;
    if (!r) return;
    *con_cls = NULL;
    if (r->co || r->suspended == 1) {   /* parked (the daemon is stopping): nothing may resume it */
        worker_cancel_wait(r);
        if (r->suspended == 1) park_unlink(t->w, r);
        if (r->co) release_coroutine(r, 0);
    }
    if (r->pending) MHD_destroy_response(r->pending);
    if (r->db) bindings_request_end(t->w, r);
    uint64_t ns = request_now_ns() - r->start_ns;
    int status = r->status ? r->status : 499;   /* the client went away before an answer */
    if (r->started) {
        /* Slots are process-wide, so a slot matched in an older generation is still right. */
        metrics_observe_request(t->w->metrics, r->slot, status, ns);
        if (t->w->cfg->access_log) access_log(t, r, status, ns);
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
        loop_watch(loop, t->wake_fd, LOOP_READ, on_wake, t) < 0) {
        snprintf(t->err, sizeof t->err, "cannot start the HTTP daemon on worker %d", t->index);
        loop_free(loop);
        if (t->daemon) MHD_stop_daemon(t->daemon);
        worker_free(t->w);
        t->w = NULL;
        report_started(t, -1);
        return NULL;
    }
    t->w->loop = loop;   /* the worker owns it from here: bindings watch their sockets on it */
    t->w->resume = resume_request;
    report_started(t, 1);

    int quiesced = 0;
    uint64_t deadline = 0, last_flush = request_now_ns();
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
            }
            if (t->inflight == 0 || now >= deadline) break;
        }
    }
    cancel_parked(t->w);
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
    g_handler_errors = metrics_counter0("lua_handler_errors_total", "Handlers that raised an error or returned an invalid response.");
    static const char *const builtin_paths[] = { "/health", "/ready", "/metrics", "/openapi.json" };
    for (int i = 0; i < 4; i++) g_builtin_slot[i] = metrics_route_slot("GET", builtin_paths[i]);
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    atomic_store(&g_stopping, 0);
    if (cfg->service && strcmp(cfg->service, "gateway") == 0) gateway_init();   /* resolves upstreams: not on an HTTP thread */
    const char *async = getenv("ASYNC");
    g_async = !(async && strcmp(async, "0") == 0);
    const char *mode = getenv("LISTEN_MODE");
    int reuseport = mode && strcmp(mode, "reuseport") == 0;
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
