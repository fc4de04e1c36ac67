/* durable.c - one durable write per commit in the rollback-journal modes.
 *
 * SQLite makes a commit durable with four syncs (the journal twice, the
 * directory, the database). The page store's append already makes every
 * committed page durable, so the daemon keeps the database file to
 * committed states only and lets the store stand in for the rest:
 *
 * - Pages SQLite writes to the database while its journal is hot go to a
 *   shadow file (capture/<db>.shadow, same offsets), not to the database.
 *   Reads and the size the kernel sees overlay it.
 * - At the commit point (the journal deleted, truncated or zeroed) capture
 *   records the pages from the shadow with one fdatasync of the store, then
 *   they are copied into the database file, without a sync.
 * - So the database file never holds an uncommitted page, and a journal is
 *   never needed to roll it back: fsync of the journal and of the database,
 *   and fsyncdir for a journal's creation, return at once.
 * - A background thread fdatasyncs each database file every sync interval
 *   and then writes the txid it covers to capture/<db>.synced.
 * - At start-up, the pages that transactions after that txid wrote are
 *   rewritten from the store (dbm_tl_pages_after: no full scan), and a
 *   journal left behind is removed: nothing rolls back a committed state.
 *
 * A transaction falls back to SQLite's own protocol ("legacy": written
 * through, every sync honoured) when its journal names a super-journal
 * (ATTACHed databases commit atomically only through the journals), or a
 * write is not whole pages.
 *
 * WAL mode: the store's append at the commit frame is the durable write, so
 * fsync of the WAL and of the database (a checkpoint's) return at once. The
 * file is known to hold a whole state only when SQLite starts a new WAL
 * generation, truncates or removes the WAL: each needs every frame
 * checkpointed, so the file then holds the last recorded txid (wal_base).
 * The background thread syncs the file and records wal_base. At start-up,
 * the same boot (the page cache survived: a daemon crash) trusts the WAL and
 * capture resumes from it; after a reboot (a power loss may have torn the WAL
 * and the file), the pages recorded after the marker are rewritten from the
 * store and the WAL is removed: every frame it held that a writer saw
 * committed is in the store. The marker carries the boot id to tell the two.
 *
 * All dbm_dur_* functions except the thread's run with b->mu held. */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "crc32c.h"
#include "livedb_i.h"
#include "log.h"
#include "pagestore.h"
#include "sqlproto.h"
#include "strutil.h"
#include "sysio.h"
#include "thread.h"

#define MARK_MAGIC 0x434e5953u  /* "SYNC": the first layout, without a boot id */
#define MARK_MAGIC2 0x324e5953u /* "SYN2" */
#define SHADOW_TRIM (64ull << 20) /* a shadow left bigger than this is truncated after its commit */
#define COPY_BYTES (1u << 20)

struct mark {
    uint32_t magic, pad;
    uint64_t tl_id, txid;
    char boot[40];  /* the boot it was written in ("" in the first layout) */
    uint32_t pad2, crc;
};
struct mark1 { /* the first layout */
    uint32_t magic, pad;
    uint64_t tl_id, txid;
    uint32_t pad2, crc;
};

/* The id of this boot: a marker written in another boot means the page
 * cache may have lost writes. DBMOVEFS_BOOT_ID stands in for it (tests
 * simulate a power loss with it). */
static char boot[40];

static void boot_init(void)
{
    const char *e = getenv("DBMOVEFS_BOOT_ID");
    if (e && *e) {
        snprintf(boot, sizeof boot, "%s", e);
        return;
    }
    int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, boot, sizeof boot - 1) : -1;
    if (fd >= 0)
        close(fd);
    boot[n > 0 ? n : 0] = 0;
    boot[strcspn(boot, "\n")] = 0;
    if (!boot[0]) /* unknown: every start counts as a new boot (the safe side) */
        snprintf(boot, sizeof boot, "unknown");
}

static const char *boot_id(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, boot_init);
    return boot;
}

static void syncer_ensure(struct dbm_livedb *l);

/* ---- the synced marker ---- */

/* 1 loaded, 0 no marker file, -EINVAL unreadable, -errno. A marker of the
 * first layout loads with an empty boot id. */
static int mark_load(struct base *b, struct mark *m)
{
    char path[4096];
    dbm_cap_path(b, "synced", path, sizeof path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : -errno;
    ssize_t n = pread(fd, m, sizeof *m, 0);
    close(fd);
    if (n == sizeof *m && m->magic == MARK_MAGIC2 && m->crc == dbm_crc32c(0, m, offsetof(struct mark, crc)) &&
        memchr(m->boot, 0, sizeof m->boot))
        return 1;
    struct mark1 m1;
    if (n < (ssize_t)sizeof m1)
        return -EINVAL;
    memcpy(&m1, m, sizeof m1);
    if (m1.magic != MARK_MAGIC || m1.crc != dbm_crc32c(0, &m1, offsetof(struct mark1, crc)))
        return -EINVAL;
    memset(m, 0, sizeof *m);
    m->tl_id = m1.tl_id;
    m->txid = m1.txid;
    return 1;
}

/* The boot a marker names: this boot's id, or with the writeback cache a
 * string that never equals one (a 36-character id cut to 35, then ":wb"),
 * whose same-boot crash is no page cache the restart may trust (see
 * mark_save). */
static void mark_boot(const struct dbm_livedb *l, char *out, size_t n)
{
    if (l->writeback)
        snprintf(out, n, "%.35s:wb", boot_id());
    else
        snprintf(out, n, "%s", boot_id());
}

int dbm_dur_wb_crash_same_boot(struct base *b)
{
    struct mark m;
    struct dbm_livedb wb = { .writeback = 1 };
    char want[sizeof m.boot];
    mark_boot(&wb, want, sizeof want);
    return mark_load(b, &m) == 1 && !strcmp(m.boot, want);
}

/* Writes the marker. Written only after the database file was made durable
 * up to txid, so whichever version of it survives a crash is true; durable:
 * also fsync it (a new timeline's first marker must not be missed). */
static int mark_save(struct base *b, uint64_t tl_id, uint64_t txid, int durable)
{
    if (b->mark_fd < 0) {
        char path[4096];
        dbm_cap_path(b, "synced", path, sizeof path);
        b->mark_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
        if (b->mark_fd < 0)
            return -errno;
    }
    struct mark m = { .magic = MARK_MAGIC2, .tl_id = tl_id, .txid = txid };
    /* with the writeback cache a daemon crash loses what the kernel held for
     * the files (a checkpoint's pages among it): no later start may trust
     * the file as the same boot left it (dbm_dur_recover) */
    mark_boot(b->l, m.boot, sizeof m.boot);
    m.crc = dbm_crc32c(0, &m, offsetof(struct mark, crc));
    if (dbm_pwrite_all(b->mark_fd, &m, sizeof m, 0) < 0)
        return -errno;
    if (durable && fsync(b->mark_fd) < 0)
        return -errno;
    b->synced_txid = txid;
    return 0;
}

static uint64_t tl_id_of(struct base *b, uint64_t *last)
{
    struct dbm_tl_stat ts;
    if (!b->tl || dbm_tl_stat(b->tl, &ts) < 0)
        return 0;
    if (last)
        *last = ts.last_txid;
    return ts.id;
}

/* The txid the database file holds once synced: the last recorded one in
 * the rollback modes (the file holds committed states only), the last full
 * checkpoint's in WAL mode. */
static uint64_t sync_target(const struct base *b, uint64_t last)
{
    return b->wal_mode ? b->wal_base_txid : last;
}

void dbm_dur_wal_restarted(struct base *b)
{
    uint64_t last = 0;
    if (!tl_id_of(b, &last))
        return;
    b->wal_base_txid = last;
    syncer_ensure(b->l);
}

int dbm_dur_timeline_new(struct base *b, uint64_t tl_id)
{
    int rc = mark_save(b, tl_id, 0, 1);
    if (rc == 0 && fsync(b->l->capdir_fd) < 0)
        rc = -errno;
    if (rc < 0)
        dbm_err("%s/%s: cannot write its sync marker: %s", b->l->env, b->name, strerror(-rc));
    return rc;
}

void dbm_dur_forget(struct base *b)
{
    if (b->mark_fd >= 0)
        close(b->mark_fd);
    b->mark_fd = -1;
    b->synced_txid = 0;
    char path[4096];
    dbm_cap_path(b, "synced", path, sizeof path);
    unlink(path);
}

/* ---- the shadow ---- */

static int shadow_fd(struct base *b)
{
    if (b->sh_fd >= 0)
        return 0;
    char path[4096];
    dbm_cap_path(b, "shadow", path, sizeof path);
    b->sh_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    return b->sh_fd < 0 ? -errno : 0;
}

static int dirty(const struct base *b, uint32_t pgno)
{
    return pgno / 8 < b->dirty_bits_len && (b->dirty_bits[pgno / 8] & (1u << (pgno % 8)));
}

int dbm_dur_active(const struct base *b) { return __atomic_load_n(&b->sh_active, __ATOMIC_ACQUIRE); }

uint64_t dbm_dur_size(const struct base *b) { return __atomic_load_n(&b->sh_size, __ATOMIC_RELAXED); }

ssize_t dbm_dur_pread(struct base *b, void *buf, size_t n, off_t off)
{
    if (!b->db || dbm_cap_ensure_fd(b->l, b->db) < 0)
        return -EIO;
    if (!b->sh_active)
        return dbm_pread_all(b->db->fd, buf, n, off);
    uint64_t end = (uint64_t)off + n;
    if (end > b->sh_size)
        end = b->sh_size > (uint64_t)off ? b->sh_size : (uint64_t)off;
    uint32_t ps = b->hdr_ps;
    size_t done = 0;
    while ((uint64_t)off + done < end) {
        uint64_t pos = (uint64_t)off + done;
        uint64_t page_end = (pos / ps + 1) * ps;
        size_t len = (size_t)((page_end < end ? page_end : end) - pos);
        int fd = dirty(b, (uint32_t)(pos / ps) + 1) ? b->sh_fd : b->db->fd;
        ssize_t r = dbm_pread_all(fd, (char *)buf + done, len, (off_t)pos);
        if (r < 0)
            return r;
        if ((size_t)r < len) /* a hole below the size: zeros, as the file would read */
            memset((char *)buf + done + r, 0, len - (size_t)r);
        done += len;
    }
    return (ssize_t)done;
}

int dbm_dur_write(struct base *b, const void *buf, size_t size, off_t off)
{
    if (!b->journal_active || b->legacy || size == 0)
        return 0;
    uint32_t ps = b->hdr_ps;
    struct dbm_dbhdr h;
    if (off == 0 && size >= 100 && dbm_dbhdr_parse(buf, size, &h) == 0)
        ps = h.page_size;
    if (!ps || (uint64_t)off % ps || size % ps) {
        /* not whole pages (or a page size not known yet): SQLite's own protocol */
        int rc = dbm_dur_go_legacy(b);
        return rc < 0 ? rc : 0;
    }
    if (!b->sh_active) {
        uint64_t dsize;
        int rc = shadow_fd(b);
        if (rc < 0 || (rc = dbm_fd_size(b->db->fd, &dsize)) < 0)
            return rc;
        b->hdr_ps = ps;
        __atomic_store_n(&b->sh_size, dsize, __ATOMIC_RELAXED);
        __atomic_store_n(&b->sh_active, 1, __ATOMIC_RELEASE);
    } else if (ps != b->hdr_ps) {
        int rc = dbm_dur_go_legacy(b); /* VACUUM into a new page size: not worth a shadow */
        return rc < 0 ? rc : 0;
    }
    int rc = dbm_pwrite_all(b->sh_fd, buf, size, off); /* whole or not at all (dbm_wb_pwrite) */
    if (rc < 0)
        return rc;
    if ((uint64_t)off + size > b->sh_size)
        __atomic_store_n(&b->sh_size, (uint64_t)off + size, __ATOMIC_RELAXED);
    return 1;
}

void dbm_dur_truncate(struct base *b, uint64_t size)
{
    __atomic_store_n(&b->sh_size, size, __ATOMIC_RELAXED);
}

void dbm_dur_extend(struct base *b, uint64_t size)
{
    if (b->sh_active && size > b->sh_size)
        __atomic_store_n(&b->sh_size, size, __ATOMIC_RELAXED);
}

/* Copies the shadow's pages into the database file and sets its size. */
static int shadow_copy(struct base *b)
{
    uint32_t ps = b->hdr_ps;
    uint8_t *page = malloc(ps);
    if (!page)
        return -ENOMEM;
    int rc = 0;
    for (size_t i = 0; i < b->ndirty && rc == 0; i++) {
        uint64_t off = (uint64_t)(b->dirty[i] - 1) * ps;
        if (off >= b->sh_size)
            continue;
        ssize_t r = dbm_pread_all(b->sh_fd, page, ps, (off_t)off);
        if (r != (ssize_t)ps)
            rc = r < 0 ? (int)r : -EIO;
        else if (dbm_pwrite_all(b->db->fd, page, ps, (off_t)off) < 0)
            rc = -errno;
    }
    free(page);
    uint64_t dsize;
    if (rc == 0 && dbm_fd_size(b->db->fd, &dsize) == 0 && dsize != b->sh_size &&
        ftruncate(b->db->fd, (off_t)b->sh_size) < 0)
        rc = -errno;
    return rc;
}

int dbm_dur_prepare_commit(struct base *b)
{
    if (!b->sh_active)
        return 0;
    /* reserve the blocks the copy will need before anything is recorded, so
     * that a full disk refuses the commit instead of failing it half-applied */
    uint64_t dsize;
    int rc = dbm_fd_size(b->db->fd, &dsize);
    if (rc < 0)
        return rc;
    if (b->sh_size > dsize &&
        fallocate(b->db->fd, FALLOC_FL_KEEP_SIZE, (off_t)dsize, (off_t)(b->sh_size - dsize)) < 0 &&
        errno != EOPNOTSUPP)
        return -errno;
    return 0;
}

int dbm_dur_apply(struct base *b)
{
    if (!b->sh_active)
        return 0;
    int rc = shadow_copy(b);
    if (rc < 0) {
        /* recorded in the store, not in the file: the next start repairs it */
        dbm_err("%s/%s: a recorded commit could not be copied into the database file (%s); the store has it, and "
                "the next start rewrites it",
                b->l->env, b->name, strerror(-rc));
        return rc;
    }
    __atomic_store_n(&b->sh_active, 0, __ATOMIC_RELEASE);
    syncer_ensure(b->l);
    if (b->sh_size > SHADOW_TRIM && ftruncate(b->sh_fd, 0) < 0)
        dbm_warn("%s/%s: cannot trim its shadow file: %s", b->l->env, b->name, strerror(errno));
    if (b->wal_mode)
        dbm_dur_wal_restarted(b); /* the switch to WAL: the file holds the last state */
    return rc;
}

void dbm_dur_discard(struct base *b)
{
    __atomic_store_n(&b->sh_active, 0, __ATOMIC_RELEASE);
    b->legacy = 0;
}

void dbm_dur_end_txn(struct base *b) { b->legacy = 0; }

int dbm_dur_go_legacy(struct base *b)
{
    if (b->legacy)
        return 0;
    /* SQLite's order: the journal and its directory entry durable before
     * the database changes */
    if (b->journal && b->journal->fd >= 0 && fdatasync(b->journal->fd) < 0)
        return -errno;
    if (fsync(b->l->dirfd) < 0)
        return -errno;
    if (b->sh_active) {
        int rc = shadow_copy(b);
        if (rc < 0)
            return rc;
        __atomic_store_n(&b->sh_active, 0, __ATOMIC_RELEASE);
    }
    b->legacy = 1;
    return 0;
}

int dbm_dur_fsync(struct base *b, struct dbfile *f, int *real)
{
    *real = 1;
    if (f->unlinked)
        return 0;
    if (f->kind == DBM_SQLFILE_JOURNAL && b->journal == f) {
        if (b->legacy)
            return 0;
        if (dbm_cap_journal_super(b, NULL, 0))
            return dbm_dur_go_legacy(b); /* and the caller syncs the journal */
        *real = 0;
    } else if (f->kind == DBM_SQLFILE_DB && b->db == f) {
        *real = b->legacy;
    } else if (f->kind == DBM_SQLFILE_WAL && b->wal == f) {
        *real = 0; /* every commit frame written is in the store */
    }
    return 0;
}

/* ---- start-up ---- */

struct pageset {
    uint8_t *bits;
    size_t len;
    uint32_t max;
};

static int pageset_add(uint32_t pgno, void *arg)
{
    struct pageset *s = arg;
    if (pgno == 0 || pgno > s->max)
        return 0;
    s->bits[pgno / 8] |= (uint8_t)(1u << (pgno % 8));
    return 0;
}

/* Rewrites from the store every page written after txid from (all pages if
 * from is UINT64_MAX), so the file holds exactly the last recorded state. */
static int repair(struct base *b, uint64_t from, uint64_t last, uint32_t ps, uint32_t db_pages)
{
    struct pageset s = { .len = (size_t)db_pages / 8 + 1, .max = db_pages };
    s.bits = calloc(1, s.len);
    uint8_t *page = malloc(ps);
    int rc = 0;
    if (!s.bits || !page) {
        rc = -ENOMEM;
        goto out;
    }
    if (from != UINT64_MAX)
        rc = dbm_tl_pages_after(b->tl, from, pageset_add, &s);
    if (from == UINT64_MAX || rc == -ERANGE) {
        memset(s.bits, 0xff, s.len);
        rc = 0;
    }
    uint32_t n = 0;
    for (uint32_t p = 1; rc == 0 && p <= db_pages; p++) {
        if (!(s.bits[p / 8] & (1u << (p % 8))))
            continue;
        if ((rc = dbm_tl_read_page(b->tl, last, p, page)) < 0)
            break;
        if (dbm_pwrite_all(b->db->fd, page, ps, (off_t)(p - 1) * ps) < 0)
            rc = -errno;
        n++;
    }
    if (rc == 0 && ftruncate(b->db->fd, (off_t)db_pages * ps) < 0)
        rc = -errno;
    if (rc == 0 && fdatasync(b->db->fd) < 0)
        rc = -errno;
    if (rc == 0 && n)
        dbm_notice("%s/%s: rewrote %u page%s recorded after the last sync of the file", b->l->env, b->name, n,
                   n == 1 ? "" : "s");
out:
    free(s.bits);
    free(page);
    return rc;
}

int dbm_dur_recover(struct base *b, int sqlite_synced, int *done)
{
    *done = 0;
    char path[4096];
    dbm_cap_path(b, "shadow", path, sizeof path);
    unlink(path); /* pages of a transaction that never committed */
    struct dbm_tl_stat ts;
    if (!b->tl || !b->db || dbm_tl_stat(b->tl, &ts) < 0 || !ts.last_txid)
        return 0;
    uint64_t last = ts.last_txid, id = ts.id;
    uint8_t *p1 = malloc(ts.page_size);
    struct dbm_dbhdr h;
    if (!p1)
        return -ENOMEM;
    int rc = dbm_tl_read_page(b->tl, last, 1, p1);
    int wal = rc == 0 && dbm_dbhdr_parse(p1, ts.page_size, &h) == 0 && h.write_version == 2;
    free(p1);
    if (rc < 0)
        return rc;
    struct mark m = { 0 };
    int have = mark_load(b, &m);
    if (have == 0 || (wal && have == 1 && !m.boot[0]))
        return 0; /* written before this protocol: SQLite's syncs made it durable */
    uint64_t from = have == 1 && m.tl_id == id ? m.txid : UINT64_MAX;
    if (wal && have == 1 && !strcmp(m.boot, boot_id())) {
        /* a daemon crash: the page cache kept every write, and capture
         * resumes from the WAL */
        b->synced_txid = b->wal_base_txid = from == UINT64_MAX ? 0 : from;
        return 0;
    }
    if ((from != UINT64_MAX && from >= last) || sqlite_synced) {
        b->synced_txid = from == UINT64_MAX ? 0 : from > last ? last : from;
    } else {
        if ((rc = dbm_cap_ensure_fd(b->l, b->db)) < 0 || (rc = repair(b, from, last, ts.page_size, ts.db_pages)) < 0)
            return rc;
        if ((rc = mark_save(b, id, last, 1)) < 0)
            return rc;
    }
    b->wal_base_txid = last;
    *done = wal ? DBM_DUR_FILE_REPAIRED | DBM_DUR_WAL_STALE : DBM_DUR_FILE_REPAIRED;
    return 0;
}

int dbm_dur_recover_legacy_done(struct base *b)
{
    uint64_t last = 0, id = tl_id_of(b, &last);
    if (!id || !b->db || b->db->fd < 0)
        return 0;
    struct mark m;
    int have = mark_load(b, &m);
    if (have < 0 || (have == 1 && (m.boot[0] || !b->wal_mode)))
        return 0;
    /* first start on this protocol: the file is as SQLite synced it; in WAL
     * mode it may lack what the WAL holds, so nothing is known to be in it */
    if (b->wal_mode)
        last = 0;
    else if (fdatasync(b->db->fd) < 0)
        return -errno;
    int rc = mark_save(b, id, last, 1);
    if (rc == 0 && fsync(b->l->capdir_fd) < 0)
        rc = -errno;
    return rc;
}

/* ---- the background sync ---- */

static void sync_all(struct dbm_livedb *l)
{
    pthread_mutex_lock(&l->mu);
    size_t n = l->nbases; /* bases live until the livedb closes; the array only grows */
    struct base **v = malloc((n ? n : 1) * sizeof *v);
    if (v && n)
        memcpy(v, l->bases, n * sizeof *v);
    pthread_mutex_unlock(&l->mu);
    if (!v)
        return;
    for (size_t i = 0; i < n; i++) {
        struct base *b = v[i];
        (void)dbm_wb_flush_slot(b, &b->wal, 0); /* what the kernel holds of it (logged) */
        pthread_mutex_lock(&b->mu);
        /* a connection that switched to locking_mode=EXCLUSIVE after its WAL
         * opened in passthrough takes no lock per transaction: its commits
         * with synchronous NORMAL or OFF are recorded here at the latest */
        int wrc = dbm_cap_wal_sync(b);
        if (wrc == 0)
            wrc = dbm_cap_journal_sync(b, 0); /* likewise PERSIST's zeroed header */
        if (wrc < 0)
            dbm_warn("%s/%s: cannot record a commit SQLite made in passthrough: %s; retried", l->env, b->name,
                     strerror(-wrc));
        uint64_t last = 0, id = tl_id_of(b, &last);
        int fd = -1;
        last = sync_target(b, last);
        /* a file that may lack committed pages is never marked synced
         * (wb_lost): the next start repairs it from the marker */
        if (id && b->db && b->db->fd >= 0 && last > b->synced_txid && !__atomic_load_n(&b->wb_lost, __ATOMIC_ACQUIRE))
            fd = dup(b->db->fd);
        int wal = b->wal_mode;
        pthread_mutex_unlock(&b->mu);
        if (fd < 0)
            continue;
        /* WAL mode: a checkpoint's pages may still be in the kernel */
        if (wal && dbm_wb_flush_slot(b, &b->db, 1) < 0) {
            close(fd);
            continue;
        }
        /* the file held txid last when we looked (later writes are of pages
         * later transactions wrote: a repair rewrites those anyway); the sync
         * runs without the base's lock so that commits go on meanwhile */
        int rc = fdatasync(fd) < 0 ? -errno : 0;
        close(fd);
        pthread_mutex_lock(&b->mu);
        if (rc == 0 && tl_id_of(b, NULL) == id && last > b->synced_txid)
            rc = mark_save(b, id, last, 0);
        pthread_mutex_unlock(&b->mu);
        if (rc < 0)
            dbm_warn("%s/%s: background sync failed (%s): retried; a crash now costs a longer start-up", l->env,
                     b->name, strerror(-rc));
    }
    free(v);
}

static void *syncer_main(void *arg)
{
    struct dbm_livedb *l = arg;
    /* the commit that started it may run on a thread pinned to one CPU */
    cpu_set_t cpus;
    CPU_ZERO(&cpus);
    for (int i = 0; i < CPU_SETSIZE; i++)
        CPU_SET(i, &cpus);
    (void)pthread_setaffinity_np(pthread_self(), sizeof cpus, &cpus);
    pthread_mutex_lock(&l->sync_mu);
    while (!l->sync_stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t ns = (uint64_t)ts.tv_nsec + (uint64_t)l->sync_ms * 1000000ull;
        ts.tv_sec += (time_t)(ns / 1000000000ull);
        ts.tv_nsec = (long)(ns % 1000000000ull);
        pthread_cond_timedwait(&l->sync_cv, &l->sync_mu, &ts);
        if (l->sync_stop)
            break;
        pthread_mutex_unlock(&l->sync_mu);
        sync_all(l);
        pthread_mutex_lock(&l->sync_mu);
    }
    pthread_mutex_unlock(&l->sync_mu);
    return NULL;
}

static unsigned interval_ms(void)
{
    const char *s = getenv("DBMOVEFS_SYNC_INTERVAL_MS");
    char *end;
    unsigned long v = s ? strtoul(s, &end, 10) : 0;
    return s && *s && !*end && v > 0 && v <= 3600000ul ? (unsigned)v : 1000;
}

/* l->sync_mu held. */
static int syncer_start(struct dbm_livedb *l)
{
    l->sync_ms = interval_ms();
    /* signals are for the threads that wait for them (SIGHUP reloads) */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = dbm_thread_start(&l->syncer, "dbm-syncer", syncer_main, l);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    l->have_syncer = rc == 0;
    return rc;
}

/* Started by the first commit that needs it, not at open: the daemon may
 * still fork into the background after opening (a thread would not follow). */
static void syncer_ensure(struct dbm_livedb *l)
{
    pthread_mutex_lock(&l->sync_mu);
    if (!l->have_syncer && !l->sync_stop) {
        int rc = syncer_start(l);
        if (rc < 0)
            dbm_warn("%s: cannot start the background sync (%s): files are synced at unmount", l->env,
                     strerror(-rc));
    }
    pthread_mutex_unlock(&l->sync_mu);
}

void dbm_dur_stop(struct dbm_livedb *l)
{
    pthread_mutex_lock(&l->sync_mu);
    l->sync_stop = 1;
    int joined = l->have_syncer;
    pthread_cond_signal(&l->sync_cv);
    pthread_mutex_unlock(&l->sync_mu);
    if (joined)
        pthread_join(l->syncer, NULL);
    l->have_syncer = 0;
    sync_all(l); /* a clean stop leaves nothing to repair */
}
