/* buf: a growable byte buffer; the owner of the struct frees `data` with buf_free. */
#include "buf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void buf_init(buf_t *b) { memset(b, 0, sizeof *b); }

void buf_free(buf_t *b)
{
    free(b->data);
    memset(b, 0, sizeof *b);
}

int buf_reserve(buf_t *b, size_t extra)
{
    if (b->failed) return -1;
    if (b->len + extra + 1 <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1) cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p) { b->failed = 1; return -1; }
    b->data = p;
    b->cap = cap;
    return 0;
}

void buf_add(buf_t *b, const void *p, size_t n)
{
    if (buf_reserve(b, n) < 0) return;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = 0;
}

void buf_adds(buf_t *b, const char *s) { buf_add(b, s, strlen(s)); }

void buf_addf(buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || buf_reserve(b, (size_t)n) < 0) return;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

char *buf_take(buf_t *b, size_t *len)
{
    if (buf_reserve(b, 0) < 0) { buf_free(b); return NULL; }
    char *p = b->data;
    if (len) *len = b->len;
    memset(b, 0, sizeof *b);
    return p;
}
