/* cache: the hiredis binding's C-level API, shared by bindings/cache.c and its tests. */
#ifndef MERCATO_BINDINGS_CACHE_H
#define MERCATO_BINDINGS_CACHE_H

#include <hiredis/hiredis.h>
#include "../core/redis.h"
#include <lua.h>
#include <stddef.h>

/* Push reply r as a Lua value: status/string → string, integer → number, nil → nil, array →
 * table. Inside an array (nested), nil becomes false and an error reply { err = msg }, as in
 * Redis's own Lua scripting. A top-level error reply is the caller's to handle. */
void cache_push_reply(lua_State *L, const redisReply *r, int nested);

/* The error code (STYLE "Errors across the boundary") for a Redis error reply's message. */
const char *cache_error_code(const char *msg);

/* One command of a batch: argv points into Lua strings (alive on the caller's stack) or into
 * the batch's number buffer. */
typedef redis_cmd_t cache_cmd_t;

/* ---- the async path (bindings/cache_async.c): HTTP handlers, inside their coroutine ------ */

struct worker;

/* What the Lua call returns: CACHE_ONE the first reply (nil, msg, code for an error reply),
 * CACHE_PIPELINE a table of every reply (nested mapping), CACHE_EVAL as CACHE_ONE, retried
 * as EVAL with the script when the server answers NOSCRIPT. */
enum { CACHE_ONE, CACHE_PIPELINE, CACHE_EVAL };

/* Send cmds on the worker's async connection (*as, made on first use, on w->loop) and park the
 * calling coroutine until every reply is in, the connection fails (nil, err, "unavailable") or
 * timeout_ms passes (nil, err, "timeout"; the connection is dropped, so commands queued
 * behind a stuck one fail too). Needs worker_can_yield(L). The strings in cmds are copied
 * before this returns. Use as `return cache_async_exec(...)` from a lua_CFunction. */
int cache_async_exec(lua_State *L, redis_async_t **as, struct worker *w, const char *url, int timeout_ms,
                     int kind, int n, const cache_cmd_t *cmds, const char *script, size_t script_len);

#endif
