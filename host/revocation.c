/* revocation: per-subject token revocation records from Redis (see revocation.h), read with
 * one GET on the thread's loop connection and cached per thread for about a second. */
#include "revocation.h"

#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../core/log.h"
#include "../core/metrics.h"
#include "../core/redis.h"
#include "worker.h"

#define CACHE_SLOTS 256                 /* per thread, direct-mapped by a hash of the subject */
#define TIMEOUT_MS 250                  /* a slower Redis is treated as down for this lookup */
#define RETRY_REDIS_MS 1000             /* after a failure, answer from the cache this long */
#define KEY_PREFIX "auth:revocation:"

typedef struct {
    char sub[REVOCATION_SUB_MAX];
    size_t n;
    int64_t fetched_ms;                 /* monotonic; 0 = empty slot */
    revocation_t rec;
} slot_t;

struct revocation_wait {
    redis_op_t *op;
    worker_t *w;
    revocation_cb cb;
    void *arg;
    size_t n;
    char sub[REVOCATION_SUB_MAX];
};

static _Atomic int64_t g_retry_at_ms;   /* monotonic ms: before it, Redis is not asked */
static _Atomic int g_failing;           /* 1 between a failure and the next good answer */
static metric_cell_t *g_fail_open;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void setup(void)
{
    g_fail_open = metrics_counter0("auth_revocation_fail_open_total",
                                   "Tokens accepted without their revocation record because Redis did not answer.");
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* w's cache slot of the subject (FNV-1a), the cache made on first use (freed by worker_free). */
static slot_t *slot_of(worker_t *w, const char *sub, size_t n)
{
    if (!w->revocations && !(w->revocations = calloc(CACHE_SLOTS, sizeof(slot_t)))) return NULL;
    slot_t *cache = w->revocations;
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)sub[i]) * 16777619u;
    return &cache[h % CACHE_SLOTS];
}

/* The cached record of sub, fresh (age below REVOCATION_CACHE_MS) or any age (stale_ok). */
static const revocation_t *cached(worker_t *w, const char *sub, size_t n, int stale_ok)
{
    slot_t *s = slot_of(w, sub, n);
    if (!s || !s->fetched_ms || s->n != n || memcmp(s->sub, sub, n) != 0) return NULL;
    if (!stale_ok && now_ms() - s->fetched_ms >= REVOCATION_CACHE_MS) return NULL;
    return &s->rec;
}

static void remember(worker_t *w, const char *sub, size_t n, const revocation_t *rec)
{
    slot_t *s = slot_of(w, sub, n);
    if (!s) return;
    memcpy(s->sub, sub, n);
    s->n = n;
    s->rec = *rec;
    s->fetched_ms = now_ms();
}

void revocation_cache_clear(worker_t *w)
{
    if (w->revocations) memset(w->revocations, 0, CACHE_SLOTS * sizeof(slot_t));
}

/* A whole number of seconds at *p (digits only, at most 12: no overflow), then one space. */
static int parse_seconds(const char **p, const char *end, int64_t *out)
{
    int64_t v = 0;
    int digits = 0;
    while (*p < end && **p >= '0' && **p <= '9' && digits < 13) { v = v * 10 + (**p - '0'); (*p)++; digits++; }
    if (digits == 0 || digits > 12 || *p >= end || **p != ' ') return -1;
    (*p)++;
    *out = v;
    return 0;
}

int revocation_parse(const char *s, size_t n, revocation_t *out)
{
    const char *p = s, *end = s + n;
    revocation_t r;
    memset(&r, 0, sizeof r);
    memset(out, 0, sizeof *out);   /* a malformed record reads as none */
    if (parse_seconds(&p, end, &r.revoked_s) != 0 || parse_seconds(&p, end, &r.role_s) != 0) return -1;
    size_t rn = (size_t)(end - p);
    if (rn == 0 || rn >= REVOCATION_ROLE_MAX) return -1;
    for (size_t i = 0; i < rn; i++)
        if (!((p[i] >= 'a' && p[i] <= 'z') || p[i] == '_' || (rn == 1 && p[i] == '-'))) return -1;
    if (!(rn == 1 && p[0] == '-')) memcpy(r.role, p, rn);
    *out = r;
    return 0;
}

int revocation_refuses(const revocation_t *rec, double iat, const char **role)
{
    if (role) *role = NULL;
    if (!(iat >= (double)rec->revoked_s)) return 1;   /* NaN or older: refused */
    if (role && rec->role[0] && iat < (double)rec->role_s) *role = rec->role;
    return 0;
}

/* Redis failed (err): answer from the cache for RETRY_REDIS_MS, log once per outage. */
static void redis_failed(const char *err)
{
    atomic_store(&g_retry_at_ms, now_ms() + RETRY_REDIS_MS);
    if (!atomic_exchange(&g_failing, 1))
        log_warn("token revocation: Redis is unavailable (%s); accepting verified tokens on their own (and on the "
                 "last record seen) until it is back", err ? err : "?");
}

/* sub's answer while Redis is not usable: the last record seen, else none (fail open). */
static void fail_open(worker_t *w, const char *sub, size_t n, revocation_t *out)
{
    const revocation_t *c = cached(w, sub, n, 1);
    if (c) { *out = *c; return; }
    memset(out, 0, sizeof *out);
    pthread_once(&g_once, setup);
    metrics_cell_add(g_fail_open, 1);
}

static void on_reply(void *arg, int i, const redisReply *reply, const char *err, const char *code)
{
    revocation_wait_t *wt = arg;
    revocation_t rec;
    (void)i; (void)code;
    memset(&rec, 0, sizeof rec);
    if (reply && (reply->type == REDIS_REPLY_NIL ||
                  (reply->type == REDIS_REPLY_STRING && revocation_parse(reply->str, reply->len, &rec) == 0))) {
        if (atomic_load_explicit(&g_failing, memory_order_relaxed) && atomic_exchange(&g_failing, 0))
            log_info("token revocation: Redis is back");
        remember(wt->w, wt->sub, wt->n, &rec);
    } else if (reply && reply->type == REDIS_REPLY_STRING) {
        log_warn("token revocation: a malformed record in Redis is ignored");
        remember(wt->w, wt->sub, wt->n, &rec);
    } else {
        redis_failed(reply ? (reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply") : err);
        fail_open(wt->w, wt->sub, wt->n, &rec);
    }
    revocation_cb cb = wt->cb;
    void *cbarg = wt->arg;
    free(wt);
    cb(cbarg, &rec);
}

int revocation_lookup(struct worker *w, const char *sub, size_t n, revocation_t *out, revocation_cb cb, void *arg,
                      revocation_wait_t **wait)
{
    *wait = NULL;
    memset(out, 0, sizeof *out);
    if (n == 0 || n >= REVOCATION_SUB_MAX) return 0;   /* no subject a record could name */
    const revocation_t *c = cached(w, sub, n, 0);
    if (c) { *out = *c; return 0; }
    ratelimit_ctx_t cx = worker_limits(w);
    redis_async_t *as = ratelimit_redis_async(&cx);
    if (!as) return 0;                                  /* no Redis configured: no revocations */
    if (now_ms() < atomic_load_explicit(&g_retry_at_ms, memory_order_relaxed)) {
        fail_open(w, sub, n, out);
        return 0;
    }
    revocation_wait_t *wt = malloc(sizeof *wt);
    if (!wt) { fail_open(w, sub, n, out); return 0; }
    char key[sizeof KEY_PREFIX + REVOCATION_SUB_MAX];
    size_t klen = sizeof KEY_PREFIX - 1 + n;
    memcpy(key, KEY_PREFIX, sizeof KEY_PREFIX - 1);
    memcpy(key + sizeof KEY_PREFIX - 1, sub, n);
    const char *argv[] = { "GET", key };
    size_t len[] = { 3, klen };
    redis_cmd_t cmd = { 2, argv, len };
    char err[256];
    wt->w = w;
    wt->cb = cb;
    wt->arg = arg;
    wt->n = n;
    memcpy(wt->sub, sub, n);
    wt->op = redis_async_send(as, TIMEOUT_MS, 1, &cmd, NULL, 0, on_reply, wt, err, sizeof err);
    if (!wt->op) {
        free(wt);
        redis_failed(err);
        fail_open(w, sub, n, out);
        return 0;
    }
    *wait = wt;
    return 1;
}

void revocation_wait_cancel(revocation_wait_t *wt)
{
    if (!wt) return;
    redis_async_forget(wt->op);
    free(wt);
}
