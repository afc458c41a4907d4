/* config: the process configuration, read once from the environment (CONTRACT §2). */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

const char *const config_services[] = { "user", "product", "order", "payment", "notification", "gateway", NULL };
static const int default_ports[] = { 8081, 8082, 8083, 8084, 8085, 8080 };

const char *config_service_list(void)
{
    return "user, product, order, payment, notification, gateway";
}

int config_default_port(const char *service)
{
    for (int i = 0; config_services[i]; i++)
        if (strcmp(service, config_services[i]) == 0) return default_ports[i];
    return -1;
}

long config_parse_number(const char *s, int size)
{
    if (!s || !*s) return -1;
    errno = 0;
    char *end;
    long v = strtol(s, &end, 10);
    if (errno || end == s || v < 0) return -1;
    if (size && *end) {
        long mult = 0;
        if (strcasecmp(end, "k") == 0 || strcasecmp(end, "kb") == 0 || strcasecmp(end, "kib") == 0) mult = 1024;
        else if (strcasecmp(end, "m") == 0 || strcasecmp(end, "mb") == 0 || strcasecmp(end, "mib") == 0) mult = 1024L * 1024;
        if (!mult || v > (1L << 40) / mult) return -1;
        return v * mult;
    }
    return *end ? -1 : v;
}

static const char *env_or(const char *name, const char *dflt)
{
    const char *v = getenv(name);
    return (v && *v) ? v : dflt;
}

/* Read an integer variable into *out within [min, max]; 0 or -1 with err. */
static int env_int(const char *name, long min, long max, int size, long *out, char *err, size_t errlen)
{
    const char *v = getenv(name);
    if (!v || !*v) return 0;
    long n = config_parse_number(v, size);
    if (n < min || n > max) {
        snprintf(err, errlen, "%s: expecting a number between %ld and %ld, got '%s'", name, min, max, v);
        return -1;
    }
    *out = n;
    return 0;
}

int config_load(config_t *c, int need_service, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    const char *service = getenv("SERVICE");
    if (service && *service) {
        int ok = 0;
        for (int i = 0; config_services[i]; i++)
            if (strcmp(service, config_services[i]) == 0) ok = 1;
        if (!ok) {
            snprintf(err, errlen, "SERVICE: unknown service '%s'; valid names: %s", service, config_service_list());
            return 2;
        }
        c->service = service;
    } else if (need_service) {
        snprintf(err, errlen, "SERVICE is not set; valid names: %s", config_service_list());
        return 2;
    }

    c->listen_addr = env_or("LISTEN_ADDR", "0.0.0.0");
    c->scripts_dir = env_or("SCRIPTS_DIR", "scripts");
    c->database_url = env_or("DATABASE_URL", NULL);
    c->redis_url = env_or("REDIS_URL", NULL);
    c->amqp_url = env_or("AMQP_URL", NULL);

    long port = c->service ? config_default_port(c->service) : 0;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    long workers = cpus > 0 ? cpus : 2;
    long max_body = 1024L * 1024, shutdown_ms = 10000, hot = 0, access = 1;
    long max_conns = 0, per_ip = 256, budget = 128L * 1024 * 1024, read_ms = 60000, hsts = 0;
    if (env_int("PORT", 1, 65535, 0, &port, err, errlen) < 0 ||
        env_int("WORKERS", 1, 256, 0, &workers, err, errlen) < 0 ||
        env_int("MAX_BODY_BYTES", 1024, 1L << 30, 1, &max_body, err, errlen) < 0 ||
        env_int("SHUTDOWN_TIMEOUT_MS", 0, 600000, 0, &shutdown_ms, err, errlen) < 0 ||
        env_int("HOT_RELOAD", 0, 1, 0, &hot, err, errlen) < 0 ||
        env_int("ACCESS_LOG", 0, 1, 0, &access, err, errlen) < 0 ||
        env_int("MAX_CONNECTIONS", 1, 1000000, 0, &max_conns, err, errlen) < 0 ||
        env_int("MAX_CONNECTIONS_PER_IP", 0, 1000000, 0, &per_ip, err, errlen) < 0 ||
        env_int("BODY_BUFFER_BUDGET", 0, 1L << 40, 1, &budget, err, errlen) < 0 ||
        env_int("REQUEST_READ_TIMEOUT_MS", 0, 3600000, 0, &read_ms, err, errlen) < 0 ||
        env_int("HSTS_MAX_AGE", 0, 63072000, 0, &hsts, err, errlen) < 0)
        return 1;
    c->hsts_max_age = hsts;
    c->max_connections = max_conns;
    c->max_connections_per_ip = per_ip;
    c->body_buffer_budget = (size_t)budget;
    c->request_read_timeout_ms = (int)read_ms;
    c->port = (int)port;
    c->workers = (int)workers;
    c->max_body = (size_t)max_body;
    c->shutdown_timeout_ms = (int)shutdown_ms;
    c->hot_reload = (int)hot;
    c->access_log = (int)access;

    const char *level = env_or("LOG_LEVEL", "info");
    if (strcasecmp(level, "debug") == 0) c->log_level = LOG_DEBUG;
    else if (strcasecmp(level, "info") == 0) c->log_level = LOG_INFO;
    else if (strcasecmp(level, "warn") == 0 || strcasecmp(level, "warning") == 0) c->log_level = LOG_WARN;
    else if (strcasecmp(level, "error") == 0) c->log_level = LOG_ERROR;
    else {
        snprintf(err, errlen, "LOG_LEVEL: expecting debug, info, warn or error, got '%s'", level);
        return 1;
    }
    return 0;
}
