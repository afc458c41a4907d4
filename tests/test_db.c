/* test_db: the db binding without a server — text conversions, OID → type, SQLSTATE → code,
 * URL redaction — and its misuse and failure paths through a real lua_State. */
#include <lauxlib.h>
#include <lualib.h>
#include <math.h>
#include <stdlib.h>
#include <time.h>

#include "../bindings/db.h"
#include "../host/bindings.h"
#include "../core/log.h"
#include "../core/metrics.h"
#include "../host/worker.h"
#include "test.h"
#include "test_lua.h"

int luaopen_db(lua_State *L);

static const char *num(double d)
{
    static char buf[64];
    db_format_number(d, buf, sizeof buf);
    return buf;
}

TEST(numbers_are_sent_as_integers_or_shortest_exact_decimals)
{
    CHECK_STR(num(1e15), "1000000000000000");
    CHECK_STR(num(9007199254740992.0), "9007199254740992");
    CHECK_STR(num(-42), "-42");
    CHECK_STR(num(-0.0), "0");
    CHECK_STR(num(0.1), "0.1");
    CHECK_STR(num(19.99), "19.99");
    CHECK_STR(num(1.0 / 3), "0.3333333333333333");
    CHECK_STR(num(1e300), "1e+300");
    CHECK_STR(num(NAN), "NaN");
    CHECK_STR(num(INFINITY), "Infinity");
    CHECK_STR(num(-INFINITY), "-Infinity");
    CHECK(strtod(num(0.1 + 0.2), NULL) == 0.1 + 0.2);
}

TEST(integers_in_text_become_numbers_only_when_exact)
{
    double d = 0;
    CHECK(db_parse_exact_integer("42", &d) && d == 42);
    CHECK(db_parse_exact_integer("-9007199254740992", &d) && d == -9007199254740992.0);
    CHECK(!db_parse_exact_integer("9007199254740993", &d));
    CHECK(!db_parse_exact_integer("12345678901234567890", &d));
    CHECK(!db_parse_exact_integer("12.50", &d));
    CHECK(!db_parse_exact_integer("1e5", &d));
    CHECK(!db_parse_exact_integer("-", &d));
    CHECK(!db_parse_exact_integer("", &d));
    CHECK(!db_parse_exact_integer("NaN", &d));
}

TEST(oids_map_to_lua_types)
{
    CHECK_INT(db_type_of_oid(21), DB_T_INT);
    CHECK_INT(db_type_of_oid(23), DB_T_INT);
    CHECK_INT(db_type_of_oid(20), DB_T_INT8);
    CHECK_INT(db_type_of_oid(1700), DB_T_NUMERIC);
    CHECK_INT(db_type_of_oid(700), DB_T_FLOAT);
    CHECK_INT(db_type_of_oid(701), DB_T_FLOAT);
    CHECK_INT(db_type_of_oid(16), DB_T_BOOL);
    CHECK_INT(db_type_of_oid(114), DB_T_JSON);
    CHECK_INT(db_type_of_oid(3802), DB_T_JSON);
    CHECK_INT(db_type_of_oid(1184), DB_T_TIMESTAMPTZ);
    CHECK_INT(db_type_of_oid(1114), DB_T_TIMESTAMP);
    CHECK_INT(db_type_of_oid(2950), DB_T_TEXT);   /* uuid */
    CHECK_INT(db_type_of_oid(25), DB_T_TEXT);
    CHECK_INT(db_type_of_oid(790), DB_T_TEXT);    /* money: locale text, never a float */
}

static const char *ts(const char *in)
{
    static char out[64];
    return db_timestamptz_rfc3339(in, out, sizeof out) == 0 ? out : "(refused)";
}

TEST(timestamptz_becomes_rfc3339_utc)
{
    CHECK_STR(ts("2024-05-01 12:00:00.5+02"), "2024-05-01T10:00:00.5Z");
    CHECK_STR(ts("2024-05-01 12:00:00+00"), "2024-05-01T12:00:00Z");
    CHECK_STR(ts("2024-01-01 00:30:00-05:30"), "2024-01-01T06:00:00Z");
    CHECK_STR(ts("2024-03-01 00:00:00.123456+01"), "2024-02-29T23:00:00.123456Z");
    CHECK_STR(ts("1999-12-31 23:59:59.999999-01"), "2000-01-01T00:59:59.999999Z");
    CHECK_STR(ts("1901-01-01 00:00:00+00:19:32"), "1900-12-31T23:40:28Z");
    CHECK_STR(ts("infinity"), "(refused)");
    CHECK_STR(ts("0044-03-15 12:00:00+00 BC"), "(refused)");
    CHECK_STR(ts("2024-05-01T12:00:00Z"), "(refused)");
}

TEST(sqlstates_map_to_the_error_vocabulary)
{
    int misuse;
    CHECK_STR(db_code_for_sqlstate("23505", &misuse), "conflict");
    CHECK_STR(db_code_for_sqlstate("40001", &misuse), "conflict");
    CHECK_STR(db_code_for_sqlstate("40P01", &misuse), "conflict");
    CHECK_STR(db_code_for_sqlstate("57014", &misuse), "timeout");
    CHECK_STR(db_code_for_sqlstate("55P03", &misuse), "timeout");
    CHECK_STR(db_code_for_sqlstate("23502", &misuse), "invalid");
    CHECK_STR(db_code_for_sqlstate("23503", &misuse), "invalid");
    CHECK_STR(db_code_for_sqlstate("23514", &misuse), "invalid");
    CHECK_STR(db_code_for_sqlstate("22P02", &misuse), "invalid");
    CHECK(!misuse);
    CHECK_STR(db_code_for_sqlstate("P0001", &misuse), "invalid");
    CHECK_STR(db_code_for_sqlstate("08006", &misuse), "unavailable");
    CHECK_STR(db_code_for_sqlstate("57P01", &misuse), "unavailable");
    CHECK_STR(db_code_for_sqlstate("53300", &misuse), "unavailable");
    CHECK(!misuse);
    db_code_for_sqlstate("42601", &misuse);
    CHECK(misuse);
    db_code_for_sqlstate("42P01", &misuse);
    CHECK(misuse);
    db_code_for_sqlstate("08P01", &misuse);
    CHECK(misuse);
    db_code_for_sqlstate("25P02", &misuse);
    CHECK(misuse);
}

static const char *url_check(const char *url)
{
    static db_error_t err;
    if (db_url_check(url, &err) == 0) return "ok";
    return err.msg;
}

TEST(database_urls_are_checked_without_being_quoted)
{
    CHECK_STR(url_check("postgresql://app:s3cr%40t@db:5432/mercato_user"), "ok");
    CHECK_STR(url_check("host=db password=hunter2 dbname=x"), "ok");
    const char *bad[] = { "postgresq://u:s3cret@h/db", "host=db password=s3cret junk", "postgresql://u:s3cret@h/db?%zz=1",
                          "s3cret" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *msg = url_check(bad[i]);
        CHECK(strncmp(msg, "database unavailable: DATABASE_URL ", 35) == 0);
        CHECK(strstr(msg, "s3cret") == NULL);
    }
}

static const char *redact(const char *text)
{
    static char out[256];
    snprintf(out, sizeof out, "%s", text);
    CHECK_INT(log_redact(out), strlen(out));
    return out;
}

TEST(log_text_loses_every_url_and_password)
{
    CHECK_STR(redact("REDIS_URL 'rediss://:s3cret@h:1/0' is bad"), "REDIS_URL '<url>' is bad");
    CHECK_STR(redact("postgresql://app:s3cr%40t@db:5432/x"), "<url>");
    CHECK_STR(redact("a amqp://g:p@h/ and redis://h:1 b"), "a <url> and <url> b");
    CHECK_STR(redact("{\"e\":\"x http://u:p@h/y\\nz\"}"), "{\"e\":\"x <url>\\nz\"}");
    CHECK_STR(redact("host=db password=hunter2 dbname=x"), "host=db password=*** dbname=x");
    CHECK_STR(redact("password=*** stays, password= too"), "password=*** stays, password= too");
    CHECK_STR(redact("the redis scheme, ://, not a URL: x:// y"), "the redis scheme, ://, not a URL: x:// y");
    CHECK_STR(redact("no secret here"), "no secret here");
}

/* ---- through a lua_State ---------------------------------------------------------------- */

static config_t g_cfg;


TEST(calls_raise_where_there_is_no_worker)
{
    lua_State *L = test_state(NULL, "db");
    const char *r = test_eval(L, "return db.query('SELECT 1')");
    CHECK(strstr(r, "error: ") && strstr(r, "db.query: no database here"));
    r = test_eval(L, "return db.tx(function() end)");
    CHECK(strstr(r, "db.tx: no database here") != NULL);
    CHECK_STR(test_eval(L, "return tostring(db.null == require('cjson').null)"), "true");
    lua_close(L);
}

TEST(misuse_raises_before_anything_is_sent)
{
    worker_t w = { .cfg = &g_cfg, .kind = "cli" };
    g_cfg.database_url = "postgresql://postgres@127.0.0.1:1/none";
    lua_State *L = test_state(&w, "db");
    CHECK(strstr(test_eval(L, "return db.query(nil)"), "db.query: expecting SQL string, got nil") != NULL);
    CHECK(strstr(test_eval(L, "return db.query_one(42)"), "db.query_one: expecting SQL string, got number") != NULL);
    CHECK(strstr(test_eval(L, "return db.exec('SELECT $1', print)"), "parameter $1: cannot send a function") != NULL);
    CHECK(strstr(test_eval(L, "return db.query('SELECT $1', coroutine.create(print))"), "cannot send a thread") != NULL);
    CHECK(strstr(test_eval(L, "return db.query('SELECT $1', { f = print })"), "parameter $1:") != NULL);
    CHECK(strstr(test_eval(L, "return db.query('SELECT 1\\0; DROP TABLE x')"), "NUL byte") != NULL);
    CHECK(strstr(test_eval(L, "return db.tx(42)"), "function expected") != NULL);
    CHECK(w.binding[BIND_DB] == NULL || ((db_conn_t *)w.binding[BIND_DB])->pg == NULL);
    lua_close(L);
    db_worker_free(&w);
}

TEST(a_missing_or_unreachable_database_returns_unavailable_fast)
{
    worker_t w = { .cfg = &g_cfg, .kind = "cli" };
    g_cfg.database_url = NULL;
    lua_State *L = test_state(&w, "db");
    CHECK_STR(test_eval(L, "local ok, err, code = db.query('SELECT 1'); return code .. ': ' .. err"),
              "unavailable: database unavailable: DATABASE_URL is not set");
    db_worker_free(&w);

    g_cfg.database_url = "postgresql://postgres@127.0.0.1:1/none";
    const char *r = test_eval(L, "local ok, err, code, state = db.query_one('SELECT $1::int', 1);"
                           "return tostring(ok) .. '|' .. code .. '|' .. tostring(state) .. '|' .. err");
    CHECK(strncmp(r, "nil|unavailable|nil|database unavailable: ", 42) == 0);
    CHECK(strstr(r, "SELECT") == NULL);
    /* The next attempts within the back-off fail at once instead of connecting again. */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    r = test_eval(L, "for i = 1, 100 do local _, _, code = db.query('SELECT 1'); assert(code == 'unavailable') end;"
               "local _, err, code = db.tx(function() error('never runs') end); return code .. ': ' .. err");
    clock_gettime(CLOCK_MONOTONIC, &t1);
    CHECK(strncmp(r, "unavailable: database unavailable", 33) == 0);
    double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    CHECK(ms < 50);
    CHECK_STR(test_eval(L, "local ok, err, code = db.exec('SELECT $1::text', 'a\\0b'); return code .. ': ' .. err"),
              "invalid: parameter $1 contains a NUL byte, which text cannot hold");
    lua_close(L);
    db_worker_free(&w);
    CHECK(w.binding[BIND_DB] == NULL);
}

int main(void)
{
    log_init(LOG_ERROR, "test_db");
    db_settings_load();
    RUN(numbers_are_sent_as_integers_or_shortest_exact_decimals);
    RUN(integers_in_text_become_numbers_only_when_exact);
    RUN(oids_map_to_lua_types);
    RUN(timestamptz_becomes_rfc3339_utc);
    RUN(sqlstates_map_to_the_error_vocabulary);
    RUN(database_urls_are_checked_without_being_quoted);
    RUN(log_text_loses_every_url_and_password);
    RUN(calls_raise_where_there_is_no_worker);
    RUN(misuse_raises_before_anything_is_sent);
    RUN(a_missing_or_unreachable_database_returns_unavailable_fast);
    int rc = test_done();
    metrics_shutdown();
    return rc;
}
