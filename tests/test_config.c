/* test_config: the environment → config_t rules of CONTRACT §2. */
#include <stdlib.h>

#include "config.h"
#include "test.h"

static void clear_env(void)
{
    const char *vars[] = { "SERVICE", "PORT", "WORKERS", "LOG_LEVEL", "MAX_BODY_BYTES", "HOT_RELOAD",
                           "SCRIPTS_DIR", "ACCESS_LOG", "SHUTDOWN_TIMEOUT_MS", "LISTEN_ADDR", "MAX_CONNECTIONS",
                           "MAX_CONNECTIONS_PER_IP", "BODY_BUFFER_BUDGET", "REQUEST_READ_TIMEOUT_MS" };
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) unsetenv(vars[i]);
}

TEST(missing_service_exits_2_listing_names)
{
    clear_env();
    config_t c;
    char err[256];
    CHECK_INT(config_load(&c, 1, err, sizeof err), 2);
    CHECK(strstr(err, "SERVICE") && strstr(err, "user, product, order, payment, notification, gateway"));
}

TEST(unknown_service_exits_2)
{
    clear_env();
    setenv("SERVICE", "inventory", 1);
    config_t c;
    char err[256];
    CHECK_INT(config_load(&c, 1, err, sizeof err), 2);
    CHECK(strstr(err, "inventory") != NULL);
}

TEST(defaults_follow_the_contract)
{
    clear_env();
    setenv("SERVICE", "order", 1);
    config_t c;
    char err[256];
    CHECK_INT(config_load(&c, 1, err, sizeof err), 0);
    CHECK_INT(c.port, 8083);
    CHECK_STR(c.scripts_dir, "scripts");
    CHECK_INT(c.hot_reload, 0);
    CHECK_INT(c.max_body, 1024 * 1024);
    CHECK(c.workers >= 1);
    CHECK_INT(c.log_level, LOG_INFO);
    CHECK_INT(c.max_connections, 0);   /* 0: quota.c's default, fitted to the open-file limit */
    CHECK_INT(c.max_connections_per_ip, 256);
    CHECK_INT(c.body_buffer_budget, 128 * 1024 * 1024);
    CHECK_INT(c.request_read_timeout_ms, 60000);
    setenv("SERVICE", "gateway", 1);
    CHECK_INT(config_load(&c, 1, err, sizeof err), 0);
    CHECK_INT(c.port, 8080);
}

TEST(connection_limits_are_read)
{
    clear_env();
    setenv("SERVICE", "user", 1);
    setenv("MAX_CONNECTIONS", "5000", 1);
    setenv("MAX_CONNECTIONS_PER_IP", "0", 1);
    setenv("BODY_BUFFER_BUDGET", "16m", 1);
    setenv("REQUEST_READ_TIMEOUT_MS", "1500", 1);
    config_t c;
    char err[256];
    CHECK_INT(config_load(&c, 1, err, sizeof err), 0);
    CHECK_INT(c.max_connections, 5000);
    CHECK_INT(c.max_connections_per_ip, 0);
    CHECK_INT(c.body_buffer_budget, 16 * 1024 * 1024);
    CHECK_INT(c.request_read_timeout_ms, 1500);
    setenv("MAX_CONNECTIONS", "0", 1);
    CHECK_INT(config_load(&c, 1, err, sizeof err), 1);
    CHECK(strstr(err, "MAX_CONNECTIONS") != NULL);
    setenv("MAX_CONNECTIONS", "10", 1);
    setenv("BODY_BUFFER_BUDGET", "lots", 1);
    CHECK_INT(config_load(&c, 1, err, sizeof err), 1);
    CHECK(strstr(err, "BODY_BUFFER_BUDGET") != NULL);
    clear_env();
}

TEST(values_are_parsed_and_bad_ones_named)
{
    clear_env();
    setenv("SERVICE", "user", 1);
    setenv("PORT", "9001", 1);
    setenv("WORKERS", "8", 1);
    setenv("MAX_BODY_BYTES", "2m", 1);
    setenv("LOG_LEVEL", "debug", 1);
    config_t c;
    char err[256];
    CHECK_INT(config_load(&c, 1, err, sizeof err), 0);
    CHECK_INT(c.port, 9001);
    CHECK_INT(c.workers, 8);
    CHECK_INT(c.max_body, 2 * 1024 * 1024);
    CHECK_INT(c.log_level, LOG_DEBUG);
    setenv("PORT", "99999", 1);
    CHECK_INT(config_load(&c, 1, err, sizeof err), 1);
    CHECK(strstr(err, "PORT") != NULL);
    setenv("PORT", "80x", 1);
    CHECK_INT(config_load(&c, 1, err, sizeof err), 1);
    setenv("PORT", "9001", 1);
    setenv("LOG_LEVEL", "loud", 1);
    CHECK_INT(config_load(&c, 1, err, sizeof err), 1);
    CHECK(strstr(err, "LOG_LEVEL") != NULL);
}

TEST(numbers_with_suffixes)
{
    CHECK_INT(config_parse_number("12", 0), 12);
    CHECK_INT(config_parse_number("12k", 1), 12 * 1024);
    CHECK_INT(config_parse_number("12k", 0), -1);
    CHECK_INT(config_parse_number("-1", 0), -1);
    CHECK_INT(config_parse_number("", 0), -1);
    CHECK_INT(config_parse_number("5MiB", 1), 5 * 1024 * 1024);
}

int main(void)
{
    RUN(missing_service_exits_2_listing_names);
    RUN(unknown_service_exits_2);
    RUN(defaults_follow_the_contract);
    RUN(connection_limits_are_read);
    RUN(values_are_parsed_and_bad_ones_named);
    RUN(numbers_with_suffixes);
    return test_done();
}
