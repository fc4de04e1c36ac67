/* exports.h - export.bacpac production and its cache.
 *
 * An export is named by what it holds (environment, and each database's
 * timeline and txid), so every instant that resolves to the same state
 * shares one file and one production. Production runs in its own thread,
 * writing STATE/cache/<key>.bacpac.part; readers follow it as it grows
 * (the first reader gets bytes at once) and every reader of the same key
 * shares it. When complete, the file is renamed <key>.bacpac beside a
 * <key>.sha256, and stays cached (across restarts) until the cache's bound
 * evicts it, least recently used first.
 *
 * Lock order: dbm_exports.mu -> dbm_export.mu (leaf). No I/O under mu except
 * unlinking evicted files. */
#ifndef DBM_EXPORTS_H
#define DBM_EXPORTS_H
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct dbm_exports;
struct dbm_export;
struct dbm_snapshot;
struct dbm_sbuf;

int dbm_exports_open(const char *cache_dir, uint64_t bound_bytes, struct dbm_exports **out);
/* Waits for productions in progress to stop (they are cancelled). */
void dbm_exports_close(struct dbm_exports *x); /* accepts NULL */
void dbm_exports_set_bound(struct dbm_exports *x, uint64_t bound_bytes);

/* The export of snap: a cached one, the production in progress, or a new
 * production started now. Returns a new reference (dbm_export_put). */
int dbm_export_get(struct dbm_exports *x, struct dbm_snapshot *snap, struct dbm_export **out);
void dbm_export_put(struct dbm_export *e); /* accepts NULL */

/* Reads size bytes at off, waiting until production has reached them all
 * (short only at the end of the export). Returns the count, 0 at the end,
 * or the production's -errno. */
ssize_t dbm_export_read(struct dbm_export *e, void *buf, size_t size, off_t off);
/* If the export is complete: 1, its cached file's descriptor (valid while
 * the caller holds its reference) and its size; 0 otherwise. */
int dbm_export_file(struct dbm_export *e, int *fd, uint64_t *size);
/* Waits for the production to finish. 0, or its -errno. */
int dbm_export_wait(struct dbm_export *e);
/* 1 with the exact size (and sha256 hex, 65 bytes, may be NULL) if
 * complete; 0 with an upper bound of the size while in production. */
int dbm_export_size(struct dbm_export *e, uint64_t *size, char *sha_hex);

/* Size of snap's export without starting it: 1 and the exact size if it is
 * produced (in this run or cached), 0 and an upper bound otherwise. */
int dbm_export_peek_size(struct dbm_exports *x, struct dbm_snapshot *snap, uint64_t *size);

/* "key: value" lines: exports in production (with progress) and cache use. */
void dbm_exports_report(struct dbm_exports *x, struct dbm_sbuf *b);

#endif
