/* stripe: the C half of the Stripe binding (bindings/stripe.c) — webhook signatures, the retry
 * rule and back-off, the error vocabulary — exposed for the C unit tests. */
#ifndef MERCATO_STRIPE_H
#define MERCATO_STRIPE_H

#include <stddef.h>

/* The Stripe-Version every request pins (changing it is a code change, never a surprise). */
#define STRIPE_API_VERSION "2024-06-20"
#define STRIPE_DEFAULT_TOLERANCE 300   /* seconds, as Stripe's own libraries */

/* Check a Stripe-Signature header (`t=<unix>,v1=<hex>[,v1=<hex>...]`, other schemes ignored)
 * against HMAC-SHA256(secret, "<t>.<payload>"): any v1 may match (secret rotation), each
 * compared in constant time; |now - t| must be within tolerance seconds (0: no check).
 * 0 when valid; -1 with *err set to a fixed string otherwise. */
int stripe_verify_signature(const char *payload, size_t plen, const char *header, size_t hlen,
                            const char *secret, size_t slen, long tolerance, long now, const char **err);

/* Whether a failed request may be sent again (same Idempotency-Key): status 0 is a network
 * failure (retried); `Stripe-Should-Retry: true|false` (may be NULL) decides when present;
 * else 409, 429 and 5xx are retried. */
int stripe_should_retry(long status, const char *should_retry);

/* Seconds to wait before retry number `attempt` (1, 2, ...): 0.5 s doubling, capped at 8 s,
 * with jitter — a factor from 0.5 to 1 chosen by r in [0, 1). */
double stripe_backoff_s(int attempt, double r);

/* The binding's error code for a Stripe error answer: 400/402 invalid, 404 not_found,
 * 409 conflict, everything else (401, 403, 429, 5xx) unavailable. */
const char *stripe_error_code(long status);

#endif
