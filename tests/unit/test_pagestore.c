/* test_pagestore.c - the page store against an in-memory oracle: random
 * histories, time lookups, branches, retention, recovery from torn tails,
 * corruption, injected I/O faults, concurrent readers. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "log.h"
#include "pagestore.h"
#include "pagestore_i.h"
#include "sysio.h"

#define PS 512
#define MAXP 160

static char root[200];

/* ---- deterministic data ---- */

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static void fill(void *buf, uint32_t w)
{
    uint64_t s = 0x9E3779B97F4A7C15ull ^ ((uint64_t)w * 0x100000001b3ull);
    uint64_t *p = buf;
    for (size_t i = 0; i < PS / 8; i++)
        p[i] = rng_next(&s);
}

/* ---- the oracle: per txid, db size, commit time and which write each page holds ---- */

struct oracle {
    uint64_t base; /* txid of entry 0 (0 for a root, branch_txid for a child) */
    size_t n, cap;
    uint64_t *ns;
    uint32_t *dbp;
    uint32_t *ver; /* ver[i * MAXP + pgno - 1]: write id, 0 = zeros */
};

static uint32_t next_w = 1;

static void oracle_grow(struct oracle *o)
{
    if (o->n < o->cap)
        return;
    o->cap = o->cap ? 2 * o->cap : 64;
    o->ns = realloc(o->ns, o->cap * sizeof *o->ns);
    o->dbp = realloc(o->dbp, o->cap * sizeof *o->dbp);
    o->ver = realloc(o->ver, o->cap * MAXP * sizeof *o->ver);
    if (!o->ns || !o->dbp || !o->ver)
        abort();
}

static void oracle_init(struct oracle *o, const struct oracle *parent, uint64_t branch)
{
    memset(o, 0, sizeof *o);
    oracle_grow(o);
    o->base = branch;
    o->n = 1;
    if (parent) {
        size_t i = branch - parent->base;
        o->ns[0] = parent->ns[i];
        o->dbp[0] = parent->dbp[i];
        memcpy(o->ver, parent->ver + i * MAXP, MAXP * sizeof *o->ver);
    } else {
        o->ns[0] = 0;
        o->dbp[0] = 0;
        memset(o->ver, 0, MAXP * sizeof *o->ver);
    }
}

static void oracle_free(struct oracle *o)
{
    free(o->ns);
    free(o->dbp);
    free(o->ver);
}

static uint64_t oracle_last(const struct oracle *o) { return o->base + o->n - 1; }

/* Generates the next transaction: db size walks (sometimes shrinking), a few
 * random pages are written, commit times increase (sometimes equal). */
static void oracle_gen(struct oracle *o, uint64_t *rng)
{
    oracle_grow(o);
    size_t i = o->n++;
    uint32_t *v = o->ver + i * MAXP;
    memcpy(v, v - MAXP, MAXP * sizeof *v);
    uint32_t db = o->dbp[i - 1];
    uint64_t r = rng_next(rng);
    if (r % 10 == 0 && db > 10)
        db = db / 2 + (uint32_t)(r >> 8) % (db / 2); /* shrink */
    else if (r % 3 == 0 || db == 0)
        db += 1 + (uint32_t)(r >> 16) % 12;
    if (db > MAXP)
        db = MAXP;
    for (uint32_t p = db + 1; p <= MAXP; p++)
        v[p - 1] = 0;
    uint32_t k = (uint32_t)(rng_next(rng) % 11); /* sometimes none: only the size changes */
    for (uint32_t j = 0; j < k; j++)
        v[rng_next(rng) % db] = next_w++;
    o->dbp[i] = db;
    o->ns[i] = o->ns[i - 1] + (rng_next(rng) % 4) * 1000 + (i == 1 ? 1000000 : 0);
}

/* Appends oracle entry i to t. */
static int apply(struct dbm_timeline *t, const struct oracle *o, size_t i)
{
    static uint8_t bufs[MAXP][PS];
    struct dbm_page_write w[MAXP];
    size_t n = 0;
    const uint32_t *v = o->ver + i * MAXP, *pv = v - MAXP;
    for (uint32_t p = 1; p <= MAXP; p++)
        if (v[p - 1] && v[p - 1] != pv[p - 1]) {
            fill(bufs[n], v[p - 1]);
            w[n].pgno = p;
            w[n].data = bufs[n];
            n++;
        }
    uint64_t txid = 0;
    int rc = dbm_tl_append(t, o->ns[i], o->dbp[i], w, n, &txid);
    if (rc == 0 && txid != o->base + i)
        return -1000;
    return rc;
}

/* ---- streamed transactions ---- */

static uint32_t next_junk = 0x80000000u; /* write ids no oracle entry holds */

struct swrite {
    uint32_t pgno, w;
};

/* The writes that stream oracle entry i: first up to `decoys` junk writes
 * (to pages the entry leaves nonzero, so that a later write replaces them,
 * and past its db size, where they are dropped from the view), then every
 * page that changed or was decoyed, with its final content. Returns n. */
static size_t stream_plan(const struct oracle *o, size_t i, uint64_t *rng, int decoys, struct swrite *out)
{
    const uint32_t *v = o->ver + i * MAXP, *pv = v - MAXP;
    uint8_t decoyed[MAXP] = { 0 };
    size_t n = 0;
    for (int d = 0; d < decoys; d++) {
        uint32_t p = 1 + (uint32_t)(rng_next(rng) % MAXP);
        if (p <= o->dbp[i] && !v[p - 1])
            continue; /* a hole cannot be restored by a later write */
        out[n++] = (struct swrite){ p, next_junk++ };
        decoyed[p - 1] = 1;
    }
    for (uint32_t p = 1; p <= MAXP; p++)
        if (v[p - 1] && (v[p - 1] != pv[p - 1] || decoyed[p - 1]))
            out[n++] = (struct swrite){ p, v[p - 1] };
    return n;
}

/* Adds plan[0..n) to x in batches of 1..maxb pages (a page may repeat in a
 * batch: the last wins there too). */
static int stream_add(struct dbm_tl_txn *x, const struct swrite *plan, size_t n, uint64_t *rng, size_t maxb)
{
    static uint8_t bufs[64][PS];
    struct dbm_page_write w[64];
    for (size_t i = 0, k; i < n; i += k) {
        k = 1 + rng_next(rng) % (maxb < 64 ? maxb : 64);
        if (k > n - i)
            k = n - i;
        for (size_t j = 0; j < k; j++) {
            fill(bufs[j], plan[i + j].w);
            w[j] = (struct dbm_page_write){ plan[i + j].pgno, bufs[j] };
        }
        int rc = dbm_tl_txn_add(x, w, k);
        if (rc)
            return rc;
    }
    return 0;
}

/* Streams oracle entry i to t as one transaction. */
static int apply_stream(struct dbm_timeline *t, const struct oracle *o, size_t i, uint64_t *rng, int decoys)
{
    struct swrite *plan = malloc(((size_t)decoys + MAXP) * sizeof *plan);
    struct dbm_tl_txn *x = NULL;
    uint64_t txid = 0;
    size_t n = stream_plan(o, i, rng, decoys, plan);
    int rc = dbm_tl_txn_begin(t, &x);
    if (!rc)
        rc = stream_add(x, plan, n, rng, 1 + rng_next(rng) % 40);
    if (!rc)
        rc = dbm_tl_txn_commit(x, o->ns[i], o->dbp[i], &txid);
    else if (x)
        dbm_tl_txn_abort(x);
    free(plan);
    if (rc == 0 && txid != o->base + i)
        return -1000;
    return rc;
}

/* Checks one read; returns 0 if it matches the oracle. */
static int check_read(struct dbm_timeline *t, const struct oracle *o, uint64_t txid, uint32_t pgno)
{
    uint8_t got[PS], want[PS];
    size_t i = txid - o->base;
    uint32_t w = pgno <= o->dbp[i] ? o->ver[i * MAXP + pgno - 1] : 0;
    int rc = dbm_tl_read_page(t, txid, pgno, got);
    if (w) {
        fill(want, w);
        if (rc == 0 && memcmp(got, want, PS) == 0)
            return 0;
    } else {
        memset(want, 0, PS);
        if (rc == 1 && memcmp(got, want, PS) == 0)
            return 0;
    }
    fprintf(stderr, "read txid %" PRIu64 " pgno %u: rc %d, want write %u\n", txid, pgno, rc, w);
    return -1;
}

/* Checks every page (and one past the end) at every txid in [from, to]. */
static int check_range(struct dbm_timeline *t, const struct oracle *o, uint64_t from, uint64_t to)
{
    int bad = 0;
    for (uint64_t x = from; x <= to && bad < 5; x++)
        for (uint32_t p = 1; p <= o->dbp[x - o->base] + 1 && p <= MAXP && bad < 5; p++)
            bad += check_read(t, o, x, p) != 0;
    return bad;
}

static int check_all(struct dbm_timeline *t, const struct oracle *o, uint64_t from)
{
    return check_range(t, o, from, oracle_last(o));
}

/* The oracle's answer to txid_at(ns) over entries from index lo. */
static long oracle_at(const struct oracle *o, size_t lo, uint64_t ns)
{
    long r = -1;
    for (size_t i = lo; i < o->n; i++)
        if (o->ns[i] <= ns)
            r = (long)i;
    return r;
}

static int check_times(struct dbm_timeline *t, const struct oracle *o, uint64_t first)
{
    int bad = 0;
    size_t lo = first - o->base;
    for (size_t i = lo; i < o->n; i++) {
        uint64_t probes[3] = { o->ns[i], o->ns[i] + 500, o->ns[i] ? o->ns[i] - 1 : 0 };
        for (int k = 0; k < 3; k++) {
            struct dbm_txinfo ti;
            long want = oracle_at(o, lo, probes[k]);
            int rc = dbm_tl_txid_at(t, probes[k], &ti);
            if (want < 0 ? rc != -ENOENT
                         : rc != 0 || ti.txid != o->base + (uint64_t)want || ti.commit_ns != o->ns[want] ||
                               ti.db_pages != o->dbp[want]) {
                fprintf(stderr, "txid_at(%" PRIu64 "): rc %d txid %" PRIu64 ", want %ld\n", probes[k], rc,
                        rc ? 0 : ti.txid, want < 0 ? -1 : (long)o->base + want);
                bad++;
            }
        }
    }
    return bad;
}

/* ---- helpers on files ---- */

static void rm_rf(const char *path)
{
    DIR *d = opendir(path);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d))) {
            if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
                continue;
            char sub[1024];
            snprintf(sub, sizeof sub, "%s/%s", path, de->d_name);
            rm_rf(sub);
        }
        closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

static void tl_dir(char *out, size_t n, const char *store, uint64_t id)
{
    snprintf(out, n, "%s/%016" PRIx64, store, id);
}

/* Finds the record of txid in the timeline's logs: its file and offset. */
static int find_record(const char *dir, uint64_t txid, char *path, size_t n, uint64_t *off,
                       struct pgs_rec_hdr *hdr)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    int found = 0;
    while (d && !found && (de = readdir(d))) {
        if (strncmp(de->d_name, "log.", 4) || strlen(de->d_name) != 20)
            continue;
        snprintf(path, n, "%s/%s", dir, de->d_name);
        int fd = open(path, O_RDONLY);
        uint64_t o = PGS_SEG_HDR;
        while (fd >= 0 && pread(fd, hdr, sizeof *hdr, (off_t)o) == (ssize_t)sizeof *hdr &&
               hdr->magic == PGS_REC_MAGIC) {
            if (hdr->txid == txid) {
                *off = o;
                found = 1;
                break;
            }
            o += hdr->rec_len;
        }
        if (fd >= 0)
            close(fd);
    }
    if (d)
        closedir(d);
    return found ? 0 : -1;
}

static void flip_byte(const char *path, uint64_t off)
{
    int fd = open(path, O_RDWR);
    uint8_t b = 0;
    if (fd < 0 || pread(fd, &b, 1, (off_t)off) != 1)
        abort();
    b ^= 0x5a;
    if (pwrite(fd, &b, 1, (off_t)off) != 1)
        abort();
    close(fd);
}

static struct dbm_store *store_new(const char *name, uint64_t seg, uint64_t img, char *dir_out)
{
    struct dbm_store_opts opts = { seg, img };
    struct dbm_store *s = NULL;
    snprintf(dir_out, 256, "%s/%s", root, name);
    int rc = dbm_store_open(dir_out, &opts, &s);
    CHECK_EQ_INT(rc, 0);
    return s;
}

static struct dbm_store *store_reopen(struct dbm_store *s, const char *dir, uint64_t seg, uint64_t img)
{
    struct dbm_store_opts opts = { seg, img };
    dbm_store_close(s);
    s = NULL;
    CHECK_EQ_INT(dbm_store_open(dir, &opts, &s), 0);
    return s;
}

/* ---- tests ---- */

static void count_files(const char *tdir, int *idx, int *img)
{
    DIR *d = opendir(tdir);
    struct dirent *de;
    *idx = *img = 0;
    while (d && (de = readdir(d))) {
        *idx += strstr(de->d_name, ".idx") != NULL;
        *img += !strncmp(de->d_name, "image.", 6);
    }
    if (d)
        closedir(d);
}

/* Closes and reopens the store: the same answers, and appends go on. */
static void history_reopen(struct dbm_store *s, const char *dir, uint64_t id, struct oracle *o, uint64_t *rng)
{
    struct dbm_timeline *t;
    int bad = 0;
    s = store_reopen(s, dir, 64 * 1024, 160 * 1024);
    CHECK_EQ_INT(dbm_tl_open(s, id, &t), 0);
    CHECK_EQ_INT(check_all(t, o, 1), 0);
    CHECK_EQ_INT(check_times(t, o, 1), 0);
    for (int i = 0; i < 50; i++) {
        oracle_gen(o, rng);
        bad += apply(t, o, o->n - 1) != 0;
    }
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(check_all(t, o, oracle_last(o) - 60), 0);
    dbm_tl_close(t);
    CHECK_EQ_INT(dbm_tl_drop(s, id), 0);
    CHECK_EQ_INT(dbm_tl_open(s, id, &t), -ENOENT);
    dbm_store_close(s);
}

static void test_history(void)
{
    char dir[256];
    struct dbm_store *s = store_new("history", 64 * 1024, 160 * 1024, dir);
    uint64_t id;
    struct dbm_timeline *t;
    CHECK_EQ_INT(dbm_tl_create(s, PS, 0, 0, &id), 0);
    CHECK_EQ_INT(dbm_tl_open(s, id, &t), 0);
    struct dbm_tl_stat st;
    uint8_t buf[PS];
    CHECK_EQ_INT(dbm_tl_stat(t, &st), 0);
    CHECK(st.last_txid == 0 && st.first_txid == 0 && st.commits == 0);
    CHECK_EQ_INT(dbm_tl_read_page(t, 0, 1, buf), 1);
    CHECK_EQ_INT(dbm_tl_read_page(t, 1, 1, buf), -ERANGE);
    struct dbm_txinfo ti;
    CHECK_EQ_INT(dbm_tl_txid_at(t, UINT64_MAX, &ti), -ENOENT);

    struct oracle o;
    uint64_t rng = 42;
    oracle_init(&o, NULL, 0);
    int bad = 0;
    for (int i = 0; i < 700; i++) {
        oracle_gen(&o, &rng);
        bad += apply(t, &o, o.n - 1) != 0;
        for (int k = 0; k < 4; k++) {
            uint64_t x = 1 + rng_next(&rng) % oracle_last(&o);
            bad += check_read(t, &o, x, 1 + (uint32_t)(rng_next(&rng) % MAXP)) != 0;
        }
    }
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(check_all(t, &o, 1), 0);
    CHECK_EQ_INT(check_times(t, &o, 1), 0);
    CHECK_EQ_INT(dbm_tl_read_page(t, oracle_last(&o) + 1, 1, buf), -ERANGE);
    CHECK_EQ_INT(dbm_tl_stat(t, &st), 0);
    CHECK(st.first_txid == 1 && st.last_txid == oracle_last(&o) && st.commits == 700);
    CHECK(st.db_pages == o.dbp[o.n - 1] && st.first_ns == o.ns[1] && st.last_ns == o.ns[o.n - 1]);
    CHECK(st.history_bytes > 700 * PS);
    CHECK_EQ_INT(dbm_tl_txinfo(t, 5, &ti), 0);
    CHECK(ti.txid == 5 && ti.commit_ns == o.ns[5] && ti.db_pages == o.dbp[5]);
    CHECK_EQ_INT(dbm_tl_txinfo(t, 0, &ti), -ENOENT);

    /* several segments were sealed and images were written */
    char tdir[300];
    int idx, img;
    tl_dir(tdir, sizeof tdir, dir, id);
    count_files(tdir, &idx, &img);
    CHECK(idx >= 10);
    CHECK(img >= 3);
    CHECK_EQ_INT(dbm_tl_drop(s, id), -EBUSY);
    dbm_tl_close(t);
    history_reopen(s, dir, id, &o, &rng);
    oracle_free(&o);
}

/* A grandchild of the child; then, after a restart, only it is opened and it
 * opens its ancestors itself. Takes s over and closes it. */
static void branch_grandchild(struct dbm_store *s, const char *dir, uint64_t pid, uint64_t cid,
                              const struct oracle *co, uint64_t *rng)
{
    uint64_t gid;
    struct dbm_timeline *g;
    struct oracle go;
    int bad = 0;
    CHECK_EQ_INT(dbm_tl_create(s, PS, cid, 150, &gid), 0);
    CHECK_EQ_INT(dbm_tl_open(s, gid, &g), 0);
    oracle_init(&go, co, 150);
    for (int i = 0; i < 60; i++) {
        oracle_gen(&go, rng);
        bad += apply(g, &go, go.n - 1) != 0;
    }
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(check_all(g, &go, 150), 0);
    CHECK_EQ_INT(dbm_tl_drop(s, cid), -EBUSY); /* open through g, and has a child */
    dbm_tl_close(g);
    CHECK_EQ_INT(dbm_tl_drop(s, pid), -EBUSY); /* has children */
    s = store_reopen(s, dir, 32 * 1024, 0);
    CHECK_EQ_INT(dbm_tl_open(s, gid, &g), 0);
    CHECK_EQ_INT(check_all(g, &go, 150), 0);
    CHECK_EQ_INT(dbm_tl_drop(s, pid), -EBUSY); /* open through g */
    dbm_tl_close(g);
    CHECK_EQ_INT(dbm_tl_drop(s, gid), 0);
    CHECK_EQ_INT(dbm_tl_drop(s, cid), 0);
    CHECK_EQ_INT(dbm_tl_drop(s, pid), 0);
    dbm_store_close(s);
    oracle_free(&go);
}

static void test_branch(void)
{
    char dir[256];
    struct dbm_store *s = store_new("branch", 32 * 1024, 0, dir);
    uint64_t pid, cid;
    struct dbm_timeline *p, *c;
    struct oracle po, co;
    uint64_t rng = 7;
    int bad = 0;
    CHECK_EQ_INT(dbm_tl_create(s, PS, 0, 0, &pid), 0);
    CHECK_EQ_INT(dbm_tl_open(s, pid, &p), 0);
    oracle_init(&po, NULL, 0);
    for (int i = 0; i < 150; i++) {
        oracle_gen(&po, &rng);
        bad += apply(p, &po, po.n - 1) != 0;
    }
    CHECK_EQ_INT(dbm_tl_create(s, PS, pid, 1000, &cid), -ERANGE);
    CHECK_EQ_INT(dbm_tl_create(s, 1024, pid, 10, &cid), -EINVAL);
    CHECK_EQ_INT(dbm_tl_create(s, PS, pid, 100, &cid), 0);
    CHECK_EQ_INT(dbm_tl_open(s, cid, &c), 0);
    oracle_init(&co, &po, 100);

    /* before any commit of its own, the child is its branch point */
    struct dbm_tl_stat st;
    struct dbm_txinfo ti;
    CHECK_EQ_INT(dbm_tl_stat(c, &st), 0);
    CHECK(st.first_txid == 100 && st.last_txid == 100 && st.parent_id == pid && st.db_pages == po.dbp[100]);
    CHECK_EQ_INT(dbm_tl_txid_at(c, po.ns[150], &ti), 0);
    CHECK_EQ_INT(ti.txid, 100);
    CHECK_EQ_INT(dbm_tl_txid_at(c, po.ns[1], &ti), po.ns[1] < po.ns[100] ? -ENOENT : 0);
    CHECK_EQ_INT(check_all(c, &co, 100), 0);

    /* the parent goes on; the child diverges */
    for (int i = 0; i < 100; i++) {
        oracle_gen(&po, &rng);
        bad += apply(p, &po, po.n - 1) != 0;
        oracle_gen(&co, &rng);
        bad += apply(c, &co, co.n - 1) != 0;
    }
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(check_all(c, &co, 100), 0);
    CHECK_EQ_INT(check_all(p, &po, 90), 0);
    CHECK_EQ_INT(check_times(c, &co, 100), 0);
    uint8_t buf[PS];
    CHECK_EQ_INT(dbm_tl_read_page(c, 99, 1, buf), -ERANGE);

    dbm_tl_close(c);
    dbm_tl_close(p);
    branch_grandchild(s, dir, pid, cid, &co, &rng);
    oracle_free(&po);
    oracle_free(&co);
}

/* After reopening, the same range; appends go on. Takes s over. */
static void gc_reopen(struct dbm_store *s, const char *dir, uint64_t id, struct oracle *o, uint64_t first,
                      uint64_t *rng)
{
    struct dbm_timeline *t;
    struct dbm_tl_stat st;
    int bad = 0;
    s = store_reopen(s, dir, 32 * 1024, 256 * 1024);
    CHECK_EQ_INT(dbm_tl_open(s, id, &t), 0);
    CHECK_EQ_INT(dbm_tl_stat(t, &st), 0);
    CHECK_EQ_INT(st.first_txid, first);
    CHECK_EQ_INT(check_all(t, o, first), 0);
    for (int i = 0; i < 30; i++) {
        oracle_gen(o, rng);
        bad += apply(t, o, o->n - 1) != 0;
    }
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(check_all(t, o, first), 0);
    dbm_tl_close(t);
    dbm_store_close(s);
}

static void test_gc(void)
{
    char dir[256];
    struct dbm_store *s = store_new("gc", 32 * 1024, 256 * 1024, dir);
    uint64_t id, cid;
    struct dbm_timeline *t;
    struct oracle o;
    uint64_t rng = 99;
    int bad = 0;
    CHECK_EQ_INT(dbm_tl_create(s, PS, 0, 0, &id), 0);
    CHECK_EQ_INT(dbm_tl_open(s, id, &t), 0);
    oracle_init(&o, NULL, 0);
    for (int i = 0; i < 600; i++) {
        oracle_gen(&o, &rng);
        bad += apply(t, &o, o.n - 1) != 0;
    }
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(dbm_tl_create(s, PS, id, 200, &cid), 0);

    /* horizon before everything: nothing goes */
    CHECK_EQ_INT(dbm_tl_gc(t, 0), 0);
    /* the child's branch point holds history back to 200 */
    struct dbm_tl_stat st, st0;
    CHECK_EQ_INT(dbm_tl_stat(t, &st0), 0);
    int64_t freed = dbm_tl_gc(t, o.ns[450]);
    CHECK(freed > 0);
    CHECK_EQ_INT(dbm_tl_stat(t, &st), 0);
    CHECK(st.first_txid > 1 && st.first_txid <= 200);
    CHECK(st.history_bytes < st0.history_bytes);
    CHECK_EQ_INT(check_all(t, &o, st.first_txid), 0);
    uint8_t buf[PS];
    CHECK_EQ_INT(dbm_tl_read_page(t, st.first_txid - 1, 1, buf), -ERANGE);

    /* without the child, history goes up to the txid in force at the horizon */
    CHECK_EQ_INT(dbm_tl_drop(s, cid), 0);
    uint64_t horizon = o.ns[450] + 1;
    long keep = oracle_at(&o, 1, horizon);
    freed = dbm_tl_gc(t, horizon);
    CHECK(freed > 0);
    CHECK_EQ_INT(dbm_tl_stat(t, &st), 0);
    CHECK(st.first_txid > 200 && st.first_txid <= (uint64_t)keep);
    CHECK(st.last_txid == 600 && st.commits < 600);
    CHECK_EQ_INT(check_all(t, &o, st.first_txid), 0);
    CHECK_EQ_INT(check_times(t, &o, st.first_txid), 0);
    struct dbm_txinfo ti;
    CHECK_EQ_INT(dbm_tl_txid_at(t, horizon, &ti), 0);
    CHECK_EQ_INT(ti.txid, keep);

    /* a horizon past the end keeps the newest state */
    freed = dbm_tl_gc(t, UINT64_MAX);
    CHECK(freed >= 0);
    CHECK_EQ_INT(dbm_tl_stat(t, &st), 0);
    CHECK(st.last_txid == 600 && st.first_txid <= 600);
    CHECK_EQ_INT(check_all(t, &o, 600), 0);

    dbm_tl_close(t);
    gc_reopen(s, dir, id, &o, st.first_txid, &rng);
    oracle_free(&o);
}

/* Builds a timeline of n transactions in one big segment (no images). */
static struct dbm_store *build_small(const char *name, char *dir, uint64_t *id, struct oracle *o, int n,
                                     uint64_t seg)
{
    struct dbm_store *s = store_new(name, seg, 1ull << 40, dir);
    struct dbm_timeline *t;
    uint64_t rng = 1234;
    int bad = 0;
    CHECK_EQ_INT(dbm_tl_create(s, PS, 0, 0, id), 0);
    CHECK_EQ_INT(dbm_tl_open(s, *id, &t), 0);
    oracle_init(o, NULL, 0);
    for (int i = 0; i < n; i++) {
        oracle_gen(o, &rng);
        bad += apply(t, o, o->n - 1) != 0;
    }
    CHECK_EQ_INT(bad, 0);
    dbm_tl_close(t);
    return s;
}

static uint8_t *slurp(const char *path, size_t *n)
{
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0)
        abort();
    uint8_t *b = malloc((size_t)st.st_size + 1);
    if (pread(fd, b, (size_t)st.st_size, 0) != st.st_size)
        abort();
    close(fd);
    *n = (size_t)st.st_size;
    return b;
}

static void spit(const char *path, const uint8_t *b, size_t n)
{
    int fd = open(path, O_WRONLY | O_TRUNC);
    if (fd < 0 || pwrite(fd, b, n, 0) != (ssize_t)n)
        abort();
    close(fd);
}

/* Opens, checks that txids up to last are intact, appends one more. */
static int reopen_and_check(struct dbm_store *s, uint64_t id, struct oracle *o, uint64_t last)
{
    struct dbm_timeline *t;
    struct dbm_tl_stat st;
    int bad = 0;
    if (dbm_tl_open(s, id, &t))
        return 1;
    dbm_tl_stat(t, &st);
    bad += st.last_txid != last;
    bad += check_range(t, o, last > 5 ? last - 5 : 1, last);
    /* the next transaction, on a copy of the oracle cut at last */
    struct oracle c;
    oracle_init(&c, o, last);
    uint64_t rng = last * 77 + 1;
    oracle_gen(&c, &rng);
    bad += apply(t, &c, c.n - 1) != 0;
    bad += check_all(t, &c, last);
    dbm_tl_close(t);
    oracle_free(&c);
    return bad;
}

static void test_torn(void)
{
    char dir[256], tdir[300], path[400];
    uint64_t id, off;
    struct oracle o;
    struct pgs_rec_hdr h;
    struct dbm_store *s = build_small("torn", dir, &id, &o, 40, 1 << 20);
    tl_dir(tdir, sizeof tdir, dir, id);
    CHECK_EQ_INT(find_record(tdir, 40, path, sizeof path, &off, &h), 0);
    size_t n;
    uint8_t *orig = slurp(path, &n);
    uint64_t len = h.rec_len;
    CHECK(h.npages > 0); /* the cut points below assume pages */
    uint64_t cuts[] = { 0, 1, 7, 8, 44, 47, 48, 49, 60, len / 2, len - PS, len - 9, len - 1 };
    int bad = 0;
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        if (truncate(path, (off_t)(off + cuts[i])) < 0)
            abort();
        bad += reopen_and_check(s, id, &o, 39) != 0;
        spit(path, orig, n);
    }
    /* random cut points */
    uint64_t rng = 5;
    for (int i = 0; i < 20; i++) {
        if (truncate(path, (off_t)(off + rng_next(&rng) % len)) < 0)
            abort();
        bad += reopen_and_check(s, id, &o, 39) != 0;
        spit(path, orig, n);
    }
    CHECK_EQ_INT(bad, 0);
    /* garbage after the last record, inside the preallocated area and past it */
    for (int i = 0; i < 3; i++) {
        uint8_t junk[3000];
        for (size_t k = 0; k < sizeof junk; k++)
            junk[k] = (uint8_t)rng_next(&rng);
        if (i == 2)
            memcpy(junk, &h, 40); /* a header prefix without a valid checksum */
        int fd = open(path, O_WRONLY);
        uint64_t at = i == 1 ? n : off + len;
        CHECK(fd >= 0 && pwrite(fd, junk, sizeof junk, (off_t)at) == (ssize_t)sizeof junk);
        close(fd);
        CHECK_EQ_INT(reopen_and_check(s, id, &o, 40), 0);
        spit(path, orig, n);
        if (truncate(path, (off_t)n) < 0)
            abort();
    }
    /* a torn tail whose header is intact but whose pages are not */
    flip_byte(path, off + len - 3);
    CHECK_EQ_INT(reopen_and_check(s, id, &o, 39), 0);
    spit(path, orig, n);
    /* a header flipped in the tail record: torn */
    flip_byte(path, off + 9);
    CHECK_EQ_INT(reopen_and_check(s, id, &o, 39), 0);
    free(orig);
    dbm_store_close(s);
    oracle_free(&o);
}

/* The first page entry of the record at off. */
static struct pgs_rec_ent first_entry(const char *path, uint64_t off)
{
    struct pgs_rec_ent e = { 0, 0 };
    int fd = open(path, O_RDONLY);
    CHECK(fd >= 0 && pread(fd, &e, sizeof e, (off_t)(off + sizeof(struct pgs_rec_hdr))) == (ssize_t)sizeof e);
    if (fd >= 0)
        close(fd);
    return e;
}

static void test_corrupt_sealed(void)
{
    char dir[256], tdir[300], path[400];
    uint64_t id, off;
    struct oracle o;
    struct pgs_rec_hdr h;
    struct dbm_timeline *t;
    uint8_t buf[PS];
    /* 8 KiB segments: the early records are in sealed segments */
    struct dbm_store *s = build_small("corrupt1", dir, &id, &o, 80, 8 * 1024);
    tl_dir(tdir, sizeof tdir, dir, id);
    uint64_t x = 10;
    while (find_record(tdir, x, path, sizeof path, &off, &h) == 0 && h.npages == 0)
        x++;
    CHECK(h.npages > 0 && x < 20);
    struct pgs_rec_ent e0 = first_entry(path, off);
    uint64_t page0 = off + sizeof h + h.npages * 8;

    /* a stored page */
    flip_byte(path, page0 + 100);
    CHECK_EQ_INT(dbm_tl_open(s, id, &t), 0);
    CHECK_EQ_INT(dbm_tl_read_page(t, x, e0.pgno, buf), -EIO);
    CHECK_EQ_INT(check_all(t, &o, 60), 0);
    dbm_tl_close(t);
    flip_byte(path, page0 + 100);

    /* a record header */
    flip_byte(path, off + 20);
    CHECK_EQ_INT(dbm_tl_open(s, id, &t), 0);
    CHECK_EQ_INT(dbm_tl_read_page(t, x, e0.pgno, buf), -EIO);
    CHECK_EQ_INT(check_all(t, &o, 60), 0);
    dbm_tl_close(t);
    flip_byte(path, off + 20);
    CHECK_EQ_INT(dbm_tl_open(s, id, &t), 0);
    CHECK_EQ_INT(check_all(t, &o, 1), 0);
    dbm_tl_close(t);
    dbm_store_close(s);
    oracle_free(&o);
}

/* The active segment: a page mid-log, then a header mid-log. */
static void test_corrupt_active(void)
{
    char dir[256], tdir[300], path[400];
    uint64_t id, off;
    struct oracle o;
    struct pgs_rec_hdr h;
    struct dbm_timeline *t;
    struct dbm_tl_stat st;
    uint8_t buf[PS];
    struct dbm_store *s = build_small("corrupt2", dir, &id, &o, 80, 1 << 20);
    tl_dir(tdir, sizeof tdir, dir, id);
    uint64_t x = 78; /* a record with pages, two records before the tail */
    while (find_record(tdir, x, path, sizeof path, &off, &h) == 0 && h.npages == 0)
        x--;
    CHECK(h.npages > 0 && x > 60);
    struct pgs_rec_ent e0 = first_entry(path, off);
    uint64_t page0 = off + sizeof h + h.npages * 8;

    flip_byte(path, page0 + 5);
    CHECK_EQ_INT(dbm_tl_open(s, id, &t), 0);
    CHECK_EQ_INT(dbm_tl_stat(t, &st), 0);
    CHECK_EQ_INT(st.last_txid, 80);
    CHECK_EQ_INT(dbm_tl_read_page(t, x, e0.pgno, buf), -EIO);
    CHECK_EQ_INT(check_read(t, &o, x - 1, e0.pgno), 0);
    dbm_tl_close(t);
    flip_byte(path, page0 + 5);

    flip_byte(path, off + 30);
    CHECK_EQ_INT(dbm_tl_open(s, id, &t), 0);
    CHECK_EQ_INT(dbm_tl_read_page(t, x, e0.pgno, buf), -EIO);
    CHECK_EQ_INT(dbm_tl_read_page(t, 80, 1, buf), -EIO);
    CHECK_EQ_INT(check_range(t, &o, 60, x - 1), 0); /* what is before the damage still reads */
    struct dbm_page_write w = { 1, buf };
    CHECK_EQ_INT(dbm_tl_append(t, o.ns[80] + 1, 5, &w, 1, NULL), -EIO);
    dbm_tl_close(t);
    flip_byte(path, off + 30);
    CHECK_EQ_INT(dbm_tl_open(s, id, &t), 0);
    CHECK_EQ_INT(check_all(t, &o, 1), 0);
    dbm_tl_close(t);
    dbm_store_close(s);
    oracle_free(&o);
}

/* ---- injected faults ---- */

static int fault_after;     /* calls to let through before failing */
static int fault_errno;
static int fault_partial;   /* write half of the failing pwrite first */

static ssize_t fault_pwrite(int fd, const void *b, size_t n, off_t off)
{
    if (fault_after-- > 0)
        return pwrite(fd, b, n, off);
    if (fault_partial && n > 1) {
        fault_partial = 0;
        fault_after = 0;
        return pwrite(fd, b, n / 2, off);
    }
    errno = fault_errno;
    return -1;
}

static int fault_fdatasync(int fd)
{
    (void)fd;
    errno = fault_errno;
    return -1;
}

static int fault_fallocate(int fd, int mode, off_t off, off_t len)
{
    (void)fd, (void)mode, (void)off, (void)len;
    errno = fault_errno;
    return -1;
}

static int fault_rename(const char *from, const char *to)
{
    (void)from, (void)to;
    errno = fault_errno;
    return -1;
}

static void test_faults(void)
{
    char dir[256];
    uint64_t id;
    struct oracle o;
    struct dbm_timeline *t;
    struct dbm_tl_stat st0, st;
    struct dbm_store *s = build_small("faults", dir, &id, &o, 30, 16 * 1024);
    CHECK_EQ_INT(dbm_tl_open(s, id, &t), 0);
    uint64_t rng = 77;
    int bad = 0;
    int failed = 0, renames = 0;
    for (int round = 0; round < 40; round++) {
        CHECK_EQ_INT(dbm_tl_stat(t, &st0), 0);
        oracle_gen(&o, &rng);
        fault_errno = round % 2 ? EIO : ENOSPC;
        fault_after = round % 3;
        fault_partial = round % 4 == 1;
        if (round % 5 == 4)
            dbm_sys.rename = fault_rename; /* fails the append only when it seals */
        else if (round % 3 == 2)
            dbm_sys.fdatasync = fault_fdatasync;
        else
            dbm_sys.pwrite = fault_pwrite;
        if (round % 8 == 7)
            dbm_sys.fallocate = fault_fallocate;
        int rc = apply(t, &o, o.n - 1);
        dbm_sysio_reset();
        /* pwrite faults may hit a call the append did not need; otherwise it failed */
        if (rc == 0)
            continue;
        failed++;
        renames += round % 5 == 4;
        bad += rc != -fault_errno;
        CHECK_EQ_INT(dbm_tl_stat(t, &st), 0);
        bad += st.last_txid != st0.last_txid || st.commits != st0.commits;
        bad += check_range(t, &o, st.last_txid > 3 ? st.last_txid - 3 : 1, st.last_txid) != 0;
        bad += apply(t, &o, o.n - 1) != 0; /* the same transaction, now it works */
    }
    CHECK_EQ_INT(bad, 0);
    CHECK(failed >= 25);
    CHECK(renames >= 1);
    CHECK_EQ_INT(check_all(t, &o, 1), 0);
    dbm_tl_close(t);
    s = store_reopen(s, dir, 16 * 1024, 1ull << 40);
    CHECK_EQ_INT(dbm_tl_open(s, id, &t), 0);
    CHECK_EQ_INT(dbm_tl_stat(t, &st), 0);
    CHECK_EQ_INT(st.last_txid, oracle_last(&o));
    CHECK_EQ_INT(check_all(t, &o, 1), 0);
    dbm_tl_close(t);
    dbm_store_close(s);
    oracle_free(&o);
}

/* ---- concurrent readers ---- */

struct conc {
    struct dbm_timeline *t;
    const struct oracle *o;
    int stop; /* atomic */
    int bad;  /* atomic */
    uint64_t committing; /* atomic: no reader may see a txid past it */
    long reads; /* atomic */
};

struct reader_arg {
    struct conc *c;
    uint64_t seed;
};

static void *reader(void *arg)
{
    struct reader_arg *ra = arg;
    struct conc *c = ra->c;
    uint64_t rng = ra->seed;
    int bad = 0;
    long reads = 0;
    while (!__atomic_load_n(&c->stop, __ATOMIC_RELAXED)) {
        struct dbm_tl_stat st;
        dbm_tl_stat(c->t, &st);
        /* loaded after: a txid stat showed had its commit begun before */
        if (st.last_txid > __atomic_load_n(&c->committing, __ATOMIC_ACQUIRE)) {
            fprintf(stderr, "reader saw txid %" PRIu64 " before its commit\n", st.last_txid);
            bad++;
        }
        if (st.last_txid == 0)
            continue;
        uint8_t buf[PS];
        /* the next txid reads only once its commit has begun (loaded after the read) */
        if (dbm_tl_read_page(c->t, st.last_txid + 1, 1, buf) != -ERANGE &&
            __atomic_load_n(&c->committing, __ATOMIC_ACQUIRE) <= st.last_txid) {
            fprintf(stderr, "reader read txid %" PRIu64 " before its commit\n", st.last_txid + 1);
            bad++;
        }
        /* mostly the newest few commits, sometimes anywhere */
        uint64_t back = rng_next(&rng) % (st.last_txid < 5 ? st.last_txid : 5);
        uint64_t x = rng_next(&rng) % 4 ? st.last_txid - back : 1 + rng_next(&rng) % st.last_txid;
        bad += check_read(c->t, c->o, x, 1 + (uint32_t)(rng_next(&rng) % MAXP)) != 0;
        struct dbm_txinfo ti;
        if (dbm_tl_txid_at(c->t, c->o->ns[x], &ti) || ti.txid < x)
            bad++;
        reads++;
    }
    __atomic_add_fetch(&c->bad, bad, __ATOMIC_RELAXED);
    __atomic_add_fetch(&c->reads, reads, __ATOMIC_RELAXED);
    return NULL;
}

static void test_concurrent(void)
{
    char dir[256];
    struct dbm_store *s = store_new("conc", 32 * 1024, 128 * 1024, dir);
    uint64_t id;
    struct oracle o;
    uint64_t rng = 2024;
    CHECK_EQ_INT(dbm_tl_create(s, PS, 0, 0, &id), 0);
    struct conc c = { 0 };
    c.committing = UINT64_MAX;
    CHECK_EQ_INT(dbm_tl_open(s, id, &c.t), 0);
    oracle_init(&o, NULL, 0);
    for (int i = 0; i < 800; i++)
        oracle_gen(&o, &rng);
    c.o = &o;
    pthread_t th[4];
    struct reader_arg ra[4];
    for (int i = 0; i < 4; i++) {
        ra[i] = (struct reader_arg){ &c, 100 + (uint64_t)i };
        pthread_create(&th[i], NULL, reader, &ra[i]);
    }
    int bad = 0;
    for (size_t i = 1; i < o.n; i++)
        bad += apply(c.t, &o, i) != 0;
    __atomic_store_n(&c.stop, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(c.bad, 0);
    CHECK(c.reads > 100);
    CHECK_EQ_INT(check_all(c.t, &o, 1), 0);
    dbm_tl_close(c.t);
    dbm_store_close(s);
    oracle_free(&o);
}

/* ---- streamed transactions ---- */

/* Largest log segment file in tdir. */
static uint64_t max_log_size(const char *tdir)
{
    DIR *d = opendir(tdir);
    struct dirent *de;
    uint64_t m = 0;
    while (d && (de = readdir(d))) {
        char p[600];
        struct stat st;
        snprintf(p, sizeof p, "%s/%s", tdir, de->d_name);
        if (!strncmp(de->d_name, "log.", 4) && strlen(de->d_name) == 20 && stat(p, &st) == 0 &&
            (uint64_t)st.st_size > m)
            m = (uint64_t)st.st_size;
    }
    if (d)
        closedir(d);
    return m;
}

/* Every sealed index in tdir holds each (pgno, txid) once, in order: a page
 * added several times in one transaction is indexed once (the last). */
static int idx_strictly_sorted(const char *tdir)
{
    DIR *d = opendir(tdir);
    struct dirent *de;
    int bad = 0, seen = 0;
    while (d && (de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (len < 4 || strcmp(de->d_name + len - 4, ".idx"))
            continue;
        char p[600];
        snprintf(p, sizeof p, "%s/%s", tdir, de->d_name);
        size_t n;
        uint8_t *b = slurp(p, &n);
        struct pgs_idx_hdr h;
        memcpy(&h, b, sizeof h);
        const struct pgs_ent *e = (const void *)(b + sizeof h + h.ntx * sizeof(struct pgs_txn));
        for (uint64_t i = 1; i < h.nent; i++)
            bad += e[i - 1].pgno > e[i].pgno || (e[i - 1].pgno == e[i].pgno && e[i - 1].txid >= e[i].txid);
        seen++;
        free(b);
    }
    if (d)
        closedir(d);
    return seen ? bad : -1;
}

/* A transaction writing every page `rounds` times, all but the last junk:
 * larger than a 32 KiB segment. */
static int apply_stream_big(struct dbm_timeline *t, struct oracle *o, uint64_t *rng, int rounds)
{
    oracle_gen(o, rng);
    size_t i = o->n - 1;
    uint32_t *v = o->ver + i * MAXP;
    for (uint32_t p = 1; p <= o->dbp[i]; p++)
        v[p - 1] = next_w++;
    struct swrite plan[8 * MAXP];
    size_t n = 0;
    for (int r = 0; r < rounds; r++)
        for (uint32_t p = 1; p <= MAXP; p++)
            plan[n++] = (struct swrite){ p, r + 1 < rounds || p > o->dbp[i] ? next_junk++ : v[p - 1] };
    struct dbm_tl_txn *x;
    uint64_t txid = 0;
    int rc = dbm_tl_txn_begin(t, &x);
    if (!rc)
        rc = stream_add(x, plan, n, rng, 50);
    if (!rc)
        rc = dbm_tl_txn_commit(x, o->ns[i], o->dbp[i], &txid);
    return rc ? rc : txid == o->base + i ? 0 : -1000;
}

/* Streamed and ordinary transactions mixed, against the oracle at every
 * txid; across reopen (recovery of streamed records), images and gc. */
static void test_stream(void)
{
    char dir[256], tdir[300];
    struct dbm_store *s = store_new("stream", 32 * 1024, 160 * 1024, dir);
    uint64_t id, rng = 4242;
    struct dbm_timeline *t;
    struct oracle o;
    int bad = 0, streamed = 0;
    CHECK_EQ_INT(dbm_tl_create(s, PS, 0, 0, &id), 0);
    CHECK_EQ_INT(dbm_tl_open(s, id, &t), 0);
    tl_dir(tdir, sizeof tdir, dir, id);
    oracle_init(&o, NULL, 0);
    for (int i = 0; i < 400; i++) {
        if (i % 60 == 30) {
            bad += apply_stream_big(t, &o, &rng, 3) != 0;
            streamed++;
            continue;
        }
        oracle_gen(&o, &rng);
        if (rng_next(&rng) % 2) {
            bad += apply_stream(t, &o, o.n - 1, &rng, (int)(rng_next(&rng) % 60)) != 0;
            streamed++;
        } else {
            bad += apply(t, &o, o.n - 1) != 0;
        }
        if (i == 200) { /* an empty streamed transaction: only the size changes */
            struct dbm_tl_txn *x;
            oracle_gen(&o, &rng);
            memcpy(o.ver + (o.n - 1) * MAXP, o.ver + (o.n - 2) * MAXP, MAXP * sizeof *o.ver);
            for (uint32_t p = o.dbp[o.n - 1] + 1; p <= MAXP; p++)
                o.ver[(o.n - 1) * MAXP + p - 1] = 0;
            CHECK_EQ_INT(dbm_tl_txn_begin(t, &x), 0);
            CHECK_EQ_INT(dbm_tl_txn_commit(x, o.ns[o.n - 1], o.dbp[o.n - 1], NULL), 0);
        }
    }
    CHECK_EQ_INT(bad, 0);
    CHECK(streamed > 150);
    CHECK_EQ_INT(check_all(t, &o, 1), 0);
    CHECK_EQ_INT(check_times(t, &o, 1), 0);
    struct dbm_tl_stat st;
    CHECK_EQ_INT(dbm_tl_stat(t, &st), 0);
    CHECK(st.last_txid == oracle_last(&o) && st.commits == oracle_last(&o));
    CHECK(max_log_size(tdir) > 3 * MAXP * (PS + 8)); /* a transaction larger than a segment, in one */
    int idx, img;
    count_files(tdir, &idx, &img);
    CHECK(idx >= 10 && img >= 3);
    CHECK_EQ_INT(idx_strictly_sorted(tdir), 0);
    dbm_tl_close(t);

    /* recovery reads streamed records back (the active segment is rescanned) */
    s = store_reopen(s, dir, 32 * 1024, 160 * 1024);
    CHECK_EQ_INT(dbm_tl_open(s, id, &t), 0);
    CHECK_EQ_INT(check_all(t, &o, 1), 0);
    for (int i = 0; i < 40; i++) {
        oracle_gen(&o, &rng);
        bad += (i % 2 ? apply(t, &o, o.n - 1) : apply_stream(t, &o, o.n - 1, &rng, 30)) != 0;
    }
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(dbm_tl_image(t), 0);
    int64_t freed = dbm_tl_gc(t, o.ns[300]);
    CHECK(freed > 0);
    CHECK_EQ_INT(dbm_tl_stat(t, &st), 0);
    CHECK(st.first_txid > 1 && (long)st.first_txid <= oracle_at(&o, 1, o.ns[300]));
    CHECK_EQ_INT(check_all(t, &o, st.first_txid), 0);
    dbm_tl_close(t);
    s = store_reopen(s, dir, 32 * 1024, 160 * 1024);
    CHECK_EQ_INT(dbm_tl_open(s, id, &t), 0);
    CHECK_EQ_INT(check_all(t, &o, st.first_txid), 0);
    dbm_tl_close(t);
    dbm_store_close(s);
    oracle_free(&o);
}

/* Abort, refusals while a transaction is open, and injected faults in add
 * and in commit: nothing changes, and the same transaction then works. */
static void stream_refusals(struct dbm_timeline *t, struct oracle *o, uint64_t *rng)
{
    struct dbm_tl_txn *x, *y;
    struct dbm_tl_stat st0, st;
    uint8_t buf[PS];
    dbm_tl_txn_abort(NULL);
    CHECK_EQ_INT(dbm_tl_stat(t, &st0), 0);
    oracle_gen(o, rng);
    struct swrite plan[200 + MAXP];
    size_t n = stream_plan(o, o->n - 1, rng, 200, plan);
    CHECK_EQ_INT(dbm_tl_txn_begin(t, &x), 0);
    CHECK_EQ_INT(stream_add(x, plan, n, rng, 7), 0);
    CHECK_EQ_INT(dbm_tl_txn_begin(t, &y), -EBUSY);
    struct dbm_page_write w = { 1, buf }, w0 = { 0, buf };
    memset(buf, 0, sizeof buf);
    CHECK_EQ_INT(dbm_tl_append(t, o->ns[o->n - 1], 5, &w, 1, NULL), -EBUSY);
    CHECK_EQ_INT(dbm_tl_txn_add(x, &w0, 1), -EINVAL);
    CHECK_EQ_INT(dbm_tl_read_page(t, st0.last_txid + 1, 1, buf), -ERANGE);
    dbm_tl_txn_abort(x);
    CHECK_EQ_INT(dbm_tl_stat(t, &st), 0);
    CHECK(st.last_txid == st0.last_txid && st.history_bytes == st0.history_bytes);
    CHECK_EQ_INT(dbm_tl_read_page(t, st0.last_txid + 1, 1, buf), -ERANGE);
    CHECK_EQ_INT(apply(t, o, o->n - 1), 0);
}

static void test_stream_faults(void)
{
    char dir[256];
    uint64_t id, rng = 31337;
    struct oracle o;
    struct dbm_timeline *t;
    struct dbm_tl_stat st0, st;
    struct dbm_store *s = build_small("sfaults", dir, &id, &o, 30, 16 * 1024);
    CHECK_EQ_INT(dbm_tl_open(s, id, &t), 0);
    stream_refusals(t, &o, &rng);
    int bad = 0, in_add = 0, in_commit = 0;
    for (int round = 0; round < 48; round++) {
        CHECK_EQ_INT(dbm_tl_stat(t, &st0), 0);
        oracle_gen(&o, &rng);
        size_t i = o.n - 1;
        struct swrite plan[100 + MAXP];
        size_t n = stream_plan(&o, i, &rng, 100, plan);
        int mode = round % 4;
        fault_errno = round % 2 ? EIO : ENOSPC;
        fault_after = (round / 4) % 5;
        struct dbm_tl_txn *x;
        CHECK_EQ_INT(dbm_tl_txn_begin(t, &x), 0);
        if (mode == 0)
            dbm_sys.pwrite = fault_pwrite; /* during the adds (or the commit, if few parts) */
        if (mode == 2)
            dbm_sys.fallocate = fault_fallocate;
        int rc = stream_add(x, plan, n, &rng, 3);
        if (rc) {
            in_add++;
            bad += rc != -fault_errno;
            struct dbm_page_write again = { 1, plan };
            bad += dbm_tl_txn_add(x, &again, 1) != rc; /* failed: it stays so */
        }
        if (mode == 1)
            dbm_sys.fdatasync = fault_fdatasync;
        if (mode == 3) {
            fault_after = 0;
            dbm_sys.pwrite = fault_pwrite;
        }
        if (rc && round % 3 == 0) {
            dbm_tl_txn_abort(x);
        } else {
            int crc = dbm_tl_txn_commit(x, o.ns[i], o.dbp[i], NULL);
            if (!rc && crc)
                in_commit++;
            rc = rc ? (crc != rc ? -9999 : rc) : crc;
        }
        dbm_sysio_reset();
        if (rc == 0) { /* the fault hit nothing this transaction needed */
            bad += mode == 1 || mode == 3;
            continue;
        }
        bad += rc != -fault_errno;
        CHECK_EQ_INT(dbm_tl_stat(t, &st), 0);
        bad += st.last_txid != st0.last_txid || st.commits != st0.commits;
        bad += check_range(t, &o, st.last_txid > 3 ? st.last_txid - 3 : 1, st.last_txid) != 0;
        bad += apply_stream(t, &o, i, &rng, 50) != 0; /* now it works */
    }
    CHECK_EQ_INT(bad, 0);
    CHECK(in_add >= 6);
    CHECK(in_commit >= 20);
    CHECK_EQ_INT(check_all(t, &o, 1), 0);
    dbm_tl_close(t);
    s = store_reopen(s, dir, 16 * 1024, 1ull << 40);
    CHECK_EQ_INT(dbm_tl_open(s, id, &t), 0);
    CHECK_EQ_INT(dbm_tl_stat(t, &st), 0);
    CHECK_EQ_INT(st.last_txid, oracle_last(&o));
    CHECK_EQ_INT(check_all(t, &o, 1), 0);
    dbm_tl_close(t);
    dbm_store_close(s);
    oracle_free(&o);
}

/* A child process streams oracle entry i and dies: before its commit if
 * commit is 0 (a crash mid-stream), else just after it. */
static void stream_in_child(struct dbm_timeline *t, const struct oracle *o, size_t i, int commit)
{
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        uint64_t rng = 555 + i;
        struct swrite *plan = malloc((300 + MAXP) * sizeof *plan);
        size_t n = stream_plan(o, i, &rng, 300, plan);
        struct dbm_tl_txn *x;
        int rc = dbm_tl_txn_begin(t, &x);
        if (!rc)
            rc = stream_add(x, plan, n, &rng, 20);
        if (!rc && commit)
            rc = dbm_tl_txn_commit(x, o->ns[i], o->dbp[i], NULL);
        _exit(rc ? 1 : 0);
    }
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* Cuts a committed streamed transaction (the last one) at points inside its
 * parts and its commit record: each time, it is a torn tail. */
static void stream_torn(struct dbm_store *s, const char *tdir, uint64_t id, struct oracle *o, uint64_t x)
{
    char path[400];
    uint64_t off, coff;
    struct pgs_rec_hdr h;
    CHECK_EQ_INT(find_record(tdir, x, path, sizeof path, &off, &h), 0);
    CHECK(h.version == PGS_REC_STREAM && h.kind == PGS_KIND_PART);
    int fd = open(path, O_RDONLY);
    for (coff = off; pread(fd, &h, sizeof h, (off_t)coff) == (ssize_t)sizeof h && h.kind != PGS_KIND_COMMIT;)
        coff += h.rec_len;
    close(fd);
    CHECK(h.kind == PGS_KIND_COMMIT && h.txid == x && coff > off + 4 * PS);
    size_t n;
    uint8_t *orig = slurp(path, &n);
    uint64_t cuts[] = { off, off + 47, off + 500, (off + coff) / 2, coff - 1, coff, coff + 40, coff + 63 };
    int bad = 0;
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        if (truncate(path, (off_t)cuts[i]) < 0)
            abort();
        bad += reopen_and_check(s, id, o, x - 1) != 0;
        spit(path, orig, n);
    }
    flip_byte(path, (off + coff) / 2); /* a page (or entry) of a part: torn */
    bad += reopen_and_check(s, id, o, x - 1) != 0;
    spit(path, orig, n);
    bad += reopen_and_check(s, id, o, x) != 0; /* intact: committed */
    spit(path, orig, n);
    CHECK_EQ_INT(bad, 0);
    free(orig);
}

static void test_stream_crash(void)
{
    char dir[256], tdir[300];
    uint64_t id, rng = 8080;
    struct oracle o;
    struct dbm_timeline *t;
    struct dbm_tl_stat st;
    struct dbm_store *s = build_small("scrash", dir, &id, &o, 40, 1 << 20);
    tl_dir(tdir, sizeof tdir, dir, id);
    CHECK_EQ_INT(dbm_tl_open(s, id, &t), 0);
    oracle_gen(&o, &rng);
    stream_in_child(t, &o, o.n - 1, 0);
    dbm_tl_close(t);
    s = store_reopen(s, dir, 1 << 20, 1ull << 40);
    CHECK_EQ_INT(dbm_tl_open(s, id, &t), 0);
    CHECK_EQ_INT(dbm_tl_stat(t, &st), 0);
    CHECK_EQ_INT(st.last_txid, 40);
    CHECK_EQ_INT(check_range(t, &o, 1, 40), 0);
    CHECK_EQ_INT(max_log_size(tdir), st.history_bytes); /* the parts were cut off the log */
    CHECK_EQ_INT(apply_stream(t, &o, o.n - 1, &rng, 100), 0); /* txid 41, now for real */
    oracle_gen(&o, &rng);
    CHECK_EQ_INT(apply(t, &o, o.n - 1), 0);
    oracle_gen(&o, &rng);
    stream_in_child(t, &o, o.n - 1, 1); /* 43 committed, then the process died */
    dbm_tl_close(t);
    s = store_reopen(s, dir, 1 << 20, 1ull << 40);
    CHECK_EQ_INT(dbm_tl_open(s, id, &t), 0);
    CHECK_EQ_INT(dbm_tl_stat(t, &st), 0);
    CHECK_EQ_INT(st.last_txid, 43);
    CHECK_EQ_INT(check_all(t, &o, 1), 0);
    dbm_tl_close(t);
    stream_torn(s, tdir, id, &o, 43);
    dbm_store_close(s);
    oracle_free(&o);
}

/* Readers during long streamed transactions never see them before commit. */
static void test_stream_concurrent(void)
{
    char dir[256];
    struct dbm_store *s = store_new("sconc", 32 * 1024, 128 * 1024, dir);
    uint64_t id, rng = 77;
    struct oracle o;
    CHECK_EQ_INT(dbm_tl_create(s, PS, 0, 0, &id), 0);
    struct conc c = { 0 };
    CHECK_EQ_INT(dbm_tl_open(s, id, &c.t), 0);
    oracle_init(&o, NULL, 0);
    for (int i = 0; i < 300; i++)
        oracle_gen(&o, &rng);
    c.o = &o;
    pthread_t th[4];
    struct reader_arg ra[4];
    for (int i = 0; i < 4; i++) {
        ra[i] = (struct reader_arg){ &c, 300 + (uint64_t)i };
        pthread_create(&th[i], NULL, reader, &ra[i]);
    }
    int bad = 0;
    uint8_t buf[PS];
    for (size_t i = 1; i < o.n; i++) {
        if (i % 2) {
            __atomic_store_n(&c.committing, o.base + i, __ATOMIC_RELEASE);
            bad += apply(c.t, &o, i) != 0;
            continue;
        }
        struct swrite plan[600 + MAXP];
        size_t n = stream_plan(&o, i, &rng, i % 50 ? 60 : 600, plan);
        struct dbm_tl_txn *x;
        bad += dbm_tl_txn_begin(c.t, &x) != 0;
        bad += stream_add(x, plan, n, &rng, 4) != 0;
        bad += dbm_tl_read_page(c.t, o.base + i, 1, buf) != -ERANGE;
        __atomic_store_n(&c.committing, o.base + i, __ATOMIC_RELEASE);
        bad += dbm_tl_txn_commit(x, o.ns[i], o.dbp[i], NULL) != 0;
    }
    __atomic_store_n(&c.stop, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(c.bad, 0);
    CHECK(c.reads > 100);
    CHECK_EQ_INT(check_all(c.t, &o, 1), 0);
    dbm_tl_close(c.t);
    dbm_store_close(s);
    oracle_free(&o);
}

/* Peak RSS (VmHWM) in KiB; with reset, resets the peak to the current RSS
 * first (returns 0 if the kernel refuses). */
static long peak_rss_kib(int reset)
{
    if (reset) {
        int fd = open("/proc/self/clear_refs", O_WRONLY);
        int ok = fd >= 0 && write(fd, "5", 1) == 1;
        if (fd >= 0)
            close(fd);
        if (!ok)
            return 0;
    }
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6))
            kib = atol(line + 6);
    if (f)
        fclose(f);
    return kib;
}

static void big_page(uint8_t *p, uint32_t pgno, uint32_t gen)
{
    for (size_t k = 0; k < 4096; k += 8) {
        uint64_t v = ((uint64_t)pgno << 32 | gen) * 0x9E3779B97F4A7C15ull + k;
        memcpy(p + k, &v, 8);
    }
}

/* A 64 MiB transaction in 1 MiB batches: peak RSS grows far less than it;
 * then a 1.5 MiB dbm_tl_append (streamed inside) with a duplicate page. */
static void test_stream_memory(void)
{
    char dir[256];
    struct dbm_store *s = store_new("smem", 0, 1ull << 40, dir);
    uint64_t id, txid = 0;
    struct dbm_timeline *t;
    CHECK_EQ_INT(dbm_tl_create(s, 4096, 0, 0, &id), 0);
    CHECK_EQ_INT(dbm_tl_open(s, id, &t), 0);
    enum { PER = 256, BATCHES = 64 }; /* 256 x 4 KiB = 1 MiB */
    uint8_t *batch = malloc((size_t)PER * 4096), page[4096], got[4096];
    struct dbm_page_write w[PER];
    memset(batch, 1, (size_t)PER * 4096);
    long before = peak_rss_kib(1);
    if (before <= 0)
        before = peak_rss_kib(0);
    struct dbm_tl_txn *x;
    CHECK_EQ_INT(dbm_tl_txn_begin(t, &x), 0);
    for (uint32_t b = 0; b < BATCHES; b++) {
        for (uint32_t j = 0; j < PER; j++) {
            big_page(batch + (size_t)j * 4096, b * PER + j + 1, 1);
            w[j] = (struct dbm_page_write){ b * PER + j + 1, batch + (size_t)j * 4096 };
        }
        CHECK_EQ_INT(dbm_tl_txn_add(x, w, PER), 0);
    }
    CHECK_EQ_INT(dbm_tl_txn_commit(x, 1000, BATCHES * PER, &txid), 0);
    long after = peak_rss_kib(0);
    fprintf(stderr, "stream_memory: 64 MiB transaction, peak RSS %ld -> %ld KiB\n", before, after);
    CHECK(after - before < 24 * 1024); /* ~2 MiB plain, ~12 MiB under TSan; in RAM it would be >= 64 MiB */
    int bad = 0;
    for (uint32_t p = 1; p <= BATCHES * PER; p += 97) {
        big_page(page, p, 1);
        bad += dbm_tl_read_page(t, txid, p, got) != 0 || memcmp(got, page, 4096) != 0;
    }
    CHECK_EQ_INT(bad, 0);

    /* dbm_tl_append past 1 MiB: the same result as a record (last wins) */
    uint8_t *big = malloc(384 * 4096);
    struct dbm_page_write aw[384];
    for (uint32_t j = 0; j < 384; j++) {
        uint32_t pgno = j == 383 ? 5 : 2 * j + 1;
        big_page(big + (size_t)j * 4096, pgno, j == 383 ? 3 : 2);
        aw[j] = (struct dbm_page_write){ pgno, big + (size_t)j * 4096 };
    }
    CHECK_EQ_INT(dbm_tl_append(t, 2000, 1000, aw, 384, &txid), 0);
    CHECK_EQ_INT(txid, 2);
    for (uint32_t p = 1; p <= 1001; p++) {
        int want = p > 1000 ? 1 : 0;
        uint32_t gen = p == 5 ? 3 : p % 2 && p < 766 ? 2 : 1;
        big_page(page, p, gen);
        int rc = dbm_tl_read_page(t, 2, p, got);
        bad += rc != want || (!want && memcmp(got, page, 4096) != 0);
    }
    CHECK_EQ_INT(bad, 0);
    free(big);
    free(batch);
    dbm_tl_close(t);
    dbm_store_close(s);
}

int main(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(root, sizeof root, "%s/test_pagestore.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return EXIT_FAILURE;
    }
    dbm_log_setup(0, getenv("PS_VERBOSE") ? DBM_LOG_DEBUG : DBM_LOG_ERR);
    static const struct {
        const char *name;
        void (*fn)(void);
    } tests[] = {
        { "history", test_history }, { "branch", test_branch },       { "gc", test_gc },
        { "torn", test_torn },       { "corrupt_sealed", test_corrupt_sealed }, { "corrupt_active", test_corrupt_active }, { "faults", test_faults },
        { "concurrent", test_concurrent },
        { "stream", test_stream },   { "stream_faults", test_stream_faults }, { "stream_crash", test_stream_crash },
        { "stream_concurrent", test_stream_concurrent }, { "stream_memory", test_stream_memory },
    };
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        tests[i].fn();
        clock_gettime(CLOCK_MONOTONIC, &b);
        fprintf(stderr, "test %s: %.2f s\n", tests[i].name,
                (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9);
    }
    rm_rf(root);
    return CHECK_DONE();
}
