/* http1: the HTTP/1.1 request grammar (RFC 9112) — a request head and a chunked body read from
 * bytes the caller owns; no allocation, no I/O. host/conn.c runs it on each connection's input,
 * and the fuzzer runs it on anything. */
#ifndef MERCATO_HTTP1_H
#define MERCATO_HTTP1_H

#include <stddef.h>
#include <sys/types.h>

/* More header fields than any client sends; past it a head is 431. */
#define HTTP1_MAX_FIELDS 100

typedef struct http1_field {
    const char *name, *value;   /* NUL-terminated in place (see http1_parse_head) */
    size_t name_len, value_len;
} http1_field_t;

enum http1_framing { HTTP1_NO_BODY = 0, HTTP1_LENGTH, HTTP1_CHUNKED };

typedef struct http1_head {
    const char *method, *target;          /* NUL-terminated in place */
    size_t method_len, target_len;
    int minor;                            /* HTTP/1.<minor>: 0 or 1 */
    http1_field_t fields[HTTP1_MAX_FIELDS];
    int nfields;
    enum http1_framing framing;
    unsigned long long content_length;    /* HTTP1_LENGTH */
    int keep_alive;                       /* the client keeps the connection (version and Connection) */
    int expect_continue;                  /* Expect: 100-continue on an HTTP/1.1 request with a body */
} http1_head_t;

/* Where a head ends: the length of buf[0, len) up to and including the empty line that closes
 * the head (CRLF or bare LF line ends), 0 when it is not all in yet. Empty lines before the
 * request line are part of the head (RFC 9112 §2.2). `from` is where the previous call
 * stopped looking (0 at first): a head arriving in pieces is scanned once. */
size_t http1_head_end(const char *buf, size_t len, size_t *from);

/* Results of http1_parse_head besides 0: a status to answer (and then close), or
 * HTTP1_NOT_HTTP when the bytes are not an HTTP request at all (close without answer). */
enum { HTTP1_NOT_HTTP = -1 };

/* Parse the head buf[0, n) (n from http1_head_end), writing NULs into buf after the method, the
 * target and each field name and value, so that the pointers in h are C strings into buf.
 * Returns 0, or a status: 400 (malformed; HTTP/1.1 without Host; conflicting framing), 413
 * (a Content-Length past what 64 bits hold), 431 (more than HTTP1_MAX_FIELDS fields), 501
 * (a method that is not a token, or a Transfer-Encoding other than chunked), 505 (not HTTP/1.x),
 * or HTTP1_NOT_HTTP. */
int http1_parse_head(char *buf, size_t n, http1_head_t *h);

/* The first field named `name` (ASCII case-insensitive), or NULL. */
const char *http1_field(const http1_head_t *h, const char *name);

/* A chunked body being read (RFC 9112 §7.1); zero it before the first call. */
typedef struct http1_chunked {
    int state;
    unsigned long long left;   /* bytes of the current chunk still to come */
    size_t line;               /* length of the size or trailer line being read (bounded) */
} http1_chunked_t;

/* Decode buf[0, len) in place: the body bytes it holds are moved to buf[0, return value), and
 * *used says how many input bytes were consumed (all of them unless the body ended inside
 * buf: what follows belongs to the next request). *done becomes 1 once the last chunk and the
 * trailers are read. Returns -1 on malformed chunk framing (answer 400 and close). */
ssize_t http1_chunked_decode(http1_chunked_t *c, char *buf, size_t len, size_t *used, int *done);

/* The reason phrase of a status ("OK"), or "" for one without a well-known phrase. */
const char *http1_reason(int status);

#endif
