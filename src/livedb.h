/* livedb.h - an environment's db/ directory: live SQLite databases served
 * from backing files in STATE/envs/<env>/db, with every committed
 * transaction captured into the page store before SQLite's commit returns.
 *
 * Files are identified by a 40-bit id, stable while the file exists (a new
 * file of the same name gets a new id). Locks (POSIX byte ranges) are kept
 * here, per lock owner, so the engine sees write transactions start and end.
 *
 * Lock order: dbm_livedb.lock (namespace) -> dbm_dbfile.lock (one file) ->
 * page store. No lock is held across a reply to the kernel. */
#ifndef DBM_LIVEDB_H
#define DBM_LIVEDB_H
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

struct dbm_livedb;
struct dbm_dbhandle;
struct dbm_store;
struct dbm_catalog;
struct dbm_sbuf;
struct dbm_reserve;

/* What the FUSE glue provides: passthrough backing files (fusepass.h), and
 * with the writeback cache a way to reach the kernel's copy of a file. */
struct dbm_livedb_backing {
    int (*open)(void *ctx, int fd);  /* a backing id (> 0) for fd, or -errno */
    void (*close)(void *ctx, int id);
    /* Has the kernel write back what it caches of file id of the livedb
     * tagged tag (the writeback cache, fusewb.h): 0 or -errno. */
    int (*wb_flush)(void *ctx, uint64_t tag, uint64_t id);
    /* Has the kernel drop the pages of file id it holds clean (writes the
     * daemon refused among them), after cutting its idea of the file's size
     * to size if size >= 0: 0 or -errno. */
    int (*wb_reset)(void *ctx, uint64_t tag, uint64_t id, int64_t size);
    void *ctx;
};

struct dbm_livedb_params {
    const char *env;          /* borrowed; copied */
    const char *backing_dir;  /* STATE/envs/<env>/db, created if missing */
    struct dbm_store *store;  /* borrowed; outlives the livedb */
    struct dbm_catalog *cat;  /* borrowed; outlives the livedb */
    /* borrowed, may be NULL; outlives the livedb; open == NULL: no passthrough */
    const struct dbm_livedb_backing *backing;
    uint64_t tag;             /* given back to backing->wb_flush and wb_reset */
    /* The kernel caches writes (FUSE's writeback cache): they reach the
     * daemon when a file is synced, closed or written back, so every commit
     * point first makes the kernel write back what it holds (livewb.c). */
    int writeback;
    struct dbm_reserve *reserve; /* borrowed, may be NULL; outlives the livedb (reserve.h) */
};
int dbm_livedb_open(const struct dbm_livedb_params *p, struct dbm_livedb **out);
void dbm_livedb_close(struct dbm_livedb *l); /* accepts NULL */

/* The kernel did not offer the writeback cache after all (INIT): its files
 * are served as without it. Call before any file is opened. */
void dbm_livedb_writeback_off(struct dbm_livedb *l);

/* Owner, group and permission bits files get (from the environment's config). */
void dbm_livedb_set_owner(struct dbm_livedb *l, uid_t uid, gid_t gid, mode_t file_mode);
/* Limits from the config (0: none): creating a database beyond max_dbs is
 * -EDQUOT; a write growing a database file past max_bytes is -ENOSPC. */
void dbm_livedb_set_limits(struct dbm_livedb *l, uint32_t max_dbs, uint64_t max_bytes);

/* ---- namespace ---- */
/* Looks a name up; on success takes one lookup reference on the file. */
int dbm_livedb_lookup(struct dbm_livedb *l, const char *name, uint64_t *id, struct stat *st);
void dbm_livedb_forget(struct dbm_livedb *l, uint64_t id, uint64_t nlookup);
/* The backing file's attributes; with the writeback cache its change and
 * modification times are left zero: the kernel keeps them (livedb.c). */
int dbm_livedb_getattr(struct dbm_livedb *l, uint64_t id, struct stat *st);
/* Calls cb(name, id, st) for each file, sorted by name, from index start
 * (0-based); stops when cb returns non-zero. Returns 0 or -errno. */
int dbm_livedb_list(struct dbm_livedb *l, size_t start,
                    int (*cb)(const char *name, uint64_t id, const struct stat *st, void *arg), void *arg);
/* Creates (or opens, without O_EXCL) name; takes a lookup reference and
 * returns a handle. -EPERM for names SQLite would not make (logged). */
int dbm_livedb_create(struct dbm_livedb *l, const char *name, int flags, uint64_t *id, struct stat *st,
                      struct dbm_dbhandle **h);
int dbm_livedb_unlink(struct dbm_livedb *l, const char *name);
/* setattr: size changes (truncate) are real; others are refused or ignored. */
int dbm_livedb_truncate(struct dbm_livedb *l, uint64_t id, uint64_t size, struct stat *st);

/* ---- open files ---- */
int dbm_livedb_open_file(struct dbm_livedb *l, uint64_t id, int flags, struct dbm_dbhandle **h);
/* The daemon's own handle (its writeback flushes open files through the
 * mount): it is no application's, and its close is no sync point. */
void dbm_livedb_handle_set_own(struct dbm_dbhandle *h);
/* The backing descriptor, for zero-copy reads (fsops splices from it). */
int dbm_livedb_handle_fd(struct dbm_dbhandle *h);
/* Passthrough: the backing id a new handle's open reply carries (> 0), or 0
 * to serve it through the daemon. WAL and journal files only: capture reads
 * what SQLite wrote there when it syncs the file, ends its write transaction
 * or checkpoints (capture.c). *cacheable: whether the kernel may keep the
 * file's page cache across opens (not for a file passthrough writes may
 * bypass; always with the writeback cache, where the kernel's copy leads). */
int dbm_livedb_handle_passthrough(struct dbm_dbhandle *h, int *cacheable);
/* Whether the handle must open with direct I/O: a journal with the writeback
 * cache, so that its writes (PERSIST's commit among them) reach the daemon in
 * order with the commits they mark. */
int dbm_livedb_handle_direct(struct dbm_dbhandle *h);
ssize_t dbm_livedb_write(struct dbm_dbhandle *h, const void *buf, size_t size, off_t off);
/* Whether reads must come through dbm_livedb_read (a transaction's pages
 * wait in a shadow) rather than from the backing descriptor. */
int dbm_livedb_shadowed(struct dbm_dbhandle *h);
ssize_t dbm_livedb_read(struct dbm_dbhandle *h, void *buf, size_t size, off_t off);
/* tid: the calling thread (the writer's own sync tells, with the writeback
 * cache, that the kernel has written its file back). */
int dbm_livedb_fsync(struct dbm_dbhandle *h, int datasync, pid_t tid);
/* fsyncdir on db/: makes creations and removals of databases, WALs and
 * super-journals durable (journals need not be: see durable.c). */
int dbm_livedb_fsyncdir(struct dbm_livedb *l);
int dbm_livedb_fallocate(struct dbm_dbhandle *h, int mode, off_t off, off_t len);
/* close() of one descriptor: drops the POSIX locks of lock_owner. */
int dbm_livedb_flush(struct dbm_dbhandle *h, uint64_t lock_owner);
void dbm_livedb_release(struct dbm_dbhandle *h);
/* POSIX locks held by the daemon. sleep: wait for a conflicting lock
 * (interrupted() is polled; may be NULL). */
int dbm_livedb_getlk(struct dbm_dbhandle *h, uint64_t owner, struct flock *fl);
int dbm_livedb_setlk(struct dbm_dbhandle *h, uint64_t owner, const struct flock *fl, int sleep,
                     int (*interrupted)(void *), void *arg);

/* ---- retention ---- */
/* Drops history older than horizon_ns from every live database's timeline
 * (the page store keeps what is still needed). Runs beside writers. Returns
 * bytes freed. */
uint64_t dbm_livedb_gc(struct dbm_livedb *l, uint64_t horizon_ns);

/* ---- reports ---- */
/* Appends per-database "key: value" lines for info/status. */
void dbm_livedb_report(struct dbm_livedb *l, struct dbm_sbuf *b);
size_t dbm_livedb_count(struct dbm_livedb *l);

#endif
