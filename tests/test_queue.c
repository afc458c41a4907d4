/* test_queue: the queue binding's URL parsing, misuse (raises), failure (nil, err, code,
 * backoff, nothing leaked) and, with AMQP_URL set, a confirmed publish in a real lua_State. */
#include <lauxlib.h>
#include <lualib.h>
#include <stdlib.h>
#include <time.h>

#include "../bindings/queue.h"
#include "bindings.h"
#include "test.h"
#include "test_lua.h"

#include "worker.h"

extern const binding_t binding_queue;


static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

TEST(url_parses_credentials_and_vhost)
{
    queue_url_t u;
    char err[256];
    CHECK_INT(queue_url_parse("amqp://guest:guest@127.0.0.1:45672/", &u, err, sizeof err), 0);
    CHECK_STR(u.host, "127.0.0.1");
    CHECK_INT(u.port, 45672);
    CHECK_STR(u.user, "guest");
    CHECK_STR(u.password, "guest");
    CHECK_STR(u.vhost, "/");
    CHECK_INT(queue_url_parse("amqp://app:p%40ss@mq/orders", &u, err, sizeof err), 0);
    CHECK_STR(u.password, "p@ss");
    CHECK_STR(u.vhost, "orders");
    CHECK_INT(u.port, 5672);
    CHECK_INT(queue_url_parse("amqp://mq/%2f", &u, err, sizeof err), 0);
    CHECK_STR(u.vhost, "/");
    CHECK_STR(u.user, "guest");
}

TEST(url_rejects_malformed)
{
    queue_url_t u;
    char err[256];
    const char *bad[] = { NULL, "", "http://h", "amqp://h:notaport/", "amqps://h/" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        int rc = queue_url_parse(bad[i], &u, err, sizeof err);
        if (rc != -1) printf("#   accepted '%s'\n", bad[i] ? bad[i] : "(null)");
        CHECK_INT(rc, -1);
        CHECK(err[0] != 0);
    }
}

TEST(scratch_state_raises_a_clear_error)
{
    lua_State *L = test_state(NULL, "queue");
    CHECK_INT(test_run(L, "return queue.publish('k', '{}')"), -1);
    CHECK(strstr(lua_tostring(L, -1), "queue.publish: no worker owns this Lua state") != NULL);
    lua_close(L);
}

TEST(misuse_raises_before_connecting)
{
    config_t cfg = { .amqp_url = "amqp://guest:guest@127.0.0.1:1/" };
    worker_t w = { .cfg = &cfg, .kind = "test" };
    lua_State *L = test_state(&w, "queue");
    const char *bad[] = {
        "queue.publish()", "queue.publish('k')", "queue.publish('k', {})", "queue.publish(('x'):rep(256), '{}')",
        "queue.publish('k', '{}', 1)", "queue.publish('k', '{}', { type = 1 })",
        "queue.publish('k', '{}', { headers = { x = {} } })", "queue.publish('k', '{}', { headers = { [1] = 'a' } })",
        "queue.publish('k', '{}', { timeout_ms = -1 })",
        "queue.declare_consumer_queue()", "queue.declare_consumer_queue('')",
        "queue.declare_consumer_queue('q', { prefetch = 0 })", "queue.declare_consumer_queue('q', { prefetch = 1.5 })",
        "queue.declare_consumer_queue('q', { delivery_limit = 0 })", "queue.declare_consumer_queue('q', { bindings = 'a.*' })",
        "queue.declare_consumer_queue('q', { bindings = { 1 } })",
        "queue.next()", "queue.next('q', -1)", "queue.ack()", "queue.ack('1')", "queue.nack({})",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = test_run(L, bad[i]);
        if (rc != -1) printf("#   did not raise: %s\n", bad[i]);
        CHECK_INT(rc, -1);
        lua_settop(L, 0);
    }
    CHECK(w.binding[BIND_QUEUE] == NULL);   /* nothing was opened */
    lua_close(L);
}

TEST(unreachable_broker_returns_unavailable_and_backs_off)
{
    config_t cfg = { .amqp_url = "amqp://guest:guest@127.0.0.1:1/" };
    worker_t w = { .cfg = &cfg, .kind = "test" };
    lua_State *L = test_state(&w, "queue");
    CHECK_INT(test_run(L, "return queue.publish('a.b', '{}', { message_id = 'x' })"), 0);
    CHECK(lua_isnil(L, 1));
    CHECK(strstr(lua_tostring(L, 2), "127.0.0.1:1") != NULL);
    CHECK_STR(lua_tostring(L, 3), "unavailable");
    lua_settop(L, 0);
    /* inside the backoff window: refused at once, saying when the next attempt is */
    CHECK_INT(test_run(L, "return queue.publish('a.b', '{}')"), 0);
    CHECK(strstr(lua_tostring(L, 2), "next attempt in") != NULL);
    lua_settop(L, 0);
    /* a consumer waits out its timeout (retrying), then reports why */
    double t0 = now_s();
    CHECK_INT(test_run(L, "return queue.next('q', 300)"), 0);
    double took = now_s() - t0;
    CHECK(took >= 0.25 && took < 1.0);
    CHECK(lua_isnil(L, 1));
    CHECK_STR(lua_tostring(L, 3), "unavailable");
    lua_settop(L, 0);
    /* a tag that was never delivered is misuse */
    CHECK_INT(test_run(L, "return queue.ack(4294967297)"), -1);
    /* ... and so is one no delivery could carry, refused before any conversion (KNOWN: -1,
     * NaN and huge numbers were cast to an integer first, which is undefined behaviour) */
    static const char *const bad[] = { "return queue.ack(-1)", "return queue.ack(0/0)", "return queue.ack(1e300)",
                                       "return queue.nack(-1e300, false)", "return queue.ack(-0.5)",
                                       "return queue.ack(1/0)", "return queue.ack(2^84)" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_INT(test_run(L, bad[i]), -1);
        CHECK(strstr(lua_tostring(L, -1), "unknown delivery tag") != NULL);
        lua_settop(L, 0);
    }
    char why[256] = "";
    CHECK_INT(binding_queue.ready(&w, why, sizeof why), 0);
    CHECK(why[0] != 0);
    lua_close(L);
    binding_queue.worker_free(&w);
    CHECK(w.binding[BIND_QUEUE] == NULL);
}

TEST(ready_is_minus_one_without_amqp_url)
{
    if (getenv("AMQP_URL")) { printf("# skipped: AMQP_URL is set\n"); return; }
    config_t cfg = { 0 };
    worker_t w = { .cfg = &cfg };
    char why[64];
    CHECK_INT(binding_queue.ready(&w, why, sizeof why), -1);
    lua_State *L = test_state(&w, "queue");
    CHECK_INT(test_run(L, "return queue.publish('k', '{}')"), 0);
    CHECK_STR(lua_tostring(L, 3), "unavailable");
    lua_close(L);
}

TEST(real_broker_confirmed_publish)
{
    const char *url = getenv("AMQP_URL");
    if (!url) { printf("# skipped: AMQP_URL is not set\n"); return; }
    config_t cfg = { .amqp_url = url };
    worker_t w = { .cfg = &cfg, .kind = "test" };
    lua_State *L = test_state(&w, "queue");
    CHECK_INT(test_run(L, "assert(queue.declare_consumer_queue('test_queue.c', { bindings = { 'test_queue_c.#' } }))\n"
                     "assert(queue.publish('test_queue_c.x', '{\"n\":1}', { message_id = 'tq-1' }))\n"
                     "local m = assert(queue.next('test_queue.c', 5000))\n"
                     "assert(queue.ack(m.delivery_tag))\n"
                     "return m.message_id, m.body, m.delivery_mode"), 0);
    CHECK_STR(lua_tostring(L, 1), "tq-1");
    CHECK_STR(lua_tostring(L, 2), "{\"n\":1}");
    CHECK_INT(lua_tonumber(L, 3), 2);
    char why[256] = "";
    CHECK_INT(binding_queue.ready(&w, why, sizeof why), 1);
    lua_close(L);
    binding_queue.worker_free(&w);
}

int main(void)
{
    RUN(url_parses_credentials_and_vhost);
    RUN(url_rejects_malformed);
    RUN(scratch_state_raises_a_clear_error);
    RUN(misuse_raises_before_connecting);
    RUN(unreachable_broker_returns_unavailable_and_backs_off);
    RUN(ready_is_minus_one_without_amqp_url);
    RUN(real_broker_confirmed_publish);
    return test_done();
}
