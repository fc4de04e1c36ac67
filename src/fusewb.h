/* fusewb.h - FUSE's writeback cache, the daemon's side of it. Part of the
 * FUSE glue (with fsops, fusepass, fuseuring and main).
 *
 * With it the kernel keeps what SQLite writes to a database and its WAL in
 * its page cache and sends it when the file is synced, closed or written
 * back: one request per run of pages instead of one per page write (a
 * speedtest1 run in DELETE mode made 871,675 WRITE requests without it and
 * 1,997 with it; bench/README.md). A commit point that SQLite did not sync
 * first has the kernel write the file back (livewb.c), through a descriptor
 * opened on the file by handle through the mount.
 *
 * That is done by a helper process, never by the daemon: a daemon thread
 * waiting on its own mount cannot die (kill -9 leaves it in the kernel
 * waiting for a reply nobody sends, the mount hung for good), while a
 * helper waiting on a dead daemon is released when the connection ends.
 *
 * Passthrough (fusepass.h) cannot be used with it: the kernel refuses the
 * combination. Needs CAP_DAC_READ_SEARCH (open_by_handle_at) and more than
 * one thread (a commit point waits for writes other threads serve).
 *
 * Thread safety: every function may be called from any thread. */
#ifndef DBM_FUSEWB_H
#define DBM_FUSEWB_H

#include <stdint.h>
#include <sys/types.h>

struct dbm_sbuf;
struct dbm_fusewb;

enum dbm_wb_mode { DBM_WB_OFF, DBM_WB_AUTO };

/* The fewest /dev/fuse loop threads the cache is used with: a commit point
 * that has the kernel write a file back holds its thread while others serve
 * the writes (and other commit points wait meanwhile). */
#define DBM_WB_MIN_THREADS 8
/* The most a mount may have the kernel keep unwritten: the space reserve
 * holds twice that (reserve.h). */
#define DBM_WB_MAX_DIRTY (64ull << 20)

/* Decides whether the cache is used (auto: unless threads, the /dev/fuse
 * loop's, is below DBM_WB_MIN_THREADS (0: single-threaded, -s), or without
 * CAP_DAC_READ_SEARCH) for a mount on mountpoint (absolute; copied). NULL
 * only when out of memory. */
struct dbm_fusewb *dbm_fusewb_create(enum dbm_wb_mode mode, unsigned threads, const char *mountpoint);
void dbm_fusewb_destroy(struct dbm_fusewb *w); /* accepts NULL; closes the mount descriptor */

/* Whether the INIT reply asks for the writeback cache. Accepts NULL (no). */
int dbm_fusewb_wanted(const struct dbm_fusewb *w);
/* INIT: whether the kernel offered it (if not, it is off from now on, and
 * the status says so). */
void dbm_fusewb_init(struct dbm_fusewb *w, int offered);

/* Starts the helper process that does the writing back (see fusewb.c): call
 * once, before the daemon starts any thread (it forks), and after it has
 * moved to the background. 0 or -errno (the cache is then off, and the
 * status says why). */
int dbm_fusewb_start(struct dbm_fusewb *w);
/* Once mounted: notes the mount's device (/proc/self/mountinfo), which the
 * helper checks the mountpoint against before each request. */
void dbm_fusewb_mounted(struct dbm_fusewb *w);
/* The most the kernel keeps unwritten of the mount (its bdi's max_bytes,
 * once mounted), lowered to cap if it was more and the kernel lets us; 0 if
 * unknown. */
uint64_t dbm_fusewb_cap_dirty(const struct dbm_fusewb *w, uint64_t cap);
/* Has the kernel write back what it caches of inode ino of the mount: 0, or
 * -errno (a write-back the daemon refused: -EIO or -ENOSPC; no helper). */
int dbm_fusewb_flush(struct dbm_fusewb *w, uint64_t ino);
/* Has the kernel drop the pages of inode ino it holds clean (writes the
 * daemon refused are kept as if written), after cutting its idea of the
 * file's size to size if size >= 0 (a refused write that grew the file):
 * 0 or -errno. */
int dbm_fusewb_reset(struct dbm_fusewb *w, uint64_t ino, int64_t size);
/* Whether thread tid is the daemon's or its helper's: their opens are no
 * application's. Accepts NULL. */
int dbm_fusewb_is_own(const struct dbm_fusewb *w, pid_t tid);

/* Appends the fuse_writeback line. Accepts NULL (off). */
void dbm_fusewb_report(const struct dbm_fusewb *w, struct dbm_sbuf *b);

#endif
