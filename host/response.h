/* response: an answer being put together — its header lines, already in wire form, and its
 * body — until host/conn.c writes it. */
#ifndef MERCATO_RESPONSE_H
#define MERCATO_RESPONSE_H

#include <stddef.h>

enum response_body {
    RESPONSE_COPY,     /* the body is copied into the response */
    RESPONSE_TAKE,     /* the response takes the malloc'd body and frees it */
    RESPONSE_STATIC    /* the body outlives the response (a literal) */
};

typedef struct response {
    char *body;
    size_t len;
    int owns_body;
    int close;           /* "Connection: close" was asked for */
    char *hdr;           /* "Name: value\r\n" lines */
    size_t hlen, hcap;
    char inline_hdr[448];
} response_t;

/* A response with body[0, len) (len 0: none), or NULL when out of memory (a RESPONSE_TAKE body
 * is freed then too). */
response_t *response_new(const void *body, size_t len, enum response_body mode);

/* Add a header line. Refused (-1) when the name is not a token or the value holds CR, LF or
 * NUL — a header never splits a response. Content-Length and Transfer-Encoding are the
 * server's (ignored, 0); Connection: close asks the server to close after this answer. */
int response_add_header(response_t *resp, const char *name, const char *value);

/* The value of the first header `name` (case-insensitive) copied into out, or NULL. */
const char *response_header(const response_t *resp, const char *name, char *out, size_t outlen);

void response_free(response_t *resp);

#endif
