/* crypto.h - SHA-256, streaming, and hex formatting. The only module that
 * sees OpenSSL. A hash object belongs to one thread at a time. */
#ifndef DBM_CRYPTO_H
#define DBM_CRYPTO_H
#include <stddef.h>
#include <stdint.h>

#define DBM_SHA256_LEN 32
#define DBM_SHA256_HEX_LEN 64

struct dbm_sha256;

/* Starts a SHA-256. *hp is a new object: free with dbm_sha256_destroy.
 * 0, -ENOMEM, or -EIO if OpenSSL refuses (its message logged). */
int dbm_sha256_create(struct dbm_sha256 **hp);
void dbm_sha256_destroy(struct dbm_sha256 *h); /* accepts NULL */

/* Hashes len more bytes (borrowed for the call). 0 or -EIO. */
int dbm_sha256_update(struct dbm_sha256 *h, const void *buf, size_t len);

/* Writes the digest of everything fed so far to md; the object may then be
 * destroyed or restarted with dbm_sha256_reset. 0 or -EIO. */
int dbm_sha256_final(struct dbm_sha256 *h, uint8_t md[DBM_SHA256_LEN]);

/* Starts over, as if newly created. 0 or -EIO. */
int dbm_sha256_reset(struct dbm_sha256 *h);

/* Lowercase hex of len bytes into out (2 * len + 1 bytes, NUL-terminated). */
void dbm_crypto_hex(const uint8_t *buf, size_t len, char *out);

#endif
