/* test_snapshot: building, checking, publishing and swapping script generations — the logic
 * behind hot reload — on a scratch scripts directory. */
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../core/log.h"
#include "../core/metrics.h"
#include "reload.h"
#include "snapshot.h"
#include "test.h"
#include "worker.h"

static char root[256];
static config_t cfg;

static void write_file(const char *rel, const char *text)
{
    char path[512], dir[600];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    snprintf(dir, sizeof dir, "mkdir -p $(dirname %s)", path);
    if (system(dir) != 0) return;
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

static const char *routes_v(int version)
{
    static char text[512];
    snprintf(text, sizeof text,
             "local util = require \"lib.util\"\n"
             "return {\n"
             "  { \"GET\", \"/v\", function() return 200, { version = %d, twice = util.twice(%d) } end },\n"
             "  { \"POST\", \"/items/{id}\", function(req) return 201, req.params end, roles = { \"admin\" }, max_body = 4096 },\n"
             "}\n", version, version);
    return text;
}

/* Call route 1's handler in w's state; returns the `version` field it answers. */
static int call_v(worker_t *w)
{
    lua_State *L = w->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, w->handlers_ref);
    lua_rawgeti(L, -1, 1);
    lua_newtable(L);
    if (lua_pcall(L, 1, 2, 0) != 0) { lua_settop(L, 0); return -1; }
    lua_getfield(L, -1, "version");
    int v = (int)lua_tointeger(L, -1);
    lua_settop(L, 0);
    return v;
}

TEST(a_valid_tree_builds_with_routes_and_modules)
{
    char err[1024];
    snapshot_t *s = snapshot_build(&cfg, err, sizeof err);
    CHECK(s != NULL);
    if (!s) { printf("# %s\n", err); return; }
    CHECK_INT(s->nroutes, 2);
    CHECK(snapshot_module(s, "lib.util") != NULL);
    CHECK(snapshot_module(s, "services.product.routes") != NULL);
    CHECK(snapshot_asset(s, "services/product/openapi.json") != NULL);
    CHECK(s->openapi != NULL);
    CHECK_STR(s->routes[1].pattern, "/items/{id}");
    CHECK_INT(s->routes[1].auth, AUTH_REQUIRED);
    CHECK_INT(s->routes[1].nroles, 1);
    CHECK_STR(s->routes[1].roles[0], "admin");
    CHECK_INT(s->routes[1].max_body, 4096);
    snapshot_unref(s);
}

TEST(a_syntax_error_names_file_and_line)
{
    write_file("services/product/handlers.lua", "local x = \n  = 2\n");
    char err[1024];
    snapshot_t *s = snapshot_build(&cfg, err, sizeof err);
    CHECK(s == NULL);
    CHECK(strstr(err, "services/product/handlers.lua:2:") != NULL);
    unlink(strcat(strcpy(err, root), "/services/product/handlers.lua"));
}

TEST(a_bad_route_table_is_refused)
{
    write_file("services/product/routes.lua", "return { { \"GET\", \"/x\", \"not a function\" } }\n");
    char err[1024];
    CHECK(snapshot_build(&cfg, err, sizeof err) == NULL);
    CHECK(strstr(err, "route 1") != NULL);
    write_file("services/product/routes.lua", "return { { \"GET\", \"nope\", function() end } }\n");
    CHECK(snapshot_build(&cfg, err, sizeof err) == NULL);
    CHECK(strstr(err, "must start with '/'") != NULL);
    write_file("services/product/routes.lua", "error('boom at load')\n");
    CHECK(snapshot_build(&cfg, err, sizeof err) == NULL);
    CHECK(strstr(err, "routes.lua:1: boom at load") != NULL);
    write_file("services/product/routes.lua", "undeclared_global = 1\nreturn {}\n");
    snapshot_unref(snapshot_build(&cfg, err, sizeof err));   /* globals set while loading are allowed: the lock comes after */
    write_file("services/product/routes.lua", routes_v(1));
}

TEST(workers_swap_to_a_published_generation_and_keep_it_on_a_bad_one)
{
    CHECK_INT(reload_now(&cfg), 0);
    uint64_t g1 = snapshot_generation();
    char err[1024];
    worker_t *w = worker_new(0, "http", &cfg, NULL, err, sizeof err);
    CHECK(w != NULL);
    if (!w) { printf("# %s\n", err); return; }
    CHECK_INT(call_v(w), 1);

    write_file("services/product/routes.lua", routes_v(2));
    CHECK_INT(reload_now(&cfg), 0);
    CHECK(snapshot_generation() == g1 + 1);
    CHECK_INT(call_v(w), 1);          /* nothing changes until the worker is between requests */
    worker_maybe_reload(w);
    CHECK_INT(call_v(w), 2);

    write_file("services/product/routes.lua", "return {{ \"GET\", \"/v\", function( end }}\n");
    CHECK_INT(reload_now(&cfg), -1);
    CHECK(snapshot_generation() == g1 + 1);
    worker_maybe_reload(w);
    CHECK_INT(call_v(w), 2);

    buf_t b;
    buf_init(&b);
    metrics_render(&b);
    CHECK(strstr(b.data, "script_reload_errors_total 1\n") != NULL);
    CHECK(strstr(b.data, "script_reloads_total 2\n") != NULL);
    buf_free(&b);
    worker_free(w);
}

TEST(globals_are_locked_in_serving_states)
{
    write_file("services/product/routes.lua",
               "return {{ \"GET\", \"/v\", function() leak = 1; return 200 end }}\n");
    CHECK_INT(reload_now(&cfg), 0);
    char err[1024];
    worker_t *w = worker_new(0, "http", &cfg, NULL, err, sizeof err);
    lua_State *L = w->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, w->handlers_ref);
    lua_rawgeti(L, -1, 1);
    CHECK(lua_pcall(L, 0, 1, 0) != 0);
    CHECK(strstr(lua_tostring(L, -1), "assignment to undeclared global 'leak'") != NULL);
    lua_settop(L, 0);
    worker_free(w);
}

int main(void)
{
    snprintf(root, sizeof root, "/tmp/mercato-test-snapshot-%d", (int)getpid());
    log_init(LOG_ERROR, "test");
    setenv("SERVICE", "product", 1);
    setenv("SCRIPTS_DIR", root, 1);
    char err[256];
    config_load(&cfg, 1, err, sizeof err);
    write_file("lib/util.lua", "local M = {}\nfunction M.twice(x) return 2 * x end\nreturn M\n");
    write_file("services/product/routes.lua", routes_v(1));
    write_file("services/product/openapi.json", "{\"openapi\":\"3.1.0\"}");
    RUN(a_valid_tree_builds_with_routes_and_modules);
    RUN(a_syntax_error_names_file_and_line);
    RUN(a_bad_route_table_is_refused);
    RUN(workers_swap_to_a_published_generation_and_keep_it_on_a_bad_one);
    RUN(globals_are_locked_in_serving_states);
    snapshot_clear();
    metrics_shutdown();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", root);
    if (system(cmd) != 0) return 1;
    return test_done();
}
