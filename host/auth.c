/* auth: the bearer-token check that runs in C before a route's handler (route `auth`, `roles`,
 * `scope`), so that no handler can forget it. Tokens are verified by the same code as
 * jwt.verify (core/jwt_token.c); the claims reach Lua as req.claims. The subject's revocation
 * record (host/revocation.c) may refuse a verified token or change the role it carries. */
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

/* lua_cpcall body: set the claims table's role (the subject's current one). */
static int set_role(lua_State *L)
{
    request_t *r = lua_touserdata(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->claims_ref);
    lua_pushstring(L, r->auth_role);
    lua_setfield(L, -2, "role");
    return 0;
}

static void release_claims(request_t *r)
{
    if (r->claims_ref == LUA_NOREF) return;
    luaL_unref(r->w->L, LUA_REGISTRYINDEX, r->claims_ref);
    r->claims_ref = LUA_NOREF;
}

int auth_check(request_t *r, const route_info_t *ri, revocation_cb done, revocation_wait_t **wait)
{
    *wait = NULL;
    if (ri->auth == AUTH_NONE) return 0;
    size_t len = 0;
    const char *token = bearer_token(request_header(r, "Authorization"), &len);
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
    if (json_reader_member(obj, "role", &v) != 0 || json_reader_string(v, r->auth_role, sizeof r->auth_role) != 0)
        r->auth_role[0] = 0;
    if (json_reader_member(obj, "iat", &v) != 0 || json_reader_number(v, &r->auth_iat) != 0) r->auth_iat = 0;
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

    char sub[REVOCATION_SUB_MAX];
    if (json_reader_member(obj, "sub", &v) != 0 || json_reader_string(v, sub, sizeof sub) != 0) sub[0] = 0;
    revocation_t rec;
    if (revocation_lookup(r->w, sub, strlen(sub), &rec, done, r, wait) == 1) return 1;
    return auth_settle(r, ri, &rec);
}

int auth_settle(request_t *r, const route_info_t *ri, const revocation_t *rec)
{
    const char *role = NULL;
    if (revocation_refuses(rec, r->auth_iat, &role)) {
        release_claims(r);
        return unauthorized(r, "token revoked");
    }
    if (role && strcmp(role, r->auth_role) != 0) {
        snprintf(r->auth_role, sizeof r->auth_role, "%s", role);
        if (lua_cpcall(r->w->L, set_role, r) != 0) {
            lua_pop(r->w->L, 1);
            release_claims(r);
            server_problem(r, 503, "Service Unavailable", "out of memory", NULL, NULL);
            return -1;
        }
    }
    if (ri->nroles > 0) {
        int ok = 0;
        for (int i = 0; i < ri->nroles && !ok; i++) ok = strcmp(r->auth_role, ri->roles[i]) == 0;
        if (!ok) {
            release_claims(r);
            server_problem(r, 403, "Forbidden", "Your role does not allow this.", NULL, NULL);
            return -1;
        }
    }
    return 0;
}
