/* pagestore_fixture.h - what test_pagestore.c and test_pgtxn.c share: the
 * in-memory oracle of a timeline's history (which write each page holds at
 * each txid) and the checks against it, helpers on the store's files,
 * injectable I/O faults, concurrent readers, and the test runner. Static
 * functions, included by each of the two test programs (one per executable). */
#ifndef DBM_PAGESTORE_FIXTURE_H
#define DBM_PAGESTORE_FIXTURE_H

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

/* A new store at root/name with one new root timeline, open in *t, its
 * directory in tdir (300 bytes), and an empty oracle for it. */
static struct dbm_store *store_with_tl(const char *name, uint64_t seg, uint64_t img, char *dir, char *tdir,
                                       uint64_t *id, struct dbm_timeline **t, struct oracle *o)
{
    struct dbm_store *s = store_new(name, seg, img, dir);
    CHECK_EQ_INT(dbm_tl_create(s, PS, 0, 0, id), 0);
    CHECK_EQ_INT(dbm_tl_open(s, *id, t), 0);
    tl_dir(tdir, 300, dir, *id);
    oracle_init(o, NULL, 0);
    return s;
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

/* ---- injected faults ---- */

/* The end of a fault test: the timeline still equals the oracle, and so it
 * does once the store is closed and opened again. Closes and frees all. */
static void finish_fault_test(struct dbm_store *s, const char *dir, uint64_t id, struct dbm_timeline *t,
                              struct oracle *o)
{
    struct dbm_tl_stat st;
    CHECK_EQ_INT(check_all(t, o, 1), 0);
    dbm_tl_close(t);
    s = store_reopen(s, dir, 16 * 1024, 1ull << 40);
    CHECK_EQ_INT(dbm_tl_open(s, id, &t), 0);
    CHECK_EQ_INT(dbm_tl_stat(t, &st), 0);
    CHECK_EQ_INT(st.last_txid, oracle_last(o));
    CHECK_EQ_INT(check_all(t, o, 1), 0);
    dbm_tl_close(t);
    dbm_store_close(s);
    oracle_free(o);
}

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

/* A store with one timeline, an oracle of ntx transactions (not yet
 * committed) and four readers checking the timeline while the test commits
 * them; committing starts as given (UINT64_MAX: no commit-order checks).
 * conc_finish stops the readers, checks what they and the test saw, and
 * frees it all. r must stay in place meanwhile (the readers point into it). */
struct conc_run {
    struct dbm_store *s;
    struct conc c;
    struct oracle o;
    pthread_t th[4];
    struct reader_arg ra[4];
};

static void conc_start(struct conc_run *r, const char *name, uint64_t *rng, int ntx, uint64_t committing,
                       uint64_t reader_seed)
{
    char dir[256];
    uint64_t id;
    memset(r, 0, sizeof *r);
    r->s = store_new(name, 32 * 1024, 128 * 1024, dir);
    CHECK_EQ_INT(dbm_tl_create(r->s, PS, 0, 0, &id), 0);
    r->c.committing = committing;
    CHECK_EQ_INT(dbm_tl_open(r->s, id, &r->c.t), 0);
    oracle_init(&r->o, NULL, 0);
    for (int i = 0; i < ntx; i++)
        oracle_gen(&r->o, rng);
    r->c.o = &r->o;
    for (int i = 0; i < 4; i++) {
        r->ra[i] = (struct reader_arg){ &r->c, reader_seed + (uint64_t)i };
        pthread_create(&r->th[i], NULL, reader, &r->ra[i]);
    }
}

/* bad: the test's own failures while committing. */
static void conc_finish(struct conc_run *r, int bad)
{
    __atomic_store_n(&r->c.stop, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < 4; i++)
        pthread_join(r->th[i], NULL);
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(r->c.bad, 0);
    CHECK(r->c.reads > 100);
    CHECK_EQ_INT(check_all(r->c.t, &r->o, 1), 0);
    dbm_tl_close(r->c.t);
    dbm_store_close(r->s);
    oracle_free(&r->o);
}

/* ---- the runner ---- */

struct fixture_test {
    const char *name;
    void (*fn)(void);
};

/* Runs tests[0..n) in a fresh temporary directory (root, named after prog),
 * timing each, then removes it. Returns main()'s exit status. */
static int fixture_main(const char *prog, const struct fixture_test *tests, size_t n)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(root, sizeof root, "%s/%s.XXXXXX", tmp && *tmp ? tmp : "/tmp", prog);
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return EXIT_FAILURE;
    }
    dbm_log_setup(0, getenv("PS_VERBOSE") ? DBM_LOG_DEBUG : DBM_LOG_ERR);
    for (size_t i = 0; i < n; i++) {
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

#endif
