/* log: JSON lines on stdout; one buffered access log per worker thread. */
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <pthread.h>
#include <unistd.h>

static pthread_mutex_t g_out_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_level = LOG_INFO;
static const char *g_service = "mercato";
static const char *const level_names[] = { "debug", "info", "warn", "error" };

void log_init(int level, const char *service)
{
    g_level = level;
    if (service) g_service = service;
}

int log_enabled(int level) { return level >= g_level; }

void log_timestamp(char *buf, size_t cap)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(buf, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
}

size_t log_json_escape(char *dst, size_t cap, const char *src, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    if (cap == 0) return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)src[i];
        char esc = 0;
        switch (c) {
        case '"': esc = '"'; break;
        case '\\': esc = '\\'; break;
        case '\n': esc = 'n'; break;
        case '\r': esc = 'r'; break;
        case '\t': esc = 't'; break;
        default: break;
        }
        if (esc) {
            if (o + 2 >= cap) break;
            dst[o++] = '\\';
            dst[o++] = esc;
        } else if (c < 0x20 || c == 0x7f || c >= 0x80) {
            /* Bytes >= 0x80 are escaped too: logs must stay valid JSON whatever a client sent. */
            if (o + 6 >= cap) break;
            memcpy(dst + o, "\\u00", 4);
            dst[o + 4] = hex[c >> 4];
            dst[o + 5] = hex[c & 15];
            o += 6;
        } else {
            if (o + 1 >= cap) break;
            dst[o++] = (char)c;
        }
    }
    dst[o] = 0;
    return o;
}

/* Where a URL (or a password value) ends: space, quote, backslash (an escape in JSON text),
 * angle brackets, or the end. */
static int url_end(char c)
{
    return c == 0 || c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '"' || c == '\'' || c == '\\' ||
           c == '<' || c == '>';
}

static int scheme_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.';
}

size_t log_redact(char *s)
{
    static const char url_mark[] = "<url>", pw_mark[] = "***";
    size_t n = strlen(s);
    char *p = s;
    while ((p = strstr(p, "://")) != NULL) {
        char *start = p, *end = p + 3;
        while (start > s && scheme_char(start[-1])) start--;
        if (start == p || url_end(*end)) { p += 3; continue; }   /* no scheme, or nothing after it */
        while (!url_end(*end)) end++;
        size_t tail = n - (size_t)(end - s);
        memcpy(start, url_mark, sizeof url_mark - 1);
        memmove(start + sizeof url_mark - 1, end, tail + 1);
        n -= (size_t)(end - start) - (sizeof url_mark - 1);
        p = start + sizeof url_mark - 1;
    }
    /* A libpq key=value connection string's password. */
    for (p = s; (p = strstr(p, "password=")) != NULL;) {
        char *v = p + 9, *end = v;
        while (!url_end(*end)) end++;
        if (end - v > 3 || memcmp(v, pw_mark, (size_t)(end - v)) != 0) {
            size_t tail = n - (size_t)(end - s);
            memcpy(v, pw_mark, sizeof pw_mark - 1);
            memmove(v + sizeof pw_mark - 1, end, tail + 1);
            n -= (size_t)(end - v) - (sizeof pw_mark - 1);
        }
        p = v + sizeof pw_mark - 1;
    }
    return n;
}

/* Whole lines from several threads must not interleave, even on a pipe past PIPE_BUF. */
static void write_all(int fd, const char *p, size_t n)
{
    pthread_mutex_lock(&g_out_lock);
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w <= 0) break;   /* a broken stdout must not take the service down */
        p += w;
        n -= (size_t)w;
    }
    pthread_mutex_unlock(&g_out_lock);
}

void log_line(int level, const char *fields, const char *fmt, ...)
{
    if (level < g_level) return;
    char msg[4096], esc[8192], ts[40], line[16384];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    size_t mlen = log_redact(msg);   /* no URL or password in a log line, whoever wrote the text */
    log_json_escape(esc, sizeof esc, msg, mlen);
    log_timestamp(ts, sizeof ts);
    char fbuf[8192];
    if (fields && strstr(fields, "://") == NULL && strstr(fields, "password=") == NULL) {
        /* the usual case: nothing to take out */
    } else if (fields) {
        snprintf(fbuf, sizeof fbuf, "%s", fields);
        log_redact(fbuf);
        fields = fbuf;
    }
    int len = snprintf(line, sizeof line, "{\"ts\":\"%s\",\"level\":\"%s\",\"service\":\"%s\",\"msg\":\"%s\"%s%s}\n",
                       ts, level_names[level], g_service, esc, fields && *fields ? "," : "", fields ? fields : "");
    if (len < 0) return;
    if ((size_t)len >= sizeof line) {   /* cut, but keep the line valid JSON */
        len = snprintf(line, sizeof line, "{\"ts\":\"%s\",\"level\":\"%s\",\"service\":\"%s\",\"msg\":\"%.4000s\",\"truncated\":true}\n",
                       ts, level_names[level], g_service, esc);
    }
    write_all(STDOUT_FILENO, line, (size_t)len);
}

/* ---------------------------------------------------------------------------------------- */

int logbuf_init(logbuf_t *b, size_t cap)
{
    b->buf = malloc(cap);
    b->len = 0;
    b->cap = b->buf ? cap : 0;
    return b->buf ? 0 : -1;
}

void logbuf_free(logbuf_t *b)
{
    logbuf_flush(b);
    free(b->buf);
    b->buf = NULL;
    b->cap = 0;
}

char *logbuf_reserve(logbuf_t *b, size_t n)
{
    if (n > b->cap) return NULL;
    if (b->len + n > b->cap) logbuf_flush(b);
    return b->buf + b->len;
}

void logbuf_commit(logbuf_t *b, size_t n) { b->len += n; }

void logbuf_flush(logbuf_t *b)
{
    if (b->len) write_all(STDOUT_FILENO, b->buf, b->len);
    b->len = 0;
}
