/* bacpac.c - see bacpac.h.
 *
 * Two passes over the images. Pass 1 reads each image once for its SHA-256
 * and asks snapview for its row counts, so the manifest (the first member)
 * is complete before any byte leaves. Pass 2 writes the tar stream into the
 * codec; the codec's output is hashed, counted and handed to the sink.
 *
 * The tar format is POSIX ustar with fixed fields (mode 0644, uid/gid 0,
 * root/root, mtime = commit time in seconds), so identical images give an
 * identical archive. Sizes and times that do not fit in 11 octal digits
 * (members of 8 GiB and more) use the base-256 form GNU tar and bsdtar read.
 * The archive ends with two zero blocks and is padded to a multiple of the
 * 10240-byte record, like GNU tar's default.
 *
 * Images are read in BP_BATCH-byte batches (page-aligned, so pages land in
 * the batch buffer without a copy); cancel() is polled between batches. */
#include "bacpac.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "crypto.h"
#include "dbimage.h"
#include "sqlproto.h"
#include "log.h"
#include "snapview.h"
#include "timefmt.h"

#define BP_BATCH (1u << 20)
#define BP_BLOCK 512u
#define BP_RECORD 10240u
#define BP_PAGE_MAX 65536u

/* What pass 1 learns about one image. */
struct bp_db {
    uint8_t sha[DBM_SHA256_LEN];
    struct dbm_table_count *tables; /* owned */
    size_t ntables;
};

/* One export in progress. */
struct bp_run {
    const struct dbm_bacpac_params *p;
    int (*cancel)(void *arg);
    void *arg;                /* for sink and cancel */
    dbm_bacpac_sink sink;
    unsigned char *buf;       /* owned: BP_BATCH bytes */
    void *scratch;            /* owned: BP_PAGE_MAX bytes for dbm_dbimage_pread */
    struct bp_db *dbs;        /* owned: ndbs entries */
    struct dbm_sha256 *hash;  /* owned: pass 1 images, then the output */
    struct dbm_codec *codec;  /* owned, pass 2 */
    uint64_t tar_bytes;       /* tar bytes written so far */
    uint64_t out_bytes;       /* compressed bytes handed to sink */
};

static uint64_t bp_pad(uint64_t n, uint64_t unit)
{
    return (n + unit - 1) / unit * unit;
}

static uint64_t bp_image_size(const struct dbm_dbimage *img)
{
    return (uint64_t)img->page_size * img->db_pages;
}

/* ---- tar headers ---- */

/* Writes v as a NUL-terminated octal field of width bytes, or in base-256
 * (first byte 0x80, big-endian value) when it does not fit. */
static void tar_num(char *f, size_t width, uint64_t v)
{
    if (width - 1 >= 22 || v < (1ull << (3 * (width - 1)))) {
        snprintf(f, width, "%0*" PRIo64, (int)(width - 1), v);
        return;
    }
    memset(f, 0, width);
    f[0] = (char)0x80;
    for (size_t i = width - 1; i > 0 && v; i--, v >>= 8)
        f[i] = (char)(v & 0xff);
}

/* Puts name in the name field, or splits it at a '/' into prefix and name
 * (ustar) when it is longer than 100 bytes. -ENAMETOOLONG if it cannot. */
static int tar_name(unsigned char *h, const char *name)
{
    size_t len = strlen(name);

    if (len <= 100) {
        memcpy(h, name, len);
        return 0;
    }
    for (size_t i = 0; i < len && i <= 155; i++) {
        if (name[i] == '/' && len - i - 1 <= 100 && len - i - 1 > 0) {
            memcpy(h + 345, name, i);
            memcpy(h, name + i + 1, len - i - 1);
            return 0;
        }
    }
    dbm_err("bacpac: member name too long for ustar: %s", name);
    return -ENAMETOOLONG;
}

/* Builds the 512-byte header of a regular file. */
static int tar_header(unsigned char h[BP_BLOCK], const char *name, uint64_t size, uint64_t mtime)
{
    unsigned sum = 0;
    int rc;

    memset(h, 0, BP_BLOCK);
    rc = tar_name(h, name);
    if (rc < 0)
        return rc;
    tar_num((char *)h + 100, 8, 0644);         /* mode */
    tar_num((char *)h + 108, 8, 0);            /* uid */
    tar_num((char *)h + 116, 8, 0);            /* gid */
    tar_num((char *)h + 124, 12, size);
    tar_num((char *)h + 136, 12, mtime);
    h[156] = '0';                              /* typeflag: regular file */
    memcpy(h + 257, "ustar", 6);               /* magic, NUL-terminated */
    memcpy(h + 263, "00", 2);                  /* version */
    memcpy(h + 265, "root", 4);                /* uname */
    memcpy(h + 297, "root", 4);                /* gname */
    tar_num((char *)h + 329, 8, 0);            /* devmajor */
    tar_num((char *)h + 337, 8, 0);            /* devminor */
    memset(h + 148, ' ', 8);                   /* checksum counts as spaces */
    for (size_t i = 0; i < BP_BLOCK; i++)
        sum += h[i];
    snprintf((char *)h + 148, 8, "%06o", sum); /* six digits, NUL ... */
    h[155] = ' ';                              /* ... and a space */
    return 0;
}

/* ---- manifest.json ---- */

/* A growing string; err is sticky (-ENOMEM). */
struct bp_text {
    char *s;
    size_t len, cap;
    int err;
};

static void text_add(struct bp_text *t, const char *s, size_t n)
{
    if (t->err)
        return;
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 4096;
        while (cap < t->len + n + 1)
            cap *= 2;
        char *tmp = realloc(t->s, cap);
        if (!tmp) {
            t->err = -ENOMEM;
            return;
        }
        t->s = tmp;
        t->cap = cap;
    }
    memcpy(t->s + t->len, s, n);
    t->len += n;
    t->s[t->len] = '\0';
}

static void text_cstr(struct bp_text *t, const char *s)
{
    text_add(t, s, strlen(s));
}

static void text_printf(struct bp_text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void text_printf(struct bp_text *t, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;

    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(tmp)) {
        t->err = t->err ? t->err : -EOVERFLOW; /* callers print numbers only */
        return;
    }
    text_add(t, tmp, (size_t)n);
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), 0 if invalid. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    size_t len;
    uint32_t cp;

    if (s[0] < 0x80)
        return 1;
    if (s[0] >= 0xc2 && s[0] <= 0xdf) {
        len = 2;
        cp = s[0] & 0x1f;
    } else if (s[0] >= 0xe0 && s[0] <= 0xef) {
        len = 3;
        cp = s[0] & 0x0f;
    } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
        len = 4;
        cp = s[0] & 0x07;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

/* Appends s as a JSON string. Control characters are escaped; bytes that
 * are not UTF-8 (SQLite names may hold any bytes) become U+FFFD, so the
 * manifest is always valid JSON. */
static void text_json_str(struct bp_text *t, const char *str)
{
    const unsigned char *s = (const unsigned char *)(str ? str : "");
    size_t n = strlen((const char *)s);

    text_cstr(t, "\"");
    for (size_t i = 0; i < n;) {
        size_t run = 0, k;
        while (i + run < n && s[i + run] >= 0x20 && s[i + run] != '"' && s[i + run] != '\\' &&
               (k = utf8_len(s + i + run, n - i - run)) > 0)
            run += k;
        text_add(t, (const char *)s + i, run);
        i += run;
        if (i >= n)
            break;
        if (s[i] == '"' || s[i] == '\\') {
            char esc[2] = { '\\', (char)s[i] };
            text_add(t, esc, 2);
        } else if (s[i] < 0x20) {
            text_printf(t, "\\u%04x", s[i]);
        } else {
            text_cstr(t, "\\ufffd");
        }
        i++;
    }
    text_cstr(t, "\"");
}

static void manifest_db(struct bp_text *t, const struct dbm_dbimage *img, const struct bp_db *d)
{
    char ts[40], hex[DBM_SHA256_HEX_LEN + 1];

    dbm_ts_rfc3339(img->commit_ns, ts, sizeof(ts));
    dbm_crypto_hex(d->sha, sizeof(d->sha), hex);
    text_cstr(t, "{\"name\":");
    text_json_str(t, img->name);
    text_printf(t, ",\"page_size\":%" PRIu32 ",\"size\":%" PRIu64 ",\"pages\":%" PRIu32, img->page_size,
                bp_image_size(img), img->db_pages);
    text_printf(t, ",\"txid\":%" PRIu64 ",\"commit_time\":\"%s\",\"commit_ns\":%" PRIu64, img->txid, ts,
                img->commit_ns);
    text_printf(t, ",\"timeline\":%" PRIu64 ",\"sha256\":\"%s\",\"tables\":{", img->timeline, hex);
    for (size_t i = 0; i < d->ntables; i++) {
        if (i)
            text_cstr(t, ",");
        text_json_str(t, d->tables[i].name);
        text_printf(t, ":%" PRIu64, d->tables[i].rows);
    }
    text_cstr(t, "}}");
}

/* Builds manifest.json (one line, with a final newline) into t. */
static int manifest_build(const struct dbm_bacpac_params *p, const struct bp_db *dbs, struct bp_text *t)
{
    char ts[40];

    dbm_ts_rfc3339(p->instant_ns, ts, sizeof(ts));
    text_cstr(t, "{\"format\":\"dbmovefs-bacpac\",\"format_version\":1,\"environment\":");
    text_json_str(t, p->env);
    text_cstr(t, ",\"environment_type\":");
    text_json_str(t, p->env_type);
    text_printf(t, ",\"instant\":\"%s\",\"instant_ns\":%" PRIu64 ",\"databases\":[", ts, p->instant_ns);
    for (size_t i = 0; i < p->ndbs; i++) {
        if (i)
            text_cstr(t, ",");
        manifest_db(t, &p->dbs[i], &dbs[i]);
    }
    text_cstr(t, "]}\n");
    return t->err;
}

static uint64_t manifest_bound(const struct dbm_bacpac_params *p)
{
    uint64_t b = DBM_BACPAC_MANIFEST_BASE;

    for (size_t i = 0; i < p->ndbs; i++) {
        uint64_t per_page = (uint64_t)DBM_BACPAC_MANIFEST_PER_PAGE * p->dbs[i].db_pages;
        b += DBM_BACPAC_MANIFEST_PER_DB +
             (per_page < DBM_BACPAC_MANIFEST_PAGES_CAP ? per_page : DBM_BACPAC_MANIFEST_PAGES_CAP);
    }
    return b;
}

/* The manifest's mtime: the latest commit among the images, else the instant. */
static uint64_t manifest_mtime(const struct dbm_bacpac_params *p)
{
    uint64_t ns = 0;

    if (p->ndbs == 0)
        return p->instant_ns / DBM_NS_PER_SEC;
    for (size_t i = 0; i < p->ndbs; i++)
        if (p->dbs[i].commit_ns > ns)
            ns = p->dbs[i].commit_ns;
    return ns / DBM_NS_PER_SEC;
}

/* ---- reading images ---- */

/* Checks what the tar member and dbm_dbimage_pread rely on. */
static int bp_check_image(const struct dbm_dbimage *img)
{
    uint32_t ps = img->page_size;
    size_t n = strnlen(img->name, sizeof(img->name));

    if (!dbm_page_size_valid(ps)) {
        dbm_err("bacpac: %s: page size %" PRIu32 " (expected a power of two from 512 to 65536)",
                img->name, ps);
        return -EINVAL;
    }
    if (n == 0 || n == sizeof(img->name) || memchr(img->name, '/', n) || strcmp(img->name, ".") == 0 ||
        strcmp(img->name, "..") == 0) {
        dbm_err("bacpac: database name \"%.*s\" is not a plain file name", (int)n, img->name);
        return -EINVAL;
    }
    return 0;
}

/* Reads img in batches and passes each to fn(r, data, len), polling cancel
 * between batches. 0 or -errno (the first error of a read, fn or cancel). */
static int bp_scan(struct bp_run *r, const struct dbm_dbimage *img,
                   int (*fn)(struct bp_run *r, const void *data, size_t len))
{
    uint64_t total = bp_image_size(img);

    for (uint64_t off = 0; off < total;) {
        size_t want = total - off < BP_BATCH ? (size_t)(total - off) : BP_BATCH;
        size_t got = 0;
        if (r->cancel && r->cancel(r->arg))
            return -ECANCELED;
        while (got < want) {
            ssize_t n = dbm_dbimage_pread(img, r->buf + got, want - got, off + got, r->scratch);
            if (n < 0)
                return (int)n;
            if (n == 0) {
                dbm_err("bacpac: %s: image ends at byte %" PRIu64 " of %" PRIu64, img->name, off + got,
                        total);
                return -EIO;
            }
            got += (size_t)n;
        }
        int rc = fn(r, r->buf, want);
        if (rc < 0)
            return rc;
        off += want;
    }
    return 0;
}

static int bp_hash_fn(struct bp_run *r, const void *data, size_t len)
{
    return dbm_sha256_update(r->hash, data, len);
}

/* Pass 1: SHA-256 and row counts of every image. */
/* Row counts of every image, run beside the hashing: the two read the same
 * pages, and on two cores each gets one. */
struct bp_counts {
    const struct dbm_bacpac_params *p;
    struct bp_db *dbs;
    int rc;
};

static void *bp_counts_main(void *arg)
{
    struct bp_counts *c = arg;
    for (size_t i = 0; i < c->p->ndbs && c->rc == 0; i++)
        c->rc = dbm_snapview_table_counts(&c->p->dbs[i], &c->dbs[i].tables, &c->dbs[i].ntables);
    return NULL;
}

static int bp_pass1(struct bp_run *r)
{
    for (size_t i = 0; i < r->p->ndbs; i++) {
        int rc = bp_check_image(&r->p->dbs[i]);
        if (rc < 0)
            return rc;
    }
    struct bp_counts c = { .p = r->p, .dbs = r->dbs, .rc = 0 };
    pthread_t th;
    int threaded = r->p->ndbs > 0 && pthread_create(&th, NULL, bp_counts_main, &c) == 0;
    int rc = 0;
    for (size_t i = 0; i < r->p->ndbs && rc == 0; i++) {
        rc = dbm_sha256_reset(r->hash);
        if (rc == 0)
            rc = bp_scan(r, &r->p->dbs[i], bp_hash_fn);
        if (rc == 0)
            rc = dbm_sha256_final(r->hash, r->dbs[i].sha);
    }
    if (threaded)
        pthread_join(th, NULL); /* counts cannot be cancelled: wait for them */
    else
        bp_counts_main(&c);
    if (rc == 0)
        rc = c.rc;
    if (rc < 0)
        return rc;
    return dbm_sha256_reset(r->hash);
}

/* ---- pass 2: tar -> codec -> hash, count, sink ---- */

static int bp_codec_out(void *arg, const void *buf, size_t len)
{
    struct bp_run *r = arg;
    int rc = dbm_sha256_update(r->hash, buf, len);

    if (rc < 0)
        return rc;
    r->out_bytes += len;
    return r->sink(r->arg, buf, len);
}

static int bp_tar_fn(struct bp_run *r, const void *data, size_t len)
{
    r->tar_bytes += len;
    return dbm_codec_write(r->codec, data, len);
}

/* Writes zero bytes until the tar stream is a multiple of unit. */
static int bp_tar_pad(struct bp_run *r, uint64_t unit)
{
    static const unsigned char zeros[BP_BLOCK];
    uint64_t n = bp_pad(r->tar_bytes, unit) - r->tar_bytes;

    while (n) {
        size_t k = n < sizeof(zeros) ? (size_t)n : sizeof(zeros);
        int rc = bp_tar_fn(r, zeros, k);
        if (rc < 0)
            return rc;
        n -= k;
    }
    return 0;
}

/* The end-of-archive marker (two zero blocks), then zeros up to a whole
 * record, as GNU tar writes by default. */
static int bp_tar_end(struct bp_run *r)
{
    static const unsigned char zeros[2 * BP_BLOCK];
    int rc = bp_tar_fn(r, zeros, sizeof(zeros));

    return rc < 0 ? rc : bp_tar_pad(r, BP_RECORD);
}

/* One member: header, data (from mem, or from img when mem is NULL), padding. */
static int bp_member(struct bp_run *r, const char *name, uint64_t mtime, const struct dbm_dbimage *img,
                     const void *mem, uint64_t size)
{
    unsigned char h[BP_BLOCK];
    int rc = tar_header(h, name, size, mtime);

    if (rc == 0)
        rc = bp_tar_fn(r, h, sizeof(h));
    if (rc == 0)
        rc = img ? bp_scan(r, img, bp_tar_fn) : bp_tar_fn(r, mem, (size_t)size);
    if (rc == 0)
        rc = bp_tar_pad(r, BP_BLOCK);
    return rc;
}

static int bp_pass2(struct bp_run *r, const struct bp_text *manifest)
{
    char name[DBM_DBIMAGE_NAME_MAX + 8];
    int rc = dbm_codec_create(r->p->level, bp_codec_out, r, &r->codec);

    if (rc == 0)
        rc = bp_member(r, "manifest.json", manifest_mtime(r->p), NULL, manifest->s, manifest->len);
    for (size_t i = 0; rc == 0 && i < r->p->ndbs; i++) {
        const struct dbm_dbimage *img = &r->p->dbs[i];
        snprintf(name, sizeof(name), "db/%s", img->name);
        rc = bp_member(r, name, img->commit_ns / DBM_NS_PER_SEC, img, NULL, bp_image_size(img));
    }
    if (rc == 0)
        rc = bp_tar_end(r);
    if (rc == 0)
        rc = dbm_codec_end(r->codec);
    return rc;
}

/* ---- the export ---- */

static void bp_run_free(struct bp_run *r)
{
    dbm_codec_destroy(r->codec);
    dbm_sha256_destroy(r->hash);
    for (size_t i = 0; r->dbs && i < r->p->ndbs; i++)
        dbm_table_counts_free(r->dbs[i].tables, r->dbs[i].ntables);
    free(r->dbs);
    free(r->scratch);
    free(r->buf);
}

/* Pass 1, then the manifest and its size check. */
static int bp_prepare(struct bp_run *r, struct bp_text *manifest)
{
    int rc = bp_pass1(r);

    if (rc == 0)
        rc = manifest_build(r->p, r->dbs, manifest);
    if (rc == 0 && manifest->len > manifest_bound(r->p)) {
        dbm_err("bacpac: manifest.json of %zu bytes exceeds its allowance of %" PRIu64
                " bytes (table names too long or too many): export refused",
                manifest->len, manifest_bound(r->p));
        rc = -EFBIG;
    }
    return rc;
}

int dbm_bacpac_produce(const struct dbm_bacpac_params *p, dbm_bacpac_sink sink, void *arg,
                       int (*cancel)(void *arg), uint8_t sha256[32], uint64_t *size)
{
    struct bp_run r = { .p = p, .cancel = cancel, .arg = arg, .sink = sink };
    struct bp_text manifest = { 0 };
    int rc = -ENOMEM;

    r.buf = malloc(BP_BATCH);
    r.scratch = malloc(BP_PAGE_MAX);
    r.dbs = calloc(p->ndbs ? p->ndbs : 1, sizeof(*r.dbs));
    if (!r.buf || !r.scratch || !r.dbs)
        goto free_run;
    rc = dbm_sha256_create(&r.hash);
    if (rc == 0)
        rc = bp_prepare(&r, &manifest);
    if (rc == 0)
        rc = bp_pass2(&r, &manifest);
    if (rc == 0)
        rc = dbm_sha256_final(r.hash, sha256);
    if (rc == 0)
        *size = r.out_bytes;
free_run:
    free(manifest.s);
    bp_run_free(&r);
    return rc;
}

uint64_t dbm_bacpac_size_bound(const struct dbm_bacpac_params *p)
{
    uint64_t tar = BP_BLOCK + bp_pad(manifest_bound(p), BP_BLOCK);

    for (size_t i = 0; i < p->ndbs; i++)
        tar += BP_BLOCK + bp_pad(bp_image_size(&p->dbs[i]), BP_BLOCK);
    tar = bp_pad(tar + 2 * BP_BLOCK, BP_RECORD);
    return dbm_codec_bound(tar);
}
