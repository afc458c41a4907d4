/* test_s3: the s3 binding without a store — the SigV4 signature curl makes for AWS's published
 * "GET Object" example (checked two ways: recomputed here from the canonical request, and
 * taken from the Authorization header curl sends to a loopback server), keys, URLs, the
 * local disk store, and misuse / failure paths through a real lua_State. */
#include <curl/curl.h>
#include <lauxlib.h>
#include <lualib.h>
#include <microhttpd.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bindings.h"
#include "../core/httpc.h"
#include "../bindings/s3.h"
#include "test.h"
#include "test_lua.h"
#include "worker.h"

int luaopen_s3(lua_State *L);

/* ---- AWS Signature Version 4, "Example: GET Object" (Amazon S3 API reference) ------------- */

#define EX_ACCESS "AKIAIOSFODNN7EXAMPLE"
#define EX_SECRET "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
#define EX_DATE "20130524T000000Z"
#define EX_EMPTY_SHA "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define EX_SIGNATURE "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
#define EX_AUTH "AWS4-HMAC-SHA256 Credential=" EX_ACCESS "/20130524/us-east-1/s3/aws4_request, " \
                "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=" EX_SIGNATURE

static void hmac(const void *key, int klen, const char *msg, unsigned char out[32])
{
    unsigned int n = 32;
    HMAC(EVP_sha256(), key, klen, (const unsigned char *)msg, strlen(msg), out, &n);
}

TEST(the_aws_get_object_example_signature_is_what_the_documentation_says)
{
    /* The canonical request and string to sign exactly as the documentation lists them. */
    const char *canonical = "GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\nrange:bytes=0-9\n"
                            "x-amz-content-sha256:" EX_EMPTY_SHA "\nx-amz-date:" EX_DATE "\n\n"
                            "host;range;x-amz-content-sha256;x-amz-date\n" EX_EMPTY_SHA;
    char creq_hash[65], sts[512], sig[65];
    s3_sha256_hex(canonical, strlen(canonical), creq_hash);
    CHECK_STR(creq_hash, "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972");
    snprintf(sts, sizeof sts, "AWS4-HMAC-SHA256\n" EX_DATE "\n20130524/us-east-1/s3/aws4_request\n%s", creq_hash);
    unsigned char k[32];
    hmac("AWS4" EX_SECRET, (int)strlen("AWS4" EX_SECRET), "20130524", k);
    hmac(k, 32, "us-east-1", k);
    hmac(k, 32, "s3", k);
    hmac(k, 32, "aws4_request", k);
    hmac(k, 32, sts, k);
    for (int i = 0; i < 32; i++) snprintf(sig + 2 * i, 3, "%02x", k[i]);
    CHECK_STR(sig, EX_SIGNATURE);
    char empty[65];
    s3_sha256_hex("", 0, empty);
    CHECK_STR(empty, EX_EMPTY_SHA);
}

/* The loopback server keeps the last request's Authorization and x-amz-content-sha256. */
static char g_auth[512], g_sha[80];

static enum MHD_Result serve(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                             const char *version, const char *data, size_t *size, void **ctx)
{
    (void)cls; (void)url; (void)method; (void)version; (void)data;
    if (!*ctx) { *ctx = (void *)1; return MHD_YES; }
    if (*size) { *size = 0; return MHD_YES; }
    const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    const char *s = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "x-amz-content-sha256");
    snprintf(g_auth, sizeof g_auth, "%s", a ? a : "");
    snprintf(g_sha, sizeof g_sha, "%s", s ? s : "");
    struct MHD_Response *r = MHD_create_response_from_buffer(4, (void *)"data", MHD_RESPMEM_PERSISTENT);
    enum MHD_Result ret = MHD_queue_response(c, 200, r);
    MHD_destroy_response(r);
    return ret;
}

static int g_port;

TEST(curl_signs_the_aws_get_object_example_with_the_published_signature)
{
    s3_config_t cfg = { .enabled = 1, .endpoint = "http://s3.amazonaws.com", .bucket = "examplebucket",
                        .region = "us-east-1", .access_key = EX_ACCESS, .secret_key = EX_SECRET,
                        .timeout_ms = 5000, .connect_ms = 1000 };
    char url[256];
    CHECK(s3_request_url(&cfg, "test.txt", url, sizeof url) == 0);
    CHECK_STR(url, "http://examplebucket.s3.amazonaws.com/test.txt");
    httpc_t *hc = httpc_new(NULL);
    httpc_call_t *c = httpc_call_new(hc);
    const char *extra[] = { "Range: bytes=0-9", NULL };
    c->headers = s3_prepare(c->easy, &cfg, "GET", "test.txt", NULL, 0, NULL, extra, EX_DATE);
    CHECK(c->headers != NULL);
    char to[96];
    snprintf(to, sizeof to, "examplebucket.s3.amazonaws.com:80:127.0.0.1:%d", g_port);
    struct curl_slist *connect_to = curl_slist_append(NULL, to);
    curl_easy_setopt(c->easy, CURLOPT_CONNECT_TO, connect_to);
    CHECK_INT(httpc_call_perform(c), CURLE_OK);
    CHECK_INT(c->resp.status, 200);
    /* curl 7.88 separates the parts with ", " where the documentation has ","; both parse. */
    CHECK_STR(g_auth, EX_AUTH);
    CHECK_STR(g_sha, EX_EMPTY_SHA);
    httpc_call_free(c);
    httpc_free(hc);
    curl_slist_free_all(connect_to);
}

TEST(a_put_is_signed_over_the_sha256_of_its_body)
{
    s3_config_t cfg = { .enabled = 1, .path_style = 1, .bucket = "b", .region = "eu-west-1",
                        .access_key = "AK", .secret_key = "SK", .timeout_ms = 5000, .connect_ms = 1000 };
    snprintf(cfg.endpoint, sizeof cfg.endpoint, "http://127.0.0.1:%d", g_port);
    httpc_t *hc = httpc_new(NULL);
    httpc_call_t *c = httpc_call_new(hc);
    s3_result_t res;
    CHECK(s3_call(c, &cfg, "PUT", "products/x/y.png", "hello", 5, "image/png", &res) == 0);
    CHECK_INT(res.status, 200);
    CHECK_STR(g_sha, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
    CHECK(strncmp(g_auth, "AWS4-HMAC-SHA256 Credential=AK/", 31) == 0);
    CHECK(strstr(g_auth, "/eu-west-1/s3/aws4_request") != NULL);
    CHECK(strstr(g_auth, "x-amz-content-sha256") != NULL);
    buf_free(&res.body);
    httpc_call_free(c);
    httpc_free(hc);
}

/* ---- keys, URLs, configuration ------------------------------------------------------------- */

static int valid(const char *k) { return s3_key_valid(k, strlen(k)); }

TEST(keys_never_leave_their_directory)
{
    CHECK(valid("products/0b7e/3f1a.png"));
    CHECK(valid("a"));
    CHECK(valid("A-b_c.d/e"));
    const char *bad[] = { "", "/etc/passwd", "../x", "a/../b", "a/./b", "..", ".", "a//b", "a/", ".hidden",
                          "a/.b", "a b", "a%2e%2e/b", "a\\b", "a?b", "a#b", "é", "a\n", NULL };
    for (int i = 0; bad[i]; i++)
        if (valid(bad[i])) { printf("#   accepted %s\n", bad[i]); CHECK(0); }
    CHECK(!s3_key_valid("a\0b", 3));
    char big[S3_MAX_KEY + 2];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = 0;
    CHECK(!valid(big));
    big[S3_MAX_KEY] = 0;
    CHECK(valid(big));
}

TEST(urls_are_path_style_for_custom_endpoints_and_local_for_disk)
{
    setenv("S3_BUCKET", "product-images", 1);
    setenv("S3_ENDPOINT", "http://127.0.0.1:54569/", 1);
    setenv("S3_ACCESS_KEY", "S3RVER", 1);
    setenv("S3_SECRET_KEY", "S3RVER", 1);
    unsetenv("S3_FORCE_PATH_STYLE");
    s3_config_t cfg;
    char err[200], url[300];
    CHECK(s3_config_load(&cfg, err, sizeof err) == 0);
    CHECK(cfg.enabled && cfg.path_style);
    CHECK_STR(cfg.region, "us-east-1");
    CHECK(s3_public_url(&cfg, "products/a/b.png", url, sizeof url) == 0);
    CHECK_STR(url, "http://127.0.0.1:54569/product-images/products/a/b.png");
    setenv("S3_PUBLIC_URL", "https://cdn.example.com/img/", 1);
    CHECK(s3_config_load(&cfg, err, sizeof err) == 0);
    CHECK(s3_public_url(&cfg, "k.png", url, sizeof url) == 0);
    CHECK_STR(url, "https://cdn.example.com/img/k.png");
    unsetenv("S3_PUBLIC_URL");
    unsetenv("S3_ENDPOINT");
    CHECK(s3_config_load(&cfg, err, sizeof err) == 0);
    CHECK(!cfg.path_style);
    CHECK(s3_request_url(&cfg, "k.png", url, sizeof url) == 0);
    CHECK_STR(url, "https://product-images.s3.us-east-1.amazonaws.com/k.png");
    unsetenv("S3_SECRET_KEY");
    CHECK(s3_config_load(&cfg, err, sizeof err) < 0);
    CHECK(strstr(err, "S3_SECRET_KEY") != NULL);
    setenv("S3_BUCKET", "", 1);   /* empty counts as unset: local disk */
    CHECK(s3_config_load(&cfg, err, sizeof err) == 0);
    CHECK(!cfg.enabled);
    CHECK(s3_public_url(&cfg, "products/a/b.png", url, sizeof url) == 0);
    CHECK_STR(url, "/images/products/a/b.png");
}

/* ---- through a lua_State ------------------------------------------------------------------ */

static config_t g_wcfg;


extern const binding_t binding_s3;

TEST(the_disk_store_round_trips_and_misuse_raises)
{
    char dir[] = "/tmp/mercato-test-s3-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    setenv("BLOB_DIR", dir, 1);
    setenv("S3_BUCKET", "", 1);
    CHECK(binding_s3.global_init() == 0);
    worker_t w = { .cfg = &g_wcfg, .kind = "cli" };
    lua_State *L = test_state(&w, "s3");
    CHECK_STR(test_eval(L, "return s3.backend()"), "disk");
    CHECK_STR(test_eval(L, "assert(s3.put('products/p1/a.png', 'PNG\\0bytes', 'image/png'));"
                     "local b, ct = s3.get('products/p1/a.png'); return #b .. ' ' .. ct"), "9 image/png");
    CHECK_STR(test_eval(L, "return tostring(s3.get('products/p1/none.png'))"), "nil");
    CHECK_STR(test_eval(L, "return select('#', s3.get('../../etc/passwd')) .. tostring(s3.get('../../etc/passwd'))"), "1nil");
    CHECK_STR(test_eval(L, "local ok, err, code = s3.put('../x', 'y'); return code"), "invalid");
    CHECK_STR(test_eval(L, "local ok, err, code = s3.delete('/etc/passwd'); return code"), "invalid");
    CHECK_STR(test_eval(L, "assert(s3.delete('products/p1/a.png')); assert(s3.delete('products/p1/a.png'));"
                     "return tostring(s3.get('products/p1/a.png'))"), "nil");
    CHECK_STR(test_eval(L, "return s3.url('products/p1/a.png')"), "/images/products/p1/a.png");
    CHECK(strstr(test_eval(L, "return s3.put(nil, 'x')"), "s3.put: expecting a key string, got nil") != NULL);
    CHECK(strstr(test_eval(L, "return s3.put('k', {})"), "expecting the bytes as a string") != NULL);
    CHECK(strstr(test_eval(L, "return s3.put('k', 'x', 'a\\r\\nb')"), "one short line") != NULL);
    CHECK(strstr(test_eval(L, "return s3.url('../x')"), "not a valid object key") != NULL);
    lua_close(L);
    L = test_state(NULL, "s3");
    CHECK(strstr(test_eval(L, "return s3.get('k')"), "no object store here") != NULL);
    lua_close(L);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

/* Two threads writing one key: each write lands whole (a temporary file of its own), none fails. */
typedef struct { const char *dir; char fill; int failures; } writer_t;

static void *write_many(void *arg)
{
    writer_t *wr = arg;
    s3_config_t cfg = { 0 };
    snprintf(cfg.blob_dir, sizeof cfg.blob_dir, "%s", wr->dir);
    char body[4096];
    memset(body, wr->fill, sizeof body);
    for (int i = 0; i < 300; i++) {
        s3_result_t res;
        if (s3_disk_call(&cfg, "PUT", "products/same/key.png", body, sizeof body, "image/png", &res) != 0) wr->failures++;
        buf_free(&res.body);
    }
    return NULL;
}

TEST(two_threads_putting_one_key_on_disk_never_share_a_temporary_file)
{
    char dir[] = "/tmp/mercato-s3-race.XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    writer_t a = { dir, 'a', 0 }, b = { dir, 'b', 0 };
    pthread_t ta, tb;
    pthread_create(&ta, NULL, write_many, &a);
    pthread_create(&tb, NULL, write_many, &b);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    CHECK_INT(a.failures + b.failures, 0);
    s3_config_t cfg = { 0 };
    snprintf(cfg.blob_dir, sizeof cfg.blob_dir, "%s", dir);
    s3_result_t res;
    CHECK(s3_disk_call(&cfg, "GET", "products/same/key.png", NULL, 0, NULL, &res) == 0);
    CHECK_INT(res.body.len, 4096);
    int whole = res.body.len == 4096;
    for (size_t i = 1; whole && i < res.body.len; i++) whole = res.body.data[i] == res.body.data[0];
    CHECK(whole);
    buf_free(&res.body);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

TEST(an_unreachable_store_returns_unavailable_with_no_status)
{
    setenv("S3_BUCKET", "b", 1);
    setenv("S3_ENDPOINT", "http://127.0.0.1:1", 1);
    setenv("S3_ACCESS_KEY", "a", 1);
    setenv("S3_SECRET_KEY", "s", 1);
    CHECK(binding_s3.global_init() == 0);
    worker_t w = { .cfg = &g_wcfg, .kind = "cli" };
    lua_State *L = test_state(&w, "s3");
    CHECK_STR(test_eval(L, "local ok, err, code, st = s3.put('k.png', 'x', 'image/png'); return code .. ' ' .. tostring(st)"),
              "unavailable nil");
    CHECK_STR(test_eval(L, "local ok, err, code = s3.get('k.png'); return tostring(ok) .. ' ' .. code"), "nil unavailable");
    CHECK_STR(test_eval(L, "return s3.url('k.png')"), "http://127.0.0.1:1/b/k.png");
    lua_close(L);
    httpc_free(w.httpc);
}

int main(void)
{
    log_init(LOG_ERROR, "test_s3");
    curl_global_init(CURL_GLOBAL_DEFAULT);
    struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL, serve, NULL,
                                            MHD_OPTION_END);
    if (!d) { printf("Bail out! cannot start the loopback server\n"); return 1; }
    g_port = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT)->port;
    RUN(the_aws_get_object_example_signature_is_what_the_documentation_says);
    RUN(curl_signs_the_aws_get_object_example_with_the_published_signature);
    RUN(a_put_is_signed_over_the_sha256_of_its_body);
    RUN(keys_never_leave_their_directory);
    RUN(urls_are_path_style_for_custom_endpoints_and_local_for_disk);
    RUN(the_disk_store_round_trips_and_misuse_raises);
    RUN(two_threads_putting_one_key_on_disk_never_share_a_temporary_file);
    RUN(an_unreachable_store_returns_unavailable_with_no_status);
    MHD_stop_daemon(d);
    curl_global_cleanup();
    return test_done();
}
