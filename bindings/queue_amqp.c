/* queue_amqp: the AMQP side of the queue binding — connections, reconnect with backoff,
 * declarations, confirmed publishes, deliveries and their acks (rabbitmq-c 0.11). */
#include "queue.h"

#include <amqp_tcp_socket.h>
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../host/config.h"

#define CHANNEL 1
#define DEFAULT_TIMEOUT_MS 2000
#define SUB_HEARTBEAT_S 60
#define TAG_EPOCH_SCALE 4294967296.0   /* Lua tag = epoch * 2^32 + delivery tag (exact in a double) */

typedef struct qconn {
    amqp_connection_state_t c;   /* NULL when closed */
    uint32_t epoch;              /* bumped at every open: deliveries of older epochs are gone */
    int64_t retry_at;            /* after an open failure: no attempt before this (ms, monotonic) */
    int backoff_ms;
    char last_err[512];
    int confirming;              /* confirm.select done on CHANNEL */
    int exchange_declared;
    uint64_t seq;                /* publish sequence number under confirms */
} qconn_t;

typedef struct { char *name; int prefetch; } decl_t;
typedef struct { char *name; char *tag; uint32_t epoch; } consumer_t;
typedef struct { amqp_envelope_t env; double tag; } pending_t;

struct queue_ctx {
    char *url;
    char name[96];           /* connection_name client property prefix, seen in rabbitmqctl */
    qconn_t pub, sub;
    /* Publishes made without waiting (queue_publish_nowait), on the pub connection: */
    uint64_t *unconfirmed;   /* their sequence numbers in the current pub epoch, ascending */
    size_t nunconfirmed, capunconfirmed;
    queue_confirm_t *settled;   /* outcomes not yet handed to queue_confirms (owned) */
    size_t nsettled, capsettled;
    char lost_why[512];      /* why the last connection with unconfirmed publishes closed */
    decl_t *decl;            /* queues declared here: their prefetch */
    int ndecl;
    consumer_t *cons;        /* basic.consume registrations on the sub connection */
    int ncons;
    pending_t *pending;      /* deliveries read while waiting for another queue (owned) */
    int npending;
    uint64_t *unacked;       /* delivery tags of the current sub epoch not yet settled */
    size_t nunacked, capunacked;
};

/* ---- small helpers ------------------------------------------------------------------------ */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int timeout_ms(void)
{
    const char *s = getenv("AMQP_TIMEOUT_MS");
    long v = s && *s ? config_parse_number(s, 0) : -1;
    return v > 0 && v <= 600000 ? (int)v : DEFAULT_TIMEOUT_MS;
}

static struct timeval tv_of(int ms)
{
    if (ms < 0) ms = 0;
    return (struct timeval){ .tv_sec = ms / 1000, .tv_usec = (suseconds_t)(ms % 1000) * 1000 };
}

static int seterr(queue_err_t *e, const char *code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int seterr(queue_err_t *e, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    e->code = code;
    return -1;
}

static const char *server_code(int reply_code)
{
    switch (reply_code) {
    case 404: return "not_found";                 /* NOT_FOUND */
    case 405: case 406: return "conflict";        /* RESOURCE_LOCKED, PRECONDITION_FAILED */
    case 403: case 530: return "invalid";         /* ACCESS_REFUSED, NOT_ALLOWED */
    default: return "unavailable";                /* 320 CONNECTION_FORCED, 541, ... */
    }
}

/* Fill e from an RPC reply that was not NORMAL. */
static int rpc_err(amqp_rpc_reply_t r, const char *what, queue_err_t *e)
{
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION)
        return seterr(e, r.library_error == AMQP_STATUS_TIMEOUT ? "timeout" : "unavailable",
                      "amqp %s: %s", what, amqp_error_string2(r.library_error));
    if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION) {
        if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
            amqp_connection_close_t *m = r.reply.decoded;
            return seterr(e, server_code(m->reply_code), "amqp %s: connection closed: %d %.*s", what, m->reply_code,
                          (int)m->reply_text.len, (char *)m->reply_text.bytes);
        }
        if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
            amqp_channel_close_t *m = r.reply.decoded;
            return seterr(e, server_code(m->reply_code), "amqp %s: %d %.*s", what, m->reply_code,
                          (int)m->reply_text.len, (char *)m->reply_text.bytes);
        }
        return seterr(e, "unavailable", "amqp %s: unexpected server method 0x%08x", what, r.reply.id);
    }
    return seterr(e, "unavailable", "amqp %s: no reply", what);
}

/* ---- URL ---------------------------------------------------------------------------------- */

int queue_url_parse(const char *url, queue_url_t *u, char *err, size_t errlen)
{
    memset(u, 0, sizeof *u);
    /* No message here shows the URL: it holds the password. */
    if (url && strncmp(url, "amqps:", 6) == 0) {
        snprintf(err, errlen, "AMQP_URL: the amqps scheme (TLS) is not supported");
        return -1;
    }
    if (!url || strncmp(url, "amqp://", 7) != 0) {
        snprintf(err, errlen, "AMQP_URL: expecting the amqp scheme with user:password@host:port/vhost (the value is not shown)");
        return -1;
    }
    char *copy = strdup(url);
    if (!copy) { snprintf(err, errlen, "out of memory"); return -1; }
    struct amqp_connection_info ci;
    amqp_default_connection_info(&ci);
    int rc = amqp_parse_url(copy, &ci);
    if (rc != AMQP_STATUS_OK) {
        snprintf(err, errlen, "AMQP_URL: cannot be parsed (%s; the value is not shown)", amqp_error_string2(rc));
        free(copy);
        return -1;
    }
    const char *vhost = ci.vhost && *ci.vhost ? ci.vhost : "/";   /* "amqp://h/" means "/" here */
    if (strlen(ci.host) >= sizeof u->host || strlen(ci.user) >= sizeof u->user ||
        strlen(ci.password) >= sizeof u->password || strlen(vhost) >= sizeof u->vhost || !*ci.host) {
        snprintf(err, errlen, "AMQP_URL: host, user, password or vhost missing or too long");
        free(copy);
        return -1;
    }
    strcpy(u->host, ci.host);
    strcpy(u->user, ci.user);
    strcpy(u->password, ci.password);
    strcpy(u->vhost, vhost);
    u->port = ci.port;
    free(copy);
    return 0;
}

/* ---- confirms of publishes made without waiting ---------------------------------------------- */

static int settle_push(queue_ctx_t *q, uint32_t epoch, uint64_t seq, queue_confirm_status_t st)
{
    if (q->nsettled == q->capsettled) {
        size_t cap = q->capsettled ? q->capsettled * 2 : 64;
        queue_confirm_t *s = realloc(q->settled, cap * sizeof *s);
        if (!s) return -1;
        q->settled = s;
        q->capsettled = cap;
    }
    q->settled[q->nsettled++] = (queue_confirm_t){ .epoch = epoch, .seq = seq, .status = st };
    return 0;
}

/* Move the unconfirmed publishes a basic.ack/nack covers (tag, or every one up to tag when
 * multiple) to the settled list. Out of memory: the rest stay unconfirmed, reported later. */
static void confirm_apply(queue_ctx_t *q, uint64_t tag, int multiple, queue_confirm_status_t st)
{
    size_t keep = 0;
    for (size_t i = 0; i < q->nunconfirmed; i++) {
        uint64_t s = q->unconfirmed[i];
        if ((s == tag || (multiple && s < tag)) && settle_push(q, q->pub.epoch, s, st) == 0) continue;
        q->unconfirmed[keep++] = s;
    }
    q->nunconfirmed = keep;
}

/* Every unconfirmed publish ends with st (the connection is closing, or the wait gave up). */
static void confirm_all(queue_ctx_t *q, queue_confirm_status_t st)
{
    for (size_t i = 0; i < q->nunconfirmed; i++)
        if (settle_push(q, q->pub.epoch, q->unconfirmed[i], st) < 0) break;   /* out of memory: forgotten, never ACKed */
    q->nunconfirmed = 0;
}

/* A confirm frame on the pub connection: applied; 1 when f was one. */
static int confirm_frame(queue_ctx_t *q, const amqp_frame_t *f)
{
    if (f->frame_type != AMQP_FRAME_METHOD) return 0;
    if (f->payload.method.id == AMQP_BASIC_ACK_METHOD) {
        const amqp_basic_ack_t *a = f->payload.method.decoded;
        confirm_apply(q, a->delivery_tag, a->multiple, QUEUE_CONFIRM_ACK);
        return 1;
    }
    if (f->payload.method.id == AMQP_BASIC_NACK_METHOD) {
        const amqp_basic_nack_t *n = f->payload.method.decoded;
        confirm_apply(q, n->delivery_tag, n->multiple, QUEUE_CONFIRM_NACK);
        return 1;
    }
    return 0;
}

/* ---- connections -------------------------------------------------------------------------- */

static void sub_forget(queue_ctx_t *q)
{
    for (int i = 0; i < q->npending; i++) amqp_destroy_envelope(&q->pending[i].env);
    q->npending = 0;
    q->nunacked = 0;
}

/* Close k: politely when `polite` (the broker requeues unacked deliveries either way). */
static void conn_close(queue_ctx_t *q, qconn_t *k, int polite)
{
    if (!k->c) return;
    if (polite) {
        amqp_channel_close(k->c, CHANNEL, AMQP_REPLY_SUCCESS);
        amqp_connection_close(k->c, AMQP_REPLY_SUCCESS);
    }
    amqp_destroy_connection(k->c);
    k->c = NULL;
    k->confirming = k->exchange_declared = 0;
    k->seq = 0;
    if (k == &q->sub) sub_forget(q);
    if (k == &q->pub && q->nunconfirmed) {
        /* Their confirms can no longer come: reported LOST (republishing is the caller's call). */
        if (!q->lost_why[0]) snprintf(q->lost_why, sizeof q->lost_why, "the publishing connection closed before the broker confirmed");
        confirm_all(q, QUEUE_CONFIRM_LOST);
    }
}

/* Close the pub connection after a failure e describes (kept as the reason for lost confirms). */
static void pub_drop(queue_ctx_t *q, const queue_err_t *e)
{
    if (q->nunconfirmed) snprintf(q->lost_why, sizeof q->lost_why, "%s", e->msg);
    conn_close(q, &q->pub, 0);
}

/* Open k (channel CHANNEL ready) unless an earlier failure's backoff has not expired. */
static int conn_open(queue_ctx_t *q, qconn_t *k, int heartbeat, queue_err_t *e)
{
    int64_t now = now_ms();
    if (k->retry_at && now < k->retry_at)
        return seterr(e, "unavailable", "%s (next attempt in %d ms)", k->last_err, (int)(k->retry_at - now));
    queue_url_t u;
    if (queue_url_parse(q->url, &u, e->msg, sizeof e->msg) < 0) { e->code = "unavailable"; return -1; }
    int ms = timeout_ms();
    struct timeval tv = tv_of(ms);
    amqp_connection_state_t c = amqp_new_connection();
    amqp_socket_t *s = c ? amqp_tcp_socket_new(c) : NULL;
    int rc = -1;
    if (!s) {
        seterr(e, "unavailable", "amqp: out of memory");
    } else if ((rc = amqp_socket_open_noblock(s, u.host, u.port, &tv)) != AMQP_STATUS_OK) {
        seterr(e, rc == AMQP_STATUS_TIMEOUT || rc == AMQP_STATUS_SOCKET_INUSE ? "timeout" : "unavailable",
               "amqp connect %s:%d: %s", u.host, u.port, amqp_error_string2(rc));
        rc = -1;
    } else {
        amqp_set_handshake_timeout(c, &tv);
        amqp_set_rpc_timeout(c, &tv);
        char cname[128];
        snprintf(cname, sizeof cname, "%s %s", q->name, k == &q->pub ? "publish" : "consume");
        amqp_table_entry_t prop = { .key = amqp_cstring_bytes("connection_name"),
                                    .value = { .kind = AMQP_FIELD_KIND_UTF8, .value.bytes = amqp_cstring_bytes(cname) } };
        amqp_table_t props = { .num_entries = 1, .entries = &prop };
        amqp_rpc_reply_t r = amqp_login_with_properties(c, u.vhost, 0, 131072, heartbeat, &props, AMQP_SASL_METHOD_PLAIN,
                                                        u.user, u.password);
        rc = -1;
        if (r.reply_type != AMQP_RESPONSE_NORMAL) rpc_err(r, "login", e);
        else if (!amqp_channel_open(c, CHANNEL)) rpc_err(amqp_get_rpc_reply(c), "channel.open", e);
        else rc = 0;
    }
    if (rc < 0) {
        if (c) amqp_destroy_connection(c);
        k->backoff_ms = k->backoff_ms ? (k->backoff_ms * 2 > QUEUE_BACKOFF_MAX_MS ? QUEUE_BACKOFF_MAX_MS : k->backoff_ms * 2) : 100;
        k->retry_at = now_ms() + k->backoff_ms;
        snprintf(k->last_err, sizeof k->last_err, "%s", e->msg);
        return -1;
    }
    k->c = c;
    k->backoff_ms = 0;
    k->retry_at = 0;
    k->epoch = k->epoch % (1u << 20) + 1;
    if (k == &q->sub) sub_forget(q);
    return 0;
}

/* Before sending on an idle connection: read what the broker sent meanwhile (heartbeats, a
 * connection.close from close_all_connections or a restart; on pub, confirms of publishes made
 * without waiting, which are applied). False if it is gone. */
static int conn_alive(queue_ctx_t *q, qconn_t *k)
{
    for (;;) {
        if (!amqp_frames_enqueued(k->c) && !amqp_data_in_buffer(k->c)) {
            struct pollfd p = { .fd = amqp_get_sockfd(k->c), .events = POLLIN };
            int n = poll(&p, 1, 0);
            if (n == 0) return 1;
            if (n < 0) return 0;
        }
        amqp_frame_t f;
        struct timeval zero = { 0, 0 };
        int st = amqp_simple_wait_frame_noblock(k->c, &f, &zero);
        if (st == AMQP_STATUS_TIMEOUT) return 1;
        if (st != AMQP_STATUS_OK) return 0;
        if (k == &q->pub && confirm_frame(q, &f)) continue;
        if (f.frame_type == AMQP_FRAME_METHOD &&
            (f.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD || f.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD))
            return 0;
    }
}

/* The publishing connection, open, alive, in confirm mode, with the events exchange declared. */
static int pub_ready(queue_ctx_t *q, queue_err_t *e)
{
    qconn_t *k = &q->pub;
    if (k->c && !conn_alive(q, k)) {
        snprintf(q->lost_why, sizeof q->lost_why, "amqp: the broker closed the publishing connection");
        conn_close(q, k, 0);
    }
    if (!k->c && conn_open(q, k, 0, e) < 0) return -1;
    if (!k->confirming) {
        if (!amqp_confirm_select(k->c, CHANNEL)) { rpc_err(amqp_get_rpc_reply(k->c), "confirm.select", e); pub_drop(q, e); return -1; }
        k->confirming = 1;
    }
    if (!k->exchange_declared) {
        if (!amqp_exchange_declare(k->c, CHANNEL, amqp_cstring_bytes(QUEUE_EXCHANGE), amqp_cstring_bytes("topic"),
                                   0, 1, 0, 0, amqp_empty_table)) {
            rpc_err(amqp_get_rpc_reply(k->c), "exchange.declare " QUEUE_EXCHANGE, e);
            pub_drop(q, e);
            return -1;
        }
        k->exchange_declared = 1;
    }
    return 0;
}

queue_ctx_t *queue_ctx_new(const char *url, const char *name)
{
    queue_ctx_t *q = calloc(1, sizeof *q);
    if (!q) return NULL;
    snprintf(q->name, sizeof q->name, "%s", name ? name : "mercato");
    q->url = strdup(url ? url : "");
    if (!q->url) { free(q); return NULL; }
    return q;
}

void queue_ctx_reset(queue_ctx_t *q)
{
    if (!q) return;
    conn_close(q, &q->pub, 1);
    conn_close(q, &q->sub, 1);
    q->pub.retry_at = q->sub.retry_at = 0;
    q->pub.backoff_ms = q->sub.backoff_ms = 0;
}

void queue_ctx_free(queue_ctx_t *q)
{
    if (!q) return;
    queue_ctx_reset(q);
    for (int i = 0; i < q->ndecl; i++) free(q->decl[i].name);
    for (int i = 0; i < q->ncons; i++) { free(q->cons[i].name); free(q->cons[i].tag); }
    free(q->decl);
    free(q->cons);
    free(q->pending);
    free(q->unacked);
    free(q->unconfirmed);
    free(q->settled);
    free(q->url);
    free(q);
}

int queue_probe(queue_ctx_t *q, char *why, size_t whylen)
{
    queue_err_t e;
    if (pub_ready(q, &e) == 0) return 1;
    snprintf(why, whylen, "%s", e.msg);
    return 0;
}

/* ---- publish ------------------------------------------------------------------------------ */

/* Send one persistent basic.publish on the ready pub connection; its sequence number in *seq. */
static int publish_send(queue_ctx_t *q, amqp_bytes_t rk, amqp_bytes_t body, amqp_basic_properties_t *props,
                        uint64_t *seq, queue_err_t *e)
{
    qconn_t *k = &q->pub;
    if (k->c && k->seq >= UINT32_MAX) {
        /* The numbers go into a Lua tag of 32 bits: start a new connection (billions of publishes on). */
        snprintf(q->lost_why, sizeof q->lost_why, "amqp: publish sequence exhausted; reconnected");
        conn_close(q, k, 1);
    }
    if (pub_ready(q, e) < 0) return -1;
    props->_flags |= AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
    props->content_type = amqp_cstring_bytes("application/json");
    props->delivery_mode = AMQP_DELIVERY_PERSISTENT;
    int st = amqp_basic_publish(k->c, CHANNEL, amqp_cstring_bytes(QUEUE_EXCHANGE), rk, 0, 0, props, body);
    if (st != AMQP_STATUS_OK) {
        seterr(e, "unavailable", "amqp publish: %s", amqp_error_string2(st));
        pub_drop(q, e);
        return -1;
    }
    *seq = ++k->seq;
    return 0;
}

int queue_publish_nowait(queue_ctx_t *q, amqp_bytes_t rk, amqp_bytes_t body, amqp_basic_properties_t *props,
                         uint32_t *epoch, uint64_t *seq, queue_err_t *e)
{
    /* Room first: a publish sent but not tracked could never be reported. */
    if (q->nunconfirmed == q->capunconfirmed) {
        size_t cap = q->capunconfirmed ? q->capunconfirmed * 2 : 64;
        uint64_t *u = realloc(q->unconfirmed, cap * sizeof *u);
        if (!u) return seterr(e, "unavailable", "queue: out of memory");
        q->unconfirmed = u;
        q->capunconfirmed = cap;
    }
    if (publish_send(q, rk, body, props, seq, e) < 0) return -1;
    q->unconfirmed[q->nunconfirmed++] = *seq;
    *epoch = q->pub.epoch;
    return 0;
}

/* Read one frame from the pub connection within deadline: 1 read (confirms applied into *f),
 * 0 timeout, -1 the connection failed or was closed by the broker (e filled, connection closed). */
static int pub_read(queue_ctx_t *q, int64_t deadline, amqp_frame_t *f, const char *what, queue_err_t *e)
{
    qconn_t *k = &q->pub;
    int64_t left = deadline - now_ms();
    if (left <= 0) return 0;
    struct timeval tv = tv_of((int)left);
    amqp_maybe_release_buffers(k->c);
    int st = amqp_simple_wait_frame_noblock(k->c, f, &tv);
    if (st == AMQP_STATUS_TIMEOUT) return 0;
    if (st != AMQP_STATUS_OK) {
        seterr(e, "unavailable", "amqp %s: %s", what, amqp_error_string2(st));
        pub_drop(q, e);
        return -1;
    }
    confirm_frame(q, f);
    if (f->frame_type == AMQP_FRAME_METHOD &&
        (f->payload.method.id == AMQP_CHANNEL_CLOSE_METHOD || f->payload.method.id == AMQP_CONNECTION_CLOSE_METHOD)) {
        amqp_rpc_reply_t r = { .reply_type = AMQP_RESPONSE_SERVER_EXCEPTION, .reply = f->payload.method };
        rpc_err(r, what, e);
        e->code = "unavailable";
        pub_drop(q, e);
        return -1;
    }
    return 1;
}

int queue_publish(queue_ctx_t *q, amqp_bytes_t rk, amqp_bytes_t body, amqp_basic_properties_t *props,
                  int wait_ms, queue_err_t *e)
{
    uint64_t seq;
    if (publish_send(q, rk, body, props, &seq, e) < 0) return -1;
    int64_t deadline = now_ms() + (wait_ms > 0 ? wait_ms : timeout_ms());
    for (;;) {
        amqp_frame_t f;
        int rc = pub_read(q, deadline, &f, "publish, waiting for the confirm", e);
        if (rc < 0) return -1;
        if (rc == 0 && now_ms() >= deadline) {
            /* A late confirm would arrive for a sequence number we no longer wait for: start over. */
            seterr(e, "unavailable", "amqp publish: no confirm from the broker in time (the message may or may not be queued)");
            pub_drop(q, e);
            return -1;
        }
        if (rc == 0 || f.frame_type != AMQP_FRAME_METHOD) continue;
        /* Confirms of publishes made without waiting were applied by pub_read; this one's: */
        if (f.payload.method.id == AMQP_BASIC_ACK_METHOD) {
            amqp_basic_ack_t *a = f.payload.method.decoded;
            if (a->delivery_tag == seq || (a->multiple && a->delivery_tag >= seq)) return 0;
        } else if (f.payload.method.id == AMQP_BASIC_NACK_METHOD) {
            amqp_basic_nack_t *n = f.payload.method.decoded;
            if (n->delivery_tag == seq || (n->multiple && n->delivery_tag >= seq))
                return seterr(e, "unavailable", "amqp publish: the broker refused the message (nack)");
        }
    }
}

int queue_confirms(queue_ctx_t *q, int wait_ms, queue_confirm_t **out, size_t *n, char *why, size_t whylen,
                   queue_err_t *e)
{
    *out = NULL;
    *n = 0;
    if (whylen) why[0] = 0;
    int64_t deadline = now_ms() + (wait_ms > 0 ? wait_ms : timeout_ms());
    while (q->nunconfirmed && q->pub.c) {
        amqp_frame_t f;
        int rc = pub_read(q, deadline, &f, "waiting for confirms", e);   /* -1: they are LOST now */
        if (rc == 0 && now_ms() >= deadline) {
            snprintf(q->lost_why, sizeof q->lost_why, "amqp: no confirm from the broker in %d ms (the message may or may not be queued)",
                     wait_ms > 0 ? wait_ms : timeout_ms());
            confirm_all(q, QUEUE_CONFIRM_TIMEOUT);
            conn_close(q, &q->pub, 0);   /* a late confirm would name a number nobody waits for */
        }
    }
    if (q->nunconfirmed) confirm_all(q, QUEUE_CONFIRM_LOST);   /* no connection: cannot happen, but never ACK */
    int lost = 0;
    for (size_t i = 0; i < q->nsettled; i++) lost |= q->settled[i].status >= QUEUE_CONFIRM_LOST;
    if (lost && whylen) snprintf(why, whylen, "%s", q->lost_why);
    q->lost_why[0] = 0;
    if (!q->nsettled) return 0;
    *out = malloc(q->nsettled * sizeof **out);
    if (!*out) return seterr(e, "unavailable", "queue: out of memory");   /* kept for the next call */
    memcpy(*out, q->settled, q->nsettled * sizeof **out);
    *n = q->nsettled;
    q->nsettled = 0;
    return 0;
}

/* ---- declarations ------------------------------------------------------------------------- */

static int remember_prefetch(queue_ctx_t *q, const char *name, int prefetch)
{
    for (int i = 0; i < q->ndecl; i++)
        if (strcmp(q->decl[i].name, name) == 0) { q->decl[i].prefetch = prefetch; return 0; }
    decl_t *d = realloc(q->decl, (size_t)(q->ndecl + 1) * sizeof *d);
    if (!d) return -1;
    q->decl = d;
    if (!(d[q->ndecl].name = strdup(name))) return -1;
    d[q->ndecl++].prefetch = prefetch;
    return 0;
}

int queue_declare_consumer(queue_ctx_t *q, const char *name, const char *const *keys, int nkeys,
                           int prefetch, int delivery_limit, queue_err_t *e)
{
    if (pub_ready(q, e) < 0) return -1;
    amqp_connection_state_t c = q->pub.c;
    char dlq[300];
    snprintf(dlq, sizeof dlq, "%s.dlq", name);
    amqp_table_entry_t qargs[4] = {
        { .key = amqp_cstring_bytes("x-queue-type"), .value = { .kind = AMQP_FIELD_KIND_UTF8, .value.bytes = amqp_cstring_bytes("quorum") } },
        { .key = amqp_cstring_bytes("x-delivery-limit"), .value = { .kind = AMQP_FIELD_KIND_I64, .value.i64 = delivery_limit } },
        { .key = amqp_cstring_bytes("x-dead-letter-exchange"), .value = { .kind = AMQP_FIELD_KIND_UTF8, .value.bytes = amqp_cstring_bytes(QUEUE_DLX) } },
        { .key = amqp_cstring_bytes("x-dead-letter-routing-key"), .value = { .kind = AMQP_FIELD_KIND_UTF8, .value.bytes = amqp_cstring_bytes(name) } },
    };
    amqp_table_t main_args = { .num_entries = 4, .entries = qargs };
    amqp_table_t dlq_args = { .num_entries = 1, .entries = qargs };
    const char *what = "exchange.declare " QUEUE_DLX;
    int ok = amqp_exchange_declare(c, CHANNEL, amqp_cstring_bytes(QUEUE_DLX), amqp_cstring_bytes("direct"), 0, 1, 0, 0, amqp_empty_table) != NULL;
    if (ok) { what = "queue.declare (dead-letter queue)"; ok = amqp_queue_declare(c, CHANNEL, amqp_cstring_bytes(dlq), 0, 1, 0, 0, dlq_args) != NULL; }
    if (ok) { what = "queue.bind (dead-letter queue)"; ok = amqp_queue_bind(c, CHANNEL, amqp_cstring_bytes(dlq), amqp_cstring_bytes(QUEUE_DLX), amqp_cstring_bytes(name), amqp_empty_table) != NULL; }
    if (ok) { what = "queue.declare"; ok = amqp_queue_declare(c, CHANNEL, amqp_cstring_bytes(name), 0, 1, 0, 0, main_args) != NULL; }
    for (int i = 0; ok && i < nkeys; i++) {
        what = "queue.bind";
        ok = amqp_queue_bind(c, CHANNEL, amqp_cstring_bytes(name), amqp_cstring_bytes(QUEUE_EXCHANGE), amqp_cstring_bytes(keys[i]), amqp_empty_table) != NULL;
    }
    if (!ok) {
        rpc_err(amqp_get_rpc_reply(c), what, e);
        pub_drop(q, e);   /* a refused declaration closed the channel */
        return -1;
    }
    amqp_maybe_release_buffers(c);
    if (remember_prefetch(q, name, prefetch) < 0) return seterr(e, "unavailable", "queue: out of memory");
    return 0;
}

/* ---- consuming ---------------------------------------------------------------------------- */

static consumer_t *consumer_of(queue_ctx_t *q, const char *name)
{
    for (int i = 0; i < q->ncons; i++) if (strcmp(q->cons[i].name, name) == 0) return &q->cons[i];
    consumer_t *c = realloc(q->cons, (size_t)(q->ncons + 1) * sizeof *c);
    if (!c) return NULL;
    q->cons = c;
    c = &q->cons[q->ncons];
    *c = (consumer_t){ .name = strdup(name) };
    if (!c->name) return NULL;
    q->ncons++;
    return c;
}

static int prefetch_of(queue_ctx_t *q, const char *name)
{
    for (int i = 0; i < q->ndecl; i++) if (strcmp(q->decl[i].name, name) == 0) return q->decl[i].prefetch;
    return 20;
}

/* Make sure the sub connection is open and consuming name (qos then basic.consume). 0 with *out
 * set, or -1 with e (spelled out after seterr: clang's analyzer does not look into variadic
 * functions, and would take a failure for a 0 that left *out NULL). */
static int sub_consume(queue_ctx_t *q, const char *name, consumer_t **out, queue_err_t *e)
{
    qconn_t *k = &q->sub;
    if (!k->c && conn_open(q, k, SUB_HEARTBEAT_S, e) < 0) return -1;
    consumer_t *cs = consumer_of(q, name);
    if (!cs) { seterr(e, "unavailable", "queue: out of memory"); return -1; }
    if (cs->epoch != k->epoch) {
        amqp_basic_consume_ok_t *ok = NULL;
        if (amqp_basic_qos(k->c, CHANNEL, 0, (uint16_t)prefetch_of(q, name), 0))
            ok = amqp_basic_consume(k->c, CHANNEL, amqp_cstring_bytes(name), amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
        if (!ok) {
            rpc_err(amqp_get_rpc_reply(k->c), "basic.consume", e);
            conn_close(q, k, 0);
            return -1;
        }
        char *tag = strndup(ok->consumer_tag.bytes, ok->consumer_tag.len);
        if (!tag) { seterr(e, "unavailable", "queue: out of memory"); return -1; }
        free(cs->tag);
        cs->tag = tag;
        cs->epoch = k->epoch;
    }
    *out = cs;
    return 0;
}

static int track_unacked(queue_ctx_t *q, uint64_t tag)
{
    if (q->nunacked == q->capunacked) {
        size_t cap = q->capunacked ? q->capunacked * 2 : 64;
        uint64_t *u = realloc(q->unacked, cap * sizeof *u);
        if (!u) return -1;
        q->unacked = u;
        q->capunacked = cap;
    }
    q->unacked[q->nunacked++] = tag;
    return 0;
}

static int tag_matches(const amqp_envelope_t *env, const consumer_t *cs)
{
    return cs->tag && env->consumer_tag.len == strlen(cs->tag) && memcmp(env->consumer_tag.bytes, cs->tag, env->consumer_tag.len) == 0;
}

/* A non-delivery frame arrived on the sub connection: 0 to keep going, -1 when it is gone. */
static int sub_other_frame(queue_ctx_t *q, queue_err_t *e)
{
    qconn_t *k = &q->sub;
    amqp_frame_t f;
    struct timeval zero = { 0, 0 };
    int st = amqp_simple_wait_frame_noblock(k->c, &f, &zero);
    if (st == AMQP_STATUS_TIMEOUT) return 0;
    if (st != AMQP_STATUS_OK) return seterr(e, "unavailable", "amqp consume: %s", amqp_error_string2(st));
    if (f.frame_type != AMQP_FRAME_METHOD) return 0;
    amqp_method_number_t id = f.payload.method.id;
    if (id == AMQP_CHANNEL_CLOSE_METHOD || id == AMQP_CONNECTION_CLOSE_METHOD) {
        amqp_rpc_reply_t r = { .reply_type = AMQP_RESPONSE_SERVER_EXCEPTION, .reply = f.payload.method };
        rpc_err(r, "consume", e);
        e->code = "unavailable";
        return -1;
    }
    if (id == AMQP_BASIC_CANCEL_METHOD) {   /* the queue was deleted, or its leader moved */
        amqp_basic_cancel_t *c = f.payload.method.decoded;
        for (int i = 0; i < q->ncons; i++)
            if (q->cons[i].tag && strlen(q->cons[i].tag) == c->consumer_tag.len &&
                memcmp(q->cons[i].tag, c->consumer_tag.bytes, c->consumer_tag.len) == 0)
                q->cons[i].epoch = 0;
    }
    return 0;
}

int queue_next(queue_ctx_t *q, const char *name, int wait_ms, amqp_envelope_t *env, double *tag, queue_err_t *e)
{
    qconn_t *k = &q->sub;
    int64_t deadline = now_ms() + (wait_ms > 0 ? wait_ms : 0);
    int have_err = 0;
    for (;;) {
        consumer_t *cs = NULL;
        if (sub_consume(q, name, &cs, e) < 0) {
            /* Down: wait out the backoff inside our own deadline, then try again. */
            int64_t left = deadline - now_ms(), wait = k->retry_at ? k->retry_at - now_ms() : 0;
            if (left <= 0 || strcmp(e->code, "unavailable") != 0) return -1;
            if (wait > left) wait = left;
            if (wait > 0) nanosleep(&(struct timespec){ .tv_sec = wait / 1000, .tv_nsec = (wait % 1000) * 1000000 }, NULL);
            continue;
        }
        have_err = 0;
        for (int i = 0; i < q->npending; i++)
            if (tag_matches(&q->pending[i].env, cs)) {
                *env = q->pending[i].env;
                *tag = q->pending[i].tag;
                memmove(&q->pending[i], &q->pending[i + 1], (size_t)(q->npending - i - 1) * sizeof *q->pending);
                q->npending--;
                return 1;
            }
        int64_t left = deadline - now_ms();
        if (left < 0) left = 0;
        struct timeval tv = tv_of((int)left);
        amqp_maybe_release_buffers(k->c);
        amqp_rpc_reply_t r = amqp_consume_message(k->c, env, &tv, 0);
        if (r.reply_type == AMQP_RESPONSE_NORMAL) {
            double t = (double)k->epoch * TAG_EPOCH_SCALE + (double)env->delivery_tag;
            if (env->delivery_tag >= (uint64_t)TAG_EPOCH_SCALE || track_unacked(q, env->delivery_tag) < 0) {
                amqp_destroy_envelope(env);   /* unreachable in practice; redelivered after the reset */
                conn_close(q, k, 0);
                continue;
            }
            if (tag_matches(env, cs)) { *tag = t; return 1; }
            pending_t *p = realloc(q->pending, (size_t)(q->npending + 1) * sizeof *p);
            if (!p) { amqp_destroy_envelope(env); conn_close(q, k, 0); continue; }
            q->pending = p;
            p[q->npending++] = (pending_t){ .env = *env, .tag = t };
            continue;
        }
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && r.library_error == AMQP_STATUS_TIMEOUT) {
            if (now_ms() >= deadline) return have_err ? -1 : 0;
            continue;
        }
        int gone;
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && r.library_error == AMQP_STATUS_UNEXPECTED_STATE)
            gone = sub_other_frame(q, e) < 0;
        else
            gone = (rpc_err(r, "consume", e), e->code = "unavailable", 1);
        if (gone) {
            /* Deliveries not acked on this connection go back to their queues (at least once). */
            conn_close(q, k, 0);
            have_err = 1;
        }
        if (now_ms() >= deadline) return have_err ? -1 : 0;
    }
}

int queue_settle(queue_ctx_t *q, double tag, int ack, int requeue, queue_err_t *e)
{
    qconn_t *k = &q->sub;
    /* Range first (NaN fails it too): converting a double an integer cannot hold is undefined. */
    if (!(tag >= TAG_EPOCH_SCALE && tag < (double)((1u << 20) + 1) * TAG_EPOCH_SCALE) || tag != floor(tag)) return -2;
    double epoch = floor(tag / TAG_EPOCH_SCALE);
    uint64_t dtag = (uint64_t)(tag - epoch * TAG_EPOCH_SCALE);
    if (!k->c || (uint32_t)epoch != k->epoch) {
        if ((uint32_t)epoch > k->epoch) return -2;
        return seterr(e, "conflict", "amqp %s: the delivery's connection has closed; the broker redelivers the message", ack ? "ack" : "nack");
    }
    size_t i = 0;
    while (i < q->nunacked && q->unacked[i] != dtag) i++;
    if (i == q->nunacked) return -2;
    q->unacked[i] = q->unacked[--q->nunacked];
    int st = ack ? amqp_basic_ack(k->c, CHANNEL, dtag, 0) : amqp_basic_nack(k->c, CHANNEL, dtag, 0, requeue);
    if (st != AMQP_STATUS_OK) {
        conn_close(q, k, 0);
        return seterr(e, "unavailable", "amqp %s: %s", ack ? "ack" : "nack", amqp_error_string2(st));
    }
    return 0;
}
