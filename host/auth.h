/* auth: the bearer-token check that runs in C before a route's handler (route `auth`,
 * `roles`, `scope`), so that no handler can forget it. */
#ifndef MERCATO_AUTH_H
#define MERCATO_AUTH_H

#include "request.h"
#include "snapshot.h"

/* 0: go on (for a valid token the claims are stored in r->claims_ref); -1: a 401/403 problem
 * has been queued. */
int auth_check(request_t *r, const route_info_t *ri);

#endif
