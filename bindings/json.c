/* json: the JSON codec every handler's body goes through (RFC 8259).
 *
 *   json.encode(v)        → string, or raises on what JSON cannot say (NaN, functions, cycles)
 *   json.decode(s)        → value, or nil, message, "invalid"
 *   json.null             the null sentinel (the same lightuserdata as cjson.null and db.null)
 *   json.array(t)         marks t as an array, so an empty one encodes as [] (not {})
 *   json.empty_array      a ready-made empty array
 *   json.to_utf8(s)       s, with any byte that is not UTF-8 replaced by U+FFFD
 *
 * Why not lua-cjson alone: Debian's 2.1.0 encodes every empty table as {}, prints numbers with
 * 14 significant digits (ids and cents past 10^14 come out in exponent form), and its decoded
 * arrays forget they were arrays. Decoded arrays here carry the array metatable, so a decode →
 * encode round trip keeps [] as []. */
#include <lauxlib.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../host/bindings.h"
#include "../core/buf.h"
#include "../core/utf8.h"
#include "../core/hex.h"

#define MAX_DEPTH 64
#define ARRAY_MT "mercato.json.array"

/* ---- encoding -------------------------------------------------------------------------- */

typedef struct {
    lua_State *L;
    buf_t out;
    const char *err;     /* static message; set on the first failure */
} enc_t;

static void enc_string(enc_t *e, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    buf_t *b = &e->out;
    if (buf_reserve(b, len + 2) < 0) return;
    b->data[b->len++] = '"';
    size_t run = 0;   /* bytes copied as they are since the last escape */
    char u[6] = "\\u00";   /* \u00XX: only the last two digits change */
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        if (c == '"') esc = "\\\"";
        else if (c == '\\') esc = "\\\\";
        else if (c == '\n') esc = "\\n";
        else if (c == '\r') esc = "\\r";
        else if (c == '\t') esc = "\\t";
        else if (c < 0x20) {
            u[4] = hex[c >> 4];
            u[5] = hex[c & 15];
        } else if (c >= 0x80) {
            /* JSON text must be UTF-8 (strictly: no overlongs or surrogates); a bad byte here
             * is a bug upstream (client text is checked where it comes in). */
            size_t n = utf8_seq((const unsigned char *)s + i, len - i);
            if (!n) { e->err = "string is not valid UTF-8"; return; }
            run += n;
            i += n - 1;
            continue;
        } else {
            run++;
            continue;
        }
        buf_add(b, s + i - run, run);
        run = 0;
        if (esc) buf_adds(b, esc);
        else buf_add(b, u, 6);
    }
    buf_add(b, s + len - run, run);
    buf_add(b, "\"", 1);
}

/* d as JSON writes it into tmp (40 bytes): its length, or -1 for NaN and infinities. The
 * range is checked before the integer cast (a cast out of range is undefined). */
static int format_number(lua_Number d, char *tmp)
{
    if (isnan(d) || isinf(d)) return -1;
    if (d == floor(d) && fabs(d) < 9007199254740992.0) return snprintf(tmp, 40, "%lld", (long long)d);
    /* The shortest form that reads back as the same double: 0.1, not 0.10000000000000001. */
    int n = snprintf(tmp, 40, "%.15g", d);
    if (strtod(tmp, NULL) != d) n = snprintf(tmp, 40, "%.16g", d);
    if (strtod(tmp, NULL) != d) n = snprintf(tmp, 40, "%.17g", d);
    return n;
}

static void enc_number(enc_t *e, lua_Number d)
{
    char tmp[40];
    int n = format_number(d, tmp);
    if (n < 0) { e->err = "cannot encode NaN or infinity"; return; }
    buf_add(&e->out, tmp, (size_t)n);
}

static void enc_value(enc_t *e, int idx, int depth);

/* Is the table at idx an array (metatable mark, or keys exactly 1..n with n >= 1)? Sets *n. */
static int table_is_array(lua_State *L, int idx, size_t *n)
{
    *n = lua_objlen(L, idx);
    if (lua_getmetatable(L, idx)) {
        luaL_getmetatable(L, ARRAY_MT);
        int marked = lua_rawequal(L, -1, -2);
        lua_pop(L, 2);
        if (marked) return 1;
    }
    if (*n == 0) return 0;
    size_t count = 0;
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TNUMBER) { lua_pop(L, 1); return 0; }
        count++;
    }
    return count == *n;
}

static void enc_table(enc_t *e, int idx, int depth)
{
    lua_State *L = e->L;
    if (depth > MAX_DEPTH) { e->err = "nested too deep (or a cycle)"; return; }
    if (!lua_checkstack(L, 4)) { e->err = "out of Lua stack"; return; }
    size_t n;
    if (table_is_array(L, idx, &n)) {
        buf_add(&e->out, "[", 1);
        for (size_t i = 1; i <= n && !e->err; i++) {
            if (i > 1) buf_add(&e->out, ",", 1);
            lua_rawgeti(L, idx, (int)i);
            enc_value(e, lua_gettop(L), depth + 1);
            lua_pop(L, 1);
        }
        buf_add(&e->out, "]", 1);
        return;
    }
    buf_add(&e->out, "{", 1);
    int first = 1;
    lua_pushnil(L);
    while (!e->err && lua_next(L, idx) != 0) {
        int kt = lua_type(L, -2);
        if (kt != LUA_TSTRING && kt != LUA_TNUMBER) { e->err = "object keys must be strings"; lua_pop(L, 2); return; }
        if (!first) buf_add(&e->out, ",", 1);
        first = 0;
        if (kt == LUA_TSTRING) {
            size_t klen;
            const char *k = lua_tolstring(L, -2, &klen);
            enc_string(e, k, klen);
        } else {
            /* A number key (sparse table): write it as its decimal string, without touching
             * the key on the stack (lua_tostring would break lua_next). */
            char tmp[40];
            int m = format_number(lua_tonumber(L, -2), tmp);
            if (m < 0) { e->err = "cannot encode NaN or infinity"; lua_pop(L, 2); return; }
            enc_string(e, tmp, (size_t)m);
        }
        buf_add(&e->out, ":", 1);
        enc_value(e, lua_gettop(L), depth + 1);
        lua_pop(L, 1);
    }
    if (e->err) return;
    buf_add(&e->out, "}", 1);
}

static void enc_value(enc_t *e, int idx, int depth)
{
    lua_State *L = e->L;
    if (e->err) return;
    switch (lua_type(L, idx)) {
    case LUA_TNIL: buf_add(&e->out, "null", 4); break;
    case LUA_TBOOLEAN: lua_toboolean(L, idx) ? buf_add(&e->out, "true", 4) : buf_add(&e->out, "false", 5); break;
    case LUA_TNUMBER: enc_number(e, lua_tonumber(L, idx)); break;
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        enc_string(e, s, len);
        break;
    }
    case LUA_TTABLE: enc_table(e, idx, depth); break;
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL) { buf_add(&e->out, "null", 4); break; }
        /* fall through */
    default: e->err = "cannot encode a function, userdata or thread"; break;
    }
    if (!e->err && e->out.failed) e->err = "out of memory";
}

static int l_encode(lua_State *L)
{
    luaL_checkany(L, 1);
    enc_t e = { .L = L };
    buf_init(&e.out);
    enc_value(&e, 1, 0);
    if (e.err) {
        buf_free(&e.out);
        return luaL_error(L, "json.encode: %s", e.err);
    }
    lua_pushlstring(L, e.out.data ? e.out.data : "", e.out.len);
    buf_free(&e.out);
    return 1;
}

/* ---- decoding -------------------------------------------------------------------------- */

typedef struct {
    lua_State *L;
    const char *p, *end, *start;
    const char *err;
} dec_t;

static void skip_ws(dec_t *d)
{
    while (d->p < d->end && (*d->p == ' ' || *d->p == '\t' || *d->p == '\n' || *d->p == '\r')) d->p++;
}

static int read_u16(dec_t *d, unsigned *out)
{
    if (d->end - d->p < 4) return -1;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hex_digit(d->p[i]);
        if (h < 0) return -1;
        v = v * 16 + (unsigned)h;
    }
    d->p += 4;
    *out = v;
    return 0;
}

static void put_utf8(buf_t *b, unsigned cp)
{
    char u[4];
    size_t n;
    if (cp < 0x80) { u[0] = (char)cp; n = 1; }
    else if (cp < 0x800) { u[0] = (char)(0xc0 | (cp >> 6)); u[1] = (char)(0x80 | (cp & 0x3f)); n = 2; }
    else if (cp < 0x10000) { u[0] = (char)(0xe0 | (cp >> 12)); u[1] = (char)(0x80 | ((cp >> 6) & 0x3f)); u[2] = (char)(0x80 | (cp & 0x3f)); n = 3; }
    else { u[0] = (char)(0xf0 | (cp >> 18)); u[1] = (char)(0x80 | ((cp >> 12) & 0x3f)); u[2] = (char)(0x80 | ((cp >> 6) & 0x3f)); u[3] = (char)(0x80 | (cp & 0x3f)); n = 4; }
    buf_add(b, u, n);
}

/* Push the string starting at d->p (just past the opening quote). */
static int dec_string(dec_t *d, buf_t *b)
{
    b->len = 0;
    const char *run = d->p;
    while (d->p < d->end) {
        unsigned char c = (unsigned char)*d->p;
        if (c == '"') {
            buf_add(b, run, (size_t)(d->p - run));
            d->p++;
            lua_pushlstring(d->L, b->data ? b->data : "", b->len);
            return 0;
        }
        if (c < 0x20) { d->err = "control character in string"; return -1; }
        if (c >= 0x80) {   /* JSON text is UTF-8 (RFC 8259 §8.1): a client's bad bytes are a 400 */
            size_t n = utf8_seq((const unsigned char *)d->p, (size_t)(d->end - d->p));
            if (!n) { d->err = "string is not valid UTF-8"; return -1; }
            d->p += n;
            continue;
        }
        if (c != '\\') { d->p++; continue; }
        buf_add(b, run, (size_t)(d->p - run));
        d->p++;
        if (d->p >= d->end) break;
        char esc = *d->p++;
        switch (esc) {
        case '"': buf_add(b, "\"", 1); break;
        case '\\': buf_add(b, "\\", 1); break;
        case '/': buf_add(b, "/", 1); break;
        case 'b': buf_add(b, "\b", 1); break;
        case 'f': buf_add(b, "\f", 1); break;
        case 'n': buf_add(b, "\n", 1); break;
        case 'r': buf_add(b, "\r", 1); break;
        case 't': buf_add(b, "\t", 1); break;
        case 'u': {
            unsigned cp, lo;
            if (read_u16(d, &cp) < 0) { d->err = "bad \\u escape"; return -1; }
            if (cp >= 0xd800 && cp <= 0xdbff) {
                if (d->end - d->p < 6 || d->p[0] != '\\' || d->p[1] != 'u') { d->err = "lone surrogate"; return -1; }
                d->p += 2;
                if (read_u16(d, &lo) < 0 || lo < 0xdc00 || lo > 0xdfff) { d->err = "lone surrogate"; return -1; }
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            } else if (cp >= 0xdc00 && cp <= 0xdfff) {
                d->err = "lone surrogate";
                return -1;
            }
            put_utf8(b, cp);
            break;
        }
        default: d->err = "bad escape in string"; return -1;
        }
        run = d->p;
    }
    d->err = "unterminated string";
    return -1;
}

static int dec_value(dec_t *d, buf_t *b, int depth);

static int dec_number(dec_t *d)
{
    const char *s = d->p;
    if (d->p < d->end && *d->p == '-') d->p++;
    if (d->p >= d->end) goto bad;
    if (*d->p == '0') d->p++;
    else if (*d->p >= '1' && *d->p <= '9') while (d->p < d->end && *d->p >= '0' && *d->p <= '9') d->p++;
    else goto bad;
    if (d->p < d->end && *d->p == '.') {
        d->p++;
        if (d->p >= d->end || *d->p < '0' || *d->p > '9') goto bad;
        while (d->p < d->end && *d->p >= '0' && *d->p <= '9') d->p++;
    }
    if (d->p < d->end && (*d->p == 'e' || *d->p == 'E')) {
        d->p++;
        if (d->p < d->end && (*d->p == '+' || *d->p == '-')) d->p++;
        if (d->p >= d->end || *d->p < '0' || *d->p > '9') goto bad;
        while (d->p < d->end && *d->p >= '0' && *d->p <= '9') d->p++;
    }
    char tmp[64];
    size_t n = (size_t)(d->p - s);
    if (n >= sizeof tmp) { d->err = "number too long"; return -1; }
    memcpy(tmp, s, n);
    tmp[n] = 0;
    lua_pushnumber(d->L, strtod(tmp, NULL));
    return 0;
bad:
    d->err = "bad number";
    return -1;
}

static int dec_literal(dec_t *d, const char *word, size_t n)
{
    if ((size_t)(d->end - d->p) < n || memcmp(d->p, word, n) != 0) { d->err = "unexpected character"; return -1; }
    d->p += n;
    return 0;
}

static int dec_value(dec_t *d, buf_t *b, int depth)
{
    lua_State *L = d->L;
    if (depth > MAX_DEPTH) { d->err = "nested too deep"; return -1; }
    if (!lua_checkstack(L, 4)) { d->err = "nested too deep"; return -1; }
    skip_ws(d);
    if (d->p >= d->end) { d->err = "unexpected end of input"; return -1; }
    char c = *d->p;
    if (c == '{') {
        d->p++;
        lua_newtable(L);
        skip_ws(d);
        if (d->p < d->end && *d->p == '}') { d->p++; return 0; }
        for (;;) {
            skip_ws(d);
            if (d->p >= d->end || *d->p != '"') { d->err = "expecting a member name"; return -1; }
            d->p++;
            if (dec_string(d, b) < 0) return -1;
            skip_ws(d);
            if (d->p >= d->end || *d->p != ':') { lua_pop(L, 1); d->err = "expecting ':'"; return -1; }
            d->p++;
            if (dec_value(d, b, depth + 1) < 0) { lua_pop(L, 1); return -1; }
            lua_rawset(L, -3);   /* duplicate members: the last one wins */
            skip_ws(d);
            if (d->p < d->end && *d->p == ',') { d->p++; continue; }
            if (d->p < d->end && *d->p == '}') { d->p++; return 0; }
            d->err = "expecting ',' or '}'";
            return -1;
        }
    }
    if (c == '[') {
        d->p++;
        lua_newtable(L);
        luaL_getmetatable(L, ARRAY_MT);
        lua_setmetatable(L, -2);
        skip_ws(d);
        if (d->p < d->end && *d->p == ']') { d->p++; return 0; }
        for (int i = 1;; i++) {
            if (dec_value(d, b, depth + 1) < 0) return -1;
            lua_rawseti(L, -2, i);
            skip_ws(d);
            if (d->p < d->end && *d->p == ',') { d->p++; continue; }
            if (d->p < d->end && *d->p == ']') { d->p++; return 0; }
            d->err = "expecting ',' or ']'";
            return -1;
        }
    }
    if (c == '"') { d->p++; return dec_string(d, b); }
    if (c == 't') { if (dec_literal(d, "true", 4) < 0) return -1; lua_pushboolean(L, 1); return 0; }
    if (c == 'f') { if (dec_literal(d, "false", 5) < 0) return -1; lua_pushboolean(L, 0); return 0; }
    if (c == 'n') { if (dec_literal(d, "null", 4) < 0) return -1; lua_pushlightuserdata(L, NULL); return 0; }
    if (c == '-' || (c >= '0' && c <= '9')) return dec_number(d);
    d->err = "unexpected character";
    return -1;
}

static int l_decode(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    dec_t d = { .L = L, .p = s, .end = s + len, .start = s };
    buf_t b;
    buf_init(&b);
    int top = lua_gettop(L);
    int rc = dec_value(&d, &b, 0);
    if (rc == 0) {
        skip_ws(&d);
        if (d.p != d.end) { d.err = "trailing characters after the document"; rc = -1; }
    }
    if (rc == 0 && b.failed) { d.err = "out of memory"; rc = -1; }
    buf_free(&b);
    if (rc < 0) {
        lua_settop(L, top);
        lua_pushnil(L);
        lua_pushfstring(L, "invalid JSON at byte %d: %s", (int)(d.p - d.start) + 1, d.err);
        lua_pushstring(L, "invalid");
        return 3;
    }
    return 1;
}

/* ---- Lua ------------------------------------------------------------------------------- */

static int l_array(lua_State *L)
{
    if (lua_isnoneornil(L, 1)) lua_newtable(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    luaL_getmetatable(L, ARRAY_MT);
    lua_setmetatable(L, 1);
    return 1;
}

/* json.to_utf8(s) → s when it is UTF-8, else a copy with each byte that is not part of a
 * UTF-8 sequence replaced by U+FFFD: for echoing a client's text where it must encode. */
static int l_to_utf8(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    if (utf8_valid(s, len)) { lua_settop(L, 1); return 1; }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        size_t n = utf8_seq(p + i, len - i);
        if (n) luaL_addlstring(&b, s + i, n);
        else luaL_addlstring(&b, "\xef\xbf\xbd", 3);
        i += n ? n : 1;
    }
    luaL_pushresult(&b);
    return 1;
}

static int l_is_array(lua_State *L)
{
    size_t n;
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_pushboolean(L, table_is_array(L, 1, &n));
    return 1;
}

int luaopen_json(lua_State *L)
{
    static const luaL_Reg fns[] = {
        { "encode", l_encode }, { "decode", l_decode }, { "array", l_array }, { "is_array", l_is_array },
        { "to_utf8", l_to_utf8 }, { NULL, NULL },
    };
    if (luaL_newmetatable(L, ARRAY_MT)) {
        lua_pushliteral(L, "array");
        lua_setfield(L, -2, "__jsontype");
    }
    lua_pop(L, 1);
    lua_newtable(L);
    luaL_setfuncs(L, fns, 0);
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "null");
    lua_newtable(L);
    luaL_getmetatable(L, ARRAY_MT);
    lua_setmetatable(L, -2);
    lua_setfield(L, -2, "empty_array");
    return 1;
}

const binding_t binding_json = { .name = "json", .open = luaopen_json };
