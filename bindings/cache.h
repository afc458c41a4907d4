/* cache: the hiredis binding's C-level API, shared by bindings/cache.c and its tests. */
#ifndef MERCATO_BINDINGS_CACHE_H
#define MERCATO_BINDINGS_CACHE_H

#include <hiredis/hiredis.h>
#include <lua.h>
#include <stddef.h>

/* A parsed redis://[[user]:password@]host[:port][/db] URL (user and password %-decoded). */
typedef struct cache_url {
    char host[256];
    int port;
    char user[128];
    char password[256];
    int db;
} cache_url_t;

/* Parse url into u. Returns 0, or -1 with a message in err. */
int cache_url_parse(const char *url, cache_url_t *u, char *err, size_t errlen);

/* Push reply r as a Lua value: status/string → string, integer → number, nil → nil, array →
 * table. Inside an array (nested), nil becomes false and an error reply { err = msg }, as in
 * Redis's own Lua scripting. A top-level error reply is the caller's to handle. */
void cache_push_reply(lua_State *L, const redisReply *r, int nested);

/* The error code (STYLE "Errors across the boundary") for a Redis error reply's message. */
const char *cache_error_code(const char *msg);

/* One command of a batch: argv points into Lua strings (alive on the caller's stack) or into
 * the batch's number buffer. */
typedef struct cache_cmd {
    int argc;
    const char **argv;
    size_t *len;
} cache_cmd_t;

/* ---- the async path (bindings/cache_async.c): HTTP handlers, inside their coroutine ------ */

struct worker;
typedef struct cache_async cache_async_t;

/* What the Lua call returns: CACHE_ONE the first reply (nil, msg, code for an error reply),
 * CACHE_PIPELINE a table of every reply (nested mapping), CACHE_EVAL as CACHE_ONE, retried
 * as EVAL with the script when the server answers NOSCRIPT. */
enum { CACHE_ONE, CACHE_PIPELINE, CACHE_EVAL };

/* Send cmds on the worker's async connection (*as, made on first use, on w->loop) and park the
 * calling coroutine until every reply is in, the connection fails (nil, err, "unavailable") or
 * timeout_ms passes (nil, err, "timeout"; the connection is dropped, so commands queued
 * behind a stuck one fail too). Needs worker_can_yield(L). The strings in cmds are copied
 * before this returns. Use as `return cache_async_exec(...)` from a lua_CFunction. */
int cache_async_exec(lua_State *L, cache_async_t **as, struct worker *w, const char *url, int timeout_ms,
                     int kind, int n, const cache_cmd_t *cmds, const char *script, size_t script_len);

/* The same for C code on the loop (the host's rate-limit checks): one command of kind
 * CACHE_ONE or CACHE_EVAL; done(arg, reply, NULL, NULL) once its reply is in (an error reply
 * included: the caller reads it), or done(arg, NULL, err, code) when the connection fails or
 * timeout_ms passes — always from the loop, never inside this call. Returns the op (for
 * cache_async_forget), or NULL with err when nothing could be sent (done is never called). */
typedef struct cache_op cache_op_t;
typedef void (*cache_async_done)(void *arg, const struct redisReply *reply, const char *err, const char *code);
cache_op_t *cache_async_call(cache_async_t **as, struct worker *w, const char *url, int timeout_ms, int kind,
                             const cache_cmd_t *cmd, const char *script, size_t script_len,
                             cache_async_done done, void *arg, char *err, size_t errlen);
/* The caller goes away: done is never called for op. */
void cache_async_forget(cache_op_t *op);

/* Close the async connection (the next command reconnects); requests waiting on it get
 * nil, err, "unavailable". */
void cache_async_reset(cache_async_t *as);
/* Free it (the worker is going away); NULL is a no-op. */
void cache_async_free(cache_async_t *as);

#endif
