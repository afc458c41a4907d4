/* builtins: /health, /ready, /metrics, /openapi.json (host/builtins.c). */
#ifndef MERCATO_BUILTINS_H
#define MERCATO_BUILTINS_H

#include "request.h"

/* The built-in r asks for (BUILTIN_*, a GET or HEAD of its exact path), or 0. */
int builtins_match(const request_t *r);

/* Answer r (r->route is a BUILTIN_*). */
void builtins_serve(request_t *r);

#endif
