/* lockmgr.h - POSIX byte-range locks, kept by the daemon per lock owner.
 *
 * Semantics of fcntl(F_SETLK): an owner's locks never conflict with each
 * other and are split, merged or converted by later requests; a read lock
 * conflicts with another owner's write lock, a write lock with any. Ranges
 * are inclusive; DBM_LOCK_EOF stands for "to the end of the file".
 * Not thread-safe: the caller holds the lock of the file the table belongs to. */
#ifndef DBM_LOCKMGR_H
#define DBM_LOCKMGR_H
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define DBM_LOCK_EOF UINT64_MAX

struct dbm_lock {
    uint64_t owner;
    pid_t pid;
    short type;        /* F_RDLCK or F_WRLCK */
    uint64_t start, end;
};

struct dbm_locktab {
    struct dbm_lock *v;
    size_t n, cap;
};

void dbm_locktab_free(struct dbm_locktab *t);
/* 1 and *conflict filled if another owner's lock conflicts with a lock of
 * type on [start, end]; 0 otherwise. */
int dbm_lock_test(const struct dbm_locktab *t, uint64_t owner, short type, uint64_t start, uint64_t end,
                  struct dbm_lock *conflict);
/* Applies F_RDLCK, F_WRLCK or F_UNLCK for owner on [start, end].
 * -EAGAIN on conflict (nothing changed), -ENOMEM. */
int dbm_lock_set(struct dbm_locktab *t, uint64_t owner, pid_t pid, short type, uint64_t start, uint64_t end);
/* Drops every lock of owner; returns how many ranges were dropped. */
size_t dbm_lock_release_owner(struct dbm_locktab *t, uint64_t owner);
/* 1 if any owner holds a lock of at least type covering byte off. */
int dbm_lock_held_at(const struct dbm_locktab *t, short type, uint64_t off);
/* 1 if owner holds any lock on a byte of [start, end]. */
int dbm_lock_owner_holds(const struct dbm_locktab *t, uint64_t owner, uint64_t start, uint64_t end);

#endif
