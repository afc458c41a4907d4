/* snapshot: one generation of a service's scripts, built and checked whole before publishing.
 *
 * Building reads SCRIPTS_DIR/lib and SCRIPTS_DIR/services/<service> recursively, compiles every .lua
 * file to bytecode in a compile-only state, keeps every other file as an asset, then makes a
 * scratch worker state from the result, which runs the routes module and checks it. Only a
 * snapshot that passed all of this is published; a failed build leaves the old one serving. */
#include "snapshot.h"

#include <dirent.h>
#include <errno.h>
#include <lauxlib.h>
#include <lualib.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../core/buf.h"
#include "../core/metrics.h"
#include "worker.h"

#define MAX_ASSET_BYTES (4u << 20)

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static snapshot_t *g_current;
static _Atomic uint64_t g_generation;

/* ---------------------------------------------------------------------------------------- */

typedef struct {
    snapshot_t *s;
    lua_State *C;        /* compile-only state */
    int cap_mod, cap_asset;
    char *err;
    size_t errlen;
} build_t;

static int read_file(const char *path, char **data, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    buf_t b;
    buf_init(&b);
    char chunk[16384];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        buf_add(&b, chunk, n);
        if (b.len > MAX_ASSET_BYTES) break;
    }
    int bad = ferror(f) || b.failed || b.len > MAX_ASSET_BYTES;
    fclose(f);
    if (bad) { buf_free(&b); return -1; }
    *data = buf_take(&b, len);
    if (!*data) { *data = strdup(""); *len = 0; }
    return *data ? 0 : -1;
}

static int dump_writer(lua_State *L, const void *p, size_t sz, void *ud)
{
    (void)L;
    buf_add(ud, p, sz);
    return ((buf_t *)ud)->failed;
}

/* Module name for a relative path "lib/x/init.lua" → "lib.x" ; "a/b.lua" → "a.b". */
static char *module_name(const char *rel)
{
    size_t len = strlen(rel) - 4;   /* drop ".lua" */
    char *name = strndup(rel, len);
    if (!name) return NULL;
    for (char *p = name; *p; p++) if (*p == '/') *p = '.';
    if (len > 5 && strcmp(name + len - 5, ".init") == 0) name[len - 5] = 0;
    return name;
}

static int add_lua(build_t *b, const char *path, const char *rel)
{
    char *src;
    size_t len;
    if (read_file(path, &src, &len) < 0) {
        snprintf(b->err, b->errlen, "%s: cannot read: %s", path, strerror(errno ? errno : EIO));
        return -1;
    }
    char chunkname[2100];
    snprintf(chunkname, sizeof chunkname, "@%s", path);
    int rc = luaL_loadbuffer(b->C, src, len, chunkname);
    free(src);
    if (rc != 0) {
        snprintf(b->err, b->errlen, "%s", lua_tostring(b->C, -1));
        lua_pop(b->C, 1);
        return -1;
    }
    buf_t code;
    buf_init(&code);
    lua_dump(b->C, dump_writer, &code);
    lua_pop(b->C, 1);
    if (code.failed) { buf_free(&code); snprintf(b->err, b->errlen, "out of memory"); return -1; }

    snapshot_t *s = b->s;
    if (s->nmodules == b->cap_mod) {
        b->cap_mod = b->cap_mod ? b->cap_mod * 2 : 32;
        snapshot_module_t *m = realloc(s->modules, (size_t)b->cap_mod * sizeof *m);
        if (!m) { buf_free(&code); snprintf(b->err, b->errlen, "out of memory"); return -1; }
        s->modules = m;
    }
    snapshot_module_t *m = &s->modules[s->nmodules];
    m->name = module_name(rel);
    m->path = strdup(path);
    m->code = buf_take(&code, &m->len);
    if (!m->name || !m->path || !m->code) {
        free(m->name); free(m->path); free(m->code);
        snprintf(b->err, b->errlen, "out of memory");
        return -1;
    }
    s->nmodules++;
    return 0;
}

static int add_asset(build_t *b, const char *path, const char *rel)
{
    snapshot_t *s = b->s;
    if (s->nassets == b->cap_asset) {
        b->cap_asset = b->cap_asset ? b->cap_asset * 2 : 16;
        snapshot_asset_t *a = realloc(s->assets, (size_t)b->cap_asset * sizeof *a);
        if (!a) { snprintf(b->err, b->errlen, "out of memory"); return -1; }
        s->assets = a;
    }
    snapshot_asset_t *a = &s->assets[s->nassets];
    if (read_file(path, &a->data, &a->len) < 0) {
        snprintf(b->err, b->errlen, "%s: cannot read (or larger than %u bytes)", path, MAX_ASSET_BYTES);
        return -1;
    }
    a->name = strdup(rel);
    if (!a->name) { free(a->data); snprintf(b->err, b->errlen, "out of memory"); return -1; }
    s->nassets++;
    return 0;
}

/* Walk dir (path relative to the scripts root: rel) adding modules and assets. A missing
 * directory is not an error: a service may have no lib. */
static int walk(build_t *b, const char *root, const char *rel)
{
    char dirpath[2048];
    snprintf(dirpath, sizeof dirpath, "%s/%s", root, rel);
    DIR *d = opendir(dirpath);
    if (!d) return errno == ENOENT ? 0 : (snprintf(b->err, b->errlen, "%s: %s", dirpath, strerror(errno)), -1);
    struct dirent *e;
    int rc = 0;
    while (rc == 0 && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;   /* dot files, editor swap files */
        char path[2048], sub[1024];
        snprintf(sub, sizeof sub, "%s/%s", rel, e->d_name);
        snprintf(path, sizeof path, "%s/%s", root, sub);
        struct stat st;
        if (stat(path, &st) != 0) continue;   /* vanished mid-walk (an editor's rename) */
        size_t nlen = strlen(e->d_name);
        if (S_ISDIR(st.st_mode)) rc = walk(b, root, sub);
        else if (!S_ISREG(st.st_mode) || e->d_name[nlen - 1] == '~') continue;
        else if (nlen > 4 && strcmp(e->d_name + nlen - 4, ".lua") == 0) rc = add_lua(b, path, sub);
        else rc = add_asset(b, path, sub);
    }
    closedir(d);
    return rc;
}

static int cmp_module(const void *a, const void *b)
{
    return strcmp(((const snapshot_module_t *)a)->name, ((const snapshot_module_t *)b)->name);
}

static int cmp_asset(const void *a, const void *b)
{
    return strcmp(((const snapshot_asset_t *)a)->name, ((const snapshot_asset_t *)b)->name);
}

static void snapshot_free(snapshot_t *s)
{
    for (int i = 0; i < s->nmodules; i++) {
        free(s->modules[i].name);
        free(s->modules[i].path);
        free(s->modules[i].code);
    }
    free(s->modules);
    for (int i = 0; i < s->nassets; i++) {
        free(s->assets[i].name);
        free(s->assets[i].data);
    }
    free(s->assets);
    for (int i = 0; i < s->nroutes; i++) {
        free(s->routes[i].pattern);
        for (int k = 0; k < s->routes[i].nroles; k++) free(s->routes[i].roles[k]);
        free(s->routes[i].scope);
    }
    free(s->routes);
    router_free(s->router);
    free(s);
}

static int build_router(snapshot_t *s, char *err, size_t errlen)
{
    s->router = router_new();
    if (!s->router) { snprintf(err, errlen, "out of memory"); return -1; }
    for (int i = 0; i < s->nroutes; i++) {
        route_info_t *r = &s->routes[i];
        char e[256];
        if (router_add(s->router, r->method, r->pattern, e, sizeof e) != i) {
            snprintf(err, errlen, "services/%s/routes.lua: route %d: %s", s->cfg->service, i + 1, e);
            return -1;
        }
        r->metrics_slot = metrics_route_slot(r->method, r->pattern);
    }
    return 0;
}

snapshot_t *snapshot_build(const config_t *cfg, char *err, size_t errlen)
{
    snapshot_t *s = calloc(1, sizeof *s);
    if (!s) { snprintf(err, errlen, "out of memory"); return NULL; }
    atomic_init(&s->refs, 1);
    s->cfg = cfg;
    build_t b = { .s = s, .err = err, .errlen = errlen };
    b.C = luaL_newstate();
    if (!b.C) { free(s); snprintf(err, errlen, "out of memory"); return NULL; }

    char svc[256];
    snprintf(svc, sizeof svc, "services/%s", cfg->service ? cfg->service : "");
    int rc = walk(&b, cfg->scripts_dir, "lib");
    if (rc == 0 && cfg->service) rc = walk(&b, cfg->scripts_dir, svc);
    lua_close(b.C);
    if (rc != 0) { snapshot_free(s); return NULL; }
    if (s->nmodules) qsort(s->modules, (size_t)s->nmodules, sizeof *s->modules, cmp_module);
    if (s->nassets) qsort(s->assets, (size_t)s->nassets, sizeof *s->assets, cmp_asset);

    char oa[300];
    snprintf(oa, sizeof oa, "%s/openapi.json", svc);
    const snapshot_asset_t *a = snapshot_asset(s, oa);
    if (a) { s->openapi = a->data; s->openapi_len = a->len; }

    if (cfg->service) {
        char routes[300];
        snprintf(routes, sizeof routes, "services.%s.routes", cfg->service);
        if (!snapshot_module(s, routes)) {
            if (strcmp(cfg->service, "gateway") != 0) {
                snprintf(err, errlen, "%s/%s/routes.lua: not found", cfg->scripts_dir, svc);
                snapshot_free(s);
                return NULL;
            }
        } else {
            /* The check: run the routes module in a scratch state, collect the route table. */
            lua_State *L = worker_state_new(NULL, s, 1, err, errlen);
            if (!L || build_router(s, err, errlen) < 0) {
                if (L) lua_close(L);
                snapshot_free(s);
                return NULL;
            }
            lua_close(L);
        }
    }
    return s;
}

/* ---------------------------------------------------------------------------------------- */

void snapshot_ref(snapshot_t *s) { atomic_fetch_add(&s->refs, 1); }

void snapshot_unref(snapshot_t *s)
{
    if (s && atomic_fetch_sub(&s->refs, 1) == 1) snapshot_free(s);
}

snapshot_t *snapshot_current(void)
{
    pthread_mutex_lock(&g_lock);
    snapshot_t *s = g_current;
    if (s) snapshot_ref(s);
    pthread_mutex_unlock(&g_lock);
    return s;
}

void snapshot_publish(snapshot_t *s)
{
    pthread_mutex_lock(&g_lock);
    snapshot_t *old = g_current;
    s->generation = atomic_load(&g_generation) + 1;
    g_current = s;
    atomic_store(&g_generation, s->generation);
    pthread_mutex_unlock(&g_lock);
    snapshot_unref(old);
}

uint64_t snapshot_generation(void) { return atomic_load_explicit(&g_generation, memory_order_acquire); }

void snapshot_clear(void)
{
    pthread_mutex_lock(&g_lock);
    snapshot_t *old = g_current;
    g_current = NULL;
    pthread_mutex_unlock(&g_lock);
    snapshot_unref(old);
}

const snapshot_module_t *snapshot_module(const snapshot_t *s, const char *name)
{
    snapshot_module_t key = { .name = (char *)name };
    if (!s->nmodules) return NULL;
    return bsearch(&key, s->modules, (size_t)s->nmodules, sizeof key, cmp_module);
}

const snapshot_asset_t *snapshot_asset(const snapshot_t *s, const char *name)
{
    snapshot_asset_t key = { .name = (char *)name };
    if (!s->nassets) return NULL;
    return bsearch(&key, s->assets, (size_t)s->nassets, sizeof key, cmp_asset);
}
