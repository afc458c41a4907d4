/* ratelimit_local: limit strings, the GCRA arithmetic, and the in-process table used when
 * Redis is down or REDIS_URL is unset.
 *
 * GCRA keeps one number per key, the theoretical arrival time (TAT): with the emission interval
 * T = period / count and the tolerance tau = T * burst, a request of cost c at `now` is allowed
 * when TAT' = max(TAT, now) + c*T is at most now + tau. The same arithmetic runs inside Redis
 * (bindings/ratelimit.c); keep the two in step.
 *
 * The table is sharded (a mutex each) and bounded: keys are reduced to a keyed SipHash, so an
 * entry is 24 bytes whatever the key, and a full shard first drops expired entries (TAT in the
 * past: a full bucket, the same as no entry), then the entry nearest to full. */
#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "ratelimit.h"

#define DEFAULT_CAPACITY 100000
#define MAX_SHARDS 16

/* ---- limits ----------------------------------------------------------------------------- */

static const struct { const char *name; int64_t us; } units[] = {
    { "s", 1000000ll }, { "sec", 1000000ll }, { "second", 1000000ll },
    { "m", 60000000ll }, { "min", 60000000ll }, { "minute", 60000000ll },
    { "h", 3600000000ll }, { "hour", 3600000000ll },
    { "d", 86400000000ll }, { "day", 86400000000ll },
};

static const char *skip_space(const char *p) { while (*p == ' ' || *p == '\t') p++; return p; }

static int read_count(const char **p, int64_t *out)
{
    const char *s = *p;
    int64_t v = 0;
    if (!isdigit((unsigned char)*s)) return -1;
    while (isdigit((unsigned char)*s)) {
        v = v * 10 + (*s++ - '0');
        if (v > 1000000000ll) return -1;
    }
    *p = s;
    *out = v;
    return 0;
}

int ratelimit_parse(const char *s, ratelimit_limit_t *lim, char *err, size_t errlen)
{
    memset(lim, 0, sizeof *lim);
    if (!s) { snprintf(err, errlen, "rate limit: expecting \"N/sec\", \"N/min\" or \"N/hour\", got nothing"); return -1; }
    const char *p = skip_space(s);
    if (strcmp(p, "off") == 0 || strcmp(p, "0") == 0) return 0;
    int64_t n, burst;
    if (read_count(&p, &n) < 0 || n < 1) goto bad;
    p = skip_space(p);
    if (*p++ != '/') goto bad;
    p = skip_space(p);
    const char *u = p;
    while (isalpha((unsigned char)*p)) p++;
    size_t ulen = (size_t)(p - u);
    int64_t period = 0;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (strlen(units[i].name) == ulen && strncmp(units[i].name, u, ulen) == 0) period = units[i].us;
    if (!period) goto bad;
    burst = n;
    p = skip_space(p);
    if (strncmp(p, "burst", 5) == 0) {
        p = skip_space(p + 5);
        if (read_count(&p, &burst) < 0 || burst < 1) goto bad;
        p = skip_space(p);
    }
    if (*p) goto bad;
    /* The tolerance T * burst must fit in microseconds of int64 (1/day burst 1e9 would not). */
    if (burst > 4000000000000000000ll / (period / n > 0 ? period / n : 1)) {
        snprintf(err, errlen, "rate limit: burst %lld is too large for '%.60s'", (long long)burst, s);
        return -1;
    }
    lim->count = n;
    lim->period_us = period;
    lim->burst = burst;
    return 0;
bad:
    snprintf(err, errlen, "rate limit: expecting \"N/sec\", \"N/min\" or \"N/hour\" (optionally \"burst B\"), got '%.60s'", s);
    return -1;
}

/* ---- GCRA ------------------------------------------------------------------------------- */

int64_t ratelimit_gcra(int64_t tat, int64_t now, const ratelimit_limit_t *lim, int64_t cost, ratelimit_result_t *out)
{
    int64_t t = lim->period_us / lim->count;
    if (t < 1) t = 1;
    int64_t tau = t * lim->burst;
    if (tat < now) tat = now;
    int64_t next = tat + t * cost;
    out->limit = lim->burst;
    if (now < next - tau) {
        int64_t rem = (tau - (tat - now)) / t;
        out->allowed = 0;
        out->remaining = rem > 0 ? rem : 0;
        out->retry_after_us = next - tau - now;
        out->reset_after_us = tat - now;
        return tat;
    }
    out->allowed = 1;
    out->remaining = (tau - (next - now)) / t;
    out->retry_after_us = 0;
    out->reset_after_us = next - now;
    return next;
}

/* ---- keyed SipHash-2-4 ------------------------------------------------------------------ */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND do { \
    v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32); \
    v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2; \
    v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0; \
    v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32); \
} while (0)

static uint64_t siphash(const void *data, size_t len, uint64_t k0, uint64_t k1)
{
    const unsigned char *in = data;
    uint64_t v0 = 0x736f6d6570736575ull ^ k0, v1 = 0x646f72616e646f6dull ^ k1;
    uint64_t v2 = 0x6c7967656e657261ull ^ k0, v3 = 0x7465646279746573ull ^ k1;
    size_t whole = len - len % 8;
    for (size_t i = 0; i < whole; i += 8) {
        uint64_t m = 0;
        for (int k = 7; k >= 0; k--) m = (m << 8) | in[i + (size_t)k];
        v3 ^= m; SIPROUND; SIPROUND; v0 ^= m;
    }
    uint64_t b = (uint64_t)len << 56;
    for (size_t k = 0; k < len % 8; k++) b |= (uint64_t)in[whole + k] << (8 * k);
    v3 ^= b; SIPROUND; SIPROUND; v0 ^= b;
    v2 ^= 0xff;
    SIPROUND; SIPROUND; SIPROUND; SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* ---- the table -------------------------------------------------------------------------- */

typedef struct {
    uint64_t hash;      /* 0 marks a free slot's chain end only through `next` */
    int64_t tat;
    int32_t next;       /* next entry in the bucket (or the free list), -1 at the end */
} entry_t;

typedef struct {
    pthread_mutex_t lock;
    entry_t *e;         /* cap entries, allocated on first insert */
    int32_t *heads;     /* nbuckets chain heads */
    int32_t free_head;
    size_t cap, count, nbuckets;
} shard_t;

static struct {
    pthread_mutex_t init_lock;
    int ready;
    size_t capacity;
    int nshards;
    shard_t shards[MAX_SHARDS];
    uint64_t k0, k1;
} g = { .init_lock = PTHREAD_MUTEX_INITIALIZER };

static void table_setup(size_t capacity)
{
    if (!capacity) {
        const char *v = getenv("RATE_LIMIT_LOCAL_MAX_KEYS");
        char *end = NULL;
        long n = v && *v ? strtol(v, &end, 10) : -1;
        if (end && *end) n = -1;
        capacity = n > 0 ? (size_t)n : DEFAULT_CAPACITY;
    }
    g.capacity = capacity;
    g.nshards = capacity >= 4096 ? MAX_SHARDS : 1;   /* small tables (tests) stay exact */
    for (int i = 0; i < g.nshards; i++) {
        shard_t *s = &g.shards[i];
        memset(s, 0, sizeof *s);
        pthread_mutex_init(&s->lock, NULL);
        s->cap = capacity / (size_t)g.nshards;
        if (s->cap < 1) s->cap = 1;
        s->nbuckets = 1;
        while (s->nbuckets < s->cap) s->nbuckets <<= 1;
    }
    uint64_t k[2];
    if (getrandom(k, sizeof k, 0) != sizeof k) { k[0] = (uint64_t)(uintptr_t)&g ^ 0x9e3779b97f4a7c15ull; k[1] = (uint64_t)rand(); }
    g.k0 = k[0];
    g.k1 = k[1];
}

static void table_free(void)
{
    for (int i = 0; i < g.nshards; i++) {
        shard_t *s = &g.shards[i];
        free(s->e);
        free(s->heads);
        pthread_mutex_destroy(&s->lock);
        memset(s, 0, sizeof *s);
    }
}

static void ensure_table(void)
{
    if (__atomic_load_n(&g.ready, __ATOMIC_ACQUIRE)) return;
    pthread_mutex_lock(&g.init_lock);
    if (!g.ready) {
        table_setup(0);
        __atomic_store_n(&g.ready, 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&g.init_lock);
}

void ratelimit_local_clear(size_t capacity)
{
    pthread_mutex_lock(&g.init_lock);
    if (g.ready) table_free();
    table_setup(capacity);
    __atomic_store_n(&g.ready, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&g.init_lock);
}

size_t ratelimit_local_capacity(void)
{
    ensure_table();
    return g.capacity;
}

size_t ratelimit_local_size(void)
{
    ensure_table();
    size_t n = 0;
    for (int i = 0; i < g.nshards; i++) {
        pthread_mutex_lock(&g.shards[i].lock);
        n += g.shards[i].count;
        pthread_mutex_unlock(&g.shards[i].lock);
    }
    return n;
}

static uint64_t key_hash(const char *name, const char *key, size_t keylen)
{
    uint64_t hn = siphash(name, strlen(name), g.k0, g.k1);
    uint64_t h = siphash(key, keylen, g.k0 ^ hn, g.k1);
    return h ? h : 1;
}

/* Allocate the shard's arrays on first use (a service that never falls back pays nothing). */
static int shard_alloc(shard_t *s)
{
    if (s->e) return 0;
    s->e = malloc(s->cap * sizeof *s->e);
    s->heads = malloc(s->nbuckets * sizeof *s->heads);
    if (!s->e || !s->heads) { free(s->e); free(s->heads); s->e = NULL; s->heads = NULL; return -1; }
    for (size_t b = 0; b < s->nbuckets; b++) s->heads[b] = -1;
    for (size_t i = 0; i < s->cap; i++) s->e[i].next = i + 1 < s->cap ? (int32_t)(i + 1) : -1;
    s->free_head = 0;
    s->count = 0;
    return 0;
}

static int32_t *find(shard_t *s, uint64_t h)
{
    int32_t *link = &s->heads[(h >> 4) & (s->nbuckets - 1)];
    while (*link >= 0 && s->e[*link].hash != h) link = &s->e[*link].next;
    return link;
}

static void unlink_at(shard_t *s, int32_t *link)
{
    int32_t i = *link;
    *link = s->e[i].next;
    s->e[i].next = s->free_head;
    s->free_head = i;
    s->count--;
}

/* Make room in a full shard: drop every expired entry, or else the one nearest to full. */
static void evict(shard_t *s, int64_t now)
{
    int32_t *victim = NULL;
    int64_t oldest = INT64_MAX;
    for (size_t b = 0; b < s->nbuckets; b++) {
        int32_t *link = &s->heads[b];
        while (*link >= 0) {
            if (s->e[*link].tat <= now) { unlink_at(s, link); continue; }
            if (s->e[*link].tat < oldest) { oldest = s->e[*link].tat; victim = link; }
            link = &s->e[*link].next;
        }
    }
    if (s->free_head < 0 && victim) unlink_at(s, victim);
}

void ratelimit_local_check(const char *name, const char *key, size_t keylen, const ratelimit_limit_t *lim,
                           int64_t cost, int peek, int64_t now_us, ratelimit_result_t *out)
{
    ensure_table();
    uint64_t h = key_hash(name, key, keylen);
    shard_t *s = &g.shards[h % (uint64_t)g.nshards];
    pthread_mutex_lock(&s->lock);
    int64_t tat = 0;
    int32_t *link = NULL;
    if (shard_alloc(s) == 0) {
        link = find(s, h);
        if (*link >= 0) tat = s->e[*link].tat;
    }
    int64_t next = ratelimit_gcra(tat, now_us, lim, cost, out);
    out->local = 1;
    if (link && out->allowed && !peek) {
        if (*link < 0) {
            if (s->free_head < 0) { evict(s, now_us); link = find(s, h); }
            int32_t i = s->free_head;
            s->free_head = s->e[i].next;
            s->e[i] = (entry_t){ .hash = h, .tat = next, .next = -1 };
            *link = i;
            s->count++;
        } else {
            s->e[*link].tat = next;
        }
    }
    pthread_mutex_unlock(&s->lock);
}

void ratelimit_local_reset(const char *name, const char *key, size_t keylen)
{
    ensure_table();
    uint64_t h = key_hash(name, key, keylen);
    shard_t *s = &g.shards[h % (uint64_t)g.nshards];
    pthread_mutex_lock(&s->lock);
    if (s->e) {
        int32_t *link = find(s, h);
        if (*link >= 0) unlink_at(s, link);
    }
    pthread_mutex_unlock(&s->lock);
}

void ratelimit_local_shutdown(void)
{
    pthread_mutex_lock(&g.init_lock);
    if (g.ready) table_free();
    g.ready = 0;
    pthread_mutex_unlock(&g.init_lock);
}
