/* queue: the rabbitmq-c binding's C-level API (bindings/queue_amqp.c), used by the Lua surface
 * in bindings/queue.c and by tests/test_queue.c. Every function runs on the worker's thread. */
#ifndef MERCATO_BINDINGS_QUEUE_H
#define MERCATO_BINDINGS_QUEUE_H

#include <amqp.h>
#include <stddef.h>
#include <stdint.h>

#define QUEUE_EXCHANGE "mercato.events"   /* durable topic exchange every event goes through */
#define QUEUE_DLX "mercato.dlx"           /* direct exchange; each queue dead-letters with its name as key */
#define QUEUE_BACKOFF_MAX_MS 5000

/* A parsed amqp://user:password@host:port/vhost URL ("/" or no path: the default vhost "/"). */
typedef struct queue_url {
    char host[256];
    int port;
    char user[128];
    char password[256];
    char vhost[256];
} queue_url_t;

int queue_url_parse(const char *url, queue_url_t *u, char *err, size_t errlen);

/* A worker's AMQP state: a publishing connection (confirms) and a consuming one, each opened
 * on first use and reopened with backoff (100 ms doubling to 5 s) after a failure. Separate
 * connections, as RabbitMQ advises: a publisher blocked by flow control does not stall
 * deliveries, and a publish never has to step over a delivery. */
typedef struct queue_ctx queue_ctx_t;

/* A new context for the AMQP_URL url (copied); name prefixes the connections' connection_name
 * ("<name> publish|consume", as rabbitmqctl list_connections shows). NULL when out of memory.
 * Caller frees with queue_ctx_free. */
queue_ctx_t *queue_ctx_new(const char *url, const char *name);
/* Close both connections (unacked deliveries go back to their queues) and free. NULL-safe. */
void queue_ctx_free(queue_ctx_t *q);
/* Close both connections without acking anything, as a crashed consumer would. */
void queue_ctx_reset(queue_ctx_t *q);

/* The error slot every call below fills on failure: a message and a STYLE code. */
typedef struct queue_err {
    char msg[512];
    const char *code;   /* "unavailable", "timeout", "conflict", "invalid", "not_found" */
} queue_err_t;

/* Publish body to QUEUE_EXCHANGE with routing key rk, persistent, and wait for the broker's
 * confirm (timeout_ms). props: the caller's fields (message_id, type, ...), this sets
 * content_type and delivery_mode. 0, or -1 with e (nack, timeout and I/O: "unavailable"). */
int queue_publish(queue_ctx_t *q, amqp_bytes_t rk, amqp_bytes_t body, amqp_basic_properties_t *props,
                  int timeout_ms, queue_err_t *e);

/* The same publish without waiting for its confirm: 0 with *seq, the publish's sequence number
 * on this connection (1, 2, ...) and *epoch, the connection's (bumped at every open, so a
 * number of a closed connection never matches a new one); -1 with e. Every publish made so is
 * reported exactly once by a later queue_confirms, which a waiting queue_publish never steals. */
int queue_publish_nowait(queue_ctx_t *q, amqp_bytes_t rk, amqp_bytes_t body, amqp_basic_properties_t *props,
                         uint32_t *epoch, uint64_t *seq, queue_err_t *e);

/* How a publish made with queue_publish_nowait ended. */
typedef enum {
    QUEUE_CONFIRM_ACK = 0,    /* the broker confirmed it: the message is queued (or unroutable) */
    QUEUE_CONFIRM_NACK,       /* the broker refused it (basic.nack: overflow, internal error) */
    QUEUE_CONFIRM_LOST,       /* the connection closed before its confirm: it may or may not be queued */
    QUEUE_CONFIRM_TIMEOUT,    /* no confirm before the deadline (the connection is closed: as LOST) */
} queue_confirm_status_t;

typedef struct queue_confirm {
    uint32_t epoch;
    uint64_t seq;
    queue_confirm_status_t status;
} queue_confirm_t;

/* Wait up to timeout_ms (<= 0: AMQP_TIMEOUT_MS) until every publish not yet reported has its
 * confirm, then hand them over: *out (caller frees; NULL when *n is 0) gets *n outcomes, in the
 * order they were settled. A publish still without a confirm at the deadline is reported TIMEOUT and the
 * connection closed (a late confirm would name a number nobody waits for). When a connection
 * was lost, *why says why (empty otherwise). 0; -1 with e only when out of memory. */
int queue_confirms(queue_ctx_t *q, int timeout_ms, queue_confirm_t **out, size_t *n, char *why, size_t whylen,
                   queue_err_t *e);

/* Declare the durable quorum queue name (delivery limit, dead-lettered to QUEUE_DLX into
 * "<name>.dlq"), bind it to QUEUE_EXCHANGE with each key, and remember prefetch for it. */
int queue_declare_consumer(queue_ctx_t *q, const char *name, const char *const *keys, int nkeys,
                           int prefetch, int delivery_limit, queue_err_t *e);

/* Wait up to timeout_ms for a delivery from queue name (consuming it on first call). Returns
 * 1 with *env filled (caller amqp_destroy_envelope()s it) and *tag the opaque tag to ack, 0 on
 * timeout, -1 with e. */
int queue_next(queue_ctx_t *q, const char *name, int timeout_ms, amqp_envelope_t *env, double *tag, queue_err_t *e);

/* Ack (ack = 1) or nack (requeue or not) the delivery tag from queue_next. 0; -1 with e
 * ("conflict" when the delivery's connection has since closed: the broker redelivers it);
 * -2 when tag was never delivered or is already settled (misuse). */
int queue_settle(queue_ctx_t *q, double tag, int ack, int requeue, queue_err_t *e);

/* 1 when the publishing connection is open or opens now, 0 with why. */
int queue_probe(queue_ctx_t *q, char *why, size_t whylen);

#endif
