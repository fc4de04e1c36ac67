/* livedb_i.h - private to livedb.c and capture.c.
 *
 * Objects: a dbm_livedb (one environment's db/ directory) owns its files
 * (struct dbfile, one per backing file, including unlinked ones still open)
 * and its bases (struct base, one per database name: erp.db and its
 * -journal/-wal/-shm files). Bases live until the livedb closes.
 *
 * Lock order: base.mu -> livedb.mu -> dbfile.mu -> page store -> catalog.
 *   base.mu     the capture state of one database; held across writes to its
 *               db, journal and wal files so commit detection sees them in order
 *   livedb.mu   the namespace: files[], bases[], names, ids, nlookup, nopen,
 *               nown
 *   dbfile.mu   the file's POSIX lock table (and its condition variable)
 * A writeback flush (livewb.c) waits for writes that take base.mu: none of
 * these may be held across one. */
#ifndef DBM_LIVEDB_I_H
#define DBM_LIVEDB_I_H
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>

#include "catalog.h"
#include "livedb.h"
#include "lockmgr.h"
#include "sqlproto.h"

struct base;

struct dbfile {
    uint64_t id;
    char name[NAME_MAX + 1];
    enum dbm_sqlfile kind;
    struct base *base;
    int fd;            /* backing descriptor (O_RDWR), opened on first use */
    uint64_t nlookup;
    unsigned nopen;    /* open handles, the daemon's own (nown) among them */
    unsigned nown;
    int wb_direct;     /* writeback cache: a WAL opened with direct I/O (livedb.c) (livedb.mu) */
    int unlinked;
    int pt_id;         /* passthrough backing id while pt_open > 0, else 0 (livedb.mu) */
    unsigned pt_open;  /* open handles in passthrough (livedb.mu) */
    /* A journal's first page, mapped once its header was read whole: the
     * file only shrinks through dbm_livedb_truncate, which clears hdr_ok
     * first, so the mapping is read only while it cannot fault. (base.mu) */
    void *hdr_map;
    int hdr_ok;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* a lock was released */
    struct dbm_locktab locks;
    int wb_stale;      /* (atomic) a write the kernel sent back was refused: its copy differs */
};

enum jmode { JM_UNKNOWN = 0, JM_DELETE, JM_TRUNCATE, JM_PERSIST, JM_WAL };

/* A WAL frame of the transaction being written: its page, and its place
 * from the transaction's first frame. */
struct walref {
    uint32_t pgno;
    uint32_t idx;
};

/* The frames of the current WAL generation from next_frame on, checked (salts
 * and checksum chain) as SQLite writes them so that the commit frame finds
 * them checked and nothing is read back but the pages recorded (capture.c).
 * A cache of what the file holds: any write or truncation over a frame it
 * describes drops it, and capture then checks the frames from the file. */
struct walval {
    int live;                 /* describes frames [start, end) of generation salt1, salt2 */
    uint32_t salt1, salt2;
    uint64_t start, end;
    struct dbm_walck ck;      /* checksum after frame end - 1 */
    struct walref *refs;      /* refs[i]: frame start + i */
    size_t cap;
    uint32_t commit_pages;    /* frame end - 1 commits (the database's size in pages), or 0 */
    int have_hdr;             /* hdr is the header the file holds for frame hdr_frame */
    uint64_t hdr_frame;
    uint8_t hdr[DBM_WAL_FRAME_HDR_SIZE];
    uint64_t page_frame;      /* 1 + the last frame whose page was written before its header (0: none) */
};

#define JHDR_ID_OFF 12 /* journal header: nonce, original size, sector size, page size */
#define JHDR_ID_LEN 16
#define JHDR_MAP_LEN 4096 /* a journal's first page, mapped for its header (struct dbfile) */
#define JHDR_MAP_MIN (JHDR_ID_OFF + JHDR_ID_LEN) /* the header bytes read from it */

struct base {
    char name[DBM_DB_NAME_MAX + 1];
    struct dbm_livedb *l;
    pthread_mutex_t mu;
    struct dbfile *db, *journal, *wal; /* current files of this database (NULL if absent) */
    /* history */
    struct dbm_timeline *tl;  /* NULL until the first commit */
    int64_t cat_id;
    uint32_t page_size;       /* of the timeline */
    uint32_t db_pages;        /* after the last recorded commit */
    /* rollback-journal capture */
    int journal_active;       /* the journal's header holds the magic: db writes are journaled */
    int wal_mode;             /* page 1 says WAL (file format version 2) */
    uint32_t hdr_ps;          /* page size page 1 declares now (0: unknown) */
    uint32_t last_counter;    /* change counter of page 1 at the last recorded commit */
    uint8_t *dirty_bits;
    size_t dirty_bits_len;    /* bytes */
    uint32_t *dirty;
    size_t ndirty, dirty_cap;
    /* WAL capture */
    int wal_ok;               /* wh/ck/next_frame describe the current WAL generation */
    struct dbm_walhdr wh;
    struct dbm_walck ck;      /* checksum after frame next_frame - 1 */
    uint64_t next_frame;      /* first frame not yet captured */
    int cursor_fd;            /* capture/<name>.walpos, rewritten after each capture */
    struct walval wv;         /* frames checked as they were written, ahead of their commit */
    int wal_blind;            /* (atomic) the WAL is open in passthrough: SQLite writes it
                               * without us, so capture reads it at sync points (dbm_cap_wal_sync) */
    int journal_blind;        /* (atomic) likewise for the journal (dbm_cap_journal_look, _sync) */
    /* (atomic) writeback cache: bumped whenever the daemon changes the WAL's
     * backing file (the kernel's write-backs of it, truncation, a new WAL);
     * dbm_cap_wal_sync skips a WAL no write reached since its last pass
     * (wal_seen): a checkpoint's database writes each ask for one */
    uint64_t wal_writes, wal_seen;
    uint8_t jhdr_id[JHDR_ID_LEN]; /* the hot journal header's nonce and sizes (journal_blind) */
    /* deferred durability (durable.c) */
    int sh_fd;                /* capture/<name>.shadow, -1 until first used */
    int sh_active;            /* the open transaction's pages are in the shadow (atomic: readers peek) */
    uint64_t sh_size;         /* the database's size as that transaction sees it (atomic) */
    int legacy;               /* this transaction writes through, every sync honoured */
    int mark_fd;              /* capture/<name>.synced, -1 until first used */
    uint64_t synced_txid;     /* the database file is durable up to this txid */
    uint64_t wal_base_txid;   /* WAL mode: the file holds this txid's state for every page no later txid wrote */
    /* reports */
    enum jmode mode;
    uint64_t captured;        /* commits recorded by this daemon run */
    uint64_t refused;         /* writes refused (unsupported journal mode) */
    int writer;               /* RESERVED or WAL WRITE lock held */
    int wb_stale;             /* (atomic) one of its files has wb_stale set (livewb.c) */
    /* (atomic) writeback cache: the kernel has written back the database
     * since its transaction began (SQLite synced it), or the WAL since the
     * WRITE lock was taken (synced by the writer): a commit point then needs
     * no flush (livewb.c) */
    int db_clean, wal_clean;
    int wb_lost;              /* (atomic) writeback cache: the kernel wrote back to the database file
                               * itself (a checkpoint's pages), and the write failed: the file may lack
                               * committed pages for the rest of this run, so its synced marker stays
                               * and the next start rewrites them from the history (durable.c) */
    /* writeback cache: byte ranges of the open rollback transaction's
     * database writes the kernel sent back and the daemon refused, not
     * written since (livewb.c); a commit that would record anything with
     * one left is refused. Cleared with the dirty set. */
    struct dbm_wb_range { uint64_t start, end; } *wb_refused;
    size_t nwb_refused, wb_refused_cap;
    int wb_refused_all;       /* one could not be kept (out of memory): as if all bytes were refused */
    int unjournaled;          /* (atomic) writeback cache: EXCLUSIVE granted on an empty database with no
                               * journal yet (SQLite opens it after, unless journal_mode is MEMORY
                               * or OFF: then the unlock fails, livedb.c) */
};

struct dbm_livedb {
    char env[64];
    char *dir;                /* backing directory */
    char *capdir;             /* capture cursors, shadows, sync markers */
    int capdir_fd;
    int dirfd;
    int dir_dirty;            /* (atomic) db/ gained or lost a name fsyncdir must make durable */
    /* the background sync (durable.c) */
    pthread_mutex_t sync_mu;
    pthread_cond_t sync_cv;
    pthread_t syncer;
    int have_syncer, sync_stop;
    unsigned sync_ms;
    struct dbm_store *store;
    struct dbm_catalog *cat;
    pthread_mutex_t mu;
    struct dbfile **files;
    size_t nfiles, files_cap;
    struct base **bases;
    size_t nbases, bases_cap;
    uint64_t next_id;
    uid_t uid;
    gid_t gid;
    mode_t fmode;
    const struct dbm_livedb_backing *backing; /* may be NULL */
    uint32_t max_dbs;         /* 0: no limit */
    uint64_t max_db_bytes;    /* 0: no limit */
    int writeback;            /* the kernel caches writes (livewb.c); set at open */
    struct dbm_reserve *reserve; /* borrowed, may be NULL: room for the kernel's cached writes */
    uint64_t tag;             /* for backing->wb_flush and wb_reset */
};

struct dbm_dbhandle {
    struct dbfile *f;
    int flags;
    int pt;  /* opened in passthrough (f->pt_id) */
    int own; /* the daemon's own (livedb.mu) */
};

/* livewb.c: the writeback cache. With it SQLite's writes to the database and
 * its WAL stay in the kernel's page cache until the file is synced, closed or
 * written back, and reach the daemon then, in large writes; journals are
 * opened with direct I/O, so that every rollback commit point stays a request
 * that reaches the daemon in order. A commit point whose writes SQLite did
 * not sync first has the kernel write back what it holds of the file. */
/* Makes the backing file of b's file in slot (b->db, b->wal) hold what the
 * kernel has cached of it, unless its writer synced it (db_clean, wal_clean;
 * not with force) or no application has it open (a close writes everything
 * back). 0 or -errno (a write the daemon refused, a full disk), logged. No
 * lock may be held: the writes it brings take base.mu. */
int dbm_wb_flush_slot(struct base *b, struct dbfile **slot, int force);
/* A write of f the kernel sent back failed: the kernel keeps the data as if
 * written, so its copy is dropped at the database's next lock request
 * (dbm_wb_resync), where SQLite reads the file again. */
void dbm_wb_refused(struct dbfile *f);
/* Drops the kernel's copy of b's database and WAL if they hold refused
 * writes. No lock held. */
void dbm_wb_resync(struct base *b);
/* Has the kernel drop its copy of b's database and take the backing file's
 * size (refused writes grew it, and no journal rolls them back). No lock. */
void dbm_wb_reset_db(struct base *b);
/* A rollback transaction's database write the kernel sent back: refused
 * (err < 0; kept until written again or cut off by a truncation), or
 * written (err == 0: takes [off, off + size) out of the kept ranges).
 * SQLite may never hear of a refusal (synchronous=OFF: the kernel reports it
 * to whichever close or sync comes first, maybe another process's), so the
 * commit point checks (dbm_wb_txn_lost). b->mu held. */
void dbm_wb_txn_write(struct base *b, uint64_t off, uint64_t size, int err);
void dbm_wb_txn_cut(struct base *b, uint64_t size); /* the database truncated to size */
/* Whether [off, off + size) holds a refused write (any, with size 0). */
int dbm_wb_txn_lost(const struct base *b, uint64_t off, uint64_t size);
void dbm_wb_txn_clear(struct base *b); /* the transaction ended */
/* Writes all of buf at off in fd (a WAL's or wal-index's backing file), or
 * fails: never a short count, which the kernel takes as written when it
 * writes its cache back. With the writeback cache a full disk first takes
 * room from the space reserve (reserve.h): SQLite may have counted the write
 * done. 0 or -errno. */
int dbm_wb_pwrite(struct dbm_livedb *l, int fd, const void *buf, size_t size, off_t off);
/* Whether a new write transaction may start: with the writeback cache a full
 * disk is seen when the kernel writes back, too late for SQLite to hear of it
 * with synchronous=OFF, so a transaction does not start while the state
 * directory's file system has less than DBM_WB_MIN_FREE bytes (at most a
 * 32nd of its size) free. 0 or -ENOSPC (logged). No lock held. */
int dbm_wb_room(struct dbm_livedb *l, const char *name);
#define DBM_WB_MIN_FREE (16ull << 20)

/* capture.c: commit detection and recording. Called with b->mu held. */
int dbm_cap_db_written(struct base *b, const void *buf, size_t size, off_t off);
int dbm_cap_db_check_write(struct base *b, off_t off, size_t size);
int dbm_cap_journal_written(struct base *b, off_t off, size_t size);
int dbm_cap_journal_commit(struct base *b, enum jmode how);
/* Passthrough (b->journal_blind): SQLite writes the journal without us.
 * dbm_cap_journal_look, before a write to the database file, notes whether
 * the journal is hot (and records the last transaction first if the hot
 * header is another transaction's); dbm_cap_journal_sync, at an fsync of the
 * journal, a database lock released or the background sync, records
 * PERSIST's commit (a zeroed header); told: the caller returns the failure
 * to SQLite (an fsync). */
int dbm_cap_journal_look(struct base *b);
int dbm_cap_journal_sync(struct base *b, int told);
int dbm_cap_wal_written(struct base *b, const void *buf, off_t off, size_t size);
void dbm_cap_wal_truncated(struct base *b, uint64_t size);
/* Passthrough: captures every commit the WAL holds now (a no-op unless
 * b->wal_blind). Called before anything that follows a commit or could
 * overwrite one: an fsync of the WAL, the end of a write transaction (the
 * WRITE lock released), a checkpoint (its lock taken, its writes to the
 * database file), the WAL truncated or removed. On failure the commit frame
 * is made invalid on disk, as when a write fails. */
int dbm_cap_wal_sync(struct base *b);
/* Start-up: attach the timeline and repair what a crash left. */
int dbm_cap_recover(struct base *b);
void dbm_cap_forget_history(struct base *b, uint64_t now_ns); /* database removed */
void dbm_cap_free(struct base *b);
int dbm_cap_ensure_fd(struct dbm_livedb *l, struct dbfile *f);
/* 1 if the journal (open) ends with a super-journal record; name (if not
 * NULL): that super-journal's path as SQLite wrote it. */
int dbm_cap_journal_super(struct base *b, char *name, size_t n);
/* capture/<name>.<ext>: the database's files beside the capture cursor. */
void dbm_cap_path(const struct base *b, const char *ext, char *out, size_t n);

/* durable.c: one durable write per commit in rollback modes (see there).
 * Called with b->mu held, except start/stop. */
/* 1: the write went to the shadow; 0: write it through; -errno. */
int dbm_dur_write(struct base *b, const void *buf, size_t size, off_t off);
int dbm_dur_active(const struct base *b);      /* lock-free peek */
uint64_t dbm_dur_size(const struct base *b);   /* lock-free peek: the size while active */
/* Reads the database as the open transaction sees it (short at its end). */
ssize_t dbm_dur_pread(struct base *b, void *buf, size_t n, off_t off);
void dbm_dur_truncate(struct base *b, uint64_t size); /* while active */
void dbm_dur_extend(struct base *b, uint64_t size);   /* fallocate: a no-op unless active */
/* Around the store append at a commit point: reserve space, then copy the
 * shadow into the file (no sync). */
int dbm_dur_prepare_commit(struct base *b);
int dbm_dur_apply(struct base *b);
void dbm_dur_end_txn(struct base *b);
void dbm_dur_discard(struct base *b);              /* the database was removed */
int dbm_dur_go_legacy(struct base *b);
/* Whether an fsync of f must really sync (*real); may switch to legacy. */
int dbm_dur_fsync(struct base *b, struct dbfile *f, int *real);
int dbm_dur_timeline_new(struct base *b, uint64_t tl_id);
void dbm_dur_forget(struct base *b);              /* history dropped: its marker goes */
/* WAL mode: every frame is checkpointed (a new WAL generation, the WAL
 * truncated or removed): the file holds the last recorded txid. */
void dbm_dur_wal_restarted(struct base *b);
/* Start-up, timeline attached: repairs the file from the store if this
 * protocol wrote it, unless sqlite_synced (a transaction SQLite's own
 * protocol committed and synced, not yet recorded, is in the file). *done: DBM_DUR_FILE_REPAIRED (a leftover journal must
 * go), DBM_DUR_WAL_STALE (so must the WAL: a power loss may have torn it). */
enum { DBM_DUR_FILE_REPAIRED = 1, DBM_DUR_WAL_STALE = 2 };
int dbm_dur_recover(struct base *b, int sqlite_synced, int *done);
/* Whether the marker was written with the writeback cache in this boot: a
 * daemon crash, after which the WAL's backing file still holds every frame
 * the kernel wrote back (commits SQLite may have reported done while the
 * daemon died recording them). */
int dbm_dur_wb_crash_same_boot(struct base *b);
/* Start-up of a database SQLite's own protocol wrote: start the marker. */
int dbm_dur_recover_legacy_done(struct base *b);
void dbm_dur_stop(struct dbm_livedb *l);          /* and syncs everything */

#endif
