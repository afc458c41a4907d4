/* log: JSON lines on stdout; one buffered access log per worker thread. */
#ifndef MERCATO_LOG_H
#define MERCATO_LOG_H

#include <stdarg.h>
#include <stddef.h>

enum { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

void log_init(int level, const char *service);
int log_enabled(int level);

/* One JSON line: {"ts":..,"level":..,"service":..,"msg":<fmt...>[,<fields>]}. `fields` is a
 * ready JSON fragment without braces ("\"k\":1,\"x\":\"y\"") or NULL. Written with one write(). */
void log_line(int level, const char *fields, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
#define log_debug(...) do { if (log_enabled(LOG_DEBUG)) log_line(LOG_DEBUG, NULL, __VA_ARGS__); } while (0)
#define log_info(...)  log_line(LOG_INFO, NULL, __VA_ARGS__)
#define log_warn(...)  log_line(LOG_WARN, NULL, __VA_ARGS__)
#define log_error(...) log_line(LOG_ERROR, NULL, __VA_ARGS__)

/* Append src as the inside of a JSON string (no quotes) to dst; returns bytes written, never
 * more than cap - 1, always NUL-terminated. Control characters and invalid bytes escaped. */
size_t log_json_escape(char *dst, size_t cap, const char *src, size_t len);

/* Take secrets out of s in place: every URL (scheme://...) becomes "<url>", every
 * "password=<value>" becomes "password=***". Returns the new length. log_line and /ready run
 * every text through it, so a library's message that echoes a connection string shows
 * neither the string nor its password. */
size_t log_redact(char *s);

/* RFC 3339 UTC timestamp with milliseconds into buf (at least 32 bytes). */
void log_timestamp(char *buf, size_t cap);

/* A line buffer owned by one thread; flushed to stdout when full or when asked. */
typedef struct logbuf {
    char *buf;
    size_t len, cap;
} logbuf_t;

int logbuf_init(logbuf_t *b, size_t cap);
void logbuf_free(logbuf_t *b);
/* Reserve room for n more bytes (flushing first if needed); returns the write pointer. */
char *logbuf_reserve(logbuf_t *b, size_t n);
void logbuf_commit(logbuf_t *b, size_t n);
void logbuf_flush(logbuf_t *b);

#endif
