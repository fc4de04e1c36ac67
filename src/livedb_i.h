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
 *   livedb.mu   the namespace: files[], bases[], names, ids, nlookup, nopen
 *   dbfile.mu   the file's POSIX lock table (and its condition variable) */
#ifndef DBM_LIVEDB_I_H
#define DBM_LIVEDB_I_H
#include <limits.h>
#include <pthread.h>
#include <stdint.h>

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
    unsigned nopen;
    int unlinked;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* a lock was released */
    struct dbm_locktab locks;
};

enum jmode { JM_UNKNOWN = 0, JM_DELETE, JM_TRUNCATE, JM_PERSIST, JM_WAL };

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
    /* reports */
    enum jmode mode;
    uint64_t captured;        /* commits recorded by this daemon run */
    uint64_t refused;         /* writes refused (unsupported journal mode) */
    int writer;               /* RESERVED or WAL WRITE lock held */
};

struct dbm_livedb {
    char env[64];
    char *dir;                /* backing directory */
    char *capdir;             /* capture cursors */
    int dirfd;
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
    uint32_t max_dbs;         /* 0: no limit */
    uint64_t max_db_bytes;    /* 0: no limit */
};

struct dbm_dbhandle {
    struct dbfile *f;
    int flags;
};

/* capture.c: commit detection and recording. Called with b->mu held. */
int dbm_cap_db_written(struct base *b, const void *buf, size_t size, off_t off);
int dbm_cap_db_check_write(struct base *b, off_t off, size_t size);
int dbm_cap_journal_written(struct base *b, off_t off, size_t size);
int dbm_cap_journal_commit(struct base *b, enum jmode how);
int dbm_cap_wal_written(struct base *b, off_t off, size_t size);
void dbm_cap_wal_reset(struct base *b);
/* Start-up: attach the timeline and repair what a crash left. */
int dbm_cap_recover(struct base *b);
void dbm_cap_forget_history(struct base *b, uint64_t now_ns); /* database removed */
void dbm_cap_free(struct base *b);
int dbm_cap_ensure_fd(struct dbm_livedb *l, struct dbfile *f);

#endif
