/* ratelimit: GCRA rate limits shared by every replica through Redis, with an in-process
 * fallback — the C API below the host's door checks (host/ratelimit_http.c: a route's
 * `rate_limit`, the gateway's global limit) and the `ratelimit` Lua module. */
#ifndef MERCATO_RATELIMIT_H
#define MERCATO_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>

struct loop;

/* A parsed limit: `count` per `period_us`, at most `burst` at once. count 0 = no limit. */
typedef struct ratelimit_limit {
    int64_t count;
    int64_t period_us;
    int64_t burst;
} ratelimit_limit_t;

/* The answer to one check. Times in microseconds. */
typedef struct ratelimit_result {
    int allowed;
    int64_t limit;            /* the burst: what a full bucket holds */
    int64_t remaining;        /* requests still allowed right now (after this one) */
    int64_t reset_after_us;   /* until the bucket is full again */
    int64_t retry_after_us;   /* until this request would be allowed; 0 when allowed */
    int local;                /* answered by the in-process table (Redis down or unset) */
} ratelimit_result_t;

enum { RATELIMIT_KEY_NONE, RATELIMIT_KEY_IP, RATELIMIT_KEY_SUB };

#define RATELIMIT_NAME_MAX 48

/* A route's `rate_limit = { name, limit, key }`, kept inline in route_info_t (nothing to free). */
typedef struct ratelimit_rule {
    int key;                          /* RATELIMIT_KEY_*; NONE = the route is not limited */
    char name[RATELIMIT_NAME_MAX];
    ratelimit_limit_t limit;
} ratelimit_rule_t;

/* ---- limits and the GCRA arithmetic (core/ratelimit_local.c) ----------------------------- */

/* Parse "N/sec", "N/min", "N/hour" (also s, second, m, minute, h) with an optional
 * " burst B" (default B = N); "0" or "off" is no limit (count 0). 0, or -1 with err. */
int ratelimit_parse(const char *s, ratelimit_limit_t *lim, char *err, size_t errlen);

/* One GCRA step: with the stored theoretical arrival time `tat` (0 = none), decide `cost`
 * requests at `now`. Fills out and returns the TAT to store (unchanged when denied). */
int64_t ratelimit_gcra(int64_t tat, int64_t now, const ratelimit_limit_t *lim, int64_t cost, ratelimit_result_t *out);

/* The in-process table: a check at `now_us` (any monotonic microsecond clock). Keys are
 * hashed, so an entry has a fixed size; the table holds at most ratelimit_local_capacity()
 * entries, evicting expired ones first, then the one nearest to full. */
void ratelimit_local_check(const char *name, const char *key, size_t keylen, const ratelimit_limit_t *lim,
                           int64_t cost, int peek, int64_t now_us, ratelimit_result_t *out);
void ratelimit_local_reset(const char *name, const char *key, size_t keylen);
/* Entries now held, and the cap (RATE_LIMIT_LOCAL_MAX_KEYS, default 100000). */
size_t ratelimit_local_size(void);
size_t ratelimit_local_capacity(void);
/* Empty the table and set its cap (tests; 0 = the default from the environment). */
void ratelimit_local_clear(size_t capacity);
/* Free the table (at exit). */
void ratelimit_local_shutdown(void);

/* ---- checks (core/ratelimit.c) ----------------------------------------------------------- */

/* A thread's connections to Redis for limits (a hiredis handle is one thread's). */
typedef struct ratelimit_conn ratelimit_conn_t;
void ratelimit_conn_free(ratelimit_conn_t *rc);

/* Where a check goes: the thread's connections (*conn, made on first use), its loop (NULL:
 * none, checks block) and REDIS_URL (NULL: the in-process table only). */
typedef struct ratelimit_ctx {
    ratelimit_conn_t **conn;
    struct loop *loop;
    const char *redis_url;
} ratelimit_ctx_t;

/* Check `cost` requests of key under name at lim: Redis (one EVALSHA, server time) when
 * REDIS_URL is set and answers, else the in-process table. Never fails; blocks on Redis. */
void ratelimit_check(const ratelimit_ctx_t *cx, const char *name, const char *key, size_t keylen,
                     const ratelimit_limit_t *lim, int64_t cost, int peek, ratelimit_result_t *out);
/* The same check on cx->loop, without waiting on Redis: 0 when answered now (out filled: no
 * Redis, Redis in its back-off, or the in-process table), or 1 when the answer comes later as
 * done(arg, result) from the loop (*wait is then the handle for ratelimit_wait_cancel). A
 * Redis failure or a reply past RATE_LIMIT_TIMEOUT_MS is answered by the in-process table. */
typedef struct ratelimit_wait ratelimit_wait_t;
typedef void (*ratelimit_done_cb)(void *arg, const ratelimit_result_t *res);
int ratelimit_check_async(const ratelimit_ctx_t *cx, const char *name, const char *key, size_t keylen,
                          const ratelimit_limit_t *lim, int64_t cost, int peek, ratelimit_result_t *out,
                          ratelimit_done_cb done, void *arg, ratelimit_wait_t **wait);
/* The thread's non-blocking Redis connection on cx->loop (made on first use), shared by
 * everything the host checks in Redis on that thread (limits, token revocations); NULL
 * without a loop, without REDIS_URL, or out of memory. */
struct redis_async *ratelimit_redis_async(const ratelimit_ctx_t *cx);
/* Forget a pending check: done is never called. */
void ratelimit_wait_cancel(ratelimit_wait_t *wait);

/* Forget key's bucket (full again), here and in Redis — on cx->loop without waiting for the
 * DEL (it goes out ahead of the thread's next check), elsewhere blocking. */
void ratelimit_reset(const ratelimit_ctx_t *cx, const char *name, const char *key, size_t keylen);

/* Count one rejection in rate_limit_rejections_total{name}. */
void ratelimit_count_rejection(const char *name);

/* Seconds for the headers: ceil, and at least 1 for Retry-After. */
int64_t ratelimit_seconds(int64_t us);

#endif
