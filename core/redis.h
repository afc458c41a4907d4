/* redis: how every part of mercato talks to Redis — the URL, a blocking connection with its
 * set-up (AUTH, SELECT, deadlines), and a thread's non-blocking connection on its loop whose
 * commands call C back. The cache binding (Lua) and the rate limiter stand on it. */
#ifndef MERCATO_REDIS_H
#define MERCATO_REDIS_H

#include <hiredis/hiredis.h>
#include <stddef.h>

struct loop;

/* A parsed redis://[[user]:password@]host[:port][/db] URL (user and password %-decoded). */
typedef struct redis_url {
    char host[256];
    int port;
    char user[128];
    char password[256];
    int db;
} redis_url_t;

/* Parse url into u. 0, or -1 with a message in err (which never quotes the URL). */
int redis_url_parse(const char *url, redis_url_t *u, char *err, size_t errlen);

/* A blocking connection to url with timeout_ms as connect and command deadline, keep-alive
 * on, AUTH and SELECT done. NULL with err and *code ("timeout" or "unavailable"). */
redisContext *redis_connect(const char *url, int timeout_ms, char *err, size_t errlen, const char **code);

/* An I/O error on c: the message into err and its code ("timeout" when a deadline passed). */
const char *redis_io_error(const redisContext *c, int saved_errno, const char *what, char *err, size_t errlen);

/* True if an idle connection was closed by the server (CLIENT KILL, restart, timeout): Redis
 * never writes to an idle RESP2 client, so readable means EOF, an error or a protocol fault. */
int redis_stale(const redisContext *c);

/* ---- the loop's connection ---------------------------------------------------------------- */

typedef struct redis_async redis_async_t;
typedef struct redis_op redis_op_t;

/* One command of a batch (argv/len are read before redis_async_send returns). */
typedef struct redis_cmd {
    int argc;
    const char **argv;
    size_t *len;
} redis_cmd_t;

/* Called from the loop for each reply of an op, in order (i = 0..n-1; an error reply is a
 * reply), or once with reply NULL, err and code when the connection fails or the op's deadline
 * passes — then no more calls come. reply is freed by hiredis after the call. */
typedef void (*redis_reply_cb)(void *arg, int i, const redisReply *reply, const char *err, const char *code);

/* A connection on loop to url, connected on the first send (NULL when out of memory). */
redis_async_t *redis_async_new(struct loop *loop, const char *url);
/* Drop the connection: every op waiting on it fails with code "unavailable". */
void redis_async_reset(redis_async_t *as);
void redis_async_free(redis_async_t *as);

/* Send n commands as one op; cb(arg, ...) as above, never from inside this call. A single
 * command sent as EVALSHA with `script` given is retried as EVAL script when the server
 * answers NOSCRIPT (a restart, SCRIPT FLUSH). Past timeout_ms the op fails with "timeout" and
 * the connection is dropped (commands queued behind a stuck one fail with it). Returns the op,
 * or NULL with err when nothing could be sent (cb is never called then). */
redis_op_t *redis_async_send(redis_async_t *as, int timeout_ms, int n, const redis_cmd_t *cmds,
                             const char *script, size_t script_len, redis_reply_cb cb, void *arg,
                             char *err, size_t errlen);

/* The caller goes away: cb is never called again for op. */
void redis_async_forget(redis_op_t *op);

#endif
