/* test_sqlproto.c - the SQLite file decoders, on synthetic buffers and on
 * real files made by the sqlite3 command-line shell in a temporary directory
 * (WAL copied while the connection still has it, journals copied in the
 * middle of a transaction with ".shell cp"). */
#include "check.h"
#include "sqlproto.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[] = "/tmp/dbm_test_sqlproto.XXXXXX";

static void put_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static uint32_t get_be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* The WAL checksum written from the document, word by word, independently
 * of sqlproto.c: big-endian words if big_endian, little-endian otherwise. */
static void ref_wal_cksum(int big_endian, const unsigned char *p, size_t n, uint32_t s[2])
{
    for (size_t i = 0; i < n; i += 8) {
        uint32_t x[2];
        for (int k = 0; k < 2; k++) {
            const unsigned char *w = p + i + 4 * k;
            x[k] = big_endian ? get_be32(w)
                              : (uint32_t)w[3] << 24 | (uint32_t)w[2] << 16 |
                                    (uint32_t)w[1] << 8 | w[0];
        }
        s[0] += x[0] + s[1];
        s[1] += x[1] + s[0];
    }
}

/* ---- helpers for real files ---- */

static char *path_of(const char *name)
{
    static char buf[4][256];
    static int next;
    char *p = buf[next++ & 3];

    snprintf(p, sizeof(buf[0]), "%s/%s", tmpdir, name);
    return p;
}

/* Runs the sqlite3 shell on db with a script (printf format, %s of the
 * script may use "@" for the temporary directory). Returns the exit status. */
static int run_sql(const char *db, const char *fmt, ...)
{
    char script[4096], expanded[8192], cmd[1024];
    va_list ap;
    size_t o = 0;
    FILE *f;

    va_start(ap, fmt);
    vsnprintf(script, sizeof(script), fmt, ap);
    va_end(ap);
    for (const char *s = script; *s && o + 256 < sizeof(expanded); s++) {
        if (*s == '@')
            o += (size_t)snprintf(expanded + o, sizeof(expanded) - o, "%s", tmpdir);
        else
            expanded[o++] = *s;
    }
    expanded[o] = '\0';
    f = fopen(path_of("script.sql"), "w");
    if (!f)
        return -1;
    fputs(expanded, f);
    fclose(f);
    snprintf(cmd, sizeof(cmd), "sqlite3 -batch %s < %s/script.sql > %s/out.txt 2>&1",
             path_of(db), tmpdir, tmpdir);
    int rc = system(cmd);
    if (rc != 0) {
        snprintf(cmd, sizeof(cmd), "cat %s/out.txt >&2", tmpdir);
        if (system(cmd) != 0)
            fprintf(stderr, "(no output)\n");
    }
    return rc;
}

/* Reads a whole file into a new buffer (caller frees); NULL if absent. */
static unsigned char *slurp(const char *name, size_t *len)
{
    FILE *f = fopen(path_of(name), "rb");
    struct stat st;
    unsigned char *buf;

    *len = 0;
    if (!f)
        return NULL;
    if (fstat(fileno(f), &st) != 0 || !(buf = malloc((size_t)st.st_size + 1))) {
        fclose(f);
        return NULL;
    }
    *len = fread(buf, 1, (size_t)st.st_size, f);
    fclose(f);
    return buf;
}

/* The first integer in a file written by ".once" (-1 if none). */
static long read_num(const char *name)
{
    FILE *f = fopen(path_of(name), "r");
    long v = -1;

    if (f) {
        if (fscanf(f, "%ld", &v) != 1)
            v = -1;
        fclose(f);
    }
    return v;
}

/* ---- synthetic ---- */

static void make_dbhdr(unsigned char *h, unsigned ps_field)
{
    memset(h, 0, 100);
    memcpy(h, "SQLite format 3", 16);
    h[16] = (unsigned char)(ps_field >> 8);
    h[17] = (unsigned char)ps_field;
    h[18] = h[19] = 1;
    h[21] = 64;
    h[22] = h[23] = 32;
    put_be32(h + 24, 7);
    put_be32(h + 28, 42);
    put_be32(h + 92, 7);
}

static void test_dbhdr_synthetic(void)
{
    unsigned char h[100];
    struct dbm_dbhdr d;

    make_dbhdr(h, 4096);
    CHECK_EQ_INT(dbm_dbhdr_parse(h, 100, &d), 0);
    CHECK_EQ_INT(d.page_size, 4096);
    CHECK_EQ_INT(d.write_version, 1);
    CHECK_EQ_INT(d.change_counter, 7);
    CHECK_EQ_INT(d.db_pages, 42);
    CHECK_EQ_INT(d.version_valid, 7);
    CHECK_EQ_INT(dbm_dbhdr_parse(h, 99, &d), -EINVAL);
    make_dbhdr(h, 1);
    CHECK_EQ_INT(dbm_dbhdr_parse(h, 100, &d), 0);
    CHECK_EQ_INT(d.page_size, 65536);
    make_dbhdr(h, 256);
    CHECK_EQ_INT(dbm_dbhdr_parse(h, 100, &d), -EINVAL);
    CHECK_EQ_INT(d.page_size, 0);
    make_dbhdr(h, 3072);
    CHECK_EQ_INT(dbm_dbhdr_parse(h, 100, &d), -EINVAL);
    make_dbhdr(h, 4096);
    h[15] = 'x';
    CHECK_EQ_INT(dbm_dbhdr_parse(h, 100, &d), -EINVAL);
    make_dbhdr(h, 4096);
    h[18] = 3;
    CHECK_EQ_INT(dbm_dbhdr_parse(h, 100, &d), -EINVAL);
}

static void test_lock_page(void)
{
    CHECK_EQ_INT(dbm_lock_page(512), 2097153);
    CHECK_EQ_INT(dbm_lock_page(4096), 262145);
    CHECK_EQ_INT(dbm_lock_page(65536), 16385);
    /* The page really covers the pending byte. */
    for (uint32_t ps = 512; ps <= 65536; ps *= 2) {
        uint64_t first = (uint64_t)(dbm_lock_page(ps) - 1) * ps;
        CHECK(first <= DBM_PENDING_BYTE && DBM_PENDING_BYTE < first + ps);
    }
}

static void test_classify(void)
{
    static const struct {
        const char *name;
        enum dbm_sqlfile kind;
        const char *base;
    } cases[] = {
        { "erp.db", DBM_SQLFILE_DB, "erp.db" },
        { "erp.db-journal", DBM_SQLFILE_JOURNAL, "erp.db" },
        { "erp.db-wal", DBM_SQLFILE_WAL, "erp.db" },
        { "erp.db-shm", DBM_SQLFILE_SHM, "erp.db" },
        { "erp.db-mj4A3F0C9E1", DBM_SQLFILE_SUPER, "erp.db" },
        { "a_b-c.2024.db-mj0000009FF", DBM_SQLFILE_SUPER, "a_b-c.2024.db" },
        { "x.db-wal.db", DBM_SQLFILE_DB, "x.db-wal.db" },
        { "x.db.db-wal", DBM_SQLFILE_WAL, "x.db.db" },
        { "a.db", DBM_SQLFILE_DB, "a.db" },
        { "erp.db-mj4a3f0c9e1", DBM_SQLFILE_NONE, NULL },   /* SQLite writes upper case */
        { "erp.db-mj4A3F0C8E1", DBM_SQLFILE_NONE, NULL },   /* '9' is fixed */
        { "erp.db-mj4A3F0C9E", DBM_SQLFILE_NONE, NULL },
        { "erp.db-mj4A3F0C9E12", DBM_SQLFILE_NONE, NULL },
        { "erp.db-mjXA3F0C9E1", DBM_SQLFILE_NONE, NULL },
        { ".db", DBM_SQLFILE_NONE, NULL },
        { ".x.db", DBM_SQLFILE_NONE, NULL },
        { ".db-wal", DBM_SQLFILE_NONE, NULL },
        { "db", DBM_SQLFILE_NONE, NULL },
        { "erp.DB", DBM_SQLFILE_NONE, NULL },
        { "erp.sqlite", DBM_SQLFILE_NONE, NULL },
        { "erp.db-", DBM_SQLFILE_NONE, NULL },
        { "erp.db-tmp", DBM_SQLFILE_NONE, NULL },
        { "erp.db-journal2", DBM_SQLFILE_NONE, NULL },
        { "e rp.db", DBM_SQLFILE_NONE, NULL },
        { "erp/x.db", DBM_SQLFILE_NONE, NULL },
        { "", DBM_SQLFILE_NONE, NULL },
        { "-journal", DBM_SQLFILE_NONE, NULL },
    };
    char base[80], name[128];

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        memset(base, 'Z', sizeof(base));
        enum dbm_sqlfile k = dbm_sqlfile_classify(cases[i].name, base, sizeof(base));
        if (k != cases[i].kind)
            fprintf(stderr, "classify(\"%s\") = %d\n", cases[i].name, (int)k);
        CHECK_EQ_INT(k, cases[i].kind);
        if (cases[i].base)
            CHECK(strcmp(base, cases[i].base) == 0);
    }
    /* Length limit: 64 is the longest base. */
    memset(name, 'a', 61);
    strcpy(name + 61, ".db-wal");
    CHECK_EQ_INT(dbm_sqlfile_classify(name, base, sizeof(base)), DBM_SQLFILE_WAL);
    CHECK_EQ_INT(strlen(base), 64);
    CHECK_EQ_INT(dbm_sqlfile_classify(name, base, 64), DBM_SQLFILE_NONE); /* no room */
    CHECK_EQ_INT(dbm_sqlfile_classify(name, NULL, 0), DBM_SQLFILE_WAL);
    memset(name, 'a', 62);
    strcpy(name + 62, ".db");
    CHECK_EQ_INT(dbm_sqlfile_classify(name, base, sizeof(base)), DBM_SQLFILE_NONE);
}

static void test_jhdr_synthetic(void)
{
    static const unsigned char magic[8] = { 0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7 };
    unsigned char h[512] = { 0 };
    struct dbm_jhdr j;

    CHECK_EQ_INT(dbm_jhdr_parse(h, 27, &j), -EINVAL);
    CHECK_EQ_INT(dbm_jhdr_parse(h, 28, &j), 0);         /* PERSIST commit */
    memcpy(h, magic, 8);
    put_be32(h + 8, 0);                                   /* legal: rewritten later */
    put_be32(h + 12, 0xdeadbeef);
    put_be32(h + 16, 9);
    put_be32(h + 20, 512);
    put_be32(h + 24, 65536);
    CHECK_EQ_INT(dbm_jhdr_parse(h, 28, &j), 1);
    CHECK_EQ_INT(j.nrec, 0);
    CHECK_EQ_INT(j.nonce, 0xdeadbeef);
    CHECK_EQ_INT(j.orig_pages, 9);
    CHECK_EQ_INT(j.sector_size, 512);
    CHECK_EQ_INT(j.page_size, 65536);
    put_be32(h + 24, 1000);
    CHECK_EQ_INT(dbm_jhdr_parse(h, 28, &j), -EINVAL);
    put_be32(h + 24, 4096);
    put_be32(h + 20, 16);
    CHECK_EQ_INT(dbm_jhdr_parse(h, 28, &j), -EINVAL);
    put_be32(h + 20, 512);
    h[7] ^= 1;
    CHECK_EQ_INT(dbm_jhdr_parse(h, 28, &j), -EINVAL);
    /* Magic and nrec zero, fields set: SQLite's not-yet-synced header. */
    memset(h, 0, 12);
    CHECK_EQ_INT(dbm_jhdr_parse(h, 28, &j), 0);
    CHECK_EQ_INT(j.page_size, 4096);
}

/* The tail SQLite's writeSuperJournal() leaves: name length, checksum, magic. */
static void test_journal_super_tail(void)
{
    static const unsigned char magic[8] = { 0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7 };
    unsigned char t[16] = { 0 };
    CHECK(dbm_journal_magic(magic));
    CHECK(!dbm_journal_magic(t));
    put_be32(t, 30);
    memcpy(t + 8, magic, 8);
    CHECK_EQ_INT(dbm_journal_names_super(t, 4096 + 50), 1);
    CHECK_EQ_INT(dbm_journal_names_super(t, 49), 0);  /* shorter than the record it claims */
    put_be32(t, 0);
    CHECK_EQ_INT(dbm_journal_names_super(t, 4096), 0); /* no name */
    put_be32(t, 30);
    t[15] ^= 1;
    CHECK_EQ_INT(dbm_journal_names_super(t, 4096), 0); /* not the magic: page data */
}

/* A WAL with big-endian checksums (magic ...83), as a big-endian host
 * writes it: header + 2 frames of 512 bytes, checksums from the reference. */
static void test_wal_synthetic_be(void)
{
    enum { PS = 512, FR = DBM_WAL_FRAME_HDR_SIZE + PS };
    unsigned char w[DBM_WAL_HDR_SIZE + 2 * FR];
    uint32_t s[2] = { 0, 0 };
    struct dbm_walhdr h;
    struct dbm_walck ck;
    struct dbm_walframe f;

    for (size_t i = 0; i < sizeof(w); i++)
        w[i] = (unsigned char)(i * 7 + 3);
    put_be32(w, 0x377f0683);
    put_be32(w + 4, 3007000);
    put_be32(w + 8, PS);
    put_be32(w + 12, 5);
    ref_wal_cksum(1, w, 24, s);
    put_be32(w + 24, s[0]);
    put_be32(w + 28, s[1]);
    for (int i = 0; i < 2; i++) {
        unsigned char *fh = w + DBM_WAL_HDR_SIZE + i * FR;
        put_be32(fh, (uint32_t)i + 1);
        put_be32(fh + 4, i == 1 ? 2 : 0);
        memcpy(fh + 8, w + 16, 8);
        ref_wal_cksum(1, fh, 8, s);
        ref_wal_cksum(1, fh + 24, PS, s);
        put_be32(fh + 16, s[0]);
        put_be32(fh + 20, s[1]);
    }
    CHECK_EQ_INT(dbm_walhdr_parse(w, sizeof(w), &h), 0);
    CHECK_EQ_INT(h.big_endian_cksum, 1);
    CHECK_EQ_INT(h.ckpt_seq, 5);
    dbm_walck_init(&ck, &h);
    CHECK_EQ_INT(dbm_walframe_check(w + 32, PS, &h, &ck, &f), 0);
    CHECK_EQ_INT(f.pgno, 1);
    CHECK_EQ_INT(f.commit_pages, 0);
    CHECK_EQ_INT(dbm_walframe_check(w + 32 + FR, PS, &h, &ck, &f), 0);
    CHECK_EQ_INT(f.commit_pages, 2);
    CHECK_EQ_INT(ck.s1, s[0]);
    CHECK_EQ_INT(ck.s2, s[1]);
    CHECK_EQ_INT(dbm_walhdr_parse(w, 31, &h), -EINVAL);
    w[3] = 0x82; /* same bytes read as little-endian words: checksum fails */
    CHECK_EQ_INT(dbm_walhdr_parse(w, sizeof(w), &h), -EINVAL);
}

/* ---- real files ---- */

struct walscan {
    struct dbm_walhdr h;
    unsigned frames;      /* whole frames in the file */
    unsigned valid;       /* frames before the first that fails the chain */
    unsigned commits;     /* commit frames among the valid ones */
    uint32_t last_commit_pages;
    unsigned last_commit; /* index + 1 of the last valid commit frame */
};

/* Walks a WAL image frame by frame as a reader would. -1 if no valid header. */
static int wal_scan(const unsigned char *w, size_t len, struct walscan *r)
{
    struct dbm_walck ck;
    struct dbm_walframe f;

    memset(r, 0, sizeof(*r));
    if (dbm_walhdr_parse(w, len, &r->h) != 0)
        return -1;
    dbm_walck_init(&ck, &r->h);
    uint64_t fsz = DBM_WAL_FRAME_HDR_SIZE + r->h.page_size;
    r->frames = (unsigned)((len - DBM_WAL_HDR_SIZE) / fsz);
    for (unsigned i = 0; i < r->frames; i++) {
        CHECK_EQ_INT(dbm_wal_frame_off(r->h.page_size, i), DBM_WAL_HDR_SIZE + i * fsz);
        if (dbm_walframe_check(w + dbm_wal_frame_off(r->h.page_size, i), r->h.page_size,
                               &r->h, &ck, &f) != 0)
            break;
        r->valid++;
        if (f.commit_pages) {
            r->commits++;
            r->last_commit_pages = f.commit_pages;
            r->last_commit = i + 1;
        }
    }
    return 0;
}

/* Re-signs a WAL image with big-endian checksums (magic 0x377f0683), the way
 * a big-endian host would have written it; reference checksum only. */
static void wal_resign_be(unsigned char *w, size_t len, uint32_t page_size)
{
    uint32_t s[2] = { 0, 0 };
    size_t fsz = DBM_WAL_FRAME_HDR_SIZE + page_size;

    put_be32(w, 0x377f0683);
    ref_wal_cksum(1, w, 24, s);
    put_be32(w + 24, s[0]);
    put_be32(w + 28, s[1]);
    for (size_t off = DBM_WAL_HDR_SIZE; off + fsz <= len; off += fsz) {
        ref_wal_cksum(1, w + off, 8, s);
        ref_wal_cksum(1, w + off + DBM_WAL_FRAME_HDR_SIZE, page_size, s);
        put_be32(w + off + 16, s[0]);
        put_be32(w + off + 20, s[1]);
    }
}

static int write_file(const char *name, const void *buf, size_t len)
{
    FILE *f = fopen(path_of(name), "wb");
    int ok;

    if (!f)
        return -1;
    ok = fwrite(buf, 1, len, f) == len;
    return (fclose(f) == 0 && ok) ? 0 : -1;
}

/* One flipped bit in a page, or in a salt, ends the chain right there; one
 * in the header invalidates the header. Leaves w as it found it. */
static void check_wal_corruption(unsigned char *w, size_t len, const struct walscan *r)
{
    unsigned k = r->frames / 2;
    size_t off = (size_t)dbm_wal_frame_off(4096, k);
    struct walscan r2;

    w[off + DBM_WAL_FRAME_HDR_SIZE + 1000] ^= 0x10;
    CHECK_EQ_INT(wal_scan(w, len, &r2), 0);
    CHECK_EQ_INT(r2.valid, k);
    w[off + DBM_WAL_FRAME_HDR_SIZE + 1000] ^= 0x10;
    w[off + 9] ^= 1;
    CHECK_EQ_INT(wal_scan(w, len, &r2), 0);
    CHECK_EQ_INT(r2.valid, k);
    w[off + 9] ^= 1;
    w[13] ^= 1; /* checkpoint sequence: covered by the header checksum */
    CHECK_EQ_INT(wal_scan(w, len, &r2), -1);
    w[13] ^= 1;
}

/* The same WAL signed with big-endian checksums: we accept it, and so does
 * SQLite, which finds the rows that exist only in the WAL. Rewrites w. */
static void check_wal_big_endian(unsigned char *w, size_t len, const unsigned char *db,
                                 size_t dblen, const struct walscan *r)
{
    struct walscan r2;

    wal_resign_be(w, len, 4096);
    CHECK_EQ_INT(wal_scan(w, len, &r2), 0);
    CHECK_EQ_INT(r2.h.big_endian_cksum, 1);
    CHECK_EQ_INT(r2.valid, r->frames);
    CHECK_EQ_INT(r2.commits, 6);
    CHECK_EQ_INT(write_file("be.db", db, dblen), 0);
    CHECK_EQ_INT(write_file("be.db-wal", w, len), 0);
    CHECK_EQ_INT(run_sql("be.db", ".once @/rows_be.txt\nSELECT count(*) FROM t;\n"), 0);
    CHECK_EQ_INT(read_num("rows_be.txt"), read_num("rows.txt"));
    CHECK(read_num("rows.txt") == 45);
}

/* Six write transactions in WAL mode, the WAL copied before the shell
 * closes (closing checkpoints and deletes it). */
static void test_real_wal(void)
{
    struct walscan r;
    size_t len, dblen;
    unsigned char *w, *db;

    CHECK_EQ_INT(run_sql("w.db", "PRAGMA journal_mode=WAL;\n"
                                 "PRAGMA wal_autocheckpoint=0;\n"
                                 "CREATE TABLE t(id INTEGER PRIMARY KEY, x);\n"
                                 "INSERT INTO t(x) SELECT randomblob(300) FROM generate_series(1,40);\n"
                                 "INSERT INTO t(x) SELECT randomblob(3000) FROM generate_series(1,10);\n"
                                 "UPDATE t SET x=randomblob(100) WHERE id%%3=0;\n"
                                 "BEGIN; INSERT INTO t(x) VALUES(1); INSERT INTO t(x) VALUES(2); COMMIT;\n"
                                 "DELETE FROM t WHERE id > 45;\n"
                                 ".shell cp @/w.db-wal @/w.wal; cp @/w.db @/w.dbcopy\n"
                                 ".once @/pages.txt\nPRAGMA page_count;\n"
                                 ".once @/rows.txt\nSELECT count(*) FROM t;\n"),
                 0);
    w = slurp("w.wal", &len);
    db = slurp("w.dbcopy", &dblen);
    CHECK(w != NULL && db != NULL);
    if (!w || !db)
        goto out;
    CHECK_EQ_INT(wal_scan(w, len, &r), 0);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    CHECK_EQ_INT(r.h.magic, 0x377f0682); /* SQLite signs in the host's order */
#endif
    CHECK_EQ_INT(r.h.page_size, 4096);
    CHECK_EQ_INT((len - DBM_WAL_HDR_SIZE) % (DBM_WAL_FRAME_HDR_SIZE + 4096), 0);
    CHECK(r.frames > 6);
    CHECK_EQ_INT(r.valid, r.frames);
    CHECK_EQ_INT(r.commits, 6);
    CHECK_EQ_INT(r.last_commit, r.frames);
    CHECK_EQ_INT(r.last_commit_pages, read_num("pages.txt"));

    /* The database file itself says WAL (versions 2). */
    struct dbm_dbhdr d;
    CHECK_EQ_INT(dbm_dbhdr_parse(db, dblen, &d), 0);
    CHECK_EQ_INT(d.write_version, 2);
    CHECK_EQ_INT(d.read_version, 2);

    check_wal_corruption(w, len, &r);
    check_wal_big_endian(w, len, db, dblen, &r);
out:
    free(w);
    free(db);
}

/* After a RESTART checkpoint the next writer starts again at frame 0 with
 * salt-1 + 1 and a new salt-2; the older frames behind the new ones stay in
 * the file and must fail the check. */
static void test_real_wal_restart(void)
{
    struct walscan r1, r2;
    size_t len1, len2;
    unsigned char *w1, *w2;

    CHECK_EQ_INT(run_sql("r.db", "PRAGMA journal_mode=WAL;\n"
                                 "PRAGMA wal_autocheckpoint=0;\n"
                                 "CREATE TABLE t(x);\n"
                                 "INSERT INTO t SELECT randomblob(2000) FROM generate_series(1,30);\n"
                                 ".shell cp @/r.db-wal @/r1.wal\n"
                                 "PRAGMA wal_checkpoint(RESTART);\n"
                                 "INSERT INTO t VALUES(1);\n"
                                 ".shell cp @/r.db-wal @/r2.wal\n"),
                 0);
    w1 = slurp("r1.wal", &len1);
    w2 = slurp("r2.wal", &len2);
    CHECK(w1 != NULL && w2 != NULL);
    if (!w1 || !w2)
        goto out;
    CHECK_EQ_INT(wal_scan(w1, len1, &r1), 0);
    CHECK_EQ_INT(wal_scan(w2, len2, &r2), 0);
    CHECK_EQ_INT(r1.valid, r1.frames);
    CHECK_EQ_INT(r1.commits, 2);
    CHECK_EQ_INT(len2, len1);                      /* not truncated */
    CHECK_EQ_INT(r2.h.ckpt_seq, r1.h.ckpt_seq + 1);
    CHECK_EQ_INT(r2.h.salt1, r1.h.salt1 + 1);
    CHECK(r2.h.salt2 != r1.h.salt2);
    CHECK(r2.valid >= 1 && r2.valid < r2.frames);
    CHECK_EQ_INT(r2.commits, 1);
    CHECK_EQ_INT(r2.last_commit, r2.valid);
    /* The first stale frame is byte-identical to the old generation's. */
    size_t off = (size_t)dbm_wal_frame_off(r2.h.page_size, r2.valid);
    CHECK(memcmp(w1 + off, w2 + off, DBM_WAL_FRAME_HDR_SIZE + r2.h.page_size) == 0);
out:
    free(w1);
    free(w2);
}

/* A transaction bigger than the page cache spills frames to the WAL; pages
 * written again in the same transaction overwrite their frame in place and
 * SQLite rewrites the checksums of all frames after the first overwritten
 * one at commit. The chain must hold over the result. */
static void test_real_wal_spill(void)
{
    struct walscan r;
    size_t len;
    unsigned char *w;

    CHECK_EQ_INT(run_sql("s.db", "PRAGMA journal_mode=WAL;\n"
                                 "PRAGMA wal_autocheckpoint=0;\n"
                                 "PRAGMA cache_size=2;\n"
                                 "CREATE TABLE t(x);\n"
                                 "BEGIN;\n"
                                 "INSERT INTO t SELECT randomblob(1000) FROM generate_series(1,100);\n"
                                 "UPDATE t SET x=randomblob(1000);\n"
                                 "UPDATE t SET x=randomblob(1000);\n"
                                 "COMMIT;\n"
                                 ".shell cp @/s.db-wal @/s.wal\n"
                                 ".once @/pages.txt\nPRAGMA page_count;\n"),
                 0);
    w = slurp("s.wal", &len);
    CHECK(w != NULL);
    if (!w)
        return;
    long pages = read_num("pages.txt");
    CHECK_EQ_INT(wal_scan(w, len, &r), 0);
    CHECK_EQ_INT(r.valid, r.frames);
    CHECK_EQ_INT(r.commits, 2);
    CHECK_EQ_INT(r.last_commit_pages, pages);
    /* Three passes over ~30 pages, yet about one frame per page. */
    CHECK(pages > 20 && r.frames < 2 * (unsigned)pages);
    free(w);
}

/* SQLite's checksum of a journal page record, seeded by the header nonce. */
static uint32_t journal_record_cksum(uint32_t nonce, const unsigned char *page, uint32_t ps)
{
    uint32_t c = nonce;

    for (int i = (int)ps - 200; i > 0; i -= 200)
        c += page[i];
    return c;
}

/* Checks the first page record behind a journal header. */
static void check_first_record(const unsigned char *j, size_t len, const struct dbm_jhdr *h)
{
    size_t rec = h->sector_size;

    CHECK(len >= rec + h->page_size + 8);
    if (len < rec + h->page_size + 8)
        return;
    uint32_t pgno = get_be32(j + rec);
    CHECK(pgno >= 1 && pgno <= h->orig_pages);
    CHECK_EQ_INT(get_be32(j + rec + 4 + h->page_size),
                 journal_record_cksum(h->nonce, j + rec + 4, h->page_size));
}

static void test_real_journal(void)
{
    struct dbm_jhdr h;
    size_t len;
    unsigned char *j;

    CHECK_EQ_INT(run_sql("j.db", "CREATE TABLE t(x);\n"
                                 "INSERT INTO t SELECT randomblob(300) FROM generate_series(1,50);\n"
                                 ".once @/orig1.txt\nPRAGMA page_count;\n"
                                 "BEGIN;\nINSERT INTO t VALUES(1);\n"
                                 ".shell cp @/j.db-journal @/j_nospill\n"
                                 "PRAGMA cache_size=5;\n"
                                 "INSERT INTO t SELECT randomblob(300) FROM generate_series(1,500);\n"
                                 ".shell cp @/j.db-journal @/j_spill\n"
                                 "COMMIT;\n"
                                 ".once @/orig2.txt\nPRAGMA page_count;\n"
                                 "PRAGMA synchronous=OFF;\n"
                                 "BEGIN;\nINSERT INTO t VALUES(2);\n"
                                 ".shell cp @/j.db-journal @/j_nosync\n"
                                 "COMMIT;\n"
                                 "PRAGMA synchronous=FULL;\n"
                                 "PRAGMA journal_mode=PERSIST;\n"
                                 "INSERT INTO t VALUES(3);\n"
                                 ".shell cp @/j.db-journal @/j_persist\n"),
                 0);
    long orig1 = read_num("orig1.txt"), orig2 = read_num("orig2.txt");

    /* Before its first sync the header has magic and nrec zero: not hot. */
    j = slurp("j_nospill", &len);
    CHECK(j != NULL && len > 28);
    CHECK_EQ_INT(dbm_jhdr_parse(j, len, &h), 0);
    CHECK_EQ_INT(h.orig_pages, orig1);
    CHECK_EQ_INT(h.page_size, 4096);
    CHECK(h.sector_size >= 512 && (h.sector_size & (h.sector_size - 1)) == 0);
    check_first_record(j, len, &h);
    free(j);

    /* Spilling the cache synced it: magic and nrec are in place. */
    j = slurp("j_spill", &len);
    CHECK(j != NULL);
    CHECK_EQ_INT(dbm_jhdr_parse(j, len, &h), 1);
    CHECK_EQ_INT(h.orig_pages, orig1);
    CHECK(h.nrec >= 1 && h.sector_size + (uint64_t)h.nrec * (h.page_size + 8) <= len);
    check_first_record(j, len, &h);
    free(j);

    /* synchronous=OFF: magic at once, nrec 0xffffffff ("up to the end"). */
    j = slurp("j_nosync", &len);
    CHECK(j != NULL);
    CHECK_EQ_INT(dbm_jhdr_parse(j, len, &h), 1);
    CHECK_EQ_INT(h.nrec, 0xffffffffu);
    CHECK_EQ_INT(h.orig_pages, orig2);
    check_first_record(j, len, &h);
    free(j);

    /* PERSIST commits by zeroing the header; the old records stay. */
    j = slurp("j_persist", &len);
    CHECK(j != NULL && len > 28);
    CHECK_EQ_INT(dbm_jhdr_parse(j, len, &h), 0);
    CHECK_EQ_INT(h.page_size, 0);
    free(j);
}

static void test_real_dbhdr(void)
{
    struct dbm_dbhdr d, d2;
    size_t len;
    unsigned char *db;

    CHECK_EQ_INT(run_sql("p.db", "CREATE TABLE t(x);\n"
                                 "INSERT INTO t SELECT randomblob(5000) FROM generate_series(1,40);\n"
                                 "PRAGMA page_size=65536;\nVACUUM;\n"
                                 ".once @/pages.txt\nPRAGMA page_count;\n"),
                 0);
    db = slurp("p.db", &len);
    CHECK(db != NULL);
    if (!db)
        return;
    CHECK_EQ_INT(db[16], 0);
    CHECK_EQ_INT(db[17], 1);
    CHECK_EQ_INT(dbm_dbhdr_parse(db, len, &d), 0);
    CHECK_EQ_INT(d.page_size, 65536);
    CHECK_EQ_INT(d.write_version, 1);
    CHECK_EQ_INT(d.read_version, 1);
    CHECK_EQ_INT(d.version_valid, d.change_counter);
    CHECK_EQ_INT(d.db_pages, read_num("pages.txt"));
    CHECK_EQ_INT((uint64_t)d.db_pages * 65536, len);
    free(db);

    /* Each rollback-mode write transaction bumps the change counter. */
    CHECK_EQ_INT(run_sql("p.db", "INSERT INTO t VALUES(1);\nINSERT INTO t VALUES(2);\n"), 0);
    db = slurp("p.db", &len);
    CHECK(db != NULL);
    if (!db)
        return;
    CHECK_EQ_INT(dbm_dbhdr_parse(db, len, &d2), 0);
    CHECK_EQ_INT(d2.change_counter, d.change_counter + 2);
    CHECK_EQ_INT(d2.version_valid, d2.change_counter);
    free(db);
}

static int have_sqlite3(void)
{
    return system("sqlite3 -version > /dev/null 2>&1") == 0;
}

int main(void)
{
    test_dbhdr_synthetic();
    test_lock_page();
    test_classify();
    test_jhdr_synthetic();
    test_journal_super_tail();
    test_wal_synthetic_be();
    if (!have_sqlite3()) {
        fprintf(stderr, "sqlite3 shell not found: real-file tests skipped\n");
        return CHECK_DONE();
    }
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return EXIT_FAILURE;
    }
    test_real_dbhdr();
    test_real_journal();
    test_real_wal();
    test_real_wal_restart();
    test_real_wal_spill();
    if (check_failures == 0) {
        char cmd[300];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", tmpdir);
    } else {
        fprintf(stderr, "files kept in %s\n", tmpdir);
    }
    return CHECK_DONE();
}
