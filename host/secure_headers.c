/* secure_headers: the API's fixed browser-hardening headers (OWASP REST Security / Secure
 * Headers project): nothing here is HTML, so nothing may be sniffed, framed, scripted, cached
 * when it carries credentials, or sent on with a Referer. No Server or X-Powered-By header is
 * ever added. HSTS only when configured: the host speaks plain HTTP
 * behind a TLS-terminating proxy, and only the operator knows whether there is one. */
#include "secure_headers.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "config.h"
#include "request.h"
#include "response.h"

static char g_hsts[64];   /* "max-age=N; includeSubDomains", or "" (set once before any thread) */

static const char *const fixed[][2] = {
    { "X-Content-Type-Options", "nosniff" },
    { "Referrer-Policy", "no-referrer" },
    { "X-Frame-Options", "DENY" },
    { "Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'" },
};

void secure_headers_init(const config_t *cfg)
{
    if (cfg->hsts_max_age > 0)
        snprintf(g_hsts, sizeof g_hsts, "max-age=%ld; includeSubDomains", cfg->hsts_max_age);
    else
        g_hsts[0] = 0;
}

int secure_headers_private(const request_t *r, int status)
{
    if (status < 200 || status >= 400) return 1;
    if (strcmp(r->method, "GET") != 0 && strcmp(r->method, "HEAD") != 0) return 1;
    return request_header(r, "Authorization") != NULL || request_header(r, "Cookie") != NULL;
}

/* Add name: value unless resp has that header already. */
static void add_missing(response_t *resp, const char *name, const char *value)
{
    char have[8];
    if (!response_header(resp, name, have, sizeof have)) response_add_header(resp, name, value);
}

void secure_headers_add(response_t *resp, int private_)
{
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) add_missing(resp, fixed[i][0], fixed[i][1]);
    if (private_) add_missing(resp, "Cache-Control", "no-store");
    if (g_hsts[0]) add_missing(resp, "Strict-Transport-Security", g_hsts);
}
