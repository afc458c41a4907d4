/* db_migrate: `mercato migrate` and the start-up migration of `mercato` serve — apply
 * SCRIPTS_DIR/services/<service>/migrations/NNN_name.sql in numeric order, each file in its
 * own transaction, under a session advisory lock (replicas starting together wait for each
 * other), recorded in schema_migrations with the file's SHA-256. An applied file that has
 * changed stops everything: write a new migration instead of editing an old one. At start-up
 * it runs beside the script build (a migrate_gate_t): it connects and checks meanwhile, and
 * applies pending files only once the scripts have loaded. */
#include <stdarg.h>
#include <dirent.h>
#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "../host/bindings.h"
#include "../host/config.h"
#include "../core/log.h"
#include "db.h"

/* pg_advisory_lock(MIGRATE_LOCK_KEY, hashtext(service)): 'merc' */
#define MIGRATE_LOCK_KEY "1835365987"

typedef struct migration {
    long long version;
    char file[256];            /* "001_products.sql" */
    char *sql;                 /* the file's bytes, NUL-terminated (owned) */
    char sum[65];              /* hex SHA-256 of the bytes */
} migration_t;

typedef struct migration_set {
    migration_t *m;            /* sorted by version (owned) */
    int n;
} migration_set_t;

static void set_free(migration_set_t *s)
{
    for (int i = 0; i < s->n; i++) free(s->m[i].sql);
    free(s->m);
    s->m = NULL;
    s->n = 0;
}

/* Whether name is NNN_name.sql; *version filled. */
static int migration_name(const char *name, long long *version)
{
    size_t digits = strspn(name, "0123456789"), len = strlen(name);
    if (digits == 0 || digits > 15 || name[digits] != '_' || len < digits + 6) return 0;
    if (strcmp(name + len - 4, ".sql") != 0) return 0;
    *version = strtoll(name, NULL, 10);
    return 1;
}

static int by_version(const void *a, const void *b)
{
    long long x = ((const migration_t *)a)->version, y = ((const migration_t *)b)->version;
    return (x > y) - (x < y);
}

/* Read a file and its SHA-256. 0, or -1 with err. */
static int read_migration(const char *dir, migration_t *m, char *err, size_t errlen)
{
    char path[1536];
    snprintf(path, sizeof path, "%s/%s", dir, m->file);
    FILE *f = fopen(path, "rb");
    if (!f) { snprintf(err, errlen, "%s: %s", path, strerror(errno)); return -1; }
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += got;
        if (cap - len - 1 == 0) {
            char *bigger = realloc(buf, cap * 2);
            if (!bigger) { free(buf); buf = NULL; break; }
            buf = bigger;
            cap *= 2;
        }
    }
    int failed = ferror(f);
    fclose(f);
    if (!buf || failed) { free(buf); snprintf(err, errlen, "%s: cannot read the file", path); return -1; }
    buf[len] = 0;
    if (strlen(buf) != len) { free(buf); snprintf(err, errlen, "%s: contains a NUL byte", path); return -1; }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!EVP_Digest(buf, len, md, &mdlen, EVP_sha256(), NULL)) { free(buf); snprintf(err, errlen, "sha256 failed"); return -1; }
    for (unsigned i = 0; i < mdlen && i < 32; i++) snprintf(m->sum + (size_t)i * 2, 3, "%02x", md[i]);
    m->sql = buf;
    return 0;
}

/* The migration files of dir, sorted. 0, or -1 with err (bad name, duplicate version). */
static int list_migrations(const char *dir, migration_set_t *s, char *err, size_t errlen)
{
    DIR *d = opendir(dir);
    if (!d) { snprintf(err, errlen, "%s: %s", dir, strerror(errno)); return -1; }
    int cap = 0, rc = 0;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d))) {
        long long version;
        size_t len = strlen(e->d_name);
        if (e->d_name[0] == '.' || len < 4 || strcmp(e->d_name + len - 4, ".sql") != 0) continue;
        if (!migration_name(e->d_name, &version) || len >= sizeof s->m[0].file) {
            snprintf(err, errlen, "%s/%s: a migration is named NNN_name.sql", dir, e->d_name);
            rc = -1;
            break;
        }
        if (s->n == cap) {
            cap = cap ? cap * 2 : 16;
            migration_t *bigger = realloc(s->m, (size_t)cap * sizeof *bigger);
            if (!bigger) { snprintf(err, errlen, "out of memory"); rc = -1; break; }
            s->m = bigger;
        }
        migration_t *m = &s->m[s->n];
        memset(m, 0, sizeof *m);
        m->version = version;
        snprintf(m->file, sizeof m->file, "%s", e->d_name);
        if (read_migration(dir, m, err, errlen) < 0) { rc = -1; break; }
        s->n++;
    }
    closedir(d);
    if (rc < 0) return -1;
    if (s->n > 1) qsort(s->m, (size_t)s->n, sizeof *s->m, by_version);
    for (int i = 1; i < s->n; i++)
        if (s->m[i].version == s->m[i - 1].version) {
            snprintf(err, errlen, "%s: %s and %s share version %lld", dir, s->m[i - 1].file, s->m[i].file, s->m[i].version);
            return -1;
        }
    return 0;
}

/* The line of a 1-based character position in sql, for error messages. */
static int line_of(const char *sql, int position)
{
    int line = 1;
    for (int i = 0; i < position - 1 && sql[i]; i++) line += sql[i] == '\n';
    return line;
}

static double ms_since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) * 1e3 + (double)(t.tv_nsec - t0->tv_nsec) / 1e6;
}

/* Say why migrating stopped, on stderr and in the log; returns the exit status 1. */
__attribute__((format(printf, 2, 3))) static int refuse(const char *service, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0) snprintf(msg, sizeof msg, "%s", fmt);
    fprintf(stderr, "mercato migrate: %s: %s\n", service, msg);
    log_error("migrate: %s", msg);
    return 1;
}

/* Apply what is pending on an open session holding the lock, once the gate (if any) lets it.
 * The exit status. */
static int apply(db_conn_t *c, const char *service, const char *dir, migration_set_t *set, const migrate_gate_t *gate)
{
    db_error_t err;
    if (db_conn_command(c, "CREATE TABLE IF NOT EXISTS schema_migrations ("
                           " version bigint PRIMARY KEY, name text NOT NULL,"
                           " applied_at timestamptz NOT NULL DEFAULT now(), checksum text NOT NULL)", &err) < 0)
        return refuse(service, "cannot create schema_migrations: %s", err.msg);
    static const char list_sql[] = "SELECT version::text, name, checksum FROM schema_migrations ORDER BY version";
    PGresult *applied = db_conn_query(c, list_sql, sizeof list_sql - 1, 0, NULL, &err);
    if (!applied) return refuse(service, "cannot read schema_migrations: %s", err.msg);

    /* Every applied file must be unchanged before anything new runs. */
    int done = 0, rc = 0;
    for (int i = 0; i < set->n && rc == 0; i++) {
        char version[32];
        snprintf(version, sizeof version, "%lld", set->m[i].version);
        for (int r = 0; r < PQntuples(applied); r++) {
            if (strcmp(PQgetvalue(applied, r, 0), version) != 0) continue;
            if (strcmp(PQgetvalue(applied, r, 2), set->m[i].sum) != 0) {
                rc = refuse(service, "%s/%s was changed after it was applied (checksum differs); "
                            "restore it and add the change as a new migration", dir, set->m[i].file);
            }
            set->m[i].version = -set->m[i].version - 1;   /* mark as applied */
            done++;
            break;
        }
    }
    PQclear(applied);
    if (rc) return rc;
    if (done < set->n && gate && !gate->may_apply(gate->ctx)) {
        log_warn("migrate: %s: %d pending migration(s) not applied: the scripts did not load", service, set->n - done);
        return 1;
    }

    int count = 0;
    for (int i = 0; i < set->n; i++) {
        migration_t *m = &set->m[i];
        if (m->version < 0) continue;
        struct timespec t0;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        if (db_conn_command(c, "BEGIN", &err) < 0) return refuse(service, "%s: BEGIN failed: %s", m->file, err.msg);
        if (db_conn_command(c, m->sql, &err) < 0) {
            db_error_t ignored;
            db_conn_command(c, "ROLLBACK", &ignored);
            char line[24] = "";
            if (err.position) snprintf(line, sizeof line, ":%d", line_of(m->sql, err.position));
            return refuse(service, "%s/%s%s: %s (nothing of it was applied)", dir, m->file, line, err.msg);
        }
        if (PQtransactionStatus(c->pg) != PQTRANS_INTRANS)
            return refuse(service, "%s: a migration must not BEGIN, COMMIT or ROLLBACK itself", m->file);
        static const char insert_sql[] = "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)";
        char version[32];
        snprintf(version, sizeof version, "%lld", m->version);
        const char *values[] = { version, m->file, m->sum };
        PGresult *res = db_conn_query(c, insert_sql, sizeof insert_sql - 1, 3, values, &err);
        if (!res) {
            db_error_t ignored;
            db_conn_command(c, "ROLLBACK", &ignored);
            return refuse(service, "%s: cannot record it: %s", m->file, err.msg);
        }
        PQclear(res);
        if (db_conn_command(c, "COMMIT", &err) < 0) return refuse(service, "%s: COMMIT failed: %s", m->file, err.msg);
        log_info("migrate: applied %s in %.1f ms", m->file, ms_since(&t0));
        count++;
    }
    log_info("migrate: %s: %d applied, %d already up to date", service, count, done);
    return 0;
}

/* The most connections this process may hold against what the server has left; a warning
 * only (connections are opened as load needs them, and a refused one is a 503, not a crash). */
static void check_connection_budget(db_conn_t *c, const config_t *cfg)
{
    int workers = cfg->workers > 0 ? cfg->workers : 1;
    int per_thread = db_pool_per_thread(workers);
    int most = per_thread * workers + workers;   /* the pools, and each worker's own blocking one */
    static const char sql[] =
        "SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int"
        " - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int AS free";
    db_error_t e;
    PGresult *res = db_conn_query(c, sql, sizeof sql - 1, 0, NULL, &e);
    if (!res) return;
    int left = PQntuples(res) == 1 ? atoi(PQgetvalue(res, 0, 0)) + 1 : most;   /* + this session */
    PQclear(res);
    if (most > left)
        log_warn("db: this process may open %d PostgreSQL connections (DB_POOL_SIZE %d across %d workers, plus one "
                 "per worker and per runner) but the server has %d left: lower DB_POOL_SIZE or raise max_connections",
                 most, per_thread * workers, workers, left);
    else
        log_info("db: at most %d PostgreSQL connections for the handlers (%d per worker thread), plus one per worker and runner; the server has %d left",
                 per_thread * workers, per_thread, left);
}

/* The gate learns the schema's verdict once, whichever way db_migrate ends. */
static int schema_ready(const migrate_gate_t *gate, int *told, int rc)
{
    if (gate && !*told) gate->schema_ready(gate->ctx, rc);
    *told = 1;
    return rc;
}

static int migrate(const config_t *cfg, const migrate_gate_t *gate, int *told)
{
    if (!cfg->service) return 0;
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/services/%s/migrations", cfg->scripts_dir, cfg->service);
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        log_debug("migrate: %s does not exist: nothing to apply", dir);
        return 0;
    }
    if (!cfg->database_url || !*cfg->database_url)
        return refuse(cfg->service, "%s has migrations but DATABASE_URL is not set", dir);

    migration_set_t set = { 0 };
    char err[1600];
    if (list_migrations(dir, &set, err, sizeof err) < 0) {
        set_free(&set);
        return refuse(cfg->service, "%s", err);
    }
    db_conn_t *c = calloc(1, sizeof *c);
    if (!c) { set_free(&set); return refuse(cfg->service, "out of memory"); }
    c->url = cfg->database_url;
    c->app_name = "migrate";
    c->timeout_ms = 0;   /* a migration may take long; the lock wait must not time out either */

    db_error_t e;
    int rc;
    if (db_conn_command(c, "SET client_min_messages = warning", &e) < 0) {
        rc = refuse(cfg->service, "cannot connect: %s", e.msg);
    } else {
        /* The session holds the lock: from here on the connection must never be remade. */
        c->tx_depth = 1;
        static const char lock_sql[] = "SELECT pg_advisory_lock(" MIGRATE_LOCK_KEY ", hashtext($1))";
        const char *values[] = { cfg->service };
        PGresult *res = db_conn_query(c, lock_sql, sizeof lock_sql - 1, 1, values, &e);
        if (!res) {
            rc = refuse(cfg->service, "cannot take the migration lock: %s", e.msg);
        } else {
            PQclear(res);
            rc = schema_ready(gate, told, apply(c, cfg->service, dir, &set, gate));
            if (rc == 0) check_connection_budget(c, cfg);   /* a warning only: after the verdict */
        }
        c->tx_depth = 0;
    }
    db_conn_close(c);   /* ends the session, which releases the advisory lock */
    free(c);
    set_free(&set);
    return rc;
}

int db_migrate(const config_t *cfg, const migrate_gate_t *gate)
{
    int told = 0;
    return schema_ready(gate, &told, migrate(cfg, gate, &told));
}
