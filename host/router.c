/* router: method + path pattern → route index, matched segment by segment in C.
 *
 * Routes are few (tens), so a linear scan over pre-split patterns is faster than any tree
 * once the first-segment check rejects most of them. When several patterns match a path the
 * most specific one wins: static segments beat parameters, earlier segments weigh more, and
 * among equals the first declared wins. */
#include "router.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SEGMENTS 16

typedef struct {
    char *text;     /* static text, or the parameter name */
    size_t len;
    int is_param;
    int is_rest;    /* {name*}: takes the rest of the path */
} segment_t;

typedef struct {
    char method[8];
    char *pattern;
    int nseg;
    segment_t seg[MAX_SEGMENTS];
} route_t;

struct router {
    route_t *routes;
    int n, cap;
};

static const char *const methods[] = { "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS" };

/* ---------------------------------------------------------------------------------------- */

int router_method_valid(const char *method)
{
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
        if (strcmp(method, methods[i]) == 0) return 1;
    return 0;
}

router_t *router_new(void)
{
    return calloc(1, sizeof(router_t));
}

void router_free(router_t *r)
{
    if (!r) return;
    for (int i = 0; i < r->n; i++) {
        for (int s = 0; s < r->routes[i].nseg; s++) free(r->routes[i].seg[s].text);
        free(r->routes[i].pattern);
    }
    free(r->routes);
    free(r);
}

int router_count(const router_t *r) { return r->n; }
const char *router_pattern(const router_t *r, int idx) { return r->routes[idx].pattern; }
const char *router_method(const router_t *r, int idx) { return r->routes[idx].method; }

static void route_clear(route_t *rt)
{
    for (int s = 0; s < rt->nseg; s++) free(rt->seg[s].text);
    free(rt->pattern);
}

/* Parse one segment of a pattern into seg; returns 0 or -1 with err. */
static int parse_segment(segment_t *seg, const char *p, size_t len, int last, char *err, size_t errlen)
{
    const char *name = NULL;
    size_t nlen = 0;
    seg->is_param = seg->is_rest = 0;
    if (len >= 2 && p[0] == '{' && p[len - 1] == '}') {
        name = p + 1;
        nlen = len - 2;
        if (nlen > 0 && name[nlen - 1] == '*') { seg->is_rest = 1; nlen--; }
    } else if (len >= 1 && p[0] == ':') {
        name = p + 1;
        nlen = len - 1;
    } else if (len >= 1 && p[0] == '*') {
        name = len > 1 ? p + 1 : "rest";
        nlen = len > 1 ? len - 1 : 4;
        seg->is_rest = 1;
    }
    if (name) {
        if (nlen == 0) { snprintf(err, errlen, "empty parameter name"); return -1; }
        for (size_t i = 0; i < nlen; i++) {
            char c = name[i];
            if (!(c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))) {
                snprintf(err, errlen, "bad parameter name '%.*s'", (int)nlen, name);
                return -1;
            }
        }
        if (seg->is_rest && !last) { snprintf(err, errlen, "a rest parameter must be the last segment"); return -1; }
        seg->is_param = 1;
        p = name;
        len = nlen;
    } else {
        for (size_t i = 0; i < len; i++) {
            if (p[i] == '{' || p[i] == '}' || p[i] == '?' || p[i] == '#' || p[i] == ' ') {
                snprintf(err, errlen, "bad character '%c' in path pattern", p[i]);
                return -1;
            }
        }
    }
    seg->text = strndup(p, len);
    seg->len = len;
    return seg->text ? 0 : -1;
}

int router_add(router_t *r, const char *method, const char *pattern, char *err, size_t errlen)
{
    if (!router_method_valid(method)) { snprintf(err, errlen, "unknown HTTP method '%s'", method); return -1; }
    if (pattern[0] != '/') { snprintf(err, errlen, "path pattern must start with '/': '%s'", pattern); return -1; }
    route_t rt;
    memset(&rt, 0, sizeof rt);
    snprintf(rt.method, sizeof rt.method, "%s", method);
    rt.pattern = strdup(pattern);
    if (!rt.pattern) { snprintf(err, errlen, "out of memory"); return -1; }

    const char *p = pattern + 1;
    while (*p) {
        const char *slash = strchr(p, '/');
        size_t len = slash ? (size_t)(slash - p) : strlen(p);
        if (len == 0) { snprintf(err, errlen, "empty segment in '%s'", pattern); route_clear(&rt); return -1; }
        if (rt.nseg == MAX_SEGMENTS) { snprintf(err, errlen, "too many segments in '%s'", pattern); route_clear(&rt); return -1; }
        if (parse_segment(&rt.seg[rt.nseg], p, len, slash == NULL || slash[1] == 0, err, errlen) < 0) {
            route_clear(&rt);
            return -1;
        }
        rt.nseg++;
        if (!slash) break;
        p = slash + 1;
    }
    int nparams = 0;
    for (int s = 0; s < rt.nseg; s++) nparams += rt.seg[s].is_param;
    if (nparams > ROUTER_MAX_PARAMS) { snprintf(err, errlen, "too many parameters in '%s'", pattern); route_clear(&rt); return -1; }
    for (int i = 0; i < r->n; i++) {
        if (strcmp(r->routes[i].method, method) == 0 && strcmp(r->routes[i].pattern, pattern) == 0) {
            snprintf(err, errlen, "duplicate route %s %s", method, pattern);
            route_clear(&rt);
            return -1;
        }
    }
    if (r->n == r->cap) {
        int cap = r->cap ? r->cap * 2 : 16;
        route_t *nr = realloc(r->routes, (size_t)cap * sizeof *nr);
        if (!nr) { snprintf(err, errlen, "out of memory"); route_clear(&rt); return -1; }
        r->routes = nr;
        r->cap = cap;
    }
    r->routes[r->n] = rt;
    return r->n++;
}

/* ---------------------------------------------------------------------------------------- */

/* Does route rt match the split path? Fills m (if given) and returns a specificity score
 * (higher is more specific), or -1 when it does not match. */
static long route_try(const route_t *rt, const char *const *segs, const size_t *lens, int nsegs,
                      const char *path_end, router_match_t *m)
{
    long score = 0;
    int np = 0;
    int s;
    for (s = 0; s < rt->nseg; s++) {
        const segment_t *sg = &rt->seg[s];
        if (sg->is_rest) {
            if (s >= nsegs) return -1;
            if (m) {
                m->params[np].name = sg->text;
                m->params[np].name_len = sg->len;
                m->params[np].value = segs[s];
                m->params[np].value_len = (size_t)(path_end - segs[s]);
            }
            np++;
            score <<= (MAX_SEGMENTS - s);
            if (m) m->nparams = np;
            return score;
        }
        if (s >= nsegs) return -1;
        score <<= 1;
        if (sg->is_param) {
            if (lens[s] == 0) return -1;
            if (m) {
                m->params[np].name = sg->text;
                m->params[np].name_len = sg->len;
                m->params[np].value = segs[s];
                m->params[np].value_len = lens[s];
            }
            np++;
        } else {
            if (lens[s] != sg->len || memcmp(segs[s], sg->text, sg->len) != 0) return -1;
            score |= 1;
        }
    }
    if (s != nsegs) return -1;
    score <<= (MAX_SEGMENTS - s);
    if (m) m->nparams = np;
    return score;
}

static int method_matches(const char *route_method, const char *method)
{
    if (strcmp(route_method, method) == 0) return 1;
    return method[0] == 'H' && strcmp(method, "HEAD") == 0 && strcmp(route_method, "GET") == 0;
}

int router_match(const router_t *r, const char *method, const char *path, size_t path_len,
                 router_match_t *m, char *allow, size_t allow_len)
{
    const char *segs[MAX_SEGMENTS + 1];
    size_t lens[MAX_SEGMENTS + 1];
    int nsegs = 0;
    const char *end = path + path_len;
    const char *p = path;
    if (p < end && *p == '/') p++;
    /* Split; a trailing slash ("/products/") is treated as absent. */
    while (p < end) {
        const char *slash = memchr(p, '/', (size_t)(end - p));
        const char *e = slash ? slash : end;
        if (nsegs == MAX_SEGMENTS + 1) return ROUTER_NOT_FOUND;
        segs[nsegs] = p;
        lens[nsegs] = (size_t)(e - p);
        nsegs++;
        if (!slash) break;
        p = slash + 1;
    }

    int best = -1, path_matched = 0;
    long best_score = -1;
    for (int i = 0; i < r->n; i++) {
        const route_t *rt = &r->routes[i];
        long score = route_try(rt, segs, lens, nsegs, end, NULL);
        if (score < 0) continue;
        path_matched = 1;
        if (!method_matches(rt->method, method)) continue;
        if (score > best_score) { best = i; best_score = score; }
    }
    if (best >= 0) {
        route_try(&r->routes[best], segs, lens, nsegs, end, m);
        return best;
    }
    if (!path_matched) return ROUTER_NOT_FOUND;
    if (allow && allow_len) {
        /* Every method some matching pattern answers, each once, GET implying HEAD. */
        size_t off = 0;
        allow[0] = 0;
        for (size_t k = 0; k < sizeof methods / sizeof methods[0]; k++) {
            int found = 0;
            for (int i = 0; i < r->n && !found; i++)
                if (method_matches(r->routes[i].method, methods[k]) &&
                    route_try(&r->routes[i], segs, lens, nsegs, end, NULL) >= 0)
                    found = 1;
            if (!found) continue;
            int w = snprintf(allow + off, allow_len - off, "%s%s", off ? ", " : "", methods[k]);
            if (w < 0 || (size_t)w >= allow_len - off) break;
            off += (size_t)w;
        }
    }
    return ROUTER_METHOD_NOT_ALLOWED;
}
