/* gateway: SERVICE=gateway — path-prefix routing to the upstream services (CONTRACT §5). */
#ifndef MERCATO_GATEWAY_H
#define MERCATO_GATEWAY_H

#include <stddef.h>

#include "config.h"
#include "request.h"

/* Largest body the gateway forwards (images are the largest: 5 MiB). */
size_t gateway_max_body(const config_t *cfg);

/* Forward r to its upstream and queue the upstream's answer (or a 404/502/504 problem). */
void gateway_handle(request_t *r);

#endif
