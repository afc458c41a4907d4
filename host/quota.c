/* quota: what clients may hold of the process — connections in all and per client IP,
 * buffered request-body bytes, and how long a request may take to arrive.
 *
 * Every HTTP thread has its own connections, so a limit per thread cannot say "the
 * process": the counts here are shared — atomics, and one mutex around the per-IP table, taken
 * once when a connection opens and once when it closes. A connection past a limit is closed at
 * accept (quota_admit), before it costs a buffer. */
#include "quota.h"
#include "ratelimit_http.h"
#include "conn.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>

#include "../core/ratelimit.h"
#include "../core/log.h"
#include "../core/loop.h"
#include "../core/metrics.h"
#include "worker.h"

#define DEFAULT_MAX_CONNECTIONS 10000
#define FD_RESERVE 256           /* descriptors kept for dependencies, logs, epoll, listeners */

/* One client address with connections open: IPv4, or IPv6 by its /64 (one host's share). */
typedef struct {
    uint64_t hash;
    unsigned count;              /* 0: the slot is free */
    unsigned char key[9];        /* family byte + 4 (v4) or 8 (v6 /64) address bytes */
} ip_slot_t;

static struct {
    unsigned max_conns, per_ip;
    size_t budget;
    int read_timeout_ms;
    _Atomic long conns;
    _Atomic long peak;           /* the most open at once since quota_connections_settled() */
    _Atomic size_t body_bytes;
    pthread_mutex_t lock;        /* the per-IP table */
    ip_slot_t *table;
    size_t mask;
    uint64_t seed[2];
    metric_cell_t *open, *refused_total, *refused_ip, *body_gauge, *budget_refusals, *read_timeouts;
} g = { .lock = PTHREAD_MUTEX_INITIALIZER };

/* ---- set-up -------------------------------------------------------------------------------- */

long quota_raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 1024;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) getrlimit(RLIMIT_NOFILE, &rl);
    }
    return rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > (rlim_t)1 << 30 ? 1L << 30 : (long)rl.rlim_cur;
}

void quota_init(const config_t *cfg)
{
    long nofile = quota_raise_nofile();
    long fit = nofile - FD_RESERVE > 64 ? nofile - FD_RESERVE : 64;
    long max = cfg->max_connections ? cfg->max_connections : DEFAULT_MAX_CONNECTIONS;
    if (max > fit) {
        if (cfg->max_connections)
            log_warn("MAX_CONNECTIONS=%ld does not fit the open-file limit (%ld): using %ld", max, nofile, fit);
        max = fit;
    }
    g.max_conns = (unsigned)max;
    g.per_ip = (unsigned)cfg->max_connections_per_ip;
    g.budget = cfg->body_buffer_budget;
    g.read_timeout_ms = cfg->request_read_timeout_ms;
    if (g.per_ip && !g.table) {
        size_t cap = 64;
        while (cap < (size_t)g.max_conns * 2) cap *= 2;
        g.table = calloc(cap, sizeof *g.table);   /* freed by quota_free */
        g.mask = cap - 1;
        if (!g.table) { log_error("out of memory: MAX_CONNECTIONS_PER_IP is not enforced"); g.per_ip = 0; }
        if (getrandom(g.seed, sizeof g.seed, 0) != sizeof g.seed) { g.seed[0] = (uint64_t)(uintptr_t)&g; g.seed[1] = 0x9e3779b97f4a7c15ull; }
    }
    g.open = metrics_gauge0("http_connections", "Client connections open.");
    g.body_gauge = metrics_gauge0("http_body_buffer_bytes", "Request-body bytes buffered, process-wide (BODY_BUFFER_BUDGET).");
    g.budget_refusals = metrics_counter0("http_body_budget_refusals_total",
                                         "Requests answered 503 because BODY_BUFFER_BUDGET was full.");
    g.read_timeouts = metrics_counter0("http_read_timeouts_total",
                                       "Connections closed because a request did not arrive within REQUEST_READ_TIMEOUT_MS.");
    char err[256];
    const char *label[] = { "reason" };
    metric_family_t *f = metrics_family("http_connections_refused_total",
                                        "Connections closed at accept: past MAX_CONNECTIONS (total) or MAX_CONNECTIONS_PER_IP (per_ip).",
                                        METRIC_COUNTER, 1, label, 0, NULL, err, sizeof err);
    const char *total[] = { "total" }, *per_ip[] = { "per_ip" };
    g.refused_total = f ? metrics_cell(f, total) : NULL;
    g.refused_ip = f ? metrics_cell(f, per_ip) : NULL;
}

void quota_free(void)
{
    free(g.table);
    g.table = NULL;
    g.per_ip = 0;
}

unsigned quota_max_connections(void) { return g.max_conns ? g.max_conns : DEFAULT_MAX_CONNECTIONS; }

/* ---- connections --------------------------------------------------------------------------- */

/* The table key of addr, or 0 when it is not counted per IP (not IP, or a trusted proxy). */
static int ip_key(const struct sockaddr *sa, unsigned char key[9])
{
    char text[INET6_ADDRSTRLEN];
    memset(key, 0, 9);
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
        key[0] = 4;
        memcpy(key + 1, &a->sin_addr, 4);
        inet_ntop(AF_INET, &a->sin_addr, text, sizeof text);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
        static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
        if (memcmp(a->sin6_addr.s6_addr, mapped, 12) == 0) {
            key[0] = 4;
            memcpy(key + 1, a->sin6_addr.s6_addr + 12, 4);
        } else {
            key[0] = 6;
            memcpy(key + 1, a->sin6_addr.s6_addr, 8);
        }
        inet_ntop(AF_INET6, &a->sin6_addr, text, sizeof text);
    } else {
        return 0;
    }
    return ratelimit_trusted(text) == 1 ? 0 : 1;
}

static uint64_t mix(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    return h ^ (h >> 33);
}

/* Keyed with a random seed, so a client cannot choose addresses that collide. */
static uint64_t ip_hash(const unsigned char key[9])
{
    uint64_t a = 0, b = key[8];
    memcpy(&a, key, 8);
    return mix(mix(a ^ g.seed[0]) ^ b ^ g.seed[1]);
}

/* The slot of key (open addressing, linear probing), or the free slot where it would go.
 * Under g.lock. The table never fills: it has twice as many slots as connections. */
static size_t ip_find(const unsigned char key[9], uint64_t h)
{
    size_t i = (size_t)h & g.mask;
    while (g.table[i].count && (g.table[i].hash != h || memcmp(g.table[i].key, key, 9) != 0)) i = (i + 1) & g.mask;
    return i;
}

/* Free slot i, moving later slots of its probe run back (no tombstones). Under g.lock. */
static void ip_remove(size_t i)
{
    size_t j = i;
    g.table[i].count = 0;
    for (;;) {
        j = (j + 1) & g.mask;
        if (!g.table[j].count) return;
        size_t home = (size_t)g.table[j].hash & g.mask;
        int stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
        if (stays) continue;
        g.table[i] = g.table[j];
        g.table[j].count = 0;
        i = j;
    }
}

unsigned quota_ip_count(const unsigned char key[9])
{
    uint64_t h = ip_hash(key);
    pthread_mutex_lock(&g.lock);
    unsigned n = g.table[ip_find(key, h)].count;
    pthread_mutex_unlock(&g.lock);
    return n;
}

void quota_ip_add(const unsigned char key[9], int d)
{
    uint64_t h = ip_hash(key);
    pthread_mutex_lock(&g.lock);
    size_t i = ip_find(key, h);
    ip_slot_t *s = &g.table[i];
    if (d > 0) {
        if (!s->count) { s->hash = h; memcpy(s->key, key, 9); }
        s->count++;
    } else if (s->count && --s->count == 0) {
        ip_remove(i);
    }
    pthread_mutex_unlock(&g.lock);
}

long quota_connections_settled(void)
{
    long now = atomic_load_explicit(&g.conns, memory_order_relaxed);
    long peak = atomic_exchange_explicit(&g.peak, now, memory_order_relaxed);
    return peak > now ? peak - now : 0;
}

int quota_admit(const struct sockaddr *addr)
{
    if (g.max_conns && atomic_load_explicit(&g.conns, memory_order_relaxed) >= (long)g.max_conns) {
        metrics_cell_add(g.refused_total, 1);
        return 0;
    }
    unsigned char key[9];
    if (g.per_ip && addr && ip_key(addr, key) && quota_ip_count(key) >= g.per_ip) {
        metrics_cell_add(g.refused_ip, 1);
        return 0;
    }
    return 1;
}

void quota_opened(struct conn *conn, int opened)
{
    long now = atomic_fetch_add_explicit(&g.conns, opened ? 1 : -1, memory_order_relaxed) + (opened ? 1 : -1);
    long peak = atomic_load_explicit(&g.peak, memory_order_relaxed);
    while (now > peak && !atomic_compare_exchange_weak_explicit(&g.peak, &peak, now, memory_order_relaxed,
                                                                 memory_order_relaxed)) {}
    metrics_cell_add(g.open, opened ? 1 : -1);
    if (!g.per_ip || !conn) return;
    /* The connection's tag marks it counted per IP, so that only those are uncounted. */
    void **counted = conn_tag(conn);
    if (!opened && !*counted) return;
    unsigned char key[9];
    if (!ip_key(conn_peer(conn), key)) return;
    quota_ip_add(key, opened ? 1 : -1);
    if (opened) *counted = (void *)&g;
}

/* ---- request bodies ------------------------------------------------------------------------ */

int quota_body_append(request_t *r, const char *data, size_t n)
{
    size_t used = atomic_fetch_add_explicit(&g.body_bytes, n, memory_order_relaxed) + n;
    if (g.budget && used > g.budget) {
        atomic_fetch_sub_explicit(&g.body_bytes, n, memory_order_relaxed);
        metrics_cell_add(g.budget_refusals, 1);
        return -1;
    }
    if (r->body_len + n + 1 > r->body_cap) {
        size_t cap = r->body_cap ? r->body_cap : 4096;
        while (cap < r->body_len + n + 1) cap *= 2;
        char *b = realloc(r->body, cap);
        if (!b) {
            atomic_fetch_sub_explicit(&g.body_bytes, n, memory_order_relaxed);
            return -2;
        }
        r->body = b;
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, data, n);
    r->body_len += n;
    r->body[r->body_len] = 0;
    metrics_cell_add(g.body_gauge, (double)n);
    return 0;
}

void quota_body_drop(request_t *r)
{
    if (r->body_len) {
        atomic_fetch_sub_explicit(&g.body_bytes, r->body_len, memory_order_relaxed);
        metrics_cell_add(g.body_gauge, -(double)r->body_len);
    }
    free(r->body);
    r->body = NULL;
    r->body_len = r->body_cap = 0;
}

/* ---- the read deadline --------------------------------------------------------------------- */

int quota_read_timeout_ms(void)
{
    return g.read_timeout_ms > 0 ? g.read_timeout_ms : 0;
}

void quota_read_timed_out(void)
{
    metrics_cell_add(g.read_timeouts, 1);
    log_debug("closing a connection whose request did not arrive within %d ms", g.read_timeout_ms);
}

/* The request is late: shut its socket down. The connection sees the end of the stream and
 * closes as if the client had (its done hook frees r). */
static void read_deadline(loop_t *loop, void *arg)
{
    request_t *r = arg;
    (void)loop;
    r->read_timer = NULL;
    shutdown(conn_fd(r->conn), SHUT_RDWR);
    quota_read_timed_out();
}

void quota_read_start(request_t *r)
{
    if (g.read_timeout_ms <= 0 || !r->w->loop || !r->conn) return;
    uint64_t spent = (request_now_ns() - r->start_ns) / 1000000ull;
    uint64_t left = spent < (uint64_t)g.read_timeout_ms ? (uint64_t)g.read_timeout_ms - spent : 0;
    r->read_timer = loop_timer_add(r->w->loop, left, read_deadline, r);
}

void quota_read_done(request_t *r)
{
    if (r->read_timer) loop_timer_cancel(r->w->loop, r->read_timer);
    r->read_timer = NULL;
}
