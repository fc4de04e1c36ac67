/* pagestore.c - the versioned, checksummed page store (see pagestore.h):
 * the store directory, timelines, reads at a txid, images, retention.
 * Segment files (records, recovery, indexes) live in pgseg.c; streamed
 * transactions (dbm_tl_txn_*, which write the version-2 records below) in
 * pgtxn.c. The structs these files share are in pagestore_i.h.
 *
 * On-disk format, version 1. All integers little-endian, CRC32C (Castagnoli).
 *
 *   STORE/<id as %016llx>/         one timeline; created as .new-<id> and
 *                                  renamed into place; dropped by renaming
 *                                  to .dead-<id> first (both cleaned at open)
 *     meta                         64 bytes: magic "DBMTLM01", u32 version,
 *                                  u32 page_size, u64 id, u64 parent_id,
 *                                  u64 branch_txid, 20 reserved, u32 crc
 *     log.<first txid %016llx>     a log segment:
 *         segment header (64 B)    magic "DBMSEG01", u32 version, u32 page_size,
 *                                  u64 timeline id, u64 first_txid, 28 reserved,
 *                                  u32 crc of the 60 bytes before it
 *         records, back to back    header (48 B): u32 magic "DBMR", u8 version,
 *                                  u8 kind, 2 reserved, u64 txid, u64 commit_ns,
 *                                  u32 db_pages, u32 npages, u64 rec_len,
 *                                  u32 ent_crc (of the entries), u32 hdr_crc
 *                                  (of the 44 bytes before it); then npages
 *                                  entries {u32 pgno, u32 page_crc}; then the
 *                                  npages pages in entry order.
 *           version 1, kind 0      a whole transaction (the only record of
 *                                  stores written before streaming existed)
 *           version 2, kind 1      a part of a streamed transaction: as
 *                                  above, but commit_ns holds the part's
 *                                  sequence number (0, 1, ...), db_pages is 0,
 *                                  and it is at most 1 MiB (or one page)
 *           version 2, kind 2      the commit of the parts just before it:
 *                                  commit_ns and db_pages as for a whole one,
 *                                  npages = its distinct pages, rec_len 64,
 *                                  then {u64 offset of part 0, u32 nparts,
 *                                  u32 0} with ent_crc over those 16 bytes
 *         A streamed transaction (pgtxn.c) is parts with consecutive
 *         sequence numbers and its txid, then its commit; nothing else comes
 *         between them, and all are in one segment (which may grow past
 *         segment_bytes for it).
 *         A page repeated in its parts counts once, the last part's copy
 *         (the indexes hold only that one). Parts without their commit are a
 *         torn tail: recovery cuts the log at part 0.
 *         page_crc = crc32c(u32 pgno . u64 txid . page bytes)
 *         The active (last) segment is preallocated (fallocate, then zeroed a
 *         chunk ahead of the tail): a header of 48 zero bytes is its clean end.
 *     log.<first>.idx              written when the segment is sealed (renamed
 *                                  into place after fsync); mmapped lazily:
 *         header (96 B)            magic "DBMIDX01", u32 version, u32 page_size,
 *                                  u64 first_txid, last_txid, min_ns, max_ns,
 *                                  ntx, nent, log_bytes, u32 min_pages,
 *                                  u32 body_crc, 12 reserved, u32 hdr_crc
 *         ntx txns (32 B each)     {u64 txid, commit_ns, rec_off, u32 db_pages, pad}
 *                                  in txid order (binary search by time)
 *         nent entries (32 B)      {u32 pgno, u32 page_crc, u64 txid, data_off,
 *                                  rec_off}, sorted by (pgno, txid)
 *     image.<txid %016llx>         full image of the database at txid:
 *         header (64 B)            magic "DBMIMG01", u32 version, u32 page_size,
 *                                  u64 txid, u64 commit_ns, u32 db_pages, u32 0,
 *                                  u64 data_off, 12 reserved, u32 crc
 *         db_pages entries (8 B)   {u32 page_crc, u32 state}; state "PRES" or
 *                                  "ABSN" (never written: a hole, reads as zeros)
 *         pages at data_off        page p at data_off + (p - 1) * page_size
 *                                  (page_crc as above with the image's txid)
 *     *.tmp                        unfinished writes, removed at open
 *
 * Reads: the newest image at or before the txid, then the segments after it,
 * newest first (a hash index in RAM for the active one, the mmapped sorted
 * index for sealed ones); then, for a branch, the parent at branch_txid.
 * A version found at v is hidden (zeros) if some transaction in [v, txid] had
 * db_pages below the page: truncation is seen through the per-segment
 * min_pages, and scanning the transaction table only when it is below.
 *
 * Images. A commit that brings the log since the newest image past the
 * interval starts a thread that writes the image at that commit's txid
 * (dbm_pgs_tl_image_soon); the commit returns without waiting for it. The
 * thread is a reader like any other, so appends go on meanwhile; img_lock
 * keeps gc (and other images) out while it writes. One runs at a time per
 * timeline; the last close abandons one that is running (its .tmp is
 * removed, and the image is due again after a restart).
 *
 * Lock order (outermost first):
 *   1. store->open_lock   open/close/create/drop of timelines, refcounts' life
 *   2. tl->img_lock       writing an image, gc: what a reader needs stays
 *                         while an image is built from it
 *   3. tl->append_lock    the writer side of one timeline: append, streamed
 *                         transactions (pgtxn.c), gc's unpublication
 *   4. tl->rw             a timeline's segments, images and summary; a child's
 *                         is never held while its parent's is taken (reads
 *                         release the child's before reading through)
 *   5. seg->map_lock      lazy mmap of one sealed segment
 *   6. store->lock        the timeline table (ids, parents, open objects, refs)
 *   7. tl->bg_mu          the state of the background image thread
 * No file I/O happens under store->lock; under tl->rw taken for writing only
 * the in-RAM publication of an append, seal, image or gc.
 */
#include "pagestore.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crc32c.h"
#include "log.h"
#include "pagestore_i.h"
#include "sqlproto.h"
#include "sysio.h"
#include "thread.h"
#include "timefmt.h"

#define DEFAULT_SEGMENT (64ull << 20)
#define DEFAULT_IMAGE (64ull << 20)
#define IMG_PRESENT 0x53455250u /* "PRES" */
#define IMG_ABSENT 0x4e534241u  /* "ABSN" */
#define IMG_BATCH 256           /* pages per write when building an image */
#define IMG_BEHIND (8u << 20)  /* image bytes written between writeback kicks */
#define IMG_NICE 10             /* a background image yields the CPU to requests */
#define IMG_RETRY_NS (10 * DBM_NS_PER_SEC) /* after a failed image, before the next */

struct tl_meta {
    uint64_t magic;
    uint32_t version, page_size;
    uint64_t id, parent_id, branch_txid;
    uint8_t reserved[20];
    uint32_t crc;
};
_Static_assert(sizeof(struct tl_meta) == 64, "meta layout");

struct img_hdr {
    uint64_t magic;
    uint32_t version, page_size;
    uint64_t txid, commit_ns;
    uint32_t db_pages, reserved0;
    uint64_t data_off;
    uint8_t reserved[12];
    uint32_t crc;
};
_Static_assert(sizeof(struct img_hdr) == 64, "image header layout");

struct img_ent {
    uint32_t crc, state;
};

struct tl_entry {
    uint64_t id, parent_id, branch_txid;
    struct dbm_timeline *tl; /* open object or NULL */
};

struct tl_image {
    uint64_t txid, commit_ns, data_off, bytes;
    uint32_t db_pages;
    int fd;
    char *path;
};

/* struct dbm_store and struct dbm_timeline are in pagestore_i.h. */

static int tl_get_locked(struct dbm_store *s, uint64_t id, struct dbm_timeline **out);
static void tl_put_locked(struct dbm_timeline *t);

/* ---- small helpers ---- */

static char *path_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (p) {
        memcpy(p, dir, a);
        p[a] = '/';
        memcpy(p + a + 1, name, b + 1);
    }
    return p;
}

static int parse_hex(const char *s, size_t len, uint64_t *out)
{
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            return -1;
        v = v << 4 | (uint64_t)d;
    }
    *out = v;
    return 0;
}

static int write_file_durable(int dirfd, const char *tmp, const void *buf, size_t n)
{
    int fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    int rc = dbm_pwrite_all(fd, buf, n, 0);
    if (!rc && dbm_sys.fsync(fd) < 0)
        rc = -errno;
    close(fd);
    return rc;
}

/* Removes a timeline directory's files and the directory. */
static void remove_tree(int dirfd, const char *name)
{
    int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        DIR *d = fdopendir(fd);
        struct dirent *de;
        while (d && (de = readdir(d)))
            if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
                unlinkat(fd, de->d_name, 0);
        if (d)
            closedir(d);
        else
            close(fd);
    }
    if (unlinkat(dirfd, name, AT_REMOVEDIR) < 0)
        dbm_warn("pagestore: cannot remove %s: %s", name, strerror(errno));
}

static int meta_read(int dirfd, const char *name, struct tl_meta *m)
{
    char path[64];
    snprintf(path, sizeof path, "%s/meta", name);
    int fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t r = dbm_pread_all(fd, m, sizeof *m, 0);
    close(fd);
    if (r < 0)
        return (int)r;
    if ((size_t)r != sizeof *m || m->magic != PGS_META_MAGIC || m->version != PGS_VERSION ||
        m->crc != dbm_crc32c(0, m, offsetof(struct tl_meta, crc)))
        return -EIO;
    return 0;
}

/* ---- the store ---- */

static struct tl_entry *store_find(struct dbm_store *s, uint64_t id)
{
    for (size_t i = 0; i < s->ntl; i++)
        if (s->tls[i].id == id)
            return &s->tls[i];
    return NULL;
}

static int store_add(struct dbm_store *s, uint64_t id, uint64_t parent_id, uint64_t branch_txid)
{
    if (s->ntl == s->ctl) {
        size_t c = s->ctl ? 2 * s->ctl : 16;
        struct tl_entry *tmp = realloc(s->tls, c * sizeof *tmp);
        if (!tmp)
            return -ENOMEM;
        s->tls = tmp;
        s->ctl = c;
    }
    s->tls[s->ntl++] = (struct tl_entry){ id, parent_id, branch_txid, NULL };
    if (id > s->max_id)
        s->max_id = id;
    return 0;
}

static void store_remove(struct dbm_store *s, uint64_t id)
{
    struct tl_entry *e = store_find(s, id);
    if (e)
        *e = s->tls[--s->ntl];
}

/* Smallest branch_txid (> 0) of id's children, or UINT64_MAX. s->lock held. */
static uint64_t store_min_child_branch(struct dbm_store *s, uint64_t id)
{
    uint64_t m = UINT64_MAX;
    for (size_t i = 0; i < s->ntl; i++)
        if (s->tls[i].parent_id == id && s->tls[i].branch_txid && s->tls[i].branch_txid < m)
            m = s->tls[i].branch_txid;
    return m;
}

static int store_scan(struct dbm_store *s)
{
    int fd = dup(s->dirfd);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        return -e;
    }
    struct dirent *de;
    int rc = 0;
    while (!rc && (de = readdir(d))) {
        uint64_t id;
        struct tl_meta m;
        if (!strncmp(de->d_name, ".new-", 5) || !strncmp(de->d_name, ".dead-", 6)) {
            remove_tree(s->dirfd, de->d_name);
            continue;
        }
        if (strlen(de->d_name) != 16 || parse_hex(de->d_name, 16, &id))
            continue;
        if (id > s->max_id)
            s->max_id = id; /* never reuse the id of a directory, even a broken one */
        int r = meta_read(s->dirfd, de->d_name, &m);
        if (r || m.id != id) {
            dbm_err("pagestore: %s/%s/meta: unreadable or bad checksum; timeline ignored", s->dir, de->d_name);
            continue;
        }
        rc = store_add(s, id, m.parent_id, m.branch_txid);
    }
    closedir(d);
    return rc;
}

int dbm_store_open(const char *dir, const struct dbm_store_opts *opts, struct dbm_store **out)
{
    struct dbm_store *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    pthread_mutex_init(&s->open_lock, NULL);
    pthread_mutex_init(&s->lock, NULL);
    s->dirfd = -1;
    s->segment_bytes = opts && opts->segment_bytes ? opts->segment_bytes : DEFAULT_SEGMENT;
    s->image_bytes = opts ? opts->image_interval_bytes : 0;
    int rc = -ENOMEM;
    s->dir = strdup(dir);
    if (!s->dir)
        goto fail;
    if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
        rc = -errno;
        dbm_err("pagestore: cannot create %s: %s", dir, strerror(-rc));
        goto fail;
    }
    s->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->dirfd < 0) {
        rc = -errno;
        dbm_err("pagestore: cannot open %s: %s", dir, strerror(-rc));
        goto fail;
    }
    rc = store_scan(s);
    if (rc)
        goto fail;
    *out = s;
    return 0;
fail:
    dbm_store_close(s);
    return rc;
}

void dbm_store_close(struct dbm_store *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->ntl; i++)
        if (s->tls[i].tl)
            dbm_err("pagestore: store closed with timeline %016" PRIx64 " still open", s->tls[i].id);
    if (s->dirfd >= 0)
        close(s->dirfd);
    pthread_mutex_destroy(&s->open_lock);
    pthread_mutex_destroy(&s->lock);
    free(s->tls);
    free(s->dir);
    free(s);
}

/* ---- creating and dropping timelines ---- */

static int meta_publish(struct dbm_store *s, uint64_t id, uint32_t page_size, uint64_t parent_id,
                        uint64_t branch_txid)
{
    struct tl_meta m;
    memset(&m, 0, sizeof m);
    m.magic = PGS_META_MAGIC;
    m.version = PGS_VERSION;
    m.page_size = page_size;
    m.id = id;
    m.parent_id = parent_id;
    m.branch_txid = branch_txid;
    m.crc = dbm_crc32c(0, &m, offsetof(struct tl_meta, crc));
    char tmpdir[64], metap[80], final[64];
    snprintf(tmpdir, sizeof tmpdir, ".new-%016" PRIx64, id);
    snprintf(metap, sizeof metap, "%s/meta", tmpdir);
    snprintf(final, sizeof final, "%016" PRIx64, id);
    if (mkdirat(s->dirfd, tmpdir, 0755) < 0)
        return -errno;
    int rc = write_file_durable(s->dirfd, metap, &m, sizeof m);
    int fd = rc ? -1 : openat(s->dirfd, tmpdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (!rc && (fd < 0 || dbm_sys.fsync(fd) < 0))
        rc = -errno;
    if (fd >= 0)
        close(fd);
    char *from = path_join(s->dir, tmpdir), *to = path_join(s->dir, final);
    if (!rc && (!from || !to))
        rc = -ENOMEM;
    if (!rc && dbm_sys.rename(from, to) < 0)
        rc = -errno;
    if (!rc)
        rc = dbm_pgs_fsync_dir(s->dirfd);
    free(from);
    free(to);
    if (rc) {
        dbm_err("pagestore: cannot create timeline %016" PRIx64 ": %s", id, strerror(-rc));
        remove_tree(s->dirfd, tmpdir);
        remove_tree(s->dirfd, final);
    }
    return rc;
}

/* Checks that parent can serve branch_txid and registers the child under the
 * parent's read lock, so that a concurrent gc of the parent sees the child. */
static int branch_register(struct dbm_store *s, struct dbm_timeline *p, uint64_t branch_txid, uint64_t *id)
{
    int rc = 0;
    pthread_rwlock_rdlock(&p->rw);
    if (branch_txid && (branch_txid < p->first_txid || branch_txid > p->last_txid ||
                        (p->bad_txid && branch_txid >= p->bad_txid)))
        rc = -ERANGE;
    if (!rc) {
        pthread_mutex_lock(&s->lock);
        *id = s->max_id + 1;
        rc = store_add(s, *id, p->id, branch_txid);
        pthread_mutex_unlock(&s->lock);
    }
    pthread_rwlock_unlock(&p->rw);
    return rc;
}

int dbm_tl_create(struct dbm_store *s, uint32_t page_size, uint64_t parent_id, uint64_t branch_txid,
                  uint64_t *id_out)
{
    if (!dbm_page_size_valid(page_size))
        return -EINVAL;
    struct dbm_timeline *p = NULL;
    uint64_t id = 0;
    int rc = 0;
    pthread_mutex_lock(&s->open_lock);
    if (parent_id) {
        rc = tl_get_locked(s, parent_id, &p);
        if (!rc && p->page_size != page_size)
            rc = -EINVAL;
        if (!rc)
            rc = branch_register(s, p, branch_txid, &id);
    } else {
        pthread_mutex_lock(&s->lock);
        id = s->max_id + 1;
        rc = store_add(s, id, 0, 0);
        pthread_mutex_unlock(&s->lock);
    }
    if (!rc) {
        rc = meta_publish(s, id, page_size, parent_id, branch_txid);
        if (rc) {
            pthread_mutex_lock(&s->lock);
            store_remove(s, id);
            pthread_mutex_unlock(&s->lock);
        }
    }
    if (p)
        tl_put_locked(p);
    pthread_mutex_unlock(&s->open_lock);
    if (!rc && id_out)
        *id_out = id;
    return rc;
}

int dbm_tl_drop(struct dbm_store *s, uint64_t id)
{
    int rc = 0;
    pthread_mutex_lock(&s->open_lock);
    pthread_mutex_lock(&s->lock);
    struct tl_entry *e = store_find(s, id);
    struct tl_entry saved = e ? *e : (struct tl_entry){ 0 };
    if (!e)
        rc = -ENOENT;
    else if (e->tl)
        rc = -EBUSY;
    else
        for (size_t i = 0; i < s->ntl; i++)
            if (s->tls[i].parent_id == id)
                rc = -EBUSY;
    if (!rc)
        store_remove(s, id);
    pthread_mutex_unlock(&s->lock);
    if (!rc) {
        char name[32], dead[40];
        snprintf(name, sizeof name, "%016" PRIx64, id);
        snprintf(dead, sizeof dead, ".dead-%016" PRIx64, id);
        char *from = path_join(s->dir, name), *to = path_join(s->dir, dead);
        if (!from || !to)
            rc = -ENOMEM;
        else if (dbm_sys.rename(from, to) < 0)
            rc = -errno;
        free(from);
        free(to);
        if (!rc) {
            dbm_pgs_fsync_dir(s->dirfd);
            remove_tree(s->dirfd, dead);
        } else {
            pthread_mutex_lock(&s->lock);
            store_add(s, saved.id, saved.parent_id, saved.branch_txid);
            pthread_mutex_unlock(&s->lock);
        }
    }
    pthread_mutex_unlock(&s->open_lock);
    return rc;
}

/* ---- loading a timeline ---- */

static void tl_free(struct dbm_timeline *t)
{
    if (!t)
        return;
    if (t->txn)
        dbm_err("pagestore: %s: closed with a streamed transaction open; it is left uncommitted", t->dir);
    __atomic_store_n(&t->img_stop, 1, __ATOMIC_RELAXED);
    pthread_mutex_lock(&t->bg_mu);
    int join = t->bg_joinable;
    pthread_mutex_unlock(&t->bg_mu);
    if (join)
        pthread_join(t->bg_th, NULL); /* nothing else can start one: no reference is left */
    for (size_t i = 0; i < t->nseg; i++)
        dbm_pgs_seg_free(t->segs[i]);
    for (size_t i = 0; i < t->nimg; i++) {
        if (t->imgs[i].fd >= 0)
            close(t->imgs[i].fd);
        free(t->imgs[i].path);
    }
    if (t->dirfd >= 0)
        close(t->dirfd);
    pthread_mutex_destroy(&t->img_lock);
    pthread_mutex_destroy(&t->append_lock);
    pthread_rwlock_destroy(&t->rw);
    pthread_mutex_destroy(&t->bg_mu);
    pthread_cond_destroy(&t->bg_cv);
    free(t->segs);
    free(t->imgs);
    free(t->dir);
    free(t);
}

static int seg_push(struct dbm_timeline *t, struct pgs_seg *g)
{
    if (t->nseg == t->cseg) {
        size_t c = t->cseg ? 2 * t->cseg : 8;
        struct pgs_seg **tmp = realloc(t->segs, c * sizeof *tmp);
        if (!tmp)
            return -ENOMEM;
        t->segs = tmp;
        t->cseg = c;
    }
    t->segs[t->nseg++] = g;
    return 0;
}

static int img_insert(struct dbm_timeline *t, const struct tl_image *im)
{
    if (t->nimg == t->cimg) {
        size_t c = t->cimg ? 2 * t->cimg : 8;
        struct tl_image *tmp = realloc(t->imgs, c * sizeof *tmp);
        if (!tmp)
            return -ENOMEM;
        t->imgs = tmp;
        t->cimg = c;
    }
    size_t i = t->nimg;
    while (i > 0 && t->imgs[i - 1].txid > im->txid) {
        t->imgs[i] = t->imgs[i - 1];
        i--;
    }
    t->imgs[i] = *im;
    t->nimg++;
    return 0;
}

/* Opens image.<txid> and checks its header. */
static int img_open(struct dbm_timeline *t, const char *name, uint64_t txid, struct tl_image *im)
{
    struct img_hdr h;
    struct stat st;
    memset(im, 0, sizeof *im);
    im->path = path_join(t->dir, name);
    if (!im->path)
        return -ENOMEM;
    im->fd = open(im->path, O_RDONLY | O_CLOEXEC);
    if (im->fd < 0 || fstat(im->fd, &st) < 0) {
        int e = errno;
        free(im->path);
        return -e;
    }
    ssize_t r = dbm_pread_all(im->fd, &h, sizeof h, 0);
    if (r != (ssize_t)sizeof h || h.magic != PGS_IMG_MAGIC || h.version != PGS_VERSION ||
        h.crc != dbm_crc32c(0, &h, offsetof(struct img_hdr, crc)) || h.txid != txid ||
        h.page_size != t->page_size) {
        dbm_err("pagestore: %s: bad image header at offset 0; image ignored", im->path);
        close(im->fd);
        free(im->path);
        return -EIO;
    }
    im->txid = txid;
    im->commit_ns = h.commit_ns;
    im->db_pages = h.db_pages;
    im->data_off = h.data_off;
    im->bytes = (uint64_t)st.st_size;
    return 0;
}

struct tl_files {
    uint64_t *logs;
    size_t nlog, clog;
};

static int u64_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Lists the timeline directory: segments into f, images into t; removes *.tmp. */
static int tl_list(struct dbm_timeline *t, struct tl_files *f)
{
    int fd = dup(t->dirfd);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        if (fd >= 0)
            close(fd);
        return -errno;
    }
    struct dirent *de;
    int rc = 0;
    while (!rc && (de = readdir(d))) {
        const char *n = de->d_name;
        size_t len = strlen(n);
        uint64_t x;
        if (len > 4 && !strcmp(n + len - 4, ".tmp")) {
            unlinkat(t->dirfd, n, 0);
        } else if (len == 20 && !strncmp(n, "log.", 4) && !parse_hex(n + 4, 16, &x)) {
            if (f->nlog == f->clog) {
                size_t c = f->clog ? 2 * f->clog : 16;
                uint64_t *tmp = realloc(f->logs, c * sizeof *tmp);
                if (!tmp) {
                    rc = -ENOMEM;
                    break;
                }
                f->logs = tmp;
                f->clog = c;
            }
            f->logs[f->nlog++] = x;
        } else if (len == 22 && !strncmp(n, "image.", 6) && !parse_hex(n + 6, 16, &x)) {
            struct tl_image im;
            if (img_open(t, n, x, &im) == 0 && (rc = img_insert(t, &im)) != 0) {
                close(im.fd);
                free(im.path);
            }
        }
    }
    closedir(d);
    if (f->nlog)
        qsort(f->logs, f->nlog, sizeof *f->logs, u64_cmp);
    return rc;
}

/* Opens one segment: sealed from its index, else recovered (and sealed if it
 * is not the last one, which only a crash during sealing leaves behind). */
static int tl_load_segment(struct dbm_timeline *t, uint64_t first, int last)
{
    char name[40];
    snprintf(name, sizeof name, "log.%016" PRIx64, first);
    char *path = path_join(t->dir, name), *idx = path ? malloc(strlen(path) + 5) : NULL;
    struct pgs_seg *g = NULL;
    int rc = -ENOMEM;
    if (!idx)
        goto out;
    sprintf(idx, "%s.idx", path);
    if (access(idx, F_OK) == 0) {
        rc = dbm_pgs_seg_open_sealed(path, t->id, t->page_size, first, &g);
    } else {
        struct pgs_recovery rec;
        rc = dbm_pgs_seg_recover(path, t->id, t->page_size, first, &g, &rec);
        if (!rc && rec.bad_txid)
            t->bad_txid = rec.bad_txid;
        if (!rc && !last && !rec.bad_txid) {
            rc = dbm_pgs_seg_write_index(t->dirfd, g);
            if (!rc)
                dbm_pgs_seg_mark_sealed(g);
        }
    }
    if (!rc && t->nseg && t->segs[t->nseg - 1]->last_txid + 1 != first) {
        dbm_err("pagestore: %s: segments are not contiguous (gap before txid %" PRIu64 ")", t->dir, first);
        rc = -EIO;
    }
    if (!rc)
        rc = seg_push(t, g);
    if (!rc)
        g = NULL;
out:
    dbm_pgs_seg_free(g);
    free(idx);
    free(path);
    return rc;
}

static int tl_txinfo_rd(struct dbm_timeline *t, uint64_t txid, struct dbm_txinfo *out);

/* Sets first_txid from what is on disk: the start of the timeline if the log
 * reaches back to it, else the oldest image the log continues from. */
static int tl_set_first(struct dbm_timeline *t)
{
    uint64_t start = t->parent_id ? t->branch_txid : 0;
    uint64_t own_first = t->nseg ? t->segs[0]->first_txid : t->last_txid + 1;
    if (own_first <= start + 1) {
        t->first_txid = t->parent_id ? start : t->last_txid ? 1 : 0;
        return 0;
    }
    for (size_t i = 0; i < t->nimg; i++)
        if (t->imgs[i].txid + 1 >= own_first) {
            t->first_txid = t->imgs[i].txid;
            return 0;
        }
    dbm_err("pagestore: %s: history before txid %" PRIu64 " is missing and no image covers it", t->dir,
            own_first);
    return -EIO;
}

/* Derives the summary (last txid, counts) once segments and images are in. */
static int tl_summarise(struct dbm_timeline *t)
{
    t->last_txid = t->parent_id ? t->branch_txid : 0;
    for (size_t i = 0; i < t->nseg; i++) {
        struct pgs_seg *g = t->segs[i];
        if (g->last_txid > t->last_txid)
            t->last_txid = g->last_txid;
        t->commits += g->last_txid + 1 - g->first_txid;
    }
    if (t->nimg && t->imgs[t->nimg - 1].txid > t->last_txid)
        t->last_txid = t->imgs[t->nimg - 1].txid;
    int rc = tl_set_first(t);
    if (rc)
        return rc;
    struct dbm_txinfo ti = { 0, 0, 0 };
    rc = tl_txinfo_rd(t, t->last_txid, &ti);
    if (rc)
        return rc;
    t->last_ns = ti.commit_ns;
    t->db_pages = ti.db_pages;
    uint64_t base = t->nimg ? t->imgs[t->nimg - 1].txid : 0;
    for (size_t i = 0; i < t->nseg; i++)
        if (t->segs[i]->last_txid > base)
            t->since_image += t->segs[i]->end;
    return 0;
}

static int tl_load(struct dbm_store *s, const struct tl_entry *e, struct dbm_timeline **out)
{
    struct dbm_timeline *t = calloc(1, sizeof *t);
    struct tl_files f = { NULL, 0, 0 };
    struct tl_meta m;
    char name[32];
    if (!t)
        return -ENOMEM;
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    /* appends must not starve behind a stream of readers */
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_mutex_init(&t->img_lock, NULL);
    pthread_mutex_init(&t->append_lock, NULL);
    pthread_rwlock_init(&t->rw, &ra);
    pthread_rwlockattr_destroy(&ra);
    pthread_mutex_init(&t->bg_mu, NULL);
    pthread_cond_init(&t->bg_cv, NULL);
    t->s = s;
    t->dirfd = -1;
    snprintf(name, sizeof name, "%016" PRIx64, e->id);
    int rc = meta_read(s->dirfd, name, &m);
    if (rc)
        goto fail;
    t->id = e->id;
    t->parent_id = m.parent_id;
    t->branch_txid = m.branch_txid;
    t->page_size = m.page_size;
    rc = -ENOMEM;
    t->dir = path_join(s->dir, name);
    if (!t->dir)
        goto fail;
    t->dirfd = open(t->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (t->dirfd < 0) {
        rc = -errno;
        goto fail;
    }
    if (t->parent_id) {
        rc = tl_get_locked(s, t->parent_id, &t->parent);
        if (!rc && t->branch_txid)
            rc = dbm_tl_txinfo(t->parent, t->branch_txid, &t->branch);
        if (rc) {
            dbm_err("pagestore: %s: parent %016" PRIx64 " cannot serve txid %" PRIu64 ": %s", t->dir,
                    t->parent_id, t->branch_txid, strerror(-rc));
            goto fail;
        }
    }
    rc = tl_list(t, &f);
    for (size_t i = 0; !rc && i < f.nlog; i++)
        rc = tl_load_segment(t, f.logs[i], i + 1 == f.nlog);
    if (!rc)
        rc = tl_summarise(t);
    if (rc)
        goto fail;
    free(f.logs);
    *out = t;
    return 0;
fail:
    free(f.logs);
    if (t->parent)
        tl_put_locked(t->parent);
    tl_free(t);
    return rc;
}

/* open_lock held. Returns a new reference. */
static int tl_get_locked(struct dbm_store *s, uint64_t id, struct dbm_timeline **out)
{
    pthread_mutex_lock(&s->lock);
    struct tl_entry *e = store_find(s, id), copy;
    if (e && e->tl) {
        e->tl->refs++;
        *out = e->tl;
    }
    if (e)
        copy = *e;
    pthread_mutex_unlock(&s->lock);
    if (!e)
        return -ENOENT;
    if (copy.tl)
        return 0;
    struct dbm_timeline *t = NULL;
    int rc = tl_load(s, &copy, &t);
    if (rc)
        return rc;
    pthread_mutex_lock(&s->lock);
    e = store_find(s, id); /* present: drop needs open_lock, which we hold */
    e->tl = t;
    t->refs = 1;
    pthread_mutex_unlock(&s->lock);
    *out = t;
    return 0;
}

/* open_lock held. Drops a reference; the last one frees. */
static void tl_put_locked(struct dbm_timeline *t)
{
    struct dbm_store *s = t->s;
    pthread_mutex_lock(&s->lock);
    int last = --t->refs == 0;
    if (last) {
        struct tl_entry *e = store_find(s, t->id);
        if (e)
            e->tl = NULL;
    }
    pthread_mutex_unlock(&s->lock);
    if (!last)
        return;
    struct dbm_timeline *p = t->parent;
    tl_free(t);
    if (p)
        tl_put_locked(p);
}

int dbm_tl_open(struct dbm_store *s, uint64_t id, struct dbm_timeline **out)
{
    pthread_mutex_lock(&s->open_lock);
    int rc = tl_get_locked(s, id, out);
    pthread_mutex_unlock(&s->open_lock);
    return rc;
}

void dbm_tl_close(struct dbm_timeline *t)
{
    if (!t)
        return;
    struct dbm_store *s = t->s;
    pthread_mutex_lock(&s->open_lock);
    tl_put_locked(t);
    pthread_mutex_unlock(&s->open_lock);
}

/* ---- lookups (tl->rw held for reading) ---- */

/* Index of the last segment with first_txid <= txid, or -1. */
static long seg_at(const struct dbm_timeline *t, uint64_t txid)
{
    size_t lo = 0, hi = t->nseg;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (t->segs[mid]->first_txid <= txid)
            lo = mid + 1;
        else
            hi = mid;
    }
    return (long)lo - 1;
}

/* Newest image with txid <= txid, or NULL. */
static const struct tl_image *img_at(const struct dbm_timeline *t, uint64_t txid)
{
    size_t lo = 0, hi = t->nimg;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (t->imgs[mid].txid <= txid)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo ? &t->imgs[lo - 1] : NULL;
}

static int tl_txinfo_rd(struct dbm_timeline *t, uint64_t txid, struct dbm_txinfo *out)
{
    if (txid == 0) {
        *out = (struct dbm_txinfo){ 0, 0, 0 };
        return 0;
    }
    long i = seg_at(t, txid);
    if (i >= 0) {
        struct pgs_txn x;
        int r = dbm_pgs_seg_txn(t->segs[i], txid, &x);
        if (r < 0)
            return r;
        if (r) {
            *out = (struct dbm_txinfo){ x.txid, x.commit_ns, x.db_pages };
            return 0;
        }
    }
    const struct tl_image *im = img_at(t, txid);
    if (im && im->txid == txid) {
        *out = (struct dbm_txinfo){ im->txid, im->commit_ns, im->db_pages };
        return 0;
    }
    if (t->parent_id && txid == t->branch_txid) {
        *out = t->branch;
        return 0;
    }
    return -ENOENT;
}

/* 1 if no transaction in (lo_excl, hi_incl] had fewer than pgno pages. */
static int tl_pages_cover(struct dbm_timeline *t, uint64_t lo_excl, uint64_t hi_incl, uint32_t pgno)
{
    for (long i = seg_at(t, hi_incl); i >= 0 && t->segs[i]->last_txid > lo_excl; i--) {
        int r = dbm_pgs_seg_pages_cover(t->segs[i], lo_excl, hi_incl, pgno);
        if (r <= 0)
            return r;
    }
    return 1;
}

static int zeros(const struct dbm_timeline *t, void *buf)
{
    memset(buf, 0, t->page_size);
    return 1;
}

static int img_read(const struct dbm_timeline *t, const struct tl_image *im, uint32_t pgno, void *buf)
{
    struct img_ent e;
    if (pgno > im->db_pages)
        return zeros(t, buf);
    off_t eo = (off_t)(sizeof(struct img_hdr) + (uint64_t)(pgno - 1) * sizeof e);
    off_t po = (off_t)(im->data_off + (uint64_t)(pgno - 1) * t->page_size);
    ssize_t r = dbm_pread_all(im->fd, &e, sizeof e, eo);
    if (r < 0)
        return (int)r;
    if (r == (ssize_t)sizeof e && e.state == IMG_ABSENT) {
        memset(buf, 0, t->page_size);
        return 1;
    }
    if (r == (ssize_t)sizeof e && e.state == IMG_PRESENT) {
        r = dbm_pread_all(im->fd, buf, t->page_size, po);
        if (r < 0)
            return (int)r;
        if (r == (ssize_t)t->page_size && dbm_pgs_page_crc(pgno, im->txid, buf, t->page_size) == e.crc)
            return 0;
        dbm_err("pagestore: %s: page %u checksum mismatch at offset %lld", im->path, pgno, (long long)po);
        return -EIO;
    }
    dbm_err("pagestore: %s: bad page table entry at offset %lld", im->path, (long long)eo);
    return -EIO;
}

/* Reads pgno at txid from this timeline's own history. Returns 0/1 like
 * dbm_tl_read_page, or 2 when the read must go on in the parent. */
static int tl_read_rd(struct dbm_timeline *t, uint64_t txid, uint32_t pgno, void *buf)
{
    struct dbm_txinfo ti;
    int rc = tl_txinfo_rd(t, txid, &ti);
    if (rc)
        return rc == -ENOENT ? -EIO : rc;
    if (pgno == 0 || pgno > ti.db_pages)
        return zeros(t, buf);
    const struct tl_image *im = img_at(t, txid);
    uint64_t base = im ? im->txid : t->parent_id ? t->branch_txid : 0;
    for (long i = seg_at(t, txid); i >= 0 && t->segs[i]->last_txid > base; i--) {
        struct pgs_ent e;
        rc = dbm_pgs_seg_find(t->segs[i], pgno, txid, base, &e);
        if (rc < 0)
            return rc;
        if (rc == 0)
            continue;
        rc = tl_pages_cover(t, e.txid - 1, txid, pgno);
        if (rc <= 0)
            return rc < 0 ? rc : zeros(t, buf);
        return dbm_pgs_seg_read(t->segs[i], &e, buf);
    }
    rc = tl_pages_cover(t, base, txid, pgno);
    if (rc <= 0)
        return rc < 0 ? rc : zeros(t, buf);
    if (im)
        return img_read(t, im, pgno, buf);
    if (t->parent_id && t->branch_txid)
        return 2;
    return zeros(t, buf);
}

int dbm_tl_read_page(struct dbm_timeline *t, uint64_t txid, uint32_t pgno, void *buf)
{
    for (;;) {
        int rc;
        pthread_rwlock_rdlock(&t->rw);
        if (t->bad_txid && txid >= t->bad_txid)
            rc = -EIO;
        else if (txid < t->first_txid || txid > t->last_txid)
            rc = -ERANGE;
        else
            rc = tl_read_rd(t, txid, pgno, buf);
        pthread_rwlock_unlock(&t->rw);
        if (rc != 2)
            return rc;
        txid = t->branch_txid; /* immutable; the parent is held for t's life */
        t = t->parent;
    }
}

static int tl_txid_at_rd(struct dbm_timeline *t, uint64_t ns, struct dbm_txinfo *out)
{
    size_t lo = 0, hi = t->nseg; /* first non-empty segment with min_ns > ns */
    while (hi > 0 && t->segs[hi - 1]->last_txid < t->segs[hi - 1]->first_txid)
        hi--;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (t->segs[mid]->min_ns <= ns)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo > 0) {
        struct pgs_txn x;
        int r = dbm_pgs_seg_txn_at(t->segs[lo - 1], ns, &x);
        if (r < 0)
            return r;
        if (r && x.txid >= t->first_txid) {
            *out = (struct dbm_txinfo){ x.txid, x.commit_ns, x.db_pages };
            return 0;
        }
    }
    struct dbm_txinfo b;
    if (t->first_txid && tl_txinfo_rd(t, t->first_txid, &b) == 0 && b.commit_ns <= ns) {
        *out = b;
        return 0;
    }
    return -ENOENT;
}

int dbm_tl_txid_at(struct dbm_timeline *t, uint64_t time_ns, struct dbm_txinfo *out)
{
    pthread_rwlock_rdlock(&t->rw);
    int rc = tl_txid_at_rd(t, time_ns, out);
    pthread_rwlock_unlock(&t->rw);
    return rc;
}

int dbm_tl_txinfo(struct dbm_timeline *t, uint64_t txid, struct dbm_txinfo *out)
{
    int rc = -ENOENT;
    pthread_rwlock_rdlock(&t->rw);
    if (txid && txid >= t->first_txid && txid <= t->last_txid)
        rc = tl_txinfo_rd(t, txid, out);
    pthread_rwlock_unlock(&t->rw);
    return rc;
}

int dbm_tl_stat(struct dbm_timeline *t, struct dbm_tl_stat *out)
{
    memset(out, 0, sizeof *out);
    pthread_rwlock_rdlock(&t->rw);
    out->id = t->id;
    out->parent_id = t->parent_id;
    out->branch_txid = t->branch_txid;
    out->page_size = t->page_size;
    out->db_pages = t->db_pages;
    out->first_txid = t->first_txid;
    out->last_txid = t->last_txid;
    out->last_ns = t->last_ns;
    out->commits = t->commits;
    struct dbm_txinfo ti;
    if (t->first_txid && tl_txinfo_rd(t, t->first_txid, &ti) == 0)
        out->first_ns = ti.commit_ns;
    for (size_t i = 0; i < t->nseg; i++)
        out->history_bytes += t->segs[i]->end + t->segs[i]->idx_bytes;
    for (size_t i = 0; i < t->nimg; i++)
        out->history_bytes += t->imgs[i].bytes;
    pthread_rwlock_unlock(&t->rw);
    return 0;
}

int dbm_tl_pages_after(struct dbm_timeline *t, uint64_t txid, int (*cb)(uint32_t pgno, void *arg), void *arg)
{
    pthread_rwlock_rdlock(&t->rw);
    int rc = 0;
    if (txid < t->last_txid && (t->first_txid == 0 || txid + 1 < t->first_txid))
        rc = -ERANGE; /* retention dropped some of them: the list would be short */
    for (size_t i = t->nseg; rc == 0 && i > 0 && t->segs[i - 1]->last_txid > txid; i--)
        rc = dbm_pgs_seg_pages_after(t->segs[i - 1], txid, cb, arg);
    pthread_rwlock_unlock(&t->rw);
    return rc;
}

/* ---- images ---- */

struct img_batch {
    uint8_t *buf;
    uint32_t start, n; /* first pgno and count of the pages in buf */
    uint64_t kicked;   /* writeback started up to here (file offset) */
    uint64_t waited;   /* and waited for up to here */
};

/* Writes the batch out. Pages go out in file order, so writeback is started
 * every IMG_BEHIND bytes and the chunk before waited for: the image never
 * holds more than two chunks dirty, and the commits' flushes do not queue
 * behind a whole database at its fsync. */
static int img_flush(const struct dbm_timeline *t, int fd, uint64_t data_off, struct img_batch *b)
{
    int rc = 0;
    uint64_t end = data_off + (uint64_t)(b->start - 1 + b->n) * t->page_size;
    if (b->n)
        rc = dbm_pwrite_all(fd, b->buf, (size_t)b->n * t->page_size,
                            (off_t)(data_off + (uint64_t)(b->start - 1) * t->page_size));
    b->n = 0;
    if (!rc && end >= b->kicked + IMG_BEHIND) {
        /* advisory: the fsync at the end is what makes the image durable */
        if (b->kicked > b->waited)
            sync_file_range(fd, (off_t)b->waited, (off_t)(b->kicked - b->waited),
                            SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
        b->waited = b->kicked;
        sync_file_range(fd, (off_t)b->kicked, (off_t)(end - b->kicked), SYNC_FILE_RANGE_WRITE);
        b->kicked = end;
    }
    return rc;
}

/* Writes every page at ti->txid into fd; absent pages stay holes. */
static int img_fill(struct dbm_timeline *t, int fd, const struct dbm_txinfo *ti, uint64_t data_off,
                    struct img_ent *ents)
{
    struct img_batch b = { malloc((size_t)IMG_BATCH * t->page_size), 0, 0, data_off, data_off };
    if (!b.buf)
        return -ENOMEM;
    int rc = 0;
    for (uint32_t pgno = 1; !rc && pgno <= ti->db_pages; pgno++) {
        uint8_t *p = b.buf + (size_t)b.n * t->page_size;
        int r = __atomic_load_n(&t->img_stop, __ATOMIC_RELAXED) ? -ECANCELED
                                                                 : dbm_tl_read_page(t, ti->txid, pgno, p);
        if (r < 0) {
            rc = r;
        } else if (r == 1) {
            ents[pgno - 1] = (struct img_ent){ 0, IMG_ABSENT };
            rc = img_flush(t, fd, data_off, &b);
        } else {
            ents[pgno - 1] = (struct img_ent){ dbm_pgs_page_crc(pgno, ti->txid, p, t->page_size), IMG_PRESENT };
            if (b.n++ == 0)
                b.start = pgno;
            if (b.n == IMG_BATCH)
                rc = img_flush(t, fd, data_off, &b);
        }
    }
    if (!rc)
        rc = img_flush(t, fd, data_off, &b);
    free(b.buf);
    return rc;
}

static int img_write(struct dbm_timeline *t, int fd, const struct dbm_txinfo *ti)
{
    struct img_hdr h;
    memset(&h, 0, sizeof h);
    uint64_t tab = (uint64_t)ti->db_pages * sizeof(struct img_ent);
    h.magic = PGS_IMG_MAGIC;
    h.version = PGS_VERSION;
    h.page_size = t->page_size;
    h.txid = ti->txid;
    h.commit_ns = ti->commit_ns;
    h.db_pages = ti->db_pages;
    h.data_off = (sizeof h + tab + t->page_size - 1) / t->page_size * t->page_size;
    h.crc = dbm_crc32c(0, &h, offsetof(struct img_hdr, crc));
    struct img_ent *ents = malloc(tab ? tab : 1);
    if (!ents)
        return -ENOMEM;
    int rc = 0;
    if (dbm_sys.ftruncate(fd, (off_t)(h.data_off + (uint64_t)ti->db_pages * t->page_size)) < 0)
        rc = -errno;
    if (!rc)
        rc = img_fill(t, fd, ti, h.data_off, ents);
    if (!rc)
        rc = dbm_pwrite_all(fd, ents, tab, sizeof h);
    if (!rc)
        rc = dbm_pwrite_all(fd, &h, sizeof h, 0);
    if (!rc && dbm_sys.fsync(fd) < 0)
        rc = -errno;
    free(ents);
    return rc;
}

/* Log bytes after txid (rw held): what an image at txid leaves to read
 * through. The segment holding txid counts from the next record on. */
static uint64_t tl_log_after(struct dbm_timeline *t, uint64_t txid)
{
    uint64_t b = 0;
    for (size_t i = 0; i < t->nseg; i++) {
        struct pgs_seg *g = t->segs[i];
        struct pgs_txn x;
        if (g->last_txid <= txid || g->last_txid < g->first_txid)
            continue;
        if (g->first_txid > txid || dbm_pgs_seg_txn(g, txid + 1, &x) != 1 || x.rec_off > g->end)
            b += g->end;
        else
            b += g->end - x.rec_off;
    }
    return b;
}

/* Writes image.<txid> and publishes it (img_lock held, not append_lock:
 * commits go on while it is written). 0 or -errno (logged unless
 * -ECANCELED: the timeline is being freed). */
static int img_make(struct dbm_timeline *t, uint64_t txid)
{
    struct dbm_txinfo ti;
    pthread_rwlock_rdlock(&t->rw);
    const struct tl_image *have = img_at(t, txid);
    int rc = have && have->txid == txid ? 1 : tl_txinfo_rd(t, txid, &ti);
    pthread_rwlock_unlock(&t->rw);
    if (rc)
        return rc > 0 ? 0 : rc;
    char name[40], tmp[48];
    snprintf(name, sizeof name, "image.%016" PRIx64, txid);
    snprintf(tmp, sizeof tmp, "%s.tmp", name);
    char *from = path_join(t->dir, tmp), *to = path_join(t->dir, name);
    int fd = from && to ? openat(t->dirfd, tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644) : -1;
    if (fd < 0) {
        rc = from && to ? -errno : -ENOMEM;
        goto out;
    }
    rc = img_write(t, fd, &ti);
    close(fd);
    if (!rc && dbm_sys.rename(from, to) < 0)
        rc = -errno;
    if (!rc)
        rc = dbm_pgs_fsync_dir(t->dirfd);
    struct tl_image im;
    if (!rc)
        rc = img_open(t, name, txid, &im);
    if (!rc) {
        /* since_image counts from the newest image: measured here, plus
         * what commits publish between the two locks */
        pthread_rwlock_rdlock(&t->rw);
        uint64_t after = tl_log_after(t, txid), added = t->log_added;
        pthread_rwlock_unlock(&t->rw);
        pthread_rwlock_wrlock(&t->rw);
        rc = img_insert(t, &im);
        if (!rc && t->imgs[t->nimg - 1].txid == txid)
            t->since_image = after + (t->log_added - added);
        pthread_rwlock_unlock(&t->rw);
        if (rc) {
            close(im.fd);
            free(im.path);
        }
    }
out:
    if (rc && rc != -ECANCELED)
        dbm_err("pagestore: %s: cannot write image at txid %" PRIu64 ": %s", t->dir, txid, strerror(-rc));
    if (rc && from)
        unlink(from);
    free(from);
    free(to);
    return rc;
}

int dbm_tl_image(struct dbm_timeline *t)
{
    pthread_mutex_lock(&t->img_lock);
    pthread_rwlock_rdlock(&t->rw);
    int rc = t->bad_txid ? -EIO : 0;
    uint64_t last = t->last_txid;
    pthread_rwlock_unlock(&t->rw);
    if (!rc && last)
        rc = img_make(t, last);
    pthread_mutex_unlock(&t->img_lock);
    return rc;
}

static void *img_bg_main(void *arg)
{
    struct dbm_timeline *t = arg;
    /* a copy of the database must not take the CPU from the requests that
     * wait on the daemon (best effort: nice is per thread on Linux) */
    setpriority(PRIO_PROCESS, (id_t)gettid(), IMG_NICE);
    pthread_mutex_lock(&t->bg_mu);
    uint64_t txid = t->bg_txid;
    pthread_mutex_unlock(&t->bg_mu);
    pthread_mutex_lock(&t->img_lock);
    int rc = img_make(t, txid);
    pthread_mutex_unlock(&t->img_lock);
    pthread_mutex_lock(&t->bg_mu);
    t->bg_running = 0;
    if (rc && rc != -ECANCELED)
        t->bg_retry_ns = dbm_mono_ns() + IMG_RETRY_NS;
    pthread_cond_broadcast(&t->bg_cv);
    pthread_mutex_unlock(&t->bg_mu);
    return NULL;
}

void dbm_pgs_tl_image_soon(struct dbm_timeline *t, uint64_t txid)
{
    pthread_mutex_lock(&t->bg_mu);
    if (t->bg_running || (t->bg_retry_ns && dbm_mono_ns() < t->bg_retry_ns)) {
        pthread_mutex_unlock(&t->bg_mu);
        return;
    }
    if (t->bg_joinable) /* the last one has ended: bg_running is 0 */
        pthread_join(t->bg_th, NULL);
    t->bg_joinable = 0;
    t->bg_txid = txid;
    t->bg_running = 1;
    int rc = dbm_thread_start(&t->bg_th, "dbm-image", img_bg_main, t);
    if (rc) {
        t->bg_running = 0;
        t->bg_retry_ns = dbm_mono_ns() + IMG_RETRY_NS;
        dbm_err("pagestore: %s: cannot start writing an image at txid %" PRIu64 ": %s", t->dir, txid,
                strerror(-rc));
    } else {
        t->bg_joinable = 1;
    }
    pthread_mutex_unlock(&t->bg_mu);
}

void dbm_tl_image_wait(struct dbm_timeline *t)
{
    pthread_mutex_lock(&t->bg_mu);
    while (t->bg_running)
        pthread_cond_wait(&t->bg_cv, &t->bg_mu);
    pthread_mutex_unlock(&t->bg_mu);
}

/* ---- appending ---- */

/* The segment to append rec_len bytes to: seals a full one, creates a new
 * one. append_lock held. */
int dbm_pgs_tl_active(struct dbm_timeline *t, uint64_t rec_len, struct pgs_seg **out)
{
    struct pgs_seg *g = t->nseg ? t->segs[t->nseg - 1] : NULL;
    int rc;
    if (g && !g->sealed && g->last_txid >= g->first_txid && g->end + rec_len > t->s->segment_bytes) {
        rc = dbm_pgs_seg_write_index(t->dirfd, g);
        if (rc)
            return rc;
        pthread_rwlock_wrlock(&t->rw);
        dbm_pgs_seg_mark_sealed(g);
        pthread_rwlock_unlock(&t->rw);
    }
    if (g && !g->sealed) {
        *out = g;
        return 0;
    }
    rc = dbm_pgs_seg_create(t->dirfd, t->dir, t->id, t->page_size, t->last_txid + 1, t->s->segment_bytes, &g);
    if (rc)
        return rc;
    pthread_rwlock_wrlock(&t->rw);
    rc = seg_push(t, g);
    pthread_rwlock_unlock(&t->rw);
    if (rc) {
        dbm_pgs_seg_unlink(g);
        dbm_pgs_seg_free(g);
        return rc;
    }
    *out = g;
    return 0;
}

static uint64_t tl_image_interval(const struct dbm_timeline *t)
{
    uint64_t db = (uint64_t)t->db_pages * t->page_size;
    if (t->s->image_bytes)
        return t->s->image_bytes;
    return db > DEFAULT_IMAGE ? db : DEFAULT_IMAGE;
}

int dbm_pgs_pages_valid(const struct dbm_page_write *pages, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (pages[i].pgno == 0 || !pages[i].data)
            return 0;
    return 1;
}

uint64_t dbm_pgs_tl_clamp_ns(struct dbm_timeline *t, uint64_t commit_ns)
{
    if (commit_ns >= t->last_ns)
        return commit_ns;
    dbm_warn("pagestore: %s: commit time went backwards by %" PRIu64 " ns; clamped", t->dir,
             t->last_ns - commit_ns);
    return t->last_ns;
}

/* The timeline's side of a publication (tl->rw write-locked): returns
 * whether an image is due. */
int dbm_pgs_tl_committed(struct dbm_timeline *t, uint64_t txid, uint64_t commit_ns, uint32_t db_pages,
                         uint64_t len)
{
    t->last_txid = txid;
    t->last_ns = commit_ns;
    t->db_pages = db_pages;
    t->commits++;
    if (!t->parent_id && t->first_txid == 0)
        t->first_txid = 1;
    t->since_image += len;
    t->log_added += len;
    return t->since_image >= tl_image_interval(t);
}

static int tl_append_streamed(struct dbm_timeline *t, uint64_t commit_ns, uint32_t db_pages,
                              const struct dbm_page_write *pages, size_t n, uint64_t *txid_out)
{
    struct dbm_tl_txn *x;
    int rc = dbm_tl_txn_begin(t, &x);
    if (!rc)
        rc = dbm_tl_txn_add(x, pages, n);
    if (rc) {
        dbm_tl_txn_abort(x);
        return rc;
    }
    return dbm_tl_txn_commit(x, commit_ns, db_pages, txid_out);
}

int dbm_tl_append(struct dbm_timeline *t, uint64_t commit_ns, uint32_t db_pages,
                  const struct dbm_page_write *pages, size_t n, uint64_t *txid_out)
{
    if (!dbm_pgs_pages_valid(pages, n))
        return -EINVAL;
    /* A large transaction goes out in parts, so that no record-sized buffer
     * is needed; a small one stays one record and one write. */
    if (n > 1 && n * (sizeof(struct pgs_rec_ent) + t->page_size) > PGS_PART_BYTES)
        return tl_append_streamed(t, commit_ns, db_pages, pages, n, txid_out);
    pthread_mutex_lock(&t->append_lock);
    struct pgs_seg *g;
    uint64_t txid = t->last_txid + 1, len;
    int rc = t->bad_txid ? -EIO : t->txn ? -EBUSY : 0;
    if (!rc)
        commit_ns = dbm_pgs_tl_clamp_ns(t, commit_ns);
    if (!rc)
        rc = dbm_pgs_tl_active(t, sizeof(struct pgs_rec_hdr) + n * (sizeof(struct pgs_rec_ent) + t->page_size),
                               &g);
    if (!rc) {
        pthread_rwlock_wrlock(&t->rw);
        rc = dbm_pgs_seg_reserve(g, n);
        pthread_rwlock_unlock(&t->rw);
    }
    if (!rc)
        rc = dbm_pgs_seg_write(g, txid, commit_ns, db_pages, pages, n, t->s->segment_bytes, &len);
    if (rc) {
        pthread_mutex_unlock(&t->append_lock);
        return rc;
    }
    pthread_rwlock_wrlock(&t->rw);
    dbm_pgs_seg_publish(g);
    int want_image = dbm_pgs_tl_committed(t, txid, commit_ns, db_pages, len);
    pthread_rwlock_unlock(&t->rw);
    if (want_image)
        dbm_pgs_tl_image_soon(t, txid);
    pthread_mutex_unlock(&t->append_lock);
    if (txid_out)
        *txid_out = txid;
    return 0;
}

/* ---- retention ---- */

/* Bytes that keeping history only from an image at txid upto would free. */
static uint64_t gc_gain(const struct dbm_timeline *t, uint64_t upto)
{
    uint64_t b = 0;
    for (size_t i = 0; i < t->nseg && t->segs[i]->sealed && t->segs[i]->last_txid <= upto; i++)
        b += t->segs[i]->end + t->segs[i]->idx_bytes;
    for (size_t i = 0; i < t->nimg && t->imgs[i].txid < upto; i++)
        b += t->imgs[i].bytes;
    return b;
}

/* The oldest txid that must stay readable: the one in force at horizon_ns,
 * or an older branch point of a child. 0: nothing to drop. */
static uint64_t gc_required(struct dbm_timeline *t, uint64_t keep)
{
    pthread_mutex_lock(&t->s->lock);
    uint64_t minb = store_min_child_branch(t->s, t->id);
    pthread_mutex_unlock(&t->s->lock);
    uint64_t req = keep < minb ? keep : minb;
    return req > t->first_txid ? req : 0;
}

/* Writes an image at req if that frees at least as much as it costs
 * (img_lock held, not append_lock: commits go on meanwhile). */
static void gc_maybe_image(struct dbm_timeline *t, uint64_t req)
{
    struct dbm_txinfo ti = { 0, 0, 0 };
    pthread_rwlock_rdlock(&t->rw);
    const struct tl_image *im = img_at(t, req);
    uint64_t old = im ? gc_gain(t, im->txid) : 0, now = gc_gain(t, req);
    int rc = tl_txinfo_rd(t, req, &ti);
    pthread_rwlock_unlock(&t->rw);
    if (!rc && (!im || im->txid != req) && now > old && now - old >= (uint64_t)ti.db_pages * t->page_size)
        img_make(t, req);
}

struct gc_drop {
    struct pgs_seg **segs;
    size_t nseg;
    struct tl_image *imgs;
    size_t nimg;
};

/* Unlinks what gc_unpublish took out. */
static int64_t gc_delete(struct dbm_timeline *t, struct gc_drop *d)
{
    int64_t freed = 0;
    for (size_t i = 0; i < d->nseg; i++) {
        freed += (int64_t)dbm_pgs_seg_unlink(d->segs[i]);
        dbm_pgs_seg_free(d->segs[i]);
    }
    for (size_t i = 0; i < d->nimg; i++) {
        freed += (int64_t)d->imgs[i].bytes;
        if (unlink(d->imgs[i].path) < 0)
            dbm_warn("pagestore: cannot remove %s: %s", d->imgs[i].path, strerror(errno));
        close(d->imgs[i].fd);
        free(d->imgs[i].path);
    }
    if (d->nseg || d->nimg)
        dbm_pgs_fsync_dir(t->dirfd);
    free(d->segs);
    free(d->imgs);
    return freed;
}

/* Takes out (write-locked) the segments and images older than the newest
 * image at or before the required txid, recomputed now that no child can be
 * registered concurrently. */
static int gc_unpublish(struct dbm_timeline *t, uint64_t keep, struct gc_drop *d)
{
    memset(d, 0, sizeof *d);
    pthread_rwlock_wrlock(&t->rw);
    uint64_t req = gc_required(t, keep);
    const struct tl_image *im = req ? img_at(t, req) : NULL;
    uint64_t base = im ? im->txid : 0;
    size_t ns = 0, ni = 0;
    while (im && ns < t->nseg && t->segs[ns]->sealed && t->segs[ns]->last_txid <= base)
        ns++;
    while (im && ni < t->nimg && t->imgs[ni].txid < base)
        ni++;
    d->segs = malloc((ns ? ns : 1) * sizeof *d->segs);
    d->imgs = malloc((ni ? ni : 1) * sizeof *d->imgs);
    if (!d->segs || !d->imgs) {
        pthread_rwlock_unlock(&t->rw);
        return -ENOMEM;
    }
    for (size_t i = 0; i < ns; i++) {
        d->segs[i] = t->segs[i];
        t->commits -= t->segs[i]->last_txid + 1 - t->segs[i]->first_txid;
    }
    for (size_t i = 0; i < ni; i++)
        d->imgs[i] = t->imgs[i];
    for (size_t i = ns; i < t->nseg; i++)
        t->segs[i - ns] = t->segs[i];
    for (size_t i = ni; i < t->nimg; i++)
        t->imgs[i - ni] = t->imgs[i];
    t->nseg -= ns;
    t->nimg -= ni;
    d->nseg = ns;
    d->nimg = ni;
    int rc = tl_set_first(t);
    pthread_rwlock_unlock(&t->rw);
    return rc;
}

int64_t dbm_tl_gc(struct dbm_timeline *t, uint64_t horizon_ns)
{
    struct dbm_txinfo keep;
    pthread_mutex_lock(&t->img_lock);
    pthread_rwlock_rdlock(&t->rw);
    int rc = t->bad_txid ? -EIO : tl_txid_at_rd(t, horizon_ns, &keep);
    pthread_rwlock_unlock(&t->rw);
    if (rc) {
        pthread_mutex_unlock(&t->img_lock);
        return rc == -ENOENT ? 0 : rc;
    }
    uint64_t req = gc_required(t, keep.txid);
    if (!req) {
        pthread_mutex_unlock(&t->img_lock);
        return 0;
    }
    gc_maybe_image(t, req);
    struct gc_drop d;
    /* the appender reads the segment array without the rw lock */
    pthread_mutex_lock(&t->append_lock);
    rc = gc_unpublish(t, keep.txid, &d);
    pthread_mutex_unlock(&t->append_lock);
    int64_t freed = gc_delete(t, &d);
    pthread_mutex_unlock(&t->img_lock);
    return rc ? rc : freed;
}
