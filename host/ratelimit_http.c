/* ratelimit_http: the HTTP half of rate limiting — who the client is (the socket peer, or
 * X-Forwarded-For behind TRUSTED_PROXIES), a route's `rate_limit` checked in C before its
 * handler, the gateway's global per-IP limit, and the 429 problem with its headers. */
#include <arpa/inet.h>
#include <lauxlib.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../core/buf.h"
#include "../core/log.h"
#include "dispatch.h"
#include "ratelimit_http.h"
#include "request.h"
#include "server.h"
#include "worker.h"

#define MAX_TRUSTED 64
#define DEFAULT_TRUSTED "127.0.0.0/8, ::1"
#define DEFAULT_GLOBAL "1200/min"

/* An address: IPv4 as its 4 bytes (IPv4-mapped IPv6 too), or IPv6's 16. */
typedef struct {
    int v6;
    unsigned char b[16];
} addr_t;

typedef struct {
    addr_t a;
    int bits;
} cidr_t;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_loaded;
static int g_ntrusted;
static cidr_t g_trusted[MAX_TRUSTED];

/* ---- addresses -------------------------------------------------------------------------- */

static void from_v6(addr_t *a, const unsigned char *b)
{
    static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
    if (memcmp(b, mapped, 12) == 0) { a->v6 = 0; memcpy(a->b, b + 12, 4); }
    else { a->v6 = 1; memcpy(a->b, b, 16); }
}

/* Parse s[0..n): "1.2.3.4", "1.2.3.4:80", "::1", "[::1]", "[::1]:80". 0 or -1. */
static int parse_addr(const char *s, size_t n, addr_t *a)
{
    char t[64];
    while (n && (*s == ' ' || *s == '\t')) { s++; n--; }
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t')) n--;
    if (n == 0 || n >= sizeof t) return -1;
    memcpy(t, s, n);
    t[n] = 0;
    char *p = t;
    if (*p == '[') {
        char *rb = strchr(p, ']');
        if (!rb) return -1;
        *rb = 0;
        p++;
    } else {
        char *colon = strchr(p, ':');
        if (colon && !strchr(colon + 1, ':') && strchr(p, '.')) *colon = 0;   /* v4 with a port */
    }
    unsigned char b[16];
    if (inet_pton(AF_INET, p, b) == 1) { a->v6 = 0; memcpy(a->b, b, 4); return 0; }
    if (inet_pton(AF_INET6, p, b) == 1) { from_v6(a, b); return 0; }
    return -1;
}

static void format_addr(const addr_t *a, char *out, size_t outlen)
{
    if (!inet_ntop(a->v6 ? AF_INET6 : AF_INET, a->b, out, (socklen_t)outlen)) out[0] = 0;
}

static int in_cidr(const addr_t *a, const cidr_t *c)
{
    if (a->v6 != c->a.v6) return 0;
    int bits = c->bits, i = 0;
    for (; bits >= 8; bits -= 8, i++) if (a->b[i] != c->a.b[i]) return 0;
    if (bits == 0) return 1;
    unsigned char mask = (unsigned char)(0xff << (8 - bits));
    return (a->b[i] & mask) == (c->a.b[i] & mask);
}

int ratelimit_trusted_load(const char *list, char *err, size_t errlen)
{
    cidr_t t[MAX_TRUSTED] = { 0 };
    int n = 0;
    if (!list) list = DEFAULT_TRUSTED;
    const char *p = list;
    while (*p) {
        while (*p == ' ' || *p == ',' || *p == '\t') p++;
        if (!*p) break;
        const char *s = p;
        while (*p && *p != ',' && *p != ' ' && *p != '\t') p++;
        size_t len = (size_t)(p - s);
        if (len == 4 && strncmp(s, "none", 4) == 0) continue;
        const char *slash = memchr(s, '/', len);
        size_t alen = slash ? (size_t)(slash - s) : len;
        cidr_t c;
        char *end = NULL;
        if (n == MAX_TRUSTED || parse_addr(s, alen, &c.a) < 0) goto bad;
        int max = c.a.v6 ? 128 : 32;
        c.bits = max;
        if (slash) {
            long b = strtol(slash + 1, &end, 10);
            if (end != p || end == slash + 1 || b < 0 || b > max) goto bad;
            c.bits = (int)b;
        }
        t[n++] = c;
        continue;
    bad:
        snprintf(err, errlen, "TRUSTED_PROXIES: '%.*s' is not an address or CIDR range (at most %d entries)", (int)len, s, MAX_TRUSTED);
        return -1;
    }
    pthread_mutex_lock(&g_lock);
    memcpy(g_trusted, t, (size_t)n * sizeof *t);
    g_ntrusted = n;
    g_loaded = 1;
    pthread_mutex_unlock(&g_lock);
    return 0;
}

static void ensure_trusted(void)
{
    if (__atomic_load_n(&g_loaded, __ATOMIC_ACQUIRE)) return;
    char err[256];
    if (ratelimit_trusted_load(getenv("TRUSTED_PROXIES"), err, sizeof err) < 0) {
        log_error("%s; trusting no proxy", err);
        ratelimit_trusted_load("none", err, sizeof err);
    }
}

static int trusted(const addr_t *a)
{
    ensure_trusted();
    for (int i = 0; i < g_ntrusted; i++) if (in_cidr(a, &g_trusted[i])) return 1;
    return 0;
}

int ratelimit_trusted(const char *addr)
{
    addr_t a;
    if (!addr || parse_addr(addr, strlen(addr), &a) < 0) return -1;
    return trusted(&a);
}

/* ---- the client address ----------------------------------------------------------------- */

static int peer_addr(request_t *r, addr_t *a)
{
    const struct sockaddr *sa = request_peer(r);
    if (!sa) return -1;
    if (sa->sa_family == AF_INET) { a->v6 = 0; memcpy(a->b, &((const struct sockaddr_in *)sa)->sin_addr, 4); return 0; }
    if (sa->sa_family == AF_INET6) { from_v6(a, (const unsigned char *)&((const struct sockaddr_in6 *)sa)->sin6_addr); return 0; }
    return -1;
}

/* The right-most untrusted address of X-Forwarded-For (every header, in order), starting from
 * the trusted peer; an entry that is not an address stops the walk at the last trusted hop. */
static int client_addr(request_t *r, addr_t *out)
{
    if (peer_addr(r, out) < 0) return -1;
    if (!trusted(out)) return 0;
    buf_t b;
    buf_init(&b);
    for (int i = 0; i < r->nfields; i++) {
        if (strcasecmp(r->fields[i].name, "X-Forwarded-For") != 0) continue;
        if (b.len) buf_add(&b, ",", 1);
        buf_adds(&b, r->fields[i].value);
    }
    size_t end = b.failed ? 0 : b.len;
    while (end > 0) {
        size_t start = end;
        while (start > 0 && b.data[start - 1] != ',') start--;
        addr_t a;
        if (parse_addr(b.data + start, end - start, &a) < 0) break;
        *out = a;
        if (!trusted(&a)) break;
        end = start ? start - 1 : 0;
    }
    buf_free(&b);
    return 0;
}

void ratelimit_client_ip(request_t *r, char *out, size_t outlen)
{
    addr_t a;
    out[0] = 0;
    if (client_addr(r, &a) == 0) format_addr(&a, out, outlen);
}

/* The bucket key of a client: its IPv4 address, or its IPv6 /64 (one host's usual share). */
static size_t ip_key(request_t *r, char *out, size_t outlen)
{
    addr_t a;
    if (client_addr(r, &a) < 0) return (size_t)snprintf(out, outlen, "unknown");
    if (a.v6) memset(a.b + 8, 0, 8);
    format_addr(&a, out, outlen);
    if (a.v6) strncat(out, "/64", outlen - strlen(out) - 1);
    return strlen(out);
}

/* ---- responses -------------------------------------------------------------------------- */

void ratelimit_add_headers(response_t *resp, const ratelimit_result_t *res)
{
    char v[24];
    snprintf(v, sizeof v, "%lld", (long long)res->limit);
    response_add_header(resp, "RateLimit-Limit", v);
    snprintf(v, sizeof v, "%lld", (long long)res->remaining);
    response_add_header(resp, "RateLimit-Remaining", v);
    snprintf(v, sizeof v, "%lld", (long long)ratelimit_seconds(res->reset_after_us));
    response_add_header(resp, "RateLimit-Reset", v);
}

void ratelimit_reject(request_t *r, const char *name, const ratelimit_result_t *res)
{
    int64_t retry = ratelimit_seconds(res->retry_after_us);
    if (retry < 1) retry = 1;
    char body[512];
    int n = snprintf(body, sizeof body,
                     "{\"type\":\"about:blank\",\"title\":\"Too Many Requests\",\"status\":429,"
                     "\"detail\":\"Too many requests (limit '%s'); retry in %lld s.\",\"request_id\":\"%s\"}",
                     name, (long long)retry, r->id);
    ratelimit_count_rejection(name);
    response_t *resp = response_new(body, (size_t)n, RESPONSE_COPY);
    if (!resp) { server_problem(r, 503, "Service Unavailable", "out of memory", NULL, NULL); return; }
    char v[24];
    snprintf(v, sizeof v, "%lld", (long long)retry);
    response_add_header(resp, "Content-Type", "application/problem+json");
    response_add_header(resp, "Retry-After", v);
    ratelimit_add_headers(resp, res);
    server_queue(r, 429, resp, (size_t)n);
}

/* ---- route and gateway checks ----------------------------------------------------------- */

/* The token subject as "sub:<sub>", or 0 when the request carries no verified claims. */
static size_t sub_key(request_t *r, char *out, size_t outlen)
{
    if (r->claims_ref == LUA_NOREF || r->claims_ref == 0 || !r->w->L) return 0;
    lua_State *L = r->w->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->claims_ref);
    size_t n = 0;
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "sub");
        size_t len;
        const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
        if (s && len > 0 && len + 5 < outlen) {
            memcpy(out, "sub:", 4);
            memcpy(out + 4, s, len);
            out[4 + len] = 0;
            n = 4 + len;
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return n;
}

static void wait_cancel(void *arg)
{
    ratelimit_wait_cancel(arg);
}

void ratelimit_park(request_t *r, ratelimit_wait_t *wait)
{
    server_park(r, wait_cancel, wait);
}

int ratelimit_answered(request_t *r, const ratelimit_result_t *res)
{
    r->wait_cancel = NULL;   /* the wait is over: its handle is freed by the limiter */
    r->wait_arg = NULL;
    r->rl = *res;
    return res->allowed;
}

void ratelimit_refuse(request_t *r, const char *name, const ratelimit_result_t *res)
{
    if (r->claims_ref != LUA_NOREF && r->w->L) {   /* the handler will not run to release it */
        luaL_unref(r->w->L, LUA_REGISTRYINDEX, r->claims_ref);
        r->claims_ref = LUA_NOREF;
    }
    ratelimit_reject(r, name, res);
}

int ratelimit_route(request_t *r, const ratelimit_rule_t *rule, int phase, ratelimit_result_t *res,
                    ratelimit_done_cb done, void *arg, ratelimit_wait_t **wait)
{
    *wait = NULL;
    if (rule->key == RATELIMIT_KEY_NONE || (rule->key == RATELIMIT_KEY_IP) != (phase == 0)) return 0;
    char key[320];
    size_t n = rule->key == RATELIMIT_KEY_SUB ? sub_key(r, key, sizeof key) : 0;
    if (!n) n = ip_key(r, key, sizeof key);
    ratelimit_ctx_t cx = worker_limits(r->w);
    if (ratelimit_check_async(&cx, rule->name, key, n, &rule->limit, 1, 0, res, done, arg, wait)) return 1;
    if (res->allowed) return 0;
    ratelimit_refuse(r, rule->name, res);
    return -1;
}

static pthread_once_t g_global_once = PTHREAD_ONCE_INIT;
static ratelimit_limit_t g_global;

static void load_global(void)
{
    const char *v = getenv("RATE_LIMIT_GLOBAL");
    char err[200];
    if (ratelimit_parse(v && *v ? v : DEFAULT_GLOBAL, &g_global, err, sizeof err) < 0) {
        log_error("RATE_LIMIT_GLOBAL: %s; using %s", err, DEFAULT_GLOBAL);
        ratelimit_parse(DEFAULT_GLOBAL, &g_global, err, sizeof err);
    }
}

int ratelimit_config_check(void)
{
    char err[256];
    const char *v = getenv("RATE_LIMIT_GLOBAL");
    ratelimit_limit_t lim;
    if (v && *v && ratelimit_parse(v, &lim, err, sizeof err) < 0) {
        log_error("RATE_LIMIT_GLOBAL: %s", err);
        return -1;
    }
    if (ratelimit_trusted_load(getenv("TRUSTED_PROXIES"), err, sizeof err) < 0) {
        log_error("%s", err);
        return -1;
    }
    return 0;
}

int ratelimit_gateway(request_t *r, ratelimit_result_t *res, ratelimit_done_cb done, void *arg, ratelimit_wait_t **wait)
{
    pthread_once(&g_global_once, load_global);
    *wait = NULL;
    res->limit = 0;
    if (g_global.count == 0) return 0;
    char key[80];
    size_t n = ip_key(r, key, sizeof key);
    ratelimit_ctx_t cx = worker_limits(r->w);
    if (ratelimit_check_async(&cx, "global", key, n, &g_global, 1, 0, res, done, arg, wait)) return 1;
    if (res->allowed) return 0;
    ratelimit_reject(r, "global", res);
    return -1;
}
