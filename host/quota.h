/* quota: what clients may hold of the process — connections in all and per client IP,
 * buffered request-body bytes, and how long a request may take to arrive. Process-wide: every
 * HTTP thread's daemon shares the counts. */
#ifndef MERCATO_QUOTA_H
#define MERCATO_QUOTA_H

#include <stddef.h>
#include <sys/socket.h>

#include "config.h"
#include "request.h"

struct conn;

/* Raise the soft open-file limit to the hard one (idle connections are file descriptors).
 * Returns the soft limit now in force. */
long quota_raise_nofile(void);

/* Take the limits from cfg (MAX_CONNECTIONS lowered to what the open-file limit allows) and
 * register their metrics. Once, before the HTTP threads start. */
void quota_init(const config_t *cfg);

/* Free the per-IP table: after the HTTP threads stopped. */
void quota_free(void);

/* The connection limit every daemon is given (each could hold them all). */
unsigned quota_max_connections(void);

/* How many connections closed since the last call: the most open at once in between minus the
 * open now (the peak restarts from now). */
long quota_connections_settled(void);
/* The accept policy: 0 (the connection is closed at once) past MAX_CONNECTIONS in the
 * process, or past MAX_CONNECTIONS_PER_IP from one client address (IPv6 by its /64) unless it
 * is a trusted proxy (TRUSTED_PROXIES); else 1. */
int quota_admit(const struct sockaddr *addr);

/* Counts connections as they open (open 1) and close (open 0). */
void quota_opened(struct conn *c, int open);

/* REQUEST_READ_TIMEOUT_MS (0: none): a request head's deadline, kept by host/conn.c. */
int quota_read_timeout_ms(void);
/* A head missed it and its connection is closed: counted. */
void quota_read_timed_out(void);

/* Append n bytes to r's body buffer within the process's BODY_BUFFER_BUDGET. 0; -1 when the
 * budget has no room (nothing appended: the caller drops the body and answers 503); -2 out of
 * memory. */
int quota_body_append(request_t *r, const char *data, size_t n);

/* Free r's body buffer and give its bytes back to the budget (idempotent). */
void quota_body_drop(request_t *r);

/* The head of r is in: its body must arrive within REQUEST_READ_TIMEOUT_MS of r's first byte
 * (r->start_ns), or its connection is shut down. r->conn must be set. */
void quota_read_start(request_t *r);

/* The whole request is in (or it ends): no more deadline. */
void quota_read_done(request_t *r);

/* The per-IP table (MAX_CONNECTIONS_PER_IP > 0): connections open from key (a family byte,
 * then 4 IPv4 or 8 IPv6 /64 bytes), and adding d = +1 or -1 to it. Exposed for its tests. */
unsigned quota_ip_count(const unsigned char key[9]);
void quota_ip_add(const unsigned char key[9], int d);

#endif
