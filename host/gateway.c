/* gateway: SERVICE=gateway — path-prefix routing to the upstream services (CONTRACT §5). */
#include "gateway.h"

#include "server.h"

size_t gateway_max_body(const config_t *cfg)
{
    size_t images = 5u << 20;
    return cfg->max_body > images ? cfg->max_body : images;
}

void gateway_handle(request_t *r)
{
    server_problem(r, 502, "Bad Gateway", "The gateway is not implemented yet.", NULL, NULL);
}
