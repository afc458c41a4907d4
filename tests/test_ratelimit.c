/* test_ratelimit: limit parsing, the GCRA arithmetic on the in-process table with a fake clock
 * (exact allow/deny sequences), the table's cap and eviction, trusted proxies, the Lua API's
 * misuse (raises) and, with REDIS_URL set, the Redis path and its fallback. */
#include <lauxlib.h>
#include <lualib.h>
#include <stdlib.h>
#include <time.h>

#include "../core/ratelimit.h"
#include "ratelimit_http.h"
#include "bindings.h"
#include "test.h"
#include "test_lua.h"

#include "worker.h"

extern const binding_t binding_ratelimit;

#define SEC 1000000ll

static ratelimit_limit_t lim(const char *s)
{
    ratelimit_limit_t l;
    char err[200];
    if (ratelimit_parse(s, &l, err, sizeof err) != 0) printf("# parse %s: %s\n", s, err);
    return l;
}

TEST(parse_accepts_units_and_burst)
{
    ratelimit_limit_t l;
    char err[200];
    CHECK_INT(ratelimit_parse("10/min", &l, err, sizeof err), 0);
    CHECK_INT(l.count, 10); CHECK_INT(l.period_us, 60 * SEC); CHECK_INT(l.burst, 10);
    CHECK_INT(ratelimit_parse("5/sec", &l, err, sizeof err), 0);
    CHECK_INT(l.period_us, SEC);
    CHECK_INT(ratelimit_parse(" 100 / hour burst 7 ", &l, err, sizeof err), 0);
    CHECK_INT(l.count, 100); CHECK_INT(l.period_us, 3600 * SEC); CHECK_INT(l.burst, 7);
    CHECK_INT(ratelimit_parse("2/s", &l, err, sizeof err), 0);
    CHECK_INT(ratelimit_parse("3/m", &l, err, sizeof err), 0);
    CHECK_INT(ratelimit_parse("1/day", &l, err, sizeof err), 0);
    CHECK_INT(l.period_us, 86400 * SEC);
    CHECK_INT(ratelimit_parse("1/day burst 1000000", &l, err, sizeof err), 0);   /* tau = 8.64e16 us fits */
    CHECK_INT(ratelimit_parse("off", &l, err, sizeof err), 0);
    CHECK_INT(l.count, 0);
    CHECK_INT(ratelimit_parse("0", &l, err, sizeof err), 0);
    CHECK_INT(l.count, 0);
}

TEST(parse_rejects_malformed)
{
    const char *bad[] = { NULL, "", "10", "10/", "/min", "0/min", "-1/min", "10/fortnight", "10/min burst",
                          "10/min burst 0", "10/min extra", "ten/min", "99999999999/min", "10 per min",
                          "1/day burst 1000000000" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ratelimit_limit_t l;
        char err[200] = "";
        int rc = ratelimit_parse(bad[i], &l, err, sizeof err);
        if (rc != -1) printf("#   accepted '%s'\n", bad[i] ? bad[i] : "(null)");
        CHECK(rc == -1);
        CHECK(err[0] != 0);
    }
}

/* 3/sec, burst 3: three at once, then one per 333333 µs. */
TEST(gcra_exact_sequence)
{
    ratelimit_local_clear(16);
    ratelimit_limit_t l = lim("3/sec");
    ratelimit_result_t r;
    int64_t t0 = 1000 * SEC;
    const char *k = "1.2.3.4";
    for (int i = 0; i < 3; i++) {
        ratelimit_local_check("t", k, 7, &l, 1, 0, t0, &r);
        CHECK(r.allowed);
        CHECK_INT(r.remaining, 2 - i);
        CHECK_INT(r.limit, 3);
        CHECK_INT(r.retry_after_us, 0);
        CHECK_INT(r.reset_after_us, 333333 * (i + 1));
        CHECK(r.local);
    }
    ratelimit_local_check("t", k, 7, &l, 1, 0, t0, &r);
    CHECK(!r.allowed);
    CHECK_INT(r.remaining, 0);
    CHECK_INT(r.retry_after_us, 333333);
    CHECK_INT(r.reset_after_us, 999999);
    /* a denial consumes nothing: one emission interval later exactly one more is allowed */
    ratelimit_local_check("t", k, 7, &l, 1, 0, t0 + 333332, &r);
    CHECK(!r.allowed);
    CHECK_INT(r.retry_after_us, 1);
    ratelimit_local_check("t", k, 7, &l, 1, 0, t0 + 333333, &r);
    CHECK(r.allowed);
    CHECK_INT(r.remaining, 0);
    ratelimit_local_check("t", k, 7, &l, 1, 0, t0 + 333333, &r);
    CHECK(!r.allowed);
    /* after a full period the bucket is full again */
    for (int i = 0; i < 3; i++) {
        ratelimit_local_check("t", k, 7, &l, 1, 0, t0 + 2 * SEC, &r);
        CHECK(r.allowed);
    }
    ratelimit_local_check("t", k, 7, &l, 1, 0, t0 + 2 * SEC, &r);
    CHECK(!r.allowed);
    /* another key, another name: separate buckets */
    ratelimit_local_check("t", "5.6.7.8", 7, &l, 1, 0, t0, &r);
    CHECK(r.allowed);
    ratelimit_local_check("u", k, 7, &l, 1, 0, t0, &r);
    CHECK(r.allowed);
}

TEST(gcra_burst_cost_and_peek)
{
    ratelimit_local_clear(16);
    ratelimit_limit_t l = lim("60/min burst 5");   /* one per second, five at once */
    ratelimit_result_t r;
    int64_t t0 = 50 * SEC;
    ratelimit_local_check("b", "k", 1, &l, 1, 1, t0, &r);   /* peek: allowed, nothing stored */
    CHECK(r.allowed);
    CHECK_INT(r.remaining, 4);
    CHECK_INT(ratelimit_local_size(), 0);
    ratelimit_local_check("b", "k", 1, &l, 4, 0, t0, &r);
    CHECK(r.allowed);
    CHECK_INT(r.remaining, 1);
    ratelimit_local_check("b", "k", 1, &l, 2, 0, t0, &r);   /* cost 2 > 1 left */
    CHECK(!r.allowed);
    CHECK_INT(r.remaining, 1);
    CHECK_INT(r.retry_after_us, SEC);
    ratelimit_local_check("b", "k", 1, &l, 1, 1, t0, &r);
    CHECK(r.allowed);
    CHECK_INT(r.remaining, 0);
    ratelimit_local_check("b", "k", 1, &l, 1, 0, t0, &r);
    CHECK(r.allowed);
    ratelimit_local_check("b", "k", 1, &l, 1, 1, t0, &r);
    CHECK(!r.allowed);
    CHECK_INT(r.retry_after_us, SEC);
    ratelimit_local_reset("b", "k", 1);
    ratelimit_local_check("b", "k", 1, &l, 5, 0, t0, &r);
    CHECK(r.allowed);
}

TEST(table_is_capped_and_evicts_expired_first)
{
    ratelimit_local_clear(4);
    CHECK_INT(ratelimit_local_capacity(), 4);
    ratelimit_limit_t l = lim("1/min");
    ratelimit_result_t r;
    char key[32];
    int64_t t0 = 10 * SEC;
    /* a, b, c fill at t0, d at t0 + 30 s: full */
    for (int i = 0; i < 4; i++) {
        snprintf(key, sizeof key, "key-%d", i);
        ratelimit_local_check("c", key, strlen(key), &l, 1, 0, t0 + (i == 3 ? 30 * SEC : 0), &r);
        CHECK(r.allowed);
    }
    CHECK_INT(ratelimit_local_size(), 4);
    /* at t0 + 61 s the first three have expired: a new key drops them, not key-3 */
    ratelimit_local_check("c", "new", 3, &l, 1, 0, t0 + 61 * SEC, &r);
    CHECK(r.allowed);
    CHECK_INT(ratelimit_local_size(), 2);
    ratelimit_local_check("c", "key-3", 5, &l, 1, 0, t0 + 61 * SEC, &r);
    CHECK(!r.allowed);   /* key-3 kept its state */
    /* with nothing expired, the entry nearest to full goes (key-3, older than "new") */
    ratelimit_local_check("c", "x1", 2, &l, 1, 0, t0 + 62 * SEC, &r);
    ratelimit_local_check("c", "x2", 2, &l, 1, 0, t0 + 62 * SEC, &r);
    CHECK_INT(ratelimit_local_size(), 4);
    ratelimit_local_check("c", "x3", 2, &l, 1, 0, t0 + 62 * SEC, &r);
    CHECK(r.allowed);
    CHECK_INT(ratelimit_local_size(), 4);
    ratelimit_local_check("c", "key-3", 5, &l, 1, 1, t0 + 62 * SEC, &r);
    CHECK(r.allowed);   /* evicted: a fresh bucket */
    ratelimit_local_check("c", "new", 3, &l, 1, 1, t0 + 62 * SEC, &r);
    CHECK(!r.allowed);
    /* a million distinct keys never grow it past the cap */
    ratelimit_local_clear(1000);
    for (int i = 0; i < 100000; i++) {
        snprintf(key, sizeof key, "k%d", i);
        ratelimit_local_check("c", key, strlen(key), &l, 1, 0, t0, &r);
    }
    CHECK_INT(ratelimit_local_size(), 1000);
    ratelimit_local_clear(0);
}

TEST(trusted_proxies)
{
    char err[256];
    CHECK_INT(ratelimit_trusted_load(NULL, err, sizeof err), 0);   /* default: loopback */
    CHECK_INT(ratelimit_trusted("127.0.0.1"), 1);
    CHECK_INT(ratelimit_trusted("127.9.9.9"), 1);
    CHECK_INT(ratelimit_trusted("::1"), 1);
    CHECK_INT(ratelimit_trusted("::ffff:127.0.0.1"), 1);
    CHECK_INT(ratelimit_trusted("10.0.0.1"), 0);
    CHECK_INT(ratelimit_trusted("nope"), -1);
    CHECK_INT(ratelimit_trusted_load("10.0.0.0/8, fd00::/8 192.168.1.7", err, sizeof err), 0);
    CHECK_INT(ratelimit_trusted("10.200.1.1"), 1);
    CHECK_INT(ratelimit_trusted("11.0.0.1"), 0);
    CHECK_INT(ratelimit_trusted("fd12::1"), 1);
    CHECK_INT(ratelimit_trusted("192.168.1.7"), 1);
    CHECK_INT(ratelimit_trusted("192.168.1.8"), 0);
    CHECK_INT(ratelimit_trusted("127.0.0.1"), 0);
    CHECK_INT(ratelimit_trusted_load("none", err, sizeof err), 0);
    CHECK_INT(ratelimit_trusted("127.0.0.1"), 0);
    CHECK_INT(ratelimit_trusted_load("10.0.0.0/33", err, sizeof err), -1);
    CHECK(strstr(err, "10.0.0.0/33") != NULL);
    CHECK_INT(ratelimit_trusted_load("bogus", err, sizeof err), -1);
    CHECK_INT(ratelimit_trusted_load(NULL, err, sizeof err), 0);
}

TEST(seconds_round_up)
{
    CHECK_INT(ratelimit_seconds(0), 0);
    CHECK_INT(ratelimit_seconds(1), 1);
    CHECK_INT(ratelimit_seconds(SEC), 1);
    CHECK_INT(ratelimit_seconds(SEC + 1), 2);
}

/* ---- through a Lua state ---------------------------------------------------------------- */


TEST(lua_misuse_raises)
{
    worker_t w = { 0 };
    lua_State *L = test_state(&w, "ratelimit");
    const char *bad[] = {
        "ratelimit.check()", "ratelimit.check('bad name', 'k', '1/min')", "ratelimit.check('n', nil, '1/min')",
        "ratelimit.check('n', '', '1/min')", "ratelimit.check('n', 'k', 'often')", "ratelimit.check('n', 'k', 5)",
        "ratelimit.check('n', 'k', '1/min', { cost = -1 })", "ratelimit.check('n', 'k', '1/min', { cost = 1.5 })",
        "ratelimit.check('n', 'k', '1/min', 3)", "ratelimit.reset('n')", "ratelimit.headers()", "ratelimit.parse('x')",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = test_run(L, bad[i]);
        if (rc == 0) printf("#   did not raise: %s\n", bad[i]);
        CHECK(rc == -1);
    }
    lua_close(L);
    L = test_state(NULL, "ratelimit");
    CHECK_INT(test_run(L, "return ratelimit.check('n', 'k', '1/min')"), -1);
    CHECK(strstr(lua_tostring(L, -1), "no worker") != NULL);
    lua_close(L);
}

TEST(lua_check_without_redis_is_local)
{
    config_t cfg = { 0 };
    worker_t w = { .cfg = &cfg };
    const char *saved = getenv("REDIS_URL");
    char *copy = saved ? strdup(saved) : NULL;
    unsetenv("REDIS_URL");
    ratelimit_local_clear(16);
    lua_State *L = test_state(&w, "ratelimit");
    CHECK_INT(test_run(L, "local t = {} for i = 1, 4 do local ok, info = ratelimit.check('lua', 'u1', '3/hour')\n"
                     "t[i] = (ok and 'y' or 'n') .. info.remaining .. info.backend:sub(1, 1) .. info.retry_after end\n"
                     "return table.concat(t, ' ')"), 0);
    CHECK_STR(lua_tostring(L, -1), "y2l0 y1l0 y0l0 n0l1200");
    CHECK_INT(test_run(L, "local ok, info = ratelimit.check('lua', 'u1', '3/hour') local h = ratelimit.headers(info)\n"
                     "return h['Retry-After'] .. ' ' .. h['RateLimit-Limit'] .. ' ' .. h['RateLimit-Remaining'] .. ' ' .. h['RateLimit-Reset']"), 0);
    CHECK_STR(lua_tostring(L, -1), "1200 3 0 3600");
    CHECK_INT(test_run(L, "ratelimit.reset('lua', 'u1') return (ratelimit.check('lua', 'u1', '3/hour'))"), 0);
    CHECK(lua_toboolean(L, -1));
    CHECK_INT(test_run(L, "local p = ratelimit.parse('10/min burst 2') return p.count .. ' ' .. p.period .. ' ' .. p.burst"), 0);
    CHECK_STR(lua_tostring(L, -1), "10 60 2");
    lua_close(L);
    bindings_worker_free(&w);
    if (copy) { setenv("REDIS_URL", copy, 1); free(copy); }
}

/* With REDIS_URL: the Redis path (backend "redis"), then a dead port falls back and limits. */
TEST(redis_check_and_fallback)
{
    const char *url = getenv("REDIS_URL");
    if (!url) { printf("# skipped: REDIS_URL is unset\n"); return; }
    config_t cfg = { .redis_url = url };
    worker_t w = { .cfg = &cfg };
    lua_State *L = test_state(&w, "ratelimit");
    char chunk[600];
    snprintf(chunk, sizeof chunk,
             "local key = 'c-test-%ld-' .. math.random(1e9) local t = {}\n"
             "for i = 1, 4 do local ok, info = ratelimit.check('ctest', key, '3/min')\n"
             "t[i] = (ok and 'y' or 'n') .. info.remaining .. info.backend:sub(1, 1) end\n"
             "local ok, info = ratelimit.check('ctest', key, '3/min', { peek = true })\n"
             "ratelimit.reset('ctest', key)\n"
             "local ok2 = ratelimit.check('ctest', key, '3/min', { peek = true })\n"
             "return table.concat(t, ' '), info.retry_after, ok2", (long)time(NULL));
    CHECK_INT(test_run(L, chunk), 0);
    CHECK_STR(lua_tostring(L, 1), "y2r y1r y0r n0r");
    CHECK_INT(lua_tonumber(L, 2), 20);
    CHECK(lua_toboolean(L, 3));
    lua_close(L);
    bindings_worker_free(&w);
    ratelimit_conn_free(w.ratelimit);   /* the worker's own (worker_free's job in the server) */

    /* Redis at a dead port: every check is answered locally, and still limits. */
    config_t dead = { .redis_url = "redis://127.0.0.1:1/0" };
    worker_t w2 = { .cfg = &dead };
    ratelimit_local_clear(16);
    L = test_state(&w2, "ratelimit");
    CHECK_INT(test_run(L, "local t = {} for i = 1, 3 do local ok, info = ratelimit.check('dead', 'k', '2/min')\n"
                     "t[i] = (ok and 'y' or 'n') .. info.backend:sub(1, 1) end return table.concat(t, ' ')"), 0);
    CHECK_STR(lua_tostring(L, -1), "yl yl nl");
    lua_close(L);
    bindings_worker_free(&w2);
    ratelimit_conn_free(w2.ratelimit);
}

/* Checks per second through the C API: in-process, and against Redis when REDIS_URL is set. */
TEST(throughput)
{
    ratelimit_limit_t l = lim("1000000/sec");
    ratelimit_result_t r;
    struct timespec a, b;
    int n = 200000;
    ratelimit_local_clear(0);
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < n; i++) ratelimit_local_check("bench", "10.0.0.1", 8, &l, 1, 0, (int64_t)i, &r);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double s = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    printf("# in-process: %.0f checks/s (%.0f ns each)\n", n / s, s / n * 1e9);
    const char *url = getenv("REDIS_URL");
    if (!url) return;
    ratelimit_conn_t *conn = NULL;
    ratelimit_ctx_t cx = { &conn, NULL, url };
    n = 20000;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < n; i++) ratelimit_check(&cx, "bench", "10.0.0.1", 8, &l, 1, 0, &r);
    clock_gettime(CLOCK_MONOTONIC, &b);
    CHECK(!r.local);
    s = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    printf("# redis (one connection, sequential): %.0f checks/s (%.1f us each)\n", n / s, s / n * 1e6);
    ratelimit_conn_free(conn);
}

int main(void)
{
    RUN(parse_accepts_units_and_burst);
    RUN(parse_rejects_malformed);
    RUN(gcra_exact_sequence);
    RUN(gcra_burst_cost_and_peek);
    RUN(table_is_capped_and_evicts_expired_first);
    RUN(trusted_proxies);
    RUN(seconds_round_up);
    RUN(lua_misuse_raises);
    RUN(lua_check_without_redis_is_local);
    RUN(throughput);
    RUN(redis_check_and_fallback);   /* last: the dead port makes the process skip Redis for 1 s */
    ratelimit_local_shutdown();
    return test_done();
}
