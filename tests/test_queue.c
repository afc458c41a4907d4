/* test_queue: the queue binding's URL parsing, misuse (raises), failure (nil, err, code,
 * backoff, nothing leaked) and, with AMQP_URL set, in a real lua_State: a confirmed publish and
 * a batch published without waiting, whose confirms (acks, a broker's nack, a lost connection)
 * queue.confirms reports once each. */
#include <amqp_tcp_socket.h>
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
        "queue.publish('k', '{}', { timeout_ms = -1 })", "queue.publish('k', '{}', { wait = 0 })",
        "queue.publish('k', '{}', { wait = 'no' })", "queue.confirms(-1)", "queue.confirms('x')", "queue.confirms(0/0)",
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
    /* without waiting: the same failure, no tag, and nothing for queue.confirms to report */
    CHECK_INT(test_run(L, "return queue.publish('a.b', '{}', { wait = false })"), 0);
    CHECK(lua_isnil(L, 1));
    CHECK_STR(lua_tostring(L, 3), "unavailable");
    CHECK_STR(test_eval(L, "local ok, failed = queue.confirms(100); return tostring(next(ok) == nil and next(failed) == nil)"), "true");
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

/* A classic queue bound to QUEUE_EXCHANGE with key, declared with a raw rabbitmq-c connection
 * (the binding declares only quorum consumer queues): max-length 0 with reject-publish, so the
 * broker nacks every message routed to it. 0, or -1. */
static int declare_full_queue(const char *url, const char *name, const char *key)
{
    queue_url_t u;
    char err[256];
    if (queue_url_parse(url, &u, err, sizeof err) < 0) return -1;
    amqp_connection_state_t c = amqp_new_connection();
    amqp_socket_t *s = amqp_tcp_socket_new(c);
    int ok = s && amqp_socket_open(s, u.host, u.port) == AMQP_STATUS_OK &&
             amqp_login(c, u.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, u.user, u.password).reply_type == AMQP_RESPONSE_NORMAL &&
             amqp_channel_open(c, 1);
    amqp_table_entry_t args[2] = {
        { .key = amqp_cstring_bytes("x-max-length"), .value = { .kind = AMQP_FIELD_KIND_I64, .value.i64 = 0 } },
        { .key = amqp_cstring_bytes("x-overflow"), .value = { .kind = AMQP_FIELD_KIND_UTF8, .value.bytes = amqp_cstring_bytes("reject-publish") } },
    };
    ok = ok && amqp_exchange_declare(c, 1, amqp_cstring_bytes(QUEUE_EXCHANGE), amqp_cstring_bytes("topic"), 0, 1, 0, 0, amqp_empty_table);
    ok = ok && amqp_queue_declare(c, 1, amqp_cstring_bytes(name), 0, 0, 0, 1, (amqp_table_t){ .num_entries = 2, .entries = args });
    ok = ok && amqp_queue_bind(c, 1, amqp_cstring_bytes(name), amqp_cstring_bytes(QUEUE_EXCHANGE), amqp_cstring_bytes(key), amqp_empty_table);
    /* auto-delete needs a consumer to ever go: delete it when the test is done (delete_full_queue) */
    amqp_channel_close(c, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(c);
    return ok ? 0 : -1;
}

static void delete_full_queue(const char *url, const char *name)
{
    queue_url_t u;
    char err[256];
    if (queue_url_parse(url, &u, err, sizeof err) < 0) return;
    amqp_connection_state_t c = amqp_new_connection();
    amqp_socket_t *s = amqp_tcp_socket_new(c);
    if (s && amqp_socket_open(s, u.host, u.port) == AMQP_STATUS_OK &&
        amqp_login(c, u.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, u.user, u.password).reply_type == AMQP_RESPONSE_NORMAL &&
        amqp_channel_open(c, 1)) {
        amqp_queue_delete(c, 1, amqp_cstring_bytes(name), 0, 0);
        amqp_channel_close(c, 1, AMQP_REPLY_SUCCESS);
        amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    }
    amqp_destroy_connection(c);
}

TEST(real_broker_batch_without_waiting)
{
    const char *url = getenv("AMQP_URL");
    if (!url) { printf("# skipped: AMQP_URL is not set\n"); return; }
    CHECK_INT(declare_full_queue(url, "test_queue.c.full", "test_queue_c_full.x"), 0);
    config_t cfg = { .amqp_url = url };
    worker_t w = { .cfg = &cfg, .kind = "test" };
    lua_State *L = test_state(&w, "queue");
    /* Ten publishes, then one wait: every tag confirmed once, in order, and all delivered. A
     * waiting publish in between does not take the others' confirms. */
    CHECK_STR(test_eval(L,
        "assert(queue.declare_consumer_queue('test_queue.c.batch', { bindings = { 'test_queue_c_batch.#' }, prefetch = 50 }))\n"
        "while true do local m = queue.next('test_queue.c.batch', 200); if not m then break end; queue.ack(m.delivery_tag) end\n"   /* an earlier run's */
        "local tags = {}\n"
        "for i = 1, 10 do\n"
        "  tags[i] = assert(queue.publish('test_queue_c_batch.x', '{\"n\":' .. i .. '}', { message_id = 'b' .. i, wait = false }))\n"
        "  if i > 1 then assert(tags[i] > tags[i - 1], 'tags not increasing') end\n"
        "  if i == 5 then assert(queue.publish('test_queue_c_batch.x', '{}', { message_id = 'sync' }) == true) end\n"
        "end\n"
        "local ok, failed = queue.confirms(5000)\n"
        "assert(next(failed) == nil, 'a publish failed')\n"
        "local n = 0\n"
        "for tag, v in pairs(ok) do assert(v == true); n = n + 1 end\n"
        "for i = 1, 10 do assert(ok[tags[i]], 'tag ' .. i .. ' not confirmed') end\n"
        "local again, failed2 = queue.confirms(100)\n"   /* reported once: nothing is left */
        "assert(next(again) == nil and next(failed2) == nil, 'reported twice')\n"
        "local got = {}\n"
        "for _ = 1, 11 do local m = assert(queue.next('test_queue.c.batch', 5000)); got[m.message_id] = true; assert(queue.ack(m.delivery_tag)) end\n"
        "assert(got.sync, 'the waiting publish was not delivered')\n"
        "for i = 1, 10 do assert(got['b' .. i], 'b' .. i .. ' not delivered') end\n"
        "return n"), "10");
    /* The broker refuses the middle one (its queue rejects every publish): that one alone fails. */
    CHECK_STR(test_eval(L,
        "local a = assert(queue.publish('test_queue_c_batch.x', '{}', { message_id = 'a', wait = false }))\n"
        "local b = assert(queue.publish('test_queue_c_full.x', '{}', { message_id = 'b', wait = false }))\n"
        "local c = assert(queue.publish('test_queue_c_batch.x', '{}', { message_id = 'c', wait = false }))\n"
        "local ok, failed = queue.confirms(5000)\n"
        "local got = {}\n"
        "for _ = 1, 2 do local m = assert(queue.next('test_queue.c.batch', 5000)); got[m.message_id] = true; assert(queue.ack(m.delivery_tag)) end\n"
        "assert(got.a and got.c, 'a or c not delivered')\n"
        "return tostring(ok[a]) .. ' ' .. tostring(ok[b]) .. ' ' .. tostring(ok[c]) .. ' ' .. failed[b].code .. ' ' .. failed[b].error"),
        "true nil true unavailable amqp publish: the broker refused the message (nack)");
    /* The connection goes before the confirms are read: none is reported confirmed; the next
     * publish opens a new connection whose tags never collide with the lost ones. */
    CHECK_STR(test_eval(L,
        "local t = {}\n"
        "for i = 1, 3 do t[i] = assert(queue.publish('test_queue_c_batch.x', '{}', { message_id = 'l' .. i, wait = false })) end\n"
        "queue.reset()\n"
        "local ok, failed = queue.confirms(1000)\n"
        "assert(next(ok) == nil, 'a publish of a closed connection was confirmed')\n"
        "for i = 1, 3 do assert(failed[t[i]] and failed[t[i]].code == 'unavailable', 'lost publish ' .. i .. ' not reported') end\n"
        "local new = assert(queue.publish('test_queue_c_batch.x', '{}', { message_id = 'l4', wait = false }))\n"
        "assert(new > t[3], 'a tag of the new connection collides')\n"
        "ok = queue.confirms(5000)\n"
        "assert(ok[new] and ok[t[1]] == nil)\n"
        "return failed[t[1]].error"),
        "the publishing connection closed before the broker confirmed");
    lua_close(L);
    binding_queue.worker_free(&w);
    delete_full_queue(url, "test_queue.c.full");
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
    RUN(real_broker_batch_without_waiting);
    return test_done();
}
