/* start_migration: the service's start-up migration on a thread of its own, beside the script
 * build. The thread connects, takes the migration lock and compares schema_migrations with the
 * files while the main thread compiles and checks the scripts; it applies pending files only
 * after the scripts loaded (a release whose scripts fail changes no schema), then tells the main
 * thread the schema is ready and goes on with its last check (the connection budget warning)
 * while the listener opens. */
#include "start_migration.h"

#include <pthread.h>
#include <stdlib.h>

#include "bindings.h"
#include "../core/log.h"

struct start_migration {
    const config_t *cfg;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t changed;
    int scripts;          /* -1 not known yet, 0 failed, 1 loaded */
    int schema;           /* -1 not known yet, else the migration's exit status */
};

static int may_apply(void *ctx)
{
    start_migration_t *m = ctx;
    pthread_mutex_lock(&m->lock);
    while (m->scripts < 0) pthread_cond_wait(&m->changed, &m->lock);
    int ok = m->scripts;
    pthread_mutex_unlock(&m->lock);
    return ok;
}

static void schema_ready(void *ctx, int rc)
{
    start_migration_t *m = ctx;
    pthread_mutex_lock(&m->lock);
    m->schema = rc;
    pthread_cond_broadcast(&m->changed);
    pthread_mutex_unlock(&m->lock);
}

static void *run(void *arg)
{
    start_migration_t *m = arg;
    migrate_gate_t gate = { may_apply, schema_ready, m };
    bindings_migrate(m->cfg, &gate);
    return NULL;
}

start_migration_t *start_migration_begin(const config_t *cfg)
{
    if (!cfg->database_url) return NULL;
    start_migration_t *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->cfg = cfg;
    m->scripts = -1;
    m->schema = -1;
    pthread_mutex_init(&m->lock, NULL);
    pthread_cond_init(&m->changed, NULL);
    if (pthread_create(&m->thread, NULL, run, m) != 0) {
        log_warn("migrate: no thread for the start-up migration; it runs after the scripts load");
        pthread_cond_destroy(&m->changed);
        pthread_mutex_destroy(&m->lock);
        free(m);
        return NULL;
    }
    return m;
}

int start_migration_verdict(start_migration_t *m, const config_t *cfg, int scripts_ok)
{
    if (!m) return cfg->database_url && scripts_ok ? bindings_migrate(cfg, NULL) : 0;
    pthread_mutex_lock(&m->lock);
    m->scripts = scripts_ok ? 1 : 0;
    pthread_cond_broadcast(&m->changed);
    while (m->schema < 0) pthread_cond_wait(&m->changed, &m->lock);
    int rc = m->schema;
    pthread_mutex_unlock(&m->lock);
    return rc;
}

void start_migration_end(start_migration_t *m)
{
    if (!m) return;
    pthread_join(m->thread, NULL);
    pthread_cond_destroy(&m->changed);
    pthread_mutex_destroy(&m->lock);
    free(m);
}
