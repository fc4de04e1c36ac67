/* test_pgtxn.c - streamed transactions (dbm_tl_txn_*) against the
 * in-memory oracle of pagestore_fixture.h: mixed with ordinary appends,
 * across reopen, images and gc; refusals and injected faults; crashes
 * mid-stream and torn streamed records; concurrent readers; memory bounded by
 * the batch. */
#include <sys/wait.h>

#include "pagestore_fixture.h"

/* ---- streaming helpers ---- */

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

/* ---- tests ---- */

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
    uint64_t id, rng = 4242;
    struct dbm_timeline *t;
    struct oracle o;
    int bad = 0, streamed = 0;
    struct dbm_store *s = store_with_tl("stream", 32 * 1024, 160 * 1024, dir, tdir, &id, &t, &o);
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
        dbm_tl_image_wait(t); /* every image that falls due gets written */
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
    finish_fault_test(s, dir, id, t, &o);
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
    uint64_t off = 0, coff; /* find_record sets off only if it finds the record */
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
    struct conc_run r;
    uint64_t rng = 77;
    conc_start(&r, "sconc", &rng, 300, 0, 300);
    struct oracle *o = &r.o;
    int bad = 0;
    uint8_t buf[PS];
    for (size_t i = 1; i < o->n; i++) {
        if (i % 2) {
            __atomic_store_n(&r.c.committing, o->base + i, __ATOMIC_RELEASE);
            bad += apply(r.c.t, o, i) != 0;
            continue;
        }
        struct swrite plan[600 + MAXP];
        size_t n = stream_plan(o, i, &rng, i % 50 ? 60 : 600, plan);
        struct dbm_tl_txn *x;
        bad += dbm_tl_txn_begin(r.c.t, &x) != 0;
        bad += stream_add(x, plan, n, &rng, 4) != 0;
        bad += dbm_tl_read_page(r.c.t, o->base + i, 1, buf) != -ERANGE;
        __atomic_store_n(&r.c.committing, o->base + i, __ATOMIC_RELEASE);
        bad += dbm_tl_txn_commit(x, o->ns[i], o->dbp[i], NULL) != 0;
    }
    conc_finish(&r, bad);
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
    static const struct fixture_test tests[] = {
        { "stream", test_stream },
        { "stream_faults", test_stream_faults },
        { "stream_crash", test_stream_crash },
        { "stream_concurrent", test_stream_concurrent },
        { "stream_memory", test_stream_memory },
    };
    return fixture_main("test_pgtxn", tests, sizeof tests / sizeof tests[0]);
}
