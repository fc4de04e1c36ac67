/* pagestore_i.h - private to pagestore.c, pgseg.c and pgtxn.c: one log
 * segment of a timeline (its file, its index in RAM while active or on disk
 * once sealed), and the store and timeline objects that pgtxn.c's streamed
 * transactions append through. The on-disk format and the global lock order
 * are documented at the top of pagestore.c.
 *
 * Locking: a segment has no lock of its own for its contents. The timeline's
 * rwlock protects every field a reader uses; only the timeline's single
 * appender (holding the timeline's append lock) writes the log file and the
 * appender-only fields (wbuf, alloc_end, zero_end). map_lock only guards the
 * lazy open/mmap of a sealed segment, taken under the timeline's read lock. */
#ifndef DBM_PAGESTORE_I_H
#define DBM_PAGESTORE_I_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "pagestore.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the page store's on-disk structs are little-endian; add byte swaps for this host"
#endif

#define PGS_SEG_MAGIC 0x31304745534d4244ull /* "DBMSEG01" */
#define PGS_IDX_MAGIC 0x31305844494d4244ull /* "DBMIDX01" */
#define PGS_IMG_MAGIC 0x3130474d494d4244ull /* "DBMIMG01" */
#define PGS_META_MAGIC 0x31304d4c544d4244ull /* "DBMTLM01" */
#define PGS_REC_MAGIC 0x524d4244u            /* "DBMR" */
#define PGS_VERSION 1
/* Record versions: 1 is a whole transaction (kind 0); 2 is a piece of a
 * streamed transaction (kind PART or COMMIT), which a version-1 reader
 * refuses rather than mistakes for a whole transaction. */
#define PGS_REC_WHOLE 1
#define PGS_REC_STREAM 2
#define PGS_KIND_PART 1
#define PGS_KIND_COMMIT 2
#define PGS_PART_BYTES (1u << 20) /* a part record holds at most this much (or one page) */

/* Log segment file header, at offset 0; records start at PGS_SEG_HDR. */
struct pgs_seg_hdr {
    uint64_t magic;
    uint32_t version, page_size;
    uint64_t tl_id, first_txid;
    uint8_t reserved[28];
    uint32_t crc; /* of the bytes before it */
};
#define PGS_SEG_HDR 64

/* Record header; followed by npages pgs_rec_ent, then the pages in that order
 * (a whole transaction or a part), or by a pgs_commit_body (a commit). A part
 * carries its sequence number in the transaction (0, 1, ...) in commit_ns and
 * 0 in db_pages; a commit carries in npages the count of distinct pages of
 * its parts. */
struct pgs_rec_hdr {
    uint32_t magic;
    uint8_t version, kind, reserved0[2];
    uint64_t txid, commit_ns;
    uint32_t db_pages, npages;
    uint64_t rec_len;  /* header + entries + pages */
    uint32_t ent_crc;  /* of the entries array */
    uint32_t hdr_crc;  /* of the bytes before it */
};
struct pgs_rec_ent {
    uint32_t pgno, crc; /* crc: pgs_page_crc() */
};

/* Body of a commit record (ent_crc covers it). */
struct pgs_commit_body {
    uint64_t first_off; /* offset of part 0 (of the commit itself if no part) */
    uint32_t nparts, reserved;
};
#define PGS_COMMIT_LEN (sizeof(struct pgs_rec_hdr) + sizeof(struct pgs_commit_body))

/* One transaction: the on-disk idx layout and the in-RAM one. */
struct pgs_txn {
    uint64_t txid, commit_ns, rec_off;
    uint32_t db_pages, reserved;
};
/* One page version: the on-disk idx layout (sorted by pgno, txid). */
struct pgs_ent {
    uint32_t pgno, crc;
    uint64_t txid, data_off, rec_off;
};
/* Index file header; then ntx pgs_txn, then nent pgs_ent. */
struct pgs_idx_hdr {
    uint64_t magic;
    uint32_t version, page_size;
    uint64_t first_txid, last_txid, min_ns, max_ns, ntx, nent, log_bytes;
    uint32_t min_pages, body_crc;
    uint8_t reserved[12];
    uint32_t hdr_crc;
};

/* Active segment: a page version in RAM, chained to the previous version of
 * the same pgno (prev, or UINT32_MAX). */
struct pgs_ment {
    struct pgs_ent e;
    uint32_t prev;
};

struct pgs_seg {
    uint64_t serial;     /* unique in the process: names the segment where an address cannot */
    char *path;          /* log.<first>, owned */
    uint32_t page_size;
    uint64_t tl_id;
    int fd;              /* -1 until opened (sealed segments open lazily) */
    int sealed;
    uint64_t first_txid, last_txid; /* last_txid == first_txid - 1 when empty */
    uint64_t min_ns, max_ns;
    uint32_t min_pages;
    uint64_t end;        /* log bytes in use (records end here) */
    uint64_t idx_bytes;  /* size of the .idx file once sealed */

    /* sealed: lazy mapping of the .idx file */
    pthread_mutex_t map_lock; /* innermost; guards fd/map setup of a sealed segment */
    void *map;
    size_t map_len;
    const struct pgs_txn *txns;
    const struct pgs_ent *ents;
    uint64_t ntx, nent;

    /* active: index in RAM */
    struct pgs_txn *atx;
    size_t natx, catx;
    struct pgs_ment *ments;
    size_t nment, cment;
    uint32_t *hash;      /* pgno -> newest ments index, open addressing */
    size_t hcap, hused;

    /* appender only */
    uint8_t *wbuf;
    size_t wcap;
    uint64_t alloc_end, zero_end;
};

/* A streamed transaction being written (or read back by recovery): its
 * parts so far and, per distinct page, the newest version (last wins). Owned
 * by its appender; readers never see it. */
struct pgs_pent {
    uint32_t pgno, crc;
    uint64_t data_off, rec_off;
};
struct pgs_pending {
    uint64_t first_off;  /* where part 0 is (or goes) */
    uint64_t off;        /* where the next record goes */
    uint32_t nparts;
    struct pgs_pent *ents;
    size_t n, cap;
    uint32_t *hash;      /* pgno -> ents index, open addressing */
    size_t hcap;
};

/* Result of recovering an active segment. */
struct pgs_recovery {
    uint64_t bad_txid;  /* nonzero: a record mid-log is unreadable from this txid on */
    int cut;            /* a torn tail was cut */
};

uint32_t dbm_pgs_page_crc(uint32_t pgno, uint64_t txid, const void *data, uint32_t page_size);

/* Creates an empty active segment log.<first_txid> in dir (durable, dir
 * fsync'd). Borrows dir; *out is new (dbm_pgs_seg_free). 0 or -errno. */
int dbm_pgs_seg_create(int dirfd, const char *dir, uint64_t tl_id, uint32_t page_size,
                       uint64_t first_txid, uint64_t prealloc, struct pgs_seg **out);
/* Opens a sealed segment from its .idx header (the log and the body of the
 * index are opened lazily). */
int dbm_pgs_seg_open_sealed(const char *log_path, uint64_t tl_id, uint32_t page_size, uint64_t first_txid,
                            struct pgs_seg **out);
/* Opens the active segment and recovers it: scans it, cuts a torn tail. */
int dbm_pgs_seg_recover(const char *log_path, uint64_t tl_id, uint32_t page_size, uint64_t first_txid,
                        struct pgs_seg **out, struct pgs_recovery *rec);
void dbm_pgs_seg_free(struct pgs_seg *g); /* accepts NULL */
/* Unlinks the log and its index; returns bytes they held. */
uint64_t dbm_pgs_seg_unlink(struct pgs_seg *g);

/* Append, in three steps: reserve (timeline write-locked: grows arrays),
 * write (no timeline lock: the record is written and fdatasync'd past end,
 * invisible to readers; on failure the tail is cut), publish (write-locked:
 * cannot fail). */
int dbm_pgs_seg_reserve(struct pgs_seg *g, size_t n);
int dbm_pgs_seg_write(struct pgs_seg *g, uint64_t txid, uint64_t commit_ns, uint32_t db_pages,
                      const struct dbm_page_write *pages, size_t n, uint64_t prealloc, uint64_t *rec_len);
void dbm_pgs_seg_publish(struct pgs_seg *g);

/* Streamed append. pend_init starts at off (the segment's end). write_parts
 * writes pages as one or more part records at p->off, without fdatasync, and
 * adds them to p; write_commit writes the commit record and fdatasyncs; both
 * leave what they wrote in place on failure (the caller cuts it with
 * seg_cut). reserve(g, p->n) before write_commit, then publish_pending under
 * the write lock (cannot fail). */
void dbm_pgs_pend_init(struct pgs_pending *p, uint64_t off);
void dbm_pgs_pend_free(struct pgs_pending *p); /* frees the arrays; p stays usable */
int dbm_pgs_seg_write_parts(struct pgs_seg *g, struct pgs_pending *p, uint64_t txid,
                            const struct dbm_page_write *pages, size_t n, uint64_t prealloc);
int dbm_pgs_seg_write_commit(struct pgs_seg *g, struct pgs_pending *p, uint64_t txid, uint64_t commit_ns,
                             uint32_t db_pages, uint64_t prealloc);
void dbm_pgs_seg_publish_pending(struct pgs_seg *g, const struct pgs_pending *p, uint64_t txid,
                                 uint64_t commit_ns, uint32_t db_pages);
/* Cuts the log back to g->end (after a failed or abandoned write). */
void dbm_pgs_seg_cut(struct pgs_seg *g);

/* Sealing: write_index does the I/O (appender, no lock), mark_sealed switches
 * the in-RAM state (write-locked) once the index is in place. */
int dbm_pgs_seg_write_index(int dirfd, struct pgs_seg *g);
void dbm_pgs_seg_mark_sealed(struct pgs_seg *g);

/* Newest version of pgno with lo_excl < txid <= hi_incl. 1 found (*out), 0 not, -errno. */
int dbm_pgs_seg_find(struct pgs_seg *g, uint32_t pgno, uint64_t hi_incl, uint64_t lo_excl, struct pgs_ent *out);
/* Reads and verifies the page e (record header and page CRC). 0 or -EIO. */
int dbm_pgs_seg_read(struct pgs_seg *g, const struct pgs_ent *e, void *buf);
/* The transaction txid (1 found, 0 not in this segment, -errno). */
int dbm_pgs_seg_txn(struct pgs_seg *g, uint64_t txid, struct pgs_txn *out);
/* The last transaction with commit_ns <= ns (1 found, 0 none, -errno). */
int dbm_pgs_seg_txn_at(struct pgs_seg *g, uint64_t ns, struct pgs_txn *out);
/* 1 if every transaction with lo_excl < txid <= hi_incl has db_pages >= pgno,
 * 0 if not, -errno. */
int dbm_pgs_seg_pages_cover(struct pgs_seg *g, uint64_t lo_excl, uint64_t hi_incl, uint32_t pgno);

/* Calls cb(pgno) for every page version with txid > lo_excl (a page may come
 * more than once); stops at cb's first non-zero return, which it returns. */
int dbm_pgs_seg_pages_after(struct pgs_seg *g, uint64_t lo_excl, int (*cb)(uint32_t pgno, void *arg), void *arg);

int dbm_pgs_fsync_dir(int dirfd);

/* ---- the store and its timelines (pagestore.c; pgtxn.c appends through them) ---- */

struct tl_entry; /* pagestore.c: one row of the timeline table */
struct tl_image; /* pagestore.c: one image file */

struct dbm_store {
    char *dir;
    int dirfd;
    uint64_t segment_bytes, image_bytes;
    pthread_mutex_t open_lock; /* lock order 1 */
    pthread_mutex_t lock;      /* lock order 6: tls, ntl, max_id, every tl->refs */
    struct tl_entry *tls;
    size_t ntl, ctl;
    uint64_t max_id;
};

struct dbm_timeline {
    struct dbm_store *s;
    uint64_t id, parent_id, branch_txid;
    uint32_t page_size;
    char *dir;
    int dirfd;
    struct dbm_timeline *parent; /* a reference held for the child's life */
    struct dbm_txinfo branch;    /* the parent's branch_txid */
    int refs;                    /* under s->lock */

    pthread_mutex_t img_lock;    /* lock order 2: writing an image; gc */
    pthread_mutex_t append_lock; /* lock order 3 */
    pthread_rwlock_t rw;         /* lock order 4: everything below up to bg_mu */
    struct pgs_seg **segs;       /* by first_txid; the last may be active */
    size_t nseg, cseg;
    struct tl_image *imgs;       /* by txid */
    size_t nimg, cimg;
    uint64_t first_txid, last_txid, last_ns, bad_txid, commits;
    uint32_t db_pages;
    uint64_t since_image;        /* log bytes since the newest image */
    uint64_t log_added;          /* log bytes published since the timeline was loaded */
    struct dbm_tl_txn *txn;      /* the open streamed transaction (pgtxn.c); under append_lock */

    /* The image a commit made due is written by a thread of its own, so that
     * no commit waits for a copy of the database. bg_mu (lock order 7,
     * innermost) guards the fields up to img_stop. */
    pthread_mutex_t bg_mu;
    pthread_cond_t bg_cv;        /* signalled when a background image ends */
    pthread_t bg_th;
    int bg_joinable;             /* bg_th was started and is not joined yet */
    int bg_running;
    uint64_t bg_txid;
    uint64_t bg_retry_ns;        /* CLOCK_MONOTONIC: no new one before (after a failure) */
    int img_stop;                /* atomic: the timeline is being freed; abandon an image */
};

/* The appending side of a timeline, shared with pgtxn.c: the functions that
 * take a timeline are called with its append_lock held (lock order 3). */

/* The segment to append rec_len bytes to (*out, borrowed from t): seals a
 * full one, creates a new one. 0 or -errno. */
int dbm_pgs_tl_active(struct dbm_timeline *t, uint64_t rec_len, struct pgs_seg **out);
/* 1 if no page has pgno 0 or NULL data, else 0. Borrows pages. */
int dbm_pgs_pages_valid(const struct dbm_page_write *pages, size_t n);
/* commit_ns, or the last commit's time if it went backwards (logged). */
uint64_t dbm_pgs_tl_clamp_ns(struct dbm_timeline *t, uint64_t commit_ns);
/* The timeline's side of a publication (also tl->rw write-locked): returns
 * whether an image is due. len: log bytes the transaction took. */
int dbm_pgs_tl_committed(struct dbm_timeline *t, uint64_t txid, uint64_t commit_ns, uint32_t db_pages,
                         uint64_t len);
/* Starts writing image.<txid> in the background unless one is being
 * written already or the last one failed less than a while ago; failures are
 * logged (the commit that made it due is durable anyway). */
void dbm_pgs_tl_image_soon(struct dbm_timeline *t, uint64_t txid);

#endif
