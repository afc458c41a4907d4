/* test_http1: the HTTP/1.1 request grammar (core/http1.c) — heads, their errors, framing,
 * chunked bodies fed whole and byte by byte, and the response object (host/response.c). */
#include <stdlib.h>

#include "../core/http1.h"
#include "../host/response.h"
#include "test.h"

/* Parse s as one head (http1_head_end must find its end at strlen(s)). */
static int parse(const char *s, http1_head_t *h, char *buf, size_t cap)
{
    size_t n = strlen(s), from = 0;
    if (n >= cap) return -100;
    memcpy(buf, s, n + 1);
    size_t end = http1_head_end(buf, n, &from);
    if (end != n) return -200;
    return http1_parse_head(buf, end, h);
}

TEST(head_end_across_pieces)
{
    const char *req = "\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b";
    size_t from = 0;
    for (size_t n = 0; n < 30; n++) CHECK_INT(http1_head_end(req, n, &from), 0);   /* 30 bytes */
    CHECK_INT(http1_head_end(req, 36, &from), 30);
    from = 0;
    CHECK_INT(http1_head_end("GET / HTTP/1.0\n\nrest", 20, &from), 16);   /* bare LF */
    from = 0;
    CHECK_INT(http1_head_end("\r\n\r\n\r\n", 6, &from), 0);                /* empty lines only: no head yet */
}

TEST(parses_a_request)
{
    http1_head_t h;
    char buf[512];
    CHECK_INT(parse("POST /p?q=1 HTTP/1.1\r\nHost: shop\r\nContent-Length: 5\r\nX-A:  padded \t\r\nx-a: second\r\n\r\n", &h, buf, sizeof buf), 0);
    CHECK_STR(h.method, "POST");
    CHECK_STR(h.target, "/p?q=1");
    CHECK_INT(h.target_len, 6);
    CHECK_INT(h.minor, 1);
    CHECK_INT(h.nfields, 4);
    CHECK_STR(http1_field(&h, "x-a"), "padded");
    CHECK_STR(h.fields[3].value, "second");
    CHECK_INT(h.framing, HTTP1_LENGTH);
    CHECK_INT(h.content_length, 5);
    CHECK_INT(h.keep_alive, 1);
    CHECK_INT(h.expect_continue, 0);
}

TEST(keep_alive_by_version_and_connection)
{
    http1_head_t h;
    char buf[512];
    CHECK_INT(parse("GET / HTTP/1.1\r\nHost: x\r\nConnection: foo, Close\r\n\r\n", &h, buf, sizeof buf), 0);
    CHECK_INT(h.keep_alive, 0);
    CHECK_INT(parse("GET / HTTP/1.0\r\n\r\n", &h, buf, sizeof buf), 0);
    CHECK_INT(h.keep_alive, 0);
    CHECK_INT(h.minor, 0);
    CHECK_INT(parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", &h, buf, sizeof buf), 0);
    CHECK_INT(h.keep_alive, 1);
    CHECK_INT(parse("POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n", &h, buf, sizeof buf), 0);
    CHECK_INT(h.expect_continue, 1);
    CHECK_INT(parse("GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n", &h, buf, sizeof buf), 0);
    CHECK_INT(h.expect_continue, 0);   /* nothing to continue with */
}

TEST(refuses_what_it_must)
{
    static const struct { const char *head; int want; } cases[] = {
        { "GET /hello\r\n\r\n", 400 },                                        /* no version */
        { "GET /hello HTTP/1.1\r\n\r\n", 400 },                               /* 1.1 without Host */
        { "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400 },
        { "GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n", 400 },
        { "GET / HTTP/1.1\r\nHost: x\r\nX-A : v\r\n\r\n", 400 },               /* space before the colon */
        { "GET / HTTP/1.1\r\nHost: x\r\nX-A: v\r\n folded\r\n\r\n", 400 },    /* obsolete folding */
        { "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\001b\r\n\r\n", 400 },
        { "GET /a\001b HTTP/1.1\r\nHost: x\r\n\r\n", 400 },
        { "GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400 },                         /* empty target */
        { "GET / HTTP/9.9\r\nHost: x\r\n\r\n", 505 },
        { "GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505 },
        { "GET / HTTX/1.1\r\nHost: x\r\n\r\n", 400 },
        { "G@T / HTTP/1.1\r\nHost: x\r\n\r\n", 501 },
        { "GARBAGE\r\n\r\n", HTTP1_NOT_HTTP },
        { "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400 },
        { "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400 },
        { "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 1\r\n\r\n", 400 },
        { "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400 },
        { "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n", 413 },
        { "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400 },
        { "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501 },
        { "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400 },
        { "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        http1_head_t h;
        char buf[512];
        int got = parse(cases[i].head, &h, buf, sizeof buf);
        if (got != cases[i].want) printf("#   case %zu: %.40s\n", i, cases[i].head);
        CHECK_INT(got, cases[i].want);
    }
}

TEST(too_many_fields_is_431)
{
    char head[8192] = "GET / HTTP/1.1\r\nHost: x\r\n";
    for (int i = 0; i < HTTP1_MAX_FIELDS; i++) {
        char f[32];
        snprintf(f, sizeof f, "X-%d: v\r\n", i);
        strcat(head, f);
    }
    strcat(head, "\r\n");
    http1_head_t h;
    char buf[8192];
    CHECK_INT(parse(head, &h, buf, sizeof buf), 431);
}

/* Decode `in` fed in pieces of `step` bytes (the buffer kept as a connection would). */
static int decode(const char *in, size_t step, char *out, size_t *outlen, size_t *rest)
{
    http1_chunked_t c = { 0 };
    size_t len = strlen(in), pos = 0, o = 0;
    char buf[1024];
    size_t have = 0;
    int done = 0;
    while (!done && (pos < len || have)) {
        size_t n = len - pos < step ? len - pos : step;
        memcpy(buf + have, in + pos, n);
        have += n;
        pos += n;
        size_t used = 0;
        ssize_t got = http1_chunked_decode(&c, buf, have, &used, &done);
        if (got < 0) return -1;
        memcpy(out + o, buf, (size_t)got);
        o += (size_t)got;
        memmove(buf, buf + used, have - used);
        have -= used;
        if (!n && !done) break;
    }
    *outlen = o;
    *rest = have + (len - pos);
    return done;
}

TEST(chunked_bodies_whole_and_byte_by_byte)
{
    const char *body = "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\nGET /next";
    for (size_t step = 1; step <= 64; step += 7) {
        char out[64];
        size_t n = 0, rest = 0;
        CHECK_INT(decode(body, step, out, &n, &rest), 1);
        CHECK_INT(n, 11);
        CHECK(memcmp(out, "hello world", 11) == 0);
        CHECK_INT(rest, 9);   /* "GET /next" is the next request's */
    }
    char out[64];
    size_t n, rest;
    CHECK_INT(decode("A\nabcdefghij\n0\n\n", 3, out, &n, &rest), 1);   /* bare LF, upper-case hex */
    CHECK_INT(n, 10);
    CHECK_INT(decode("x\r\n", 1, out, &n, &rest), -1);                    /* no digits */
    CHECK_INT(decode("3\r\nabcd\r\n", 1, out, &n, &rest), -1);            /* data longer than its size */
    CHECK_INT(decode("fffffffffffffffff\r\n", 64, out, &n, &rest), -1);   /* past 64 bits */
    CHECK_INT(decode("3\r\nabc\r\n", 64, out, &n, &rest), 0);             /* not over yet */
}

TEST(response_headers_are_checked_and_found)
{
    response_t *r = response_new("body", 4, RESPONSE_COPY);
    CHECK(r != NULL);
    CHECK_INT(response_add_header(r, "X-A", "1"), 0);
    CHECK_INT(response_add_header(r, "Bad Name", "1"), -1);
    CHECK_INT(response_add_header(r, "X-B", "split\r\nX-Evil: 1"), -1);
    CHECK_INT(response_add_header(r, "Content-Length", "99"), 0);   /* the server's own */
    CHECK_INT(response_add_header(r, "Connection", "close"), 0);
    CHECK_INT(r->close, 1);
    char big[600];
    memset(big, 'v', sizeof big - 1);
    big[sizeof big - 1] = 0;
    CHECK_INT(response_add_header(r, "X-Big", big), 0);               /* past the inline block */
    char v[16];
    CHECK_STR(response_header(r, "x-a", v, sizeof v), "1");
    CHECK(response_header(r, "X-B", v, sizeof v) == NULL);
    CHECK(response_header(r, "Content-Length", v, sizeof v) == NULL);
    CHECK(strstr(r->hdr, "X-A: 1\r\nX-Big: vvv") == r->hdr);
    CHECK(memcmp(r->body, "body", 4) == 0);
    response_free(r);
    char *taken = malloc(3);
    memcpy(taken, "abc", 3);
    r = response_new(taken, 3, RESPONSE_TAKE);
    CHECK(r && r->body == taken);
    response_free(r);   /* frees taken: ASan would say otherwise */
}

int main(void)
{
    RUN(head_end_across_pieces);
    RUN(parses_a_request);
    RUN(keep_alive_by_version_and_connection);
    RUN(refuses_what_it_must);
    RUN(too_many_fields_is_431);
    RUN(chunked_bodies_whole_and_byte_by_byte);
    RUN(response_headers_are_checked_and_found);
    return test_done();
}
