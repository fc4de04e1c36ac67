/* pgseg.c - one log segment of a page-store timeline: record writing,
 * recovery of the active segment, its index in RAM, sealing to an on-disk
 * index, and lookups. See pagestore_i.h for the locking contract and
 * pagestore.c for the on-disk format. */
#include "pagestore_i.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crc32c.h"
#include "log.h"
#include "strutil.h"
#include "sysio.h"

_Static_assert(sizeof(struct pgs_seg_hdr) == PGS_SEG_HDR, "segment header layout");
_Static_assert(sizeof(struct pgs_rec_hdr) == 48, "record header layout");
_Static_assert(sizeof(struct pgs_rec_ent) == 8, "record entry layout");
_Static_assert(sizeof(struct pgs_txn) == 32, "txn layout");
_Static_assert(sizeof(struct pgs_ent) == 32, "index entry layout");
_Static_assert(sizeof(struct pgs_idx_hdr) == 96, "index header layout");
_Static_assert(PGS_COMMIT_LEN == 64, "commit record layout");

#define ZERO_CHUNK (1u << 20) /* zero-fill ahead of the tail by this much */
#define SCAN_CHUNK (1u << 20)

uint32_t dbm_pgs_page_crc(uint32_t pgno, uint64_t txid, const void *data, uint32_t page_size)
{
    uint8_t key[12];
    memcpy(key, &pgno, 4);
    memcpy(key + 4, &txid, 8);
    return dbm_crc32c(dbm_crc32c(0, key, sizeof key), data, page_size);
}

int dbm_pgs_fsync_dir(int dirfd)
{
    if (dbm_sys.fsync(dirfd) < 0)
        return -errno;
    return 0;
}

static char *str_cat(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *s = malloc(la + lb + 1);
    if (s) {
        memcpy(s, a, la);
        memcpy(s + la, b, lb + 1);
    }
    return s;
}

static struct pgs_seg *seg_new(const char *path, uint64_t tl_id, uint32_t page_size, uint64_t first_txid)
{
    static uint64_t serials;
    struct pgs_seg *g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    g->serial = __atomic_add_fetch(&serials, 1, __ATOMIC_RELAXED);
    g->path = strdup(path);
    if (!g->path) {
        free(g);
        return NULL;
    }
    pthread_mutex_init(&g->map_lock, NULL);
    g->fd = -1;
    g->tl_id = tl_id;
    g->page_size = page_size;
    g->first_txid = first_txid;
    g->last_txid = first_txid - 1;
    g->min_pages = UINT32_MAX;
    g->end = PGS_SEG_HDR;
    return g;
}

void dbm_pgs_seg_free(struct pgs_seg *g)
{
    if (!g)
        return;
    if (g->map)
        munmap(g->map, g->map_len);
    if (g->fd >= 0)
        close(g->fd);
    pthread_mutex_destroy(&g->map_lock);
    free(g->atx);
    free(g->ments);
    free(g->hash);
    free(g->wbuf);
    free(g->path);
    free(g);
}

uint64_t dbm_pgs_seg_unlink(struct pgs_seg *g)
{
    uint64_t bytes = 0;
    struct stat st;
    char *idx = str_cat(g->path, ".idx");
    if (stat(g->path, &st) == 0 && unlink(g->path) == 0)
        bytes += (uint64_t)st.st_size;
    if (idx && stat(idx, &st) == 0 && unlink(idx) == 0)
        bytes += (uint64_t)st.st_size;
    free(idx);
    return bytes;
}

static void seg_hdr_fill(struct pgs_seg_hdr *h, uint64_t tl_id, uint32_t page_size, uint64_t first_txid)
{
    memset(h, 0, sizeof *h);
    h->magic = PGS_SEG_MAGIC;
    h->version = PGS_VERSION;
    h->page_size = page_size;
    h->tl_id = tl_id;
    h->first_txid = first_txid;
    h->crc = dbm_crc32c(0, h, offsetof(struct pgs_seg_hdr, crc));
}

/* Writes a fresh segment header to fd and makes it durable. */
static int seg_init_file(struct pgs_seg *g, uint64_t prealloc)
{
    struct pgs_seg_hdr h;
    seg_hdr_fill(&h, g->tl_id, g->page_size, g->first_txid);
    int rc = dbm_pwrite_all(g->fd, &h, sizeof h, 0);
    if (rc)
        return rc;
    if (prealloc > PGS_SEG_HDR && dbm_sys.fallocate(g->fd, 0, 0, (off_t)prealloc) == 0)
        g->alloc_end = prealloc;
    else
        g->alloc_end = PGS_SEG_HDR;
    g->zero_end = PGS_SEG_HDR;
    if (dbm_sys.fsync(g->fd) < 0)
        return -errno;
    return 0;
}

int dbm_pgs_seg_create(int dirfd, const char *dir, uint64_t tl_id, uint32_t page_size,
                       uint64_t first_txid, uint64_t prealloc, struct pgs_seg **out)
{
    char name[64];
    snprintf(name, sizeof name, "/log.%016llx", (unsigned long long)first_txid);
    char *path = str_cat(dir, name);
    if (!path)
        return -ENOMEM;
    struct pgs_seg *g = seg_new(path, tl_id, page_size, first_txid);
    free(path);
    if (!g)
        return -ENOMEM;
    int rc;
    g->fd = open(g->path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (g->fd < 0) {
        rc = -errno;
        dbm_err("pagestore: cannot create %s: %s", g->path, strerror(-rc));
        goto fail;
    }
    rc = seg_init_file(g, prealloc);
    if (!rc)
        rc = dbm_pgs_fsync_dir(dirfd);
    if (rc) {
        dbm_err("pagestore: cannot initialise %s: %s", g->path, strerror(-rc));
        unlink(g->path);
        goto fail;
    }
    *out = g;
    return 0;
fail:
    dbm_pgs_seg_free(g);
    return rc;
}

/* ---- active index in RAM ---- */

static size_t hash_slot(uint32_t pgno, size_t cap)
{
    return (size_t)((pgno * 0x9E3779B97F4A7C15ull) >> 20) & (cap - 1);
}

/* Returns the slot holding pgno or the empty slot where it goes. */
static size_t hash_find(const struct pgs_seg *g, uint32_t pgno)
{
    size_t i = hash_slot(pgno, g->hcap);
    while (g->hash[i] != UINT32_MAX && g->ments[g->hash[i]].e.pgno != pgno)
        i = (i + 1) & (g->hcap - 1);
    return i;
}

static int hash_grow(struct pgs_seg *g, size_t need)
{
    size_t cap = g->hcap ? g->hcap : 64;
    while (cap < 2 * need)
        cap *= 2;
    if (cap == g->hcap)
        return 0;
    uint32_t *h = malloc(cap * sizeof *h);
    if (!h)
        return -ENOMEM;
    memset(h, 0xff, cap * sizeof *h);
    uint32_t *old = g->hash;
    size_t oldcap = g->hcap;
    g->hash = h;
    g->hcap = cap;
    for (size_t i = 0; i < oldcap; i++)
        if (old[i] != UINT32_MAX)
            h[hash_find(g, g->ments[old[i]].e.pgno)] = old[i];
    free(old);
    return 0;
}

int dbm_pgs_seg_reserve(struct pgs_seg *g, size_t n)
{
    if (g->nment + n >= UINT32_MAX)
        return -EFBIG;
    if (dbm_grow((void **)&g->atx, &g->catx, g->natx + 1, sizeof *g->atx) ||
        dbm_grow((void **)&g->ments, &g->cment, g->nment + n, sizeof *g->ments) ||
        hash_grow(g, g->hused + n))
        return -ENOMEM;
    return 0;
}

/* Links one page version into the RAM index. The caller reserved room. */
static void seg_link(struct pgs_seg *g, uint32_t pgno, uint32_t crc, uint64_t txid, uint64_t data_off,
                     uint64_t rec_off)
{
    struct pgs_ment *m = &g->ments[g->nment];
    m->e.pgno = pgno;
    m->e.crc = crc;
    m->e.txid = txid;
    m->e.data_off = data_off;
    m->e.rec_off = rec_off;
    size_t slot = hash_find(g, pgno);
    m->prev = g->hash[slot];
    if (m->prev == UINT32_MAX)
        g->hused++;
    g->hash[slot] = (uint32_t)g->nment++;
}

/* Adds a transaction to the table and the segment's summary. */
static void seg_add_txn(struct pgs_seg *g, uint64_t txid, uint64_t commit_ns, uint32_t db_pages,
                        uint64_t rec_off)
{
    g->atx[g->natx++] = (struct pgs_txn){ txid, commit_ns, rec_off, db_pages, 0 };
    if (g->last_txid < g->first_txid)
        g->min_ns = commit_ns;
    g->max_ns = commit_ns;
    g->last_txid = txid;
    if (db_pages < g->min_pages)
        g->min_pages = db_pages;
}

/* Adds the record in g->wbuf (written at g->end) to the RAM index. The caller
 * reserved room. */
void dbm_pgs_seg_publish(struct pgs_seg *g)
{
    const struct pgs_rec_hdr *h = (const void *)g->wbuf;
    const struct pgs_rec_ent *re = (const void *)(g->wbuf + sizeof *h);
    uint64_t data = g->end + sizeof *h + (uint64_t)h->npages * sizeof *re;
    for (uint32_t i = 0; i < h->npages; i++)
        seg_link(g, re[i].pgno, re[i].crc, h->txid, data + (uint64_t)i * g->page_size, g->end);
    seg_add_txn(g, h->txid, h->commit_ns, h->db_pages, g->end);
    g->end += h->rec_len;
}

/* Publishes a streamed transaction whose commit record ends at p->off. The
 * caller reserved room for p->n versions. */
void dbm_pgs_seg_publish_pending(struct pgs_seg *g, const struct pgs_pending *p, uint64_t txid,
                                 uint64_t commit_ns, uint32_t db_pages)
{
    for (size_t i = 0; i < p->n; i++)
        seg_link(g, p->ents[i].pgno, p->ents[i].crc, txid, p->ents[i].data_off, p->ents[i].rec_off);
    seg_add_txn(g, txid, commit_ns, db_pages, p->off - PGS_COMMIT_LEN);
    g->end = p->off;
}

/* ---- a streamed transaction's pages, before its commit ---- */

void dbm_pgs_pend_init(struct pgs_pending *p, uint64_t off)
{
    memset(p, 0, sizeof *p);
    p->first_off = p->off = off;
}

void dbm_pgs_pend_free(struct pgs_pending *p)
{
    free(p->ents);
    free(p->hash);
    p->ents = NULL;
    p->hash = NULL;
    p->n = p->cap = p->hcap = 0;
}

static size_t pend_find(const struct pgs_pending *p, uint32_t pgno)
{
    size_t i = hash_slot(pgno, p->hcap);
    while (p->hash[i] != UINT32_MAX && p->ents[p->hash[i]].pgno != pgno)
        i = (i + 1) & (p->hcap - 1);
    return i;
}

/* Makes room for k more distinct pages. */
static int pend_reserve(struct pgs_pending *p, size_t k)
{
    if (p->n + k >= UINT32_MAX)
        return -EFBIG;
    if (dbm_grow((void **)&p->ents, &p->cap, p->n + k, sizeof *p->ents))
        return -ENOMEM;
    if (2 * (p->n + k) <= p->hcap)
        return 0;
    size_t cap = p->hcap ? p->hcap : 64;
    while (cap < 2 * (p->n + k))
        cap *= 2;
    uint32_t *h = malloc(cap * sizeof *h);
    if (!h)
        return -ENOMEM;
    memset(h, 0xff, cap * sizeof *h);
    free(p->hash);
    p->hash = h;
    p->hcap = cap;
    for (size_t i = 0; i < p->n; i++)
        h[pend_find(p, p->ents[i].pgno)] = (uint32_t)i;
    return 0;
}

/* Adds the part record at rec_off (header and entries in rec): a page seen
 * before in the transaction is replaced (last wins). */
static int pend_add_part(struct pgs_pending *p, const uint8_t *rec, uint64_t rec_off, uint32_t page_size)
{
    const struct pgs_rec_hdr *h = (const void *)rec;
    const struct pgs_rec_ent *re = (const void *)(rec + sizeof *h);
    uint64_t data = rec_off + sizeof *h + (uint64_t)h->npages * sizeof *re;
    int rc = pend_reserve(p, h->npages);
    if (rc)
        return rc;
    for (uint32_t i = 0; i < h->npages; i++) {
        struct pgs_pent e = { re[i].pgno, re[i].crc, data + (uint64_t)i * page_size, rec_off };
        size_t slot = pend_find(p, e.pgno);
        if (p->hash[slot] == UINT32_MAX) {
            p->hash[slot] = (uint32_t)p->n;
            p->ents[p->n++] = e;
        } else {
            p->ents[p->hash[slot]] = e;
        }
    }
    p->nparts++;
    return 0;
}

/* ---- writing ---- */

/* Builds a whole-transaction record (kind 0) or a part (kind PART, seq in
 * commit_ns) in g->wbuf. */
static int rec_build(struct pgs_seg *g, uint8_t kind, uint64_t txid, uint64_t commit_ns, uint32_t db_pages,
                     const struct dbm_page_write *pages, size_t n, uint64_t *len_out)
{
    uint64_t len = sizeof(struct pgs_rec_hdr) + n * (sizeof(struct pgs_rec_ent) + g->page_size);
    if (n > UINT32_MAX || len > SIZE_MAX / 2)
        return -EFBIG;
    if (len > g->wcap) {
        uint8_t *b = malloc(len);
        if (!b)
            return -ENOMEM;
        free(g->wbuf);
        g->wbuf = b;
        g->wcap = len;
    }
    struct pgs_rec_hdr *h = (void *)g->wbuf;
    struct pgs_rec_ent *re = (void *)(g->wbuf + sizeof *h);
    uint8_t *data = (uint8_t *)(re + n);
    for (size_t i = 0; i < n; i++) {
        memcpy(data + i * g->page_size, pages[i].data, g->page_size);
        re[i].pgno = pages[i].pgno;
        re[i].crc = dbm_pgs_page_crc(pages[i].pgno, txid, data + i * g->page_size, g->page_size);
    }
    memset(h, 0, sizeof *h);
    h->magic = PGS_REC_MAGIC;
    h->version = kind ? PGS_REC_STREAM : PGS_REC_WHOLE;
    h->kind = kind;
    h->txid = txid;
    h->commit_ns = commit_ns;
    h->db_pages = db_pages;
    h->npages = (uint32_t)n;
    h->rec_len = len;
    h->ent_crc = dbm_crc32c(0, re, n * sizeof *re);
    h->hdr_crc = dbm_crc32c(0, h, offsetof(struct pgs_rec_hdr, hdr_crc));
    *len_out = len;
    return 0;
}

/* Makes [.., need) allocated and, if zero_ahead, zero-filled ahead, so that
 * the fdatasync after a record seldom has to commit extent metadata. (Parts
 * of a streamed transaction skip the zeroing: it would double their writes,
 * and their commit's fdatasync comes once.) */
static int seg_make_room(struct pgs_seg *g, uint64_t need, uint64_t prealloc, int zero_ahead)
{
    if (need > g->alloc_end) {
        uint64_t target = need > prealloc ? need + ZERO_CHUNK : prealloc;
        if (dbm_sys.fallocate(g->fd, 0, (off_t)g->alloc_end, (off_t)(target - g->alloc_end)) == 0) {
            g->alloc_end = target;
        } else {
            int e = errno;
            if (e != EOPNOTSUPP && e != ENOSYS)
                return -e;
        }
    }
    if (zero_ahead && need > g->zero_end && g->alloc_end > need) {
        static const uint8_t zeros[64 * 1024];
        uint64_t to = need + ZERO_CHUNK < g->alloc_end ? need + ZERO_CHUNK : g->alloc_end;
        for (uint64_t off = need; off < to; off += sizeof zeros) {
            size_t k = to - off < sizeof zeros ? (size_t)(to - off) : sizeof zeros;
            int rc = dbm_pwrite_all(g->fd, zeros, k, (off_t)off);
            if (rc)
                return rc;
        }
        g->zero_end = to;
    }
    return 0;
}

/* Cuts the log back to off after a failed write. */
static void seg_cut(struct pgs_seg *g, uint64_t off)
{
    if (dbm_sys.ftruncate(g->fd, (off_t)off) < 0 || dbm_sys.fsync(g->fd) < 0) {
        int e = errno;
        dbm_err("pagestore: %s: cannot cut the tail at offset %llu: %s", g->path,
                (unsigned long long)off, strerror(e));
        return;
    }
    g->alloc_end = off;
    g->zero_end = off;
}

void dbm_pgs_seg_cut(struct pgs_seg *g)
{
    seg_cut(g, g->end);
}

int dbm_pgs_seg_write(struct pgs_seg *g, uint64_t txid, uint64_t commit_ns, uint32_t db_pages,
                      const struct dbm_page_write *pages, size_t n, uint64_t prealloc, uint64_t *rec_len)
{
    uint64_t len;
    int rc = rec_build(g, 0, txid, commit_ns, db_pages, pages, n, &len);
    if (rc)
        return rc;
    rc = seg_make_room(g, g->end + len, prealloc, 1);
    if (!rc)
        rc = dbm_pwrite_all(g->fd, g->wbuf, len, (off_t)g->end);
    if (!rc && dbm_sys.fdatasync(g->fd) < 0)
        rc = -errno;
    if (rc) {
        dbm_err("pagestore: %s: append of txid %llu at offset %llu failed: %s", g->path,
                (unsigned long long)txid, (unsigned long long)g->end, strerror(-rc));
        seg_cut(g, g->end);
        return rc;
    }
    *rec_len = len;
    return 0;
}

int dbm_pgs_seg_write_parts(struct pgs_seg *g, struct pgs_pending *p, uint64_t txid,
                            const struct dbm_page_write *pages, size_t n, uint64_t prealloc)
{
    size_t per = (PGS_PART_BYTES - sizeof(struct pgs_rec_hdr)) / (sizeof(struct pgs_rec_ent) + g->page_size);
    if (per == 0)
        per = 1;
    for (size_t i = 0, k; i < n; i += k) {
        uint64_t len;
        k = n - i < per ? n - i : per;
        int rc = rec_build(g, PGS_KIND_PART, txid, p->nparts, 0, pages + i, k, &len);
        if (!rc)
            rc = seg_make_room(g, p->off + len, prealloc, 0);
        if (!rc)
            rc = dbm_pwrite_all(g->fd, g->wbuf, len, (off_t)p->off);
        if (!rc)
            rc = pend_add_part(p, g->wbuf, p->off, g->page_size);
        if (rc) {
            dbm_err("pagestore: %s: writing part %u of txid %llu at offset %llu failed: %s", g->path,
                    p->nparts, (unsigned long long)txid, (unsigned long long)p->off, strerror(-rc));
            return rc;
        }
        p->off += len;
    }
    return 0;
}

int dbm_pgs_seg_write_commit(struct pgs_seg *g, struct pgs_pending *p, uint64_t txid, uint64_t commit_ns,
                             uint32_t db_pages, uint64_t prealloc)
{
    struct {
        struct pgs_rec_hdr h;
        struct pgs_commit_body b;
    } r;
    memset(&r, 0, sizeof r);
    r.b.first_off = p->nparts ? p->first_off : p->off;
    r.b.nparts = p->nparts;
    r.h.magic = PGS_REC_MAGIC;
    r.h.version = PGS_REC_STREAM;
    r.h.kind = PGS_KIND_COMMIT;
    r.h.txid = txid;
    r.h.commit_ns = commit_ns;
    r.h.db_pages = db_pages;
    r.h.npages = (uint32_t)p->n;
    r.h.rec_len = PGS_COMMIT_LEN;
    r.h.ent_crc = dbm_crc32c(0, &r.b, sizeof r.b);
    r.h.hdr_crc = dbm_crc32c(0, &r.h, offsetof(struct pgs_rec_hdr, hdr_crc));
    int rc = seg_make_room(g, p->off + sizeof r, prealloc, 1);
    if (!rc)
        rc = dbm_pwrite_all(g->fd, &r, sizeof r, (off_t)p->off);
    if (!rc && dbm_sys.fdatasync(g->fd) < 0)
        rc = -errno;
    if (rc) {
        dbm_err("pagestore: %s: commit of txid %llu at offset %llu failed: %s", g->path,
                (unsigned long long)txid, (unsigned long long)p->off, strerror(-rc));
        return rc;
    }
    p->off += sizeof r;
    return 0;
}

/* ---- recovery ---- */

enum rec_state { REC_OK, REC_BAD_HDR, REC_ZERO_HDR, REC_BAD_ENTS, REC_BAD_PAGES };

static int hdr_valid(const struct pgs_rec_hdr *h, uint64_t off, uint64_t fsize, uint32_t ps)
{
    if (h->magic != PGS_REC_MAGIC || h->hdr_crc != dbm_crc32c(0, h, offsetof(struct pgs_rec_hdr, hdr_crc)))
        return 0;
    uint64_t with_pages = sizeof *h + (uint64_t)h->npages * (sizeof(struct pgs_rec_ent) + ps);
    int ok = 0;
    if (h->version == PGS_REC_WHOLE)
        ok = h->kind == 0 && h->rec_len == with_pages;
    else if (h->version == PGS_REC_STREAM && h->kind == PGS_KIND_PART)
        ok = h->db_pages == 0 && h->rec_len == with_pages;
    else if (h->version == PGS_REC_STREAM && h->kind == PGS_KIND_COMMIT)
        ok = h->rec_len == PGS_COMMIT_LEN;
    return ok && h->rec_len <= fsize - off;
}

/* Whether a valid header at off follows the streamed transaction p so far:
 * a whole record only when no part is pending, the next part, or the commit
 * of exactly these parts. 0 or the state to report. */
static enum rec_state rec_sequence(const struct pgs_rec_hdr *h, const uint8_t *rec, uint64_t off,
                                   const struct pgs_pending *p)
{
    if (h->kind == 0)
        return p->nparts ? REC_BAD_HDR : REC_OK;
    if (h->kind == PGS_KIND_PART)
        return h->commit_ns == p->nparts ? REC_OK : REC_BAD_HDR;
    struct pgs_commit_body b;
    memcpy(&b, rec + sizeof *h, sizeof b);
    if (dbm_crc32c(0, &b, sizeof b) != h->ent_crc)
        return REC_BAD_ENTS;
    if (b.nparts != p->nparts || b.first_off != (p->nparts ? p->first_off : off) || h->npages != p->n)
        return REC_BAD_HDR;
    return REC_OK;
}

/* Reads and checks the record at off into *buf (grown as needed); p is the
 * streamed transaction in progress at off. */
static int rec_check(struct pgs_seg *g, uint64_t off, uint64_t fsize, uint64_t txid, const struct pgs_pending *p,
                     struct pgs_rec_hdr *h, uint8_t **buf, size_t *cap, enum rec_state *st)
{
    static const struct pgs_rec_hdr zero;
    ssize_t r = fsize - off >= sizeof *h ? dbm_pread_all(g->fd, h, sizeof *h, (off_t)off) : 0;
    if (r < 0)
        return (int)r;
    if ((size_t)r < sizeof *h) {
        *st = REC_BAD_HDR;
        return 0;
    }
    if (!hdr_valid(h, off, fsize, g->page_size) || h->txid != txid) {
        *st = memcmp(h, &zero, sizeof zero) == 0 ? REC_ZERO_HDR : REC_BAD_HDR;
        return 0;
    }
    if (h->rec_len > *cap) {
        uint8_t *b = malloc(h->rec_len);
        if (!b)
            return -ENOMEM;
        free(*buf);
        *buf = b;
        *cap = h->rec_len;
    }
    r = dbm_pread_all(g->fd, *buf, h->rec_len, (off_t)off);
    if (r < 0)
        return (int)r;
    if ((uint64_t)r < h->rec_len) {
        *st = REC_BAD_HDR;
        return 0;
    }
    *st = rec_sequence(h, *buf, off, p);
    if (*st != REC_OK || h->kind == PGS_KIND_COMMIT)
        return 0;
    const struct pgs_rec_ent *re = (const void *)(*buf + sizeof *h);
    const uint8_t *data = (const uint8_t *)(re + h->npages);
    if (dbm_crc32c(0, re, h->npages * sizeof *re) != h->ent_crc) {
        *st = REC_BAD_ENTS;
        return 0;
    }
    for (uint32_t i = 0; i < h->npages; i++)
        if (dbm_pgs_page_crc(re[i].pgno, txid, data + (size_t)i * g->page_size, g->page_size) != re[i].crc)
            *st = REC_BAD_PAGES;
    return 0;
}

/* 1 if a valid record header with txid >= min_txid starts at some 8-aligned
 * offset in [from, fsize). Used to tell mid-log corruption from a torn tail. */
static int scan_for_header(struct pgs_seg *g, uint64_t from, uint64_t fsize, uint64_t min_txid)
{
    uint8_t *b = malloc(SCAN_CHUNK + sizeof(struct pgs_rec_hdr));
    if (!b)
        return -ENOMEM;
    int found = 0;
    from = (from + 7) & ~7ull;
    for (uint64_t off = from; off < fsize && !found; off += SCAN_CHUNK) {
        ssize_t r = dbm_pread_all(g->fd, b, SCAN_CHUNK + sizeof(struct pgs_rec_hdr), (off_t)off);
        if (r < 0) {
            found = (int)r;
            break;
        }
        for (size_t i = 0; i + sizeof(struct pgs_rec_hdr) <= (size_t)r && i < SCAN_CHUNK; i += 8) {
            struct pgs_rec_hdr h;
            memcpy(&h, b + i, sizeof h);
            if (hdr_valid(&h, off + i, fsize, g->page_size) && h.txid >= min_txid) {
                found = 1;
                break;
            }
        }
    }
    free(b);
    return found;
}

/* Adds a checked record (in buf) to the RAM index as if just appended. */
static int rec_index(struct pgs_seg *g, const uint8_t *buf, const struct pgs_rec_hdr *h)
{
    int rc = dbm_pgs_seg_reserve(g, h->npages);
    if (rc)
        return rc;
    size_t head = sizeof *h + h->npages * sizeof(struct pgs_rec_ent);
    if (head > g->wcap) {
        uint8_t *b = malloc(head);
        if (!b)
            return -ENOMEM;
        free(g->wbuf);
        g->wbuf = b;
        g->wcap = head;
    }
    memcpy(g->wbuf, buf, head);
    dbm_pgs_seg_publish(g);
    return 0;
}

static int seg_check_header(struct pgs_seg *g)
{
    struct pgs_seg_hdr h;
    ssize_t r = dbm_pread_all(g->fd, &h, sizeof h, 0);
    if (r < 0)
        return (int)r;
    if ((size_t)r == sizeof h && h.magic == PGS_SEG_MAGIC &&
        h.crc == dbm_crc32c(0, &h, offsetof(struct pgs_seg_hdr, crc)) && h.version == PGS_VERSION &&
        h.page_size == g->page_size && h.tl_id == g->tl_id && h.first_txid == g->first_txid)
        return 0;
    return -EBADMSG;
}

/* Handles the first record that did not check at off. cut is where a torn
 * tail starts: off, or the first part of an uncommitted streamed transaction
 * before it. Returns 1 to stop scanning with the log cut at cut, 0 to index it
 * and go on, or -errno. */
static int rec_failure(struct pgs_seg *g, uint64_t off, uint64_t cut, uint64_t fsize,
                       const struct pgs_rec_hdr *h, enum rec_state st, struct pgs_recovery *rec)
{
    int later = 0;
    if (st == REC_ZERO_HDR && cut == off)
        return 1; /* the clean end: preallocated zeros */
    if (st == REC_BAD_HDR)
        later = scan_for_header(g, off + 8, fsize, g->last_txid + 2);
    else if (st != REC_ZERO_HDR)
        later = scan_for_header(g, off + h->rec_len, fsize, g->last_txid + 2);
    if (later < 0)
        return later;
    if (later && st == REC_BAD_PAGES) {
        dbm_err("pagestore: %s: record txid %llu at offset %llu has a bad page checksum; reads of it fail",
                g->path, (unsigned long long)h->txid, (unsigned long long)off);
        return 0;
    }
    if (later) {
        dbm_err("pagestore: %s: corrupt record header at offset %llu (txid %llu) with records after "
                "it; history from there on is unreadable",
                g->path, (unsigned long long)off, (unsigned long long)g->last_txid + 1);
        rec->bad_txid = g->last_txid + 1;
        return 1;
    }
    dbm_notice("pagestore: %s: cutting a torn tail at offset %llu%s", g->path, (unsigned long long)cut,
               cut != off ? " (a streamed transaction that never committed)" : "");
    if (dbm_sys.ftruncate(g->fd, (off_t)cut) < 0 || dbm_sys.fsync(g->fd) < 0) {
        int e = errno;
        dbm_err("pagestore: %s: cannot cut at offset %llu: %s", g->path, (unsigned long long)cut,
                strerror(e));
        return -e;
    }
    rec->cut = 1;
    return 1;
}

/* Applies a checked record at off (in buf): indexes a whole transaction,
 * collects a part into p, or publishes p at its commit. */
static int rec_apply(struct pgs_seg *g, struct pgs_pending *p, const uint8_t *buf, const struct pgs_rec_hdr *h,
                     uint64_t off)
{
    if (h->kind == PGS_KIND_PART) {
        if (!p->nparts)
            p->first_off = off;
        return pend_add_part(p, buf, off, g->page_size);
    }
    if (h->kind == 0)
        return rec_index(g, buf, h);
    int rc = dbm_pgs_seg_reserve(g, p->n);
    if (rc)
        return rc;
    p->off = off + h->rec_len;
    dbm_pgs_seg_publish_pending(g, p, h->txid, h->commit_ns, h->db_pages);
    dbm_pgs_pend_free(p);
    dbm_pgs_pend_init(p, g->end);
    return 0;
}

static int seg_scan(struct pgs_seg *g, uint64_t fsize, struct pgs_recovery *rec)
{
    uint8_t *buf = NULL;
    size_t cap = 0;
    uint64_t off = PGS_SEG_HDR;
    struct pgs_pending p;
    int rc = 0;
    dbm_pgs_pend_init(&p, off);
    for (;;) {
        struct pgs_rec_hdr h;
        enum rec_state st = REC_BAD_HDR;
        rc = rec_check(g, off, fsize, g->last_txid + 1, &p, &h, &buf, &cap, &st);
        if (rc)
            break;
        if (st != REC_OK) {
            rc = rec_failure(g, off, p.nparts ? p.first_off : off, fsize, &h, st, rec);
            if (rc < 0)
                break;
            if (rc == 1) {
                rc = 0;
                break;
            }
        }
        rc = rec_apply(g, &p, buf, &h, off);
        if (rc)
            break;
        off += h.rec_len;
    }
    dbm_pgs_pend_free(&p);
    free(buf);
    return rc;
}

int dbm_pgs_seg_recover(const char *log_path, uint64_t tl_id, uint32_t page_size, uint64_t first_txid,
                        struct pgs_seg **out, struct pgs_recovery *rec)
{
    memset(rec, 0, sizeof *rec);
    struct pgs_seg *g = seg_new(log_path, tl_id, page_size, first_txid);
    if (!g)
        return -ENOMEM;
    int rc;
    struct stat st;
    g->fd = open(g->path, O_RDWR | O_CLOEXEC);
    if (g->fd < 0 || fstat(g->fd, &st) < 0) {
        rc = -errno;
        dbm_err("pagestore: cannot open %s: %s", g->path, strerror(-rc));
        goto fail;
    }
    rc = seg_check_header(g);
    if (rc == -EBADMSG) {
        /* A crash while the segment was being created; it holds no record
         * unless something that looks like one follows. */
        if (scan_for_header(g, PGS_SEG_HDR, (uint64_t)st.st_size, first_txid) != 0) {
            dbm_err("pagestore: %s: bad segment header", g->path);
            rc = -EIO;
            goto fail;
        }
        dbm_notice("pagestore: %s: re-initialising a segment whose creation was interrupted", g->path);
        if (dbm_sys.ftruncate(g->fd, 0) < 0) {
            rc = -errno;
            goto fail;
        }
        rc = seg_init_file(g, 0);
        st.st_size = PGS_SEG_HDR;
    }
    if (rc)
        goto fail;
    rc = seg_scan(g, (uint64_t)st.st_size, rec);
    if (rc)
        goto fail;
    g->alloc_end = rec->cut ? g->end : (uint64_t)st.st_size;
    g->zero_end = g->end;
    *out = g;
    return 0;
fail:
    dbm_pgs_seg_free(g);
    return rc;
}

/* ---- sealing ---- */

static int ent_cmp(const void *a, const void *b)
{
    const struct pgs_ent *x = a, *y = b;
    if (x->pgno != y->pgno)
        return x->pgno < y->pgno ? -1 : 1;
    return x->txid < y->txid ? -1 : x->txid > y->txid;
}

static int idx_write_file(int fd, struct pgs_seg *g, const struct pgs_ent *ents)
{
    struct pgs_idx_hdr h;
    memset(&h, 0, sizeof h);
    h.magic = PGS_IDX_MAGIC;
    h.version = PGS_VERSION;
    h.page_size = g->page_size;
    h.first_txid = g->first_txid;
    h.last_txid = g->last_txid;
    h.min_ns = g->min_ns;
    h.max_ns = g->max_ns;
    h.ntx = g->natx;
    h.nent = g->nment;
    h.log_bytes = g->end;
    h.min_pages = g->min_pages;
    h.body_crc = dbm_crc32c(dbm_crc32c(0, g->atx, g->natx * sizeof *g->atx), ents, g->nment * sizeof *ents);
    h.hdr_crc = dbm_crc32c(0, &h, offsetof(struct pgs_idx_hdr, hdr_crc));
    uint64_t off = 0;
    int rc = dbm_pwrite_all(fd, &h, sizeof h, 0);
    off += sizeof h;
    if (!rc)
        rc = dbm_pwrite_all(fd, g->atx, g->natx * sizeof *g->atx, (off_t)off);
    off += g->natx * sizeof *g->atx;
    if (!rc)
        rc = dbm_pwrite_all(fd, ents, g->nment * sizeof *ents, (off_t)off);
    if (!rc && dbm_sys.fsync(fd) < 0)
        rc = -errno;
    return rc;
}

int dbm_pgs_seg_write_index(int dirfd, struct pgs_seg *g)
{
    int rc = -ENOMEM;
    char *idx = str_cat(g->path, ".idx"), *tmp = str_cat(g->path, ".idx.tmp");
    struct pgs_ent *ents = malloc(g->nment ? g->nment * sizeof *ents : 1);
    if (!idx || !tmp || !ents)
        goto out;
    for (size_t i = 0; i < g->nment; i++)
        ents[i] = g->ments[i].e;
    qsort(ents, g->nment, sizeof *ents, ent_cmp);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = -errno;
        goto out;
    }
    rc = idx_write_file(fd, g, ents);
    close(fd);
    if (!rc && dbm_sys.rename(tmp, idx) < 0)
        rc = -errno;
    if (!rc)
        rc = dbm_pgs_fsync_dir(dirfd);
    if (rc) {
        dbm_err("pagestore: cannot write index %s: %s", idx, strerror(-rc));
        unlink(tmp);
        goto out;
    }
    /* The preallocated tail is no longer needed; losing this is harmless. */
    if (dbm_sys.ftruncate(g->fd, (off_t)g->end) < 0)
        dbm_warn("pagestore: %s: cannot trim: %s", g->path, strerror(errno));
out:
    free(ents);
    free(tmp);
    free(idx);
    return rc;
}

void dbm_pgs_seg_mark_sealed(struct pgs_seg *g)
{
    g->idx_bytes = sizeof(struct pgs_idx_hdr) + (g->natx + g->nment) * 32;
    free(g->atx);
    free(g->ments);
    free(g->hash);
    free(g->wbuf);
    g->atx = NULL;
    g->ments = NULL;
    g->hash = NULL;
    g->wbuf = NULL;
    g->natx = g->catx = g->nment = g->cment = g->hcap = g->hused = g->wcap = 0;
    g->sealed = 1;
}

static int idx_hdr_valid(const struct pgs_idx_hdr *h, const struct pgs_seg *g)
{
    return h->magic == PGS_IDX_MAGIC && h->version == PGS_VERSION &&
           h->hdr_crc == dbm_crc32c(0, h, offsetof(struct pgs_idx_hdr, hdr_crc)) &&
           h->page_size == g->page_size && h->first_txid == g->first_txid &&
           h->last_txid + 1 - h->first_txid == h->ntx;
}

int dbm_pgs_seg_open_sealed(const char *log_path, uint64_t tl_id, uint32_t page_size, uint64_t first_txid,
                            struct pgs_seg **out)
{
    struct pgs_seg *g = seg_new(log_path, tl_id, page_size, first_txid);
    char *idx = str_cat(log_path, ".idx");
    int rc = -ENOMEM, fd = -1;
    if (!g || !idx)
        goto fail;
    struct pgs_idx_hdr h;
    fd = open(idx, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = -errno;
        goto fail;
    }
    ssize_t r = dbm_pread_all(fd, &h, sizeof h, 0);
    if (r < 0) {
        rc = (int)r;
        goto fail;
    }
    if ((size_t)r < sizeof h || !idx_hdr_valid(&h, g)) {
        dbm_err("pagestore: %s: bad index header at offset 0", idx);
        rc = -EIO;
        goto fail;
    }
    g->sealed = 1;
    g->last_txid = h.last_txid;
    g->min_ns = h.min_ns;
    g->max_ns = h.max_ns;
    g->min_pages = h.min_pages;
    g->end = h.log_bytes;
    g->idx_bytes = sizeof h + (h.ntx + h.nent) * 32;
    close(fd);
    free(idx);
    *out = g;
    return 0;
fail:
    if (fd >= 0)
        close(fd);
    free(idx);
    dbm_pgs_seg_free(g);
    return rc;
}

/* Maps a sealed segment's index and opens its log, once. */
static int seg_map_locked(struct pgs_seg *g)
{
    int rc = 0, fd = -1;
    char *idx = str_cat(g->path, ".idx");
    if (!idx)
        return -ENOMEM;
    struct stat st;
    fd = open(idx, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) < 0) {
        rc = -errno;
        dbm_err("pagestore: cannot open %s: %s", idx, strerror(-rc));
        goto out;
    }
    if ((uint64_t)st.st_size != g->idx_bytes) {
        dbm_err("pagestore: %s: size %lld, expected %llu", idx, (long long)st.st_size,
                (unsigned long long)g->idx_bytes);
        rc = -EIO;
        goto out;
    }
    void *m = mmap(NULL, g->idx_bytes, PROT_READ, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
        rc = -errno;
        goto out;
    }
    const struct pgs_idx_hdr *h = m;
    const uint8_t *body = (const uint8_t *)m + sizeof *h;
    if (!idx_hdr_valid(h, g) || h->body_crc != dbm_crc32c(0, body, g->idx_bytes - sizeof *h)) {
        dbm_err("pagestore: %s: index checksum mismatch (offset 0)", idx);
        munmap(m, g->idx_bytes);
        rc = -EIO;
        goto out;
    }
    if (g->fd < 0) {
        g->fd = open(g->path, O_RDONLY | O_CLOEXEC);
        if (g->fd < 0) {
            rc = -errno;
            dbm_err("pagestore: cannot open %s: %s", g->path, strerror(-rc));
            munmap(m, g->idx_bytes);
            goto out;
        }
    }
    g->txns = (const struct pgs_txn *)body;
    g->ents = (const struct pgs_ent *)(body + h->ntx * sizeof(struct pgs_txn));
    g->ntx = h->ntx;
    g->nent = h->nent;
    g->map_len = g->idx_bytes;
    __atomic_store_n(&g->map, m, __ATOMIC_RELEASE);
out:
    if (fd >= 0)
        close(fd);
    free(idx);
    return rc;
}

static int seg_ready(struct pgs_seg *g)
{
    if (!g->sealed || __atomic_load_n(&g->map, __ATOMIC_ACQUIRE))
        return 0;
    pthread_mutex_lock(&g->map_lock);
    int rc = g->map ? 0 : seg_map_locked(g);
    pthread_mutex_unlock(&g->map_lock);
    return rc;
}

/* ---- lookups ---- */

int dbm_pgs_seg_find(struct pgs_seg *g, uint32_t pgno, uint64_t hi_incl, uint64_t lo_excl, struct pgs_ent *out)
{
    int rc = seg_ready(g);
    if (rc)
        return rc;
    if (!g->sealed) {
        if (!g->hcap)
            return 0;
        uint32_t i = g->hash[hash_find(g, pgno)];
        while (i != UINT32_MAX && g->ments[i].e.txid > hi_incl)
            i = g->ments[i].prev;
        if (i == UINT32_MAX || g->ments[i].e.txid <= lo_excl)
            return 0;
        *out = g->ments[i].e;
        return 1;
    }
    size_t lo = 0, hi = g->nent; /* first entry > (pgno, hi_incl) */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const struct pgs_ent *e = &g->ents[mid];
        if (e->pgno < pgno || (e->pgno == pgno && e->txid <= hi_incl))
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0 || g->ents[lo - 1].pgno != pgno || g->ents[lo - 1].txid <= lo_excl)
        return 0;
    *out = g->ents[lo - 1];
    return 1;
}

/* The record header this thread checked last. Pages of one record are
 * mostly read in a row (exports, scans), and a committed record never
 * changes (only uncommitted tails are ever rewritten, and no index entry
 * points into them), so its header need not be read and checked again for
 * each page: that halves the reads of a sequential scan. The segment's
 * serial, not its address, names it: an address may be reused after GC. */
static __thread struct {
    uint64_t serial, rec_off, txid;
} seg_hdr_ok;

int dbm_pgs_seg_read(struct pgs_seg *g, const struct pgs_ent *e, void *buf)
{
    struct pgs_rec_hdr h;
    int rc = seg_ready(g);
    if (rc)
        return rc;
    ssize_t r;
    if (seg_hdr_ok.serial != g->serial || seg_hdr_ok.rec_off != e->rec_off || seg_hdr_ok.txid != e->txid) {
        r = dbm_pread_all(g->fd, &h, sizeof h, (off_t)e->rec_off);
        if (r < 0)
            return (int)r;
        if ((size_t)r < sizeof h || h.magic != PGS_REC_MAGIC ||
            h.hdr_crc != dbm_crc32c(0, &h, offsetof(struct pgs_rec_hdr, hdr_crc)) || h.txid != e->txid) {
            dbm_err("pagestore: %s: record header checksum mismatch at offset %llu", g->path,
                    (unsigned long long)e->rec_off);
            return -EIO;
        }
        seg_hdr_ok.serial = g->serial;
        seg_hdr_ok.rec_off = e->rec_off;
        seg_hdr_ok.txid = e->txid;
    }
    r = dbm_pread_all(g->fd, buf, g->page_size, (off_t)e->data_off);
    if (r < 0)
        return (int)r;
    if ((size_t)r < g->page_size || dbm_pgs_page_crc(e->pgno, e->txid, buf, g->page_size) != e->crc) {
        dbm_err("pagestore: %s: page %u checksum mismatch at offset %llu", g->path, e->pgno,
                (unsigned long long)e->data_off);
        return -EIO;
    }
    return 0;
}

static const struct pgs_txn *seg_txns(struct pgs_seg *g, size_t *n)
{
    *n = g->sealed ? g->ntx : g->natx;
    return g->sealed ? g->txns : g->atx;
}

int dbm_pgs_seg_txn(struct pgs_seg *g, uint64_t txid, struct pgs_txn *out)
{
    if (txid < g->first_txid || txid > g->last_txid)
        return 0;
    int rc = seg_ready(g);
    if (rc)
        return rc;
    size_t n;
    const struct pgs_txn *t = seg_txns(g, &n);
    size_t i = (size_t)(txid - g->first_txid);
    if (i >= n || t[i].txid != txid) {
        dbm_err("pagestore: %s: transaction table does not hold txid %llu", g->path, (unsigned long long)txid);
        return -EIO;
    }
    *out = t[i];
    return 1;
}

int dbm_pgs_seg_txn_at(struct pgs_seg *g, uint64_t ns, struct pgs_txn *out)
{
    int rc = seg_ready(g);
    if (rc)
        return rc;
    size_t n;
    const struct pgs_txn *t = seg_txns(g, &n);
    size_t lo = 0, hi = n; /* first with commit_ns > ns */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (t[mid].commit_ns <= ns)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return 0;
    *out = t[lo - 1];
    return 1;
}

int dbm_pgs_seg_pages_after(struct pgs_seg *g, uint64_t lo_excl, int (*cb)(uint32_t pgno, void *arg), void *arg)
{
    if (g->last_txid <= lo_excl)
        return 0;
    int rc = seg_ready(g);
    if (rc)
        return rc;
    if (!g->sealed) {
        for (size_t i = 0; i < g->nment; i++)
            if (g->ments[i].e.txid > lo_excl && (rc = cb(g->ments[i].e.pgno, arg)) != 0)
                return rc;
        return 0;
    }
    for (uint64_t i = 0; i < g->nent; i++)
        if (g->ents[i].txid > lo_excl && (rc = cb(g->ents[i].pgno, arg)) != 0)
            return rc;
    return 0;
}

int dbm_pgs_seg_pages_cover(struct pgs_seg *g, uint64_t lo_excl, uint64_t hi_incl, uint32_t pgno)
{
    if (g->min_pages >= pgno || hi_incl < g->first_txid || lo_excl >= g->last_txid)
        return 1;
    int rc = seg_ready(g);
    if (rc)
        return rc;
    size_t n;
    const struct pgs_txn *t = seg_txns(g, &n);
    uint64_t from = lo_excl + 1 > g->first_txid ? lo_excl + 1 : g->first_txid;
    uint64_t to = hi_incl < g->last_txid ? hi_incl : g->last_txid;
    for (uint64_t x = from; x <= to && x - g->first_txid < n; x++)
        if (t[x - g->first_txid].db_pages < pgno)
            return 0;
    return 1;
}
