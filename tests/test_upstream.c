/* test_upstream: the gateway's keep-alive HTTP/1.1 client — framing (length, chunked, close),
 * interim answers, HEAD, connection reuse, a stale connection retried, deadlines, the cap on
 * connections, malformed and oversized answers, cancel, a connect that fails at once or never
 * completes. Against a scripted loopback server. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../core/upstream.h"
#include "../core/loop.h"
#include "test.h"

static int g_port;
static int g_accepts;            /* connections the server accepted */
static char g_huge_head[80 * 1024];   /* an answer whose head never ends within MAX_HEAD_BYTES */

/* The scripted server: reads one request head, answers by its path, then either reads the
 * next request on the connection or closes it. */
static const char *answer_for(const char *path, int *close_after, int *delay_ms)
{
    *close_after = 0;
    *delay_ms = 0;
    if (!strncmp(path, "/len", 4)) return "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello";
    if (!strncmp(path, "/chunked", 8))
        return "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\n";
    if (!strncmp(path, "/close", 6)) { *close_after = 1; return "HTTP/1.1 200 OK\r\n\r\nuntil the end"; }
    if (!strncmp(path, "/interim", 8)) return "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
    if (!strncmp(path, "/head", 5)) return "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";
    if (!strncmp(path, "/bye", 4)) { *close_after = 1; return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"; }
    if (!strncmp(path, "/slow", 5)) { *delay_ms = 800; return "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate"; }
    if (!strncmp(path, "/bad", 4)) return "HTTX/9 what\r\n\r\n";
    if (!strncmp(path, "/big", 4)) return "HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n0123456789012345678901234567890123456789";
    if (!strncmp(path, "/short", 6)) { *close_after = 1; return "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"; }
    if (!strncmp(path, "/badchunk", 9)) return "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n";
    if (!strncmp(path, "/cut", 4)) { *close_after = 1; return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"; }
    if (!strncmp(path, "/hugehead", 9)) return g_huge_head;
    return "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
}

static void *serve_conn(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char buf[8192];
    size_t len = 0;
    for (;;) {
        char *end;
        while (!(end = memmem(buf, len, "\r\n\r\n", 4))) {
            ssize_t n = recv(fd, buf + len, sizeof buf - len, 0);
            if (n <= 0) { close(fd); return NULL; }
            len += (size_t)n;
        }
        char path[256] = "";
        sscanf(buf, "%*s %255s", path);
        size_t used = (size_t)(end - buf) + 4;
        const char *cl = strcasestr(buf, "Content-Length: ");
        if (cl && cl < end) used += (size_t)atoi(cl + 16);
        while (len < used) { ssize_t n = recv(fd, buf + len, sizeof buf - len, 0); if (n <= 0) { close(fd); return NULL; } len += (size_t)n; }
        memmove(buf, buf + used, len - used);
        len -= used;
        int close_after, delay;
        const char *a = answer_for(path, &close_after, &delay);
        char me[96];
        if (!strcmp(path, "/whoami")) {   /* the port this connection came in on */
            struct sockaddr_in local;
            socklen_t ll = sizeof local;
            getsockname(fd, (struct sockaddr *)&local, &ll);
            char port[8];
            int pn = snprintf(port, sizeof port, "%d", ntohs(local.sin_port));
            snprintf(me, sizeof me, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", pn, port);
            a = me;
        }
        if (!strncmp(path, "/stale", 6)) { close(fd); return NULL; }   /* closes without answering */
        if (delay) usleep((useconds_t)delay * 1000);
        if (send(fd, a, strlen(a), MSG_NOSIGNAL) < 0 || close_after) { close(fd); return NULL; }
    }
}

static void *serve(void *arg)
{
    int lfd = (int)(intptr_t)arg;
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) return NULL;
        __atomic_add_fetch(&g_accepts, 1, __ATOMIC_SEQ_CST);
        pthread_t t;
        pthread_create(&t, NULL, serve_conn, (void *)(intptr_t)fd);
        pthread_detach(t);
    }
}

typedef struct {
    int done, status;
    enum upstream_err err;
    char body[256], head[512];
} got_t;

static void on_done(upstream_req_t *q, enum upstream_err err, const char *why, upstream_resp_t *resp, void *arg)
{
    got_t *g = arg;
    (void)q; (void)why;
    g->done = 1;
    g->err = err;
    if (resp) {
        g->status = resp->status;
        snprintf(g->body, sizeof g->body, "%.*s", (int)resp->body.len, resp->body.data ? resp->body.data : "");
        snprintf(g->head, sizeof g->head, "%.*s", (int)resp->head.len, resp->head.data ? resp->head.data : "");
    }
}

static upstream_t *new_upstream_idle(loop_t *l, int max_conns, long timeout_ms, int max_idle)
{
    upstream_opts_t o = { .max_conns = max_conns, .timeout_ms = timeout_ms, .connect_ms = 1000, .max_body = 30, .idle_ms = 60000,
                          .max_idle = max_idle };
    struct sockaddr_in *a = (struct sockaddr_in *)&o.addr;
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)g_port);
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    o.addrlen = sizeof *a;
    return upstream_new(l, &o);
}

static upstream_t *new_upstream(loop_t *l, int max_conns, long timeout_ms) { return new_upstream_idle(l, max_conns, timeout_ms, 0); }

static upstream_req_t *send_get(upstream_t *u, const char *method, const char *path, got_t *g)
{
    buf_t b;
    buf_init(&b);
    buf_addf(&b, "%s %s HTTP/1.1\r\nHost: x\r\n\r\n", method, path);
    upstream_req_t *q = upstream_send(u, &b, !strcmp(method, "HEAD"), 1, on_done, g);
    buf_free(&b);
    return q;
}

static void run_until(loop_t *l, got_t *g, int n)
{
    uint64_t t0 = loop_now_ns();
    for (;;) {
        int all = 1;
        for (int i = 0; i < n; i++) all &= g[i].done;
        if (all || loop_now_ns() - t0 > 3000000000ull) return;
        loop_run_once(l, 50);
    }
}

TEST(bodies_come_back_by_length_chunks_or_close)
{
    loop_t *l = loop_new();
    upstream_t *u = new_upstream(l, 4, 2000);
    got_t g[5];
    memset(g, 0, sizeof g);
    send_get(u, "GET", "/len", &g[0]);
    send_get(u, "GET", "/chunked", &g[1]);
    send_get(u, "GET", "/close", &g[2]);
    send_get(u, "GET", "/interim", &g[3]);
    send_get(u, "HEAD", "/head", &g[4]);
    CHECK_INT(g[0].done, 0);   /* never called back from inside upstream_send */
    run_until(l, g, 5);
    CHECK_INT(g[0].status, 200);
    CHECK_STR(g[0].body, "hello");
    CHECK(strstr(g[0].head, "X-A: 1\r\n") != NULL);
    CHECK_INT(g[1].status, 201);
    CHECK_STR(g[1].body, "hello world");
    CHECK_INT(g[2].status, 200);
    CHECK_STR(g[2].body, "until the end");
    CHECK_INT(g[3].status, 204);
    CHECK_INT(g[4].status, 200);
    CHECK_STR(g[4].body, "");
    upstream_free(u);
    loop_free(l);
}

TEST(connections_are_reused_and_a_stale_one_is_retried)
{
    loop_t *l = loop_new();
    upstream_t *u = new_upstream(l, 4, 2000);
    got_t g[4];
    memset(g, 0, sizeof g);
    int before = __atomic_load_n(&g_accepts, __ATOMIC_SEQ_CST);
    send_get(u, "GET", "/len", &g[0]);
    run_until(l, g, 1);
    send_get(u, "GET", "/chunked", &g[1]);
    run_until(l, g + 1, 1);
    CHECK_INT(__atomic_load_n(&g_accepts, __ATOMIC_SEQ_CST) - before, 1);
    CHECK_INT(upstream_connections(u), 1);
    /* The server answers /bye with Connection: close: the next request needs a new one. */
    send_get(u, "GET", "/bye", &g[2]);
    run_until(l, g + 2, 1);
    CHECK_STR(g[2].body, "ok");
    CHECK_INT(upstream_connections(u), 0);
    /* A reused connection closed under a request (before any answer): one retry, on a new
     * connection, which closes too — the caller sees the failure. */
    send_get(u, "GET", "/len", &g[3]);
    run_until(l, g + 3, 1);
    got_t s = { 0 };
    int mid = __atomic_load_n(&g_accepts, __ATOMIC_SEQ_CST);
    send_get(u, "GET", "/stale", &s);
    run_until(l, &s, 1);
    CHECK_INT(s.err, UPSTREAM_UNAVAILABLE);
    CHECK_INT(__atomic_load_n(&g_accepts, __ATOMIC_SEQ_CST) - mid, 1);   /* the retry's connection */
    upstream_free(u);
    loop_free(l);
}

TEST(deadlines_malformed_and_oversized_answers_fail)
{
    loop_t *l = loop_new();
    upstream_t *u = new_upstream(l, 4, 300);
    got_t g[4];
    memset(g, 0, sizeof g);
    uint64_t t0 = loop_now_ns();
    send_get(u, "GET", "/slow", &g[0]);
    send_get(u, "GET", "/bad", &g[1]);
    send_get(u, "GET", "/big", &g[2]);
    send_get(u, "GET", "/short", &g[3]);
    run_until(l, g, 4);
    uint64_t ms = (loop_now_ns() - t0) / 1000000;
    CHECK_INT(g[0].err, UPSTREAM_TIMEOUT);
    CHECK(ms >= 290 && ms < 700);
    CHECK_INT(g[1].err, UPSTREAM_UNAVAILABLE);
    CHECK_INT(g[2].err, UPSTREAM_TOO_LARGE);
    CHECK_INT(g[3].err, UPSTREAM_UNAVAILABLE);   /* closed mid-body */
    upstream_free(u);
    loop_free(l);
}

TEST(past_the_cap_requests_wait_for_a_connection)
{
    loop_t *l = loop_new();
    upstream_t *u = new_upstream(l, 1, 2000);
    got_t g[3];
    memset(g, 0, sizeof g);
    send_get(u, "GET", "/len", &g[0]);
    send_get(u, "GET", "/chunked", &g[1]);
    send_get(u, "GET", "/len", &g[2]);
    CHECK_INT(upstream_connections(u), 1);
    run_until(l, g, 3);
    for (int i = 0; i < 3; i++) CHECK_INT(g[i].err, UPSTREAM_OK);
    CHECK_STR(g[1].body, "hello world");
    CHECK_INT(upstream_connections(u), 1);
    upstream_free(u);
    loop_free(l);
}

TEST(idle_connections_past_max_idle_are_closed_least_recently_used_first)
{
    /* nginx's `keepalive N`: after a burst, at most max_idle connections stay open idle; the
     * others close at once instead of holding the upstream's memory until its idle timeout. */
    loop_t *l = loop_new();
    upstream_t *u = new_upstream_idle(l, 8, 2000, 2);
    got_t g[6];
    memset(g, 0, sizeof g);
    for (int i = 0; i < 6; i++) send_get(u, "GET", "/len", &g[i]);
    CHECK_INT(upstream_connections(u), 6);
    run_until(l, g, 6);
    for (int i = 0; i < 6; i++) CHECK_INT(g[i].err, UPSTREAM_OK);
    CHECK_INT(upstream_connections(u), 2);
    /* the two kept serve the next requests: no new connection */
    int before = __atomic_load_n(&g_accepts, __ATOMIC_SEQ_CST);
    got_t h[2];
    memset(h, 0, sizeof h);
    send_get(u, "GET", "/len", &h[0]);
    send_get(u, "GET", "/chunked", &h[1]);
    run_until(l, h, 2);
    CHECK_STR(h[1].body, "hello world");
    CHECK_INT(__atomic_load_n(&g_accepts, __ATOMIC_SEQ_CST) - before, 0);
    CHECK_INT(upstream_connections(u), 2);
    upstream_free(u);
    loop_free(l);
}

TEST(a_cancelled_request_is_never_called_back)
{
    loop_t *l = loop_new();
    upstream_t *u = new_upstream(l, 1, 2000);
    got_t g[3];
    memset(g, 0, sizeof g);
    upstream_req_t *slow = send_get(u, "GET", "/slow", &g[0]);
    upstream_req_t *queued = send_get(u, "GET", "/len", &g[1]);
    send_get(u, "GET", "/len", &g[2]);
    loop_run_once(l, 10);
    upstream_cancel(queued);   /* waiting for the one connection */
    upstream_cancel(slow);     /* mid-answer: its connection is closed, the next one goes on */
    run_until(l, g + 2, 1);
    CHECK_INT(g[0].done, 0);
    CHECK_INT(g[1].done, 0);
    CHECK_INT(g[2].err, UPSTREAM_OK);
    upstream_free(u);
    loop_free(l);
}

static int g_port2;

TEST(a_moved_origin_gets_the_new_connections)
{
    loop_t *l = loop_new();
    upstream_t *u = new_upstream(l, 4, 2000);
    got_t g[3];
    memset(g, 0, sizeof g);
    char want[16];
    send_get(u, "GET", "/whoami", &g[0]);
    run_until(l, g, 1);
    snprintf(want, sizeof want, "%d", g_port);
    CHECK_STR(g[0].body, want);
    CHECK_INT(upstream_connections(u), 1);   /* idle, kept alive */
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)g_port2);
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    upstream_set_addr(u, &ss, sizeof *a);
    CHECK_INT(upstream_connections(u), 0);   /* the idle one to the old address is gone */
    send_get(u, "GET", "/whoami", &g[1]);
    run_until(l, g + 1, 1);
    snprintf(want, sizeof want, "%d", g_port2);
    CHECK_STR(g[1].body, want);
    send_get(u, "GET", "/whoami", &g[2]);
    run_until(l, g + 2, 1);
    CHECK_STR(g[2].body, want);
    upstream_free(u);
    loop_free(l);
}

TEST(a_refused_connection_fails_from_the_loop)
{
    loop_t *l = loop_new();
    upstream_opts_t o = { .max_conns = 2, .timeout_ms = 1000, .connect_ms = 500, .idle_ms = 1000 };
    struct sockaddr_in *a = (struct sockaddr_in *)&o.addr;
    a->sin_family = AF_INET;
    a->sin_port = htons(1);
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    o.addrlen = sizeof *a;
    upstream_t *u = upstream_new(l, &o);
    got_t g = { 0 };
    send_get(u, "GET", "/x", &g);
    CHECK_INT(g.done, 0);
    run_until(l, &g, 1);
    CHECK_INT(g.err, UPSTREAM_UNAVAILABLE);
    upstream_free(u);
    loop_free(l);
}

TEST(malformed_chunks_a_cut_head_and_a_huge_head_fail_unretried)
{
    loop_t *l = loop_new();
    upstream_t *u = new_upstream(l, 4, 2000);
    got_t g[3];
    memset(g, 0, sizeof g);
    int before = __atomic_load_n(&g_accepts, __ATOMIC_SEQ_CST);
    send_get(u, "GET", "/badchunk", &g[0]);   /* chunk data not followed by CRLF */
    send_get(u, "GET", "/cut", &g[1]);        /* the server closes in the middle of the head */
    send_get(u, "GET", "/hugehead", &g[2]);   /* 80 KiB of head without its blank line */
    run_until(l, g, 3);
    for (int i = 0; i < 3; i++) {
        CHECK_INT(g[i].done, 1);
        CHECK_INT(g[i].err, UPSTREAM_UNAVAILABLE);
    }
    /* each on a connection of its own, none tried a second time (they were not idempotent
     * failures of a reused connection) */
    CHECK_INT(__atomic_load_n(&g_accepts, __ATOMIC_SEQ_CST) - before, 3);
    /* the connection that carried a malformed answer is not kept for the next request */
    got_t ok = { 0 };
    send_get(u, "GET", "/len", &ok);
    run_until(l, &ok, 1);
    CHECK_INT(ok.err, UPSTREAM_OK);
    CHECK_STR(ok.body, "hello");
    upstream_free(u);
    loop_free(l);
}

TEST(a_request_waiting_for_a_connection_keeps_its_deadline)
{
    loop_t *l = loop_new();
    upstream_t *u = new_upstream(l, 1, 300);
    got_t g[2];
    memset(g, 0, sizeof g);
    uint64_t t0 = loop_now_ns();
    send_get(u, "GET", "/slow", &g[0]);   /* holds the one connection for 800 ms */
    send_get(u, "GET", "/len", &g[1]);    /* waits for it, past its 300 ms */
    run_until(l, g, 2);
    uint64_t ms = (loop_now_ns() - t0) / 1000000;
    CHECK_INT(g[0].err, UPSTREAM_TIMEOUT);
    /* Both deadlines fall at the same moment (one timeout for the upstream, sent together): the
     * waiter either times out while it waits or is answered on the connection the holder's
     * timeout freed, microseconds before its own deadline — ASan's slower loop saw the second.
     * What must hold is that it never waits past its deadline for the holder. */
    CHECK(g[1].err == UPSTREAM_TIMEOUT || g[1].err == 0);
    CHECK(ms >= 290 && ms < 700);
    upstream_free(u);
    loop_free(l);
}

static upstream_t *upstream_to(loop_t *l, const struct sockaddr_in *to, long connect_ms)
{
    upstream_opts_t o = { .max_conns = 2, .timeout_ms = 3000, .connect_ms = connect_ms, .idle_ms = 1000 };
    memcpy(&o.addr, to, sizeof *to);
    o.addrlen = sizeof *to;
    return upstream_new(l, &o);
}

TEST(a_connect_that_fails_at_once_or_never_completes_fails_in_time)
{
    loop_t *l = loop_new();
    /* TCP to the limited broadcast address: connect() refuses at once (ENETUNREACH). */
    struct sockaddr_in bc = { .sin_family = AF_INET, .sin_port = htons(80), .sin_addr.s_addr = htonl(INADDR_BROADCAST) };
    upstream_t *u = upstream_to(l, &bc, 500);
    got_t g = { 0 };
    send_get(u, "GET", "/x", &g);
    CHECK_INT(g.done, 0);   /* even so, called back from the loop */
    run_until(l, &g, 1);
    CHECK_INT(g.err, UPSTREAM_UNAVAILABLE);
    CHECK_INT(upstream_connections(u), 0);
    upstream_free(u);

    /* A listener whose accept queue is full and never drained: the handshake never completes. */
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t alen = sizeof a;
    CHECK(bind(lfd, (struct sockaddr *)&a, sizeof a) == 0 && listen(lfd, 0) == 0 &&
          getsockname(lfd, (struct sockaddr *)&a, &alen) == 0);
    int fill[4];
    for (int i = 0; i < 4; i++) {   /* what the queue holds; the rest of the SYNs are dropped */
        fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        (void)connect(fill[i], (struct sockaddr *)&a, sizeof a);
    }
    usleep(100000);
    u = upstream_to(l, &a, 200);
    got_t t = { 0 };
    uint64_t t0 = loop_now_ns();
    send_get(u, "GET", "/x", &t);
    run_until(l, &t, 1);
    uint64_t ms = (loop_now_ns() - t0) / 1000000;
    CHECK_INT(t.err, UPSTREAM_TIMEOUT);
    CHECK(ms >= 190 && ms < 1500);
    upstream_free(u);
    for (int i = 0; i < 4; i++) close(fill[i]);
    close(lfd);
    loop_free(l);
}

int main(void)
{
    size_t hl = (size_t)snprintf(g_huge_head, sizeof g_huge_head, "HTTP/1.1 200 OK\r\nX-Big: ");
    memset(g_huge_head + hl, 'a', sizeof g_huge_head - hl - 1);
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t alen = sizeof a;
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(lfd, 64) < 0 || getsockname(lfd, (struct sockaddr *)&a, &alen) < 0) {
        printf("Bail out! cannot listen\n");
        return 1;
    }
    g_port = ntohs(a.sin_port);
    pthread_t t;
    pthread_create(&t, NULL, serve, (void *)(intptr_t)lfd);
    pthread_detach(t);
    int lfd2 = socket(AF_INET, SOCK_STREAM, 0);   /* the same service, moved */
    struct sockaddr_in a2 = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t a2len = sizeof a2;
    if (bind(lfd2, (struct sockaddr *)&a2, sizeof a2) < 0 || listen(lfd2, 64) < 0 || getsockname(lfd2, (struct sockaddr *)&a2, &a2len) < 0) {
        printf("Bail out! cannot listen\n");
        return 1;
    }
    g_port2 = ntohs(a2.sin_port);
    pthread_create(&t, NULL, serve, (void *)(intptr_t)lfd2);
    pthread_detach(t);
    RUN(bodies_come_back_by_length_chunks_or_close);
    RUN(connections_are_reused_and_a_stale_one_is_retried);
    RUN(deadlines_malformed_and_oversized_answers_fail);
    RUN(past_the_cap_requests_wait_for_a_connection);
    RUN(idle_connections_past_max_idle_are_closed_least_recently_used_first);
    RUN(a_cancelled_request_is_never_called_back);
    RUN(a_moved_origin_gets_the_new_connections);
    RUN(a_refused_connection_fails_from_the_loop);
    RUN(malformed_chunks_a_cut_head_and_a_huge_head_fail_unretried);
    RUN(a_request_waiting_for_a_connection_keeps_its_deadline);
    RUN(a_connect_that_fails_at_once_or_never_completes_fails_in_time);
    return test_done();
}
