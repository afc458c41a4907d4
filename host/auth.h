/* auth: the bearer-token check that runs in C before a route's handler (route `auth`,
 * `roles`, `scope`), so that no handler can forget it. */
#ifndef MERCATO_AUTH_H
#define MERCATO_AUTH_H

#include "request.h"
#include "revocation.h"
#include "snapshot.h"

/* Verify the route's bearer token, its scope, then its subject's revocation record (a token
 * issued before the subject was disabled is refused; one issued before a role change carries
 * the new role) and the route's roles. 0: go on (for a valid token the claims are in
 * r->claims_ref); -1: a 401/403/503 problem has been queued; 1: the record is being read from
 * Redis — done(r, rec) comes from the loop (*wait cancels it), and must call auth_settle. */
int auth_check(request_t *r, const route_info_t *ri, revocation_cb done, revocation_wait_t **wait);

/* The checks after the record: 0 go on, -1 a 401/403 problem queued (claims released). */
int auth_settle(request_t *r, const route_info_t *ri, const revocation_t *rec);

#endif
