/* buf: a growable byte buffer; the owner of the struct frees `data` with buf_free. */
#ifndef MERCATO_BUF_H
#define MERCATO_BUF_H

#include <stdarg.h>
#include <stddef.h>

typedef struct buf {
    char *data;
    size_t len, cap;
    int failed;          /* an allocation failed; the content is incomplete */
} buf_t;

void buf_init(buf_t *b);
void buf_free(buf_t *b);
int buf_reserve(buf_t *b, size_t extra);
void buf_add(buf_t *b, const void *p, size_t n);
void buf_adds(buf_t *b, const char *s);
void buf_addf(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Hand the NUL-terminated bytes to the caller (who frees them); the buffer is reset. */
char *buf_take(buf_t *b, size_t *len);

#endif
