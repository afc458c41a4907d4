/* crypto: the argon2id pool's entry points (bindings/crypto_argon2.c) the crypto binding is
 * made of; base64 and hex live in core/base64.h. */
#ifndef MERCATO_CRYPTO_H
#define MERCATO_CRYPTO_H

#include <lauxlib.h>
#include <stddef.h>

struct worker;

/* ---- argon2id on the hashing pool (crypto_argon2.c) ---- */

/* argon2_hash, argon2_verify, dummy_verify: added to the crypto module's table. */
extern const luaL_Reg crypto_argon2_fns[];
/* Read ARGON2_* (0, or -1 with a message naming the bad variable) and register the metrics;
 * the threads start with the first job. */
int crypto_argon2_init(void);
/* Stop and join the hashing threads (after every worker is gone). */
void crypto_argon2_cleanup(void);
/* Before w's loop is freed: drop its queued jobs, wait for the ones being computed. */
void crypto_argon2_worker_free(struct worker *w);

#endif
