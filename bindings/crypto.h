/* crypto: the C helpers bindings/crypto.c shares with the jwt binding (base64, hex), and the
 * argon2id pool's entry points (bindings/crypto_argon2.c) the crypto binding is made of. */
#ifndef MERCATO_CRYPTO_H
#define MERCATO_CRYPTO_H

#include <lauxlib.h>
#include <stddef.h>

struct worker;

/* Bytes crypto_b64_encode writes for n input bytes, without the NUL. */
size_t crypto_b64_encoded_len(size_t n, int url);

/* Base64 of src into dst (capacity >= crypto_b64_encoded_len + 1), NUL-terminated. `url`:
 * the RFC 4648 §5 alphabet without padding; otherwise §4 with '=' padding. Returns the length. */
size_t crypto_b64_encode(char *dst, const void *src, size_t n, int url);

/* Decode n characters into dst (capacity >= n / 4 * 3 + 3), NUL-terminated for convenience.
 * Strict: wrong alphabet, wrong padding or non-zero trailing bits fail. Returns the decoded
 * length, or -1 for invalid input. */
long crypto_b64_decode(void *dst, const char *src, size_t n, int url);

/* Lower-case hex of src into dst (capacity >= 2n + 1). */
void crypto_hex(char *dst, const void *src, size_t n);

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
