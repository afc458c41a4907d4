/* auth: the bearer-token check that runs in C before a route's handler (route `auth`, `roles`,
 * `scope`), so that no handler can forget it. Tokens are verified by the same code as
 * jwt.verify (bindings/jwt_token.c); the claims reach Lua as req.claims. */
#include "auth.h"

#include <lauxlib.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "../core/json_reader.h"
#include "../core/jwt_keys.h"
#include "server.h"
#include "worker.h"

/* The token of an `Authorization: Bearer <token>` header (scheme case-insensitive, RFC 7235)
 * with its length, or NULL when the header is absent or of another scheme. */
static const char *bearer_token(const char *h, size_t *len)
{
    if (!h || strncasecmp(h, "Bearer", 6) != 0 || (h[6] != ' ' && h[6] != '\t')) return NULL;
    h += 7;
    while (*h == ' ' || *h == '\t') h++;
    size_t n = strlen(h);
    while (n && (h[n - 1] == ' ' || h[n - 1] == '\t')) n--;
    *len = n;
    return h;
}

typedef struct {
    const char *claims;
    size_t len;
    int ref;
} push_ctx_t;

/* lua_cpcall body: decode the claims into a table and keep it in the registry. */
static int push_claims(lua_State *L)
{
    push_ctx_t *c = lua_touserdata(L, 1);
    if (json_reader_push(L, c->claims, c->len) != 0) lua_newtable(L);
    c->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

/* 401 for a missing or refused token; `err` NULL means none was sent (RFC 6750 §3.1). */
static int unauthorized(request_t *r, const char *err)
{
    char hdr[256];
    if (!err) {
        server_problem(r, 401, "Unauthorized", "A bearer token is required.", "WWW-Authenticate", "Bearer");
        return -1;
    }
    snprintf(hdr, sizeof hdr, "Bearer error=\"invalid_token\", error_description=\"%s\"", err);
    server_problem(r, 401, "Unauthorized", err, "WWW-Authenticate", hdr);
    return -1;
}

int auth_check(request_t *r, const route_info_t *ri)
{
    if (ri->auth == AUTH_NONE) return 0;
    size_t len = 0;
    const char *token = bearer_token(MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Authorization"), &len);
    if (!token) return ri->auth == AUTH_OPTIONAL ? 0 : unauthorized(r, NULL);
    if (len > JWT_MAX_TOKEN) return unauthorized(r, "malformed token");

    char claims[JWT_MAX_TOKEN + 1];
    size_t clen = 0;
    const char *err = NULL;
    int code = jwt_token_verify(token, len, NULL, NULL, claims, sizeof claims, &clen, &err);
    if (code == JWT_TOKEN_UNAVAILABLE) {
        server_problem(r, 503, "Service Unavailable", "Tokens cannot be verified right now.", "Retry-After", "5");
        return -1;
    }
    if (code != JWT_TOKEN_OK) return unauthorized(r, err);

    json_span_t obj = { claims, claims + clen }, v;
    if (ri->nroles > 0) {
        char role[64];
        int ok = 0;
        if (json_reader_member(obj, "role", &v) == 0 && json_reader_string(v, role, sizeof role) == 0)
            for (int i = 0; i < ri->nroles && !ok; i++) ok = strcmp(role, ri->roles[i]) == 0;
        if (!ok) {
            server_problem(r, 403, "Forbidden", "Your role does not allow this.", NULL, NULL);
            return -1;
        }
    }
    if (ri->scope) {
        char scopes[1024];
        if (json_reader_member(obj, "scope", &v) != 0 || json_reader_string(v, scopes, sizeof scopes) != 0 ||
            !jwt_token_has_scope(scopes, ri->scope)) {
            char hdr[256];
            snprintf(hdr, sizeof hdr, "Bearer error=\"insufficient_scope\", scope=\"%s\"", ri->scope);
            server_problem(r, 403, "Forbidden", "The token lacks the scope this requires.", "WWW-Authenticate", hdr);
            return -1;
        }
    }

    push_ctx_t c = { claims, clen, LUA_NOREF };
    if (lua_cpcall(r->w->L, push_claims, &c) != 0) {
        lua_pop(r->w->L, 1);
        server_problem(r, 503, "Service Unavailable", "out of memory", NULL, NULL);
        return -1;
    }
    r->claims_ref = c.ref;   /* unref-ed by the server after the handler */
    return 0;
}
