/* test.h: a tiny TAP producer for the C unit tests (one binary per file, run by make test).
 *
 *   TEST(router_matches_params) { ... CHECK(x == 1); CHECK_STR(a, "b"); }
 *   int main(void) { RUN(router_matches_params); return test_done(); }
 */
#ifndef MERCATO_TEST_H
#define MERCATO_TEST_H

#include <stdio.h>
#include <string.h>

static int test_count, test_failed, test_current_failed;

#define TEST(name) static void name(void)

#define CHECK(cond) do { \
    if (!(cond)) { \
        printf("#   %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
        test_current_failed = 1; \
    } \
} while (0)

#define CHECK_STR(got, want) do { \
    const char *g_ = (got), *w_ = (want); \
    if (!g_ || !w_ || strcmp(g_, w_) != 0) { \
        printf("#   %s:%d: got \"%s\", want \"%s\"\n", __FILE__, __LINE__, g_ ? g_ : "(null)", w_ ? w_ : "(null)"); \
        test_current_failed = 1; \
    } \
} while (0)

#define CHECK_INT(got, want) do { \
    long long g_ = (long long)(got), w_ = (long long)(want); \
    if (g_ != w_) { \
        printf("#   %s:%d: %s is %lld, want %lld\n", __FILE__, __LINE__, #got, g_, w_); \
        test_current_failed = 1; \
    } \
} while (0)

#define RUN(name) do { \
    test_current_failed = 0; \
    name(); \
    test_count++; \
    if (test_current_failed) test_failed++; \
    printf("%s %d - %s\n", test_current_failed ? "not ok" : "ok", test_count, #name); \
    fflush(stdout); \
} while (0)

static inline int test_done(void)
{
    printf("1..%d\n", test_count);
    return test_failed ? 1 : 0;
}

#endif
