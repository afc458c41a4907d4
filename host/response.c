/* response: an answer being put together — see response.h. A copied body lives in the same
 * allocation as the response, and the first few hundred bytes of header lines inside it: one
 * malloc per ordinary answer. */
#include "response.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

response_t *response_new(const void *body, size_t len, enum response_body mode)
{
    size_t extra = mode == RESPONSE_COPY ? len : 0;
    response_t *resp = malloc(sizeof *resp + extra);
    if (!resp) {
        if (mode == RESPONSE_TAKE) free((void *)body);
        return NULL;
    }
    resp->len = len;
    resp->owns_body = mode == RESPONSE_TAKE;
    if (mode == RESPONSE_COPY) {
        resp->body = (char *)(resp + 1);
        if (len) memcpy(resp->body, body, len);
    } else {
        resp->body = (char *)body;
    }
    resp->close = 0;
    resp->hdr = resp->inline_hdr;
    resp->hlen = 0;
    resp->hcap = sizeof resp->inline_hdr;
    return resp;
}

static int valid_name(const char *s)
{
    if (!*s) return 0;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c <= ' ' || c >= 0x7f || c == ':' || strchr("\"(),/;<=>?@[\\]{}", c)) return 0;
    }
    return 1;
}

int response_add_header(response_t *resp, const char *name, const char *value)
{
    if (!valid_name(name) || strpbrk(value, "\r\n")) return -1;
    if (strcasecmp(name, "Content-Length") == 0 || strcasecmp(name, "Transfer-Encoding") == 0) return 0;
    if (strcasecmp(name, "Connection") == 0) {
        if (strcasestr(value, "close")) resp->close = 1;
        return 0;
    }
    size_t nl = strlen(name), vl = strlen(value), need = nl + vl + 4;
    if (resp->hlen + need > resp->hcap) {
        size_t cap = resp->hcap * 2;
        while (cap < resp->hlen + need) cap *= 2;
        char *h = resp->hdr == resp->inline_hdr ? malloc(cap) : realloc(resp->hdr, cap);
        if (!h) return -1;
        if (resp->hdr == resp->inline_hdr) memcpy(h, resp->inline_hdr, resp->hlen);
        resp->hdr = h;
        resp->hcap = cap;
    }
    /* Wire bytes, not C strings: nothing here is NUL-terminated. */
    char *p = resp->hdr + resp->hlen;
    memcpy(p, name, nl);   /* NOLINT(bugprone-not-null-terminated-result) */
    p += nl;
    *p++ = ':'; *p++ = ' ';
    memcpy(p, value, vl);  /* NOLINT(bugprone-not-null-terminated-result) */
    p += vl;
    *p++ = '\r'; *p++ = '\n';
    resp->hlen += need;
    return 0;
}

const char *response_header(const response_t *resp, const char *name, char *out, size_t outlen)
{
    size_t nl = strlen(name);
    const char *p = resp->hdr, *end = resp->hdr + resp->hlen;
    while (p < end) {
        const char *eol = memchr(p, '\r', (size_t)(end - p));
        if (!eol) break;
        if ((size_t)(eol - p) > nl + 1 && p[nl] == ':' && strncasecmp(p, name, nl) == 0) {
            const char *v = p + nl + 2;
            size_t vl = (size_t)(eol - v);
            if (!outlen) return NULL;
            if (vl >= outlen) vl = outlen - 1;
            memcpy(out, v, vl);
            out[vl] = 0;
            return out;
        }
        p = eol + 2;
    }
    return NULL;
}

void response_free(response_t *resp)
{
    if (!resp) return;
    if (resp->owns_body) free(resp->body);
    if (resp->hdr != resp->inline_hdr) free(resp->hdr);
    free(resp);
}
