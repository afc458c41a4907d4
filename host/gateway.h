/* gateway: SERVICE=gateway — path-prefix routing to the upstream services (CONTRACT §5). */
#ifndef MERCATO_GATEWAY_H
#define MERCATO_GATEWAY_H

#include <stddef.h>

#include "config.h"
#include "request.h"

/* ---- routing (pure functions, tested in tests/test_gateway.c) ---------------------------- */

enum { GW_USER, GW_PRODUCT, GW_ORDER, GW_PAYMENT, GW_NOTIFICATION, GW_NUPSTREAMS };
enum { GW_UNKNOWN = -1, GW_FORBIDDEN = -2 };

/* The upstream for a raw request path (no query): GW_USER..GW_NOTIFICATION, GW_UNKNOWN when
 * no prefix matches whole segments, GW_FORBIDDEN when any segment, percent-decoded, is
 * "internal" (any case) or a dot segment ("." / ".."), which never leave the gateway. */
int gateway_route(const char *path, size_t len);

/* Does any segment of path, percent-decoded, equal "internal" (case-insensitive)? */
int gateway_path_is_internal(const char *path, size_t len);

/* "product", and the variable naming its base URL, "PRODUCT_SERVICE_URL". */
const char *gateway_upstream_name(int upstream);
const char *gateway_upstream_env(int upstream);

/* Is this header hop-by-hop (RFC 9110 §7.6.1: Connection, Keep-Alive, TE, Trailer,
 * Transfer-Encoding, Upgrade, Proxy-*), so that a proxy must not forward it? */
int gateway_hop_by_hop(const char *name);

/* ---- serving ------------------------------------------------------------------------------ */

/* Read the gateway's configuration and resolve its upstreams: once, at start-up (the first
 * call does it; later ones return at once). */
void gateway_init(void);

struct worker;
/* Free the thread's upstream connections (worker_free, before the loop). */
void gateway_worker_free(struct worker *w);

/* Largest body the gateway forwards (images are the largest: 5 MiB). */
size_t gateway_max_body(const config_t *cfg);

/* Forward r to its upstream and queue the upstream's answer (or a 404/502/504 problem). */
void gateway_handle(request_t *r);

#endif
