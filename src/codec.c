/* codec.c - see codec.h.
 *
 * Determinism: every parameter that shapes the frame is set here and none is
 * derived from the machine. zstd's multi-threaded mode cuts the input into
 * jobs whose size follows from the level (window log), not from the number
 * of workers, from timing or from how the input arrives, so the frame
 * depends on the input bytes and the level only. Checked with zstd 1.5.4:
 * the frame is byte for byte what `zstd -<level> -T<n> -c < input` writes
 * for any n >= 1, run after run (tests/unit/test_bacpac.c). Two workers give
 * about twice the single-thread speed on any machine with two cores. A
 * libzstd built without thread support refuses nbWorkers: the codec then
 * compresses in the caller's thread (a warning is logged once, and that
 * frame differs from a threaded one, as --single-thread's does). No content
 * size is written: the frame header is the same however the input arrives.
 *
 * Errors: zstd's message is logged once, when the codec fails; the codec is
 * then dead (c->err is sticky) so the message is not repeated. */
#include "codec.h"

#include <errno.h>
#include <stdlib.h>

#include <zstd.h>
#include <zstd_errors.h>

#include "log.h"

#define CODEC_WORKERS 2

struct dbm_codec {
    ZSTD_CCtx *cctx;      /* owned */
    dbm_codec_out out;    /* where compressed bytes go */
    void *arg;
    void *obuf;           /* owned: ZSTD_CStreamOutSize() bytes */
    size_t ocap;
    int err;              /* first error, sticky; 0 while healthy */
};

/* Maps a zstd result to -errno, logging zstd's message. */
static int codec_zerr(struct dbm_codec *c, const char *what, size_t r)
{
    int rc = ZSTD_getErrorCode(r) == ZSTD_error_memory_allocation ? -ENOMEM : -EIO;

    dbm_err("codec: %s: %s", what, ZSTD_getErrorName(r));
    if (c)
        c->err = rc;
    return rc;
}

static int codec_set(struct dbm_codec *c, ZSTD_cParameter p, int v, const char *name)
{
    size_t r = ZSTD_CCtx_setParameter(c->cctx, p, v);

    if (ZSTD_isError(r)) {
        dbm_err("codec: setting %s=%d: %s", name, v, ZSTD_getErrorName(r));
        return -EINVAL;
    }
    return 0;
}

static int codec_configure(struct dbm_codec *c, int level)
{
    int rc;

    if (level == 0)
        level = DBM_CODEC_LEVEL_DEFAULT;
    if (level < ZSTD_minCLevel())
        level = ZSTD_minCLevel();
    if (level > ZSTD_maxCLevel())
        level = ZSTD_maxCLevel();
    rc = codec_set(c, ZSTD_c_compressionLevel, level, "level");
    if (rc == 0)
        rc = codec_set(c, ZSTD_c_checksumFlag, 1, "checksum");
    if (rc == 0)
        rc = codec_set(c, ZSTD_c_contentSizeFlag, 0, "content size");
    if (rc < 0)
        return rc;
    if (ZSTD_isError(ZSTD_CCtx_setParameter(c->cctx, ZSTD_c_nbWorkers, CODEC_WORKERS))) {
        static int warned;
        if (!warned++)
            dbm_warn("codec: this libzstd has no thread support: compressing single-threaded");
    }
    return 0;
}

int dbm_codec_create(int level, dbm_codec_out out, void *arg, struct dbm_codec **cp)
{
    struct dbm_codec *c = calloc(1, sizeof(*c));
    int rc = -ENOMEM;

    *cp = NULL;
    if (!c)
        return -ENOMEM;
    c->out = out;
    c->arg = arg;
    c->ocap = ZSTD_CStreamOutSize();
    c->obuf = malloc(c->ocap);
    c->cctx = ZSTD_createCCtx();
    if (!c->obuf || !c->cctx)
        goto fail;
    rc = codec_configure(c, level);
    if (rc < 0)
        goto fail;
    *cp = c;
    return 0;
fail:
    dbm_codec_destroy(c);
    return rc;
}

void dbm_codec_destroy(struct dbm_codec *c)
{
    if (!c)
        return;
    ZSTD_freeCCtx(c->cctx);
    free(c->obuf);
    free(c);
}

/* One compressStream2 call and the delivery of what it produced. Returns
 * zstd's "remaining" hint (>= 0) or -errno. */
static int64_t codec_step(struct dbm_codec *c, ZSTD_inBuffer *in, ZSTD_EndDirective op)
{
    ZSTD_outBuffer o = { c->obuf, c->ocap, 0 };
    size_t r = ZSTD_compressStream2(c->cctx, &o, in, op);

    if (ZSTD_isError(r))
        return codec_zerr(c, "ZSTD_compressStream2", r);
    if (o.pos) {
        int rc = c->out(c->arg, c->obuf, o.pos);
        if (rc < 0) {
            c->err = rc;
            return rc;
        }
    }
    return (int64_t)r;
}

int dbm_codec_write(struct dbm_codec *c, const void *buf, size_t len)
{
    ZSTD_inBuffer in = { buf, len, 0 };

    if (c->err)
        return c->err;
    while (in.pos < in.size) {
        int64_t r = codec_step(c, &in, ZSTD_e_continue);
        if (r < 0)
            return (int)r;
    }
    return 0;
}

int dbm_codec_end(struct dbm_codec *c)
{
    ZSTD_inBuffer in = { NULL, 0, 0 };
    int64_t r;

    if (c->err)
        return c->err;
    do {
        r = codec_step(c, &in, ZSTD_e_end);
        if (r < 0)
            return (int)r;
    } while (r > 0);
    return 0;
}

uint64_t dbm_codec_bound(uint64_t n)
{
    /* Same formula as ZSTD_compressBound, in 64 bits: 3 bytes of block
     * header per 128 KiB block fit in n / 256; small inputs get the extra
     * margin zstd gives them. Plus a frame header (<= 18) and the checksum. */
    uint64_t b = n + (n >> 8);

    if (n < (128u << 10))
        b += ((128u << 10) - n) >> 11;
    return b + 64;
}
