/* runner: background threads running the service's Lua outside requests — consumers
 * (services/<name>/consumers.lua) and periodic jobs (services/<name>/jobs.lua). */
#ifndef MERCATO_RUNNER_H
#define MERCATO_RUNNER_H

#include "config.h"

typedef struct runners runners_t;

/* Start one thread per entry the service declares. Each thread owns a worker (its own Lua
 * state and connections) and follows hot reloads between calls. NULL with err on failure;
 * a service declaring nothing gets an empty, valid set. */
runners_t *runners_start(const config_t *cfg, char *err, size_t errlen);

/* Ask every runner to stop, wait for the call in progress to return, free everything. */
void runners_stop(runners_t *r);

#endif
