/* test_snapview.c - SQLite over in-memory database images: row counts of
 * every kind of table (quoted names, sqlite_sequence, sqlite_stat1, WITHOUT
 * ROWID, FTS5 shadow tables; the virtual table itself skipped), a WAL-mode
 * database, 64 KiB pages, empty databases, integrity checks, page-read
 * failures (-EIO), garbage and truncated images (-EINVAL), and many threads
 * reading different images at once. The databases are built with the sqlite3
 * command-line shell, which also gives the expected counts. */
#include "check.h"
#include "dbimage.h"
#include "log.h"
#include "snapview.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static char tmpdir[64];

/* An image held in memory. fail_pgno: that page reads -EIO; fail_from: every
 * page from there on reads -EIO (0: none). */
struct mem_image {
    unsigned char *data;
    size_t size;
    uint32_t fail_pgno, fail_from;
};

static int mem_read_page(void *ctx, uint32_t pgno, void *buf)
{
    struct mem_image *m = ctx;
    size_t ps = m->size ? (size_t)(m->data[16] << 8 | m->data[17]) : 4096;
    if (ps == 1)
        ps = 65536;
    if ((m->fail_pgno && pgno == m->fail_pgno) || (m->fail_from && pgno >= m->fail_from))
        return -EIO;
    if (pgno == 0 || (uint64_t)pgno * ps > m->size)
        return -EIO; /* the reader asked past db_pages: a bug */
    memcpy(buf, m->data + (size_t)(pgno - 1) * ps, ps);
    return 0;
}

static void path_in(char *buf, size_t size, const char *name)
{
    snprintf(buf, size, "%s/%s", tmpdir, name);
}

/* Runs sql through the sqlite3 shell on db; output to out (or discarded). 0 on success. */
static int shell(const char *db, const char *sql, const char *out)
{
    char in[128], cmd[512];
    path_in(in, sizeof in, "in.sql");
    FILE *f = fopen(in, "w");
    if (!f)
        return -1;
    fputs(sql, f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "sqlite3 -batch '%s' < '%s' > '%s'", db, in, out ? out : "/dev/null");
    int rc = system(cmd);
    if (rc != 0)
        fprintf(stderr, "  shell failed (%d): %s\n", rc, sql);
    return rc;
}

/* SELECT count(*) of table name by the shell; -1 on failure. */
static long long shell_count(const char *db, const char *name)
{
    char sql[512], out[128], line[64];
    size_t k = (size_t)snprintf(sql, sizeof sql, "SELECT count(*) FROM \"");
    for (const char *p = name; *p && k < sizeof sql - 8; p++) {
        if (*p == '"')
            sql[k++] = '"';
        sql[k++] = *p;
    }
    snprintf(sql + k, sizeof sql - k, "\";\n");
    path_in(out, sizeof out, "out.txt");
    if (shell(db, sql, out) != 0)
        return -1;
    FILE *f = fopen(out, "r");
    long long v = -1;
    if (f && fgets(line, sizeof line, f))
        v = atoll(line);
    if (f)
        fclose(f);
    return v;
}

/* Loads the file at path as an image named name. 0 or -1. */
static int load_image(const char *path, struct mem_image *m, struct dbm_dbimage *img)
{
    FILE *f = fopen(path, "rb");
    memset(m, 0, sizeof *m);
    memset(img, 0, sizeof *img);
    if (!f)
        return -1;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    m->data = malloc(sz > 0 ? (size_t)sz : 1);
    m->size = (size_t)sz;
    if (!m->data || fread(m->data, 1, m->size, f) != m->size) {
        fclose(f);
        return -1;
    }
    fclose(f);
    uint32_t ps = m->size ? (uint32_t)(m->data[16] << 8 | m->data[17]) : 4096;
    img->page_size = ps == 1 ? 65536 : ps;
    img->db_pages = (uint32_t)(m->size / img->page_size);
    snprintf(img->name, sizeof img->name, "%s", strrchr(path, '/') + 1);
    img->txid = 42;
    img->read_page = mem_read_page;
    img->ctx = m;
    return 0;
}

/* Checks the counts of img against the expected names (memcmp order) and the
 * shell's count(*) on the file at path. */
static void check_counts(const struct dbm_dbimage *img, const char *path, const char *const *names, size_t nnames)
{
    struct dbm_table_count *v = NULL;
    size_t n = 99;
    CHECK_EQ_INT(dbm_snapview_table_counts(img, &v, &n), 0);
    CHECK_EQ_INT(n, nnames);
    for (size_t i = 0; i < n && i < nnames; i++) {
        if (strcmp(v[i].name, names[i]) != 0)
            fprintf(stderr, "  table %zu: got '%s', want '%s'\n", i, v[i].name, names[i]);
        CHECK(strcmp(v[i].name, names[i]) == 0);
        CHECK_EQ_INT(v[i].rows, shell_count(path, names[i]));
    }
    for (size_t i = 1; i < n; i++)
        CHECK(strcmp(v[i - 1].name, v[i].name) < 0);
    dbm_table_counts_free(v, n);
}

static const char MAIN_SQL[] =
    "CREATE TABLE b(x);\n"
    "CREATE TABLE B2(x);\n"
    "CREATE TABLE \"we\"\"ird name\"(x);\n"
    "CREATE TABLE auto(id INTEGER PRIMARY KEY AUTOINCREMENT, v);\n"
    "CREATE TABLE wr(k TEXT PRIMARY KEY, v) WITHOUT ROWID;\n"
    "CREATE INDEX wr_v ON wr(v);\n"
    "CREATE VIRTUAL TABLE ft USING fts5(body);\n"
    "CREATE TABLE \"\xc3\xa9t\xc3\xa9\"(x);\n"
    "CREATE TABLE big(id INTEGER PRIMARY KEY, pad);\n"
    "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 3000)\n"
    "  INSERT INTO big SELECT i, randomblob(300) FROM c;\n"
    "INSERT INTO big VALUES (5000, randomblob(20000));\n" /* overflow pages */
    "INSERT INTO b VALUES (1), (2), (3);\n"
    "INSERT INTO \"we\"\"ird name\" VALUES ('q');\n"
    "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 777)\n"
    "  INSERT INTO auto(v) SELECT hex(randomblob(8)) FROM c;\n"
    "DELETE FROM auto WHERE id % 7 = 0;\n"
    "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 1500)\n"
    "  INSERT INTO wr SELECT 'key' || i, i % 13 FROM c;\n"
    "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 400)\n"
    "  INSERT INTO ft SELECT 'word' || i || ' common text ' || (i % 17) FROM c;\n"
    "ANALYZE;\n";

/* memcmp order: upper case before lower case, UTF-8 last. */
static const char *const MAIN_TABLES[] = {
    "B2", "auto", "b", "big", "ft_config", "ft_content", "ft_data", "ft_docsize", "ft_idx",
    "sqlite_sequence", "sqlite_stat1", "we\"ird name", "wr", "\xc3\xa9t\xc3\xa9",
};
#define MAIN_NTABLES (sizeof MAIN_TABLES / sizeof MAIN_TABLES[0])

static const char *const ONE_TABLE[] = {"t"};

/* The images the tests share: built once in main(). */
enum { IMG_MAIN, IMG_WAL, IMG_64K, IMG_EMPTY0, IMG_EMPTY1, IMG_COUNT };
static struct mem_image mems[IMG_COUNT];
static struct dbm_dbimage imgs[IMG_COUNT];
static char paths[IMG_COUNT][128];

static int build_images(void)
{
    static const char *const files[IMG_COUNT] = {"main.db", "wal.db", "big64k.db", "empty0.db", "empty1.db"};
    static const char *const sql[IMG_COUNT] = {
        MAIN_SQL,
        "PRAGMA journal_mode=WAL;\nCREATE TABLE t(a, b);\n"
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 2500)\n"
        "  INSERT INTO t SELECT i, randomblob(50) FROM c;\nPRAGMA wal_checkpoint(TRUNCATE);\n",
        "PRAGMA page_size=65536;\nCREATE TABLE t(a, b);\n"
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 4000)\n"
        "  INSERT INTO t SELECT i, randomblob(100) FROM c;\n",
        NULL,
        "PRAGMA user_version=7;\n",
    };
    for (int i = 0; i < IMG_COUNT; i++) {
        path_in(paths[i], sizeof paths[i], files[i]);
        if (sql[i] && shell(paths[i], sql[i], NULL) != 0)
            return -1;
        if (!sql[i]) {
            FILE *f = fopen(paths[i], "w");
            if (!f)
                return -1;
            fclose(f);
        }
        if (load_image(paths[i], &mems[i], &imgs[i]) != 0)
            return -1;
    }
    return 0;
}

static void test_counts(void)
{
    check_counts(&imgs[IMG_MAIN], paths[IMG_MAIN], MAIN_TABLES, MAIN_NTABLES);

    /* The file still says WAL (bytes 18/19 = 2); the image reads as rollback. */
    CHECK_EQ_INT(mems[IMG_WAL].data[18], 2);
    CHECK_EQ_INT(mems[IMG_WAL].data[19], 2);
    check_counts(&imgs[IMG_WAL], paths[IMG_WAL], ONE_TABLE, 1);
    CHECK_EQ_INT(mems[IMG_WAL].data[18], 2); /* the image itself is untouched */

    CHECK_EQ_INT(imgs[IMG_64K].page_size, 65536);
    CHECK(imgs[IMG_64K].db_pages > 3);
    check_counts(&imgs[IMG_64K], paths[IMG_64K], ONE_TABLE, 1);

    CHECK_EQ_INT(imgs[IMG_EMPTY0].db_pages, 0);
    check_counts(&imgs[IMG_EMPTY0], paths[IMG_EMPTY0], NULL, 0);
    CHECK_EQ_INT(imgs[IMG_EMPTY1].db_pages, 1);
    check_counts(&imgs[IMG_EMPTY1], paths[IMG_EMPTY1], NULL, 0);
}

static void test_integrity(void)
{
    char msg[256];
    for (int i = 0; i < IMG_COUNT; i++) {
        strcpy(msg, "junk");
        CHECK_EQ_INT(dbm_snapview_integrity(&imgs[i], msg, sizeof msg), 0);
        CHECK_EQ_INT(msg[0], '\0');
    }
    CHECK_EQ_INT(dbm_snapview_integrity(&imgs[IMG_MAIN], NULL, 0), 0);

    /* A valid page with wrong content: the header's freelist count. */
    struct mem_image m = mems[IMG_MAIN];
    struct dbm_dbimage img = imgs[IMG_MAIN];
    m.data = malloc(m.size);
    memcpy(m.data, mems[IMG_MAIN].data, m.size);
    m.data[39] = 5;
    img.ctx = &m;
    CHECK_EQ_INT(dbm_snapview_integrity(&img, msg, sizeof msg), -EINVAL);
    CHECK(strstr(msg, "freelist") != NULL);
    CHECK(strchr(msg, '\n') == NULL); /* the first message only */
    CHECK_EQ_INT(dbm_snapview_integrity(&img, msg, 4), -EINVAL); /* truncated, terminated */
    CHECK_EQ_INT(strlen(msg), 3);
    free(m.data);
}

/* Runs both calls on a copy of image idx with the given failure settings. */
static void expect_error(int idx, uint32_t fail_pgno, uint32_t fail_from, int want)
{
    struct mem_image m = mems[idx];
    struct dbm_dbimage img = imgs[idx];
    struct dbm_table_count *v = (void *)&m;
    size_t n = 99;
    m.fail_pgno = fail_pgno;
    m.fail_from = fail_from;
    img.ctx = &m;
    CHECK_EQ_INT(dbm_snapview_table_counts(&img, &v, &n), want);
    CHECK(v == NULL);
    CHECK_EQ_INT(n, 0);
    CHECK_EQ_INT(dbm_snapview_integrity(&img, NULL, 0), want);
}

static void test_read_errors(void)
{
    expect_error(IMG_MAIN, 1, 0, -EIO);
    expect_error(IMG_MAIN, 0, 2, -EIO);
    expect_error(IMG_MAIN, imgs[IMG_MAIN].db_pages / 2, 0, -EIO); /* a leaf of big */
    expect_error(IMG_64K, 0, 2, -EIO);
    expect_error(IMG_WAL, 1, 0, -EIO);
}

static void test_invalid_images(void)
{
    struct mem_image m;
    struct dbm_dbimage img = imgs[IMG_MAIN];
    struct dbm_table_count *v = NULL;
    size_t n = 0;
    char msg[128];

    /* Garbage: random bytes. */
    m = (struct mem_image){.size = 4 * 4096};
    m.data = malloc(m.size);
    srand(7);
    for (size_t i = 0; i < m.size; i++)
        m.data[i] = (unsigned char)rand();
    m.data[16] = 0x10; /* mem_read_page's page size: 4096 */
    m.data[17] = 0;
    img.ctx = &m;
    img.page_size = 4096;
    img.db_pages = 4;
    CHECK_EQ_INT(dbm_snapview_table_counts(&img, &v, &n), -EINVAL);
    CHECK_EQ_INT(dbm_snapview_integrity(&img, msg, sizeof msg), -EINVAL);
    free(m.data);

    /* A real page 1, garbage after it. */
    m = mems[IMG_MAIN];
    m.data = malloc(m.size);
    memcpy(m.data, mems[IMG_MAIN].data, m.size);
    memset(m.data + imgs[IMG_MAIN].page_size, 0xa5, m.size - imgs[IMG_MAIN].page_size);
    img = imgs[IMG_MAIN];
    img.ctx = &m;
    CHECK_EQ_INT(dbm_snapview_table_counts(&img, &v, &n), -EINVAL);
    CHECK_EQ_INT(dbm_snapview_integrity(&img, msg, sizeof msg), -EINVAL);
    free(m.data);

    /* Truncated: fewer pages than the header says (reads past the end). */
    img = imgs[IMG_MAIN];
    img.db_pages /= 2;
    CHECK_EQ_INT(dbm_snapview_table_counts(&img, &v, &n), -EINVAL);
    CHECK_EQ_INT(dbm_snapview_integrity(&img, msg, sizeof msg), -EINVAL);

    /* A page size SQLite cannot have. */
    img = imgs[IMG_MAIN];
    img.page_size = 1000;
    CHECK_EQ_INT(dbm_snapview_table_counts(&img, &v, &n), -EINVAL);
    img.page_size = 0;
    CHECK_EQ_INT(dbm_snapview_integrity(&img, msg, sizeof msg), -EINVAL);
}

#define NTHREADS 8
#define ROUNDS 50

struct worker {
    struct dbm_dbimage img; /* this thread's own image */
    struct dbm_table_count *want;
    size_t nwant;
    int bad;
};

static void *worker_run(void *arg)
{
    struct worker *w = arg;
    for (int r = 0; r < ROUNDS; r++) {
        struct dbm_table_count *v = NULL;
        size_t n = 0;
        if (dbm_snapview_table_counts(&w->img, &v, &n) != 0 || n != w->nwant) {
            w->bad++;
        } else {
            for (size_t i = 0; i < n; i++)
                if (strcmp(v[i].name, w->want[i].name) != 0 || v[i].rows != w->want[i].rows)
                    w->bad++;
        }
        dbm_table_counts_free(v, n);
        if (r % 10 == 0 && dbm_snapview_integrity(&w->img, NULL, 0) != 0)
            w->bad++;
    }
    return NULL;
}

static void test_threads(void)
{
    struct worker w[NTHREADS];
    pthread_t th[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        w[i] = (struct worker){.img = imgs[i % IMG_COUNT]};
        CHECK_EQ_INT(dbm_snapview_table_counts(&w[i].img, &w[i].want, &w[i].nwant), 0);
    }
    for (int i = 0; i < NTHREADS; i++)
        CHECK_EQ_INT(pthread_create(&th[i], NULL, worker_run, &w[i]), 0);
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(th[i], NULL);
        CHECK_EQ_INT(w[i].bad, 0);
        dbm_table_counts_free(w[i].want, w[i].nwant);
    }
}

int main(void)
{
    char cmd[128];
    dbm_log_setup(0, DBM_LOG_ERR);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_snapview.XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return EXIT_FAILURE;
    }
    if (build_images() != 0) {
        fprintf(stderr, "cannot build the test databases with the sqlite3 shell\n");
        return EXIT_FAILURE;
    }
    test_counts();
    test_integrity();
    test_read_errors();
    test_invalid_images();
    test_threads();
    for (int i = 0; i < IMG_COUNT; i++)
        free(mems[i].data);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", tmpdir);
    return CHECK_DONE();
}
