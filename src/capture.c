/* capture.c - commit detection: turns what SQLite writes into the files of a
 * database into committed transactions in the page store, recorded (durably)
 * before the file operation that commits them reaches the disk.
 *
 * Rollback-journal modes: the daemon tracks the pages written to the
 * database file while the journal is hot; the commit point is the journal's
 * deletion (DELETE), truncation to 0 (TRUNCATE) or zeroed header (PERSIST).
 * The dirty pages are read back from the database file and appended before
 * that operation is carried out. A ROLLBACK that had spilled pages restores
 * them exactly: pages equal to the recorded ones are dropped, so a rolled
 * back transaction is never recorded.
 *
 * WAL mode: frames are validated (salts, cumulative checksums) as they
 * complete; a valid commit frame closes a transaction, appended before the
 * write of that frame returns. A cursor file (capture/<db>.walpos) says how
 * far the current WAL generation was captured, so capture resumes from the
 * on-disk WAL after a crash (it is written without fsync: if lost, frames
 * are captured again, which records the same state twice, never less).
 *
 * All functions run with b->mu held (livedb_i.h). */
#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crc32c.h"
#include "livedb_i.h"
#include "log.h"
#include "pagestore.h"
#include "sysio.h"
#include "strutil.h"
#include "timefmt.h"

#define SUPPORTED_MODES "supported: journal_mode DELETE, TRUNCATE, PERSIST or WAL"

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* ---- dirty page set ---- */

static int dirty_add(struct base *b, uint32_t pgno)
{
    size_t byte = pgno / 8;
    if (byte >= b->dirty_bits_len) {
        size_t nl = b->dirty_bits_len ? b->dirty_bits_len : 64;
        while (nl <= byte)
            nl *= 2;
        uint8_t *tmp = realloc(b->dirty_bits, nl);
        if (!tmp)
            return -ENOMEM;
        memset(tmp + b->dirty_bits_len, 0, nl - b->dirty_bits_len);
        b->dirty_bits = tmp;
        b->dirty_bits_len = nl;
    }
    if (b->dirty_bits[byte] & (1u << (pgno % 8)))
        return 0;
    if (dbm_grow((void **)&b->dirty, &b->dirty_cap, b->ndirty + 1, sizeof *b->dirty) < 0)
        return -ENOMEM;
    b->dirty_bits[byte] |= (uint8_t)(1u << (pgno % 8));
    b->dirty[b->ndirty++] = pgno;
    return 0;
}

static void dirty_clear(struct base *b)
{
    for (size_t i = 0; i < b->ndirty; i++)
        b->dirty_bits[b->dirty[i] / 8] = 0;
    b->ndirty = 0;
    dbm_wb_txn_clear(b);
}

static int u32_cmp(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* ---- timeline ---- */

static int ensure_timeline(struct base *b, uint32_t page_size, uint64_t now)
{
    struct dbm_livedb *l = b->l;
    if (b->tl && b->page_size == page_size)
        return 0;
    if (b->tl) {
        /* a VACUUM changed the page size: the name continues on a new timeline */
        dbm_notice("%s/%s: page size changed from %u to %u: history continues on a new timeline", l->env, b->name,
                   b->page_size, page_size);
        dbm_cap_forget_history(b, now);
    }
    uint64_t id;
    int rc = dbm_tl_create(l->store, page_size, 0, 0, &id);
    if (rc < 0)
        return rc;
    if ((rc = dbm_tl_open(l->store, id, &b->tl)) < 0) {
        dbm_tl_drop(l->store, id);
        return rc;
    }
    if ((rc = dbm_dur_timeline_new(b, id)) < 0 ||
        (rc = dbm_catalog_db_add(l->cat, l->env, b->name, id, now, &b->cat_id)) < 0) {
        dbm_tl_close(b->tl);
        b->tl = NULL;
        dbm_tl_drop(l->store, id);
        return rc;
    }
    b->page_size = page_size;
    b->db_pages = 0;
    dbm_info("%s/%s: recording history on timeline %llx", l->env, b->name, (unsigned long long)id);
    return 0;
}

void dbm_cap_forget_history(struct base *b, uint64_t now_ns)
{
    if (b->cat_id)
        dbm_catalog_db_drop(b->l->cat, b->cat_id, now_ns);
    dbm_tl_close(b->tl);
    b->tl = NULL;
    b->cat_id = 0;
    b->page_size = 0;
    b->db_pages = 0;
    b->last_counter = 0;
    dirty_clear(b);
    b->wal_ok = 0;
    dbm_dur_forget(b);
}

void dbm_cap_free(struct base *b)
{
    dbm_tl_close(b->tl);
    b->tl = NULL;
    free(b->dirty_bits);
    free(b->dirty);
    free(b->wb_refused);
    free(b->wv.refs);
    if (b->cursor_fd >= 0)
        close(b->cursor_fd);
    if (b->sh_fd >= 0)
        close(b->sh_fd);
    if (b->mark_fd >= 0)
        close(b->mark_fd);
}

/* The database size in pages a commit leaves: the in-header size when it is
 * valid (a VACUUM that shrinks the file truncates it only after the journal
 * is gone), the file's size otherwise. */
static uint32_t committed_pages(const struct dbm_dbhdr *h, uint64_t fsz)
{
    if (h->version_valid == h->change_counter && h->db_pages)
        return h->db_pages;
    return (uint32_t)(fsz / h->page_size);
}

/* Reads page 1's header from the database file (as the open transaction
 * sees it). -ENODATA if it is empty. */
static int read_dbhdr(struct base *b, struct dbm_dbhdr *h, uint64_t *size)
{
    uint8_t buf[100];
    int rc = dbm_cap_ensure_fd(b->l, b->db);
    if (rc < 0)
        return rc;
    if (dbm_dur_active(b))
        *size = dbm_dur_size(b);
    else if ((rc = dbm_fd_size(b->db->fd, size)) < 0)
        return rc;
    if (*size < 100)
        return -ENODATA;
    ssize_t n = dbm_dur_pread(b, buf, sizeof buf, 0);
    if (n < (ssize_t)sizeof buf)
        return n < 0 ? (int)n : -EIO;
    return dbm_dbhdr_parse(buf, sizeof buf, h);
}

/* A transaction being recorded in batches: memory stays at BATCH_PAGES
 * pages whatever the transaction's size. */
#define BATCH_BYTES (1u << 20)
#define WAL_CHUNK_BYTES (1u << 20) /* frames a capture reads at once, and keeps for its record */

struct batch {
    struct base *b;
    struct dbm_tl_txn *x;
    uint32_t ps;
    uint8_t *data;             /* cap pages */
    struct dbm_page_write *pw;
    size_t n, cap;
    uint64_t added;            /* pages handed to the store */
    uint64_t now;
};

static int batch_begin(struct batch *bt, struct base *b, uint32_t page_size)
{
    memset(bt, 0, sizeof *bt);
    bt->b = b;
    bt->ps = page_size;
    bt->now = dbm_now_ns();
    bt->cap = BATCH_BYTES / page_size ? BATCH_BYTES / page_size : 1;
    bt->data = malloc(bt->cap * page_size);
    bt->pw = malloc(bt->cap * sizeof *bt->pw);
    if (!bt->data || !bt->pw)
        return -ENOMEM;
    int rc = ensure_timeline(b, page_size, bt->now);
    if (rc == 0)
        rc = dbm_tl_txn_begin(b->tl, &bt->x);
    return rc;
}

/* The next page slot (page_size bytes) to fill; commit it with batch_push. */
static uint8_t *batch_slot(struct batch *bt) { return bt->data + bt->n * bt->ps; }

static int batch_flush(struct batch *bt)
{
    if (bt->n == 0)
        return 0;
    int rc = dbm_tl_txn_add(bt->x, bt->pw, bt->n);
    bt->added += bt->n;
    bt->n = 0;
    return rc;
}

/* Adds the page just written into batch_slot. */
static int batch_push(struct batch *bt, uint32_t pgno)
{
    bt->pw[bt->n].pgno = pgno;
    bt->pw[bt->n].data = batch_slot(bt);
    if (++bt->n == bt->cap)
        return batch_flush(bt);
    return 0;
}

static void batch_end(struct batch *bt)
{
    dbm_tl_txn_abort(bt->x); /* accepts NULL: after a commit x is NULL */
    free(bt->data);
    free(bt->pw);
}

/* Makes the transaction durable; on success updates what the base knows.
 * page1: the transaction's page 1 if it has one (for its change counter). */
static int batch_commit(struct batch *bt, uint32_t db_pages, const uint8_t *page1)
{
    struct base *b = bt->b;
    int rc = batch_flush(bt);
    uint64_t txid;
    if (rc == 0) {
        rc = dbm_tl_txn_commit(bt->x, bt->now, db_pages, &txid);
        bt->x = NULL;
    }
    if (rc < 0) {
        dbm_err("%s/%s: cannot record a commit (%s): the commit is refused and SQLite will roll it back", b->l->env,
                b->name, strerror(-rc));
        return rc;
    }
    b->db_pages = db_pages;
    b->captured++;
    if (page1)
        b->last_counter = be32(page1 + 24);
    return 0;
}

/* ---- rollback-journal modes ---- */

int dbm_cap_db_check_write(struct base *b, off_t off, size_t size)
{
    (void)off, (void)size;
    if (b->wal_mode || b->journal_active)
        return 0;
    b->refused++;
    dbm_err("%s/%s: write to the database with no rollback journal and not in WAL mode (journal_mode MEMORY or "
            "OFF?): refused, history would be lost; " SUPPORTED_MODES,
            b->l->env, b->name);
    return -EPERM;
}

int dbm_cap_db_written(struct base *b, const void *buf, size_t size, off_t off)
{
    if (off == 0 && size >= 100) {
        struct dbm_dbhdr h;
        if (dbm_dbhdr_parse(buf, size, &h) == 0) {
            b->hdr_ps = h.page_size;
            b->wal_mode = h.write_version == 2;
        }
    }
    /* Pages written while the journal is hot belong to a rollback-mode
     * transaction (including the one that switches to or from WAL); other
     * writes are WAL checkpoints, whose frames were recorded already. */
    if (!b->journal_active || size == 0)
        return 0;
    if (!b->hdr_ps) {
        struct dbm_dbhdr h;
        uint64_t fsz;
        if (read_dbhdr(b, &h, &fsz) == 0) {
            b->hdr_ps = h.page_size;
        } else {
            /* a new database whose first transaction spills before page 1
             * is written: the journal's header carries the page size */
            uint8_t jh[28];
            struct dbm_jhdr j;
            if (!b->journal || dbm_pread_all(b->journal->fd, jh, sizeof jh, 0) != sizeof jh ||
                dbm_jhdr_parse(jh, sizeof jh, &j) != 1) { /* 1: a hot header, page size checked */
                dbm_err("%s/%s: write to the database before its page size is known: refused", b->l->env, b->name);
                return -EIO;
            }
            b->hdr_ps = j.page_size;
        }
    }
    uint32_t first = (uint32_t)((uint64_t)off / b->hdr_ps) + 1;
    uint32_t last = (uint32_t)(((uint64_t)off + size - 1) / b->hdr_ps) + 1;
    for (uint32_t p = first; p <= last; p++) {
        int rc = dirty_add(b, p);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Whether the journal's header holds the magic now; id (if not NULL): the
 * header's nonce, original size, sector and page sizes, which SQLite draws
 * or sets afresh in each transaction's header. */
static int journal_hot_id(struct base *b, uint8_t id[JHDR_ID_LEN])
{
    uint8_t h[JHDR_ID_OFF + JHDR_ID_LEN];
    struct dbfile *j = b->journal;
    if (j->hdr_ok) {
        /* read before every database write in passthrough: without a syscall */
        memcpy(h, j->hdr_map, sizeof h);
    } else {
        ssize_t n = dbm_pread_all(j->fd, h, sizeof h, 0);
        if (n != sizeof h)
            return 0;
        if (!j->hdr_map) {
            void *m = mmap(NULL, JHDR_MAP_LEN, PROT_READ, MAP_SHARED, j->fd, 0);
            j->hdr_map = m == MAP_FAILED ? NULL : m;
        }
        j->hdr_ok = j->hdr_map != NULL; /* the file holds the header's bytes */
    }
    if (!dbm_journal_magic(h))
        return 0;
    if (id)
        memcpy(id, h + JHDR_ID_OFF, JHDR_ID_LEN);
    return 1;
}

static int journal_hot(struct base *b) { return journal_hot_id(b, NULL); }

int dbm_cap_journal_written(struct base *b, off_t off, size_t size)
{
    (void)size;
    if (off >= 8 || !b->journal)
        return 0;
    b->journal_active = journal_hot(b);
    return 0;
}

int dbm_cap_journal_look(struct base *b)
{
    if (!b->journal || !__atomic_load_n(&b->journal_blind, __ATOMIC_ACQUIRE))
        return 0;
    uint8_t id[JHDR_ID_LEN];
    int hot = journal_hot_id(b, id);
    if (b->journal_active && (!hot || memcmp(id, b->jhdr_id, sizeof id) != 0)) {
        /* the transaction these pages belong to committed without a
         * request (its header zeroed, then maybe the next one's written:
         * locking_mode=EXCLUSIVE with synchronous=OFF): record it first */
        int rc = dbm_cap_journal_commit(b, JM_PERSIST);
        if (rc < 0)
            return rc;
    }
    b->journal_active = hot;
    if (hot)
        memcpy(b->jhdr_id, id, sizeof id);
    return 0;
}

int dbm_cap_journal_sync(struct base *b, int told)
{
    uint8_t id[JHDR_ID_LEN];
    if (!b->journal_active || !b->journal || !__atomic_load_n(&b->journal_blind, __ATOMIC_ACQUIRE) ||
        (journal_hot_id(b, id) && memcmp(id, b->jhdr_id, sizeof id) == 0))
        return 0;
    /* PERSIST's commit: the header was zeroed (written already, unlike
     * through the daemon, where the write waits for the record) */
    int rc = dbm_cap_journal_commit(b, JM_PERSIST);
    if (rc < 0 && told) {
        /* the journal is no longer hot, so nothing rolls the transaction
         * back: its pages (kept out of the file) are dropped, and SQLite,
         * told the commit failed, reads the last recorded state. (Not told,
         * SQLite counts it committed: it stays pending, and the next sync
         * point or commit records it.) */
        dbm_dur_discard(b);
        dirty_clear(b);
        b->journal_active = 0;
    }
    return rc;
}

/* 1 if page pgno (in data) equals what the history holds at last_txid (its
 * last transaction; 0: none), 0 if not, -errno. cur: page_size bytes. */
static int same_as_recorded(struct base *b, uint64_t last_txid, uint32_t pgno, const uint8_t *data, uint8_t *cur)
{
    if (!last_txid)
        return 0;
    int rc = dbm_tl_read_page(b->tl, last_txid, pgno, cur);
    if (rc < 0)
        return rc;
    return rc == 0 && memcmp(cur, data, b->page_size) == 0;
}

/* The commit point of a transaction that lost a write the kernel sent back
 * (livewb.c): refused, so the journal stays hot and SQLite rolls back. */
static int refuse_lost(struct base *b)
{
    dbm_err("%s/%s: commit refused: a write of this transaction that the kernel sent back later was refused "
            "(logged above), so the database would lack it; SQLite rolls the transaction back",
            b->l->env, b->name);
    return -EIO;
}

/* Records the transaction whose pages are in the dirty set, reading them
 * back (from the shadow or the database file) a batch at a time. whole:
 * record every dirty page even if the history already holds it (a resync).
 * The caller clears the dirty set. */
static int rb_commit(struct base *b, int whole)
{
    /* a refused write left: only a rollback (which rewrites what it
     * changed, and truncates what it added) may end the transaction */
    int lost = dbm_wb_txn_lost(b, 0, 0);
    if (!b->db || (b->ndirty == 0 && !lost))
        return 0;
    struct dbm_dbhdr h;
    uint64_t fsz;
    int rc = read_dbhdr(b, &h, &fsz);
    if (rc == -ENODATA)
        return lost ? refuse_lost(b) : 0;
    if (rc < 0) {
        dbm_err("%s/%s: page 1 is not a SQLite header at commit: refusing to record garbage", b->l->env, b->name);
        return -EIO;
    }
    uint32_t ps = h.page_size, db_pages = committed_pages(&h, fsz);
    /* no new change counter: a rollback restoring pages, or exclusive
     * locking mode (which bumps it once): record only what really changed */
    int filter = !whole && b->tl && b->page_size == ps && h.change_counter == b->last_counter;
    /* refused bytes past the size it commits are not part of it; a header
     * that may be refused says nothing */
    lost = lost && dbm_wb_txn_lost(b, 0, (uint64_t)db_pages * ps);
    if (lost && (!filter || dbm_wb_txn_lost(b, 0, 100)))
        return refuse_lost(b);
    struct dbm_tl_stat tst;
    uint64_t last_txid = filter && dbm_tl_stat(b->tl, &tst) == 0 ? tst.last_txid : 0;
    qsort(b->dirty, b->ndirty, sizeof *b->dirty, u32_cmp);
    struct batch bt;
    uint8_t page1[100], *cur = filter ? malloc(ps) : NULL;
    int have1 = 0;
    if (filter && !cur) {
        rc = -ENOMEM;
        goto out_nobatch;
    }
    if ((rc = batch_begin(&bt, b, ps)) < 0)
        goto out;
    for (size_t i = 0; i < b->ndirty && b->dirty[i] <= db_pages; i++) {
        uint32_t pgno = b->dirty[i];
        uint8_t *slot = batch_slot(&bt);
        ssize_t r = dbm_dur_pread(b, slot, ps, (off_t)(pgno - 1) * ps);
        if (r != (ssize_t)ps) {
            rc = r < 0 ? (int)r : -EIO;
            goto out;
        }
        if (filter && (rc = same_as_recorded(b, last_txid, pgno, slot, cur)) != 0) {
            if (rc < 0)
                goto out;
            continue;
        }
        if (pgno == 1) {
            memcpy(page1, slot, sizeof page1);
            have1 = 1;
        }
        if ((rc = batch_push(&bt, pgno)) < 0)
            goto out;
    }
    if (filter && bt.added + bt.n == 0 && db_pages == b->db_pages) {
        rc = 0; /* nothing changed: not a transaction */
        goto out;
    }
    if (lost) {
        rc = refuse_lost(b);
        goto out;
    }
    rc = batch_commit(&bt, db_pages, have1 ? page1 : NULL);
out:
    batch_end(&bt);
out_nobatch:
    free(cur);
    return rc;
}

int dbm_cap_journal_commit(struct base *b, enum jmode how)
{
    __atomic_store_n(&b->db_clean, 0, __ATOMIC_RELEASE); /* the next transaction's writer syncs afresh (livewb.c) */
    int rc = dbm_dur_prepare_commit(b);
    if (rc == 0)
        rc = rb_commit(b, 0);
    if (rc == 0)
        rc = dbm_dur_apply(b); /* recorded: now the file may have it */
    if (rc < 0)
        return rc;
    dirty_clear(b);
    dbm_dur_end_txn(b);
    b->journal_active = 0;
    b->mode = how;
    return 0;
}

/* ---- WAL ---- */

struct walpos {
    uint32_t magic, salt1, salt2, s1, s2, page_size;
    uint64_t next_frame;
    uint32_t pad, crc;
};
#define WALPOS_MAGIC 0x57504f53u

void dbm_cap_path(const struct base *b, const char *ext, char *out, size_t n)
{
    snprintf(out, n, "%s/%s.%s", b->l->capdir, b->name, ext);
}

static void cursor_save(struct base *b)
{
    if (b->cursor_fd < 0) {
        char path[4096];
        dbm_cap_path(b, "walpos", path, sizeof path);
        b->cursor_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
        if (b->cursor_fd < 0)
            return;
    }
    struct walpos p = { .magic = WALPOS_MAGIC, .salt1 = b->wh.salt1, .salt2 = b->wh.salt2, .s1 = b->ck.s1,
                        .s2 = b->ck.s2, .page_size = b->wh.page_size, .next_frame = b->next_frame };
    p.crc = dbm_crc32c(0, &p, offsetof(struct walpos, crc));
    if (pwrite(b->cursor_fd, &p, sizeof p, 0) != sizeof p)
        dbm_warn("%s/%s: cannot save the WAL capture cursor: %s", b->l->env, b->name, strerror(errno));
}

static int cursor_load(struct base *b, struct walpos *p)
{
    char path[4096];
    dbm_cap_path(b, "walpos", path, sizeof path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = pread(fd, p, sizeof *p, 0);
    close(fd);
    if (n != sizeof *p || p->magic != WALPOS_MAGIC || p->crc != dbm_crc32c(0, p, offsetof(struct walpos, crc)))
        return -EINVAL;
    return 0;
}

/* ---- WAL frames checked as they are written (struct walval) ---- */

static void wv_reset(struct base *b)
{
    struct walval *v = &b->wv;
    v->live = b->wal_ok;
    v->salt1 = b->wh.salt1;
    v->salt2 = b->wh.salt2;
    v->start = v->end = b->next_frame;
    v->ck = b->ck;
    v->commit_pages = 0;
}

/* b->wv, made to describe the current generation from next_frame if it does
 * not (a capture moved next_frame, a new generation, a drop). */
static struct walval *wv_get(struct base *b)
{
    struct walval *v = &b->wv;
    if (!v->live || v->start != b->next_frame || v->salt1 != b->wh.salt1 || v->salt2 != b->wh.salt2)
        wv_reset(b);
    return v;
}

/* The file changed in frames [first, last]: what was checked there is void. */
static void wv_drop(struct base *b, uint64_t first, uint64_t last)
{
    struct walval *v = &b->wv;
    if (v->live && first < v->end && last >= v->start)
        v->live = 0;
}

/* Bytes [off, off + size) of the WAL changed: the kept header is void if they
 * overlap it. */
static void wv_drop_hdr(struct base *b, uint64_t off, uint64_t size)
{
    struct walval *v = &b->wv;
    if (!v->have_hdr)
        return;
    uint64_t h = dbm_wal_frame_off(b->wh.page_size, v->hdr_frame);
    if (off < h + DBM_WAL_FRAME_HDR_SIZE && off + size > h)
        v->have_hdr = 0;
}

/* Checks frame v->end (header hdr, page data page) against the chain and
 * adds it: 1 if it is valid, 0 if not (or frame end - 1 already commits). */
static int wv_add(struct base *b, struct walval *v, const uint8_t *hdr, const uint8_t *page)
{
    struct dbm_walck ck = v->ck;
    struct dbm_walframe fr;
    if (v->commit_pages || dbm_walframe_check_parts(hdr, page, b->wh.page_size, &b->wh, &ck, &fr) < 0)
        return 0;
    size_t n = (size_t)(v->end - v->start);
    int rc = dbm_grow((void **)&v->refs, &v->cap, n + 1, sizeof *v->refs);
    if (rc < 0)
        return rc;
    v->refs[n].pgno = fr.pgno;
    v->refs[n].idx = (uint32_t)n;
    v->end++;
    v->ck = ck;
    v->commit_pages = fr.commit_pages;
    return 1;
}

/* Nothing learnt from the writes so far holds (the file changed under it). */
static void wv_forget(struct base *b)
{
    b->wv.live = b->wv.have_hdr = 0;
    b->wv.page_frame = 0;
}

void dbm_cap_wal_truncated(struct base *b, uint64_t size)
{
    wv_forget(b);
    if (size == 0) {
        b->wal_ok = 0;
        dbm_dur_wal_restarted(b); /* truncated or removed: SQLite checkpointed every frame first */
    }
}

/* (Re)reads the WAL header; a new generation starts capture at frame 0.
 * 1 if it did, 0 if the generation is the same, -1 if no valid header. */
static int wal_header(struct base *b)
{
    uint8_t buf[DBM_WAL_HDR_SIZE];
    struct dbm_walhdr h;
    if (dbm_pread_all(b->wal->fd, buf, sizeof buf, 0) != sizeof buf || dbm_walhdr_parse(buf, sizeof buf, &h) < 0) {
        b->wal_ok = 0;
        return -1;
    }
    if (b->wal_ok && h.salt1 == b->wh.salt1 && h.salt2 == b->wh.salt2)
        return 0;
    b->wh = h;
    dbm_walck_init(&b->ck, &h);
    b->next_frame = 0;
    b->wal_ok = 1;
    wv_forget(b);
    cursor_save(b);
    return 1;
}

static int walref_cmp(const void *a, const void *b)
{
    const struct walref *x = a, *y = b;
    if (x->pgno != y->pgno)
        return x->pgno < y->pgno ? -1 : 1;
    return x->idx < y->idx ? 1 : x->idx > y->idx ? -1 : 0; /* later frames first */
}

/* Captures the next committed transaction of the WAL, if its frames are
 * complete and valid up to a commit frame at index <= limit. 1 if one was
 * recorded, 0 if none is complete, -errno. Frames not yet checked as they
 * were written are read (a chunk at a time) and checked first (page numbers
 * kept); then the last frame of each page is recorded, a batch at a time. */
static int wal_capture_one(struct base *b, uint64_t limit)
{
    uint32_t ps = b->wh.page_size;
    size_t fsz = DBM_WAL_FRAME_HDR_SIZE + ps;
    struct walval *v = wv_get(b);
    int rc = 0;
    /* the last chunk read here is kept, so that the pages of a transaction
     * that fits in one are recorded from the bytes their checksums were
     * checked on, without reading them again: [cached_from, + ncached) */
    uint8_t *cache = NULL;
    uint64_t cached_from = v->end, ncached = 0;
    if (!v->commit_pages && v->end <= limit) {
        uint64_t per = WAL_CHUNK_BYTES / fsz ? WAL_CHUNK_BYTES / fsz : 1;
        uint64_t cap = limit - v->end < per ? limit - v->end + 1 : per; /* limit may be UINT64_MAX */
        cache = malloc((size_t)cap * fsz);
        if (!cache)
            return -ENOMEM;
        for (uint64_t i = v->end; !v->commit_pages && i <= limit;) {
            uint64_t k = limit - i < cap ? limit - i + 1 : cap, got, j;
            ssize_t r = dbm_pread_all(b->wal->fd, cache, (size_t)k * fsz, (off_t)dbm_wal_frame_off(ps, i));
            got = r > 0 ? (uint64_t)r / fsz : 0; /* the frames past them are not written yet */
            cached_from = i;
            ncached = got;
            for (j = 0; j < got; j++) {
                uint8_t *frame = cache + (size_t)j * fsz;
                if ((rc = wv_add(b, v, frame, frame + DBM_WAL_FRAME_HDR_SIZE)) != 1)
                    break; /* not complete (or a later generation's leftovers) */
                if (v->commit_pages)
                    break;
            }
            if (rc < 0) {
                free(cache);
                return rc;
            }
            if (j < got || got < k)
                break;
            i += got;
        }
    }
    if (!v->commit_pages) {
        free(cache);
        return 0;
    }
    /* the last frame of each page wins; pages past the new size are dropped */
    size_t n = (size_t)(v->end - v->start);
    uint32_t commit_pages = v->commit_pages;
    qsort(v->refs, n, sizeof *v->refs, walref_cmp);
    v->live = 0; /* refs are sorted now: whatever happens, check again */
    struct batch bt;
    uint8_t page1[100];
    int have1 = 0;
    if ((rc = batch_begin(&bt, b, ps)) < 0)
        goto out;
    for (size_t i = 0; i < n; i++) {
        if ((i > 0 && v->refs[i].pgno == v->refs[i - 1].pgno) || v->refs[i].pgno > commit_pages)
            continue;
        uint64_t f = v->start + v->refs[i].idx;
        off_t off = (off_t)dbm_wal_frame_off(ps, f) + DBM_WAL_FRAME_HDR_SIZE;
        uint8_t *slot = batch_slot(&bt);
        if (f >= cached_from && f - cached_from < ncached)
            memcpy(slot, cache + (size_t)(f - cached_from) * fsz + DBM_WAL_FRAME_HDR_SIZE, ps);
        else if (dbm_pread_all(b->wal->fd, slot, ps, off) != (ssize_t)ps) {
            rc = -EIO;
            goto out;
        }
        if (v->refs[i].pgno == 1) {
            memcpy(page1, slot, sizeof page1);
            have1 = 1;
        }
        if ((rc = batch_push(&bt, v->refs[i].pgno)) < 0)
            goto out;
    }
    if ((rc = batch_commit(&bt, commit_pages, have1 ? page1 : NULL)) == 0) {
        b->ck = v->ck;
        b->next_frame = v->end;
        b->mode = JM_WAL;
        cursor_save(b);
        rc = 1;
    }
out:
    batch_end(&bt);
    free(cache);
    if (v->cap > 4096) { /* a big transaction's list: not kept for the small ones */
        free(v->refs);
        v->refs = NULL;
        v->cap = 0;
    }
    return rc;
}

/* Makes a commit frame that could not be recorded invalid on disk, so that
 * no later WAL recovery by SQLite resurrects a commit the writer saw fail. */
static void wal_unsign(struct base *b, uint64_t frame)
{
    static const uint8_t zero[8];
    uint64_t off = dbm_wal_frame_off(b->wh.page_size, frame) + 8; /* salt-1, salt-2 */
    wv_drop(b, frame, frame);
    wv_drop_hdr(b, off, sizeof zero);
    if (dbm_pwrite_all(b->wal->fd, zero, sizeof zero, (off_t)off) < 0)
        dbm_err("%s/%s: cannot invalidate WAL frame %llu after a failed capture: %s", b->l->env, b->name,
                (unsigned long long)frame, strerror(errno));
}

/* SQLite writes a frame as its 24-byte header, then its page: the header is
 * kept, and the page's write checks the frame from the two buffers. Any
 * other shape of write is checked from the file when a commit frame shows. */
int dbm_cap_wal_written(struct base *b, const void *buf, off_t off, size_t size)
{
    if (!b->wal || size == 0)
        return 0;
    if (off < DBM_WAL_HDR_SIZE) {
        /* SQLite starts a generation only once every frame is checkpointed */
        if (wal_header(b) == 1)
            dbm_dur_wal_restarted(b);
        return 0;
    }
    if (!b->wal_ok)
        wal_header(b);
    if (!b->wal_ok)
        return 0;
    uint32_t ps = b->wh.page_size;
    uint64_t fsz = DBM_WAL_FRAME_HDR_SIZE + ps;
    uint64_t first = ((uint64_t)off - DBM_WAL_HDR_SIZE) / fsz;
    uint64_t frame = ((uint64_t)off + size - 1 - DBM_WAL_HDR_SIZE) / fsz;
    uint64_t foff = dbm_wal_frame_off(ps, frame);
    const uint8_t *p = buf;
    wv_drop(b, first, frame); /* a frame checked before is rewritten (SQLite does, within a transaction) */
    wv_drop_hdr(b, (uint64_t)off, size);
    if (frame < b->next_frame)
        return 0;
    struct walval *v = wv_get(b);
    int rc, commits = 0;
    if ((uint64_t)off == foff && size == DBM_WAL_FRAME_HDR_SIZE) {
        memcpy(v->hdr, p, sizeof v->hdr);
        v->hdr_frame = frame;
        v->have_hdr = 1;
        if (v->page_frame != frame + 1)
            return 0; /* its page comes next, and that write tells */
    } else if ((uint64_t)off + size == foff + fsz && frame == v->end &&
               ((uint64_t)off == foff || ((uint64_t)off == foff + DBM_WAL_FRAME_HDR_SIZE && v->have_hdr &&
                                          v->hdr_frame == frame))) {
        /* this write completes the next frame to check */
        rc = (uint64_t)off == foff ? wv_add(b, v, p, p + DBM_WAL_FRAME_HDR_SIZE) : wv_add(b, v, v->hdr, p);
        if (rc == 1 && !v->commit_pages)
            return 0;
        if (rc < 0)
            v->live = 0; /* out of memory: checked from the file below */
        commits = rc == 1;
    }
    if ((uint64_t)off <= foff + DBM_WAL_FRAME_HDR_SIZE && (uint64_t)off + size == foff + fsz)
        v->page_frame = frame + 1; /* if its header is written again, that write may commit */
    if (!commits) {
        /* does the frame holding the write's last byte commit? */
        uint8_t hb[DBM_WAL_FRAME_HDR_SIZE];
        const uint8_t *fh = NULL;
        if ((uint64_t)off <= foff && (uint64_t)off + size >= foff + DBM_WAL_FRAME_HDR_SIZE)
            fh = p + (foff - (uint64_t)off);
        else if (v->have_hdr && v->hdr_frame == frame)
            fh = v->hdr;
        else if (dbm_pread_all(b->wal->fd, hb, sizeof hb, (off_t)foff) == sizeof hb)
            fh = hb;
        if (!fh || be32(fh + 4) == 0 || be32(fh + 8) != b->wh.salt1 || be32(fh + 12) != b->wh.salt2)
            return 0; /* not a commit frame of this generation (yet) */
    }
    while ((rc = wal_capture_one(b, frame)) == 1)
        ;
    if (rc < 0) {
        wal_unsign(b, frame);
        return rc;
    }
    return 0;
}

int dbm_cap_wal_sync(struct base *b)
{
    if (!b->wal || !__atomic_load_n(&b->wal_blind, __ATOMIC_ACQUIRE))
        return 0;
    /* with the writeback cache every change of the file comes through us:
     * unchanged since the last complete pass, it holds nothing new (in
     * passthrough the kernel writes it without us) */
    uint64_t writes = __atomic_load_n(&b->wal_writes, __ATOMIC_ACQUIRE);
    if (b->l->writeback && b->wal_ok && writes == b->wal_seen)
        return 0;
    /* SQLite may have rewritten any frame of an open transaction (it does,
     * within one) */
    wv_forget(b);
    if (wal_header(b) == 1)
        dbm_dur_wal_restarted(b); /* SQLite starts a generation only once every frame is checkpointed */
    if (!b->wal_ok)
        return 0;
    uint64_t wsize;
    int rc = dbm_fd_size(b->wal->fd, &wsize);
    if (rc < 0)
        return rc;
    uint64_t fsz = DBM_WAL_FRAME_HDR_SIZE + b->wh.page_size;
    if (wsize < DBM_WAL_HDR_SIZE + fsz)
        return 0;
    uint64_t last = (wsize - DBM_WAL_HDR_SIZE) / fsz - 1;
    if (last < b->next_frame) {
        b->wal_seen = writes;
        return 0;
    }
    while ((rc = wal_capture_one(b, last)) == 1)
        ;
    if (rc < 0 && b->wv.commit_pages)
        wal_unsign(b, b->wv.end - 1);
    if (rc == 0)
        b->wal_seen = writes; /* an open transaction's frames: its next write-back bumps it */
    return rc < 0 ? rc : 0;
}

/* ---- start-up ---- */

/* Removes the journal or WAL (*slot) a crash left, durably, saying why. */
static int drop_file(struct base *b, struct dbfile **slot, const char *why)
{
    struct dbfile *f = *slot;
    if (!f)
        return 0;
    if (unlinkat(b->l->dirfd, f->name, 0) < 0)
        return -errno;
    fsync(b->l->dirfd);
    f->unlinked = 1;
    *slot = NULL;
    dbm_notice("%s/%s: %s", b->l->env, b->name, why);
    return 0;
}

enum { SUPER_NONE, SUPER_PENDING, SUPER_COMMITTED };

int dbm_cap_journal_super(struct base *b, char *name, size_t n)
{
    uint64_t jsize;
    uint8_t tail[16];
    int fd = b->journal ? b->journal->fd : -1;
    if (fd < 0 || dbm_fd_size(fd, &jsize) < 0 || jsize < 20 ||
        dbm_pread_all(fd, tail, sizeof tail, (off_t)jsize - 16) != sizeof tail ||
        !dbm_journal_names_super(tail, jsize))
        return 0;
    if (!name)
        return 1;
    uint32_t len = be32(tail);
    if (len >= n || dbm_pread_all(fd, name, len, (off_t)(jsize - 16 - len)) != (ssize_t)len)
        return 0;
    name[len] = 0;
    return 1;
}

/* Whether the journal left at start-up belongs to a multi-database
 * transaction (it names a super-journal), and if so whether SQLite committed
 * it: by SQLite's rule, exactly when the super-journal is gone. */
static int journal_super(struct base *b)
{
    char name[4096];
    if (!b->journal || dbm_cap_ensure_fd(b->l, b->journal) < 0 || !dbm_cap_journal_super(b, name, sizeof name))
        return SUPER_NONE;
    const char *base = strrchr(name, '/');
    base = base ? base + 1 : name;
    return faccessat(b->l->dirfd, base, F_OK, 0) == 0 ? SUPER_PENDING : SUPER_COMMITTED;
}

static int drop_journal(struct base *b, const char *why)
{
    b->journal_active = 0;
    return drop_file(b, &b->journal, why);
}

/* Journal records: after each header (one sector), nrec records of
 * (pgno, page, checksum); further headers start at sector boundaries. */
static int journal_pages_match(struct base *b, uint64_t txid, int *match)
{
    int jfd = b->journal->fd;
    struct stat st;
    if (fstat(jfd, &st) < 0)
        return -errno;
    uint8_t hdr[28];
    uint64_t off = 0, jsize = (uint64_t)st.st_size;
    uint8_t *page = malloc(b->page_size), *cur = malloc(b->page_size);
    int rc = 0;
    *match = 1;
    if (!page || !cur) {
        rc = -ENOMEM;
        goto out;
    }
    while (off + 28 <= jsize && *match) {
        struct dbm_jhdr jh;
        if (dbm_pread_all(jfd, hdr, sizeof hdr, (off_t)off) != sizeof hdr || dbm_jhdr_parse(hdr, sizeof hdr, &jh) != 1)
            break;
        if (jh.page_size != b->page_size || jh.sector_size < 28) {
            *match = 0;
            break;
        }
        uint64_t rec = off + jh.sector_size, rsz = 8 + (uint64_t)b->page_size;
        uint64_t nrec = jh.nrec == 0xffffffffu ? (jsize - rec) / rsz : jh.nrec;
        for (uint64_t i = 0; i < nrec && rec + rsz <= jsize && *match; i++, rec += rsz) {
            uint8_t pg[4];
            if (dbm_pread_all(jfd, pg, 4, (off_t)rec) != 4) {
                rc = -EIO;
                goto out;
            }
            uint32_t pgno = be32(pg);
            ssize_t r = dbm_pread_all(b->db->fd, page, b->page_size, (off_t)(pgno - 1) * b->page_size);
            if (r < 0) {
                rc = (int)r;
                goto out;
            }
            if ((size_t)r < b->page_size)
                memset(page + r, 0, b->page_size - (size_t)r);
            if ((rc = dbm_tl_read_page(b->tl, txid, pgno, cur)) < 0)
                goto out;
            *match = memcmp(page, cur, b->page_size) == 0;
        }
        off = (rec + jh.sector_size - 1) / jh.sector_size * jh.sector_size;
        if (jh.nrec == 0xffffffffu || jh.nrec == 0)
            break;
    }
out:
    free(page);
    free(cur);
    return rc;
}

/* A hot journal found at start-up: if the database file already equals the
 * recorded history on every page it covers, the transaction was recorded
 * before the crash (or never reached the file): finish it by removing the
 * journal. Otherwise SQLite rolls it back on the next open. */
static int journal_recover(struct base *b)
{
    if (dbm_cap_ensure_fd(b->l, b->journal) < 0)
        return 0;
    uint8_t hdr[28];
    struct dbm_jhdr jh;
    if (dbm_pread_all(b->journal->fd, hdr, sizeof hdr, 0) != sizeof hdr || dbm_jhdr_parse(hdr, sizeof hdr, &jh) != 1)
        return 0; /* not hot */
    b->journal_active = 1;
    if (!b->tl)
        return 0;
    struct dbm_tl_stat ts;
    int match = 0, rc = dbm_tl_stat(b->tl, &ts);
    if (rc == 0 && ts.last_txid)
        rc = journal_pages_match(b, ts.last_txid, &match);
    else
        match = 0;
    if (rc < 0)
        return rc;
    struct stat st;
    if (match && fstat(b->db->fd, &st) == 0 && (uint64_t)st.st_size >= (uint64_t)ts.db_pages * b->page_size) {
        if (ftruncate(b->db->fd, (off_t)ts.db_pages * b->page_size) < 0 || fsync(b->db->fd) < 0)
            return -errno;
        return drop_journal(b, "finished a transaction recorded before a crash (removed its journal)");
    } else {
        dbm_notice("%s/%s: hot journal left by a crash: SQLite rolls it back on the next open", b->l->env, b->name);
    }
    return 0;
}

static int wal_recover(struct base *b)
{
    if (dbm_cap_ensure_fd(b->l, b->wal) < 0)
        return 0;
    wal_header(b);
    if (!b->wal_ok)
        return 0;
    struct walpos p;
    if (cursor_load(b, &p) == 0 && p.salt1 == b->wh.salt1 && p.salt2 == b->wh.salt2 &&
        p.page_size == b->wh.page_size) {
        b->ck.s1 = p.s1;
        b->ck.s2 = p.s2;
        b->next_frame = p.next_frame;
    }
    int rc, n = 0;
    while ((rc = wal_capture_one(b, UINT64_MAX)) == 1)
        n++;
    if (n)
        dbm_notice("%s/%s: captured %d committed transaction%s from the WAL after a restart", b->l->env, b->name, n,
                   n == 1 ? "" : "s");
    return rc < 0 ? rc : 0;
}

/* Records the whole database file as one transaction (a history that does
 * not match the file, e.g. a file put in place by hand). */
static int resync(struct base *b, uint64_t fsz, uint32_t ps)
{
    dbm_warn("%s/%s: the database file does not match its recorded history: recording it whole", b->l->env, b->name);
    for (uint32_t p = 1; p <= fsz / ps; p++) {
        int rc = dirty_add(b, p);
        if (rc < 0)
            return rc;
    }
    int rc = rb_commit(b, 1);
    dirty_clear(b);
    return rc;
}

static int recover_capture(struct base *b);

int dbm_cap_recover(struct base *b)
{
    int rc = recover_capture(b);
    if (rc == 0 && b->tl)
        rc = dbm_dur_recover_legacy_done(b);
    return rc;
}

static int recover_capture(struct base *b)
{
    struct dbm_livedb *l = b->l;
    if (!b->db)
        return 0;
    struct dbm_cat_db cd;
    int rc = dbm_catalog_db_live(l->cat, l->env, b->name, &cd);
    if (rc == 0) {
        if ((rc = dbm_tl_open(l->store, cd.timeline, &b->tl)) < 0) {
            dbm_err("%s/%s: cannot open its history (timeline %llx): %s", l->env, b->name,
                    (unsigned long long)cd.timeline, strerror(-rc));
            return rc;
        }
        struct dbm_tl_stat ts;
        dbm_tl_stat(b->tl, &ts);
        b->cat_id = cd.id;
        b->page_size = ts.page_size;
        b->db_pages = ts.db_pages;
        uint8_t *p1 = malloc(ts.page_size);
        if (!p1)
            return -ENOMEM;
        if (ts.last_txid && dbm_tl_read_page(b->tl, ts.last_txid, 1, p1) == 0)
            b->last_counter = be32(p1 + 24);
        free(p1);
        /* a crash with the writeback cache: commits whose frames reached the
         * WAL's file are recorded before it goes (SQLite ignores a failed
         * unlock, so one may have been reported done) */
        if (b->wal && dbm_dur_wb_crash_same_boot(b) && (rc = wal_recover(b)) < 0)
            return rc;
        int repaired = 0, sup = journal_super(b);
        if (sup == SUPER_COMMITTED &&
            (rc = drop_journal(b, "finished a multi-database transaction SQLite committed before a crash (removed "
                                  "its journal; the file is recorded as it stands)")) < 0)
            return rc;
        /* a journal beside a repaired file: its transaction either never
         * reached the file or is recorded, so nothing may roll it back;
         * except a multi-database one still pending, which wrote through
         * (SQLite's own protocol) and rolls back on the next open */
        if ((rc = dbm_dur_recover(b, sup == SUPER_COMMITTED, &repaired)) < 0 ||
            ((repaired & DBM_DUR_FILE_REPAIRED) && sup != SUPER_PENDING &&
             (rc = drop_journal(b, "removed the journal a crash left (the file is repaired from the history)")) < 0))
            return rc;
        /* after a reboot the WAL may be torn, and what it held that any
         * writer saw committed is in the store, now in the file */
        if ((repaired & DBM_DUR_WAL_STALE) && b->wal) {
            if ((rc = drop_file(b, &b->wal, "removed the WAL left by a reboot (the file is rebuilt from the history)")) < 0)
                return rc;
            char path[4096];
            dbm_cap_path(b, "walpos", path, sizeof path);
            unlink(path);
        }
    } else if (rc != -ENOENT) {
        return rc;
    }
    struct dbm_dbhdr h;
    uint64_t fsz = 0;
    rc = read_dbhdr(b, &h, &fsz);
    if (rc == 0) {
        b->hdr_ps = h.page_size;
        b->wal_mode = h.write_version == 2;
    }
    if (b->wal && (rc = wal_recover(b)) < 0)
        return rc;
    if (b->journal)
        return journal_recover(b);
    if (b->wal_mode || fsz < 100)
        return 0;
    if (!b->tl || h.change_counter != b->last_counter || b->db_pages != committed_pages(&h, fsz))
        return resync(b, fsz, h.page_size);
    return 0;
}
