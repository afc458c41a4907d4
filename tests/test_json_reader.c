/* test_json_reader: core/json_reader.c's strings hold UTF-8 only (RFC 8259 §8.1, as json.decode
 * at the HTTP boundary already insists): a string with a byte that is not UTF-8 — stray
 * continuation, overlong form, UTF-16 surrogate, past U+10FFFF, cut short — makes the whole
 * document invalid for every entry point, the same verdict json.decode gives. */
#include <lauxlib.h>
#include <lualib.h>

#include "../core/json_reader.h"
#include "test.h"

static const char *const BAD[] = { "\xff", "a\x80", "\xc0\xaf", "\xe0\x80\xaf", "\xed\xa0\x80", "\xe2\x82", "\xf4\x90\x80\x80" };
#define NBAD (sizeof BAD / sizeof BAD[0])

TEST(a_string_that_is_not_utf8_makes_the_document_invalid)
{
    lua_State *L = luaL_newstate();
    for (size_t i = 0; i < NBAD; i++) {
        char doc[128];
        snprintf(doc, sizeof doc, "{\"kid\":\"k1\",\"name\":\"%s\"}", BAD[i]);
        CHECK_INT(json_reader_valid(doc, strlen(doc)), 0);
        CHECK_INT(json_reader_push(L, doc, strlen(doc)), -1);
        CHECK_INT(lua_gettop(L), 0);
        json_span_t v;
        CHECK_INT(json_reader_member((json_span_t){ doc, doc + strlen(doc) }, "kid", &v), -1);
        snprintf(doc, sizeof doc, "\"%s\"", BAD[i]);
        char out[64];
        CHECK_INT(json_reader_string((json_span_t){ doc, doc + strlen(doc) }, out, sizeof out), -1);
        snprintf(doc, sizeof doc, "{\"%s\":1}", BAD[i]);   /* a member name too */
        CHECK_INT(json_reader_valid(doc, strlen(doc)), 0);
    }
    lua_close(L);
}

TEST(utf8_text_and_escapes_stay_valid)
{
    lua_State *L = luaL_newstate();
    const char *doc = "{\"name\":\"Cr\xc3\xa8me \xe2\x82\xac \xf0\x9f\x98\x80 \\u00e9 \\ud83d\\ude00\",\"kid\":\"k1\"}";
    CHECK_INT(json_reader_valid(doc, strlen(doc)), 1);
    CHECK_INT(json_reader_push(L, doc, strlen(doc)), 0);
    lua_getfield(L, -1, "name");
    CHECK_STR(lua_tostring(L, -1), "Cr\xc3\xa8me \xe2\x82\xac \xf0\x9f\x98\x80 \xc3\xa9 \xf0\x9f\x98\x80");
    json_span_t v;
    char out[16];
    CHECK_INT(json_reader_member((json_span_t){ doc, doc + strlen(doc) }, "kid", &v), 0);
    CHECK_INT(json_reader_string(v, out, sizeof out), 0);
    CHECK_STR(out, "k1");
    lua_close(L);
}

int main(void)
{
    RUN(a_string_that_is_not_utf8_makes_the_document_invalid);
    RUN(utf8_text_and_escapes_stay_valid);
    return test_done();
}
