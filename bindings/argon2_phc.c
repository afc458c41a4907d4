/* argon2_phc: argon2id PHC strings (see argon2_phc.h). */
#include "argon2_phc.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/base64.h"

/* Unpadded standard base64 of n bytes at p appended at out[*at], within outlen. 0, or -1. */
static int put_b64(char *out, size_t outlen, size_t *at, const uint8_t *p, size_t n)
{
    char tmp[PHC_MAX_HASH * 2];
    size_t len = base64_encode(tmp, p, n, 0);
    while (len && tmp[len - 1] == '=') len--;
    if (*at + len >= outlen) return -1;
    memcpy(out + *at, tmp, len);
    *at += len;
    out[*at] = 0;
    return 0;
}

int phc_encode(char *out, size_t outlen, const phc_t *h)
{
    int n = snprintf(out, outlen, "$argon2id$v=%" PRIu32 "$m=%" PRIu32 ",t=%" PRIu32 ",p=%" PRIu32 "$",
                     h->version, h->m_kib, h->t, h->p);
    if (n < 0 || (size_t)n >= outlen) return -1;
    size_t at = (size_t)n;
    if (put_b64(out, outlen, &at, h->salt, h->saltlen) != 0 || at + 1 >= outlen) return -1;
    out[at++] = '$';
    if (put_b64(out, outlen, &at, h->hash, h->hashlen) != 0) return -1;
    return (int)at;
}

/* A decimal uint32 after prefix at *s (no sign, no leading zero but "0"); advances *s. */
static int get_u32(const char **s, const char *prefix, uint32_t *out)
{
    size_t k = strlen(prefix);
    if (strncmp(*s, prefix, k) != 0) return -1;
    const char *p = *s + k;
    if (*p < '0' || *p > '9' || (*p == '0' && p[1] >= '0' && p[1] <= '9')) return -1;
    char *end;
    errno = 0;
    unsigned long v = strtoul(p, &end, 10);
    if (errno || v > UINT32_MAX) return -1;
    *out = (uint32_t)v;
    *s = end;
    return 0;
}

/* Unpadded standard base64 up to the next '$' or the end, into dst (at most cap bytes). */
static int get_b64(const char **s, uint8_t *dst, size_t cap, size_t *len)
{
    size_t n = strcspn(*s, "$");
    if (n == 0 || n % 4 == 1 || n > (cap * 4 + 2) / 3) return -1;
    char tmp[PHC_MAX_HASH * 2 + 4];
    memcpy(tmp, *s, n);
    while (n % 4) tmp[n++] = '=';
    uint8_t raw[PHC_MAX_HASH + 3];
    long got = base64_decode(raw, tmp, n, 0);
    if (got < 0 || (size_t)got > cap) return -1;
    memcpy(dst, raw, (size_t)got);
    *len = (size_t)got;
    *s += strcspn(*s, "$");
    return 0;
}

int phc_decode(const char *s, phc_t *h)
{
    memset(h, 0, sizeof *h);
    if (strncmp(s, "$argon2id", 9) != 0) return -1;
    s += 9;
    h->version = 0x10;
    if (strncmp(s, "$v=", 3) == 0 && get_u32(&s, "$v=", &h->version) != 0) return -1;
    if (get_u32(&s, "$m=", &h->m_kib) != 0 || get_u32(&s, ",t=", &h->t) != 0 || get_u32(&s, ",p=", &h->p) != 0) return -1;
    if (*s++ != '$' || get_b64(&s, h->salt, sizeof h->salt, &h->saltlen) != 0) return -1;
    if (*s++ != '$' || get_b64(&s, h->hash, sizeof h->hash, &h->hashlen) != 0 || *s) return -1;
    return h->saltlen >= 8 && h->hashlen >= 4 ? 0 : -1;
}
