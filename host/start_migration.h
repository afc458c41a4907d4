/* start_migration: the service's start-up migration on a thread of its own, beside the script
 * build, so that connecting to PostgreSQL and checking the schema cost no start-up time. */
#ifndef MERCATO_START_MIGRATION_H
#define MERCATO_START_MIGRATION_H

#include "config.h"

typedef struct start_migration start_migration_t;

/* Start migrating; NULL when the service has no database (nothing to wait for), or when no
 * thread could be made (then start_migration_verdict migrates on the caller's thread). */
start_migration_t *start_migration_begin(const config_t *cfg);

/* Tell the migration whether the scripts loaded (pending files are applied only if they did)
 * and wait until the schema is current or cannot be. 0 when the service may serve; m NULL
 * from a failed begin: migrate here. */
int start_migration_verdict(start_migration_t *m, const config_t *cfg, int scripts_ok);

/* Wait for the migration's last checks (the connection budget warning) and free m; NULL ok. */
void start_migration_end(start_migration_t *m);

#endif
