/* fuzz.h: what the libFuzzer targets under tests/fuzz/ share — the entry point's prototype, a
 * way to cut one input into parts, and a check that aborts (a finding) instead of returning. */
#ifndef MERCATO_FUZZ_H
#define MERCATO_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A property the code under test must keep: a violation aborts, which libFuzzer reports as a
 * crash with the input that caused it. */
#define FUZZ_ASSERT(cond) do { \
        if (!(cond)) { fprintf(stderr, "fuzz property failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); abort(); } \
    } while (0)

/* Cut data at the first byte sep: the head is [0, *head_len), the tail the rest after sep
 * (empty when sep is absent). Both are slices of data. */
static inline void fuzz_split(const uint8_t *data, size_t size, uint8_t sep, size_t *head_len,
                              const uint8_t **tail, size_t *tail_len)
{
    const uint8_t *cut = size ? memchr(data, sep, size) : NULL;
    *head_len = cut ? (size_t)(cut - data) : size;
    *tail = cut ? cut + 1 : data + size;
    *tail_len = cut ? size - *head_len - 1 : 0;
}

/* A malloc-ed copy of data[0, n) with a NUL after it (the caller frees): ASan then sees any
 * read past n, which a slice of libFuzzer's buffer would not show for NUL-terminated APIs. */
static inline char *fuzz_strndup(const uint8_t *data, size_t n)
{
    char *s = malloc(n + 1);
    if (!s) abort();
    memcpy(s, data, n);
    s[n] = 0;
    return s;
}

#endif
