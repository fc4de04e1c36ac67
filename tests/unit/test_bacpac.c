/* test_bacpac.c - the export stream, checked with the real tools: databases
 * made by the sqlite3 shell (one in WAL mode, one without tables) are loaded
 * into memory as dbimage sources, exported, and the export is tested with
 * zstd, tar, sqlite3, sha256sum and python3's json module. Also: determinism,
 * cancellation, read and sink errors, the size bound, the manifest limit. */
#include "bacpac.h"
#include "check.h"
#include "codec.h"
#include "crypto.h"
#include "dbimage.h"
#include "shell.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char dir[64];

/* ---- helpers ---- */

/* Runs a command and returns its stdout (malloc'd, NUL-terminated). */
static char *run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *run(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    size_t len = 0, cap = 1 << 16;
    char *out = malloc(cap);

    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    FILE *f = popen(cmd, "r");
    if (!f || !out)
        abort();
    for (size_t n; (n = fread(out + len, 1, cap - len - 1, f)) > 0;) {
        len += n;
        if (len + 1 == cap) {
            char *tmp = realloc(out, cap *= 2);
            if (!tmp)
                abort();
            out = tmp;
        }
    }
    out[len] = '\0';
    pclose(f);
    return out;
}


/* ---- in-memory images ---- */

struct mem_img {
    unsigned char *data;
    size_t size;
    uint32_t page_size;
    uint32_t fail_pgno;   /* 0: none; else this page fails with -EIO ... */
    unsigned fail_after;  /* ... after it has been read this many times */
    unsigned reads;       /* reads of fail_pgno so far */
    unsigned long total;  /* reads of any page */
};

static int mem_read_page(void *ctx, uint32_t pgno, void *buf)
{
    struct mem_img *m = ctx;

    if (pgno == 0 || (uint64_t)pgno * m->page_size > m->size)
        return -EINVAL;
    __atomic_fetch_add(&m->total, 1, __ATOMIC_RELAXED); /* two threads read (bacpac's job and body) */
    if (pgno == __atomic_load_n(&m->fail_pgno, __ATOMIC_RELAXED) &&
        __atomic_fetch_add(&m->reads, 1, __ATOMIC_RELAXED) >= m->fail_after)
        return -EIO;
    memcpy(buf, m->data + (size_t)(pgno - 1) * m->page_size, m->page_size);
    return 0;
}

/* Loads the sqlite3 file at dir/name into m and describes it in img. */
static void load_db(const char *name, uint64_t commit_ns, struct mem_img *m, struct dbm_dbimage *img)
{
    char path[256];

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    memset(m, 0, sizeof(*m));
    memset(img, 0, sizeof(*img));
    m->data = slurp(path, &m->size);
    m->page_size = m->size >= 100 ? (uint32_t)(m->data[16] << 8 | m->data[17]) : 4096;
    if (m->page_size == 1)
        m->page_size = 65536;
    snprintf(img->name, sizeof(img->name), "%s", name);
    img->page_size = m->page_size;
    img->db_pages = (uint32_t)(m->size / m->page_size);
    img->txid = 40 + (uint64_t)strlen(name);
    img->commit_ns = commit_ns;
    img->timeline = 0x1234abcd;
    img->read_page = mem_read_page;
    img->ctx = m;
}

/* ---- sinks ---- */

struct file_sink {
    FILE *f;
    size_t piece;         /* 0: write each buffer whole; else in pieces of this size */
    int fail_at_call;     /* 0: never; else this call returns -ENOSPC */
    int calls;
};

static int file_sink(void *arg, const void *buf, size_t len)
{
    struct file_sink *s = arg;

    if (++s->calls == s->fail_at_call)
        return -ENOSPC;
    size_t piece = s->piece ? s->piece : len;
    for (size_t off = 0; off < len; off += piece) {
        size_t n = len - off < piece ? len - off : piece;
        if (fwrite((const char *)buf + off, 1, n, s->f) != n)
            return -EIO;
    }
    return 0;
}

static int cancel_budget; /* cancel() says stop once this reaches 0 */

static int cancel_after(void *arg)
{
    (void)arg;
    return __atomic_fetch_sub(&cancel_budget, 1, __ATOMIC_RELAXED) <= 0; /* called by two threads */
}

/* Exports p into dir/out; returns dbm_bacpac_produce's result. */
static int export_to(const struct dbm_bacpac_params *p, const char *out, size_t piece,
                     int (*cancel)(void *), uint8_t sha[32], uint64_t *size)
{
    char path[256];
    struct file_sink s = { .piece = piece };

    snprintf(path, sizeof(path), "%s/%s", dir, out);
    s.f = fopen(path, "wb");
    if (!s.f)
        abort();
    int rc = dbm_bacpac_produce(p, file_sink, &s, cancel, sha, size);
    fclose(s.f);
    return rc;
}

/* ---- databases ---- */

#define COMMIT_A 1763634720123456789ull /* 2025-11-20T10:32:00.123456789Z */
#define COMMIT_B 1763634799000000001ull /* 2025-11-20T10:33:19.000000001Z */
#define COMMIT_C 1700000000999999999ull /* 2023-11-14T22:13:20.999999999Z */
#define INSTANT 1763640000500000000ull  /* 2025-11-20T12:00:00.5Z */

/* Runs sql with the sqlite3 shell on dir/db. */
static int sql(const char *db, const char *text)
{
    char path[256];
    FILE *f;

    snprintf(path, sizeof(path), "%s/in.sql", dir);
    f = fopen(path, "w");
    if (!f)
        abort();
    fputs(text, f);
    fclose(f);
    return sh("sqlite3 %s/%s < %s >/dev/null", dir, db, path);
}

#define WEIRD "we\"ird\tn\xc3\xa9\\"

static void make_dbs(void)
{
    CHECK_EQ_INT(sql("a.db", "CREATE TABLE t1(id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT);"
                             "INSERT INTO t1(v) VALUES('x'),('y'),('z');"
                             "CREATE TABLE '" WEIRD "' (a); INSERT INTO '" WEIRD "' VALUES (1),(2);"),
                 0);
    /* WAL, several MiB of incompressible data (many read batches), an index. */
    CHECK_EQ_INT(sql("b.db", "PRAGMA page_size=1024; PRAGMA journal_mode=WAL;"
                             "CREATE TABLE big(id INTEGER PRIMARY KEY, b BLOB, t TEXT);"
                             "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < 6000)"
                             " INSERT INTO big SELECT i, randomblob(600), printf('row %d', i) FROM c;"
                             "CREATE INDEX big_t ON big(t);"),
                 0);
    CHECK_EQ_INT(sql("c.db", "PRAGMA user_version=7;"), 0);
}

struct fixture {
    struct mem_img m[3];
    struct dbm_dbimage img[3];
    struct dbm_bacpac_params p;
};

static void fixture_load(struct fixture *fx)
{
    load_db("a.db", COMMIT_A, &fx->m[0], &fx->img[0]);
    load_db("b.db", COMMIT_B, &fx->m[1], &fx->img[1]);
    load_db("c.db", COMMIT_C, &fx->m[2], &fx->img[2]);
    CHECK(fx->m[1].data[18] == 2 && fx->m[1].data[19] == 2); /* b.db is in WAL mode */
    CHECK(fx->img[1].db_pages > 3000);
    CHECK_EQ_INT(fx->img[2].db_pages, 1);
    fx->p = (struct dbm_bacpac_params){ .env = "pr\"od\\1\n", .env_type = "production",
                                        .instant_ns = INSTANT, .dbs = fx->img, .ndbs = 3 };
}

static void fmt_utc(uint64_t ns, char *buf, size_t size)
{
    time_t t = (time_t)(ns / 1000000000ull);
    struct tm tm;

    gmtime_r(&t, &tm);
    strftime(buf, size, "%Y-%m-%d %H:%M:%S", &tm);
}

/* The first 64 hex digits sha256sum prints for dir/rel. */
static void sha256sum(const char *rel, char hex[65])
{
    char *out = run("sha256sum %s/%s", dir, rel);

    snprintf(hex, 65, "%.64s", out);
    free(out);
}

/* tar's listing: names, sizes, owners, modes and mtimes (UTC). */
static void check_listing(const char *file, const struct dbm_bacpac_params *p)
{
    char *out = run("TZ=UTC tar --zstd --full-time -tvf %s/%s", dir, file);
    char *line = out, mode[16], owner[64], date[16], tim[16], name[128], want[32];
    unsigned long long size;
    uint64_t newest = 0;

    for (size_t i = 0; i < p->ndbs; i++)
        newest = p->dbs[i].commit_ns > newest ? p->dbs[i].commit_ns : newest;
    for (size_t i = 0; i <= p->ndbs; i++) {
        CHECK_EQ_INT(sscanf(line, "%15s %63s %llu %15s %15s %127s", mode, owner, &size, date, tim, name), 6);
        CHECK(strcmp(mode, "-rw-r--r--") == 0);
        CHECK(strcmp(owner, "root/root") == 0);
        char d_t[40];
        snprintf(d_t, sizeof(d_t), "%s %s", date, tim);
        if (i == 0) {
            CHECK(strcmp(name, "manifest.json") == 0);
            fmt_utc(p->ndbs ? newest : p->instant_ns, want, sizeof(want));
        } else {
            const struct dbm_dbimage *img = &p->dbs[i - 1];
            char wname[80];
            snprintf(wname, sizeof(wname), "db/%s", img->name);
            CHECK(strcmp(name, wname) == 0);
            CHECK_EQ_INT(size, (uint64_t)img->page_size * img->db_pages);
            fmt_utc(img->commit_ns, want, sizeof(want));
        }
        CHECK(strcmp(d_t, want) == 0);
        line = strchr(line, '\n');
        CHECK(line != NULL);
        if (!line)
            break;
        line++;
    }
    CHECK(line && *line == '\0'); /* no other member */
    free(out);
}

static const char manifest_py[] =
    "import json, sys\n"
    "raw = open(sys.argv[1], 'rb').read()\n"
    "assert raw.endswith(b'\\n') and raw.count(b'\\n') == 1\n"
    "m = json.loads(raw)\n"
    "print('keys', ','.join(m.keys()))\n"
    "print('env', json.dumps(m['environment']), m['environment_type'], m['instant'], m['instant_ns'],"
    " m['format'], m['format_version'])\n"
    "for d in m['databases']:\n"
    "    print('dbkeys', ','.join(d.keys()))\n"
    "    print('db', d['name'], d['page_size'], d['size'], d['pages'], d['txid'], d['commit_time'],"
    " d['commit_ns'], d['timeline'], d['sha256'])\n"
    "    for k, v in d['tables'].items():\n"
    "        print('table', d['name'], json.dumps(k), v)\n";

/* Parses manifest.json with python3 and checks every field but the tables;
 * returns python's listing (free it) for the caller to check those. */
static char *check_manifest(const char *xdir, const struct dbm_bacpac_params *p)
{
    char path[256], line[512], hex[65], rel[128];
    FILE *f;

    snprintf(path, sizeof(path), "%s/manifest.py", dir);
    f = fopen(path, "w");
    fputs(manifest_py, f);
    fclose(f);
    char *out = run("python3 %s/manifest.py %s/%s/manifest.json", dir, dir, xdir);
    CHECK(strstr(out, "keys format,format_version,environment,environment_type,instant,instant_ns,"
                      "databases\n") == out);
    CHECK(strstr(out, "env \"pr\\\"od\\\\1\\n\" production 2025-11-20T12:00:00.500000000Z "
                      "1763640000500000000 dbmovefs-bacpac 1\n") != NULL);
    for (size_t i = 0; i < p->ndbs; i++) {
        const struct dbm_dbimage *img = &p->dbs[i];
        char ts[48];
        time_t t = (time_t)(img->commit_ns / 1000000000ull);
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(ts, 24, "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(ts + strlen(ts), 16, ".%09lluZ", (unsigned long long)(img->commit_ns % 1000000000ull));
        snprintf(rel, sizeof(rel), "%s/db/%s", xdir, img->name);
        sha256sum(rel, hex);
        snprintf(line, sizeof(line), "db %s %u %llu %u %llu %s %llu %llu %s\n", img->name, img->page_size,
                 (unsigned long long)img->page_size * img->db_pages, img->db_pages,
                 (unsigned long long)img->txid, ts, (unsigned long long)img->commit_ns,
                 (unsigned long long)img->timeline, hex);
        CHECK(strstr(out, line) != NULL);
    }
    CHECK(p->ndbs == 0 || strstr(out, "dbkeys name,page_size,size,pages,txid,commit_time,commit_ns,timeline,"
                                      "sha256,tables\n"));
    return out;

}

/* Extracted databases: byte for byte the source, but for the WAL marks. */
static void check_extracted(const char *xdir, const struct fixture *fx)
{
    char path[256];

    for (int i = 0; i < 3; i++) {
        size_t n;
        snprintf(path, sizeof(path), "%s/%s/db/%s", dir, xdir, fx->img[i].name);
        unsigned char *x = slurp(path, &n);
        CHECK_EQ_INT(n, fx->m[i].size);
        if (n == fx->m[i].size) {
            if (i == 1) {
                CHECK(x[18] == 1 && x[19] == 1);
                CHECK(memcmp(x, fx->m[i].data, 18) == 0);
                CHECK(memcmp(x + 20, fx->m[i].data + 20, n - 20) == 0);
            } else {
                CHECK(memcmp(x, fx->m[i].data, n) == 0);
            }
        }
        free(x);
        char *ok = run("sqlite3 %s 'PRAGMA integrity_check'", path);
        CHECK(strcmp(ok, "ok\n") == 0);
        free(ok);
    }
}

/* The stream's reported sha256 and size are those of the file. */
static void check_outputs(const struct dbm_bacpac_params *p, const char *file, const uint8_t sha[32],
                          uint64_t size)
{
    char hex[65], want[65], path[256];
    struct stat st;

    dbm_crypto_hex(sha, 32, hex);
    sha256sum(file, want);
    CHECK(strcmp(hex, want) == 0);
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    CHECK(stat(path, &st) == 0 && (uint64_t)st.st_size == size);
    CHECK(size <= dbm_bacpac_size_bound(p));
}

/* The full export, checked with the real tools. */
static void test_export(struct fixture *fx)
{
    uint8_t sha[32];
    uint64_t size = 0;

    CHECK_EQ_INT(export_to(&fx->p, "x.bacpac", 0, NULL, sha, &size), 0);
    check_outputs(&fx->p, "x.bacpac", sha, size);
    CHECK_EQ_INT(sh("zstd -q -t %s/x.bacpac", dir), 0);
    /* A ustar archive in whole 10240-byte records. */
    char *n = run("zstd -dc %s/x.bacpac | wc -c", dir);
    CHECK(atoll(n) > 0 && atoll(n) % 10240 == 0);
    free(n);
    n = run("zstd -dc %s/x.bacpac | head -c 265 | tail -c 8 | od -An -c | tr -d ' \\n'", dir);
    CHECK(strcmp(n, "ustar\\0" "00") == 0);
    free(n);
    check_listing("x.bacpac", &fx->p);
    CHECK_EQ_INT(sh("mkdir %s/x && tar --zstd -xf %s/x.bacpac -C %s/x", dir, dir, dir), 0);
    check_extracted("x", fx);
    char *out = check_manifest("x", &fx->p);
    char *a = strstr(out, "table a.db \"sqlite_sequence\" 1\n");
    char *b = strstr(out, "table a.db \"t1\" 3\n");
    char *c = strstr(out, "table a.db \"we\\\"ird\\tn\\u00e9\\\\\" 2\n");
    CHECK(a && b && c && a < b && b < c);
    CHECK(strstr(out, "table b.db \"big\" 6000\n") != NULL);
    CHECK(strstr(out, "table c.db") == NULL);
    CHECK(strstr(out, "db c.db 4096 4096 1 ") != NULL);
    free(out);
}

/* Same images, same bytes: twice, with other sink pieces, level 0 == 3. */
static void test_determinism(struct fixture *fx)
{
    uint8_t sha1[32], sha2[32], sha3[32];
    uint64_t s1 = 0, s2 = 0, s3 = 0;

    CHECK_EQ_INT(export_to(&fx->p, "d1.bacpac", 0, NULL, sha1, &s1), 0);
    CHECK_EQ_INT(export_to(&fx->p, "d2.bacpac", 7, NULL, sha2, &s2), 0);
    fx->p.level = 3;
    CHECK_EQ_INT(export_to(&fx->p, "d3.bacpac", 4096, NULL, sha3, &s3), 0);
    fx->p.level = 0;
    CHECK_EQ_INT(sh("cmp -s %s/d1.bacpac %s/d2.bacpac", dir, dir), 0);
    CHECK_EQ_INT(sh("cmp -s %s/d1.bacpac %s/d3.bacpac", dir, dir), 0);
    CHECK_EQ_INT(sh("cmp -s %s/d1.bacpac %s/x.bacpac", dir, dir), 0);
    CHECK(memcmp(sha1, sha2, 32) == 0 && memcmp(sha1, sha3, 32) == 0);
    /* Two frames, each the zstd tool's whatever its number of threads: the
     * manifest member (header and padded data), then the rest of the tar. */
    for (int t = 1; t <= 3; t += 2)
        CHECK_EQ_INT(sh("cd %s && zstd -q -dc d1.bacpac > d1.tar && "
                        "m=0$(head -c 135 d1.tar | tail -c 11) && h=$((512 + ($m + 511) / 512 * 512)) && "
                        "head -c $h d1.tar | zstd -q -3 -T%d -c > f1.zst && "
                        "tail -c +$((h + 1)) d1.tar | zstd -q -3 -T%d -c > f2.zst && "
                        "cat f1.zst f2.zst | cmp -s - d1.bacpac",
                        dir, t, t),
                     0);
    CHECK(s1 == s2 && s1 == s3);
    /* Another level is another stream (the level is honoured). */
    fx->p.level = 19;
    CHECK_EQ_INT(export_to(&fx->p, "d4.bacpac", 0, NULL, sha3, &s3), 0);
    fx->p.level = 0;
    CHECK(memcmp(sha1, sha3, 32) != 0);
    CHECK_EQ_INT(sh("zstd -q -t %s/d4.bacpac", dir), 0);
}

static int codec_collect(void *arg, const void *buf, size_t len)
{
    struct { unsigned char *p; size_t len, cap; } *o = arg;

    if (o->len + len > o->cap)
        return -ENOSPC;
    memcpy(o->p + o->len, buf, len);
    o->len += len;
    return 0;
}

/* Compresses in with the given input chunking; returns the frame's length. */
static size_t codec_run(const unsigned char *in, size_t n, size_t chunk, unsigned char *out, size_t cap)
{
    struct { unsigned char *p; size_t len, cap; } o = { out, 0, cap };
    struct dbm_codec *c;
    int rc = dbm_codec_create(0, codec_collect, &o, &c);

    CHECK_EQ_INT(rc, 0);
    if (rc < 0)
        return 0;
    for (size_t off = 0; rc == 0 && off < n; off += chunk)
        rc = dbm_codec_write(c, in + off, n - off < chunk ? n - off : chunk);
    CHECK_EQ_INT(rc, 0);
    CHECK_EQ_INT(dbm_codec_end(c), 0);
    dbm_codec_destroy(c);
    return o.len;
}

/* The codec's frame depends on the bytes only: not on the chunking of the
 * input, nor on thread timing (several 8 MiB jobs for the two workers). */
static void test_codec_determinism(void)
{
    size_t n = 40u << 20, cap = dbm_codec_bound(n);
    unsigned char *in = malloc(n), *ref = malloc(cap), *out = malloc(cap);
    uint64_t x = 88172645463325252ull;

    for (size_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        in[i] = (x % 5 == 0) ? (unsigned char)x : (unsigned char)('a' + (i / 64) % 26); /* compressible-ish */
    }
    size_t rlen = codec_run(in, n, n, ref, cap);
    CHECK(rlen > 0 && rlen < n);
    static const size_t chunks[] = { 1u << 20, 777, 1u << 20, 4u << 20, 65536, 1u << 20 };
    for (size_t k = 0; k < sizeof(chunks) / sizeof(chunks[0]); k++) {
        size_t len = codec_run(in, n, chunks[k], out, cap);
        CHECK(len == rlen && memcmp(out, ref, rlen) == 0);
    }
    /* The zstd tool reads it back. */
    char path[256];
    snprintf(path, sizeof(path), "%s/codec.zst", dir);
    FILE *f = fopen(path, "wb");
    fwrite(ref, 1, rlen, f);
    fclose(f);
    char *sum = run("zstd -dc %s | cksum", path);
    snprintf(path, sizeof(path), "%s/codec.raw", dir);
    f = fopen(path, "wb");
    fwrite(in, 1, n, f);
    fclose(f);
    char *want = run("cksum < %s", path);
    CHECK(strcmp(sum, want) == 0);
    free(sum);
    free(want);
    free(in);
    free(ref);
    free(out);
}

static off_t file_size(const char *rel)
{
    char path[256];
    struct stat st;

    snprintf(path, sizeof(path), "%s/%s", dir, rel);
    return stat(path, &st) == 0 ? st.st_size : -1;
}

/* Cancels, read errors (whichever thread meets them), sink errors. */
static void test_failures(struct fixture *fx)
{
    uint8_t sha[32];
    uint64_t size = 0;
    int batches = 0;

    for (int i = 0; i < 3; i++)
        batches += (int)((fx->m[i].size + (1u << 20) - 1) >> 20);

    cancel_budget = 0;
    CHECK_EQ_INT(export_to(&fx->p, "f.bacpac", 0, cancel_after, sha, &size), -ECANCELED);
    CHECK_EQ_INT(file_size("f.bacpac"), 0);
    cancel_budget = batches + 3; /* after the hashing is done (both threads poll) */
    CHECK_EQ_INT(export_to(&fx->p, "f.bacpac", 0, cancel_after, sha, &size), -ECANCELED);

    /* A page that fails its checksum: the manifest cannot be complete, so
     * nothing is written, whichever thread reads it first. */
    fx->m[1].fail_pgno = fx->img[1].db_pages / 2;
    CHECK_EQ_INT(export_to(&fx->p, "f.bacpac", 0, NULL, sha, &size), -EIO);
    CHECK_EQ_INT(file_size("f.bacpac"), 0);
    fx->m[1].fail_pgno = 1;
    fx->m[1].reads = 0;
    CHECK_EQ_INT(export_to(&fx->p, "f.bacpac", 0, NULL, sha, &size), -EIO);
    /* ... or one that fails only on its second read (the last page of b.db,
     * read once for the hash and once for the archive): still EIO. */
    fx->m[1].fail_pgno = fx->img[1].db_pages;
    fx->m[1].fail_after = 1;
    fx->m[1].reads = 0;
    CHECK_EQ_INT(export_to(&fx->p, "f.bacpac", 0, NULL, sha, &size), -EIO);
    CHECK(fx->m[1].reads >= 2);
    fx->m[1].fail_pgno = 0;
    fx->m[1].fail_after = 0;

    /* The sink's error is the export's. */
    char path[256];
    struct file_sink s = { .fail_at_call = 1 };
    snprintf(path, sizeof(path), "%s/f.bacpac", dir);
    s.f = fopen(path, "wb");
    CHECK_EQ_INT(dbm_bacpac_produce(&fx->p, file_sink, &s, NULL, sha, &size), -ENOSPC);
    fclose(s.f);

    /* Images the tar member cannot describe. */
    struct dbm_dbimage bad = fx->img[0];
    struct dbm_bacpac_params p = fx->p;
    p.dbs = &bad;
    p.ndbs = 1;
    snprintf(bad.name, sizeof(bad.name), "../evil.db");
    CHECK_EQ_INT(export_to(&p, "f.bacpac", 0, NULL, sha, &size), -EINVAL);
    bad = fx->img[0];
    bad.page_size = 3000;
    CHECK_EQ_INT(export_to(&p, "f.bacpac", 0, NULL, sha, &size), -EINVAL);

    /* Everything works again afterwards. */
    CHECK_EQ_INT(export_to(&fx->p, "f.bacpac", 0, NULL, sha, &size), 0);
    CHECK_EQ_INT(sh("cmp -s %s/f.bacpac %s/x.bacpac", dir, dir), 0);
}

/* Exports p into name and checks the stream and the bound. */
static void export_small(const struct dbm_bacpac_params *p, const char *name)
{
    uint8_t sha[32];
    uint64_t size = 0;

    CHECK_EQ_INT(export_to(p, name, 0, NULL, sha, &size), 0);
    check_outputs(p, name, sha, size);
    CHECK_EQ_INT(sh("zstd -q -t %s/%s", dir, name), 0);
    check_listing(name, p);
}

/* The bound holds for subsets, an empty list and a database without tables. */
static void test_bounds(struct fixture *fx)
{
    struct dbm_bacpac_params p = fx->p;

    p.ndbs = 0;
    export_small(&p, "e.bacpac");
    CHECK_EQ_INT(sh("mkdir %s/e && tar --zstd -xf %s/e.bacpac -C %s/e", dir, dir, dir), 0);
    char *out = check_manifest("e", &p);
    CHECK(strstr(out, "\ndb ") == NULL);
    free(out);
    for (int i = 0; i < 3; i++) {
        char name[32];
        p.dbs = &fx->img[i];
        p.ndbs = 1;
        snprintf(name, sizeof(name), "s%d.bacpac", i);
        export_small(&p, name);
    }
    /* The bound is not absurd: the incompressible b.db plus a few percent. */
    CHECK(dbm_bacpac_size_bound(&p) < 100000);
    CHECK(dbm_bacpac_size_bound(&fx->p) < fx->m[1].size + fx->m[1].size / 20 + 300000);
}

/* A manifest past its allowance is refused before anything is written. */
static void test_manifest_limit(void)
{
    size_t cap = 1u << 20, len = 0;
    char *q = malloc(cap), name[1100];
    struct mem_img m;
    struct dbm_dbimage img;
    uint8_t sha[32];
    uint64_t size;

    memset(name, 'n', 1000);
    name[1000] = '\0';
    for (int i = 0; i < 300; i++)
        len += (size_t)snprintf(q + len, cap - len, "CREATE TABLE \"%s%d\"(a);", name, i);
    CHECK_EQ_INT(sql("d.db", q), 0);
    free(q);
    load_db("d.db", COMMIT_A, &m, &img);
    struct dbm_bacpac_params p = { .env = "e", .env_type = "sandbox", .instant_ns = INSTANT, .dbs = &img,
                                   .ndbs = 1 };
    CHECK_EQ_INT(export_to(&p, "big.bacpac", 0, NULL, sha, &size), -EFBIG);
    CHECK_EQ_INT(file_size("big.bacpac"), 0);
    free(m.data);
}

int main(void)
{
    struct fixture fx;

    snprintf(dir, sizeof(dir), "/tmp/test_bacpac.XXXXXX");
    if (!mkdtemp(dir))
        return EXIT_FAILURE;
    make_dbs();
    fixture_load(&fx);
    test_export(&fx);
    test_determinism(&fx);
    test_codec_determinism();
    test_failures(&fx);
    test_bounds(&fx);
    test_manifest_limit();
    for (int i = 0; i < 3; i++)
        free(fx.m[i].data);
    if (!check_failures && !getenv("KEEP"))
        sh("rm -rf %s", dir);
    else
        fprintf(stderr, "kept %s\n", dir);
    return CHECK_DONE();
}
