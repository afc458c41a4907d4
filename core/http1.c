/* http1: the HTTP/1.1 request grammar (RFC 9112) — see http1.h.
 *
 * Strict where leniency has been an attack (request smuggling: Transfer-Encoding with
 * Content-Length, differing lengths, folded lines, a space before the colon are all 400),
 * lenient where clients differ harmlessly (bare LF line ends, empty lines before the request). */
#include "http1.h"

#include <stddef.h>
#include <string.h>
#include <strings.h>

/* ---- characters ------------------------------------------------------------------------- */

/* tchar (RFC 9110 §5.6.2): what a method or a field name is made of. */
static int is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return 1;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int is_ows(char c) { return c == ' ' || c == '\t'; }

/* ---- where a head ends ------------------------------------------------------------------ */

size_t http1_head_end(const char *buf, size_t len, size_t *from)
{
    size_t lead = 0;   /* empty lines before the request line */
    while (lead < len && (buf[lead] == '\r' || buf[lead] == '\n')) lead++;
    size_t pos = *from > lead ? *from : lead;
    for (;;) {
        const char *nl = memchr(buf + pos, '\n', len - pos);
        if (!nl) { *from = pos; return 0; }
        size_t end = (size_t)(nl - buf);
        size_t line = end - pos;
        if (pos > lead && (line == 0 || (line == 1 && buf[pos] == '\r'))) return end + 1;
        pos = end + 1;
    }
}

/* ---- the head ----------------------------------------------------------------------------- */

/* One line of buf[*p, n): its bytes [start, end) without the CR, *p moved past its LF. */
static int next_line(char *buf, size_t n, size_t *p, size_t *start, size_t *end)
{
    if (*p >= n) return 0;
    char *nl = memchr(buf + *p, '\n', n - *p);
    size_t e = nl ? (size_t)(nl - buf) : n;
    *start = *p;
    *p = e + 1;
    if (e > *start && buf[e - 1] == '\r') e--;
    *end = e;
    return 1;
}

/* 1 if the comma-separated list `v` holds `token` (case-insensitive). */
static int list_has(const char *v, const char *token)
{
    size_t n = strlen(token);
    while (*v) {
        while (*v == ',' || is_ows(*v)) v++;
        const char *s = v;
        while (*v && *v != ',') v++;
        const char *e = v;
        while (e > s && is_ows(e[-1])) e--;
        if ((size_t)(e - s) == n && strncasecmp(s, token, n) == 0) return 1;
    }
    return 0;
}

static int parse_request_line(char *buf, size_t start, size_t end, http1_head_t *h)
{
    char *line = buf + start;
    size_t len = end - start;
    char *sp1 = memchr(line, ' ', len);
    if (!sp1) return HTTP1_NOT_HTTP;   /* no target at all: not an HTTP request */
    h->method = line;
    h->method_len = (size_t)(sp1 - line);
    if (!h->method_len) return 400;
    char *target = sp1 + 1;
    char *sp2 = memchr(target, ' ', (size_t)(line + len - target));
    if (!sp2) return 400;              /* no version: HTTP/0.9 is not served */
    h->target = target;
    h->target_len = (size_t)(sp2 - target);
    if (!h->target_len) return 400;
    for (size_t i = 0; i < h->target_len; i++) {
        unsigned char c = (unsigned char)target[i];
        if (c < 0x21 || c == 0x7f) return 400;
    }
    const char *v = sp2 + 1;
    size_t vlen = (size_t)(line + len - v);
    if (vlen != 8 || memcmp(v, "HTTP/", 5) != 0 || v[6] != '.' || v[5] < '0' || v[5] > '9' || v[7] < '0' || v[7] > '9')
        return 400;
    if (v[5] != '1') return 505;
    h->minor = v[7] == '0' ? 0 : 1;   /* a later 1.x reads as 1.1 (RFC 9110 §6.2) */
    for (size_t i = 0; i < h->method_len; i++)
        if (!is_tchar((unsigned char)line[i])) return 501;
    *sp1 = 0;
    *sp2 = 0;
    return 0;
}

static int parse_field(char *buf, size_t start, size_t end, http1_head_t *h)
{
    char *line = buf + start;
    size_t len = end - start;
    if (is_ows(line[0])) return 400;                        /* obsolete line folding */
    char *colon = memchr(line, ':', len);
    if (!colon || colon == line) return 400;
    for (char *c = line; c < colon; c++)
        if (!is_tchar((unsigned char)*c)) return 400;       /* a space before the colon included */
    char *v = colon + 1, *e = line + len;
    while (v < e && is_ows(*v)) v++;
    while (e > v && is_ows(e[-1])) e--;
    for (char *c = v; c < e; c++) {
        unsigned char ch = (unsigned char)*c;
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f) return 400;
    }
    if (h->nfields == HTTP1_MAX_FIELDS) return 431;
    http1_field_t *f = &h->fields[h->nfields++];
    f->name = line;
    f->name_len = (size_t)(colon - line);
    f->value = v;
    f->value_len = (size_t)(e - v);
    *colon = 0;
    *e = 0;   /* e is the first OWS, the CR or the LF after the value: always inside the head */
    return 0;
}

static int parse_length(const char *v, unsigned long long *out)
{
    unsigned long long n = 0;
    if (!*v) return 400;
    for (; *v; v++) {
        if (*v < '0' || *v > '9') return 400;
        unsigned d = (unsigned)(*v - '0');
        if (n > (~0ull - d) / 10) return 413;
        n = n * 10 + d;
    }
    *out = n;
    return 0;
}

/* Body framing, Host, keep-alive and Expect from the fields. */
static int read_fields(http1_head_t *h)
{
    int hosts = 0, lengths = 0, chunked = 0, closing = 0, keep = 0, expect = 0;
    for (int i = 0; i < h->nfields; i++) {
        const http1_field_t *f = &h->fields[i];
        if (strcasecmp(f->name, "Host") == 0) {
            hosts++;
        } else if (strcasecmp(f->name, "Content-Length") == 0) {
            unsigned long long n;
            int rc = parse_length(f->value, &n);
            if (rc) return rc;
            if (lengths++ && n != h->content_length) return 400;
            h->content_length = n;
        } else if (strcasecmp(f->name, "Transfer-Encoding") == 0) {
            if (strcasecmp(f->value, "chunked") != 0) return list_has(f->value, "chunked") ? 400 : 501;
            if (chunked++) return 400;
        } else if (strcasecmp(f->name, "Connection") == 0) {
            closing |= list_has(f->value, "close");
            keep |= list_has(f->value, "keep-alive");
        } else if (strcasecmp(f->name, "Expect") == 0) {
            expect = strcasecmp(f->value, "100-continue") == 0;
        }
    }
    if (h->minor == 1 && hosts != 1) return 400;
    if (hosts > 1) return 400;
    if (chunked && (lengths || h->minor == 0)) return 400;   /* smuggling's two framings */
    h->framing = chunked ? HTTP1_CHUNKED : lengths && h->content_length ? HTTP1_LENGTH : HTTP1_NO_BODY;
    h->keep_alive = h->minor == 1 ? !closing : keep && !closing;
    h->expect_continue = expect && h->minor == 1 && h->framing != HTTP1_NO_BODY;
    return 0;
}

int http1_parse_head(char *buf, size_t n, http1_head_t *h)
{
    memset(h, 0, offsetof(http1_head_t, fields));
    h->nfields = 0;
    h->content_length = 0;
    size_t p = 0, start, end;
    while (p < n && (buf[p] == '\r' || buf[p] == '\n')) p++;
    if (!next_line(buf, n, &p, &start, &end)) return HTTP1_NOT_HTTP;
    int rc = parse_request_line(buf, start, end, h);
    if (rc) return rc;
    while (next_line(buf, n, &p, &start, &end) && end > start) {
        rc = parse_field(buf, start, end, h);
        if (rc) return rc;
    }
    return read_fields(h);
}

const char *http1_field(const http1_head_t *h, const char *name)
{
    for (int i = 0; i < h->nfields; i++)
        if (strcasecmp(h->fields[i].name, name) == 0) return h->fields[i].value;
    return NULL;
}

/* ---- chunked bodies ----------------------------------------------------------------------- */

enum { C_SIZE, C_EXT, C_SIZE_LF, C_DATA, C_DATA_CR, C_DATA_LF, C_TRAILER, C_TRAILER_LINE, C_END_LF, C_DONE };

#define CHUNK_LINE_MAX 4096   /* a size line with its extensions, or one trailer line */

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

ssize_t http1_chunked_decode(http1_chunked_t *c, char *buf, size_t len, size_t *used, int *done)
{
    size_t in = 0, out = 0;
    *done = c->state == C_DONE;
    while (in < len && c->state != C_DONE) {
        char ch = buf[in];
        switch (c->state) {
        case C_SIZE: {
            int d = hexval(ch);
            if (d >= 0) {
                if (c->left >> 60) return -1;   /* past 2^64 */
                c->left = c->left * 16 + (unsigned)d;
                c->line++;
                in++;
                break;
            }
            if (!c->line) return -1;            /* no digits */
            if (ch == ';' || is_ows(ch)) { c->state = C_EXT; in++; break; }
            if (ch == '\r') { c->state = C_SIZE_LF; in++; break; }
            if (ch == '\n') { c->state = C_SIZE_LF; break; }
            return -1;
        }
        case C_EXT:
            if (++c->line > CHUNK_LINE_MAX) return -1;
            if (ch == '\n') { c->state = C_SIZE_LF; break; }
            in++;
            break;
        case C_SIZE_LF:
            if (ch != '\n') return -1;
            in++;
            c->line = 0;
            c->state = c->left ? C_DATA : C_TRAILER;
            break;
        case C_DATA: {
            size_t n = len - in;
            if (n > c->left) n = (size_t)c->left;
            memmove(buf + out, buf + in, n);
            out += n;
            in += n;
            c->left -= n;
            if (!c->left) c->state = C_DATA_CR;
            break;
        }
        case C_DATA_CR:
            if (ch == '\r') { c->state = C_DATA_LF; in++; break; }
            if (ch == '\n') { c->state = C_DATA_LF; break; }
            return -1;
        case C_DATA_LF:
            if (ch != '\n') return -1;
            in++;
            c->state = C_SIZE;
            break;
        case C_TRAILER:
            if (ch == '\r') { c->state = C_END_LF; in++; break; }
            if (ch == '\n') { c->state = C_END_LF; break; }
            c->state = C_TRAILER_LINE;
            c->line = 0;
            break;
        case C_TRAILER_LINE:
            if (++c->line > CHUNK_LINE_MAX) return -1;
            in++;
            if (ch == '\n') c->state = C_TRAILER;
            break;
        case C_END_LF:
            if (ch != '\n') return -1;
            in++;
            c->state = C_DONE;
            break;
        }
    }
    *used = in;
    *done = c->state == C_DONE;
    return (ssize_t)out;
}

/* ---- reason phrases ----------------------------------------------------------------------- */

const char *http1_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 422: return "Unprocessable Content";
    case 425: return "Too Early";
    case 428: return "Precondition Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 499: return "Client Closed Request";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "";
    }
}
