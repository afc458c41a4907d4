/* argon2_phc: the PHC string form of an argon2id hash ("$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>",
 * salt and hash in unpadded standard base64), read and written as the reference implementation
 * does, so that crypto_argon2 can run the computation through argon2_ctx with its own memory. */
#ifndef MERCATO_ARGON2_PHC_H
#define MERCATO_ARGON2_PHC_H

#include <stddef.h>
#include <stdint.h>

#define PHC_MAX_SALT 64
#define PHC_MAX_HASH 64

typedef struct phc {
    uint32_t version, m_kib, t, p;
    uint8_t salt[PHC_MAX_SALT];
    size_t saltlen;
    uint8_t hash[PHC_MAX_HASH];
    size_t hashlen;
} phc_t;

/* Write h as a NUL-terminated PHC string into out (capacity outlen); its length, or -1 when
 * it does not fit. */
int phc_encode(char *out, size_t outlen, const phc_t *h);

/* Read an argon2id PHC string (a missing "v=" means version 0x10, as the reference reads it);
 * 0, or -1 when it is malformed or its salt (8..64 bytes) or hash (4..64 bytes) is out of range. */
int phc_decode(const char *s, phc_t *h);

#endif
