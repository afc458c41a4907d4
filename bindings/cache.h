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

#endif
