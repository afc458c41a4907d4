/* fuzz_router: the path matcher (host/router.c) on arbitrary bytes. The router holds every
 * route the five services declare; up to three patterns taken from the input go into a second
 * router ("<pattern>\n<pattern>\n...<path>": every line but the last is offered to router_add;
 * the first byte picks the method), and the path is matched in both. Properties: a match
 * names a route of the right method (or GET for HEAD) whose pattern really matches; every parameter value is a non-empty slice of
 * the path, without a slash unless it is a rest parameter; the Allow list is NUL-terminated
 * and names only known methods. */
#include "../../host/router.h"
#include "fuzz.h"

/* The services' routes (scripts/services/<name>/routes.lua). */
static const char *const service_routes[][2] = {
    { "DELETE", "/cart" },
    { "DELETE", "/cart/items/{product_id}" },
    { "DELETE", "/categories/{id}" },
    { "DELETE", "/internal/reservations/{id}" },
    { "DELETE", "/products/{id}" },
    { "GET", "/.well-known/jwks.json" },
    { "GET", "/cart" },
    { "GET", "/categories" },
    { "GET", "/categories/{id}" },
    { "GET", "/images/{key*}" },
    { "GET", "/internal/users/{id}" },
    { "GET", "/orders" },
    { "GET", "/orders/{id}" },
    { "GET", "/payments" },
    { "GET", "/payments/{id}" },
    { "GET", "/products" },
    { "GET", "/products/{id}" },
    { "GET", "/products/{id}/inventory" },
    { "GET", "/tags" },
    { "GET", "/users" },
    { "GET", "/users/me" },
    { "GET", "/users/{id}" },
    { "PATCH", "/categories/{id}" },
    { "PATCH", "/products/{id}" },
    { "PATCH", "/users/me" },
    { "PATCH", "/users/{id}" },
    { "POST", "/auth/login" },
    { "POST", "/auth/logout" },
    { "POST", "/auth/register" },
    { "POST", "/categories" },
    { "POST", "/internal/payments" },
    { "POST", "/internal/payments/{id}/cancel" },
    { "POST", "/internal/payments/{id}/refunds" },
    { "POST", "/internal/reservations" },
    { "POST", "/internal/reservations/{id}/commit" },
    { "POST", "/oauth/revoke" },
    { "POST", "/oauth/token" },
    { "POST", "/orders" },
    { "POST", "/orders/{id}/cancel" },
    { "POST", "/orders/{id}/deliver" },
    { "POST", "/orders/{id}/ship" },
    { "POST", "/payments/reconcile" },
    { "POST", "/payments/{id}/refunds" },
    { "POST", "/products" },
    { "POST", "/products/{id}/images" },
    { "POST", "/users/me/password" },
    { "POST", "/webhooks/stripe" },
    { "PUT", "/cart/items/{product_id}" },
    { "PUT", "/products/{id}/inventory" },
};

static const char *const methods[] = { "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE" };

/* Whether pattern (no rest parameter), split at '/', accepts path: a second, plain reading. */
static int pattern_accepts(const char *pattern, const char *path, size_t len)
{
    const char *p = pattern + 1, *q = path, *qe = path + len;
    if (q < qe && *q == '/') q++;
    if (qe > q && qe[-1] == '/') qe--;   /* a trailing slash counts as absent */
    for (;;) {
        const char *ps = strchr(p, '/');
        if (ps && ps[1] == 0) ps = NULL;   /* so does one ending the pattern */
        size_t pl = ps ? (size_t)(ps - p) : strcspn(p, "/");
        const char *qs = memchr(q, '/', (size_t)(qe - q));
        size_t ql = qs ? (size_t)(qs - q) : (size_t)(qe - q);
        int param = (pl >= 2 && p[0] == '{') || (pl >= 1 && p[0] == ':');
        if (param ? ql == 0 : (ql != pl || memcmp(p, q, pl) != 0)) return 0;
        if (!ps) return qs == NULL;
        if (!qs) return 0;
        p = ps + 1;
        q = qs + 1;
    }
}

/* Match path[0, size) with method in r and check what the answer promises. */
static void check_match(const router_t *r, const char *method, const char *path, size_t size)
{
    router_match_t m;
    char allow[64];
    memset(&m, 0, sizeof m);
    int idx = router_match(r, method, path, size, &m, allow, sizeof allow);
    if (idx >= 0) {
        FUZZ_ASSERT(idx < router_count(r));
        const char *rm = router_method(r, idx);
        FUZZ_ASSERT(strcmp(rm, method) == 0 || (strcmp(method, "HEAD") == 0 && strcmp(rm, "GET") == 0));
        FUZZ_ASSERT(m.nparams >= 0 && m.nparams <= ROUTER_MAX_PARAMS);
        const char *pattern = router_pattern(r, idx);
        int has_rest = strchr(pattern, '*') != NULL;
        for (int i = 0; i < m.nparams; i++) {
            const router_param_t *p = &m.params[i];
            int rest = has_rest && i == m.nparams - 1;
            FUZZ_ASSERT(p->value >= path && p->value + p->value_len <= path + size);
            FUZZ_ASSERT(p->value_len > 0 || rest);
            if (!rest) FUZZ_ASSERT(memchr(p->value, '/', p->value_len) == NULL);
            /* Its name is in the pattern (a bare '*' is named "rest"). */
            FUZZ_ASSERT(p->name_len > 0 && (memmem(pattern, strlen(pattern), p->name, p->name_len) != NULL ||
                                            (rest && p->name_len == 4 && memcmp(p->name, "rest", 4) == 0)));
        }
        if (!has_rest) FUZZ_ASSERT(pattern_accepts(pattern, path, size));
    } else if (idx == ROUTER_METHOD_NOT_ALLOWED) {
        FUZZ_ASSERT(memchr(allow, 0, sizeof allow) != NULL);
        for (const char *a = allow; *a;) {
            size_t n = strcspn(a, ",");
            int known = 0;
            for (size_t k = 0; k < 7; k++) known |= strlen(methods[k]) == n && memcmp(a, methods[k], n) == 0;
            FUZZ_ASSERT(known);
            a += n;
            if (*a == ',') a += 2;
        }
    } else {
        FUZZ_ASSERT(idx == ROUTER_NOT_FOUND);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static router_t *services;
    char err[256];
    if (!services) {
        services = router_new();
        for (size_t i = 0; i < sizeof service_routes / sizeof service_routes[0]; i++)
            if (router_add(services, service_routes[i][0], service_routes[i][1], err, sizeof err) < 0) abort();
    }
    if (size < 1) return 0;
    const char *method = methods[data[0] % (sizeof methods / sizeof methods[0])];
    data++;
    size--;
    router_t *extra = NULL;
    for (int k = 0; k < 3; k++) {
        size_t hn, tn;
        const uint8_t *tail;
        fuzz_split(data, size, '\n', &hn, &tail, &tn);
        if (hn == size) break;   /* no newline: the rest is the path */
        if (!extra) extra = router_new();
        char *pattern = fuzz_strndup(data, hn);
        int idx = router_add(extra, methods[k], pattern, err, sizeof err);
        FUZZ_ASSERT(idx < 0 ? memchr(err, 0, sizeof err) != NULL : idx == router_count(extra) - 1);
        free(pattern);
        data = tail;
        size = tn;
    }
    /* The path as its own allocation, with no NUL after it: the matcher takes a length. */
    char *path = malloc(size ? size : 1);
    memcpy(path, data, size);
    check_match(services, method, path, size);
    if (extra) check_match(extra, method, path, size);
    free(path);
    router_free(extra);
    return 0;
}
