/* ratelimit_http: the host's door checks — who the client is (the peer, or X-Forwarded-For
 * behind TRUSTED_PROXIES), a route's `rate_limit` before its handler, the gateway's global
 * limit, and the 429 problem with its headers — over the limiter in core/ratelimit.h. */
#ifndef MERCATO_RATELIMIT_HTTP_H
#define MERCATO_RATELIMIT_HTTP_H

#include <stddef.h>

#include "../core/ratelimit.h"

struct request;

/* The client address of r: the socket peer, or — when the peer is a trusted proxy
 * (TRUSTED_PROXIES, default 127.0.0.0/8 and ::1) — the right-most untrusted address of
 * X-Forwarded-For. Writes "" when unknown. out needs 64 bytes. */
void ratelimit_client_ip(struct request *r, char *out, size_t outlen);

/* Is the textual address in TRUSTED_PROXIES? (-1 when it is not an address.) */
int ratelimit_trusted(const char *addr);
/* Re-read TRUSTED_PROXIES (tests). 0, or -1 with err naming a bad entry. */
int ratelimit_trusted_load(const char *list, char *err, size_t errlen);

/* The route's limit, checked for r on the loop (ratelimit_check_async); key IP at phase 0
 * (before auth), key SUB at phase 1 (after auth: the token's subject, or the client IP for a
 * caller without one). Returns 0 and fills *res when r may go on (res->limit 0 when nothing
 * was checked), -1 when a 429 has been queued, or 1 when the answer comes later as
 * done(arg, res) (*wait: the handle to cancel it; a refusal is then the caller's to send with
 * ratelimit_refuse). */
int ratelimit_route(struct request *r, const ratelimit_rule_t *rule, int phase, struct ratelimit_result *res,
                    ratelimit_done_cb done, void *arg, ratelimit_wait_t **wait);

/* Park r while its check (ratelimit_route / ratelimit_gateway answered 1) waits on Redis; if
 * r goes away meanwhile the check is cancelled. */
void ratelimit_park(struct request *r, ratelimit_wait_t *wait);

/* In the check's done callback: r no longer waits on it, and res becomes r's (for its
 * RateLimit-* headers). Returns res->allowed; a refusal is the caller's to send. */
int ratelimit_answered(struct request *r, const ratelimit_result_t *res);

/* Refuse r: its claims let go (no handler will run), a 429 queued (ratelimit_reject). */
void ratelimit_refuse(struct request *r, const char *name, const ratelimit_result_t *res);

/* Queue a 429 problem for res with Retry-After and RateLimit-* headers; counts it. */
void ratelimit_reject(struct request *r, const char *name, const ratelimit_result_t *res);

/* Add RateLimit-Limit/Remaining/Reset for res to a response being built. */
struct response;
void ratelimit_add_headers(struct response *resp, const ratelimit_result_t *res);

/* The gateway's global per-client limit (RATE_LIMIT_GLOBAL), as ratelimit_route: 0 go on, -1
 * 429 queued, 1 answer later through done (a refusal then sent by the caller, name "global"). */
int ratelimit_gateway(struct request *r, ratelimit_result_t *res, ratelimit_done_cb done, void *arg,
                      ratelimit_wait_t **wait);

/* Check RATE_LIMIT_GLOBAL and TRUSTED_PROXIES at start-up: 0, or -1 after logging why. */
int ratelimit_config_check(void);

#endif
