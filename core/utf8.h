/* utf8: strict UTF-8 (RFC 3629) — what JSON text, JWTs, paths and query values must be. Header only:
 * the JSON codec calls it per non-ASCII byte. */
#ifndef MERCATO_UTF8_H
#define MERCATO_UTF8_H

#include <stddef.h>

/* The length of the UTF-8 sequence at s (avail bytes readable), or 0 when it is not one:
 * a stray continuation byte, an overlong form, a UTF-16 surrogate, a code point past
 * U+10FFFF, or a sequence cut short. */
static inline size_t utf8_seq(const unsigned char *s, size_t avail)
{
    unsigned c = s[0];
    if (c < 0x80) return 1;
    size_t n;
    unsigned lo = 0x80, hi = 0xbf;   /* the range of the second byte */
    if (c >= 0xc2 && c <= 0xdf) n = 2;
    else if (c >= 0xe0 && c <= 0xef) { n = 3; if (c == 0xe0) lo = 0xa0; else if (c == 0xed) hi = 0x9f; }
    else if (c >= 0xf0 && c <= 0xf4) { n = 4; if (c == 0xf0) lo = 0x90; else if (c == 0xf4) hi = 0x8f; }
    else return 0;
    if (avail < n || s[1] < lo || s[1] > hi) return 0;
    for (size_t k = 2; k < n; k++)
        if ((s[k] & 0xc0) != 0x80) return 0;
    return n;
}

/* 1 if s[0, len) is all UTF-8, else 0. */
static inline int utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        if (p[i] < 0x80) { i++; continue; }
        size_t n = utf8_seq(p + i, len - i);
        if (!n) return 0;
        i += n;
    }
    return 1;
}

#endif
