/* test_btcount.c - row counts from page notes against SQLite's own
 * count(*): databases made by the sqlite3 shell (page sizes 512 and 65536,
 * multi-level rowid and WITHOUT ROWID trees, overflow pages, free pages with
 * stale b-tree content, auto_vacuum pointer maps), fed in several batchings;
 * then damaged trees (cycles, children beyond the end, changed pages, read
 * errors), which must end in an error, never a loop or a wrong count. */
#include "btcount.h"
#include "check.h"
#include "shell.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static char dir[64];

struct db {
    unsigned char *data;
    size_t size;
    uint32_t page_size, npages;
    int read_err;          /* read_page fails with this when non-zero */
    unsigned char *patched; /* when set, read_page serves these bytes instead */
};

static void load(struct db *d, const char *name)
{
    char path[256];

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    memset(d, 0, sizeof(*d));
    d->data = slurp(path, &d->size);
    d->page_size = (uint32_t)(d->data[16] << 8 | d->data[17]);
    if (d->page_size == 1)
        d->page_size = 65536;
    d->npages = (uint32_t)(d->size / d->page_size);
}

static int read_page(void *arg, uint32_t pgno, void *buf)
{
    struct db *d = arg;

    if (d->read_err)
        return d->read_err;
    if (pgno == 0 || pgno > d->npages)
        return -EINVAL;
    memcpy(buf, (d->patched ? d->patched : d->data) + (size_t)(pgno - 1) * d->page_size, d->page_size);
    return 0;
}

/* Feeds every page of d in batches of `batch` pages (0: random sizes). */
static void feed(struct dbm_btcount *bc, const struct db *d, uint32_t batch)
{
    unsigned seed = 7;
    for (uint32_t p = 1; p <= d->npages;) {
        uint32_t n = batch ? batch : 1 + (seed = seed * 1103515245u + 12345u) % 37;
        if (n > d->npages - p + 1)
            n = d->npages - p + 1;
        dbm_btcount_feed(bc, p, d->data + (size_t)(p - 1) * d->page_size, (size_t)n * d->page_size);
        p += n;
    }
}

/* Every table of dir/name: the count from the notes equals SQLite's. */
static void check_db(const char *name, uint32_t batch, int min_tables)
{
    struct db d;
    struct dbm_btcount bc;
    char cmd[512], line[512];
    int tables = 0;

    load(&d, name);
    CHECK_EQ_INT(dbm_btcount_init(&bc, d.npages, d.page_size), 0);
    feed(&bc, &d, batch);
    void *buf = malloc(d.page_size);
    snprintf(cmd, sizeof(cmd),
             "sqlite3 -readonly %s/%s \"SELECT rootpage, '\\\"' || replace(name, '\\\"', '\\\"\\\"') || "
             "'\\\"' FROM sqlite_schema WHERE type = 'table' AND rootpage > 0\" | while IFS='|' read -r r n; do "
             "echo \"$r $(sqlite3 -readonly %s/%s \"SELECT count(*) FROM $n\")\"; done",
             dir, name, dir, name);
    FILE *f = popen(cmd, "r");
    while (f && fgets(line, sizeof(line), f)) {
        unsigned long root;
        unsigned long long want, got = ~0ull;
        if (sscanf(line, "%lu %llu", &root, &want) != 2)
            continue;
        tables++;
        uint64_t rows = 0;
        CHECK_EQ_INT(dbm_btcount_rows(&bc, (uint32_t)root, read_page, &d, buf, &rows), 0);
        got = rows;
        if (got != want)
            fprintf(stderr, "%s: root %lu: %llu rows, SQLite counts %llu\n", name, root, got, want);
        CHECK(got == want);
    }
    if (f)
        pclose(f);
    CHECK(tables >= min_tables);
    free(buf);
    dbm_btcount_free(&bc);
    free(d.data);
}

static void make_dbs(void)
{
    CHECK_EQ_INT(sh("sqlite3 %s/a.db \"PRAGMA page_size=512;"
                    "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);"
                    "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < 20000)"
                    " INSERT INTO t SELECT i, printf('value %%d', i) FROM c;"
                    "CREATE INDEX t_v ON t(v);"
                    "CREATE TABLE empty(x);"
                    "CREATE TABLE ov(b BLOB); INSERT INTO ov VALUES (randomblob(5000)), (randomblob(70000)), (1);"
                    "CREATE TABLE w(k TEXT PRIMARY KEY, n INT) WITHOUT ROWID;"
                    "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < 7000)"
                    " INSERT INTO w SELECT printf('key-%%06d', i), i FROM c;"
                    "CREATE TABLE gone(x); INSERT INTO gone SELECT v FROM t WHERE id <= 3000;"
                    "DELETE FROM t WHERE id %% 3 = 0; DROP TABLE gone;"
                    "CREATE TABLE \\\"odd \\\"\\\"name\\\"(a);INSERT INTO \\\"odd \\\"\\\"name\\\" VALUES (1),(2);\" ",
                    dir),
                 0);
    CHECK_EQ_INT(sh("sqlite3 %s/b.db \"PRAGMA page_size=65536; PRAGMA auto_vacuum=FULL;"
                    "CREATE TABLE small(k INTEGER PRIMARY KEY) WITHOUT ROWID;"
                    "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < 40000)"
                    " INSERT INTO small SELECT i FROM c;"
                    "CREATE TABLE r(x);"
                    "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < 50000)"
                    " INSERT INTO r SELECT i FROM c;"
                    "CREATE TABLE blobs(b); INSERT INTO blobs VALUES (randomblob(300000));"
                    "DELETE FROM r WHERE x > 100;\"",
                    dir),
                 0);
    CHECK_EQ_INT(sh("sqlite3 %s/c.db \"PRAGMA user_version=1;\"", dir), 0); /* no tables */
}

/* Damaged trees: an error, never a loop or a count. */
static void check_damage(void)
{
    struct db d;
    struct dbm_btcount bc;
    uint64_t rows = 12345;
    char root_s[32] = "";

    load(&d, "a.db");
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "sqlite3 -readonly %s/a.db \"SELECT rootpage FROM sqlite_schema WHERE name='t'\"",
             dir);
    FILE *f = popen(cmd, "r");
    if (!f || !fgets(root_s, sizeof(root_s), f))
        abort();
    pclose(f);
    uint32_t root = (uint32_t)strtoul(root_s, NULL, 10);
    void *buf = malloc(d.page_size);
    unsigned char *rp = d.data + (size_t)(root - 1) * d.page_size;
    CHECK(rp[0] == 5); /* t's root is an interior table page */

    CHECK_EQ_INT(dbm_btcount_init(&bc, d.npages, d.page_size), 0);
    feed(&bc, &d, 1);
    /* roots that are no tree */
    CHECK_EQ_INT(dbm_btcount_rows(&bc, 0, read_page, &d, buf, &rows), -EINVAL);
    CHECK_EQ_INT(dbm_btcount_rows(&bc, d.npages + 1, read_page, &d, buf, &rows), -EINVAL);
    CHECK_EQ_INT(dbm_btcount_rows(&bc, 1, read_page, &d, buf, &rows), 0); /* sqlite_schema's tree */
    /* a read error is the count's */
    d.read_err = -EIO;
    CHECK_EQ_INT(dbm_btcount_rows(&bc, root, read_page, &d, buf, &rows), -EIO);
    d.read_err = 0;
    /* the root's right-most child points back at the root: a cycle */
    unsigned char *copy = malloc(d.size);
    memcpy(copy, d.data, d.size);
    unsigned char *cp = copy + (size_t)(root - 1) * d.page_size;
    cp[8] = (unsigned char)(root >> 24), cp[9] = (unsigned char)(root >> 16);
    cp[10] = (unsigned char)(root >> 8), cp[11] = (unsigned char)root;
    d.patched = copy;
    CHECK_EQ_INT(dbm_btcount_rows(&bc, root, read_page, &d, buf, &rows), -EINVAL);
    /* ... or beyond the database */
    cp[8] = 0x7f;
    CHECK_EQ_INT(dbm_btcount_rows(&bc, root, read_page, &d, buf, &rows), -EINVAL);
    /* ... or a cell pointer beyond the page */
    memcpy(cp, rp, d.page_size);
    cp[12] = 0xff, cp[13] = 0xfe;
    CHECK_EQ_INT(dbm_btcount_rows(&bc, root, read_page, &d, buf, &rows), -EINVAL);
    /* a page that reads differently from what was noted */
    memcpy(cp, rp, d.page_size);
    cp[4] ^= 1;
    CHECK_EQ_INT(dbm_btcount_rows(&bc, root, read_page, &d, buf, &rows), -EINVAL);
    /* a child that is an index page in a table tree */
    memcpy(cp, rp, d.page_size);
    d.patched = NULL;
    dbm_btcount_free(&bc);
    memcpy(copy, d.data, d.size);
    CHECK_EQ_INT(dbm_btcount_init(&bc, d.npages, d.page_size), 0);
    /* the first child of the root: mark it as an index leaf in the notes */
    uint32_t ptr = (uint32_t)(rp[12] << 8 | rp[13]);
    uint32_t child = (uint32_t)rp[ptr] << 24 | (uint32_t)rp[ptr + 1] << 16 | (uint32_t)rp[ptr + 2] << 8 | rp[ptr + 3];
    unsigned char *ch = copy + (size_t)(child - 1) * d.page_size;
    if (ch[0] == 13)
        ch[0] = 10;
    else
        ch[0] = 2;
    unsigned char *orig = d.data;
    d.data = copy;
    feed(&bc, &d, 3);
    d.data = orig;
    d.patched = copy;
    CHECK_EQ_INT(dbm_btcount_rows(&bc, root, read_page, &d, buf, &rows), -EINVAL);
    d.patched = NULL;
    /* a page that is no b-tree page (zeros) as a child */
    memset(ch, 0, d.page_size);
    dbm_btcount_free(&bc);
    CHECK_EQ_INT(dbm_btcount_init(&bc, d.npages, d.page_size), 0);
    d.data = copy;
    feed(&bc, &d, 0);
    d.data = orig;
    rows = 12345;
    CHECK_EQ_INT(dbm_btcount_rows(&bc, root, read_page, &d, buf, &rows), -EINVAL);
    CHECK_EQ_INT(rows, 12345); /* untouched on failure */
    dbm_btcount_free(&bc);

    /* too many pages to note */
    CHECK_EQ_INT(dbm_btcount_init(&bc, DBM_BTCOUNT_MAX_PAGES + 1u, 4096), -E2BIG);
    dbm_btcount_free(&bc);
    free(copy);
    free(buf);
    free(d.data);
}

int main(void)
{
    snprintf(dir, sizeof(dir), "/tmp/test_btcount.XXXXXX");
    if (!mkdtemp(dir))
        return EXIT_FAILURE;
    make_dbs();
    for (uint32_t batch = 0; batch <= 64; batch = batch ? batch * 8 : 1) {
        check_db("a.db", batch, 5);
        check_db("b.db", batch, 3);
        check_db("c.db", batch, 0);
    }
    check_damage();
    if (!check_failures && !getenv("KEEP"))
        sh("rm -rf %s", dir);
    else
        fprintf(stderr, "kept %s\n", dir);
    return CHECK_DONE();
}
