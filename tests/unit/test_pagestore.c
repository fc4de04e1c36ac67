/* test_pagestore.c - the page store against an in-memory oracle: random
 * histories, time lookups, branches, retention, recovery from torn tails,
 * corruption, injected I/O faults, concurrent readers, images written in the
 * background. Streamed transactions are tested in test_pgtxn.c; the oracle
 * and helpers are in pagestore_fixture.h. */
#include "pagestore_fixture.h"

/* ---- tests ---- */

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
        dbm_tl_image_wait(t); /* every image that falls due gets written */
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

/* ---- injected faults (the rest are in pagestore_fixture.h) ---- */

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
    finish_fault_test(s, dir, id, t, &o);
}

/* ---- background images ---- */

/* A pwrite that holds image writes while the gate is closed (or fails them
 * with ENOSPC): the test decides when an image being written goes on. */
static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static int gate_closed, gate_held, gate_fail, gate_failed; /* under gate_mu */

static int is_image_fd(int fd)
{
    char link[64], path[512];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0)
        return 0;
    path[n] = 0;
    const char *base = strrchr(path, '/');
    return base && !strncmp(base + 1, "image.", 6);
}

static ssize_t gate_pwrite(int fd, const void *b, size_t n, off_t off)
{
    if (is_image_fd(fd)) {
        pthread_mutex_lock(&gate_mu);
        if (gate_fail) {
            gate_failed++;
            pthread_mutex_unlock(&gate_mu);
            errno = ENOSPC;
            return -1;
        }
        gate_held += gate_closed;
        pthread_cond_broadcast(&gate_cv);
        while (gate_closed)
            pthread_cond_wait(&gate_cv, &gate_mu);
        pthread_mutex_unlock(&gate_mu);
    }
    return pwrite(fd, b, n, off);
}

static void gate_set(int closed, int fail)
{
    pthread_mutex_lock(&gate_mu);
    gate_closed = closed;
    gate_fail = fail;
    gate_held = gate_failed = 0;
    pthread_cond_broadcast(&gate_cv);
    pthread_mutex_unlock(&gate_mu);
}

/* Waits (10 s at most) until an image write is held at the gate. 0 or -1. */
static int gate_wait_held(void)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 10;
    pthread_mutex_lock(&gate_mu);
    while (!gate_held && pthread_cond_timedwait(&gate_cv, &gate_mu, &dl) == 0)
        ;
    int rc = gate_held ? 0 : -1;
    pthread_mutex_unlock(&gate_mu);
    return rc;
}

static int gate_failures(void)
{
    pthread_mutex_lock(&gate_mu);
    int n = gate_failed;
    pthread_mutex_unlock(&gate_mu);
    return n;
}

static int bg_running(struct dbm_timeline *t)
{
    pthread_mutex_lock(&t->bg_mu);
    int r = t->bg_running;
    pthread_mutex_unlock(&t->bg_mu);
    return r;
}

/* Finished images and unfinished ones (*.tmp) in tdir. */
static void count_images(const char *tdir, int *done, int *tmp)
{
    DIR *d = opendir(tdir);
    struct dirent *de;
    *done = *tmp = 0;
    while (d && (de = readdir(d)))
        if (!strncmp(de->d_name, "image.", 6)) {
            int t = strstr(de->d_name, ".tmp") != NULL;
            *tmp += t;
            *done += !t;
        }
    if (d)
        closedir(d);
}

static void *close_tl(void *arg)
{
    dbm_tl_close(arg);
    return NULL;
}

/* The last close abandons an image being written: nothing is left of it. */
static void bg_image_close(struct dbm_store *s)
{
    enum { NP = 600 }; /* more than one batch of an image's writes */
    static uint8_t pages[NP][PS];
    struct dbm_page_write w[NP];
    uint64_t id;
    struct dbm_timeline *t;
    char tdir[300];
    int done, tmp;
    for (uint32_t p = 1; p <= NP; p++) {
        fill(pages[p - 1], p + 7777);
        w[p - 1] = (struct dbm_page_write){ .pgno = p, .data = pages[p - 1] };
    }
    CHECK_EQ_INT(dbm_tl_create(s, PS, 0, 0, &id), 0);
    CHECK_EQ_INT(dbm_tl_open(s, id, &t), 0);
    tl_dir(tdir, sizeof tdir, s->dir, id);
    gate_set(1, 0);
    CHECK_EQ_INT(dbm_tl_append(t, 5000, NP, w, NP, NULL), 0); /* makes an image due at once */
    CHECK_EQ_INT(gate_wait_held(), 0);
    pthread_t th;
    pthread_create(&th, NULL, close_tl, t);
    /* t stays allocated until the image thread, held at the gate, ends */
    while (!__atomic_load_n(&t->img_stop, __ATOMIC_RELAXED))
        usleep(1000);
    gate_set(0, 0);
    pthread_join(th, NULL);
    count_images(tdir, &done, &tmp);
    CHECK(done == 0 && tmp == 0);
    CHECK_EQ_INT(dbm_tl_open(s, id, &t), 0);
    uint8_t got[PS];
    int bad = 0;
    for (uint32_t p = 1; p <= NP; p++)
        bad += dbm_tl_read_page(t, 1, p, got) != 0 || memcmp(got, pages[p - 1], PS) != 0;
    CHECK_EQ_INT(bad, 0);
    dbm_tl_close(t);
}

/* Images are written by a thread of their own: commits and reads go on
 * while one is held up; a failed one leaves nothing and is not retried at
 * once; closing abandons one cleanly. */
static void test_bg_images(void)
{
    char dir[256], tdir[300];
    uint64_t id, rng = 99;
    struct dbm_timeline *t;
    struct oracle o;
    int bad = 0, done, tmp, i;
    struct dbm_store *s = store_with_tl("bgimg", 64 * 1024, 48 * 1024, dir, tdir, &id, &t, &o);
    gate_set(1, 0);
    dbm_sys.pwrite = gate_pwrite;
    for (i = 0; i < 1000 && !bg_running(t); i++) {
        oracle_gen(&o, &rng);
        bad += apply(t, &o, o.n - 1) != 0;
    }
    CHECK(bg_running(t));
    CHECK_EQ_INT(gate_wait_held(), 0);
    /* the image is held: commits and reads go on, and it is not there yet */
    for (i = 0; i < 100; i++) {
        oracle_gen(&o, &rng);
        bad += apply(t, &o, o.n - 1) != 0;
    }
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(check_all(t, &o, 1), 0);
    count_images(tdir, &done, &tmp);
    CHECK(done == 0 && tmp == 1 && bg_running(t));
    gate_set(0, 0);
    dbm_tl_image_wait(t);
    count_images(tdir, &done, &tmp);
    CHECK(done == 1 && tmp == 0);
    CHECK_EQ_INT(check_all(t, &o, 1), 0);

    /* the log after that image makes the next one due */
    for (i = 0; i < 1000 && done < 2; i++) {
        oracle_gen(&o, &rng);
        bad += apply(t, &o, o.n - 1) != 0;
        dbm_tl_image_wait(t);
        count_images(tdir, &done, &tmp);
    }
    CHECK(done == 2 && tmp == 0);

    /* a failed image: every commit stands, nothing is left, no retry at once */
    gate_set(0, 1);
    for (i = 0; i < 1000 && !gate_failures(); i++) {
        oracle_gen(&o, &rng);
        bad += apply(t, &o, o.n - 1) != 0;
        dbm_tl_image_wait(t);
    }
    CHECK_EQ_INT(gate_failures(), 1);
    for (i = 0; i < 200; i++) {
        oracle_gen(&o, &rng);
        bad += apply(t, &o, o.n - 1) != 0;
        dbm_tl_image_wait(t);
    }
    CHECK_EQ_INT(gate_failures(), 1);
    CHECK_EQ_INT(bad, 0);
    count_images(tdir, &done, &tmp);
    CHECK(done == 2 && tmp == 0);
    CHECK_EQ_INT(check_all(t, &o, 1), 0);
    gate_set(0, 0);
    dbm_tl_close(t);

    bg_image_close(s);
    dbm_sysio_reset();
    s = store_reopen(s, dir, 64 * 1024, 48 * 1024);
    CHECK_EQ_INT(dbm_tl_open(s, id, &t), 0);
    CHECK_EQ_INT(check_all(t, &o, 1), 0);
    dbm_tl_close(t);
    dbm_store_close(s);
    oracle_free(&o);
}

static void test_concurrent(void)
{
    struct conc_run r;
    uint64_t rng = 2024;
    conc_start(&r, "conc", &rng, 800, UINT64_MAX, 100);
    int bad = 0;
    for (size_t i = 1; i < r.o.n; i++)
        bad += apply(r.c.t, &r.o, i) != 0;
    conc_finish(&r, bad);
}

int main(void)
{
    static const struct fixture_test tests[] = {
        { "history", test_history },
        { "branch", test_branch },
        { "gc", test_gc },
        { "torn", test_torn },
        { "corrupt_sealed", test_corrupt_sealed },
        { "corrupt_active", test_corrupt_active },
        { "faults", test_faults },
        { "concurrent", test_concurrent },
        { "bg_images", test_bg_images },
    };
    return fixture_main("test_pagestore", tests, sizeof tests / sizeof tests[0]);
}
