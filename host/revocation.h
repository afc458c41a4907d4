/* revocation: what changed about a token's subject after the token was issued — disabled
 * (every older token refused) or given another role (older tokens carry the new one) — read
 * from the record the user service keeps in Redis (`auth:revocation:<sub>`), on the thread's
 * loop, cached per thread for REVOCATION_CACHE_MS. Lets a disabled or demoted user be stopped
 * by every service within a couple of seconds instead of at token expiry. */
#ifndef MERCATO_REVOCATION_H
#define MERCATO_REVOCATION_H

#include <stddef.h>
#include <stdint.h>

struct worker;

#define REVOCATION_CACHE_MS 1000
#define REVOCATION_ROLE_MAX 16
#define REVOCATION_SUB_MAX 128

/* A subject's record: tokens issued (iat) before revoked_s are refused; tokens issued before
 * role_s are given `role`. All zero: nothing changed (or no record). */
typedef struct revocation {
    int64_t revoked_s;
    int64_t role_s;
    char role[REVOCATION_ROLE_MAX];
} revocation_t;

typedef struct revocation_wait revocation_wait_t;
typedef void (*revocation_cb)(void *arg, const revocation_t *rec);

/* The record of sub (n bytes) into *out: 0 when answered now (the thread's cache, or no
 * Redis), or 1 when the answer comes later as cb(arg, rec) from the loop (*wait is then the
 * handle for revocation_wait_cancel). Redis down or slow: the last record this thread saw for
 * sub, else none — tokens are accepted (fail open, logged once per outage; see
 * docs/architecture.md). Never blocks. */
int revocation_lookup(struct worker *w, const char *sub, size_t n, revocation_t *out, revocation_cb cb, void *arg,
                      revocation_wait_t **wait);

/* Forget a pending lookup: cb is never called. */
void revocation_wait_cancel(revocation_wait_t *wait);

/* Parse a record's Redis value "<revoked_s> <role_s> <role>" (whole seconds of at most 12
 * digits; role lower-case letters and '_', or "-" for none). 0, or -1 with *out all zero. */
int revocation_parse(const char *s, size_t n, revocation_t *out);

/* Whether a token issued at iat is refused by rec; else *role (may be NULL) is the role it
 * now carries: rec's when the role changed after iat, else NULL (the token's own). */
int revocation_refuses(const revocation_t *rec, double iat, const char **role);

/* Empty w's cache (tests). */
void revocation_cache_clear(struct worker *w);

#endif
