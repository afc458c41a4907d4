/* request: helpers on a request's raw bytes — its header fields, the clock, percent-decoding,
 * text checks. */
#include "request.h"

#include <string.h>
#include <strings.h>
#include <time.h>

#include "conn.h"

#include "../core/utf8.h"

const char *request_header(const request_t *r, const char *name)
{
    for (int i = 0; i < r->nfields; i++)
        if (strcasecmp(r->fields[i].name, name) == 0) return r->fields[i].value;
    return NULL;
}

const struct sockaddr *request_peer(const request_t *r)
{
    return r->conn ? conn_peer(r->conn) : NULL;
}

uint64_t request_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

size_t request_unescape(char *dst, const char *src, size_t len, int plus_space)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char c = src[i];
        if (c == '%' && i + 2 < len) {
            int hi = (unsigned char)src[i + 1], lo = (unsigned char)src[i + 2];
            int h = (hi >= '0' && hi <= '9') ? hi - '0' : (hi | 32) >= 'a' && (hi | 32) <= 'f' ? (hi | 32) - 'a' + 10 : -1;
            int l = (lo >= '0' && lo <= '9') ? lo - '0' : (lo | 32) >= 'a' && (lo | 32) <= 'f' ? (lo | 32) - 'a' + 10 : -1;
            if (h >= 0 && l >= 0) {
                dst[o++] = (char)(h * 16 + l);
                i += 2;
                continue;
            }
        }
        dst[o++] = (plus_space && c == '+') ? ' ' : c;
    }
    dst[o] = 0;
    return o;
}

int request_text_valid(const char *src, size_t len)
{
    unsigned char seq[4];
    size_t have = 0, need = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)src[i];
        if (c == '%' && i + 2 < len) {
            int hi = (unsigned char)src[i + 1], lo = (unsigned char)src[i + 2];
            int h = (hi >= '0' && hi <= '9') ? hi - '0' : (hi | 32) >= 'a' && (hi | 32) <= 'f' ? (hi | 32) - 'a' + 10 : -1;
            int l = (lo >= '0' && lo <= '9') ? lo - '0' : (lo | 32) >= 'a' && (lo | 32) <= 'f' ? (lo | 32) - 'a' + 10 : -1;
            if (h >= 0 && l >= 0) {
                c = (unsigned char)(h * 16 + l);
                i += 2;
            }
        }
        if (!have) {
            if (c < 0x80) continue;
            need = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
            if (!need) return 0;
        }
        seq[have++] = c;
        if (have == need) {
            if (utf8_seq(seq, need) != need) return 0;
            have = 0;
        }
    }
    return have == 0;
}
