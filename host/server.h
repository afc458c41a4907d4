/* server: the HTTP front — N worker threads, each with its own event loop, connections and Lua
 * state, on one shared listening socket (or one each with LISTEN_MODE=reuseport). */
#ifndef MERCATO_SERVER_H
#define MERCATO_SERVER_H

#include <stddef.h>

#include "config.h"
#include "request.h"
#include "response.h"

typedef struct server server_t;

/* Bind the port, start cfg->workers threads and wait until each has built its Lua state.
 * Returns NULL with err on failure (nothing left running). */
server_t *server_start(const config_t *cfg, char *err, size_t errlen);

/* Stop accepting, let in-flight requests finish (up to cfg->shutdown_timeout_ms), join the
 * threads and free everything. */
void server_stop(server_t *s);

/* Answer r with resp (taken) and the host's own headers (X-Request-Id, security headers,
 * Connection: close while draining). Records status and length; -1 when r was answered
 * already or its connection is gone. */
int server_queue(request_t *r, int status, response_t *resp, size_t len);

/* Queue a response for r: body copied; ctype may be NULL when there is no body. */
int server_respond(request_t *r, int status, const char *ctype, const char *body, size_t len);

/* Queue an RFC 9457 problem; `header`/`value` add one header (Allow, WWW-Authenticate, ...). */
int server_problem(request_t *r, int status, const char *title, const char *detail,
                   const char *header, const char *value);

/* r waited on I/O and is done waiting: when it has no answer (cancelled, out of memory), its
 * connection closes. */
void server_resumed(request_t *r);

/* True once the server is stopping (SIGTERM): /ready says so, answers close their connection. */
int server_stopping(void);

#endif
