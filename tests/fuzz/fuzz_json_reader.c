/* fuzz_json_reader: core/json_reader.c on arbitrary bytes. Properties: json_reader_valid and
 * json_reader_push agree (push succeeds exactly on valid input and leaves the stack as it
 * says); member lookup, string unescaping, number and array iteration never read outside
 * the span, and an unescaped string always fits and is NUL-terminated; a valid document is
 * UTF-8 throughout (strings included). */
#include <lauxlib.h>
#include <lualib.h>

#include "../../core/json_reader.h"
#include "../../core/utf8.h"
#include "fuzz.h"

static lua_State *L;

/* Walk one value as the JWT and JWKS code does: members it asks for, strings, numbers, arrays. */
static void walk(json_span_t v, int depth)
{
    char s[256];
    double d;
    if (json_reader_string(v, s, sizeof s) == 0) FUZZ_ASSERT(strlen(s) < sizeof s);
    (void)json_reader_number(v, &d);
    static const char *const names[] = { "alg", "kid", "exp", "aud", "keys", "n", "" };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        json_span_t m;
        if (json_reader_member(v, names[i], &m) == 0 && depth < 4) {
            FUZZ_ASSERT(m.p >= v.p && m.end <= v.end);
            walk(m, depth + 1);
        }
    }
    json_iter_t it;
    json_span_t e;
    if (json_reader_iter(v, &it) == 0)
        for (int n = 0; n < 64 && json_reader_next(&it, &e) == 1; n++) {
            FUZZ_ASSERT(e.p >= v.p && e.end <= v.end);
            if (depth < 4) walk(e, depth + 1);
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!L) L = luaL_newstate();
    char *s = fuzz_strndup(data, size);
    int valid = json_reader_valid(s, size);
    int top = lua_gettop(L);
    int pushed = json_reader_push(L, s, size);
    FUZZ_ASSERT((pushed == 0) == (valid != 0));
    if (valid) FUZZ_ASSERT(utf8_valid(s, size));
    FUZZ_ASSERT(lua_gettop(L) == top + (pushed == 0));
    lua_settop(L, top);
    if (valid) walk((json_span_t){ s, s + size }, 0);
    /* The walkers must also stay inside a span that is not valid JSON. */
    walk((json_span_t){ s, s + size }, 0);
    free(s);
    if (size % 64 == 0) lua_gc(L, LUA_GCCOLLECT, 0);
    return 0;
}
