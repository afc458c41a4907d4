/* test_gateway: the gateway's prefix table, /internal detection and hop-by-hop list. */
#include <string.h>

#include "gateway.h"
#include "test.h"

static int route(const char *p) { return gateway_route(p, strlen(p)); }
static int internal(const char *p) { return gateway_path_is_internal(p, strlen(p)); }

TEST(every_contract_prefix_routes_to_its_service)
{
    CHECK_INT(route("/auth/login"), GW_USER);
    CHECK_INT(route("/oauth/token"), GW_USER);
    CHECK_INT(route("/users/me"), GW_USER);
    CHECK_INT(route("/.well-known/jwks.json"), GW_USER);
    CHECK_INT(route("/products"), GW_PRODUCT);
    CHECK_INT(route("/products/123/images"), GW_PRODUCT);
    CHECK_INT(route("/categories"), GW_PRODUCT);
    CHECK_INT(route("/tags"), GW_PRODUCT);
    CHECK_INT(route("/images/products/1/a.png"), GW_PRODUCT);
    CHECK_INT(route("/cart/items/1"), GW_ORDER);
    CHECK_INT(route("/orders"), GW_ORDER);
    CHECK_INT(route("/payments/1/refunds"), GW_PAYMENT);
    CHECK_INT(route("/webhooks/stripe"), GW_PAYMENT);
    CHECK_INT(route("/notifications/me"), GW_NOTIFICATION);
}

TEST(prefixes_match_whole_segments_only)
{
    CHECK_INT(route("/products/"), GW_PRODUCT);
    CHECK_INT(route("/productsx"), GW_UNKNOWN);
    CHECK_INT(route("/productsx/1"), GW_UNKNOWN);
    CHECK_INT(route("/product"), GW_UNKNOWN);
    CHECK_INT(route("/Products"), GW_UNKNOWN);
    CHECK_INT(route("/%70roducts"), GW_UNKNOWN);   /* the upstream would not decode it either */
    CHECK_INT(route("/"), GW_UNKNOWN);
    CHECK_INT(route(""), GW_UNKNOWN);
    CHECK_INT(route("*"), GW_UNKNOWN);
    CHECK_INT(route("products"), GW_UNKNOWN);
    CHECK_INT(route("//products"), GW_UNKNOWN);
    /* the length given is what counts, not the NUL */
    CHECK_INT(gateway_route("/products?x", 9), GW_PRODUCT);
    CHECK_INT(gateway_route("/productsx", 9), GW_PRODUCT);
}

TEST(internal_segments_are_found_anywhere)
{
    CHECK(internal("/internal"));
    CHECK(internal("/internal/reservations"));
    CHECK(internal("/products/internal"));
    CHECK(internal("/products/1/internal/x"));
    CHECK(internal("/products/INTERNAL/x"));
    CHECK(internal("/products/%69nternal/x"));
    CHECK(internal("/products/a%2Finternal"));
    CHECK(internal("/products//internal/"));
    CHECK(!internal("/products/internals"));
    CHECK(!internal("/products/xinternal"));
    CHECK(!internal("/products/inter%6eal%41"));
    CHECK(!internal("/products"));
    CHECK(!internal(""));
}

TEST(internal_and_dot_segments_are_forbidden_under_any_prefix)
{
    CHECK_INT(route("/internal/reservations"), GW_FORBIDDEN);
    CHECK_INT(route("/products/internal/reservations"), GW_FORBIDDEN);
    CHECK_INT(route("/orders/1/Internal"), GW_FORBIDDEN);
    CHECK_INT(route("/products/../internal/reservations"), GW_FORBIDDEN);
    CHECK_INT(route("/products/%2e%2e/orders"), GW_FORBIDDEN);
    CHECK_INT(route("/products/./1"), GW_FORBIDDEN);
    CHECK_INT(route("/products/..a"), GW_PRODUCT);
    CHECK_INT(route("/.well-known/jwks.json"), GW_USER);
}

TEST(a_very_long_segment_is_not_mistaken_for_anything)
{
    char p[1200] = "/products/";
    memset(p + 10, 'a', 1000);
    strcpy(p + 1010, "/internal");
    CHECK_INT(route(p), GW_FORBIDDEN);
    p[1010] = 0;
    CHECK_INT(route(p), GW_PRODUCT);
}

TEST(upstream_names_and_variables)
{
    CHECK_STR(gateway_upstream_name(GW_PRODUCT), "product");
    CHECK_STR(gateway_upstream_env(GW_NOTIFICATION), "NOTIFICATION_SERVICE_URL");
    CHECK_STR(gateway_upstream_env(GW_USER), "USER_SERVICE_URL");
    CHECK(gateway_upstream_name(GW_UNKNOWN) == NULL);
    CHECK(gateway_upstream_env(GW_NUPSTREAMS) == NULL);
}

TEST(hop_by_hop_headers)
{
    CHECK(gateway_hop_by_hop("Connection"));
    CHECK(gateway_hop_by_hop("keep-alive"));
    CHECK(gateway_hop_by_hop("Transfer-Encoding"));
    CHECK(gateway_hop_by_hop("TE"));
    CHECK(gateway_hop_by_hop("Trailer"));
    CHECK(gateway_hop_by_hop("Upgrade"));
    CHECK(gateway_hop_by_hop("Proxy-Authorization"));
    CHECK(gateway_hop_by_hop("proxy-connection"));
    CHECK(!gateway_hop_by_hop("Authorization"));
    CHECK(!gateway_hop_by_hop("Stripe-Signature"));
    CHECK(!gateway_hop_by_hop("Content-Type"));
    CHECK(!gateway_hop_by_hop("Tea"));
}

int main(void)
{
    RUN(every_contract_prefix_routes_to_its_service);
    RUN(prefixes_match_whole_segments_only);
    RUN(internal_segments_are_found_anywhere);
    RUN(internal_and_dot_segments_are_forbidden_under_any_prefix);
    RUN(a_very_long_segment_is_not_mistaken_for_anything);
    RUN(upstream_names_and_variables);
    RUN(hop_by_hop_headers);
    return test_done();
}
