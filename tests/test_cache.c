/* test_cache: the cache binding's URL parsing, reply mapping, misuse (raises), failure
 * (nil, err, code, nothing leaked) and, with REDIS_URL set, success paths in a real lua_State. */
#include <lauxlib.h>
#include <lualib.h>
#include <stdlib.h>

#include "../bindings/cache.h"
#include "bindings.h"
#include "test.h"
#include "test_lua.h"

#include "worker.h"

extern const binding_t binding_cache;


TEST(url_parses_host_port_db)
{
    redis_url_t u;
    char err[256];
    CHECK_INT(redis_url_parse("redis://127.0.0.1:56379/3", &u, err, sizeof err), 0);
    CHECK_STR(u.host, "127.0.0.1");
    CHECK_INT(u.port, 56379);
    CHECK_INT(u.db, 3);
    CHECK_STR(u.password, "");
    CHECK_INT(redis_url_parse("redis://cache", &u, err, sizeof err), 0);
    CHECK_STR(u.host, "cache");
    CHECK_INT(u.port, 6379);
    CHECK_INT(u.db, 0);
    CHECK_INT(redis_url_parse("redis://cache/", &u, err, sizeof err), 0);
    CHECK_INT(u.db, 0);
}

TEST(url_parses_credentials_and_ipv6)
{
    redis_url_t u;
    char err[256];
    CHECK_INT(redis_url_parse("redis://:s3cr%40t@h:1/0", &u, err, sizeof err), 0);
    CHECK_STR(u.user, "");
    CHECK_STR(u.password, "s3cr@t");
    CHECK_STR(u.host, "h");
    CHECK_INT(redis_url_parse("redis://app:pw:with:colons@h", &u, err, sizeof err), 0);
    CHECK_STR(u.user, "app");
    CHECK_STR(u.password, "pw:with:colons");
    CHECK_INT(redis_url_parse("redis://[::1]:7000/2", &u, err, sizeof err), 0);
    CHECK_STR(u.host, "::1");
    CHECK_INT(u.port, 7000);
    CHECK_INT(u.db, 2);
}

TEST(url_rejects_malformed)
{
    redis_url_t u;
    char err[256];
    const char *bad[] = {
        NULL, "", "http://h", "rediss://h", "redis://", "redis://h:0", "redis://h:99999", "redis://h:12x",
        "redis://h/db", "redis://h/-1", "redis://:%zz@h", "redis://[::1", "redis://:bad%4@h",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        int rc = redis_url_parse(bad[i], &u, err, sizeof err);
        if (rc != -1) printf("#   accepted '%s'\n", bad[i] ? bad[i] : "(null)");
        CHECK_INT(rc, -1);
        CHECK(err[0] != 0);
    }
}

TEST(error_codes_follow_the_vocabulary)
{
    CHECK_STR(cache_error_code("ERR value is not an integer or out of range"), "invalid");
    CHECK_STR(cache_error_code("WRONGTYPE Operation against a key"), "invalid");
    CHECK_STR(cache_error_code("LOADING Redis is loading the dataset in memory"), "unavailable");
    CHECK_STR(cache_error_code("BUSY Redis is busy running a script"), "unavailable");
    CHECK_STR(cache_error_code("READONLY You can't write against a read only replica."), "unavailable");
    CHECK_STR(cache_error_code("OOM command not allowed"), "unavailable");
    CHECK_STR(cache_error_code("BUSYKEY Target key name already exists."), "invalid");
}

TEST(replies_map_to_lua_values)
{
    lua_State *L = luaL_newstate();
    redisReply s = { .type = REDIS_REPLY_STRING, .str = "a\0b", .len = 3 };
    redisReply st = { .type = REDIS_REPLY_STATUS, .str = "OK", .len = 2 };
    redisReply in = { .type = REDIS_REPLY_INTEGER, .integer = -42 };
    redisReply nil = { .type = REDIS_REPLY_NIL };
    redisReply er = { .type = REDIS_REPLY_ERROR, .str = "ERR boom", .len = 8 };
    redisReply *inner_el[] = { &in };
    redisReply inner = { .type = REDIS_REPLY_ARRAY, .elements = 1, .element = inner_el };
    redisReply *els[] = { &s, &nil, &er, &inner, &st };
    redisReply arr = { .type = REDIS_REPLY_ARRAY, .elements = 5, .element = els };

    size_t len;
    cache_push_reply(L, &s, 0);
    const char *v = lua_tolstring(L, -1, &len);
    CHECK_INT(len, 3);
    CHECK(memcmp(v, "a\0b", 3) == 0);
    cache_push_reply(L, &st, 0);
    CHECK_STR(lua_tostring(L, -1), "OK");
    cache_push_reply(L, &in, 0);
    CHECK_INT(lua_type(L, -1), LUA_TNUMBER);
    CHECK_INT(lua_tonumber(L, -1), -42);
    cache_push_reply(L, &nil, 0);
    CHECK(lua_isnil(L, -1));
    lua_settop(L, 0);

    cache_push_reply(L, &arr, 0);
    CHECK_INT(lua_objlen(L, 1), 5);
    lua_rawgeti(L, 1, 2);
    CHECK(lua_isboolean(L, -1) && !lua_toboolean(L, -1));   /* nil inside an array → false */
    lua_rawgeti(L, 1, 3);
    lua_getfield(L, -1, "err");
    CHECK_STR(lua_tostring(L, -1), "ERR boom");             /* error inside → { err = msg } */
    lua_rawgeti(L, 1, 4);
    lua_rawgeti(L, -1, 1);
    CHECK_INT(lua_tonumber(L, -1), -42);
    lua_rawgeti(L, 1, 5);
    CHECK_STR(lua_tostring(L, -1), "OK");
    lua_close(L);
}

TEST(scratch_state_raises_a_clear_error)
{
    lua_State *L = test_state(NULL, "cache");
    CHECK_INT(test_run(L, "return cache.call('PING')"), -1);
    CHECK(strstr(lua_tostring(L, -1), "cache.call: no worker owns this Lua state") != NULL);
    lua_close(L);
}

TEST(misuse_raises_before_connecting)
{
    config_t cfg = { .redis_url = "redis://127.0.0.1:1/0" };
    worker_t w = { .cfg = &cfg };
    lua_State *L = test_state(&w, "cache");
    const char *bad[] = {
        "cache.call()", "cache.call(1)", "cache.call('GET', {})", "cache.call('GET', true)",
        "cache.pipeline()", "cache.pipeline({})", "cache.pipeline({ 'GET' })", "cache.pipeline({ { 1 } })",
        "cache.eval()", "cache.eval('return 1', 'k')", "cache.eval('return 1', {}, { {} })",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = test_run(L, bad[i]);
        if (rc != -1) printf("#   did not raise: %s\n", bad[i]);
        CHECK_INT(rc, -1);
        lua_settop(L, 0);
    }
    CHECK(w.binding[BIND_CACHE] == NULL);   /* nothing was opened */
    lua_close(L);
}

TEST(unreachable_server_returns_nil_err_unavailable)
{
    config_t cfg = { .redis_url = "redis://127.0.0.1:1/0" };
    worker_t w = { .cfg = &cfg };
    lua_State *L = test_state(&w, "cache");
    CHECK_INT(test_run(L, "return cache.call('GET', 'k')"), 0);
    CHECK_INT(lua_gettop(L), 3);
    CHECK(lua_isnil(L, 1));
    CHECK(strstr(lua_tostring(L, 2), "127.0.0.1:1") != NULL);
    CHECK_STR(lua_tostring(L, 3), "unavailable");
    lua_settop(L, 0);
    CHECK_INT(test_run(L, "return cache.pipeline({ { 'PING' } })"), 0);
    CHECK_STR(lua_tostring(L, 3), "unavailable");
    char why[256] = "";
    CHECK_INT(binding_cache.ready(&w, why, sizeof why), 0);
    CHECK(why[0] != 0);
    lua_close(L);
    binding_cache.worker_free(&w);
    CHECK(w.binding[BIND_CACHE] == NULL);

    config_t none = { 0 };
    worker_t w2 = { .cfg = &none };
    const char *env = getenv("REDIS_URL");
    if (!env) CHECK_INT(binding_cache.ready(&w2, why, sizeof why), -1);
}

TEST(real_server_round_trip)
{
    const char *url = getenv("REDIS_URL");
    if (!url) { printf("# skipped: REDIS_URL is not set\n"); return; }
    config_t cfg = { .redis_url = url };
    worker_t w = { .cfg = &cfg };
    lua_State *L = test_state(&w, "cache");
    CHECK_INT(test_run(L, "cache.call('SET', 'test_cache:k', 'v')\n"
                     "local r = cache.pipeline({ { 'GET', 'test_cache:k' }, { 'DEL', 'test_cache:k' } })\n"
                     "return r[1], r[2], cache.call('GET', 'test_cache:k'), cache.eval('return ARGV[1]', {}, { 7 })"), 0);
    CHECK_STR(lua_tostring(L, 1), "v");
    CHECK_INT(lua_tonumber(L, 2), 1);
    CHECK(lua_isnil(L, 3));
    CHECK_STR(lua_tostring(L, 4), "7");
    char why[256] = "";
    CHECK_INT(binding_cache.ready(&w, why, sizeof why), 1);
    /* the connection belongs to the worker: a new state (a reload) reuses it */
    void *conn = w.binding[BIND_CACHE];
    lua_close(L);
    L = test_state(&w, "cache");
    CHECK_INT(test_run(L, "return cache.call('PING')"), 0);
    CHECK_STR(lua_tostring(L, 1), "PONG");
    CHECK(w.binding[BIND_CACHE] == conn);
    lua_close(L);
    binding_cache.worker_free(&w);
}

int main(void)
{
    RUN(url_parses_host_port_db);
    RUN(url_parses_credentials_and_ipv6);
    RUN(url_rejects_malformed);
    RUN(error_codes_follow_the_vocabulary);
    RUN(replies_map_to_lua_values);
    RUN(scratch_state_raises_a_clear_error);
    RUN(misuse_raises_before_connecting);
    RUN(unreachable_server_returns_nil_err_unavailable);
    RUN(real_server_round_trip);
    return test_done();
}
