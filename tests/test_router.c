/* test_router: the C route matcher — params, precedence, 404/405 with Allow, bad patterns. */
#include "router.h"
#include "test.h"

static router_t *make(void)
{
    router_t *r = router_new();
    char err[128];
    router_add(r, "GET", "/products", err, sizeof err);            /* 0 */
    router_add(r, "POST", "/products", err, sizeof err);           /* 1 */
    router_add(r, "GET", "/products/{id}", err, sizeof err);       /* 2 */
    router_add(r, "PATCH", "/products/:id", err, sizeof err);      /* 3 */
    router_add(r, "GET", "/products/search", err, sizeof err);     /* 4: static beats {id} */
    router_add(r, "GET", "/images/{key*}", err, sizeof err);       /* 5 */
    router_add(r, "POST", "/orders/{id}/cancel", err, sizeof err); /* 6 */
    return r;
}

static int match(router_t *r, const char *method, const char *path, router_match_t *m)
{
    return router_match(r, method, path, strlen(path), m, NULL, 0);
}

TEST(static_routes_match_exactly)
{
    router_t *r = make();
    router_match_t m;
    CHECK_INT(match(r, "GET", "/products", &m), 0);
    CHECK_INT(match(r, "POST", "/products", &m), 1);
    CHECK_INT(m.nparams, 0);
    CHECK_INT(match(r, "GET", "/products/", &m), 0);   /* trailing slash ignored */
    CHECK_INT(match(r, "GET", "/productsx", &m), ROUTER_NOT_FOUND);
    CHECK_INT(match(r, "GET", "/", &m), ROUTER_NOT_FOUND);
    router_free(r);
}

TEST(params_are_captured_as_slices)
{
    router_t *r = make();
    router_match_t m;
    CHECK_INT(match(r, "GET", "/products/abc-123", &m), 2);
    CHECK_INT(m.nparams, 1);
    CHECK(m.params[0].name_len == 2 && memcmp(m.params[0].name, "id", 2) == 0);
    CHECK(m.params[0].value_len == 7 && memcmp(m.params[0].value, "abc-123", 7) == 0);
    CHECK_INT(match(r, "PATCH", "/products/x", &m), 3);
    CHECK_INT(match(r, "POST", "/orders/o1/cancel", &m), 6);
    CHECK(m.params[0].value_len == 2 && memcmp(m.params[0].value, "o1", 2) == 0);
    CHECK_INT(match(r, "POST", "/orders//cancel", &m), ROUTER_NOT_FOUND);   /* empty param */
    router_free(r);
}

TEST(static_segment_beats_parameter_whatever_the_order)
{
    router_t *r = make();
    router_match_t m;
    CHECK_INT(match(r, "GET", "/products/search", &m), 4);
    CHECK_INT(m.nparams, 0);
    router_free(r);
}

TEST(rest_parameter_takes_slashes)
{
    router_t *r = make();
    router_match_t m;
    const char *p = "/images/products/p1/abc.png";
    CHECK_INT(match(r, "GET", p, &m), 5);
    CHECK_INT(m.nparams, 1);
    CHECK(m.params[0].value_len == strlen("products/p1/abc.png"));
    CHECK(memcmp(m.params[0].value, "products/p1/abc.png", m.params[0].value_len) == 0);
    CHECK_INT(match(r, "GET", "/images", &m), ROUTER_NOT_FOUND);
    router_free(r);
}

TEST(wrong_method_gives_405_with_allow)
{
    router_t *r = make();
    router_match_t m;
    char allow[64];
    int rc = router_match(r, "DELETE", "/products/p1", 12, &m, allow, sizeof allow);
    CHECK_INT(rc, ROUTER_METHOD_NOT_ALLOWED);
    CHECK_STR(allow, "GET, HEAD, PATCH");
    rc = router_match(r, "PUT", "/products", 9, &m, allow, sizeof allow);
    CHECK_STR(allow, "GET, HEAD, POST");
    router_free(r);
}

TEST(head_matches_get_routes)
{
    router_t *r = make();
    router_match_t m;
    CHECK_INT(match(r, "HEAD", "/products/p1", &m), 2);
    router_free(r);
}

TEST(bad_patterns_are_refused_with_a_reason)
{
    router_t *r = router_new();
    char err[128];
    CHECK_INT(router_add(r, "GET", "products", err, sizeof err), -1);
    CHECK(strstr(err, "must start with '/'") != NULL);
    CHECK_INT(router_add(r, "FETCH", "/x", err, sizeof err), -1);
    CHECK_INT(router_add(r, "GET", "/a//b", err, sizeof err), -1);
    CHECK_INT(router_add(r, "GET", "/a/{}", err, sizeof err), -1);
    CHECK_INT(router_add(r, "GET", "/a/{rest*}/b", err, sizeof err), -1);
    CHECK_INT(router_add(r, "GET", "/a/{bad-name}", err, sizeof err), -1);
    CHECK_INT(router_add(r, "GET", "/a", err, sizeof err), 0);
    CHECK_INT(router_add(r, "GET", "/a", err, sizeof err), -1);
    CHECK(strstr(err, "duplicate") != NULL);
    CHECK_INT(router_count(r), 1);
    router_free(r);
}

TEST(too_deep_paths_do_not_overflow)
{
    router_t *r = make();
    router_match_t m;
    char path[400] = "";
    for (int i = 0; i < 40; i++) strcat(path, "/a");
    CHECK_INT(match(r, "GET", path, &m), ROUTER_NOT_FOUND);
    router_free(r);
}

int main(void)
{
    RUN(static_routes_match_exactly);
    RUN(params_are_captured_as_slices);
    RUN(static_segment_beats_parameter_whatever_the_order);
    RUN(rest_parameter_takes_slashes);
    RUN(wrong_method_gives_405_with_allow);
    RUN(head_matches_get_routes);
    RUN(bad_patterns_are_refused_with_a_reason);
    RUN(too_deep_paths_do_not_overflow);
    return test_done();
}
