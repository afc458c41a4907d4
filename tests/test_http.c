/* test_http: the http binding through a real Lua state against a loopback MHD server —
 * misuse raises, transport failures return nil, err, code, responses come back whole, the
 * worker's handle keeps connections alive, and a served request's id and trace go out. */
#include <curl/curl.h>
#include <lauxlib.h>
#include <lualib.h>
#include <microhttpd.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bindings.h"
#include "gateway.h"
#include "../core/httpc.h"
#include "snapshot.h"
#include "test.h"
#include "worker.h"

static int port;
static config_t cfg;
static snapshot_t snap;

/* The loopback server: /slow sleeps 1 s, /big answers 64 KiB, anything else echoes the
 * method, a few request headers and the body as "method|x-request-id|traceparent|ctype|body". */
typedef struct { char *data; size_t len; } upload_t;

static enum MHD_Result serve(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                             const char *version, const char *data, size_t *size, void **ctx)
{
    (void)cls; (void)version;
    upload_t *u = *ctx;
    if (!u) { *ctx = calloc(1, sizeof *u); return MHD_YES; }
    if (*size) {
        u->data = realloc(u->data, u->len + *size + 1);
        memcpy(u->data + u->len, data, *size);
        u->len += *size;
        *size = 0;
        return MHD_YES;
    }
    struct MHD_Response *r;
    if (strcmp(url, "/slow") == 0) {
        sleep(1);
        r = MHD_create_response_from_buffer(4, (void *)"late", MHD_RESPMEM_PERSISTENT);
    } else if (strcmp(url, "/big") == 0) {
        size_t n = 64 * 1024;
        char *b = malloc(n);
        memset(b, 'x', n);
        r = MHD_create_response_from_buffer(n, b, MHD_RESPMEM_MUST_FREE);
    } else {
        const char *rid = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Request-Id");
        const char *tp = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "traceparent");
        const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
        size_t cap = u->len + 512;
        char *b = malloc(cap);
        int n = snprintf(b, cap, "%s|%s|%s|%s|", method, rid ? rid : "-", tp ? tp : "-", ct ? ct : "-");
        memcpy(b + n, u->data ? u->data : "", u->len);
        r = MHD_create_response_from_buffer((size_t)n + u->len, b, MHD_RESPMEM_MUST_FREE);
        MHD_add_response_header(r, "X-Echo", "one");
        MHD_add_response_header(r, "X-Echo", "two");
    }
    MHD_add_response_header(r, "Content-Type", "text/plain");
    enum MHD_Result rc = MHD_queue_response(c, 201, r);
    MHD_destroy_response(r);
    return rc;
}

static void done(void *cls, struct MHD_Connection *c, void **ctx, enum MHD_RequestTerminationCode toe)
{
    (void)cls; (void)c; (void)toe;
    upload_t *u = *ctx;
    if (u) { free(u->data); free(u); }
    *ctx = NULL;
}

/* A worker whose state has every binding preloaded, as the host builds it. */
static worker_t *new_worker(int with_worker)
{
    worker_t *w = calloc(1, sizeof *w);
    w->rng[0] = 0x1234567;
    w->rng[1] = 0x89abcdef;
    char err[512];
    w->L = worker_state_new(with_worker ? w : NULL, &snap, 0, err, sizeof err);
    if (!w->L) { printf("# %s\n", err); abort(); }
    lua_pushvalue(w->L, LUA_GLOBALSINDEX);   /* let the test chunks set globals */
    lua_pushnil(w->L);
    lua_setmetatable(w->L, -2);
    lua_pop(w->L, 1);
    return w;
}

static void free_worker(worker_t *w)
{
    lua_close(w->L);
    bindings_worker_free(w);
    httpc_free(w->httpc);
    free(w);
}

/* Run chunk with PORT set; returns its first result as a string ("ERR: msg" when it raised). */
static char result[4096];
static const char *run(worker_t *w, const char *chunk)
{
    lua_State *L = w->L;
    lua_pushinteger(L, port);
    lua_setglobal(L, "PORT");
    if (luaL_loadstring(L, chunk) != 0 || lua_pcall(L, 0, 1, 0) != 0) {
        snprintf(result, sizeof result, "ERR: %s", lua_tostring(L, -1));
    } else {
        const char *s = lua_tostring(L, -1);
        snprintf(result, sizeof result, "%s", s ? s : "(nil)");
    }
    lua_settop(L, 0);
    return result;
}

#define BASE "local http = require 'http'; local base = 'http://127.0.0.1:' .. PORT; "

TEST(misuse_raises)
{
    worker_t *w = new_worker(1);
    CHECK(strstr(run(w, BASE "http.request()"), "ERR: ") != NULL);
    CHECK(strstr(run(w, BASE "http.request{ url = 5 }"), "expecting url string, got number") != NULL);
    CHECK(strstr(run(w, BASE "http.request{ url = base, method = 'get' }"), "upper-case HTTP method") != NULL);
    CHECK(strstr(run(w, BASE "http.request{ url = base, headers = { ['X-A'] = 'a\\r\\nb' } }"), "forbidden character") != NULL);
    CHECK(strstr(run(w, BASE "http.request{ url = base, body = {} }"), "body must be a string") != NULL);
    CHECK(strstr(run(w, BASE "http.request{ url = base, timeout_ms = 0 }"), "timeout_ms") != NULL);
    CHECK(strstr(run(w, BASE "http.post_form(base, { a = {} })"), "form field a") != NULL);
    CHECK(strstr(run(w, BASE "http.post_json(base, { f = print })"), "ERR: ") != NULL);
    free_worker(w);
}

TEST(a_state_without_a_worker_refuses_calls)
{
    worker_t *w = new_worker(0);
    CHECK(strstr(run(w, BASE "return http.get(base)"), "no worker owns this Lua state") != NULL);
    CHECK_STR(run(w, BASE "return http.urlencode('a b')"), "a%20b");
    free_worker(w);
}

TEST(transport_failures_return_nil_err_code)
{
    worker_t *w = new_worker(1);
    CHECK_STR(run(w, BASE "local r, e, c = http.get('http://127.0.0.1:1/'); return tostring(r) .. ' ' .. c"), "nil unavailable");
    CHECK_STR(run(w, BASE "local r, e, c = http.get(base .. '/slow', { timeout_ms = 200 }); return tostring(r) .. ' ' .. c"), "nil timeout");
    CHECK_STR(run(w, BASE "local r, e, c = http.get(base .. '/big', { max_response_bytes = 1000 }); return e .. ' ' .. c"),
              "response too large unavailable");
    CHECK_STR(run(w, BASE "return #http.get(base .. '/big').body"), "65536");
    free_worker(w);
}

TEST(responses_come_back_with_lowercased_headers)
{
    worker_t *w = new_worker(1);
    CHECK_STR(run(w, BASE "local r = http.request{ method = 'PUT', url = base .. '/x', body = 'a\\0b' }; "
                          "return r.status .. ' ' .. r.headers['content-type'] .. ' ' .. r.headers['x-echo'] .. ' ' .. r.body:gsub('%z', '0')"),
              "201 text/plain one, two PUT|-|-|-|a0b");
    CHECK_STR(run(w, BASE "return http.post_json(base, { a = 1 }).body"), "POST|-|-|application/json|{\"a\":1}");
    CHECK_STR(run(w, BASE "return http.post_form(base, { b = 'x y&z', a = 'é' }).body"),
              "POST|-|-|application/x-www-form-urlencoded|a=%C3%A9&b=x%20y%26z");
    CHECK_STR(run(w, BASE "return http.request{ method = 'DELETE', url = base }.body"), "DELETE|-|-|-|");
    free_worker(w);
}

TEST(a_served_request_forwards_its_id_and_trace)
{
    worker_t *w = new_worker(1);
    request_t r;
    memset(&r, 0, sizeof r);
    strcpy(r.id, "0af7651916cd43dd8448eb211c80319c");
    w->cur = &r;
    const char *got = run(w, BASE "return http.get(base).body");
    CHECK(strncmp(got, "GET|0af7651916cd43dd8448eb211c80319c|00-0af7651916cd43dd8448eb211c80319c-", 73) == 0);
    CHECK(strlen(got) == 4 + 33 + 56 + 2);
    CHECK_STR(run(w, BASE "return http.get(base, { headers = { ['x-request-id'] = 'mine', traceparent = 'tp' } }).body"),
              "GET|mine|tp|-|");
    strcpy(r.id, "client-chosen");   /* not a trace id: hashed into one, the same every time */
    char a[200], b[200];
    snprintf(a, sizeof a, "%s", run(w, BASE "return http.get(base).body:sub(1, 53)"));
    snprintf(b, sizeof b, "%s", run(w, BASE "return http.get(base).body:sub(1, 53)"));
    CHECK(strncmp(a, "GET|client-chosen|00-", 21) == 0);
    CHECK_STR(a, b);
    w->cur = NULL;
    CHECK_STR(run(w, BASE "return http.get(base).body"), "GET|-|-|-|");
    free_worker(w);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    cfg.scripts_dir = "/nonexistent";
    snap.cfg = &cfg;
    struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL,
                                            serve, NULL, MHD_OPTION_NOTIFY_COMPLETED, done, NULL, MHD_OPTION_END);
    if (!d) { printf("Bail out! cannot start the loopback server\n"); return 1; }
    port = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT)->port;
    RUN(misuse_raises);
    RUN(a_state_without_a_worker_refuses_calls);
    RUN(transport_failures_return_nil_err_code);
    RUN(responses_come_back_with_lowercased_headers);
    RUN(a_served_request_forwards_its_id_and_trace);
    MHD_stop_daemon(d);
    curl_global_cleanup();
    return test_done();
}
