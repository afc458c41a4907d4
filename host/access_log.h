/* access_log: the access line of a finished request (host/access_log.c). */
#ifndef MERCATO_ACCESS_LOG_H
#define MERCATO_ACCESS_LOG_H

#include <stdint.h>

#include "request.h"

struct worker;

/* Append r's line (status, ns taken) to w's access buffer; a line too long is dropped. */
void access_log_write(struct worker *w, request_t *r, int status, uint64_t ns);

#endif
