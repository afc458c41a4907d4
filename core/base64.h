/* base64: base64 and hex (core/base64.c). */
#ifndef MERCATO_BASE64_H
#define MERCATO_BASE64_H

#include <stddef.h>

/* Bytes base64_encode writes for n input bytes, without the NUL. */
size_t base64_encoded_len(size_t n, int url);

/* Base64 of src into dst (capacity >= base64_encoded_len + 1), NUL-terminated. `url`:
 * the RFC 4648 §5 alphabet without padding; otherwise §4 with '=' padding. Returns the length. */
size_t base64_encode(char *dst, const void *src, size_t n, int url);

/* Decode n characters into dst (capacity >= n / 4 * 3 + 3), NUL-terminated for convenience.
 * Strict: wrong alphabet, wrong padding or non-zero trailing bits fail. Returns the decoded
 * length, or -1 for invalid input. */
long base64_decode(void *dst, const char *src, size_t n, int url);

/* Lower-case hex of src into dst (capacity >= 2n + 1). */
void base64_hex(char *dst, const void *src, size_t n);

#endif
