/* pagestore.h - the backup engine: a versioned, checksummed page store.
 *
 * A store is a directory (STATE/store). Inside it, each *timeline* (the
 * history of one database) is a subdirectory named by its 64-bit id in hex.
 * A timeline is an append-only log of committed transactions: each record
 * carries a transaction id, its commit time (ns since the epoch), the
 * database size in pages after it, and the pages it changed. Every record
 * header and every page carries a CRC32C checked on every read: a mismatch
 * is -EIO (and a log line), never wrong data.
 *
 * Reads at a transaction id are bounded: the log is cut into segments, each
 * sealed segment has a sorted on-disk index, and periodic full images cap how
 * far back a read must look. Memory does not grow with database size.
 *
 * A timeline may branch from a parent at a transaction id in constant time:
 * its txids continue from branch_txid + 1, and reads of pages it never wrote
 * fall through to the parent at branch_txid.
 *
 * Thread safety: one appender at a time per timeline (the caller serialises
 * appends per database); reads may run concurrently with each other and with
 * an append. The store object itself is thread-safe.
 */
#ifndef DBM_PAGESTORE_H
#define DBM_PAGESTORE_H

#include <stddef.h>
#include <stdint.h>

struct dbm_store;
struct dbm_timeline;

struct dbm_store_opts {
    uint64_t segment_bytes;        /* seal a segment past this size (0: 64 MiB) */
    uint64_t image_interval_bytes; /* write a full image after this much log (0: max(64 MiB, db size)) */
};

/* Opens (creating if needed) the store in dir. Borrows dir and opts
 * (opts may be NULL for defaults). *out is a new object: free with
 * dbm_store_close. Returns 0 or -errno. */
int dbm_store_open(const char *dir, const struct dbm_store_opts *opts, struct dbm_store **out);
void dbm_store_close(struct dbm_store *s); /* accepts NULL; timelines must be closed first */

/* Creates a new, empty timeline. parent_id 0 means no parent; otherwise the
 * new timeline reads through to parent at branch_txid (which must be a txid
 * the parent has committed, or 0 for "empty"). Constant time. The first txid
 * committed on the new timeline is branch_txid + 1. */
int dbm_tl_create(struct dbm_store *s, uint32_t page_size, uint64_t parent_id, uint64_t branch_txid,
                  uint64_t *id_out);

/* Opens a timeline; recovers it first if it was not closed cleanly: a torn
 * tail is cut off at the last complete, checksummed record. Recovery reads at
 * most the last segment, never the whole history. *out: free with dbm_tl_close.
 * Returns -ENOENT if there is no such timeline. */
int dbm_tl_open(struct dbm_store *s, uint64_t id, struct dbm_timeline **out);
void dbm_tl_close(struct dbm_timeline *t); /* accepts NULL */

/* Removes a timeline's files. Refused with -EBUSY while it is open or while
 * another timeline branches from it. */
int dbm_tl_drop(struct dbm_store *s, uint64_t id);

struct dbm_page_write {
    uint32_t pgno;        /* 1-based */
    const void *data;     /* page_size bytes, borrowed */
};

/* Appends one committed transaction. Durable (fdatasync'd) on return.
 * db_pages is the database size in pages after the transaction; pages beyond
 * it are dropped from the view at this txid. Pages are borrowed. A page
 * number may appear once. commit_ns must be >= the previous commit's.
 * *txid_out (may be NULL) gets the new txid. -ENOSPC/-EIO leave the log as it
 * was before the call (the partial record is cut off). -EBUSY while a streamed
 * transaction is open. Past 1 MiB of pages it is streamed internally (so it
 * needs no copy of the transaction); the caller still holds all the pages:
 * for a transaction of unbounded size, use dbm_tl_txn_*. */
int dbm_tl_append(struct dbm_timeline *t, uint64_t commit_ns, uint32_t db_pages,
                  const struct dbm_page_write *pages, size_t n, uint64_t *txid_out);

/* Streamed transactions: a transaction of any size, written as it comes, with
 * memory bounded by the caller's batch (plus about 32 bytes per distinct
 * page) instead of by the transaction. Readers see none of it before the
 * commit; a crash before the commit leaves a torn tail that the next open
 * cuts. A streamed transaction stays in the log segment where it began even
 * past segment_bytes; that segment is sealed at the next append. One at a
 * time per timeline: while it is open, dbm_tl_append and another begin return
 * -EBUSY (the caller serialises them anyway). Commit or abort it before
 * dbm_tl_close. Images and retention may run meanwhile. */
struct dbm_tl_txn;

/* Starts a transaction on t, whose txid will be the next one. *out is new:
 * it is freed by dbm_tl_txn_commit or dbm_tl_txn_abort. 0, -EBUSY (one is
 * open), -EIO (the log is damaged, as for appends) or -errno. */
int dbm_tl_txn_begin(struct dbm_timeline *t, struct dbm_tl_txn **out);

/* Writes n pages now (not yet fdatasync'd). Borrows pages for the call. A
 * page number added again later in the same transaction (or twice in one
 * call) replaces the earlier one: the last wins. Each call writes at least one
 * record: pass batches (say 1 MiB) rather than single pages. 0, -EINVAL (a
 * pgno 0 or NULL data: nothing written, the transaction goes on), or -errno
 * (-ENOSPC, -EIO...): the transaction has then failed, its pages are cut off
 * the log, and only abort (or a commit, which returns the same error) is
 * left. */
int dbm_tl_txn_add(struct dbm_tl_txn *x, const struct dbm_page_write *pages, size_t n);

/* Makes x durable (fdatasync) and visible to readers, then frees it.
 * db_pages is the database size after it: pages added beyond it are dropped
 * from the view at this txid. commit_ns as in dbm_tl_append. *txid_out (may
 * be NULL) gets its txid. On failure nothing is recorded, the log is cut back
 * to where x began, x is freed, and later appends work. */
int dbm_tl_txn_commit(struct dbm_tl_txn *x, uint64_t commit_ns, uint32_t db_pages, uint64_t *txid_out);

/* Discards x: nothing is recorded, the log is cut back; frees x. Accepts NULL. */
void dbm_tl_txn_abort(struct dbm_tl_txn *x);

/* Reads page pgno as of txid into buf (page_size bytes). Pages past the
 * database size at that txid, or never written, read as zeros and return 1;
 * a found page returns 0. -ERANGE if txid is not in the timeline's readable
 * range (older than the oldest kept history, or newer than the last commit).
 * -EIO on a checksum mismatch. */
int dbm_tl_read_page(struct dbm_timeline *t, uint64_t txid, uint32_t pgno, void *buf);

struct dbm_txinfo {
    uint64_t txid;
    uint64_t commit_ns;
    uint32_t db_pages;
};

/* The last transaction committed at or before time_ns. -ENOENT if none is
 * (time before the earliest kept commit, or an empty timeline). Bounded:
 * binary search over segment indexes, no scan of the history. A branch with
 * no commit of its own at time_ns answers with its branch point. */
int dbm_tl_txid_at(struct dbm_timeline *t, uint64_t time_ns, struct dbm_txinfo *out);
/* The transaction txid itself. -ENOENT if not kept. */
int dbm_tl_txinfo(struct dbm_timeline *t, uint64_t txid, struct dbm_txinfo *out);

/* Calls cb(pgno) for each page some transaction after txid wrote (a page
 * may come more than once), in this timeline only (not its parent).
 * -ERANGE if retention dropped some of those transactions; otherwise 0, or
 * cb's first non-zero return. Lets a crashed database be repaired from the
 * history without a full scan. */
int dbm_tl_pages_after(struct dbm_timeline *t, uint64_t txid, int (*cb)(uint32_t pgno, void *arg), void *arg);

struct dbm_tl_stat {
    uint64_t id, parent_id, branch_txid;
    uint32_t page_size;
    uint32_t db_pages;        /* after the last commit */
    uint64_t first_txid;      /* oldest readable txid (earliest restore point) */
    uint64_t last_txid;       /* 0 if nothing committed and no parent */
    uint64_t first_ns, last_ns; /* commit times of first_txid and last_txid */
    uint64_t commits;         /* transactions kept in this timeline's own log */
    uint64_t history_bytes;   /* bytes of log and images on disk */
};
int dbm_tl_stat(struct dbm_timeline *t, struct dbm_tl_stat *out);

/* Retention: drops history no longer needed to read any txid committed at or
 * after horizon_ns, keeping the newest state always, and keeping whatever a
 * child branch still needs (its branch txid stays readable). Writes a full
 * image first when that lets more be dropped (commits go on meanwhile; an
 * image being written in the background is waited for). Returns bytes freed
 * or -errno. */
int64_t dbm_tl_gc(struct dbm_timeline *t, uint64_t horizon_ns);

/* Writes a full image of the timeline at its last txid now, waiting for one
 * being written in the background first. 0 or -errno. Images are also
 * written automatically, by a thread of the timeline's, once
 * image_interval_bytes of log follow the newest one: the commit that makes
 * one due does not wait for it. */
int dbm_tl_image(struct dbm_timeline *t);

/* Waits until no image is being written in the background. */
void dbm_tl_image_wait(struct dbm_timeline *t);

#endif
