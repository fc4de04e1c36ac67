/* crypto.c - see crypto.h. SHA-256 through OpenSSL's EVP interface; every
 * OpenSSL failure is logged here with the first message of its error queue
 * (the queue is then cleared) and returned as -EIO, or -ENOMEM when the
 * context itself cannot be allocated. */
#include "crypto.h"

#include <errno.h>
#include <stdlib.h>

#include <openssl/err.h>
#include <openssl/evp.h>

#include "log.h"

struct dbm_sha256 {
    EVP_MD_CTX *ctx; /* owned */
};

/* Logs what OpenSSL says about the failing call and maps it to -EIO. */
static int crypto_fail(const char *what)
{
    unsigned long e = ERR_get_error();
    char msg[256];

    if (e) {
        ERR_error_string_n(e, msg, sizeof(msg));
        dbm_err("crypto: %s: %s", what, msg);
    } else {
        dbm_err("crypto: %s failed", what);
    }
    ERR_clear_error();
    return -EIO;
}

int dbm_sha256_reset(struct dbm_sha256 *h)
{
    if (EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL) != 1)
        return crypto_fail("EVP_DigestInit_ex(sha256)");
    return 0;
}

int dbm_sha256_create(struct dbm_sha256 **hp)
{
    struct dbm_sha256 *h = calloc(1, sizeof(*h));
    int rc;

    *hp = NULL;
    if (!h)
        return -ENOMEM;
    h->ctx = EVP_MD_CTX_new();
    if (!h->ctx) {
        rc = -ENOMEM;
        goto fail;
    }
    rc = dbm_sha256_reset(h);
    if (rc < 0)
        goto fail;
    *hp = h;
    return 0;
fail:
    dbm_sha256_destroy(h);
    return rc;
}

void dbm_sha256_destroy(struct dbm_sha256 *h)
{
    if (!h)
        return;
    EVP_MD_CTX_free(h->ctx);
    free(h);
}

int dbm_sha256_update(struct dbm_sha256 *h, const void *buf, size_t len)
{
    if (len && EVP_DigestUpdate(h->ctx, buf, len) != 1)
        return crypto_fail("EVP_DigestUpdate");
    return 0;
}

int dbm_sha256_final(struct dbm_sha256 *h, uint8_t md[DBM_SHA256_LEN])
{
    unsigned int n = 0;

    if (EVP_DigestFinal_ex(h->ctx, md, &n) != 1)
        return crypto_fail("EVP_DigestFinal_ex");
    if (n != DBM_SHA256_LEN) {
        dbm_err("crypto: sha256 digest of %u bytes", n);
        return -EIO;
    }
    return 0;
}

void dbm_crypto_hex(const uint8_t *buf, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";

    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[buf[i] >> 4];
        out[2 * i + 1] = digits[buf[i] & 15];
    }
    out[2 * len] = '\0';
}
