/* livewb.c - the writeback cache (livedb_i.h): when a commit point has the
 * kernel write a file back, and what a refused write-back leaves behind.
 *
 * With FUSE's writeback cache the kernel keeps SQLite's writes to a database
 * and its WAL in its page cache and sends them when the file is synced,
 * closed or written back: one large write where SQLite made hundreds of page
 * writes (bench/README.md). A commit point must read what SQLite wrote. With
 * synchronous FULL or NORMAL SQLite syncs before it commits (the WAL in FULL
 * at each commit), and the kernel writes the file back then: db_clean and
 * wal_clean say so, and nothing more is needed. Otherwise the commit point
 * has the kernel write the file back first, through the FUSE glue's flush
 * (fusewb.h: a helper process does it, so that the daemon never waits on its
 * own mount). */
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/statvfs.h>

#include "livedb_i.h"
#include "log.h"
#include "reserve.h"
#include "strutil.h"
#include "sysio.h"

int dbm_wb_flush_slot(struct base *b, struct dbfile **slot, int force)
{
    struct dbm_livedb *l = b->l;
    if (!l->writeback)
        return 0;
    if (!force && __atomic_load_n(slot == &b->wal ? &b->wal_clean : &b->db_clean, __ATOMIC_ACQUIRE))
        return 0;
    pthread_mutex_lock(&b->mu);
    pthread_mutex_lock(&l->mu);
    struct dbfile *f = *slot;
    int open = f && f->nopen > f->nown; /* else its last close wrote it back */
    uint64_t id = f ? f->id : 0;
    char name[sizeof f->name];
    if (open)
        memcpy(name, f->name, sizeof name);
    pthread_mutex_unlock(&l->mu);
    pthread_mutex_unlock(&b->mu);
    if (!open)
        return 0;
    const struct dbm_livedb_backing *bk = l->backing;
    int rc = bk && bk->wb_flush ? bk->wb_flush(bk->ctx, l->tag, id) : -ENOSYS;
    if (rc < 0)
        dbm_err("%s/%s: the kernel could not write back what SQLite wrote: %s", l->env, name, strerror(-rc));
    return rc;
}

int dbm_wb_pwrite(struct dbm_livedb *l, int fd, const void *buf, size_t size, off_t off)
{
    for (;;) {
        int rc = dbm_pwrite_all(fd, buf, size, off); /* whole or not at all: see livedb_i.h */
        if (rc != -ENOSPC || !l->writeback || !dbm_reserve_release(l->reserve, size))
            return rc;
    }
}

int dbm_wb_room(struct dbm_livedb *l, const char *name)
{
    struct statvfs sv;
    if (!l->writeback)
        return 0;
    if (dbm_reserve_refill(l->reserve) < 0) {
        dbm_err("%s/%s: a write transaction is refused: the state directory's file system has no room to make the "
                "space reserve whole again (what SQLite writes is held by the kernel and written later, so room for it "
                "is kept first); free some space",
                l->env, name);
        return -ENOSPC;
    }
    if (fstatvfs(l->dirfd, &sv) < 0)
        return 0;
    unsigned long long fs = (unsigned long long)sv.f_blocks * sv.f_frsize;
    unsigned long long free = (unsigned long long)sv.f_bavail * sv.f_frsize;
    unsigned long long need = fs / 32 < DBM_WB_MIN_FREE ? fs / 32 : DBM_WB_MIN_FREE;
    if (free >= need)
        return 0;
    dbm_err("%s/%s: a write transaction is refused: the state directory's file system has %llu bytes free (at least "
            "%llu are kept for what SQLite has written and the kernel has not yet written back); free some space",
            l->env, name, free, need);
    return -ENOSPC;
}

void dbm_wb_refused(struct dbfile *f)
{
    if (!f->base->l->writeback)
        return;
    __atomic_store_n(&f->wb_stale, 1, __ATOMIC_RELEASE);
    __atomic_store_n(&f->base->wb_stale, 1, __ATOMIC_RELEASE);
}

void dbm_wb_txn_write(struct base *b, uint64_t off, uint64_t size, int err)
{
    if (!b->l->writeback || size == 0 || (err == 0 && b->nwb_refused == 0))
        return; /* one load per write in the common case */
    uint64_t end = off + size;
    if (err < 0) {
        if (dbm_grow((void **)&b->wb_refused, &b->wb_refused_cap, b->nwb_refused + 1, sizeof *b->wb_refused) < 0)
            b->wb_refused_all = 1;
        else
            b->wb_refused[b->nwb_refused++] = (struct dbm_wb_range){ off, end };
        return;
    }
    /* written: cut [off, end) out of every kept range (one may split in two) */
    for (size_t i = 0; i < b->nwb_refused;) {
        struct dbm_wb_range *r = &b->wb_refused[i];
        if (end <= r->start || off >= r->end) {
            i++;
        } else if (off > r->start && end < r->end) {
            /* split in two; with no room for the tail it stays whole: never less than refused */
            if (dbm_grow((void **)&b->wb_refused, &b->wb_refused_cap, b->nwb_refused + 1, sizeof *b->wb_refused) == 0) {
                r = &b->wb_refused[i]; /* the array may have moved */
                b->wb_refused[b->nwb_refused++] = (struct dbm_wb_range){ end, r->end };
                r->end = off;
            }
            i++;
        } else if (off > r->start) {
            r->end = off;
            i++;
        } else if (end < r->end) {
            r->start = end;
            i++;
        } else {
            *r = b->wb_refused[--b->nwb_refused]; /* wholly rewritten */
        }
    }
}

void dbm_wb_txn_cut(struct base *b, uint64_t size)
{
    for (size_t i = 0; i < b->nwb_refused;) {
        struct dbm_wb_range *r = &b->wb_refused[i];
        if (r->start >= size) {
            *r = b->wb_refused[--b->nwb_refused];
        } else {
            if (r->end > size)
                r->end = size;
            i++;
        }
    }
}

int dbm_wb_txn_lost(const struct base *b, uint64_t off, uint64_t size)
{
    if (b->wb_refused_all)
        return 1;
    for (size_t i = 0; i < b->nwb_refused; i++)
        if (size == 0 || (off < b->wb_refused[i].end && off + size > b->wb_refused[i].start))
            return 1;
    return 0;
}

void dbm_wb_txn_clear(struct base *b)
{
    b->nwb_refused = 0;
    b->wb_refused_all = 0;
}

/* Has the kernel drop what it holds clean of b's file in slot, after cutting
 * its size to the backing file's (cut). No lock held. */
static void reset_slot(struct base *b, struct dbfile **slot, int cut, const char *what)
{
    struct dbm_livedb *l = b->l;
    pthread_mutex_lock(&b->mu);
    struct dbfile *f = *slot;
    uint64_t id = f ? f->id : 0, size = 0;
    int ok = f && f->fd >= 0 && (!cut || dbm_fd_size(f->fd, &size) == 0);
    pthread_mutex_unlock(&b->mu);
    const struct dbm_livedb_backing *bk = l->backing;
    if (!ok || !bk || !bk->wb_reset)
        return;
    dbm_notice("%s/%s: dropping the kernel's copy of %s, which holds writes that were refused", l->env, b->name, what);
    int rc = bk->wb_reset(bk->ctx, l->tag, id, cut ? (int64_t)size : -1);
    if (rc < 0)
        dbm_err("%s/%s: cannot drop the kernel's copy of %s: %s", l->env, b->name, what, strerror(-rc));
}

void dbm_wb_resync(struct base *b)
{
    struct dbm_livedb *l = b->l;
    /* at every lock request: one atomic load unless something was refused */
    if (!l->writeback || !__atomic_load_n(&b->wb_stale, __ATOMIC_ACQUIRE) ||
        !__atomic_exchange_n(&b->wb_stale, 0, __ATOMIC_ACQ_REL))
        return;
    struct dbfile **slots[2] = { &b->db, &b->wal };
    for (int i = 0; i < 2; i++) {
        pthread_mutex_lock(&b->mu);
        int stale = *slots[i] && __atomic_exchange_n(&(*slots[i])->wb_stale, 0, __ATOMIC_ACQ_REL);
        pthread_mutex_unlock(&b->mu);
        if (stale)
            reset_slot(b, slots[i], 0, i ? "the WAL" : "the database");
    }
}

void dbm_wb_reset_db(struct base *b)
{
    if (b->l->writeback)
        reset_slot(b, &b->db, 1, "the database");
}
