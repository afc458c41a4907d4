/* jwt_keys: RS256 access tokens in C, shared by the jwt binding (bindings/jwt.c) and the
 * host's bearer check (host/auth.c): the process-wide keyset (jwt_keys.c) and token signing
 * and verification (jwt_token.c). Keys are parsed once; a verification costs no PEM parsing. */
#ifndef MERCATO_JWT_KEYS_H
#define MERCATO_JWT_KEYS_H

#include <openssl/evp.h>
#include <stddef.h>

#include "buf.h"

/* Verification results; jwt_token_code_name gives the Lua `code` of each. */
enum { JWT_TOKEN_OK, JWT_TOKEN_INVALID, JWT_TOKEN_EXPIRED, JWT_TOKEN_UNAVAILABLE };

#define JWT_CLOCK_SKEW 60          /* seconds of leeway on exp and nbf */
#define JWT_MAX_TOKEN 8192         /* longer bearer tokens are refused unread (and never signed) */
#define JWT_KID_MAX 128

/* ---- keyset (jwt_keys.c) ---------------------------------------------------------------- */

/* Load the keys named by the environment (see jwt_keys.c). 0, or -1 with a message on stderr
 * naming the variable. Safe to call again after jwt_keys_cleanup (tests do). */
int jwt_keys_init(void);
void jwt_keys_cleanup(void);

/* A new reference (caller EVP_PKEY_free-s it) to the verification key `kid`. NULL when unknown
 * — then, with JWKS_URL, the refresh thread is asked to fetch again (never waited for) and
 * *unavailable says whether no fetch has succeeded yet, or without it whether no key source
 * is configured at all. */
EVP_PKEY *jwt_keys_lookup(const char *kid, int *unavailable);

/* JWKS fetches attempted since jwt_keys_init (tests). */
int jwt_keys_fetch_attempts(void);

/* A new reference to the signing key (JWT_PRIVATE_KEY_FILE) and its kid, or NULL. */
EVP_PKEY *jwt_keys_signing(char *kid, size_t kidlen);

/* Add a public (or private: its public half is used) key under kid; a NULL kid means its
 * RFC 7638 thumbprint. Takes no ownership (the keyset takes its own reference). 0 or -1. */
int jwt_keys_add(EVP_PKEY *key, const char *kid);

/* The RFC 7638 JWK thumbprint (base64url SHA-256) of an RSA key into out (>= 44 bytes): 0/-1. */
int jwt_keys_thumbprint(EVP_PKEY *key, char *out, size_t outlen);

/* Parse a PEM private or public key; NULL with err set. Caller frees. */
EVP_PKEY *jwt_keys_parse_pem(const char *pem, size_t len, int want_private, const char **err);

/* The JSON Web Key Set of the verification keys into out (capacity cap, NUL-terminated when
 * cap > 0; out may be NULL to measure). Returns the full length, as snprintf does. */
size_t jwt_keys_jwks(char *out, size_t cap);

/* SHA-256, fetched from the provider once at init (EVP_sha256() before it). */
const EVP_MD *jwt_keys_sha256(void);

/* The expected issuer and audience (JWT_ISSUER, JWT_AUDIENCE; default "mercato"). */
const char *jwt_keys_issuer(void);
const char *jwt_keys_audience(void);

/* ---- tokens (jwt_token.c) ------------------------------------------------------------- */

/* Verify an RS256 compact JWS: exactly alg RS256 (nothing else is ever tried), a known kid, the
 * signature, then exp (required), nbf, iss and aud with JWT_CLOCK_SKEW. iss/aud NULL: the
 * process defaults. The decoded claims JSON goes to claims (capacity cap >= len, owned by the
 * caller), its length to *claims_len on JWT_TOKEN_OK; otherwise *err is a fixed string
 * without quotes. */
int jwt_token_verify(const char *token, size_t len, const char *iss, const char *aud,
                     char *claims, size_t cap, size_t *claims_len, const char **err);

/* The output capacity jwt_token_sign needs for claims of claims_len bytes. */
size_t jwt_token_sign_cap(size_t claims_len);

/* Sign claims_json (an object with exp) with the private key under kid into out (capacity cap
 * >= jwt_token_sign_cap, owned by the caller): the token length, or -1 with err. */
long jwt_token_sign(EVP_PKEY *key, const char *kid, const char *claims_json, size_t len, char *out, size_t cap,
                    const char **err);

/* The Lua error code of a JWT_TOKEN_* result: "invalid", "expired" or "unavailable". */
const char *jwt_token_code_name(int code);

/* Whether the space-separated scope list holds `want` as one whole item. */
int jwt_token_has_scope(const char *scopes, const char *want);

#endif
