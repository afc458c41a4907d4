/* ratelimit: GCRA limits held in Redis (one EVALSHA on server time, so every replica shares
 * one bucket per key), falling back to the in-process table when Redis is down or unset — a
 * failure never reaches the caller: the answer then comes from this process alone (logged once
 * per switch, counted in rate_limit_fallbacks_total). Checks block (runners, the CLI) or run on
 * the thread's loop (ratelimit_check_async). */
#include <errno.h>
#include <hiredis/hiredis.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "metrics.h"
#include "ratelimit.h"
#include "redis.h"

#define KEY_MAX 64                    /* longer keys are stored as their SHA-1 */
#define RETRY_REDIS_US 1000000ll      /* after a failure, answer locally this long */
#define DEFAULT_TIMEOUT_MS 250

/* KEYS[1] the bucket; ARGV: emission interval T (µs), tolerance tau = T * burst, cost, peek.
 * Returns { allowed, remaining, retry_after_us, reset_after_us } — ratelimit_gcra in Lua. */
static const char script[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local T, tau, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])\n"
    "local tat = tonumber(redis.call('GET', KEYS[1])) or now\n"
    "if tat < now then tat = now end\n"
    "local nxt = tat + T * cost\n"
    "if now < nxt - tau then\n"
    "  return { 0, math.max(0, math.floor((tau - (tat - now)) / T)), nxt - tau - now, tat - now }\n"
    "end\n"
    "if ARGV[4] ~= '1' then\n"
    "  redis.call('SET', KEYS[1], string.format('%.0f', nxt), 'PX', math.max(1, math.ceil((nxt - now) / 1000)))\n"
    "end\n"
    "return { 1, math.floor((tau - (nxt - now)) / T), 0, nxt - now }\n";

static char g_sha[41];
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static int g_timeout_ms = DEFAULT_TIMEOUT_MS;
static metric_family_t *g_rejections;
static metric_cell_t *g_fallbacks;
static _Atomic int64_t g_redis_retry_at;   /* monotonic µs: before it, skip Redis */
static _Atomic int g_local_mode;           /* 1 while answering locally after a failure */
static _Atomic int g_unset_logged;

/* A thread's own connections (hiredis is one thread per handle). */
struct ratelimit_conn {
    redisContext *c;         /* the blocking path: runners, the CLI */
    redis_async_t *as;       /* the loop's path: checks on HTTP threads */
};

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void sha1_hex(const void *data, size_t len, char out[41])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (!EVP_Digest(data, len, md, &n, EVP_sha1(), NULL) || n != 20) memset(md, 0, 20);
    for (size_t i = 0; i < 20; i++) snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static void setup(void)
{
    sha1_hex(script, sizeof script - 1, g_sha);
    const char *v = getenv("RATE_LIMIT_TIMEOUT_MS");
    char *end = NULL;
    long ms = v && *v ? strtol(v, &end, 10) : -1;
    if (end && *end) ms = -1;
    if (ms > 0 && ms <= 60000) g_timeout_ms = (int)ms;
    static const char *const labels[] = { "name" };
    char err[256];
    g_rejections = metrics_family("rate_limit_rejections_total", "Requests the host refused with 429, by limit name.",
                                  METRIC_COUNTER, 1, labels, 0, NULL, err, sizeof err);
    g_fallbacks = metrics_counter0("rate_limit_fallbacks_total",
                                   "Switches from Redis to the in-process rate-limit table (Redis down).");
}

void ratelimit_count_rejection(const char *name)
{
    pthread_once(&g_once, setup);
    if (!g_rejections) return;
    const char *labels[] = { name };
    metrics_cell_add(metrics_cell(g_rejections, labels), 1);
}

/* ---- Redis ------------------------------------------------------------------------------ */

static void conn_drop(ratelimit_conn_t *rc)
{
    if (rc->c) redisFree(rc->c);
    rc->c = NULL;
}

static ratelimit_conn_t *conn_of(const ratelimit_ctx_t *cx)
{
    if (!*cx->conn) *cx->conn = calloc(1, sizeof(ratelimit_conn_t));
    return *cx->conn;
}

void ratelimit_conn_free(ratelimit_conn_t *rc)
{
    if (!rc) return;
    conn_drop(rc);
    redis_async_free(rc->as);
    free(rc);
}

/* The Redis key of (name, key): "ratelimit:<name>:<key>", a long key replaced by its SHA-1. */
static size_t redis_key(char *out, size_t outlen, const char *name, const char *key, size_t keylen)
{
    char h[41];
    if (keylen > KEY_MAX) { sha1_hex(key, keylen, h); key = h; keylen = 40; }
    int n = snprintf(out, outlen, "ratelimit:%s:", name);
    if (n < 0 || (size_t)n + keylen >= outlen) return 0;
    memcpy(out + n, key, keylen);
    return (size_t)n + keylen;
}

/* One command on this thread's connection; a stale idle connection is reopened first. */
static redisReply *run(const ratelimit_ctx_t *cx, int argc, const char **argv, const size_t *len, char *err, size_t errlen)
{
    ratelimit_conn_t *rc = conn_of(cx);
    if (!rc) { snprintf(err, errlen, "out of memory"); return NULL; }
    if (rc->c && redis_stale(rc->c)) conn_drop(rc);   /* Redis never writes to an idle client */
    const char *code;
    if (!rc->c && !(rc->c = redis_connect(cx->redis_url, g_timeout_ms, err, errlen, &code))) return NULL;
    redisReply *r = redisCommandArgv(rc->c, argc, argv, len);
    if (!r) {
        snprintf(err, errlen, "redis: %s", rc->c->errstr[0] ? rc->c->errstr : strerror(errno));
        conn_drop(rc);
    }
    return r;
}

/* The script's EVALSHA for one check; argv and len point into c. */
typedef struct {
    char t[24], tau[24], cost[24];
    const char *argv[8];
    size_t len[8];
} gcra_cmd_t;

static void gcra_cmd(gcra_cmd_t *c, const char *rkey, size_t rklen, const ratelimit_limit_t *lim, int64_t cost, int peek)
{
    int64_t t = lim->period_us / lim->count;
    if (t < 1) t = 1;
    const char *argv[8] = { "EVALSHA", g_sha, "1", rkey, c->t, c->tau, c->cost, peek ? "1" : "0" };
    size_t len[8] = { 7, 40, 1, rklen, 0, 0, 0, 1 };
    len[4] = (size_t)snprintf(c->t, sizeof c->t, "%lld", (long long)t);
    len[5] = (size_t)snprintf(c->tau, sizeof c->tau, "%lld", (long long)t * lim->burst);
    len[6] = (size_t)snprintf(c->cost, sizeof c->cost, "%lld", (long long)cost);
    memcpy(c->argv, argv, sizeof argv);
    memcpy(c->len, len, sizeof len);
}

/* The GCRA check in Redis. 0, or -1 with err (the caller falls back). */
static int redis_check(const ratelimit_ctx_t *cx, const char *rkey, size_t rklen, const ratelimit_limit_t *lim, int64_t cost,
                       int peek, ratelimit_result_t *out, char *err, size_t errlen)
{
    gcra_cmd_t c;
    gcra_cmd(&c, rkey, rklen, lim, cost, peek);
    redisReply *r = run(cx, 8, c.argv, c.len, err, errlen);
    if (r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0) {
        freeReplyObject(r);
        c.argv[0] = "EVAL"; c.len[0] = 4;
        c.argv[1] = script; c.len[1] = sizeof script - 1;
        r = run(cx, 8, c.argv, c.len, err, errlen);
    }
    if (!r) return -1;
    int ok = r->type == REDIS_REPLY_ARRAY && r->elements == 4;
    for (size_t i = 0; ok && i < 4; i++) ok = r->element[i]->type == REDIS_REPLY_INTEGER;
    if (ok) {
        out->allowed = r->element[0]->integer == 1;
        out->limit = lim->burst;
        out->remaining = r->element[1]->integer;
        out->retry_after_us = r->element[2]->integer;
        out->reset_after_us = r->element[3]->integer;
        out->local = 0;
    } else {
        snprintf(err, errlen, "redis: unexpected reply to the rate-limit script%s%s", r->type == REDIS_REPLY_ERROR ? ": " : "",
                 r->type == REDIS_REPLY_ERROR ? r->str : "");
    }
    freeReplyObject(r);
    return ok ? 0 : -1;
}

/* Should this check try Redis? Logs the first time REDIS_URL turns out to be unset. */
static int use_redis(const ratelimit_ctx_t *cx)
{
    if (!cx->redis_url) {
        if (!atomic_exchange(&g_unset_logged, 1))
            log_info("rate limits: REDIS_URL is unset, limits are held in this process only");
        return 0;
    }
    return now_us() >= atomic_load_explicit(&g_redis_retry_at, memory_order_relaxed);
}

static void redis_failed(const char *err)
{
    atomic_store(&g_redis_retry_at, now_us() + RETRY_REDIS_US);
    if (!atomic_exchange(&g_local_mode, 1)) {
        log_warn("rate limits: Redis is unavailable (%s); limits are held in this process until it is back", err);
        metrics_cell_add(g_fallbacks, 1);
    }
}

static void redis_ok(void)
{
    if (atomic_load_explicit(&g_local_mode, memory_order_relaxed) && atomic_exchange(&g_local_mode, 0))
        log_info("rate limits: Redis is back; limits are shared again");
}

void ratelimit_check(const ratelimit_ctx_t *cx, const char *name, const char *key, size_t keylen,
                     const ratelimit_limit_t *lim, int64_t cost, int peek, ratelimit_result_t *out)
{
    pthread_once(&g_once, setup);
    memset(out, 0, sizeof *out);
    if (lim->count <= 0) { out->allowed = 1; return; }
    if (use_redis(cx)) {
        char rkey[RATELIMIT_NAME_MAX + KEY_MAX + 16], err[512];
        size_t rklen = redis_key(rkey, sizeof rkey, name, key, keylen);
        if (rklen && redis_check(cx, rkey, rklen, lim, cost, peek, out, err, sizeof err) == 0) { redis_ok(); return; }
        redis_failed(err);
    }
    ratelimit_local_check(name, key, keylen, lim, cost, peek, now_us(), out);
}

/* The thread's connection on its loop (made on first use), or NULL. */
static redis_async_t *async_of(const ratelimit_ctx_t *cx)
{
    if (!cx->loop || !cx->redis_url) return NULL;
    ratelimit_conn_t *rc = conn_of(cx);
    if (rc && !rc->as) rc->as = redis_async_new(cx->loop, cx->redis_url);
    return rc ? rc->as : NULL;
}

redis_async_t *ratelimit_redis_async(const ratelimit_ctx_t *cx)
{
    return async_of(cx);
}

/* ---- the same check on the loop ----------------------------------------------------------- */

struct ratelimit_wait {
    redis_op_t *op;
    ratelimit_done_cb done;
    void *arg;
    ratelimit_limit_t lim;
    int64_t cost;
    int peek;
    size_t keylen;
    char name[RATELIMIT_NAME_MAX];
    char key[];              /* for the in-process answer when Redis fails */
};

/* Read the script's reply into out: 0, or -1 with err. */
static int take_result(const redisReply *r, const ratelimit_limit_t *lim, ratelimit_result_t *out, char *err, size_t errlen)
{
    int ok = r->type == REDIS_REPLY_ARRAY && r->elements == 4;
    for (size_t i = 0; ok && i < 4; i++) ok = r->element[i]->type == REDIS_REPLY_INTEGER;
    if (!ok) {
        snprintf(err, errlen, "redis: unexpected reply to the rate-limit script%s%s", r->type == REDIS_REPLY_ERROR ? ": " : "",
                 r->type == REDIS_REPLY_ERROR ? r->str : "");
        return -1;
    }
    memset(out, 0, sizeof *out);
    out->allowed = r->element[0]->integer == 1;
    out->limit = lim->burst;
    out->remaining = r->element[1]->integer;
    out->retry_after_us = r->element[2]->integer;
    out->reset_after_us = r->element[3]->integer;
    return 0;
}

static void on_async_reply(void *arg, int i, const redisReply *reply, const char *err, const char *code)
{
    ratelimit_wait_t *wt = arg;
    ratelimit_result_t res;
    char why[512];
    (void)code; (void)i;
    if (reply && take_result(reply, &wt->lim, &res, why, sizeof why) == 0) {
        redis_ok();
    } else {
        redis_failed(reply ? why : err);
        memset(&res, 0, sizeof res);
        ratelimit_local_check(wt->name, wt->key, wt->keylen, &wt->lim, wt->cost, wt->peek, now_us(), &res);
    }
    ratelimit_done_cb done = wt->done;
    void *darg = wt->arg;
    free(wt);
    done(darg, &res);
}

int ratelimit_check_async(const ratelimit_ctx_t *cx, const char *name, const char *key, size_t keylen,
                          const ratelimit_limit_t *lim, int64_t cost, int peek, ratelimit_result_t *out,
                          ratelimit_done_cb done, void *arg, ratelimit_wait_t **wait)
{
    pthread_once(&g_once, setup);
    memset(out, 0, sizeof *out);
    *wait = NULL;
    if (lim->count <= 0) { out->allowed = 1; return 0; }
    if (cx->loop && use_redis(cx)) {
        char rkey[RATELIMIT_NAME_MAX + KEY_MAX + 16], err[512];
        size_t rklen = redis_key(rkey, sizeof rkey, name, key, keylen);
        redis_async_t *as = async_of(cx);
        ratelimit_wait_t *wt = rklen && as ? malloc(sizeof *wt + keylen + 1) : NULL;
        if (wt) {
            gcra_cmd_t c;
            gcra_cmd(&c, rkey, rklen, lim, cost, peek);
            redis_cmd_t cmd = { 8, c.argv, c.len };
            wt->done = done;
            wt->arg = arg;
            wt->lim = *lim;
            wt->cost = cost;
            wt->peek = peek;
            snprintf(wt->name, sizeof wt->name, "%s", name);
            memcpy(wt->key, key, keylen);
            wt->key[keylen] = 0;
            wt->keylen = keylen;
            wt->op = redis_async_send(as, g_timeout_ms, 1, &cmd, script, sizeof script - 1, on_async_reply, wt,
                                      err, sizeof err);
            if (wt->op) { *wait = wt; return 1; }
            free(wt);
            redis_failed(err);
        }
    }
    ratelimit_local_check(name, key, keylen, lim, cost, peek, now_us(), out);
    return 0;
}

void ratelimit_wait_cancel(ratelimit_wait_t *wt)
{
    if (!wt) return;
    redis_async_forget(wt->op);
    free(wt);
}

static void on_reset_reply(void *arg, int i, const redisReply *reply, const char *err, const char *code)
{
    (void)arg; (void)i; (void)code;
    if (!reply) redis_failed(err);
}

void ratelimit_reset(const ratelimit_ctx_t *cx, const char *name, const char *key, size_t keylen)
{
    pthread_once(&g_once, setup);
    ratelimit_local_reset(name, key, keylen);
    if (!use_redis(cx)) return;
    char rkey[RATELIMIT_NAME_MAX + KEY_MAX + 16], err[512];
    size_t rklen = redis_key(rkey, sizeof rkey, name, key, keylen);
    if (!rklen) return;
    const char *argv[] = { "DEL", rkey };
    size_t len[] = { 3, rklen };
    redis_async_t *as = cx->loop ? async_of(cx) : NULL;
    if (as) {
        /* On a loop nothing waits for the reply: the DEL goes out ahead of this thread's next
         * check on the same connection, and a failure switches to the in-process table. */
        redis_cmd_t cmd = { 2, argv, len };
        if (!redis_async_send(as, g_timeout_ms, 1, &cmd, NULL, 0, on_reset_reply, NULL, err, sizeof err)) redis_failed(err);
        return;
    }
    redisReply *r = run(cx, 2, argv, len, err, sizeof err);
    if (r) freeReplyObject(r);
    else redis_failed(err);
}

int64_t ratelimit_seconds(int64_t us)
{
    if (us <= 0) return 0;
    return (us + 999999) / 1000000;
}

