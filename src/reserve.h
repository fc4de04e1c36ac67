/* reserve.h - space held back on the state directory's file system for
 * what the kernel has already accepted from SQLite.
 *
 * With the writeback cache a WAL commit under synchronous NORMAL or OFF is
 * done for SQLite before its frames reach the daemon: their write-back, and
 * the store append that records them, come later and have no request left to
 * fail. So the daemon keeps a file of preallocated blocks (STATE/reserve)
 * and frees some of it when such a write meets a full disk; a new write
 * transaction starts only once the reserve is whole again (livewb.c). Freed
 * blocks serve any file of the same file system, so one reserve covers every
 * environment.
 *
 * Thread safety: every function may be called from any thread; the mutex
 * inside is a leaf (no other lock is taken under it). */
#ifndef DBM_RESERVE_H
#define DBM_RESERVE_H

#include <stdint.h>

struct dbm_sbuf;
struct dbm_reserve;

/* Opens (creating if missing) the reserve file name in directory dirfd
 * (borrowed), holding nothing more until dbm_reserve_set_target. 0 or -errno. */
int dbm_reserve_open(int dirfd, const char *name, struct dbm_reserve **out);
void dbm_reserve_close(struct dbm_reserve *r); /* accepts NULL; the file stays */

/* Sets how many bytes to hold (rounded up to whole MiB) and tries to hold
 * them: 0, or -ENOSPC (it holds what there was room for). 0 frees it all. */
int dbm_reserve_set_target(struct dbm_reserve *r, uint64_t bytes);
/* Frees at least n bytes (whole MiB) if it holds any: 1 if it freed some, 0
 * if it holds none (or r is NULL). Logged. */
int dbm_reserve_release(struct dbm_reserve *r, uint64_t n);
/* Makes it whole again: 0 (at once when it is), or -ENOSPC. Accepts NULL. */
int dbm_reserve_refill(struct dbm_reserve *r);

/* Appends the space_reserve line. Accepts NULL ("off"). */
void dbm_reserve_report(struct dbm_reserve *r, struct dbm_sbuf *b);

#endif
