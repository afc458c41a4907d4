/* runner: background threads running the service's Lua outside requests.
 *
 *   -- services/<name>/consumers.lua: called again and again; each call should block at
 *   -- most about a second (queue.next with a timeout) so that stop and reload are prompt.
 *   return { { name = "order-events", loop = function() ... end } }
 *
 *   -- services/<name>/jobs.lua: called every `every` seconds, the first time at start-up.
 *   return { { name = "expire-reservations", every = 30, run = function() ... end } }
 *
 * Each entry gets a thread with its own worker (Lua state, connections), so nothing is shared
 * with the HTTP threads. A call that raises is logged, counted, and retried after a pause. */
#include "runner.h"

#include <lauxlib.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../core/log.h"
#include "../core/metrics.h"
#include "snapshot.h"
#include "worker.h"

#define ERROR_PAUSE_MS 1000

typedef struct runner {
    struct runners *set;
    pthread_t thread;
    char module[128];     /* "services.order.consumers" */
    char name[96];
    int is_job;
    double every;         /* jobs: seconds between runs */
    metric_cell_t *runs, *errors;
} runner_t;

struct runners {
    const config_t *cfg;
    int n;
    runner_t *r;
    _Atomic int stopping;
    pthread_mutex_t lock;
    pthread_cond_t cond;
};

/* Sleep up to ms, returning early (1) when a stop is requested. */
static int pause_ms(runners_t *set, long ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
    pthread_mutex_lock(&set->lock);
    while (!atomic_load(&set->stopping))
        if (pthread_cond_timedwait(&set->cond, &set->lock, &ts) != 0) break;
    pthread_mutex_unlock(&set->lock);
    return atomic_load(&set->stopping);
}

/* Push the function of this runner's entry from the current state, or return -1. */
static int push_entry_fn(runner_t *r, lua_State *L, int traceback_ref)
{
    lua_getglobal(L, "require");
    lua_pushstring(L, r->module);
    if (worker_pcall(L, traceback_ref, 1, 1) != 0) {
        log_error("runner %s: cannot load %s: %s", r->name, r->module, lua_tostring(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    int n = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 0;
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        lua_getfield(L, -1, "name");
        int match = lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), r->name) == 0;
        lua_pop(L, 1);
        if (match) {
            lua_getfield(L, -1, r->is_job ? "run" : "loop");
            lua_replace(L, -3);   /* keep the function where the list was */
            lua_pop(L, 1);
            if (lua_isfunction(L, -1)) return 0;
            lua_pop(L, 1);
            log_error("runner %s: its `%s` is not a function", r->name, r->is_job ? "run" : "loop");
            return -1;
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    log_warn("runner %s: no longer declared in %s; idle until it is", r->name, r->module);
    return -1;
}

static void *runner_main(void *arg)
{
    runner_t *r = arg;
    runners_t *set = r->set;
    char err[1024];
    worker_t *w = worker_new(0, r->is_job ? "job" : "consumer", set->cfg, NULL, err, sizeof err);
    if (!w) {
        log_error("runner %s: cannot start: %s", r->name, err);
        return NULL;
    }
    struct timespec last;
    clock_gettime(CLOCK_MONOTONIC, &last);
    int first = 1;
    while (!atomic_load(&set->stopping)) {
        if (r->is_job && !first) {
            if (pause_ms(set, (long)(r->every * 1000))) break;
        }
        first = 0;
        worker_maybe_reload(w);
        lua_State *L = w->L;
        lua_settop(L, 0);
        if (push_entry_fn(r, L, w->traceback_ref) != 0) {
            if (pause_ms(set, ERROR_PAUSE_MS)) break;
            continue;
        }
        metrics_cell_add(r->runs, 1);
        if (worker_pcall(L, w->traceback_ref, 0, 0) != 0) {
            char esc[2048], fields[2300];
            const char *msg = lua_tostring(L, -1);
            log_json_escape(esc, sizeof esc, msg ? msg : "?", msg ? strlen(msg) : 1);
            snprintf(fields, sizeof fields, "\"runner\":\"%s\",\"error\":\"%s\"", r->name, esc);
            log_line(LOG_ERROR, fields, "background runner raised an error");
            metrics_cell_add(r->errors, 1);
            lua_settop(L, 0);
            if (!r->is_job && pause_ms(set, ERROR_PAUSE_MS)) break;
        }
        lua_settop(L, 0);
    }
    worker_free(w);
    return NULL;
}

/* Read the entries of one module (consumers or jobs) from a scratch worker into set. */
static int read_entries(runners_t *set, worker_t *w, const char *kind, int is_job, char *err, size_t errlen)
{
    char module[128];
    snprintf(module, sizeof module, "services.%s.%s", set->cfg->service, kind);
    if (!snapshot_module(w->snap, module)) return 0;
    lua_State *L = w->L;
    lua_getglobal(L, "require");
    lua_pushstring(L, module);
    if (worker_pcall(L, w->traceback_ref, 1, 1) != 0) {
        snprintf(err, errlen, "%s", lua_tostring(L, -1));
        lua_settop(L, 0);
        return -1;
    }
    if (!lua_istable(L, -1)) {
        snprintf(err, errlen, "%s must return a list", module);
        lua_settop(L, 0);
        return -1;
    }
    int n = (int)lua_objlen(L, -1);
    runner_t *grown = realloc(set->r, (size_t)(set->n + n) * sizeof *grown);
    if (!grown && n) { snprintf(err, errlen, "out of memory"); lua_settop(L, 0); return -1; }
    set->r = grown;
    for (int i = 1; i <= n; i++) {
        runner_t *r = &set->r[set->n];
        memset(r, 0, sizeof *r);
        r->set = set;
        r->is_job = is_job;
        snprintf(r->module, sizeof r->module, "%s", module);
        lua_rawgeti(L, -1, i);
        lua_getfield(L, -1, "name");
        lua_getfield(L, -2, is_job ? "run" : "loop");
        lua_getfield(L, -3, "every");
        int ok = lua_type(L, -3) == LUA_TSTRING && lua_isfunction(L, -2) && (!is_job || lua_tonumber(L, -1) > 0);
        if (ok) {
            snprintf(r->name, sizeof r->name, "%s", lua_tostring(L, -3));
            r->every = lua_tonumber(L, -1);
        }
        lua_pop(L, 4);
        if (!ok) {
            snprintf(err, errlen, "%s: entry %d needs a name and %s", module, i,
                     is_job ? "`every` (seconds > 0) and a `run` function" : "a `loop` function");
            lua_settop(L, 0);
            return -1;
        }
        const char *label[] = { r->name };
        const char *names[] = { "runner" };
        char e[128];
        metric_family_t *runs = metrics_family("runner_calls_total", "Calls of background runners (consumers and jobs).", METRIC_COUNTER, 1, names, 0, NULL, e, sizeof e);
        metric_family_t *errs = metrics_family("runner_errors_total", "Background runner calls that raised an error.", METRIC_COUNTER, 1, names, 0, NULL, e, sizeof e);
        r->runs = runs ? metrics_cell(runs, label) : NULL;
        r->errors = errs ? metrics_cell(errs, label) : NULL;
        set->n++;
    }
    lua_settop(L, 0);
    return 0;
}

runners_t *runners_start(const config_t *cfg, char *err, size_t errlen)
{
    runners_t *set = calloc(1, sizeof *set);
    if (!set) { snprintf(err, errlen, "out of memory"); return NULL; }
    set->cfg = cfg;
    pthread_mutex_init(&set->lock, NULL);
    pthread_cond_init(&set->cond, NULL);
    worker_t *w = worker_new(0, "cli", cfg, NULL, err, errlen);
    if (!w) { runners_stop(set); return NULL; }
    int rc = read_entries(set, w, "consumers", 0, err, errlen);
    if (rc == 0) rc = read_entries(set, w, "jobs", 1, err, errlen);
    worker_free(w);
    if (rc != 0) { set->n = 0; runners_stop(set); return NULL; }
    for (int i = 0; i < set->n; i++) {
        if (pthread_create(&set->r[i].thread, NULL, runner_main, &set->r[i]) != 0) {
            snprintf(err, errlen, "cannot start runner %s", set->r[i].name);
            set->n = i;
            runners_stop(set);
            return NULL;
        }
        log_info("runner %s started (%s)", set->r[i].name, set->r[i].is_job ? "job" : "consumer");
    }
    return set;
}

void runners_stop(runners_t *set)
{
    if (!set) return;
    pthread_mutex_lock(&set->lock);
    atomic_store(&set->stopping, 1);
    pthread_cond_broadcast(&set->cond);
    pthread_mutex_unlock(&set->lock);
    for (int i = 0; i < set->n; i++) pthread_join(set->r[i].thread, NULL);
    free(set->r);
    pthread_mutex_destroy(&set->lock);
    pthread_cond_destroy(&set->cond);
    free(set);
}
