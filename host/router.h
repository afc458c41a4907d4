/* router: method + path pattern → route index, matched segment by segment in C. */
#ifndef MERCATO_ROUTER_H
#define MERCATO_ROUTER_H

#include <stddef.h>

#define ROUTER_MAX_PARAMS 8

enum { ROUTER_NOT_FOUND = -1, ROUTER_METHOD_NOT_ALLOWED = -2 };

typedef struct router router_t;

/* One captured path parameter: name from the pattern, value as a slice of the matched path. */
typedef struct {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
} router_param_t;

typedef struct {
    int nparams;
    router_param_t params[ROUTER_MAX_PARAMS];
} router_match_t;

router_t *router_new(void);
void router_free(router_t *r);

/* Add a route; patterns look like "/products/{id}", "/products/:id" or "/images/{key*}"
 * (a trailing star parameter takes the rest of the path, slashes included).
 * Returns the route index (0, 1, ...) or -1 with a message in err. */
int router_add(router_t *r, const char *method, const char *pattern, char *err, size_t errlen);

int router_count(const router_t *r);
const char *router_pattern(const router_t *r, int idx);
const char *router_method(const router_t *r, int idx);

/* Match method and path (no query string). Returns the route index, ROUTER_NOT_FOUND, or
 * ROUTER_METHOD_NOT_ALLOWED; in the last case `allow` (if given) receives "GET, POST". HEAD
 * matches GET routes. Param values point into `path` (caller keeps it alive). */
int router_match(const router_t *r, const char *method, const char *path, size_t path_len,
                 router_match_t *m, char *allow, size_t allow_len);

/* Is this an HTTP method the router knows? */
int router_method_valid(const char *method);

#endif
