/* s3: object storage for Lua (`require "s3"`), S3-compatible or local disk (bindings/s3.h).
 *
 *   local ok, err, code = s3.put("products/<id>/<uuid>.png", bytes, "image/png")
 *   local bytes, ctype = s3.get(key)      -- bare nil when there is no such object
 *   local ok, err, code = s3.delete(key)  -- true also when it was not there
 *   s3.url(key), s3.backend()             -- "https://..." or "/images/<key>"; "s3" | "disk"
 *
 * Misuse (a key that is not a string) raises; a key outside the allowed shape returns nil,
 * message, "invalid" (put, delete) or a bare nil (get: no such object can exist); store
 * failures return nil, message, code, http_status with code unavailable or timeout — a 403
 * (bad credentials, a wrong signature) is "unavailable": the service cannot reach its store. */
#include "s3.h"

#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <openssl/evp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../host/bindings.h"
#include "../host/config.h"
#include "../core/log.h"
#include "../host/worker.h"
#include "../core/httpc.h"
#include "../host/request.h"

static s3_config_t g_cfg;   /* read once by s3_global_init, then only read */

/* ---- configuration and keys ---------------------------------------------------------------- */

static const char *env(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

static int copy_env(char *dst, size_t cap, const char *name, const char *def, char *err, size_t errlen)
{
    const char *v = env(name);
    if (!v) v = def;
    if (strlen(v) >= cap) {
        snprintf(err, errlen, "%s is too long (at most %zu characters)", name, cap - 1);
        return -1;
    }
    snprintf(dst, cap, "%s", v);
    return 0;
}

static long env_ms(const char *name, long def)
{
    const char *v = env(name);
    if (!v) return def;
    char *end;
    long n = strtol(v, &end, 10);
    return *end || n <= 0 ? def : n;
}

int s3_config_load(s3_config_t *cfg, char *err, size_t errlen)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->timeout_ms = env_ms("S3_TIMEOUT_MS", 10000);
    cfg->connect_ms = env_ms("S3_CONNECT_TIMEOUT_MS", 2000);
    cfg->max_object = (size_t)env_ms("S3_MAX_OBJECT_BYTES", 16L << 20);
    if (copy_env(cfg->blob_dir, sizeof cfg->blob_dir, "BLOB_DIR", ".run/blobs", err, errlen) < 0) return -1;
    if (!env("S3_BUCKET")) return 0;
    cfg->enabled = 1;
    if (copy_env(cfg->bucket, sizeof cfg->bucket, "S3_BUCKET", "", err, errlen) < 0 ||
        copy_env(cfg->region, sizeof cfg->region, "S3_REGION", "us-east-1", err, errlen) < 0 ||
        copy_env(cfg->access_key, sizeof cfg->access_key, "S3_ACCESS_KEY", "", err, errlen) < 0 ||
        copy_env(cfg->secret_key, sizeof cfg->secret_key, "S3_SECRET_KEY", "", err, errlen) < 0 ||
        copy_env(cfg->public_url, sizeof cfg->public_url, "S3_PUBLIC_URL", "", err, errlen) < 0)
        return -1;
    if (!cfg->access_key[0] || !cfg->secret_key[0]) {
        snprintf(err, errlen, "S3_BUCKET is set but %s is missing", cfg->access_key[0] ? "S3_SECRET_KEY" : "S3_ACCESS_KEY");
        return -1;
    }
    for (const char *p = cfg->bucket; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' || *p == '.')) {
            snprintf(err, errlen, "S3_BUCKET must be a DNS-style bucket name (a-z, 0-9, '-', '.')");
            return -1;
        }
    const char *ep = env("S3_ENDPOINT");
    if (ep) {
        if (strncmp(ep, "http://", 7) != 0 && strncmp(ep, "https://", 8) != 0) {
            snprintf(err, errlen, "S3_ENDPOINT must start with http:// or https://");
            return -1;
        }
        if (copy_env(cfg->endpoint, sizeof cfg->endpoint, "S3_ENDPOINT", "", err, errlen) < 0) return -1;
    } else {
        snprintf(cfg->endpoint, sizeof cfg->endpoint, "https://s3.%s.amazonaws.com", cfg->region);
    }
    size_t n = strlen(cfg->endpoint);
    while (n > 0 && cfg->endpoint[n - 1] == '/') cfg->endpoint[--n] = 0;
    const char *ps = env("S3_FORCE_PATH_STYLE");
    cfg->path_style = ps ? (strcmp(ps, "0") != 0 && strcmp(ps, "false") != 0) : ep != NULL;
    n = strlen(cfg->public_url);
    while (n > 0 && cfg->public_url[n - 1] == '/') cfg->public_url[--n] = 0;
    return 0;
}

int s3_key_valid(const char *key, size_t len)
{
    if (!key || len == 0 || len > S3_MAX_KEY || strlen(key) != len) return 0;
    int seg_start = 1;
    for (size_t i = 0; i < len; i++) {
        char c = key[i];
        if (c == '/') {
            if (seg_start) return 0;   /* leading '/', or "//" */
            seg_start = 1;
            continue;
        }
        if (seg_start && c == '.') return 0;   /* ".", "..", hidden names */
        seg_start = 0;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return !seg_start;   /* no trailing '/' */
}

int s3_request_url(const s3_config_t *cfg, const char *key, char *out, size_t cap)
{
    int n;
    if (cfg->path_style) {
        n = snprintf(out, cap, "%s/%s/%s", cfg->endpoint, cfg->bucket, key);
    } else {
        const char *host = strstr(cfg->endpoint, "://") + 3;
        n = snprintf(out, cap, "%.*s%s.%s/%s", (int)(host - cfg->endpoint), cfg->endpoint, cfg->bucket, host, key);
    }
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}

int s3_public_url(const s3_config_t *cfg, const char *key, char *out, size_t cap)
{
    int n;
    if (!cfg->enabled) n = snprintf(out, cap, "/images/%s", key);
    else if (cfg->public_url[0]) n = snprintf(out, cap, "%s/%s", cfg->public_url, key);
    else return s3_request_url(cfg, key, out, cap);
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}

void s3_sha256_hex(const void *data, size_t len, char out[65])
{
    unsigned char md[32];
    unsigned int mdlen = 0;
    EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL);
    for (size_t i = 0; i < 32; i++) snprintf(out + 2 * i, 3, "%02x", md[i]);
}

/* ---- the object store over curl ---------------------------------------------------------- */

struct curl_slist *s3_prepare(CURL *h, const s3_config_t *cfg, const char *method, const char *key,
                              const char *body, size_t len, const char *content_type,
                              const char *const *extra, const char *amz_date)
{
    char url[1024], line[256], sha[65], sigv4[64];
    if (s3_request_url(cfg, key, url, sizeof url) < 0) return NULL;
    s3_sha256_hex(body ? body : "", body ? len : 0, sha);
    struct curl_slist *hdrs = NULL, *t;
    snprintf(line, sizeof line, "x-amz-content-sha256: %s", sha);
    if (!(t = curl_slist_append(hdrs, line))) goto oom;
    hdrs = t;
    if (amz_date) {
        snprintf(line, sizeof line, "x-amz-date: %s", amz_date);
        if (!(t = curl_slist_append(hdrs, line))) goto oom;
        hdrs = t;
    }
    if (content_type) {
        snprintf(line, sizeof line, "Content-Type: %s", content_type);
        if (!(t = curl_slist_append(hdrs, line))) goto oom;
        hdrs = t;
    }
    /* No "Expect:" line to suppress 100-continue: curl would sign it as an empty header that
     * it never sends (tests/test_s3.c caught that). */
    for (int i = 0; extra && extra[i]; i++) {
        if (!(t = curl_slist_append(hdrs, extra[i]))) goto oom;
        hdrs = t;
    }
    snprintf(sigv4, sizeof sigv4, "aws:amz:%s:s3", cfg->region);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_AWS_SIGV4, sigv4);
    curl_easy_setopt(h, CURLOPT_USERNAME, cfg->access_key);
    curl_easy_setopt(h, CURLOPT_PASSWORD, cfg->secret_key);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, cfg->timeout_ms);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, cfg->connect_ms);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "mercato/" MERCATO_VERSION);
    if (!strcmp(method, "PUT")) {
        /* Copied: the caller's bytes may die while a handler is parked on the transfer. */
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(body ? len : 0));
        curl_easy_setopt(h, CURLOPT_COPYPOSTFIELDS, body ? body : "");
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, "PUT");
    } else if (!strcmp(method, "GET")) {
        curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    } else {
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
        curl_easy_setopt(h, CURLOPT_NOBODY, !strcmp(method, "HEAD") ? 1L : 0L);
    }
    return hdrs;
oom:
    curl_slist_free_all(hdrs);
    return NULL;
}

/* The <Code> of an S3 error document, or "" (bounded copy). */
static void error_code_of(const buf_t *body, char *out, size_t cap)
{
    out[0] = 0;
    if (!body->data || !body->len) return;
    const char *end = body->data + body->len;
    const char *p = memmem(body->data, body->len, "<Code>", 6);
    if (!p) return;
    p += 6;
    const char *q = memmem(p, (size_t)(end - p), "</Code>", 7);
    if (!q) return;
    size_t n = (size_t)(q - p) < cap - 1 ? (size_t)(q - p) : cap - 1;
    for (size_t i = 0; i < n; i++) out[i] = (p[i] >= 'A' && p[i] <= 'z') ? p[i] : '?';
    out[n] = 0;
}

int s3_call_setup(httpc_call_t *c, const s3_config_t *cfg, const char *method, const char *key, const char *body,
                  size_t len, const char *content_type)
{
    c->headers = s3_prepare(c->easy, cfg, method, key, body, len, content_type, NULL, NULL);
    c->resp.max_body = cfg->max_object;
    return c->headers ? 0 : -1;
}

int s3_call_finish(httpc_call_t *c, CURLcode rc, const char *method, s3_result_t *res)
{
    memset(res, 0, sizeof *res);
    res->body = c->resp.body;   /* moved: the call no longer frees it */
    buf_init(&c->resp.body);
    res->status = c->resp.status;
    char *ct = NULL;
    if (rc == CURLE_OK && curl_easy_getinfo(c->easy, CURLINFO_CONTENT_TYPE, &ct) == CURLE_OK && ct)
        snprintf(res->content_type, sizeof res->content_type, "%s", ct);
    if (c->resp.too_large) {
        snprintf(res->err, sizeof res->err, "s3 %s: the object is larger than S3_MAX_OBJECT_BYTES", method);
        res->code = "unavailable";
        return -1;
    }
    if (rc != CURLE_OK || res->body.failed) {
        snprintf(res->err, sizeof res->err, "s3 %s: %.200s", method, c->errbuf[0] ? c->errbuf : curl_easy_strerror(rc));
        res->code = rc == CURLE_OK ? "unavailable" : httpc_error_code(rc);
        return -1;
    }
    if (res->status / 100 == 2 || (res->status == 404 && strcmp(method, "PUT") != 0)) return 0;
    char code[64];
    error_code_of(&res->body, code, sizeof code);
    snprintf(res->err, sizeof res->err, "s3 %s: HTTP %ld%s%s", method, res->status, code[0] ? " " : "", code);
    res->code = res->status == 400 ? "invalid" : "unavailable";
    return -1;
}

int s3_call(httpc_call_t *c, const s3_config_t *cfg, const char *method, const char *key, const char *body,
            size_t len, const char *content_type, s3_result_t *res)
{
    if (s3_call_setup(c, cfg, method, key, body, len, content_type) < 0) {
        memset(res, 0, sizeof *res);
        buf_init(&res->body);
        snprintf(res->err, sizeof res->err, "s3 %s: out of memory", method);
        res->code = "unavailable";
        return -1;
    }
    return s3_call_finish(c, httpc_call_perform(c), method, res);
}

/* ---- the local disk store ----------------------------------------------------------------- */

/* mkdir -p of the directories above path (which starts with the blob dir). */
static int make_parents(char *path)
{
    for (char *p = path + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        int rc = mkdir(path, 0755);
        *p = '/';
        if (rc < 0 && errno != EEXIST) return -1;
    }
    return 0;
}

/* The sidecar that keeps the content type: "<dir>/.<name>.type" (no key names a dot file). */
static void type_path(const char *path, char *out, size_t cap)
{
    const char *slash = strrchr(path, '/');
    snprintf(out, cap, "%.*s.%s.type", (int)(slash - path + 1), path, slash + 1);
}

static int write_file(const char *path, const char *data, size_t len)
{
    /* A temporary name of this write's own (process, thread, sequence): two threads putting
     * one key must never write into one file; the rename makes the last one win whole. */
    static _Atomic unsigned g_seq;
    char tmp[1200];
    snprintf(tmp, sizeof tmp, "%s.%d.%ld.%u.tmp", path, (int)getpid(), (long)gettid(), atomic_fetch_add(&g_seq, 1));
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return -1;
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, data + off, len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) { close(fd); unlink(tmp); return -1; }
        off += (size_t)w;
    }
    if (close(fd) < 0 || rename(tmp, path) < 0) { unlink(tmp); return -1; }
    return 0;
}

int s3_disk_call(const s3_config_t *cfg, const char *method, const char *key, const char *body, size_t len,
                 const char *content_type, s3_result_t *res)
{
    memset(res, 0, sizeof *res);
    buf_init(&res->body);
    char path[1100], tpath[1200];
    snprintf(path, sizeof path, "%s/%s", cfg->blob_dir, key);
    type_path(path, tpath, sizeof tpath);
    if (!strcmp(method, "PUT")) {
        const char *ct = content_type ? content_type : "application/octet-stream";
        if (make_parents(path) < 0 || write_file(tpath, ct, strlen(ct)) < 0 || write_file(path, body, len) < 0) {
            snprintf(res->err, sizeof res->err, "blob store: cannot write under %.120s: %s", cfg->blob_dir, strerror(errno));
            res->code = "unavailable";
            return -1;
        }
        res->status = 200;
        return 0;
    }
    if (!strcmp(method, "DELETE")) {
        res->status = unlink(path) == 0 ? 204 : 404;
        unlink(tpath);
        return 0;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno == ENOENT || errno == ENOTDIR || errno == EISDIR) { res->status = 404; return 0; }
        snprintf(res->err, sizeof res->err, "blob store: cannot read: %s", strerror(errno));
        res->code = "unavailable";
        return -1;
    }
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) buf_add(&res->body, chunk, n);
    int bad = ferror(f) || res->body.failed;
    fclose(f);
    if (bad) {
        snprintf(res->err, sizeof res->err, "blob store: cannot read an object");
        res->code = "unavailable";
        return -1;
    }
    FILE *tf = fopen(tpath, "rb");
    if (tf) {
        n = fread(res->content_type, 1, sizeof res->content_type - 1, tf);
        res->content_type[n] = 0;
        fclose(tf);
    }
    if (!res->content_type[0]) snprintf(res->content_type, sizeof res->content_type, "application/octet-stream");
    res->status = 200;
    return 0;
}

/* ---- Lua bindings ------------------------------------------------------------------------- */

#define UV_WORKER lua_upvalueindex(1)

/* Push what a finished put / get / delete gives Lua (rc and res from s3_call or the disk);
 * frees res's body. */
static int push_result(lua_State *L, const char *method, const char *fn, int rc, s3_result_t *res)
{
    if (rc < 0) {
        buf_free(&res->body);
        log_debug("%s failed: %s", fn, res->err);
        lua_pushnil(L);
        lua_pushstring(L, res->err);
        lua_pushstring(L, res->code);
        if (res->status) lua_pushinteger(L, res->status); else lua_pushnil(L);
        return 4;
    }
    int nret = 1;
    if (!strcmp(method, "GET")) {
        if (res->status == 404) {
            lua_pushnil(L);
        } else {
            lua_pushlstring(L, res->body.data ? res->body.data : "", res->body.len);
            lua_pushstring(L, res->content_type[0] ? res->content_type : "application/octet-stream");
            nret = 2;
        }
    } else {
        lua_pushboolean(L, 1);
    }
    buf_free(&res->body);
    return nret;
}

/* A parked handler's store call: what its results need once the transfer ends. */
typedef struct {
    request_t *r;
    const char *method, *fn;     /* static strings */
} s3_wait_t;

static void call_done(httpc_call_t *c, CURLcode rc, void *arg)
{
    s3_wait_t *sw = arg;
    s3_result_t res;
    int st = s3_call_finish(c, rc, sw->method, &res);
    httpc_call_free(c);
    request_t *r = sw->r;
    lua_checkstack(r->co, 8);
    int n = push_result(r->co, sw->method, sw->fn, st, &res);
    free(sw);
    worker_wake(r, n);
}

static void call_cancel(void *arg)
{
    httpc_call_t *c = arg;
    free(c->arg);   /* the s3_wait_t: the call never calls back now */
    httpc_call_free(c);
}

/* The one implementation of put / get / delete: checks, the call, then the results. */
static int call(lua_State *L, const char *method, const char *fn)
{
    worker_t *w = lua_touserdata(L, UV_WORKER);
    if (!w) return luaL_error(L, "%s: no object store here (scripts are being checked, not served)", fn);
    size_t klen, blen = 0;
    if (lua_type(L, 1) != LUA_TSTRING)
        return luaL_argerror(L, 1, lua_pushfstring(L, "%s: expecting a key string, got %s", fn, luaL_typename(L, 1)));
    const char *key = lua_tolstring(L, 1, &klen), *body = NULL, *ctype = NULL;
    if (!strcmp(method, "PUT")) {
        if (lua_type(L, 2) != LUA_TSTRING)
            return luaL_argerror(L, 2, lua_pushfstring(L, "%s: expecting the bytes as a string, got %s", fn, luaL_typename(L, 2)));
        body = lua_tolstring(L, 2, &blen);
        ctype = luaL_optstring(L, 3, "application/octet-stream");
        if (strlen(ctype) > 100 || strpbrk(ctype, "\r\n"))
            return luaL_argerror(L, 3, "s3.put: the content type must be one short line");
    }
    if (!s3_key_valid(key, klen)) {
        if (!strcmp(method, "GET")) { lua_pushnil(L); return 1; }   /* no such object can exist */
        lua_pushnil(L);
        lua_pushstring(L, "the key is not a valid object key");
        lua_pushstring(L, "invalid");
        return 3;
    }
    s3_result_t res;
    int rc;
    if (!g_cfg.enabled) {
        rc = s3_disk_call(&g_cfg, method, key, body, blen, ctype, &res);
        return push_result(L, method, fn, rc, &res);
    }
    httpc_t *hc = worker_httpc(w);
    httpc_call_t *c = hc ? httpc_call_new(hc) : NULL;
    if (c && worker_can_yield(L)) {   /* a handler: park it while the store answers */
        s3_wait_t *sw = malloc(sizeof *sw);
        if (sw && s3_call_setup(c, &g_cfg, method, key, body, blen, ctype) == 0) {
            *sw = (s3_wait_t){ w->cur, method, fn };
            if (httpc_call_start(c, call_done, sw) == 0) return worker_wait(L, call_cancel, c);
        }
        free(sw);
        httpc_call_free(c);
        c = NULL;
    }
    if (c) {
        rc = s3_call(c, &g_cfg, method, key, body, blen, ctype, &res);
        httpc_call_free(c);
    } else {
        memset(&res, 0, sizeof res);
        buf_init(&res.body);
        snprintf(res.err, sizeof res.err, "%s: out of memory", fn);
        res.code = "unavailable";
        rc = -1;
    }
    return push_result(L, method, fn, rc, &res);
}

static int l_put(lua_State *L) { return call(L, "PUT", "s3.put"); }
static int l_get(lua_State *L) { return call(L, "GET", "s3.get"); }
static int l_delete(lua_State *L) { return call(L, "DELETE", "s3.delete"); }

/* s3.url(key) → the URL a client fetches the object from (raises on an invalid key). */
static int l_url(lua_State *L)
{
    size_t len;
    const char *key = luaL_checklstring(L, 1, &len);
    char url[1200];
    if (!s3_key_valid(key, len) || s3_public_url(&g_cfg, key, url, sizeof url) < 0)
        return luaL_argerror(L, 1, "s3.url: not a valid object key");
    lua_pushstring(L, url);
    return 1;
}

static int l_backend(lua_State *L)
{
    lua_pushstring(L, g_cfg.enabled ? "s3" : "disk");
    return 1;
}

/* ---- module ------------------------------------------------------------------------------- */

static int s3_global_init(void)
{
    char err[200];
    if (s3_config_load(&g_cfg, err, sizeof err) < 0) {
        fprintf(stderr, "mercato: %s\n", err);
        return -1;
    }
    return 0;
}

int luaopen_s3(lua_State *L)
{
    static const luaL_Reg fns[] = {
        { "put", l_put }, { "get", l_get }, { "delete", l_delete }, { NULL, NULL },
    };
    lua_newtable(L);
    lua_pushlightuserdata(L, worker_from_lua(L));   /* NULL in the scratch check state: calls raise */
    luaL_setfuncs(L, fns, 1);
    lua_pushcfunction(L, l_url);
    lua_setfield(L, -2, "url");
    lua_pushcfunction(L, l_backend);
    lua_setfield(L, -2, "backend");
    return 1;
}

const binding_t binding_s3 = {
    .name = "s3",
    .open = luaopen_s3,
    .global_init = s3_global_init,
};
