/* http: the libcurl client for service-to-service calls (`require "http"`).
 *   local res, err, code = http.request{ method = "POST", url = u, headers = h, body = s }
 *   -- res = { status = 200, headers = { ["content-type"] = ... }, body = "..." }
 *   -- or nil, "Failed to connect to ...", "unavailable" | "timeout"
 * Calls go through the worker's client (core/httpc.c): from a handler the transfer runs on the
 * thread's loop and the handler parks until it ends, so one slow upstream never holds the
 * thread; elsewhere (runners, `mercato lua`) it blocks. Connections are kept alive in C across
 * calls and Lua state swaps. Misuse raises; transport failures return nil, err, code. Any HTTP
 * status is a response, not an error. */
#include <curl/curl.h>
#include <lauxlib.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../core/httpc.h"
#include "../host/bindings.h"
#include "../host/config.h"
#include "../host/request.h"
#include "../host/worker.h"

#define HTTP_DEFAULT_TIMEOUT_MS 10000
#define HTTP_DEFAULT_CONNECT_MS 1000

static size_t g_max_response = 8u << 20;   /* HTTP_MAX_RESPONSE_BYTES, read once at start-up */

/* ---- Lua bindings ---------------------------------------------------------------------- */

static worker_t *bound_worker(lua_State *L, const char *fn)
{
    worker_t *w = lua_touserdata(L, lua_upvalueindex(1));
    if (!w) luaL_error(L, "http.%s: no worker owns this Lua state (HTTP calls are made from handlers and jobs, not while modules load)", fn);
    return w;
}

static long opt_ms(lua_State *L, int t, const char *field, long dflt)
{
    lua_getfield(L, t, field);
    long v = dflt;
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TNUMBER || lua_tonumber(L, -1) < 1 || lua_tonumber(L, -1) > 3600000)
            luaL_error(L, "http.request: %s must be a number of milliseconds (1 to 3600000), got %s", field, luaL_typename(L, -1));
        v = (long)lua_tonumber(L, -1);
    }
    lua_pop(L, 1);
    return v;
}

static int has_crlf(const char *s, size_t n)
{
    return memchr(s, '\r', n) || memchr(s, '\n', n) || memchr(s, 0, n);
}

static int valid_method(const char *m)
{
    size_t n = strlen(m);
    if (n == 0 || n > 16) return 0;
    for (size_t i = 0; i < n; i++)
        if (m[i] < 'A' || m[i] > 'Z') return 0;
    return 1;
}

/* What the Lua arguments asked for, checked before anything is acquired. */
typedef struct {
    const char *method, *url, *body;
    size_t body_len;
    long timeout_ms, connect_ms;
    size_t max_response;
    int headers_idx;                 /* stack index of the headers table, or 0 */
    int has_rid, has_trace, has_ctype, has_accept;
} call_t;

static void check_call(lua_State *L, int t, call_t *c)
{
    memset(c, 0, sizeof *c);
    luaL_checktype(L, t, LUA_TTABLE);
    lua_getfield(L, t, "url");
    if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "http.request: expecting url string, got %s", luaL_typename(L, -1));
    c->url = lua_tostring(L, -1);    /* kept alive by the options table */
    lua_pop(L, 1);
    lua_getfield(L, t, "method");
    if (!lua_isnil(L, -1) && (lua_type(L, -1) != LUA_TSTRING || !valid_method(lua_tostring(L, -1))))
        luaL_error(L, "http.request: method must be an upper-case HTTP method such as \"POST\"");
    c->method = lua_isnil(L, -1) ? "GET" : lua_tostring(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, t, "body");
    if (lua_type(L, -1) == LUA_TSTRING) c->body = lua_tolstring(L, -1, &c->body_len);
    else if (!lua_isnil(L, -1)) luaL_error(L, "http.request: body must be a string, got %s (http.post_json encodes tables)", luaL_typename(L, -1));
    lua_pop(L, 1);
    c->timeout_ms = opt_ms(L, t, "timeout_ms", HTTP_DEFAULT_TIMEOUT_MS);
    c->connect_ms = opt_ms(L, t, "connect_timeout_ms", HTTP_DEFAULT_CONNECT_MS);
    lua_getfield(L, t, "max_response_bytes");
    c->max_response = g_max_response;
    if (lua_type(L, -1) == LUA_TNUMBER && lua_tonumber(L, -1) >= 1) c->max_response = (size_t)lua_tonumber(L, -1);
    else if (!lua_isnil(L, -1)) luaL_error(L, "http.request: max_response_bytes must be a positive number");
    lua_pop(L, 1);
    lua_getfield(L, t, "headers");
    if (lua_isnil(L, -1)) { lua_pop(L, 1); return; }
    if (!lua_istable(L, -1)) luaL_error(L, "http.request: headers must be a table, got %s", luaL_typename(L, -1));
    c->headers_idx = lua_gettop(L);   /* left on the stack for the transfer */
    lua_pushnil(L);
    while (lua_next(L, c->headers_idx) != 0) {
        size_t kn, vn;
        if (lua_type(L, -2) != LUA_TSTRING) luaL_error(L, "http.request: header names must be strings");
        if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)
            luaL_error(L, "http.request: header %s must be a string, got %s", lua_tostring(L, -2), luaL_typename(L, -1));
        const char *k = lua_tolstring(L, -2, &kn);
        lua_pushvalue(L, -1);                  /* convert a copy: the original stays a number */
        const char *v = lua_tolstring(L, -1, &vn);
        if (kn == 0 || memchr(k, ':', kn) || memchr(k, ' ', kn) || has_crlf(k, kn) || has_crlf(v, vn))
            luaL_error(L, "http.request: header %s has a forbidden character (CR, LF, NUL, ':' or space in the name)", k);
        lua_pop(L, 2);
        if (strcasecmp(k, "X-Request-Id") == 0) c->has_rid = 1;
        else if (strcasecmp(k, "traceparent") == 0) c->has_trace = 1;
        else if (strcasecmp(k, "Content-Type") == 0) c->has_ctype = 1;
        else if (strcasecmp(k, "Accept") == 0) c->has_accept = 1;
    }
}

static struct curl_slist *add_header(struct curl_slist *l, int *oom, const char *k, size_t kn, const char *v, size_t vn)
{
    char small[1024];
    size_t n = kn + vn + 3;
    char *line = n <= sizeof small ? small : malloc(n);
    if (!line) { *oom = 1; return l; }
    memcpy(line, k, kn);
    if (vn) { line[kn] = ':'; line[kn + 1] = ' '; memcpy(line + kn + 2, v, vn); line[kn + 2 + vn] = 0; }
    else { line[kn] = ';'; line[kn + 1] = 0; }   /* "Name;" sends an empty value in libcurl */
    struct curl_slist *nl = curl_slist_append(l, line);
    if (line != small) free(line);
    if (!nl) { *oom = 1; return l; }
    return nl;
}

/* Append a literal line; "Name:" removes a header libcurl would add on its own. */
static struct curl_slist *add_raw(struct curl_slist *l, int *oom, const char *line)
{
    struct curl_slist *nl = curl_slist_append(l, line);
    if (!nl) *oom = 1;
    return nl ? nl : l;
}

/* Build the header list (no raising: everything was checked). Caller frees. */
static struct curl_slist *build_headers(lua_State *L, worker_t *w, const call_t *c, int *oom)
{
    struct curl_slist *l = NULL;
    if (c->headers_idx) {
        lua_pushnil(L);
        while (lua_next(L, c->headers_idx) != 0) {
            size_t kn, vn;
            const char *k = lua_tolstring(L, -2, &kn);
            lua_pushvalue(L, -1);
            const char *v = lua_tolstring(L, -1, &vn);
            l = add_header(l, oom, k, kn, v, vn);
            lua_pop(L, 2);
        }
    }
    if (w->cur) {
        if (!c->has_rid) l = add_header(l, oom, "X-Request-Id", 12, w->cur->id, strlen(w->cur->id));
        if (!c->has_trace) {
            char tp[HTTPC_TRACEPARENT_SIZE];
            worker_traceparent(w, w->cur, tp);
            l = add_header(l, oom, "traceparent", 11, tp, strlen(tp));
        }
    }
    /* libcurl would add "Content-Type: application/x-www-form-urlencoded" to any body and
     * "Expect: 100-continue" (a round trip) to large ones: send only what the caller set. */
    if (!c->has_ctype) l = add_raw(l, oom, "Content-Type:");
    if (!c->has_accept) l = add_raw(l, oom, "Accept:");
    return add_raw(l, oom, "Expect:");
}

/* Set the method and body on h: GET and HEAD as such, anything with a body (or POST, PUT,
 * PATCH, which expect a Content-Length) through COPYPOSTFIELDS (the Lua string may die while
 * the handler is parked), other verbs as a custom request. */
static void set_method(CURL *h, const char *method, const char *body, size_t len)
{
    if (strcmp(method, "GET") == 0 && !len) { curl_easy_setopt(h, CURLOPT_HTTPGET, 1L); return; }
    if (strcmp(method, "HEAD") == 0) { curl_easy_setopt(h, CURLOPT_NOBODY, 1L); return; }
    if (len || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 || strcmp(method, "PATCH") == 0) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
        curl_easy_setopt(h, CURLOPT_COPYPOSTFIELDS, body ? body : "");
    }
    if (strcmp(method, "POST") != 0) curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
}

static void push_headers(lua_State *L, const buf_t *head)
{
    lua_newtable(L);
    const char *p = head->data, *end = head->data ? head->data + head->len : NULL;
    const char *name, *value;
    size_t nlen, vlen;
    while (p && httpc_head_next(&p, end, &name, &nlen, &value, &vlen)) {
        char lower[256];
        if (nlen >= sizeof lower) continue;
        for (size_t i = 0; i < nlen; i++) lower[i] = (char)((name[i] >= 'A' && name[i] <= 'Z') ? name[i] + 32 : name[i]);
        lua_pushlstring(L, lower, nlen);
        lua_pushvalue(L, -1);
        lua_rawget(L, -3);
        if (lua_isnil(L, -1)) {   /* first of its name */
            lua_pop(L, 1);
            lua_pushlstring(L, value, vlen);
        } else {                  /* repeated: joined with ", " (RFC 9110 §5.3) */
            lua_pushliteral(L, ", ");
            lua_pushlstring(L, value, vlen);
            lua_concat(L, 3);
        }
        lua_rawset(L, -3);
    }
}

static int push_failure(lua_State *L, const char *err, const char *code)
{
    lua_pushnil(L);
    lua_pushstring(L, err);
    lua_pushstring(L, code);
    return 3;
}

/* Push what a finished call gives Lua: the response table, or nil, err, code. */
static int push_outcome(lua_State *L, httpc_call_t *c, CURLcode rc)
{
    http_resp_t *resp = &c->resp;
    if (resp->too_large) return push_failure(L, "response too large", "unavailable");
    if (rc != CURLE_OK || resp->head.failed || resp->body.failed)
        return push_failure(L, c->errbuf[0] ? c->errbuf : curl_easy_strerror(rc),
                            rc == CURLE_OK ? "unavailable" : httpc_error_code(rc));
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, (lua_Integer)resp->status);
    lua_setfield(L, -2, "status");
    push_headers(L, &resp->head);
    lua_setfield(L, -2, "headers");
    lua_pushlstring(L, resp->body.data ? resp->body.data : "", resp->body.len);
    lua_setfield(L, -2, "body");
    return 1;
}

/* A parked handler's call ended (on the loop): hand the outcome to its coroutine. */
static void call_done(httpc_call_t *c, CURLcode rc, void *arg)
{
    request_t *r = arg;
    lua_checkstack(r->co, 8);
    int n = push_outcome(r->co, c, rc);
    httpc_call_free(c);
    worker_wake(r, n);
}

/* The parked handler's request went away: stop its transfer. */
static void call_cancel(void *arg)
{
    httpc_call_free(arg);
}

/* The one implementation behind every request function: opts table at index t. */
static int do_request(lua_State *L, worker_t *w, int t)
{
    call_t spec;
    check_call(L, t, &spec);   /* raises on misuse; nothing acquired yet */

    httpc_t *hc = worker_httpc(w);
    httpc_call_t *c = hc ? httpc_call_new(hc) : NULL;
    if (!c) return push_failure(L, "out of memory", "unavailable");
    int oom = 0;
    c->headers = build_headers(L, w, &spec, &oom);
    if (oom) {
        httpc_call_free(c);
        return push_failure(L, "out of memory", "unavailable");
    }
    CURL *h = c->easy;
    curl_easy_setopt(h, CURLOPT_URL, spec.url);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "mercato/" MERCATO_VERSION);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, spec.timeout_ms);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, spec.connect_ms);
    set_method(h, spec.method, spec.body, spec.body_len);
    c->resp.max_body = spec.max_response;
    if (worker_can_yield(L)) {   /* a handler: park it, the thread serves others meanwhile */
        if (httpc_call_start(c, call_done, w->cur) == 0) return worker_wait(L, call_cancel, c);
        httpc_call_free(c);
        return push_failure(L, "out of memory", "unavailable");
    }
    CURLcode rc = httpc_call_perform(c);
    int n = push_outcome(L, c, rc);
    httpc_call_free(c);
    return n;
}

/* http.request{ method =, url =, headers =, body =, timeout_ms =, connect_timeout_ms = } */
static int l_request(lua_State *L)
{
    worker_t *w = bound_worker(L, "request");
    luaL_checktype(L, 1, LUA_TTABLE);
    return do_request(L, w, 1);
}

/* A fresh options table: a shallow copy of opts at index `opts` (may be none/nil). */
static int copy_opts(lua_State *L, int opts)
{
    lua_newtable(L);
    int t = lua_gettop(L);
    if (lua_isnoneornil(L, opts)) return t;
    luaL_checktype(L, opts, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, opts) != 0) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, t);
    }
    return t;
}

/* Copy of opts with a header set unless present (any case). */
static void default_header(lua_State *L, int t, const char *name, const char *value)
{
    lua_getfield(L, t, "headers");
    int src = lua_gettop(L);
    lua_newtable(L);
    int dst = lua_gettop(L);
    int found = 0;
    if (lua_istable(L, src)) {
        lua_pushnil(L);
        while (lua_next(L, src) != 0) {
            if (lua_type(L, -2) == LUA_TSTRING && strcasecmp(lua_tostring(L, -2), name) == 0) found = 1;
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            lua_rawset(L, dst);
        }
    } else if (!lua_isnil(L, src)) {
        luaL_error(L, "http.request: headers must be a table, got %s", luaL_typename(L, src));
    }
    if (!found) { lua_pushstring(L, value); lua_setfield(L, dst, name); }
    lua_setfield(L, t, "headers");
    lua_pop(L, 1);
}

/* http.get(url, opts) */
static int l_get(lua_State *L)
{
    worker_t *w = bound_worker(L, "get");
    luaL_checkstring(L, 1);
    int t = copy_opts(L, 2);
    lua_pushvalue(L, 1);
    lua_setfield(L, t, "url");
    lua_pushliteral(L, "GET");
    lua_setfield(L, t, "method");
    return do_request(L, w, t);
}

/* http.post_json(url, value, opts): the value encoded with cjson. */
static int l_post_json(lua_State *L)
{
    worker_t *w = bound_worker(L, "post_json");
    luaL_checkstring(L, 1);
    if (lua_isnone(L, 2)) luaL_argerror(L, 2, "expecting a value to encode as JSON");
    int t = copy_opts(L, 3);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "cjson");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "encode");
    lua_pushvalue(L, 2);
    lua_call(L, 1, 1);            /* raises on an unencodable value: misuse */
    lua_setfield(L, t, "body");
    lua_pop(L, 1);
    lua_pushvalue(L, 1);
    lua_setfield(L, t, "url");
    lua_getfield(L, t, "method");
    if (lua_isnil(L, -1)) { lua_pushliteral(L, "POST"); lua_setfield(L, t, "method"); }
    lua_pop(L, 1);
    default_header(L, t, "Content-Type", "application/json");
    default_header(L, t, "Accept", "application/json");
    return do_request(L, w, t);
}

/* luaL_addchar, expanded in one place: the macro holds LuaJIT's LUAL_BUFFERSIZE,
 * `BUFSIZ > 16384 ? 8192 : BUFSIZ`, whose arms are the same where BUFSIZ is 8192. */
static void add_char(luaL_Buffer *b, char ch)
{
    luaL_addchar(b, ch);   /* NOLINT(bugprone-branch-clone): the identical ?: arms are in LuaJIT's header */
}

/* Percent-encode s (RFC 3986: unreserved characters stay) into b. */
static void urlencode_into(luaL_Buffer *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if ((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' ||
            ch == '.' || ch == '_' || ch == '~') {
            add_char(b, (char)ch);
        } else {
            add_char(b, '%');
            add_char(b, hex[ch >> 4]);
            add_char(b, hex[ch & 15]);
        }
    }
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

/* Push the form encoding (k=v&..., keys sorted) of the table at t. Raises on a value that is
 * not a string, number or boolean. */
static void push_form(lua_State *L, int t, const char *fn)
{
    int n = 0;
    lua_pushnil(L);
    while (lua_next(L, t) != 0) {
        if (lua_type(L, -2) != LUA_TSTRING) luaL_error(L, "http.%s: form field names must be strings", fn);
        int vt = lua_type(L, -1);
        if (vt != LUA_TSTRING && vt != LUA_TNUMBER && vt != LUA_TBOOLEAN)
            luaL_error(L, "http.%s: form field %s must be a string, number or boolean, got %s", fn, lua_tostring(L, -2), lua_typename(L, vt));
        n++;
        lua_pop(L, 1);
    }
    const char **keys = lua_newuserdata(L, (size_t)(n ? n : 1) * sizeof *keys);   /* freed by the GC */
    int i = 0;
    lua_pushnil(L);
    while (lua_next(L, t) != 0) { keys[i++] = lua_tostring(L, -2); lua_pop(L, 1); }
    qsort(keys, (size_t)n, sizeof *keys, cmp_str);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (i = 0; i < n; i++) {
        if (i) add_char(&b, '&');
        urlencode_into(&b, keys[i], strlen(keys[i]));
        add_char(&b, '=');
        lua_getfield(L, t, keys[i]);
        size_t vn;
        const char *v;
        if (lua_type(L, -1) == LUA_TBOOLEAN) {
            v = lua_toboolean(L, -1) ? "true" : "false";
            vn = strlen(v);
        } else {
            v = lua_tolstring(L, -1, &vn);
        }
        urlencode_into(&b, v, vn);
        lua_pop(L, 1);
    }
    luaL_pushresult(&b);
    lua_remove(L, -2);   /* the keys userdata */
}

/* http.urlencode("a b&c") → "a%20b%26c"; http.urlencode{ a = 1, b = "x y" } → "a=1&b=x%20y". */
static int l_urlencode(lua_State *L)
{
    if (lua_istable(L, 1)) { push_form(L, 1, "urlencode"); return 1; }
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    urlencode_into(&b, s, n);
    luaL_pushresult(&b);
    return 1;
}

/* http.post_form(url, fields, opts): application/x-www-form-urlencoded. */
static int l_post_form(lua_State *L)
{
    worker_t *w = bound_worker(L, "post_form");
    luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    int t = copy_opts(L, 3);
    push_form(L, 2, "post_form");
    lua_setfield(L, t, "body");
    lua_pushvalue(L, 1);
    lua_setfield(L, t, "url");
    lua_getfield(L, t, "method");
    if (lua_isnil(L, -1)) { lua_pushliteral(L, "POST"); lua_setfield(L, t, "method"); }
    lua_pop(L, 1);
    default_header(L, t, "Content-Type", "application/x-www-form-urlencoded");
    return do_request(L, w, t);
}

/* ---- module ---------------------------------------------------------------------------- */

static int http_global_init(void)
{
    const char *v = getenv("HTTP_MAX_RESPONSE_BYTES");
    if (v && *v) {
        long n = config_parse_number(v, 1);
        if (n < 1) {
            fprintf(stderr, "mercato: HTTP_MAX_RESPONSE_BYTES: expecting a byte count such as 8m, got '%s'\n", v);
            return -1;
        }
        g_max_response = (size_t)n;
    }
    if (httpc_global_init() < 0) return -1;
    return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -1;
}

static void http_global_cleanup(void) { curl_global_cleanup(); }

int luaopen_http(lua_State *L)
{
    static const luaL_Reg fns[] = {
        { "request", l_request }, { "get", l_get }, { "post_json", l_post_json }, { "post_form", l_post_form },
        { NULL, NULL },
    };
    lua_newtable(L);
    lua_pushlightuserdata(L, worker_from_lua(L));   /* NULL in the scratch check state: calls raise */
    luaL_setfuncs(L, fns, 1);
    lua_pushcfunction(L, l_urlencode);
    lua_setfield(L, -2, "urlencode");
    return 1;
}

const binding_t binding_http = {
    .name = "http",
    .open = luaopen_http,
    .global_init = http_global_init,
    .global_cleanup = http_global_cleanup,
};
