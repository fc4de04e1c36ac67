/* bacpac.c - see bacpac.h.
 *
 * The manifest (the first member) needs every image's SHA-256 and row
 * counts, which take a read of every page. Waiting for them before
 * compressing would leave a core idle for that whole read, so the two run
 * side by side: a job thread hashes each image, noting each page's b-tree
 * cell count as it goes (btcount.h: the counts then need only the interior
 * pages, not a second read), while the calling thread compresses the
 * database members as the body frame. Body output that arrives before the manifest is complete
 * waits in an unnamed spool file; once the job is done, the manifest member
 * is compressed as the head frame and emitted, then the spool, then the rest
 * of the body as it comes. Output is a zstd stream of two frames (which any
 * zstd decoder reads as one stream, like zstd's own concatenated frames).
 * Every output byte passes bp_emit, in order: hashed, counted, sunk.
 *
 * The tar format is POSIX ustar with fixed fields (mode 0644, uid/gid 0,
 * root/root, mtime = commit time in seconds), so identical images give an
 * identical archive. Sizes and times that do not fit in 11 octal digits
 * (members of 8 GiB and more) use the base-256 form GNU tar and bsdtar read.
 * The archive ends with two zero blocks and is padded to a multiple of the
 * 10240-byte record, like GNU tar's default.
 *
 * Images are read in BP_BATCH-byte batches (page-aligned, so pages land in
 * the batch buffer without a copy); cancel() is polled between batches, by
 * both threads (it must be thread-safe). */
#include "bacpac.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "btcount.h"
#include "codec.h"
#include "crypto.h"
#include "dbimage.h"
#include "sqlproto.h"
#include "log.h"
#include "thread.h"
#include "snapview.h"
#include "sysio.h"
#include "timefmt.h"

#define BP_BATCH (1u << 20)
#define BP_BLOCK 512u
#define BP_RECORD 10240u
#define BP_PAGE_MAX 65536u

/* What the manifest job learns about one image. */
struct bp_db {
    uint8_t sha[DBM_SHA256_LEN];
    struct dbm_table_count *tables; /* owned */
    size_t ntables;
};

struct bp_run;

/* The manifest job: a thread hashing every image and counting its rows. It
 * owns buf, scratch, hash and bt and fills run->dbs; the run reads those
 * only after joining it. */
struct bp_job {
    struct bp_run *r;
    pthread_t th;
    int started, joined;      /* the producing thread's own */
    unsigned char *buf;       /* owned: BP_BATCH bytes */
    void *scratch;            /* owned: BP_PAGE_MAX bytes (partial pages, then btcount's page) */
    struct dbm_sha256 *hash;  /* owned */
    struct dbm_btcount bt;    /* owned: the current image's page notes */
    int noting;               /* bt is in use for this image */
    uint32_t next_pgno;       /* the page the next batch starts with */
    const struct dbm_dbimage *img; /* the current image */
    pthread_mutex_t mu;       /* guards done, stop and rc */
    int done;                 /* rc is final */
    int stop;                 /* the body failed: give up */
    int rc;
};

/* One export in progress (everything but the job belongs to the thread
 * that called dbm_bacpac_produce). */
struct bp_run {
    const struct dbm_bacpac_params *p;
    int (*cancel)(void *arg);
    void *arg;                /* for sink and cancel */
    dbm_bacpac_sink sink;
    unsigned char *buf;       /* owned: BP_BATCH bytes */
    void *scratch;            /* owned: BP_PAGE_MAX bytes for dbm_dbimage_pread */
    struct bp_db *dbs;        /* owned: ndbs entries, filled by the job */
    struct bp_job job;
    struct dbm_sha256 *hash;  /* owned: of the output */
    struct dbm_codec *codec;  /* owned: the body frame's */
    int spool_fd;             /* owned, -1 until needed: body output waiting for the head */
    uint64_t spool_len;
    int head_out;             /* the head frame and the spool have been emitted */
    uint64_t head_tar_bytes;  /* the manifest member's tar bytes, once known */
    uint64_t tar_bytes;       /* body tar bytes written so far */
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

/* Reads img in BP_BATCH-byte batches into buf and passes each to
 * fn(ctx, data, len), calling poll(ctx) before each batch (non-zero: stop
 * with that value). 0 or -errno (the first error of a read, fn or poll). */
static int bp_scan(const struct dbm_dbimage *img, unsigned char *buf, void *scratch, int (*poll)(void *ctx),
                   int (*fn)(void *ctx, const void *data, size_t len), void *ctx)
{
    uint64_t total = bp_image_size(img);

    for (uint64_t off = 0; off < total;) {
        size_t want = total - off < BP_BATCH ? (size_t)(total - off) : BP_BATCH;
        size_t got = 0;
        int rc = poll(ctx);
        if (rc < 0)
            return rc;
        while (got < want) {
            ssize_t n = dbm_dbimage_pread(img, buf + got, want - got, off + got, scratch);
            if (n < 0)
                return (int)n;
            if (n == 0) {
                dbm_err("bacpac: %s: image ends at byte %" PRIu64 " of %" PRIu64, img->name, off + got,
                        total);
                return -EIO;
            }
            got += (size_t)n;
        }
        rc = fn(ctx, buf, want);
        if (rc < 0)
            return rc;
        off += want;
    }
    return 0;
}

/* ---- the manifest job: SHA-256 and row counts, beside the compression ---- */

static int bp_job_poll(void *ctx)
{
    struct bp_job *j = ctx;
    int stop;

    if (j->r->cancel && j->r->cancel(j->r->arg))
        return -ECANCELED;
    pthread_mutex_lock(&j->mu);
    stop = j->stop;
    pthread_mutex_unlock(&j->mu);
    return stop ? -ECANCELED : 0;
}

/* Hashes a batch and notes its pages for the row counts. */
static int bp_job_hash(void *ctx, const void *data, size_t len)
{
    struct bp_job *j = ctx;

    if (j->noting) {
        dbm_btcount_feed(&j->bt, j->next_pgno, data, len);
        j->next_pgno += (uint32_t)(len / j->bt.page_size); /* batches hold whole pages */
    }
    return dbm_sha256_update(j->hash, data, len);
}

static int bp_job_read_page(void *arg, uint32_t pgno, void *buf)
{
    return dbm_dbimage_read_page(arg, pgno, buf);
}

static int bp_job_rows(void *arg, uint32_t root, uint64_t *rows)
{
    struct bp_job *j = arg;

    return dbm_btcount_rows(&j->bt, root, bp_job_read_page, (void *)j->img, j->scratch, rows);
}

/* Image i: its SHA-256, then its row counts, from the notes the hashing
 * took (reading interior pages only) or, for a database too large to note,
 * with SQL. */
static int bp_job_image(struct bp_job *j, size_t i)
{
    const struct dbm_dbimage *img = &j->r->p->dbs[i];
    struct bp_db *d = &j->r->dbs[i];
    int rc = dbm_btcount_init(&j->bt, img->db_pages, img->page_size);

    if (rc < 0 && rc != -E2BIG)
        return rc;
    j->noting = rc == 0;
    j->next_pgno = 1;
    j->img = img;
    rc = dbm_sha256_reset(j->hash);
    if (rc == 0)
        rc = bp_scan(img, j->buf, j->scratch, bp_job_poll, bp_job_hash, j);
    if (rc == 0)
        rc = dbm_sha256_final(j->hash, d->sha);
    if (rc == 0)
        rc = bp_job_poll(j);
    if (rc == 0)
        rc = dbm_snapview_table_counts_by(img, j->noting ? bp_job_rows : NULL, j, &d->tables, &d->ntables);
    dbm_btcount_free(&j->bt);
    j->noting = 0;
    return rc;
}

static void *bp_job_main(void *arg)
{
    struct bp_job *j = arg;
    int rc = 0;

    for (size_t i = 0; i < j->r->p->ndbs && rc == 0; i++)
        rc = bp_job_image(j, i);
    pthread_mutex_lock(&j->mu);
    j->rc = rc;
    j->done = 1;
    pthread_mutex_unlock(&j->mu);
    return NULL;
}

static int bp_job_start(struct bp_job *j)
{
    int rc;

    j->buf = malloc(BP_BATCH);
    j->scratch = malloc(BP_PAGE_MAX);
    if (!j->buf || !j->scratch)
        return -ENOMEM;
    rc = dbm_sha256_create(&j->hash);
    if (rc < 0)
        return rc;
    rc = dbm_thread_start(&j->th, "dbm-bacpac", bp_job_main, j);
    if (rc < 0) {
        dbm_err("bacpac: cannot start a thread: %s", strerror(-rc));
        return rc;
    }
    j->started = 1;
    return 0;
}

/* 1 once the job has finished (its result is then final), else 0. */
static int bp_job_done(struct bp_job *j)
{
    pthread_mutex_lock(&j->mu);
    int done = j->done;
    pthread_mutex_unlock(&j->mu);
    return done;
}

/* Waits for the job; returns its result. stop asks it to give up first. */
static int bp_job_join(struct bp_job *j, int stop)
{
    if (!j->started)
        return -ECANCELED;
    if (!j->joined) {
        pthread_mutex_lock(&j->mu);
        j->stop |= stop;
        pthread_mutex_unlock(&j->mu);
        pthread_join(j->th, NULL);
        j->joined = 1;
    }
    return j->rc;
}

static void bp_job_free(struct bp_job *j)
{
    if (j->started)
        bp_job_join(j, 1);
    dbm_sha256_destroy(j->hash);
    free(j->scratch);
    free(j->buf);
}

/* ---- output: the head frame, the spool, the sink ---- */

/* Every byte of the stream passes here, in order: hashed, counted, sunk. */
static int bp_emit(void *arg, const void *buf, size_t len)
{
    struct bp_run *r = arg;
    int rc = dbm_sha256_update(r->hash, buf, len);

    if (rc < 0)
        return rc;
    r->out_bytes += len;
    return r->sink(r->arg, buf, len);
}

/* An unnamed file in spool_dir (or /tmp), gone when closed. */
static int bp_spool_open(struct bp_run *r)
{
    const char *d = r->p->spool_dir ? r->p->spool_dir : "/tmp";
    int fd = open(d, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);

    if (fd < 0 && (errno == EOPNOTSUPP || errno == EISDIR)) { /* no O_TMPFILE there */
        char path[PATH_MAX];
        snprintf(path, sizeof(path), "%s/.bacpac-spool-XXXXXX", d);
        fd = mkostemp(path, O_CLOEXEC);
        if (fd >= 0)
            unlink(path);
    }
    if (fd < 0) {
        int e = errno;
        dbm_err("bacpac: cannot create a spool file in %s: %s", d, strerror(e));
        return -e;
    }
    r->spool_fd = fd;
    return 0;
}

static int bp_spool_add(struct bp_run *r, const void *buf, size_t len)
{
    int rc = r->spool_fd < 0 ? bp_spool_open(r) : 0;

    if (rc == 0)
        rc = dbm_pwrite_all(r->spool_fd, buf, len, (off_t)r->spool_len);
    if (rc == 0)
        r->spool_len += len;
    else
        dbm_err("bacpac: writing the spool file: %s", strerror(-rc));
    return rc;
}

/* Emits the spool (through buf, BP_BATCH bytes) and closes it. */
static int bp_spool_drain(struct bp_run *r, unsigned char *buf)
{
    for (uint64_t off = 0; off < r->spool_len;) {
        size_t want = r->spool_len - off < BP_BATCH ? (size_t)(r->spool_len - off) : BP_BATCH;
        ssize_t n = dbm_pread_all(r->spool_fd, buf, want, (off_t)off);
        if (n != (ssize_t)want) {
            int rc = n < 0 ? (int)n : -EIO;
            dbm_err("bacpac: reading the spool file back: %s", strerror(-rc));
            return rc;
        }
        int rc = bp_emit(r, buf, want);
        if (rc < 0)
            return rc;
        off += want;
    }
    if (r->spool_fd >= 0)
        close(r->spool_fd);
    r->spool_fd = -1;
    return 0;
}

/* The head frame: the manifest member, compressed on its own. */
static int bp_head_frame(struct bp_run *r, const struct bp_text *m)
{
    static const unsigned char zeros[BP_BLOCK];
    unsigned char h[BP_BLOCK];
    struct dbm_codec *c = NULL;
    int rc = tar_header(h, "manifest.json", m->len, manifest_mtime(r->p));

    if (rc == 0)
        rc = dbm_codec_create(r->p->level, bp_emit, r, &c);
    if (rc == 0)
        rc = dbm_codec_write(c, h, sizeof(h));
    if (rc == 0)
        rc = dbm_codec_write(c, m->s, m->len);
    if (rc == 0)
        rc = dbm_codec_write(c, zeros, (size_t)(bp_pad(m->len, BP_BLOCK) - m->len));
    if (rc == 0)
        rc = dbm_codec_end(c);
    dbm_codec_destroy(c);
    r->head_tar_bytes = BP_BLOCK + bp_pad(m->len, BP_BLOCK);
    return rc;
}

/* Once the manifest job is done (waiting for it if wait): the manifest, its
 * size check, the head frame, then what the body spooled meanwhile. After
 * this, body output goes straight to the sink. */
static int bp_head(struct bp_run *r, int wait)
{
    struct bp_text m = { 0 };
    int rc;

    if (r->head_out || (!wait && !bp_job_done(&r->job)))
        return 0;
    rc = bp_job_join(&r->job, 0);
    if (rc == 0)
        rc = manifest_build(r->p, r->dbs, &m);
    if (rc == 0 && m.len > manifest_bound(r->p)) {
        dbm_err("bacpac: manifest.json of %zu bytes exceeds its allowance of %" PRIu64
                " bytes (table names too long or too many): export refused",
                m.len, manifest_bound(r->p));
        rc = -EFBIG;
    }
    if (rc == 0)
        rc = bp_head_frame(r, &m);
    if (rc == 0)
        rc = bp_spool_drain(r, r->job.buf); /* the job is over: its buffer is free */
    if (rc == 0)
        r->head_out = 1;
    free(m.s);
    return rc;
}

/* The body codec's output: spooled until the head frame is out. */
static int bp_body_out(void *arg, const void *buf, size_t len)
{
    struct bp_run *r = arg;
    int rc = bp_head(r, 0);

    if (rc < 0)
        return rc;
    return r->head_out ? bp_emit(r, buf, len) : bp_spool_add(r, buf, len);
}

/* ---- the body: tar members of the images -> codec ---- */

static int bp_body_poll(void *ctx)
{
    struct bp_run *r = ctx;

    if (r->cancel && r->cancel(r->arg))
        return -ECANCELED;
    if (bp_job_done(&r->job) && r->job.rc < 0)
        return r->job.rc; /* rc is final once done */
    return 0;
}

static int bp_tar_fn(void *ctx, const void *data, size_t len)
{
    struct bp_run *r = ctx;

    r->tar_bytes += len;
    return dbm_codec_write(r->codec, data, len);
}

/* Writes zero bytes until the whole archive (head member included) is a
 * multiple of unit. */
static int bp_tar_pad(struct bp_run *r, uint64_t unit)
{
    static const unsigned char zeros[BP_BLOCK];
    uint64_t all = r->head_tar_bytes + r->tar_bytes;
    uint64_t n = bp_pad(all, unit) - all;

    while (n) {
        size_t k = n < sizeof(zeros) ? (size_t)n : sizeof(zeros);
        int rc = bp_tar_fn(r, zeros, k);
        if (rc < 0)
            return rc;
        n -= k;
    }
    return 0;
}

/* One member: header, the image, padding to a block. */
static int bp_member(struct bp_run *r, const struct dbm_dbimage *img)
{
    char name[DBM_DBIMAGE_NAME_MAX + 8];
    unsigned char h[BP_BLOCK];
    uint64_t size = bp_image_size(img);
    int rc;

    snprintf(name, sizeof(name), "db/%s", img->name);
    rc = tar_header(h, name, size, img->commit_ns / DBM_NS_PER_SEC);
    if (rc == 0)
        rc = bp_tar_fn(r, h, sizeof(h));
    if (rc == 0)
        rc = bp_scan(img, r->buf, r->scratch, bp_body_poll, bp_tar_fn, r);
    if (rc == 0)
        rc = bp_tar_pad(r, BP_BLOCK);
    return rc;
}

/* The body frame: every image, then the end-of-archive marker (two zero
 * blocks) and zeros up to a whole 10240-byte record, as GNU tar writes by
 * default. The record padding counts the head member, so the head must be
 * out (or at least its size known) first. */
static int bp_body(struct bp_run *r)
{
    static const unsigned char zeros[2 * BP_BLOCK];
    int rc = dbm_codec_create(r->p->level, bp_body_out, r, &r->codec);

    for (size_t i = 0; rc == 0 && i < r->p->ndbs; i++)
        rc = bp_member(r, &r->p->dbs[i]);
    if (rc == 0)
        rc = bp_head(r, 1);
    if (rc == 0)
        rc = bp_tar_fn(r, zeros, sizeof(zeros));
    if (rc == 0)
        rc = bp_tar_pad(r, BP_RECORD);
    if (rc == 0)
        rc = dbm_codec_end(r->codec);
    return rc;
}

/* ---- the export ---- */

static void bp_run_free(struct bp_run *r)
{
    bp_job_free(&r->job); /* stops and joins it first: it uses r->dbs */
    pthread_mutex_destroy(&r->job.mu);
    dbm_codec_destroy(r->codec);
    dbm_sha256_destroy(r->hash);
    if (r->spool_fd >= 0)
        close(r->spool_fd);
    for (size_t i = 0; r->dbs && i < r->p->ndbs; i++)
        dbm_table_counts_free(r->dbs[i].tables, r->dbs[i].ntables);
    free(r->dbs);
    free(r->scratch);
    free(r->buf);
}

int dbm_bacpac_produce(const struct dbm_bacpac_params *p, dbm_bacpac_sink sink, void *arg,
                       int (*cancel)(void *arg), uint8_t sha256[32], uint64_t *size)
{
    struct bp_run r = { .p = p, .cancel = cancel, .arg = arg, .sink = sink, .spool_fd = -1 };
    int rc = -ENOMEM;

    r.job.r = &r;
    pthread_mutex_init(&r.job.mu, NULL);
    for (size_t i = 0; i < p->ndbs; i++) {
        rc = bp_check_image(&p->dbs[i]);
        if (rc < 0)
            goto free_run;
    }
    rc = -ENOMEM;
    r.buf = malloc(BP_BATCH);
    r.scratch = malloc(BP_PAGE_MAX);
    r.dbs = calloc(p->ndbs ? p->ndbs : 1, sizeof(*r.dbs));
    if (!r.buf || !r.scratch || !r.dbs)
        goto free_run;
    rc = dbm_sha256_create(&r.hash);
    if (rc == 0)
        rc = bp_job_start(&r.job);
    if (rc == 0)
        rc = bp_body(&r);
    if (rc == 0)
        rc = dbm_sha256_final(r.hash, sha256);
    if (rc == 0)
        *size = r.out_bytes;
free_run:
    bp_run_free(&r);
    return rc;
}

uint64_t dbm_bacpac_size_bound(const struct dbm_bacpac_params *p)
{
    uint64_t head = BP_BLOCK + bp_pad(manifest_bound(p), BP_BLOCK), body = 2 * BP_BLOCK + BP_RECORD;

    for (size_t i = 0; i < p->ndbs; i++)
        body += BP_BLOCK + bp_pad(bp_image_size(&p->dbs[i]), BP_BLOCK);
    return dbm_codec_bound(head) + dbm_codec_bound(body);
}
