/* auth: the bearer-token check that runs in C before a route's handler. */
#include "auth.h"

#include "server.h"

int auth_check(request_t *r, const route_info_t *ri)
{
    if (ri->auth == AUTH_NONE || ri->auth == AUTH_OPTIONAL) return 0;
    /* Token verification arrives with the jwt binding; until then a protected route refuses. */
    server_problem(r, 401, "Unauthorized", "A valid bearer token is required.", "WWW-Authenticate", "Bearer");
    return -1;
}
