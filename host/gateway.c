/* gateway: SERVICE=gateway — path-prefix routing to the upstream services (CONTRACT §5).
 *
 * The gateway holds no business logic: it picks the upstream by the first path segment,
 * refuses /internal paths, and forwards method, raw target, headers and body byte for byte
 * through the worker's libcurl handle (keep-alive to every upstream). Both directions are
 * buffered: the request body is already in r->body (capped by gateway_max_body), and the
 * upstream's answer is collected (capped by GATEWAY_MAX_RESPONSE_BYTES, default 16 MiB) before
 * it is queued. Buffering keeps one thread's loop simple and is fine at these sizes;
 * streaming is the change to make if bodies grow. */
#include "gateway.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "../core/httpc.h"
#include "../core/log.h"
#include "../core/metrics.h"
#include "../core/upstream.h"
#include "dispatch.h"
#include "ratelimit_http.h"
#include "server.h"
#include "worker.h"
#include "../core/hex.h"

/* ---- routing --------------------------------------------------------------------------- */

static const struct {
    const char *segment;
    int upstream;
} prefixes[] = {
    { "auth", GW_USER }, { "oauth", GW_USER }, { "users", GW_USER }, { ".well-known", GW_USER },
    { "products", GW_PRODUCT }, { "categories", GW_PRODUCT }, { "tags", GW_PRODUCT }, { "images", GW_PRODUCT },
    { "cart", GW_ORDER }, { "orders", GW_ORDER },
    { "payments", GW_PAYMENT }, { "webhooks", GW_PAYMENT },
    { "notifications", GW_NOTIFICATION },
};

static const char *const names[GW_NUPSTREAMS] = { "user", "product", "order", "payment", "notification" };
static const char *const envs[GW_NUPSTREAMS] = {
    "USER_SERVICE_URL", "PRODUCT_SERVICE_URL", "ORDER_SERVICE_URL", "PAYMENT_SERVICE_URL", "NOTIFICATION_SERVICE_URL",
};
/* CONTRACT §2 default ports: an unset *_SERVICE_URL means the service runs beside the gateway. */
static const char *const defaults[GW_NUPSTREAMS] = {
    "http://127.0.0.1:8081", "http://127.0.0.1:8082", "http://127.0.0.1:8083", "http://127.0.0.1:8084", "http://127.0.0.1:8085",
};

const char *gateway_upstream_name(int upstream)
{
    return upstream >= 0 && upstream < GW_NUPSTREAMS ? names[upstream] : NULL;
}

const char *gateway_upstream_env(int upstream)
{
    return upstream >= 0 && upstream < GW_NUPSTREAMS ? envs[upstream] : NULL;
}

/* Call fn on each segment of the percent-decoded path (a decoded '/' splits too, so that
 * "%2Finternal" cannot hide a segment from an upstream that decodes before routing).
 * Returns the first non-zero fn result. */
static int each_decoded_segment(const char *path, size_t len, int (*fn)(const char *seg, size_t n))
{
    char seg[256];
    size_t n = 0;
    int overflow = 0;
    for (size_t i = 0; i <= len; i++) {
        char c;
        if (i == len) c = '/';
        else if (path[i] == '%' && i + 2 < len && hex_digit(path[i + 1]) >= 0 && hex_digit(path[i + 2]) >= 0) {
            c = (char)(hex_digit(path[i + 1]) * 16 + hex_digit(path[i + 2]));
            i += 2;
        } else c = path[i];
        if (c == '/') {
            if (!overflow && n) { int rc = fn(seg, n); if (rc) return rc; }
            n = 0;
            overflow = 0;
        } else if (n < sizeof seg) {
            seg[n++] = c;
        } else {
            overflow = 1;   /* a segment this long is neither "internal" nor a dot segment */
        }
    }
    return 0;
}

static int seg_internal(const char *seg, size_t n) { return n == 8 && strncasecmp(seg, "internal", 8) == 0; }

static int seg_forbidden(const char *seg, size_t n)
{
    return seg_internal(seg, n) || (n == 1 && seg[0] == '.') || (n == 2 && seg[0] == '.' && seg[1] == '.');
}

int gateway_path_is_internal(const char *path, size_t len)
{
    return each_decoded_segment(path, len, seg_internal);
}

int gateway_route(const char *path, size_t len)
{
    if (len == 0 || path[0] != '/') return GW_UNKNOWN;
    if (each_decoded_segment(path, len, seg_forbidden)) return GW_FORBIDDEN;
    const char *seg = path + 1;
    const char *slash = memchr(seg, '/', len - 1);
    size_t n = slash ? (size_t)(slash - seg) : len - 1;
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++)
        if (strlen(prefixes[i].segment) == n && memcmp(prefixes[i].segment, seg, n) == 0) return prefixes[i].upstream;
    return GW_UNKNOWN;
}

int gateway_hop_by_hop(const char *name)
{
    static const char *const hop[] = { "Connection", "Keep-Alive", "TE", "Trailer", "Transfer-Encoding", "Upgrade" };
    for (size_t i = 0; i < sizeof hop / sizeof hop[0]; i++)
        if (strcasecmp(name, hop[i]) == 0) return 1;
    return strncasecmp(name, "Proxy-", 6) == 0;
}

/* ---- configuration, read once ---------------------------------------------------------- */

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static const char *g_base[GW_NUPSTREAMS];   /* base URLs (environment or defaults) */
static size_t g_base_len[GW_NUPSTREAMS];

/* A plain-http upstream goes through core/upstream.c; https (or an unparsable URL) through
 * libcurl. Names are resolved at start-up and again every GW_RESOLVE_EVERY_S by a thread of
 * their own (a Kubernetes or compose service may move), never on an HTTP thread. */
#define GW_RESOLVE_EVERY_S 30
typedef struct {
    int direct;
    char host[256];                  /* as written, brackets of an IPv6 literal removed */
    char port[8];
    char authority[300];             /* the Host header: host[:port] as written */
    char prefix[256];                /* the base URL's path, without a trailing slash */
    size_t prefix_len;
    pthread_mutex_t lock;            /* guards addr: held for a copy, never across a call */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    _Atomic unsigned gen;            /* bumped when addr changes: threads pick the new one up */
    int resolved, literal;
} gw_origin_t;
static gw_origin_t g_origin[GW_NUPSTREAMS];
static long g_max_conns = 256;             /* HTTP_MAX_CONNS_PER_HOST: per thread and upstream */
static long g_keepalive = 64;              /* GATEWAY_UPSTREAM_KEEPALIVE: idle ones kept, the same */
static long g_timeout_ms = 15000;          /* GATEWAY_TIMEOUT_MS */
static long g_connect_ms = 1000;           /* GATEWAY_CONNECT_TIMEOUT_MS */
static size_t g_max_response = 16u << 20;  /* GATEWAY_MAX_RESPONSE_BYTES */
static metric_family_t *g_upstream_errors;

static long env_number(const char *name, long dflt, int size)
{
    const char *v = getenv(name);
    if (!v || !*v) return dflt;
    long n = config_parse_number(v, size);
    if (n < 1) {
        log_warn("%s: expecting a positive number, got '%s'; using %ld", name, v, dflt);
        return dflt;
    }
    return n;
}

/* Resolve o->host:o->port into o->addr. 0, or -1 (the old address is kept). */
static int origin_resolve(gw_origin_t *o)
{
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV }, *res = NULL;
    if (getaddrinfo(o->host, o->port, &hints, &res) != 0 || !res) return -1;
    const struct addrinfo *pick = res;   /* IPv4 first ("localhost" lists ::1 first) */
    for (const struct addrinfo *a = res; a; a = a->ai_next)
        if (a->ai_family == AF_INET) { pick = a; break; }
    pthread_mutex_lock(&o->lock);
    int moved = o->resolved && (o->addrlen != pick->ai_addrlen || memcmp(&o->addr, pick->ai_addr, pick->ai_addrlen) != 0);
    memset(&o->addr, 0, sizeof o->addr);
    memcpy(&o->addr, pick->ai_addr, pick->ai_addrlen);
    o->addrlen = pick->ai_addrlen;
    o->resolved = 1;
    if (moved) atomic_fetch_add(&o->gen, 1);
    pthread_mutex_unlock(&o->lock);
    freeaddrinfo(res);
    return 0;
}

/* Split an http:// base URL into o; 0, or -1 when it is not plain http (curl takes it). */
static int origin_parse(gw_origin_t *o, const char *url, size_t len)
{
    if (len < 8 || strncasecmp(url, "http://", 7) != 0) return -1;
    const char *a = url + 7, *end = url + len;
    const char *slash = memchr(a, '/', (size_t)(end - a));
    const char *aend = slash ? slash : end;
    if (aend == a || (size_t)(aend - a) >= sizeof o->authority || memchr(a, '@', (size_t)(aend - a))) return -1;
    memcpy(o->authority, a, (size_t)(aend - a));
    o->authority[aend - a] = 0;
    const char *h = a, *hend, *colon;
    if (*h == '[') {
        hend = memchr(h, ']', (size_t)(aend - h));
        if (!hend) return -1;
        h++;
        colon = hend + 1 < aend && hend[1] == ':' ? hend + 1 : NULL;
    } else {
        colon = memchr(h, ':', (size_t)(aend - h));
        hend = colon ? colon : aend;
    }
    if (hend == h || (size_t)(hend - h) >= sizeof o->host) return -1;
    memcpy(o->host, h, (size_t)(hend - h));
    o->host[hend - h] = 0;
    size_t pn = colon ? (size_t)(aend - colon - 1) : 2;
    if (pn == 0 || pn >= sizeof o->port) return -1;
    memcpy(o->port, colon ? colon + 1 : "80", pn);
    o->port[pn] = 0;
    for (size_t i = 0; i < pn; i++) if (o->port[i] < '0' || o->port[i] > '9') return -1;
    size_t plen = slash ? (size_t)(end - slash) : 0;
    while (plen && slash[plen - 1] == '/') plen--;
    if (plen >= sizeof o->prefix || (slash && (memchr(slash, '?', plen) || memchr(slash, '#', plen)))) return -1;
    if (plen) memcpy(o->prefix, slash, plen);
    o->prefix[plen] = 0;
    o->prefix_len = plen;
    struct in6_addr a6;
    o->literal = inet_pton(AF_INET, o->host, &a6) == 1 || inet_pton(AF_INET6, o->host, &a6) == 1;
    return 0;
}

/* The refresher: names of upstreams, again and again (getaddrinfo blocks: never on an HTTP
 * thread). Detached; it only ever touches g_origin. */
static void *resolver_main(void *arg)
{
    (void)arg;
    for (;;) {
        sleep(GW_RESOLVE_EVERY_S);
        for (int i = 0; i < GW_NUPSTREAMS; i++)
            if (g_origin[i].direct && !g_origin[i].literal && origin_resolve(&g_origin[i]) < 0)
                log_warn("gateway: cannot resolve %s for the %s service; keeping its last address", g_origin[i].host, names[i]);
    }
    return NULL;
}

static void load_config(void)
{
    for (int i = 0; i < GW_NUPSTREAMS; i++) {
        const char *v = getenv(envs[i]);
        g_base[i] = v && *v ? v : defaults[i];
        g_base_len[i] = strlen(g_base[i]);
        while (g_base_len[i] > 0 && g_base[i][g_base_len[i] - 1] == '/') g_base_len[i]--;
    }
    g_timeout_ms = env_number("GATEWAY_TIMEOUT_MS", 15000, 0);
    g_connect_ms = env_number("GATEWAY_CONNECT_TIMEOUT_MS", 1000, 0);
    if (g_connect_ms > g_timeout_ms) g_connect_ms = g_timeout_ms;
    g_max_response = (size_t)env_number("GATEWAY_MAX_RESPONSE_BYTES", 16l << 20, 1);
    g_max_conns = env_number("HTTP_MAX_CONNS_PER_HOST", 256, 0);
    g_keepalive = env_number("GATEWAY_UPSTREAM_KEEPALIVE", 64, 0);
    int names_to_refresh = 0;
    for (int i = 0; i < GW_NUPSTREAMS; i++) {
        gw_origin_t *o = &g_origin[i];
        pthread_mutex_init(&o->lock, NULL);
        if (origin_parse(o, g_base[i], g_base_len[i]) < 0) continue;   /* https: libcurl */
        if (origin_resolve(o) < 0) log_warn("gateway: cannot resolve %s for the %s service yet; trying again every %d s", o->host, names[i], GW_RESOLVE_EVERY_S);
        o->direct = 1;
        names_to_refresh += !o->literal;
    }
    pthread_t t;
    if (names_to_refresh && pthread_create(&t, NULL, resolver_main, NULL) == 0) pthread_detach(t);
    static const char *const labels[] = { "upstream", "kind" };
    char err[256];
    g_upstream_errors = metrics_family("gateway_upstream_errors_total", "Upstream calls the gateway answered with 502 or 504.",
                                       METRIC_COUNTER, 2, labels, 0, NULL, err, sizeof err);
}

void gateway_init(void)
{
    pthread_once(&g_once, load_config);
}

size_t gateway_max_body(const config_t *cfg)
{
    size_t images = 5u << 20;
    return cfg->max_body > images ? cfg->max_body : images;
}

/* ---- forwarding ------------------------------------------------------------------------ */

typedef struct {
    struct curl_slist *list;     /* for libcurl, or */
    buf_t *raw;                  /* "Name: value\r\n" lines for core/upstream.c */
    int oom;
    int has_ctype, has_accept, has_xfp;
    int peer_trusted;            /* the peer is in TRUSTED_PROXIES: its X-Forwarded-Proto stands */
    const char *xff;             /* the incoming X-Forwarded-For, if any */
    const char *host;            /* the incoming Host */
    const char *connection;      /* the incoming Connection: names more hop-by-hop headers */
} fwd_headers_t;

static void add_line(fwd_headers_t *h, const char *name, const char *value)
{
    size_t nn = strlen(name), vn = strlen(value);
    if (h->raw) {
        buf_add(h->raw, name, nn);
        buf_add(h->raw, ": ", 2);
        buf_add(h->raw, value, vn);
        buf_add(h->raw, "\r\n", 2);
        return;
    }
    char small[1024];
    char *line = nn + vn + 3 <= sizeof small ? small : malloc(nn + vn + 3);
    if (!line) { h->oom = 1; return; }
    memcpy(line, name, nn);
    if (vn) { line[nn] = ':'; line[nn + 1] = ' '; memcpy(line + nn + 2, value, vn + 1); }
    else { line[nn] = ';'; line[nn + 1] = 0; }   /* libcurl's way to send an empty value */
    struct curl_slist *l = curl_slist_append(h->list, line);
    if (line != small) free(line);
    if (l) h->list = l; else h->oom = 1;
}

/* A literal line: "Name:" removes a header libcurl would otherwise add. */
static void add_raw(fwd_headers_t *h, const char *line)
{
    if (h->raw) return;   /* only libcurl adds headers of its own */
    struct curl_slist *l = curl_slist_append(h->list, line);
    if (l) h->list = l; else h->oom = 1;
}

/* Is name listed in the Connection header's value (RFC 9110 §7.6.1)? */
static int named_in_connection(const char *connection, const char *name)
{
    if (!connection) return 0;
    size_t n = strlen(name);
    const char *p = connection;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ',') p++;
        const char *s = p;
        while (*p && *p != ',' && *p != ' ' && *p != '\t') p++;
        if ((size_t)(p - s) == n && strncasecmp(s, name, n) == 0) return 1;
    }
    return 0;
}

static void collect_header(fwd_headers_t *h, const char *key, const char *value)
{
    if (gateway_hop_by_hop(key) || named_in_connection(h->connection, key)) return;
    /* Set below by the gateway itself, or computed by libcurl from the body. */
    if (strcasecmp(key, "Host") == 0 || strcasecmp(key, "Content-Length") == 0 || strcasecmp(key, "Expect") == 0 ||
        strcasecmp(key, "X-Request-Id") == 0 || strcasecmp(key, "X-Forwarded-For") == 0 ||
        strcasecmp(key, "X-Forwarded-Host") == 0 || strcasecmp(key, "traceparent") == 0)
        return;
    if (strcasecmp(key, "Content-Type") == 0) h->has_ctype = 1;
    else if (strcasecmp(key, "Accept") == 0) h->has_accept = 1;
    else if (strcasecmp(key, "X-Forwarded-Proto") == 0) {
        if (!h->peer_trusted) return;   /* a client's own claim: replaced below */
        h->has_xfp = 1;                         /* set by a TLS terminator in front */
    }
    add_line(h, key, value);
}

static void client_addr(request_t *r, char *out, size_t outlen)
{
    out[0] = 0;
    const struct sockaddr *sa = request_peer(r);
    if (!sa) return;
    if (sa->sa_family == AF_INET) inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out, (socklen_t)outlen);
    else if (sa->sa_family == AF_INET6) inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, out, (socklen_t)outlen);
}

/* The forwarded headers: a libcurl list (raw NULL), or lines appended to raw. */
static struct curl_slist *build_headers(request_t *r, buf_t *raw, int *oom)
{
    fwd_headers_t h = { 0 };
    h.raw = raw;
    h.xff = request_header(r, "X-Forwarded-For");
    h.host = request_header(r, "Host");
    h.connection = request_header(r, "Connection");
    char addr[64];
    client_addr(r, addr, sizeof addr);
    h.peer_trusted = addr[0] && ratelimit_trusted(addr);
    for (int i = 0; i < r->nfields; i++) collect_header(&h, r->fields[i].name, r->fields[i].value);

    add_line(&h, "X-Request-Id", r->id);
    char tp[HTTPC_TRACEPARENT_SIZE];
    worker_traceparent(r->w, r, tp);
    add_line(&h, "traceparent", tp);
    /* Append the peer to what came in (unbounded: a truncated value would cut off the one hop
     * the services can trust, the right-most, and let a long spoofed list through). */
    buf_t xff;
    buf_init(&xff);
    if (h.xff && *h.xff) { buf_adds(&xff, h.xff); buf_adds(&xff, ", "); }
    buf_adds(&xff, addr);
    buf_add(&xff, "", 1);
    if (xff.failed) h.oom = 1;
    else if (addr[0]) add_line(&h, "X-Forwarded-For", xff.data);
    buf_free(&xff);
    if (!h.has_xfp) add_line(&h, "X-Forwarded-Proto", "http");
    if (h.host) add_line(&h, "X-Forwarded-Host", h.host);
    /* libcurl adds these on its own; forward only what the client sent. */
    if (!h.has_ctype) add_raw(&h, "Content-Type:");
    if (!h.has_accept) add_raw(&h, "Accept:");
    add_raw(&h, "Expect:");
    *oom = h.oom;
    return h.list;
}

static void set_method(CURL *h, request_t *r)
{
    const char *m = r->method;
    if (strcmp(m, "GET") == 0 && !r->body_len) { curl_easy_setopt(h, CURLOPT_HTTPGET, 1L); return; }
    if (strcmp(m, "HEAD") == 0) { curl_easy_setopt(h, CURLOPT_NOBODY, 1L); return; }
    if (r->body_len || strcmp(m, "POST") == 0 || strcmp(m, "PUT") == 0 || strcmp(m, "PATCH") == 0) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, r->body ? r->body : "");
    }
    if (strcmp(m, "POST") != 0) curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, m);
}

/* Headers of the upstream's answer that the gateway sets itself or that end at this hop. */
static int drop_response_header(const char *name)
{
    return gateway_hop_by_hop(name) || strcasecmp(name, "Content-Length") == 0 || strcasecmp(name, "Date") == 0 ||
           strcasecmp(name, "X-Request-Id") == 0;
}

static void upstream_failed(request_t *r, int upstream, int status, const char *kind, const char *why)
{
    char fields[1200], esc[800];
    log_json_escape(esc, sizeof esc, why, strlen(why));
    snprintf(fields, sizeof fields, "\"request_id\":\"%s\",\"upstream\":\"%s\",\"error\":\"%s\"", r->id, names[upstream], esc);
    log_line(LOG_WARN, fields, "gateway: upstream call failed");
    if (g_upstream_errors) {
        const char *labels[] = { names[upstream], kind };
        metric_cell_t *c = metrics_cell(g_upstream_errors, labels);
        if (c) metrics_cell_add(c, 1);
    }
    char detail[256];
    if (status == 504)
        snprintf(detail, sizeof detail, "The %s service did not answer within %ld ms.", names[upstream], g_timeout_ms);
    else
        snprintf(detail, sizeof detail, "The %s service is unavailable.", names[upstream]);
    server_problem(r, status, status == 504 ? "Gateway Timeout" : "Bad Gateway", detail, NULL, NULL);
}

/* Queue the upstream's answer for r: its status, its headers but those that end at this hop,
 * the global limit's RateLimit-* unless the service sent its own; body taken over. */
static void relay_answer(request_t *r, int status, const char *head, size_t head_len, buf_t *bodybuf)
{
    size_t len = bodybuf->len;
    char *body = len ? buf_take(bodybuf, NULL) : NULL;
    /* The response frees the body once sent: no copy of a large answer. */
    response_t *mr = body ? response_new(body, len, RESPONSE_TAKE) : response_new("", 0, RESPONSE_STATIC);
    if (!mr) {
        server_problem(r, 503, "Service Unavailable", "out of memory", NULL, NULL);
        return;
    }
    const char *p = head, *end = head ? head + head_len : NULL;
    const char *name, *value;
    size_t nlen, vlen;
    int own_limit = 0;
    while (p && httpc_head_next(&p, end, &name, &nlen, &value, &vlen)) {
        char k[256], v[8192];
        if (nlen >= sizeof k || vlen >= sizeof v) continue;
        memcpy(k, name, nlen); k[nlen] = 0;
        memcpy(v, value, vlen); v[vlen] = 0;
        if (!drop_response_header(k)) response_add_header(mr, k, v);
        if (strcasecmp(k, "RateLimit-Limit") == 0) own_limit = 1;   /* the service's own, stricter policy */
    }
    if (r->has_rl && !own_limit) ratelimit_add_headers(mr, &r->rl);
    server_queue(r, status, mr, len);
}

/* A libcurl forward is done (on the loop): queue the answer or a 502/504, resume r. */
static void forward_done(httpc_call_t *c, CURLcode rc, void *arg)
{
    request_t *r = arg;
    int up = gateway_route(r->uri, r->path_len);
    http_resp_t *resp = &c->resp;
    const char *why = c->errbuf[0] ? c->errbuf : curl_easy_strerror(rc);
    if (resp->too_large) upstream_failed(r, up, 502, "too_large", "the upstream response is larger than GATEWAY_MAX_RESPONSE_BYTES");
    else if (rc == CURLE_OPERATION_TIMEDOUT) upstream_failed(r, up, 504, "timeout", why);
    else if (rc != CURLE_OK || resp->head.failed || resp->body.failed || resp->status < 100 || resp->status > 599)
        upstream_failed(r, up, 502, "unavailable", why);
    else relay_answer(r, (int)resp->status, resp->head.data, resp->head.len, &resp->body);
    httpc_call_free(c);
    server_unpark(r);
}

/* A direct forward is done (on the loop): the same, from core/upstream.c's answer. */
static void direct_done(upstream_req_t *q, enum upstream_err err, const char *why, upstream_resp_t *resp, void *arg)
{
    request_t *r = arg;
    int up = gateway_route(r->uri, r->path_len);
    (void)q;
    if (err == UPSTREAM_TOO_LARGE) upstream_failed(r, up, 502, "too_large", "the upstream response is larger than GATEWAY_MAX_RESPONSE_BYTES");
    else if (err == UPSTREAM_TIMEOUT) upstream_failed(r, up, 504, "timeout", why);
    else if (err != UPSTREAM_OK) upstream_failed(r, up, 502, "unavailable", why);
    else relay_answer(r, resp->status, resp->head.data, resp->head.len, &resp->body);
    server_unpark(r);
}

static void direct_cancel(void *arg)
{
    upstream_cancel(arg);
}

/* A thread's connections, one pool per upstream (w->gateway). */
typedef struct {
    upstream_t *up[GW_NUPSTREAMS];
    unsigned gen[GW_NUPSTREAMS];     /* the origin's address generation each pool uses */
} gw_thread_t;

/* This thread's connections to upstream `up` (made on first use, freed by gateway_worker_free). */
static upstream_t *thread_upstream(worker_t *w, int up)
{
    gw_thread_t *set = w->gateway;
    if (!set) {
        set = calloc(1, sizeof *set);
        if (!set) return NULL;
        w->gateway = set;
    }
    gw_origin_t *o = &g_origin[up];
    unsigned gen = atomic_load_explicit(&o->gen, memory_order_acquire);
    if (set->up[up] && set->gen[up] != gen) {
        /* The name now resolves elsewhere (a moved service): new connections go there. */
        struct sockaddr_storage addr;
        pthread_mutex_lock(&o->lock);
        memcpy(&addr, &o->addr, sizeof addr);
        socklen_t len = o->addrlen;
        gen = atomic_load(&o->gen);
        pthread_mutex_unlock(&o->lock);
        upstream_set_addr(set->up[up], &addr, len);
        set->gen[up] = gen;
    }
    if (!set->up[up]) {
        upstream_opts_t opts = { .max_conns = (int)g_max_conns, .timeout_ms = g_timeout_ms, .connect_ms = g_connect_ms,
                                 .max_body = g_max_response, .idle_ms = 60000, .max_idle = (int)g_keepalive };
        pthread_mutex_lock(&o->lock);
        int ok = o->resolved;
        memcpy(&opts.addr, &o->addr, sizeof opts.addr);
        opts.addrlen = o->addrlen;
        set->gen[up] = atomic_load(&o->gen);
        pthread_mutex_unlock(&o->lock);
        if (!ok) return NULL;
        set->up[up] = upstream_new(w->loop, &opts);
    }
    return set->up[up];
}

void gateway_worker_free(worker_t *w)
{
    gw_thread_t *set = w->gateway;
    if (!set) return;
    for (int i = 0; i < GW_NUPSTREAMS; i++) upstream_free(set->up[i]);
    free(set);
    w->gateway = NULL;
}

static int retry_safe(request_t *r)
{
    static const char *const idem[] = { "GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE" };
    for (size_t i = 0; i < sizeof idem / sizeof idem[0]; i++)
        if (strcmp(r->method, idem[i]) == 0) return 1;
    return request_header(r, "Idempotency-Key") != NULL;
}

/* Forward r over this thread's keep-alive connections to a plain-http upstream. */
static void forward_direct(request_t *r, int up)
{
    gw_origin_t *o = &g_origin[up];
    upstream_t *u = thread_upstream(r->w, up);
    if (!u) {
        upstream_failed(r, up, 502, "unavailable", "the upstream's address is not resolved");
        return;
    }
    buf_t b;
    buf_init(&b);
    buf_adds(&b, r->method);
    buf_add(&b, " ", 1);
    buf_add(&b, o->prefix, o->prefix_len);
    buf_add(&b, r->uri, r->path_len);   /* raw, exactly as it came in */
    if (r->query) { buf_add(&b, "?", 1); buf_adds(&b, r->query); }
    buf_adds(&b, " HTTP/1.1\r\nHost: ");
    buf_adds(&b, o->authority);
    buf_add(&b, "\r\n", 2);
    int oom = 0;
    build_headers(r, &b, &oom);
    int body = r->body_len || strcmp(r->method, "POST") == 0 || strcmp(r->method, "PUT") == 0 || strcmp(r->method, "PATCH") == 0;
    if (body) buf_addf(&b, "Content-Length: %zu\r\n", r->body_len);
    buf_add(&b, "\r\n", 2);
    if (r->body_len) buf_add(&b, r->body, r->body_len);
    upstream_req_t *q = oom || b.failed ? NULL : upstream_send(u, &b, strcmp(r->method, "HEAD") == 0, retry_safe(r), direct_done, r);
    buf_free(&b);
    if (!q) {
        server_problem(r, 503, "Service Unavailable", "out of memory", NULL, NULL);
        return;
    }
    server_park(r, direct_cancel, q);
}

/* r goes away while its forward runs (shutdown): stop the transfer, never call back. */
static void forward_cancel(void *arg)
{
    httpc_call_free(arg);
}

/* Forward r to upstream `up` (its limit passed); from the access call or from the loop. */
static void forward(request_t *r, int up)
{
    r->has_rl = r->rl.limit != 0;
    if (g_origin[up].direct) { forward_direct(r, up); goto out; }

    httpc_t *hc = worker_httpc(r->w);
    httpc_call_t *c = hc ? httpc_call_new(hc) : NULL;
    if (!c) { server_problem(r, 503, "Service Unavailable", "out of memory", NULL, NULL); goto out; }
    buf_t url;
    buf_init(&url);
    buf_add(&url, g_base[up], g_base_len[up]);
    buf_add(&url, r->uri, r->path_len);
    if (r->query) { buf_add(&url, "?", 1); buf_adds(&url, r->query); }   /* raw, as the client sent it */
    buf_add(&url, "", 1);
    int oom = url.failed;
    c->headers = build_headers(r, NULL, &oom);
    c->resp.max_body = g_max_response;
    CURL *h = c->easy;
    if (!oom) {
        curl_easy_setopt(h, CURLOPT_URL, url.data);   /* copied by libcurl */
        curl_easy_setopt(h, CURLOPT_PATH_AS_IS, 1L);   /* the path goes out exactly as it came in */
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, g_timeout_ms);
        curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, g_connect_ms);
        set_method(h, r);   /* the body stays r's: r outlives the call (forward_cancel) */
    }
    buf_free(&url);
    if (oom || httpc_call_start(c, forward_done, r) != 0) {
        httpc_call_free(c);
        server_problem(r, 503, "Service Unavailable", "out of memory", NULL, NULL);
        goto out;
    }
    server_park(r, forward_cancel, c);
    return;
out:
    server_settle(r);   /* answered after a parked limit check (a forward under way stays parked) */
}

/* Redis answered the global limit (on the loop): refuse, or forward. */
static void limit_done(void *arg, const ratelimit_result_t *res)
{
    request_t *r = arg;
    if (!ratelimit_answered(r, res)) {
        ratelimit_refuse(r, "global", res);
        server_unpark(r);
        return;
    }
    forward(r, gateway_route(r->uri, r->path_len));
}

void gateway_handle(request_t *r)
{
    pthread_once(&g_once, load_config);
    int up = gateway_route(r->uri, r->path_len);
    if (up < 0) {
        server_problem(r, 404, "Not Found", "No resource lives at this path.", NULL, NULL);
        return;
    }
    /* The global per-client limit (CONTRACT §5), before any upstream work; held in Redis, it
     * parks the request while Redis answers. */
    ratelimit_wait_t *wait;
    int rc = ratelimit_gateway(r, &r->rl, limit_done, r, &wait);
    if (rc < 0) return;   /* 429 queued */
    if (rc == 1) { ratelimit_park(r, wait); return; }
    forward(r, up);
}
