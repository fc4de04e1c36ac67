/* pgtxn.c - streamed transactions of the page store (dbm_tl_txn_*, see
 * pagestore.h): a transaction of any size, written as it comes.
 *
 * The parts go into the active segment past its end, where readers do not
 * look, and their page versions into x->p; the commit record makes them one
 * transaction (recovery cuts parts without it), and publication adds x->p to
 * the segment's index under the write lock. The transaction stays in the
 * segment where it began, however large: the segment is sealed at the next
 * append or begin. The records are written by pgseg.c; their format is
 * documented at the top of pagestore.c (record version 2).
 *
 * Locking (the order is at the top of pagestore.c): every call holds the
 * timeline's append_lock (2) throughout, which serialises it with appends,
 * images and gc; the timeline's rwlock (3) is write-locked only to reserve
 * room in the segment's index and to publish the commit. */
#include "pagestore.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#include "pagestore_i.h"

struct dbm_tl_txn {
    struct dbm_timeline *t;
    struct pgs_seg *g;           /* the segment it stays in */
    uint64_t txid;
    int err;                     /* nonzero: failed, the log already cut back */
    struct pgs_pending p;        /* under t->append_lock */
};

int dbm_tl_txn_begin(struct dbm_timeline *t, struct dbm_tl_txn **out)
{
    struct dbm_tl_txn *x = calloc(1, sizeof *x);
    if (!x)
        return -ENOMEM;
    pthread_mutex_lock(&t->append_lock);
    int rc = t->bad_txid ? -EIO : t->txn ? -EBUSY : 0;
    if (!rc)
        rc = dbm_pgs_tl_active(t, PGS_COMMIT_LEN, &x->g);
    if (!rc) {
        x->t = t;
        x->txid = t->last_txid + 1;
        dbm_pgs_pend_init(&x->p, x->g->end);
        t->txn = x;
    }
    pthread_mutex_unlock(&t->append_lock);
    if (rc) {
        free(x);
        return rc;
    }
    *out = x;
    return 0;
}

/* Fails x with rc: cuts the log back to where x began (always after a failed
 * write, which may have left bytes even where no part was counted; on abort
 * only if a part was written). append_lock held. */
static void txn_fail(struct dbm_tl_txn *x, int rc, int failed_write)
{
    if (failed_write || x->p.off > x->g->end)
        dbm_pgs_seg_cut(x->g);
    dbm_pgs_pend_free(&x->p);
    dbm_pgs_pend_init(&x->p, x->g->end);
    x->err = rc;
}

int dbm_tl_txn_add(struct dbm_tl_txn *x, const struct dbm_page_write *pages, size_t n)
{
    if (!dbm_pgs_pages_valid(pages, n))
        return -EINVAL;
    struct dbm_timeline *t = x->t;
    pthread_mutex_lock(&t->append_lock);
    int rc = x->err;
    if (!rc) {
        rc = dbm_pgs_seg_write_parts(x->g, &x->p, x->txid, pages, n, t->s->segment_bytes);
        if (rc)
            txn_fail(x, rc, 1);
    }
    pthread_mutex_unlock(&t->append_lock);
    return rc;
}

/* Ends x (append_lock held): clears it from t and frees it. */
static void txn_end(struct dbm_tl_txn *x)
{
    x->t->txn = NULL;
    dbm_pgs_pend_free(&x->p);
    free(x);
}

int dbm_tl_txn_commit(struct dbm_tl_txn *x, uint64_t commit_ns, uint32_t db_pages, uint64_t *txid_out)
{
    struct dbm_timeline *t = x->t;
    struct pgs_seg *g = x->g;
    uint64_t txid = x->txid;
    pthread_mutex_lock(&t->append_lock);
    int rc = x->err;
    commit_ns = dbm_pgs_tl_clamp_ns(t, commit_ns);
    if (!rc) {
        pthread_rwlock_wrlock(&t->rw);
        rc = dbm_pgs_seg_reserve(g, x->p.n);
        pthread_rwlock_unlock(&t->rw);
    }
    if (!rc)
        rc = dbm_pgs_seg_write_commit(g, &x->p, txid, commit_ns, db_pages, t->s->segment_bytes);
    if (rc) {
        if (!x->err)
            txn_fail(x, rc, 1);
        txn_end(x);
        pthread_mutex_unlock(&t->append_lock);
        return rc;
    }
    uint64_t len = x->p.off - g->end;
    pthread_rwlock_wrlock(&t->rw);
    dbm_pgs_seg_publish_pending(g, &x->p, txid, commit_ns, db_pages);
    int want_image = dbm_pgs_tl_committed(t, txid, commit_ns, db_pages, len);
    pthread_rwlock_unlock(&t->rw);
    txn_end(x);
    if (want_image)
        dbm_pgs_tl_image_soon(t, txid);
    pthread_mutex_unlock(&t->append_lock);
    if (txid_out)
        *txid_out = txid;
    return 0;
}

void dbm_tl_txn_abort(struct dbm_tl_txn *x)
{
    if (!x)
        return;
    struct dbm_timeline *t = x->t;
    pthread_mutex_lock(&t->append_lock);
    if (!x->err)
        txn_fail(x, -ECANCELED, 0);
    txn_end(x);
    pthread_mutex_unlock(&t->append_lock);
}
