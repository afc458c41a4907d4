/* fuzz_http1: the HTTP/1.1 request grammar (core/http1.c) on arbitrary bytes — what every
 * client reaches first. The input is a head, then a chunked body after the first NUL byte.
 * Properties: a head's end is found the same whether the bytes come at once or one by one, and
 * lies inside the input; a head that parses has its method, target and every field name and
 * value NUL-terminated inside it, with the lengths it states, a method of token characters and
 * a target without controls or spaces, and one framing; a status is one of those documented.
 * A chunked body decodes to the same bytes and the same end whether fed whole or byte by byte,
 * never to more bytes than came in. */
#include "../../core/http1.h"
#include "fuzz.h"

static void check_head(const uint8_t *data, size_t size)
{
    char *buf = fuzz_strndup(data, size);
    size_t from = 0;
    size_t end = http1_head_end(buf, size, &from);
    FUZZ_ASSERT(end <= size);
    size_t from1 = 0, end1 = 0;
    for (size_t n = 0; n <= size && !end1; n++) end1 = http1_head_end(buf, n, &from1);
    FUZZ_ASSERT(end1 == end);
    if (!end) { free(buf); return; }

    char *head = fuzz_strndup(data, end);   /* the parser sees only the head: ASan guards its end */
    http1_head_t h;
    int rc = http1_parse_head(head, end, &h);
    FUZZ_ASSERT(rc == 0 || rc == HTTP1_NOT_HTTP || rc == 400 || rc == 413 || rc == 431 || rc == 501 || rc == 505);
    if (rc == 0) {
        const char *lo = head, *hi = head + end;
        FUZZ_ASSERT(h.method >= lo && h.method + h.method_len < hi && strlen(h.method) == h.method_len && h.method_len);
        FUZZ_ASSERT(h.target >= lo && h.target + h.target_len < hi && strlen(h.target) == h.target_len && h.target_len);
        for (size_t i = 0; i < h.target_len; i++) FUZZ_ASSERT((unsigned char)h.target[i] > 0x20 && h.target[i] != 0x7f);
        FUZZ_ASSERT(h.minor == 0 || h.minor == 1);
        FUZZ_ASSERT(h.nfields >= 0 && h.nfields <= HTTP1_MAX_FIELDS);
        for (int i = 0; i < h.nfields; i++) {
            const http1_field_t *f = &h.fields[i];
            FUZZ_ASSERT(f->name >= lo && f->name + f->name_len < hi && strlen(f->name) == f->name_len && f->name_len);
            FUZZ_ASSERT(f->value >= lo && f->value + f->value_len <= hi && strlen(f->value) == f->value_len);
            FUZZ_ASSERT(!strchr(f->name, ':') && !strchr(f->name, ' '));
            FUZZ_ASSERT(!f->value_len || (f->value[0] != ' ' && f->value[f->value_len - 1] != ' '));
        }
        FUZZ_ASSERT(h.framing != HTTP1_LENGTH || h.content_length > 0);
        FUZZ_ASSERT(h.minor == 1 || h.framing != HTTP1_CHUNKED);
        FUZZ_ASSERT(h.minor == 0 || http1_field(&h, "host") != NULL);
    }
    free(head);
    free(buf);
}

static void check_chunked(const uint8_t *data, size_t size)
{
    char *whole = fuzz_strndup(data, size), *out1 = malloc(size + 1);
    if (!out1) abort();
    http1_chunked_t c = { 0 };
    size_t used = 0;
    int done = 0;
    ssize_t n = http1_chunked_decode(&c, whole, size, &used, &done);
    FUZZ_ASSERT(n < 0 || ((size_t)n <= used && used <= size));
    FUZZ_ASSERT(n < 0 || done || used == size);

    /* Byte by byte, as a connection would when each byte arrives alone. */
    http1_chunked_t c1 = { 0 };
    size_t o = 0, pos = 0;
    ssize_t bad = 0;
    int done1 = 0;
    while (pos < size && !done1) {
        char b = (char)data[pos];
        size_t u = 0;
        ssize_t k = http1_chunked_decode(&c1, &b, 1, &u, &done1);
        if (k < 0) { bad = -1; break; }
        FUZZ_ASSERT(u == 1 || (u == 0 && done1));
        if (k) out1[o++] = b;
        pos += u;
        if (!u) break;
    }
    FUZZ_ASSERT((n < 0) == (bad < 0));
    if (n >= 0) {
        FUZZ_ASSERT(done == done1);
        FUZZ_ASSERT((size_t)n == o && memcmp(whole, out1, o) == 0);
        FUZZ_ASSERT(pos == used);
    }
    free(out1);
    free(whole);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t head_len, body_len;
    const uint8_t *body;
    fuzz_split(data, size, 0, &head_len, &body, &body_len);
    check_head(data, head_len);
    check_chunked(body, body_len);
    return 0;
}
