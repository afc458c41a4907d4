/* config: the process configuration, read once from the environment (CONTRACT §2). */
#ifndef MERCATO_CONFIG_H
#define MERCATO_CONFIG_H

#include <stddef.h>

#include "../core/log.h"   /* LOG_* levels */


/* String fields point into the environment (or static defaults); nothing here is freed. */
typedef struct config {
    const char *service;          /* one of config_services, or NULL for `mercato lua` */
    const char *listen_addr;      /* LISTEN_ADDR, default 0.0.0.0 */
    int port;                     /* PORT, per-service default */
    const char *scripts_dir;      /* SCRIPTS_DIR, default "scripts" */
    int hot_reload;               /* HOT_RELOAD=1 */
    int workers;                  /* WORKERS, default: online CPUs */
    int log_level;                /* LOG_LEVEL debug|info|warn|error */
    int access_log;               /* ACCESS_LOG, default 1 */
    size_t max_body;              /* MAX_BODY_BYTES, default 1 MiB */
    int shutdown_timeout_ms;      /* SHUTDOWN_TIMEOUT_MS, default 10000 */
    long max_connections;         /* MAX_CONNECTIONS, 0 = 10000 (lowered to fit the open-file limit) */
    long max_connections_per_ip;  /* MAX_CONNECTIONS_PER_IP, default 256; 0 = no limit */
    size_t body_buffer_budget;    /* BODY_BUFFER_BUDGET, default 128 MiB; 0 = no limit */
    int request_read_timeout_ms;  /* REQUEST_READ_TIMEOUT_MS, default 60000; 0 = none */
    long hsts_max_age;            /* HSTS_MAX_AGE seconds, default 0 = no Strict-Transport-Security */
    const char *database_url;
    const char *redis_url;
    const char *amqp_url;
} config_t;

extern const char *const config_services[];   /* NULL-terminated */

/* Fill c from the environment. `need_service`: whether SERVICE must be set and valid.
 * Returns 0, or 2 for a missing/unknown SERVICE and 1 for another bad value, with a message
 * in err naming the variable. */
int config_load(config_t *c, int need_service, char *err, size_t errlen);

/* Comma-separated list of valid service names, for messages. */
const char *config_service_list(void);

int config_default_port(const char *service);

/* Parse a positive integer, or a size with a k/m suffix when `size` is set; -1 if invalid. */
long config_parse_number(const char *s, int size);

#endif
