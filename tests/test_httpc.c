/* test_httpc: outbound HTTP on a loop — concurrent transfers, one that hangs holding up no
 * other, deadlines, cancelling a running transfer, keep-alive reuse, the blocking path. */
#include <curl/curl.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/httpc.h"
#include "../core/loop.h"
#include "test.h"

static int port;

/* The loopback server (a thread per connection): /hang/<ms> answers after ms, anything else
 * at once with its path as the body. */
static enum MHD_Result serve(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                             const char *version, const char *data, size_t *size, void **ctx)
{
    (void)cls; (void)method; (void)version; (void)data;
    if (!*ctx) { *ctx = (void *)1; return MHD_YES; }
    if (*size) { *size = 0; return MHD_YES; }
    if (strncmp(url, "/hang/", 6) == 0) usleep((useconds_t)atoi(url + 6) * 1000);
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(url), (void *)url, MHD_RESPMEM_MUST_COPY);
    enum MHD_Result rc = MHD_queue_response(c, 200, r);
    MHD_destroy_response(r);
    return rc;
}

typedef struct {
    int done;
    CURLcode rc;
    long status;
    long connects;
    char body[64];
    uint64_t at_ns;
} outcome_t;

static void on_done(httpc_call_t *c, CURLcode rc, void *arg)
{
    outcome_t *o = arg;
    o->done = 1;
    o->rc = rc;
    o->status = c->resp.status;
    o->at_ns = loop_now_ns();
    curl_easy_getinfo(c->easy, CURLINFO_NUM_CONNECTS, &o->connects);
    snprintf(o->body, sizeof o->body, "%.*s", (int)c->resp.body.len, c->resp.body.data ? c->resp.body.data : "");
    httpc_call_free(c);
}

static httpc_call_t *get(httpc_t *hc, const char *path, long timeout_ms)
{
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    httpc_call_t *c = httpc_call_new(hc);
    curl_easy_setopt(c->easy, CURLOPT_URL, url);
    curl_easy_setopt(c->easy, CURLOPT_TIMEOUT_MS, timeout_ms);
    return c;
}

static void run_until(loop_t *l, outcome_t *o, int n)
{
    uint64_t t0 = loop_now_ns();
    for (;;) {
        int all = 1;
        for (int i = 0; i < n; i++) all &= o[i].done;
        if (all || loop_now_ns() - t0 > 5000000000ull) return;
        loop_run_once(l, 100);
    }
}

TEST(a_transfer_that_hangs_holds_up_no_other)
{
    loop_t *l = loop_new();
    httpc_t *hc = httpc_new(l);
    outcome_t o[4];
    memset(o, 0, sizeof o);
    uint64_t t0 = loop_now_ns();
    CHECK_INT(httpc_call_start(get(hc, "/hang/600", 5000), on_done, &o[0]), 0);
    CHECK_INT(httpc_call_start(get(hc, "/a", 5000), on_done, &o[1]), 0);
    CHECK_INT(httpc_call_start(get(hc, "/b", 5000), on_done, &o[2]), 0);
    CHECK_INT(httpc_call_start(get(hc, "/c", 5000), on_done, &o[3]), 0);
    CHECK_INT(o[1].done, 0);   /* never called back from inside start */
    CHECK_INT(httpc_running(hc), 4);
    run_until(l, o, 4);
    for (int i = 0; i < 4; i++) { CHECK_INT(o[i].rc, CURLE_OK); CHECK_INT(o[i].status, 200); }
    CHECK_STR(o[1].body, "/a");
    CHECK_STR(o[3].body, "/c");
    CHECK((o[1].at_ns - t0) / 1000000 < 300);   /* the fast ones did not wait for the slow one */
    CHECK((o[0].at_ns - t0) / 1000000 >= 590);
    CHECK_INT(httpc_running(hc), 0);
    httpc_free(hc);
    loop_free(l);
}

TEST(a_deadline_ends_a_transfer_with_a_timeout)
{
    loop_t *l = loop_new();
    httpc_t *hc = httpc_new(l);
    outcome_t o = { 0 };
    uint64_t t0 = loop_now_ns();
    CHECK_INT(httpc_call_start(get(hc, "/hang/1500", 200), on_done, &o), 0);
    run_until(l, &o, 1);
    uint64_t ms = (loop_now_ns() - t0) / 1000000;
    CHECK_INT(o.rc, CURLE_OPERATION_TIMEDOUT);
    CHECK_STR(httpc_error_code(o.rc), "timeout");
    CHECK(ms >= 190 && ms < 1000);
    httpc_free(hc);
    loop_free(l);
}

TEST(connections_are_kept_alive_and_reused)
{
    loop_t *l = loop_new();
    httpc_t *hc = httpc_new(l);
    outcome_t o[2];
    memset(o, 0, sizeof o);
    httpc_call_start(get(hc, "/one", 5000), on_done, &o[0]);
    run_until(l, o, 1);
    httpc_call_start(get(hc, "/two", 5000), on_done, &o[1]);
    run_until(l, o + 1, 1);
    CHECK_INT(o[0].connects, 1);
    CHECK_INT(o[1].connects, 0);
    CHECK_STR(o[1].body, "/two");
    httpc_free(hc);
    loop_free(l);
}

TEST(a_running_transfer_freed_is_never_called_back)
{
    loop_t *l = loop_new();
    httpc_t *hc = httpc_new(l);
    outcome_t o[2];
    memset(o, 0, sizeof o);
    httpc_call_t *c = get(hc, "/hang/300", 5000);
    httpc_call_start(c, on_done, &o[0]);
    httpc_call_start(get(hc, "/after", 5000), on_done, &o[1]);
    loop_run_once(l, 10);
    httpc_call_free(c);
    CHECK_INT(httpc_running(hc), 1);
    uint64_t t0 = loop_now_ns();
    while (loop_now_ns() - t0 < 500000000ull) loop_run_once(l, 50);
    CHECK_INT(o[0].done, 0);
    CHECK_INT(o[1].done, 1);
    httpc_free(hc);
    loop_free(l);
}

TEST(without_a_loop_calls_block_and_cannot_start)
{
    httpc_t *hc = httpc_new(NULL);
    httpc_call_t *c = get(hc, "/x", 5000);
    CHECK_INT(httpc_call_start(c, on_done, NULL), -1);
    CHECK_INT(httpc_call_perform(c), CURLE_OK);
    CHECK_INT(c->resp.status, 200);
    httpc_call_free(c);
    c = get(hc, "/y", 5000);   /* the same handle, its connection kept */
    CHECK_INT(httpc_call_perform(c), CURLE_OK);
    long connects = -1;
    curl_easy_getinfo(c->easy, CURLINFO_NUM_CONNECTS, &connects);
    CHECK_INT(connects, 0);
    CHECK(c->resp.body.len == 2 && memcmp(c->resp.body.data, "/y", 2) == 0);
    httpc_call_free(c);
    httpc_free(hc);
}

TEST(traceparents_continue_the_incoming_trace_or_start_one)
{
    char out[HTTPC_TRACEPARENT_SIZE];
    httpc_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "rid", "00f067aa0ba902b7", out);
    CHECK_STR(out, "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01");
    httpc_traceparent("garbage", "0af7651916cd43dd8448eb211c80319d", "00f067aa0ba902b7", out);
    CHECK_STR(out, "00-0af7651916cd43dd8448eb211c80319d-00f067aa0ba902b7-01");
    char again[HTTPC_TRACEPARENT_SIZE];
    httpc_traceparent(NULL, "client-chosen", "00f067aa0ba902b7", out);
    httpc_traceparent(NULL, "client-chosen", "00f067aa0ba902b7", again);
    CHECK_STR(out, again);
    CHECK(strlen(out) == 55);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL,
                                            serve, NULL, MHD_OPTION_END);
    if (!d) { printf("Bail out! cannot start the loopback server\n"); return 1; }
    port = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT)->port;
    RUN(a_transfer_that_hangs_holds_up_no_other);
    RUN(a_deadline_ends_a_transfer_with_a_timeout);
    RUN(connections_are_kept_alive_and_reused);
    RUN(a_running_transfer_freed_is_never_called_back);
    RUN(without_a_loop_calls_block_and_cannot_start);
    RUN(traceparents_continue_the_incoming_trace_or_start_one);
    MHD_stop_daemon(d);
    curl_global_cleanup();
    return test_done();
}
