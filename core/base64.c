/* base64: RFC 4648 base64 (both alphabets, strict decoding) and hex — the bytes JWTs, JWKS
 * and the crypto binding are written in. */
#include "base64.h"

#include <stdint.h>

static const char b64_std[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char b64_url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t base64_encoded_len(size_t n, int url)
{
    return url ? n / 3 * 4 + (n % 3 ? n % 3 + 1 : 0) : (n + 2) / 3 * 4;
}

size_t base64_encode(char *dst, const void *src, size_t n, int url)
{
    const unsigned char *s = src;
    const char *alpha = url ? b64_url : b64_std;
    char *d = dst;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
        *d++ = alpha[v >> 18 & 63];
        *d++ = alpha[v >> 12 & 63];
        *d++ = alpha[v >> 6 & 63];
        *d++ = alpha[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)s[i] << 16;
        *d++ = alpha[v >> 18 & 63];
        *d++ = alpha[v >> 12 & 63];
        if (!url) { *d++ = '='; *d++ = '='; }
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8;
        *d++ = alpha[v >> 18 & 63];
        *d++ = alpha[v >> 12 & 63];
        *d++ = alpha[v >> 6 & 63];
        if (!url) *d++ = '=';
    }
    *d = 0;
    return (size_t)(d - dst);
}

/* The 6-bit value of c in the chosen alphabet, or -1. */
static int b64_value(unsigned char c, int url)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == (url ? '-' : '+')) return 62;
    if (c == (url ? '_' : '/')) return 63;
    return -1;
}

long base64_decode(void *dst, const char *src, size_t n, int url)
{
    unsigned char *d = dst;
    if (!url) {
        if (n % 4) return -1;
        if (n && src[n - 1] == '=') n--;
        if (n && src[n - 1] == '=') n--;
    }
    if (n % 4 == 1) return -1;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64_value((unsigned char)src[i], url);
        if (v < 0) return -1;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            d[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0) return -1;   /* non-canonical: leftover bits must be zero */
    d[o] = 0;
    return (long)o;
}

void base64_hex(char *dst, const void *src, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    const unsigned char *s = src;
    for (size_t i = 0; i < n; i++) {
        dst[2 * i] = digits[s[i] >> 4];
        dst[2 * i + 1] = digits[s[i] & 15];
    }
    dst[2 * n] = 0;
}
