/* main: `mercato` — serve the service named by SERVICE, or run a subcommand
 * (version, check, migrate, lua). */
#include <lauxlib.h>
#include <luajit.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bindings.h"
#include "config.h"
#include "quota.h"
#include "../core/log.h"
#include "../core/metrics.h"
#include "reload.h"
#include "runner.h"
#include "server.h"
#include "snapshot.h"
#include "start_migration.h"
#include "worker.h"

#ifndef MERCATO_VERSION
#define MERCATO_VERSION "0.1.0"
#endif

static int usage(void)
{
    fprintf(stderr,
            "usage: SERVICE=<name> mercato [command]\n"
            "  (no command)  serve the service over HTTP\n"
            "  check         compile and check the service's scripts; file:line on error\n"
            "  migrate       apply the service's database migrations, then exit\n"
            "  lua FILE ...  run a Lua script with every binding loaded (SERVICE optional)\n"
            "  version       print the version\n"
            "services: %s\n", config_service_list());
    return 2;
}

/* Build and publish the first generation; prints file:line on failure. */
static int load_scripts(const config_t *cfg)
{
    char err[2048];
    snapshot_t *s = snapshot_build(cfg, err, sizeof err);
    if (!s) {
        fprintf(stderr, "mercato: scripts of service '%s' failed to load:\n%s\n", cfg->service ? cfg->service : "-", err);
        return -1;
    }
    snapshot_publish(s);
    return 0;
}

/* services/<name>/requires.lua lists the environment the service cannot start without:
 *   return { "DATABASE_URL", "JWT_PRIVATE_KEY_FILE", { "JWKS_URL", "JWT_PUBLIC_KEY_FILE" } }
 * (a nested list: any one of them). Returns 0, or -1 after naming what is missing. */
static int check_required_env(const config_t *cfg)
{
    snapshot_t *s = snapshot_current();
    char name[300];
    snprintf(name, sizeof name, "services.%s.requires", cfg->service);
    const snapshot_module_t *m = s ? snapshot_module(s, name) : NULL;
    int rc = 0;
    if (m) {
        lua_State *L = luaL_newstate();
        if (!L || luaL_loadbuffer(L, m->code, m->len, m->path) != 0 || lua_pcall(L, 0, 1, 0) != 0 || !lua_istable(L, -1)) {
            fprintf(stderr, "mercato: %s must return a list of variable names\n", m->path);
            rc = -1;
        } else {
            int n = (int)lua_objlen(L, -1);
            for (int i = 1; i <= n; i++) {
                lua_rawgeti(L, -1, i);
                int k = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 1, found = 0;
                char names[256] = "";
                for (int j = 1; j <= k; j++) {
                    if (lua_istable(L, -1)) lua_rawgeti(L, -1, j); else lua_pushvalue(L, -1);
                    const char *v = lua_tostring(L, -1);
                    const char *val = v ? getenv(v) : NULL;
                    if (val && *val) found = 1;
                    if (v) snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", j > 1 ? " or " : "", v);
                    lua_pop(L, 1);
                }
                lua_pop(L, 1);
                if (!found) {
                    fprintf(stderr, "mercato: %s needs %s (a required variable is not set)\n", cfg->service, names);
                    rc = -1;
                }
            }
        }
        if (L) lua_close(L);
    }
    snapshot_unref(s);
    return rc;
}

static void teardown(void)
{
    snapshot_clear();
    bindings_global_cleanup();
    metrics_shutdown();
}

static int cmd_check(const config_t *cfg)
{
    if (load_scripts(cfg) < 0) return 1;
    snapshot_t *s = snapshot_current();
    printf("%s: %d modules, %d routes: ok\n", cfg->service, s->nmodules, s->nroutes);
    snapshot_unref(s);
    return 0;
}

/* `mercato lua FILE args...`: the script runs in a worker state, `arg` holds its arguments,
 * and a number it returns is the exit status. */
static int cmd_lua(const config_t *cfg, int argc, char **argv)
{
    if (argc < 1) return usage();
    if (load_scripts(cfg) < 0) return 1;
    char err[2048];
    worker_t *w = worker_new(0, "cli", cfg, NULL, err, sizeof err);
    if (!w) { fprintf(stderr, "mercato lua: %s\n", err); return 1; }
    lua_State *L = w->L;
    /* The locked _G would refuse scripts' globals (busted defines some): unlock for scripts. */
    lua_pushvalue(L, LUA_GLOBALSINDEX);
    lua_pushnil(L);
    lua_setmetatable(L, -2);
    lua_pop(L, 1);
    lua_createtable(L, argc, 1);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i);
    }
    lua_setglobal(L, "arg");
    int rc = 0;
    if (luaL_loadfile(L, argv[0]) != 0) {
        fprintf(stderr, "mercato lua: %s\n", lua_tostring(L, -1));
        rc = 1;
    } else {
        for (int i = 1; i < argc; i++) lua_pushstring(L, argv[i]);
        if (worker_pcall(L, w->traceback_ref, argc - 1, 1) != 0) {
            /* error() without a message is how busted exits non-zero under Lua 5.1 */
            if (!strstr(lua_tostring(L, -1), "error object: nil")) fprintf(stderr, "mercato lua: %s\n", lua_tostring(L, -1));
            rc = 1;
        } else if (lua_type(L, -1) == LUA_TNUMBER) {
            rc = (int)lua_tointeger(L, -1);
        }
    }
    worker_free(w);
    return rc;
}

#define TRIM_CHECK_S 5         /* how often main looks at the connections that went */
#define TRIM_AFTER_CLOSED 64   /* this many closed since its last look: trim the heap */

static int cmd_serve(const config_t *cfg)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);   /* threads inherit it; main waits below */

    /* A service with a database brings its schema up to date before it takes traffic; the
     * migration connects and checks while the scripts build, and applies only if they load. */
    start_migration_t *mig = start_migration_begin(cfg);
    int scripts_ok = load_scripts(cfg) == 0 && check_required_env(cfg) == 0;
    if (start_migration_verdict(mig, cfg, scripts_ok) != 0 || !scripts_ok) {
        start_migration_end(mig);
        return 1;
    }
    char err[1024];
    reloader_t *rl = NULL;
    if (cfg->hot_reload && !(rl = reload_start(cfg, err, sizeof err))) {
        fprintf(stderr, "mercato: %s\n", err);
        start_migration_end(mig);
        return 1;
    }
    server_t *srv = server_start(cfg, err, sizeof err);
    if (!srv) {
        fprintf(stderr, "mercato: %s\n", err);
        start_migration_end(mig);
        reload_stop(rl);
        return 1;
    }
    runners_t *runners = runners_start(cfg, err, sizeof err);
    start_migration_end(mig);
    if (!runners) {
        fprintf(stderr, "mercato: %s\n", err);
        server_stop(srv);
        reload_stop(rl);
        return 1;
    }
    log_info("%s listening on %s:%d with %d workers (version %s)", cfg->service, cfg->listen_addr, cfg->port,
             cfg->workers, MERCATO_VERSION);
    /* Main waits for SIGTERM or SIGINT. Meanwhile, once a crowd of connections has gone, it
     * hands the heap's free pages back to the kernel: connection buffers are malloc'd, and 256
     * connections left ~4 MB resident for good. */
    int sig;
    for (;;) {
        struct timespec tick = { .tv_sec = TRIM_CHECK_S };
        sig = sigtimedwait(&set, NULL, &tick);
        if (sig > 0) break;
        if (quota_connections_settled() >= TRIM_AFTER_CLOSED) malloc_trim(0);
    }
    log_info("%s received, draining", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    server_stop(srv);
    runners_stop(runners);
    reload_stop(rl);
    log_info("stopped");
    return 0;
}

int main(int argc, char **argv)
{
    const char *cmd = argc > 1 ? argv[1] : NULL;
    if (cmd && (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0)) {
        printf("mercato %s (%s)\n", MERCATO_VERSION, LUAJIT_VERSION);
        return 0;
    }
    if (cmd && (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0)) return usage(), 0;
    if (cmd && strcmp(cmd, "check") != 0 && strcmp(cmd, "migrate") != 0 && strcmp(cmd, "lua") != 0) {
        fprintf(stderr, "mercato: unknown command '%s'\n", cmd);
        return usage();
    }
    int is_lua = cmd && strcmp(cmd, "lua") == 0;

    signal(SIGPIPE, SIG_IGN);
    quota_raise_nofile();   /* connections are descriptors: the service's, and `mercato lua` load specs' */
    config_t cfg;
    char err[512];
    int rc = config_load(&cfg, !is_lua, err, sizeof err);
    if (rc != 0) {
        fprintf(stderr, "mercato: %s\n", err);
        return rc;
    }
    log_init(cfg.log_level, cfg.service ? cfg.service : "mercato");
    if (bindings_global_init() != 0) {
        fprintf(stderr, "mercato: cannot initialise the client libraries\n");
        return 1;
    }
    if (!cmd) rc = cmd_serve(&cfg);
    else if (strcmp(cmd, "check") == 0) rc = cmd_check(&cfg);
    else if (strcmp(cmd, "migrate") == 0) rc = bindings_migrate(&cfg, NULL);
    else rc = cmd_lua(&cfg, argc - 2, argv + 2);
    teardown();
    return rc;
}
