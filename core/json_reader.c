/* json_reader: a strict RFC 8259 reader over byte spans for JWT headers, claims and JWK sets
 * (see json_reader.h); it never allocates, and its Lua pushes are GC-owned. */
#include "json_reader.h"

#include <lauxlib.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "hex.h"
#include "utf8.h"

/* ---- scanning --------------------------------------------------------------------------- */

/* Past the JSON white space at p. */
static const char *ws(const char *p, const char *e)
{
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* The value of the four hex digits at p, or -1. */
static long hex4(const char *p)
{
    long v = 0;
    for (int i = 0; i < 4; i++) {
        int d = hex_digit(p[i]);
        if (d < 0) return -1;
        v = v << 4 | d;
    }
    return v;
}

/* Past the string whose opening quote is at p, or NULL when it is malformed: a control
 * character, a bad escape, or bytes that are not UTF-8 (RFC 8259 §8.1, as json.decode). Every
 * entry point reads strings through here, so none lets such a string through. */
static const char *skip_string(const char *p, const char *e)
{
    for (p++; p < e; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"') return p + 1;
        if (c < 0x20) return NULL;
        if (c >= 0x80) {   /* RFC 8259 §8.1: JSON text is UTF-8 */
            size_t n = utf8_seq((const unsigned char *)p, (size_t)(e - p));
            if (!n) return NULL;
            p += n - 1;
            continue;
        }
        if (c != '\\') continue;
        if (++p >= e) return NULL;
        if (*p == 'u') {
            if (e - p < 5) return NULL;
            for (int i = 1; i <= 4; i++)
                if (hex_digit(p[i]) < 0) return NULL;
            p += 4;
        } else if (!strchr("\"\\/bfnrt", *p) || !*p) {
            return NULL;
        }
    }
    return NULL;
}

/* Past the number at p, or NULL when it is malformed or longer than 63 characters (more than
 * a double can hold; refusing it keeps json_reader_number exact about what it parsed). */
static const char *skip_number(const char *p, const char *e)
{
    const char *start = p;
    if (p < e && *p == '-') p++;
    if (p >= e) return NULL;
    if (*p == '0') p++;
    else if (*p >= '1' && *p <= '9') while (p < e && is_digit(*p)) p++;
    else return NULL;
    if (p < e && *p == '.') {
        if (++p >= e || !is_digit(*p)) return NULL;
        while (p < e && is_digit(*p)) p++;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        if (++p < e && (*p == '+' || *p == '-')) p++;
        if (p >= e || !is_digit(*p)) return NULL;
        while (p < e && is_digit(*p)) p++;
    }
    return p - start < 64 ? p : NULL;
}

/* Past the literal word at p, or NULL. */
static const char *skip_word(const char *p, const char *e, const char *word)
{
    size_t n = strlen(word);
    return (size_t)(e - p) >= n && memcmp(p, word, n) == 0 ? p + n : NULL;
}

/* Past the value starting at (or after white space from) p, or NULL when it is malformed. */
static const char *skip_value(const char *p, const char *e, int depth)
{
    p = ws(p, e);
    if (p >= e) return NULL;
    switch (*p) {
    case '"': return skip_string(p, e);
    case 't': return skip_word(p, e, "true");
    case 'f': return skip_word(p, e, "false");
    case 'n': return skip_word(p, e, "null");
    case '{':
    case '[': {
        if (depth >= JSON_READER_MAX_DEPTH) return NULL;
        int obj = *p == '{';
        char close = obj ? '}' : ']';
        p = ws(p + 1, e);
        if (p < e && *p == close) return p + 1;
        for (;;) {
            if (obj) {
                p = ws(p, e);
                if (p >= e || *p != '"' || !(p = skip_string(p, e))) return NULL;
                p = ws(p, e);
                if (p >= e || *p != ':') return NULL;
                p++;
            }
            if (!(p = skip_value(p, e, depth + 1))) return NULL;
            p = ws(p, e);
            if (p >= e) return NULL;
            if (*p == close) return p + 1;
            if (*p != ',') return NULL;
            p++;
        }
    }
    default: return skip_number(p, e);
    }
}

/* Unescape the string at p (opening quote) into out (capacity cap); the decoded length, or -1.
 * `allow_nul`: whether "\u0000" may appear (Lua strings can hold it, C strings cannot). */
static long decode_string(const char *p, const char *e, char *out, size_t cap, int allow_nul)
{
    size_t o = 0;
    if (p >= e || *p != '"') return -1;
    for (p++; p < e && *p != '"'; p++) {
        uint32_t cp;
        if (*p != '\\') {
            if (o + 1 >= cap) return -1;
            out[o++] = *p;
            continue;
        }
        p++;
        if (p >= e) return -1;
        if (*p != 'u') {
            static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
            const char *k = strchr(from, *p);
            if (!k || !*p || o + 1 >= cap) return -1;
            out[o++] = to[k - from];
            continue;
        }
        if (e - p < 5) return -1;
        long unit = hex4(p + 1);
        if (unit < 0) return -1;
        cp = (uint32_t)unit;
        p += 4;
        if (cp >= 0xd800 && cp <= 0xdbff) {   /* a high surrogate must pair with a low one */
            if (e - p < 7 || p[1] != '\\' || p[2] != 'u') return -1;
            long lo = hex4(p + 3);
            if (lo < 0xdc00 || lo > 0xdfff) return -1;
            cp = 0x10000 + ((cp - 0xd800) << 10) + (uint32_t)(lo - 0xdc00);
            p += 6;
        } else if (cp >= 0xdc00 && cp <= 0xdfff) {
            return -1;
        }
        if (cp == 0 && !allow_nul) return -1;
        if (o + 5 >= cap) return -1;
        if (cp < 0x80) {
            out[o++] = (char)cp;
        } else if (cp < 0x800) {
            out[o++] = (char)(0xc0 | cp >> 6);
            out[o++] = (char)(0x80 | (cp & 0x3f));
        } else if (cp < 0x10000) {
            out[o++] = (char)(0xe0 | cp >> 12);
            out[o++] = (char)(0x80 | (cp >> 6 & 0x3f));
            out[o++] = (char)(0x80 | (cp & 0x3f));
        } else {
            out[o++] = (char)(0xf0 | cp >> 18);
            out[o++] = (char)(0x80 | (cp >> 12 & 0x3f));
            out[o++] = (char)(0x80 | (cp >> 6 & 0x3f));
            out[o++] = (char)(0x80 | (cp & 0x3f));
        }
    }
    if (p >= e) return -1;
    out[o] = 0;
    return (long)o;
}

/* ---- C API ------------------------------------------------------------------------------ */

int json_reader_valid(const char *s, size_t n)
{
    const char *e = s + n, *p = skip_value(s, e, 0);
    return p && ws(p, e) == e;
}

int json_reader_member(json_span_t obj, const char *name, json_span_t *val)
{
    const char *p = ws(obj.p, obj.end), *e = obj.end;
    int found = 0;
    if (p >= e || *p != '{') return -1;
    p = ws(p + 1, e);
    if (p < e && *p == '}') return -1;
    for (;;) {
        char key[64];
        const char *kend = p < e && *p == '"' ? skip_string(p, e) : NULL;
        if (!kend) return -1;
        long klen = decode_string(p, kend, key, sizeof key, 0);
        p = ws(kend, e);
        if (p >= e || *p != ':') return -1;
        const char *vstart = ws(p + 1, e), *vend = skip_value(vstart, e, 1);
        if (!vend) return -1;
        if (klen >= 0 && strcmp(key, name) == 0) {
            val->p = vstart;
            val->end = vend;
            found = 1;
        }
        p = ws(vend, e);
        if (p >= e) return -1;
        if (*p == '}') return found ? 0 : -1;
        if (*p != ',') return -1;
        p = ws(p + 1, e);
    }
}

int json_reader_unique(json_span_t obj)
{
    char keys[JSON_READER_MAX_MEMBERS][JSON_READER_MAX_KEY];
    int n = 0;
    const char *p = ws(obj.p, obj.end), *e = obj.end;
    if (p >= e || *p != '{') return 0;
    p = ws(p + 1, e);
    if (p < e && *p == '}') return 1;
    for (;;) {
        const char *kend = p < e && *p == '"' ? skip_string(p, e) : NULL;
        if (!kend || n == JSON_READER_MAX_MEMBERS || decode_string(p, kend, keys[n], sizeof keys[n], 0) < 0) return 0;
        for (int i = 0; i < n; i++)
            if (strcmp(keys[i], keys[n]) == 0) return 0;
        n++;
        p = ws(kend, e);
        if (p >= e || *p != ':') return 0;
        const char *vend = skip_value(p + 1, e, 1);
        if (!vend) return 0;
        p = ws(vend, e);
        if (p >= e) return 0;
        if (*p == '}') return 1;
        if (*p != ',') return 0;
        p = ws(p + 1, e);
    }
}

int json_reader_string(json_span_t v, char *out, size_t cap)
{
    const char *p = ws(v.p, v.end);
    const char *end = p < v.end && *p == '"' ? skip_string(p, v.end) : NULL;
    if (!end) return -1;
    return decode_string(p, end, out, cap, 0) < 0 ? -1 : 0;
}

int json_reader_number(json_span_t v, double *out)
{
    const char *p = ws(v.p, v.end), *end = skip_number(p, v.end);
    char tmp[64];
    if (!end || (size_t)(end - p) >= sizeof tmp) return -1;
    memcpy(tmp, p, (size_t)(end - p));
    tmp[end - p] = 0;
    *out = strtod(tmp, NULL);
    return 0;
}

int json_reader_iter(json_span_t v, json_iter_t *it)
{
    it->p = ws(v.p, v.end);
    it->end = v.end;
    it->started = 0;
    return it->p < it->end && *it->p == '[' ? 0 : -1;
}

int json_reader_next(json_iter_t *it, json_span_t *elem)
{
    const char *p = it->p, *e = it->end;
    if (!p) return 0;
    p = ws(p + 1, e);   /* past '[' or ',' */
    if (!it->started && p < e && *p == ']') { it->p = NULL; return 0; }
    it->started = 1;
    const char *vend = skip_value(p, e, 1);
    if (!vend) return -1;
    elem->p = p;
    elem->end = vend;
    p = ws(vend, e);
    if (p >= e || (*p != ',' && *p != ']')) return -1;
    it->p = *p == ',' ? p : NULL;
    return 1;
}

/* ---- Lua ----------------------------------------------------------------------------------- */

/* Push the (valid) value at p; returns the position after it. */
static const char *push_value(lua_State *L, const char *p, const char *e)
{
    p = ws(p, e);
    luaL_checkstack(L, 4, "JSON too deeply nested");
    if (*p == '"') {
        const char *end = skip_string(p, e);
        size_t cap = (size_t)(end - p) + 1;
        char small[256];
        char *buf = cap <= sizeof small ? small : lua_newuserdata(L, cap);   /* GC-owned scratch */
        long n = decode_string(p, end, buf, cap, 1);
        lua_pushlstring(L, buf, n < 0 ? 0 : (size_t)n);
        if (buf != small) lua_remove(L, -2);
        return end;
    }
    if (*p == '{' || *p == '[') {
        int obj = *p == '{';
        char close = obj ? '}' : ']';
        int i = 0;
        lua_newtable(L);
        p = ws(p + 1, e);
        if (*p == close) return p + 1;
        for (;;) {
            if (obj) {
                p = push_value(L, p, e);
                p = ws(p, e) + 1;   /* ':' */
            }
            p = push_value(L, p, e);
            if (obj) lua_rawset(L, -3);
            else lua_rawseti(L, -2, ++i);
            p = ws(p, e);
            if (*p++ == close) return p;
        }
    }
    if (*p == 't' || *p == 'f') {
        lua_pushboolean(L, *p == 't');
        return p + (*p == 't' ? 4 : 5);
    }
    if (*p == 'n') {
        lua_pushlightuserdata(L, NULL);
        return p + 4;
    }
    json_span_t v = { p, e };
    double d = 0;
    json_reader_number(v, &d);
    lua_pushnumber(L, d);
    return skip_number(p, e);
}

int json_reader_push(lua_State *L, const char *s, size_t n)
{
    if (!json_reader_valid(s, n)) return -1;
    push_value(L, s, s + n);
    return 0;
}
