/* bacpac.h - export.bacpac: a zstd stream of a tar archive holding
 * manifest.json then db/<name> for each database image, produced from
 * dbimage sources. The stream is two zstd frames: the manifest member, then
 * the rest of the archive. Deterministic: the same images give the same
 * bytes (fixed tar header fields, mtime = the image's commit time in
 * seconds, sorted names, fixed zstd parameters independent of the machine).
 *
 * manifest.json (one line of JSON, keys in this order):
 *   {"format":"dbmovefs-bacpac","format_version":1,"environment":ENV,
 *    "environment_type":TYPE,"instant":RFC3339,"instant_ns":N,
 *    "databases":[{"name":NAME,"page_size":N,"size":N,"pages":N,"txid":N,
 *      "commit_time":RFC3339,"commit_ns":N,"timeline":N,"sha256":HEX,
 *      "tables":{NAME:ROWS,...}}, ...]}
 */
#ifndef DBM_BACPAC_H
#define DBM_BACPAC_H
#include <stddef.h>
#include <stdint.h>

struct dbm_dbimage;

struct dbm_bacpac_params {
    const char *env;
    const char *env_type;
    uint64_t instant_ns;                 /* the instant the export stands for */
    const struct dbm_dbimage *dbs;       /* sorted by name */
    size_t ndbs;
    int level;                           /* zstd level (0: 3) */
    const char *spool_dir;               /* NULL: /tmp. Where compressed output waits
                                          * for the manifest (an unnamed file) */
};

/* Output: called with consecutive compressed bytes; a negative return
 * aborts the export with that value. */
typedef int (*dbm_bacpac_sink)(void *arg, const void *buf, size_t len);

/* Produces the export: the SHA-256 and row counts of each image (for the
 * manifest) are computed in other threads while the databases are
 * compressed in the caller's; compressed output waits in a spool file in
 * spool_dir until the manifest is out (at most the body's compressed size).
 * On success fills sha256 (32 bytes of the compressed stream) and *size.
 * -EIO if a page fails its checksum; -ECANCELED if cancel (may be NULL)
 * returns non-zero between blocks. -EFBIG (and a log line) if the manifest
 * outgrows the allowance dbm_bacpac_size_bound makes for it (see there);
 * -EINVAL for a database name that is not a plain file name or a page size
 * SQLite cannot have; the spool's -errno (and a log line) if it cannot be
 * written. No byte reaches sink before the manifest is complete, so an error
 * in hashing or counting leaves the sink untouched. cancel gets arg, like
 * sink, and is called from two threads: it must be thread-safe. */
int dbm_bacpac_produce(const struct dbm_bacpac_params *p, dbm_bacpac_sink sink, void *arg,
                       int (*cancel)(void *arg), uint8_t sha256[32], uint64_t *size);

/* An upper bound of the export's size, computable without reading any page
 * (ZSTD_compressBound of each frame's tar bytes plus framing). The tar size
 * is exact but for manifest.json, whose table list is not known without reading:
 * it is allowed DBM_BACPAC_MANIFEST_BASE bytes plus, per database,
 * DBM_BACPAC_MANIFEST_PER_DB + min(DBM_BACPAC_MANIFEST_PER_PAGE * pages,
 * DBM_BACPAC_MANIFEST_PAGES_CAP). A table has a root page of its own, so that
 * is about 64 bytes per table at worst: names up to ~40 characters. A larger
 * manifest fails the export with -EFBIG. */
#define DBM_BACPAC_MANIFEST_BASE (64u << 10)
#define DBM_BACPAC_MANIFEST_PER_DB (4u << 10)
#define DBM_BACPAC_MANIFEST_PER_PAGE 64u
#define DBM_BACPAC_MANIFEST_PAGES_CAP (1u << 20)
uint64_t dbm_bacpac_size_bound(const struct dbm_bacpac_params *p);

#endif
