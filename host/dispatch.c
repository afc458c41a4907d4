/* dispatch: a matched route's way to its answer — the door's steps (a rate limit by client IP,
 * auth, a rate limit by subject; a limit held in Redis parks the request and its reply resumes
 * the steps), then the Lua handler in a coroutine of the thread's state that parks on I/O
 * (worker_wait) while the thread serves others. Also the parking of C-level work (the
 * gateway's forwards): server_park / server_unpark. */
#include "dispatch.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../core/log.h"
#include "../core/metrics.h"
#include "auth.h"
#include "ratelimit_http.h"
#include "server.h"
#include "worker.h"

static int g_async;              /* ASYNC=1 (default): handlers run in coroutines that park on I/O */
static metric_cell_t *g_handler_errors;

void dispatch_init(int async)
{
    g_async = async;
    g_handler_errors = metrics_counter0("lua_handler_errors_total", "Handlers that raised an error or returned an invalid response.");
}

void dispatch_match(request_t *r, char *allow, size_t allow_len)
{
    worker_t *w = r->w;
    r->generation = w->generation;
    r->slot = 0;
    if (!w->snap->router) { r->route = ROUTER_NOT_FOUND; return; }
    r->route = router_match(w->snap->router, r->method, r->uri, r->path_len, &r->match, allow, allow_len);
    if (r->route >= 0) r->slot = w->snap->routes[r->route].metrics_slot;
}

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
    response_t *resp = response_new(body, len, RESPONSE_COPY);
    if (!resp) { server_problem(r, 503, "Service Unavailable", "out of memory", NULL, NULL); return; }
    int has_ctype = 0;
    if (lua_type(L, base + 2) == LUA_TTABLE) {
        lua_pushnil(L);
        while (lua_next(L, base + 2) != 0) {
            if (lua_type(L, -2) == LUA_TSTRING && (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER)) {
                const char *k = lua_tostring(L, -2);
                if (strcasecmp(k, "Content-Type") == 0) has_ctype = 1;
                else if (rl && strcasecmp(k, "RateLimit-Limit") == 0) rl = NULL;   /* the handler's own policy */
                response_add_header(resp, k, lua_tostring(L, -1));
            }
            lua_pop(L, 1);
        }
    }
    if (!has_ctype && body) response_add_header(resp, "Content-Type", "application/json");
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
        if (r->park == REQ_SERVED) {
            r->park = REQ_PARKED;
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
    if (r->park == REQ_PARKED) {
        park_unlink(w, r);
        r->park = REQ_RESUMED;
        server_resumed(r);
    }
}

/* worker_t.resume: a parked request's I/O is done (worker_wake). */
void dispatch_resume(request_t *r)
{
    run_coroutine(r, r->resume_n);
}

void server_park(request_t *r, void (*cancel)(void *arg), void *arg)
{
    r->wait_cancel = cancel;
    r->wait_arg = arg;
    if (r->park == REQ_PARKED) return;   /* already parked (a rate-limit check came first) */
    r->park = REQ_PARKED;
    park_link(r->w, r);
}

void server_unpark(request_t *r)
{
    r->wait_cancel = NULL;
    r->wait_arg = NULL;
    park_unlink(r->w, r);
    r->park = REQ_RESUMED;
    server_resumed(r);
}

/* Shutdown deadline: forget every parked request; its connection closes unanswered. */
void dispatch_cancel_parked(worker_t *w)
{
    while (w->waiting) {
        request_t *r = w->waiting;
        worker_cancel_wait(r);
        park_unlink(w, r);
        release_coroutine(r, 0);
        r->park = REQ_RESUMED;
        server_resumed(r);
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

void server_settle(request_t *r)
{
    if (r->park == REQ_PARKED && !r->co && !r->wait_cancel) server_unpark(r);
}

/* A reload while Redis answered a parked check: the route table changed under the request.
 * Its claims (if any) belong to a state that may be gone; match again and go round from the
 * top (1), or answer 503 when the route is gone (0). */
static int rematch_after_reload(request_t *r)
{
    r->claims_ref = LUA_NOREF;
    dispatch_match(r, NULL, 0);
    if (r->route < 0) {
        server_problem(r, 503, "Service Unavailable", "The service was reloaded; try again.", "Retry-After", "1");
        server_settle(r);
        return 0;
    }
    r->step = STEP_LIMIT_IP;
    return 1;
}

/* Redis answered a route's limit (on the loop): refuse, or go on where the checks were. */
static void limit_done(void *arg, const ratelimit_result_t *res)
{
    request_t *r = arg;
    int allowed = ratelimit_answered(r, res);
    worker_t *w = r->w;
    if (r->generation != w->generation) {
        if (!rematch_after_reload(r)) return;
    } else if (!allowed) {
        ratelimit_refuse(r, w->snap->routes[r->route].rate_limit.name, res);
        server_settle(r);
        return;
    }
    proceed(r);
}

static void revocation_cancel(void *arg)
{
    revocation_wait_cancel(arg);
}

/* Redis answered the token subject's revocation record (on the loop): refuse, or go on. */
static void auth_done(void *arg, const revocation_t *rec)
{
    request_t *r = arg;
    worker_t *w = r->w;
    r->wait_cancel = NULL;   /* the wait is over: its handle was freed by revocation.c */
    r->wait_arg = NULL;
    if (r->generation != w->generation) {
        if (!rematch_after_reload(r)) return;
    } else if (auth_settle(r, &w->snap->routes[r->route], rec) != 0) {
        server_settle(r);
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
            if (rc == 1) { ratelimit_park(r, wait); return; }
            if (rc < 0) break;   /* 429 queued */
        } else if (step == STEP_AUTH) {
            revocation_wait_t *wait;
            int rc = auth_check(r, ri, auth_done, &wait);
            if (rc == 1) { server_park(r, revocation_cancel, wait); return; }
            if (rc != 0) break;   /* answered 401/403 */
        } else {
            r->has_rl = r->rl.limit != 0;
            dispatch_lua(r);
            if (!r->status && r->park == REQ_SERVED) server_problem(r, 500, "Internal Server Error", "No response was produced.", NULL, NULL);
            if (r->co) return;   /* parked in its handler: run_coroutine resumes the connection */
            break;
        }
    }
    r->step = STEP_DONE;
    server_settle(r);
}

void dispatch_route(request_t *r)
{
    r->step = STEP_LIMIT_IP;
    proceed(r);
}

void dispatch_forget(request_t *r)
{
    worker_cancel_wait(r);
    if (r->park == REQ_PARKED) park_unlink(r->w, r);
    if (r->co) {
        release_coroutine(r, 0);
    } else if (r->claims_ref != LUA_NOREF && r->generation == r->w->generation) {
        /* Gone while a check after auth waited on Redis: the handler never runs to release them. */
        luaL_unref(r->w->L, LUA_REGISTRYINDEX, r->claims_ref);
        r->claims_ref = LUA_NOREF;
    }
}
