/* codec.h - streaming zstd compression with fixed, machine-independent
 * parameters: the same input gives the same bytes on any machine (the level
 * comes from the caller; two worker threads, never the CPU count; a content
 * checksum; no content size in the frame header). The only module that sees
 * zstd.
 *
 * Not thread-safe: one codec per stream (it owns a ZSTD_CCtx and, while
 * compressing, the two worker threads zstd starts for it). */
#ifndef DBM_CODEC_H
#define DBM_CODEC_H
#include <stddef.h>
#include <stdint.h>

#define DBM_CODEC_LEVEL_DEFAULT 3

struct dbm_codec;

/* Receives consecutive compressed bytes; a negative return aborts the stream
 * and is what dbm_codec_write / dbm_codec_end return. */
typedef int (*dbm_codec_out)(void *arg, const void *buf, size_t len);

/* Creates a compressor at level (0: DBM_CODEC_LEVEL_DEFAULT; clamped to
 * zstd's range) writing through out(arg). *cp is a new object: free with
 * dbm_codec_destroy. 0, -ENOMEM, or -EINVAL for a parameter zstd refuses. */
int dbm_codec_create(int level, dbm_codec_out out, void *arg, struct dbm_codec **cp);
void dbm_codec_destroy(struct dbm_codec *c); /* accepts NULL */

/* Feeds len bytes (borrowed for the call). Output goes to the callback as it
 * is produced. 0 or -errno (a zstd error is logged once and is -EIO, or
 * -ENOMEM for an allocation failure; the callback's own error passes through).
 * After an error the codec only accepts dbm_codec_destroy. */
int dbm_codec_write(struct dbm_codec *c, const void *buf, size_t len);

/* Ends the frame (epilogue and checksum) and flushes everything to the
 * callback. 0 or -errno as dbm_codec_write. */
int dbm_codec_end(struct dbm_codec *c);

/* The largest frame dbm_codec_* can produce for n bytes of input
 * (ZSTD_compressBound plus frame header and checksum margin). */
uint64_t dbm_codec_bound(uint64_t n);

#endif
