/* test_request: percent-decoding of request targets and the UTF-8 check client text passes. */
#include <stdlib.h>

#include "request.h"
#include "test.h"

static int valid(const char *s) { return request_text_valid(s, strlen(s)); }

TEST(text_that_decodes_to_utf8_passes)
{
    const char *ok[] = { "", "/products/abc", "q=caf%C3%A9&tag=%E2%82%AC", "caf\xc3\xa9", "a=%F0%9F%98%80", "100%", "%zz",
                         "%4", "a+b=%2B", "%F4%8F%BF%BF" };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        CHECK(valid(ok[i]));
        if (!valid(ok[i])) printf("#   %s\n", ok[i]);
    }
}

TEST(text_that_does_not_is_refused)
{
    const char *bad[] = { "%FF", "/products/%ff", "q=%C0%AF", "%ED%A0%80", "%F4%90%80%80", "x=%E2%82", "%E2%82&y=1",
                          "%E2=%82%AC", "\xff", "caf\xc3", "%C3" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK(!valid(bad[i]));
        if (valid(bad[i])) printf("#   %s\n", bad[i]);
    }
}

TEST(unescape_keeps_invalid_escapes)
{
    char out[64];
    CHECK_INT(request_unescape(out, "a%20b+c%zz%4", 12, 1), 10);
    CHECK_STR(out, "a b c%zz%4");
}

int main(void)
{
    RUN(text_that_decodes_to_utf8_passes);
    RUN(text_that_does_not_is_refused);
    RUN(unescape_keeps_invalid_escapes);
    return test_done();
}
