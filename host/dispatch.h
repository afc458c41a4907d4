/* dispatch: the route's checks, the Lua handler in its coroutine, and parking
 * (host/dispatch.c). */
#ifndef MERCATO_DISPATCH_H
#define MERCATO_DISPATCH_H

#include <stddef.h>

#include "request.h"

struct worker;

/* Once, at server start: ASYNC (handlers in coroutines) and the handler-error metric. */
void dispatch_init(int async);

/* Match r's method and path in the worker's current route table (r->route, r->match,
 * r->generation, r->slot); allow (may be NULL) gets the methods of a 405. */
void dispatch_match(request_t *r, char *allow, size_t allow_len);

/* The final access call of a matched route: its checks, then its handler; r is answered,
 * or parked until it is. */
void dispatch_route(request_t *r);

/* worker_t.resume: a parked handler's I/O is done (worker_wake). */
void dispatch_resume(request_t *r);

/* r goes away while parked (its connection closed, or stopping): forget its wait and its coroutine. */
void dispatch_forget(request_t *r);

/* The shutdown deadline: forget every parked request of w; its connection closes unanswered. */
void dispatch_cancel_parked(struct worker *w);

/* Park r while C-level work runs on the loop (the gateway's forward); cancel(arg) is called if r goes away first (shutdown), after which the work must
 * never touch r. The work ends with server_unpark. Parking a parked request only replaces
 * its cancel hook. */
void server_park(request_t *r, void (*cancel)(void *arg), void *arg);

/* The parked work answered r (server_queue/server_problem) or gave up: r is no longer parked
 * (its connection closes when there is no answer). */
void server_unpark(request_t *r);

/* r is parked, and nothing works on it any more (no handler coroutine, no wait): its answer
 * is queued, or it gave up — unpark it (server_unpark). A no-op
 * otherwise (not parked, or a forward or handler still under way). */
void server_settle(request_t *r);

#endif
