/* ratelimit: GCRA rate limits shared by every replica through Redis, with an in-process
 * fallback — the C API used by the host (route `rate_limit`, the gateway's global limit) and
 * by the `ratelimit` Lua module. */
#ifndef MERCATO_BINDINGS_RATELIMIT_H
#define MERCATO_BINDINGS_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>

struct worker;
struct request;
struct route_info;

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

/* ---- limits and the GCRA arithmetic (bindings/ratelimit_local.c) ------------------------- */

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

/* ---- checks (bindings/ratelimit.c) ------------------------------------------------------- */

/* Check `cost` requests of key under name at lim: Redis (one EVALSHA, server time) when
 * REDIS_URL is set and answers, else the in-process table. Never fails. */
void ratelimit_check(struct worker *w, const char *name, const char *key, size_t keylen, const ratelimit_limit_t *lim,
                     int64_t cost, int peek, ratelimit_result_t *out);
/* The same check from an HTTP thread, without waiting on Redis: 0 when answered now (out
 * filled: no Redis, Redis in its back-off, or the in-process table), or 1 when the answer comes
 * later as done(arg, result) from the loop (*wait is then the handle for ratelimit_wait_cancel).
 * A Redis failure or a reply past RATE_LIMIT_TIMEOUT_MS is answered by the in-process table. */
typedef struct ratelimit_wait ratelimit_wait_t;
typedef void (*ratelimit_done_cb)(void *arg, const ratelimit_result_t *res);
int ratelimit_check_async(struct worker *w, const char *name, const char *key, size_t keylen,
                          const ratelimit_limit_t *lim, int64_t cost, int peek, ratelimit_result_t *out,
                          ratelimit_done_cb done, void *arg, ratelimit_wait_t **wait);
/* Forget a pending check: done is never called. */
void ratelimit_wait_cancel(ratelimit_wait_t *wait);

void ratelimit_reset(struct worker *w, const char *name, const char *key, size_t keylen);

/* Count one rejection in rate_limit_rejections_total{name}. */
void ratelimit_count_rejection(const char *name);

/* ---- HTTP (bindings/ratelimit_http.c) --------------------------------------------------- */

/* The client address of r: the socket peer, or — when the peer is a trusted proxy
 * (TRUSTED_PROXIES, default 127.0.0.0/8 and ::1) — the right-most untrusted address of
 * X-Forwarded-For. Writes "" when unknown. out needs 64 bytes. */
void ratelimit_client_ip(struct request *r, char *out, size_t outlen);

/* Is the textual address in TRUSTED_PROXIES? (-1 when it is not an address.) */
int ratelimit_trusted(const char *addr);
/* Re-read TRUSTED_PROXIES (tests). 0, or -1 with err naming a bad entry. */
int ratelimit_trusted_load(const char *list, char *err, size_t errlen);

/* Seconds for the headers: ceil, and at least 1 for Retry-After. */
int64_t ratelimit_seconds(int64_t us);

/* The route's limit, checked for r on the loop (ratelimit_check_async); key IP at phase 0
 * (before auth), key SUB at phase 1 (after auth: the token's subject, or the client IP for a
 * caller without one). Returns 0 and fills *res when r may go on (res->limit 0 when nothing
 * was checked), -1 when a 429 has been queued, or 1 when the answer comes later as
 * done(arg, res) (*wait: the handle to cancel it; a refusal is then the caller's to send with
 * ratelimit_refuse). */
int ratelimit_route(struct request *r, const ratelimit_rule_t *rule, int phase, struct ratelimit_result *res,
                    ratelimit_done_cb done, void *arg, ratelimit_wait_t **wait);

/* Refuse r: its claims let go (no handler will run), a 429 queued (ratelimit_reject). */
void ratelimit_refuse(struct request *r, const char *name, const ratelimit_result_t *res);

/* Queue a 429 problem for res with Retry-After and RateLimit-* headers; counts it. */
void ratelimit_reject(struct request *r, const char *name, const ratelimit_result_t *res);

/* Add RateLimit-Limit/Remaining/Reset for res to a response being built. */
struct MHD_Response;
void ratelimit_add_headers(struct MHD_Response *resp, const ratelimit_result_t *res);

/* The gateway's global per-client limit (RATE_LIMIT_GLOBAL), as ratelimit_route: 0 go on, -1
 * 429 queued, 1 answer later through done (a refusal then sent by the caller, name "global"). */
int ratelimit_gateway(struct request *r, ratelimit_result_t *res, ratelimit_done_cb done, void *arg,
                      ratelimit_wait_t **wait);

/* Check RATE_LIMIT_GLOBAL and TRUSTED_PROXIES at start-up: 0, or -1 after logging why. */
int ratelimit_config_check(void);

#endif
