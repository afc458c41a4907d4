/* secure_headers: the response headers every answer of every service and the gateway carries
 * (host/secure_headers.c), added in one place (server_queue) so no route can forget them. */
#ifndef MERCATO_SECURE_HEADERS_H
#define MERCATO_SECURE_HEADERS_H

struct config;
struct request;
struct response;

/* Read the configuration once at server start (HSTS_MAX_AGE: 0 = no HSTS header). */
void secure_headers_init(const struct config *cfg);

/* Add the security headers resp lacks (a header the handler or the upstream already set is
 * kept). `private_` — the request carried credentials (Authorization or Cookie), or is not a
 * successful GET/HEAD — adds `Cache-Control: no-store` unless a Cache-Control is present. */
void secure_headers_add(struct response *resp, int private_);

/* Whether the answer to this request must not be stored by a cache (see secure_headers_add). */
int secure_headers_private(const struct request *r, int status);

#endif
