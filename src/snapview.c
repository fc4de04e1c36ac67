/* snapview.c - see snapview.h.
 *
 * SQLite reads the image through a read-only VFS, "dbmovefs-snap", registered
 * once and never made the default. Each call opens its own connection with
 *   file:/dbmovefs-snap?ptr=<hex address of a struct snap_ctx>&immutable=1
 * so the context travels in the file name: no registry, no lock, and any
 * number of threads can read different images at once (a connection is used
 * by the thread that opened it only). immutable=1 tells SQLite that nothing
 * changes the file: it takes no locks and looks for no journal or WAL.
 * Temporary files (sorts, temp store) go to the default VFS.
 *
 * A page that fails to read is recorded in the context: the call then
 * returns that errno (-EIO) whatever SQLite made of it, since some statements
 * (integrity_check) turn an unreadable page into a row of text. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dbimage.h"
#include "log.h"
#include "snapview.h"
#include "sqlproto.h"
#include "strutil.h"

#define SNAP_VFS_NAME "dbmovefs-snap"
#define SNAP_CTX_MAGIC 0x736e6170u /* "snap" */

/* One call's view of one image. Touched only by the calling thread. */
struct snap_ctx {
    uint32_t magic;
    const struct dbm_dbimage *img; /* borrowed */
    int read_err;                  /* first page-read failure (-errno), logged once */
};

/* The main database file. Temporary files are the default VFS's and never
 * take this shape (szOsFile covers both). */
struct snap_file {
    sqlite3_file base;
    struct snap_ctx *ctx;
    unsigned char *scratch; /* one page, for reads that do not cover a whole page */
};

static sqlite3_vfs snap_vfs;
static sqlite3_vfs *dflt_vfs; /* set once by vfs_register, read-only after */
static int vfs_register_rc;
static pthread_once_t vfs_once = PTHREAD_ONCE_INIT;

/* ---- the database file ---- */

static int file_close(sqlite3_file *f)
{
    struct snap_file *sf = (struct snap_file *)f;
    free(sf->scratch);
    sf->scratch = NULL;
    return SQLITE_OK;
}

/* Serves any range through dbm_dbimage_pread (checksummed pages, the page-1
 * rollback-format rewrite); past the end the rest is zeros and SQLite is told
 * it was a short read, as the VFS contract requires. A failing page fails the
 * read and is logged once per open. */
static int file_read(sqlite3_file *f, void *buf, int amt, sqlite3_int64 ofst)
{
    struct snap_file *sf = (struct snap_file *)f;
    const struct dbm_dbimage *img = sf->ctx->img;
    size_t size = amt > 0 ? (size_t)amt : 0;
    if (ofst < 0)
        return SQLITE_IOERR_READ;
    ssize_t n = dbm_dbimage_pread(img, buf, size, (uint64_t)ofst, sf->scratch);
    if (n < 0) {
        if (sf->ctx->read_err == 0) {
            sf->ctx->read_err = (int)n;
            dbm_err("snapview: %s (txid %" PRIu64 "): read at offset %lld: %s", img->name, img->txid,
                    (long long)ofst, strerror((int)-n));
        }
        return SQLITE_IOERR_READ;
    }
    if ((size_t)n < size) {
        memset((unsigned char *)buf + n, 0, size - (size_t)n);
        return SQLITE_IOERR_SHORT_READ;
    }
    return SQLITE_OK;
}

static int file_write(sqlite3_file *f, const void *buf, int amt, sqlite3_int64 ofst)
{
    return SQLITE_READONLY;
}

static int file_truncate(sqlite3_file *f, sqlite3_int64 size)
{
    return SQLITE_READONLY;
}

static int file_sync(sqlite3_file *f, int flags)
{
    return SQLITE_READONLY;
}

static int file_size(sqlite3_file *f, sqlite3_int64 *size)
{
    const struct dbm_dbimage *img = ((struct snap_file *)f)->ctx->img;
    *size = (sqlite3_int64)((uint64_t)img->page_size * img->db_pages);
    return SQLITE_OK;
}

/* Nothing can change the image: locks are no-ops. */
static int file_lock(sqlite3_file *f, int level)
{
    return SQLITE_OK;
}

static int file_check_reserved(sqlite3_file *f, int *res)
{
    *res = 0;
    return SQLITE_OK;
}

static int file_control(sqlite3_file *f, int op, void *arg)
{
    return SQLITE_NOTFOUND;
}

static int file_sector_size(sqlite3_file *f)
{
    return 4096;
}

static int file_device_characteristics(sqlite3_file *f)
{
    return SQLITE_IOCAP_IMMUTABLE;
}

/* Version 1: no shared memory (images are rollback-format) and no mmap. */
static const sqlite3_io_methods snap_io = {
    .iVersion = 1,
    .xClose = file_close,
    .xRead = file_read,
    .xWrite = file_write,
    .xTruncate = file_truncate,
    .xSync = file_sync,
    .xFileSize = file_size,
    .xLock = file_lock,
    .xUnlock = file_lock,
    .xCheckReservedLock = file_check_reserved,
    .xFileControl = file_control,
    .xSectorSize = file_sector_size,
    .xDeviceCharacteristics = file_device_characteristics,
};

/* ---- the VFS ---- */

/* The context named by the "ptr" URI parameter, or NULL. */
static struct snap_ctx *vfs_ctx_of(const char *name)
{
    const char *p = sqlite3_uri_parameter(name, "ptr");
    if (!p || !*p)
        return NULL;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(p, &end, 16);
    if (errno || *end || v == 0)
        return NULL;
    struct snap_ctx *ctx = (struct snap_ctx *)(uintptr_t)v;
    return ctx->magic == SNAP_CTX_MAGIC ? ctx : NULL;
}

static int vfs_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f, int flags, int *out_flags)
{
    struct snap_file *sf = (struct snap_file *)f;
    int kind = flags & (SQLITE_OPEN_MAIN_DB | SQLITE_OPEN_MAIN_JOURNAL | SQLITE_OPEN_WAL |
                        SQLITE_OPEN_SUPER_JOURNAL);
    f->pMethods = NULL;
    if (kind == 0) /* temp db, temp journal, subjournal, transient db */
        return dflt_vfs->xOpen(dflt_vfs, name, f, flags, out_flags);
    if (kind != SQLITE_OPEN_MAIN_DB || !name)
        return SQLITE_CANTOPEN;

    struct snap_ctx *ctx = vfs_ctx_of(name);
    if (!ctx)
        return SQLITE_CANTOPEN;
    sf->ctx = ctx;
    sf->scratch = malloc(ctx->img->page_size);
    if (!sf->scratch)
        return SQLITE_NOMEM;
    f->pMethods = &snap_io;
    if (out_flags)
        *out_flags = (flags & ~(SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE)) | SQLITE_OPEN_READONLY;
    return SQLITE_OK;
}

static int vfs_delete(sqlite3_vfs *vfs, const char *name, int sync_dir)
{
    return SQLITE_IOERR_DELETE;
}

/* No journal, WAL or anything else exists next to an image. */
static int vfs_access(sqlite3_vfs *vfs, const char *name, int flags, int *res)
{
    *res = 0;
    return SQLITE_OK;
}

static int vfs_full_pathname(sqlite3_vfs *vfs, const char *name, int n, char *out)
{
    if ((int)strlen(name) >= n)
        return SQLITE_CANTOPEN;
    strcpy(out, name);
    return SQLITE_OK;
}

static void *vfs_dlopen(sqlite3_vfs *vfs, const char *path)
{
    return dflt_vfs->xDlOpen(dflt_vfs, path);
}

static void vfs_dlerror(sqlite3_vfs *vfs, int n, char *msg)
{
    dflt_vfs->xDlError(dflt_vfs, n, msg);
}

static void (*vfs_dlsym(sqlite3_vfs *vfs, void *h, const char *sym))(void)
{
    return dflt_vfs->xDlSym(dflt_vfs, h, sym);
}

static void vfs_dlclose(sqlite3_vfs *vfs, void *h)
{
    dflt_vfs->xDlClose(dflt_vfs, h);
}

static int vfs_randomness(sqlite3_vfs *vfs, int n, char *out)
{
    return dflt_vfs->xRandomness(dflt_vfs, n, out);
}

static int vfs_sleep(sqlite3_vfs *vfs, int us)
{
    return dflt_vfs->xSleep(dflt_vfs, us);
}

static int vfs_current_time(sqlite3_vfs *vfs, double *t)
{
    return dflt_vfs->xCurrentTime(dflt_vfs, t);
}

static int vfs_get_last_error(sqlite3_vfs *vfs, int n, char *msg)
{
    return dflt_vfs->xGetLastError ? dflt_vfs->xGetLastError(dflt_vfs, n, msg) : 0;
}

static int vfs_current_time_int64(sqlite3_vfs *vfs, sqlite3_int64 *t)
{
    if (dflt_vfs->iVersion >= 2 && dflt_vfs->xCurrentTimeInt64)
        return dflt_vfs->xCurrentTimeInt64(dflt_vfs, t);
    double d;
    int rc = dflt_vfs->xCurrentTime(dflt_vfs, &d);
    *t = (sqlite3_int64)(d * 86400000.0);
    return rc;
}

static void vfs_register(void)
{
    dflt_vfs = sqlite3_vfs_find(NULL);
    if (!dflt_vfs) {
        vfs_register_rc = SQLITE_ERROR;
        return;
    }
    int sz = (int)sizeof(struct snap_file);
    snap_vfs = (sqlite3_vfs){
        .iVersion = 2,
        .szOsFile = dflt_vfs->szOsFile > sz ? dflt_vfs->szOsFile : sz,
        .mxPathname = dflt_vfs->mxPathname > 0 ? dflt_vfs->mxPathname : 512,
        .zName = SNAP_VFS_NAME,
        .xOpen = vfs_open,
        .xDelete = vfs_delete,
        .xAccess = vfs_access,
        .xFullPathname = vfs_full_pathname,
        .xDlOpen = vfs_dlopen,
        .xDlError = vfs_dlerror,
        .xDlSym = vfs_dlsym,
        .xDlClose = vfs_dlclose,
        .xRandomness = vfs_randomness,
        .xSleep = vfs_sleep,
        .xCurrentTime = vfs_current_time,
        .xGetLastError = vfs_get_last_error,
        .xCurrentTimeInt64 = vfs_current_time_int64,
    };
    vfs_register_rc = sqlite3_vfs_register(&snap_vfs, 0);
}

/* ---- connections ---- */

/* Maps an SQLite failure to -errno. A page-read failure wins (it was logged
 * where it happened); otherwise SQLite's message is logged here, once. */
static int view_error(const struct snap_ctx *ctx, sqlite3 *db, int rc, const char *what)
{
    if (ctx->read_err)
        return ctx->read_err;
    dbm_err("snapview: %s (txid %" PRIu64 "): %s: %s", ctx->img->name, ctx->img->txid, what,
            db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
    switch (rc & 0xff) {
    case SQLITE_NOMEM: return -ENOMEM;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
    case SQLITE_FORMAT:
    case SQLITE_ERROR: /* a schema this SQLite cannot read */
    case SQLITE_RANGE: return -EINVAL;
    case SQLITE_BUSY:
    case SQLITE_LOCKED: return -EBUSY;
    default: return -EIO; /* SQLITE_IOERR and anything unexpected */
    }
}

/* Opens a read-only connection on img through ctx (initialised here, must
 * outlive *dbp) and begins a read transaction so that every statement sees
 * the same pages without re-reading the header. 0 or -errno; on failure
 * *dbp is NULL. */
static int view_open(const struct dbm_dbimage *img, struct snap_ctx *ctx, sqlite3 **dbp)
{
    char uri[96];
    sqlite3 *db = NULL;
    int rc;

    *dbp = NULL;
    *ctx = (struct snap_ctx){.magic = SNAP_CTX_MAGIC, .img = img};
    if (!dbm_page_size_valid(img->page_size)) {
        dbm_err("snapview: %s (txid %" PRIu64 "): page size %" PRIu32
                " is not a power of two between 512 and 65536",
                img->name, img->txid, img->page_size);
        return -EINVAL;
    }
    pthread_once(&vfs_once, vfs_register);
    if (vfs_register_rc != SQLITE_OK) {
        dbm_err("snapview: cannot register the SQLite VFS: %s", sqlite3_errstr(vfs_register_rc));
        return -ENOMEM;
    }
    snprintf(uri, sizeof uri, "file:/" SNAP_VFS_NAME "?ptr=%" PRIxPTR "&immutable=1", (uintptr_t)ctx);
    rc = sqlite3_open_v2(uri, &db,
                         SQLITE_OPEN_READONLY | SQLITE_OPEN_URI | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_PRIVATECACHE,
                         SNAP_VFS_NAME);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        int err = view_error(ctx, db, rc, "open");
        sqlite3_close(db);
        return err;
    }
    *dbp = db;
    return 0;
}

static void view_close(sqlite3 *db)
{
    if (!db)
        return;
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    sqlite3_close(db);
}

/* ---- table counts ---- */

void dbm_table_counts_free(struct dbm_table_count *v, size_t n)
{
    if (!v)
        return;
    for (size_t i = 0; i < n; i++)
        free(v[i].name);
    free(v);
}

/* Appends a copy of name to *v (count *n, capacity *cap). 0 or -ENOMEM. */
static int counts_push(struct dbm_table_count **v, size_t *n, size_t *cap, const char *name, uint32_t root)
{
    if (dbm_grow((void **)v, cap, *n + 1, sizeof **v) < 0)
        return -ENOMEM;
    char *copy = strdup(name);
    if (!copy)
        return -ENOMEM;
    (*v)[(*n)++] = (struct dbm_table_count){.name = copy, .rows = 0, .root = root};
    return 0;
}

/* The names and root pages of the ordinary tables, rows not yet counted.
 * 0 or -errno. */
static int list_tables(const struct snap_ctx *ctx, sqlite3 *db, struct dbm_table_count **out, size_t *nout)
{
    static const char sql[] = "SELECT name, rootpage FROM sqlite_schema WHERE type = 'table'"
                               " AND sql NOT LIKE 'CREATE VIRTUAL%' ORDER BY name";
    struct dbm_table_count *v = NULL;
    size_t n = 0, cap = 0;
    sqlite3_stmt *st = NULL;
    int err = 0, rc;

    rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        if (!name) {
            rc = SQLITE_NOMEM;
            break;
        }
        sqlite3_int64 root = sqlite3_column_int64(st, 1);
        if ((err = counts_push(&v, &n, &cap, name, root > 0 && root <= UINT32_MAX ? (uint32_t)root : 0)) < 0)
            break;
        rc = SQLITE_OK;
    }
    if (err == 0 && rc != SQLITE_DONE)
        err = view_error(ctx, db, rc, "listing tables");
    sqlite3_finalize(st);
    if (err < 0) {
        dbm_table_counts_free(v, n);
        return err;
    }
    *out = v;
    *nout = n;
    return 0;
}

/* SELECT count(*) of one table, its name quoted as an identifier. 0 or -errno. */
static int count_rows(const struct snap_ctx *ctx, sqlite3 *db, const char *name, uint64_t *rows)
{
    char *sql = sqlite3_mprintf("SELECT count(*) FROM main.\"%w\"", name);
    sqlite3_stmt *st = NULL;
    int rc;

    if (!sql)
        return -ENOMEM;
    rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    sqlite3_free(sql);
    if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        *rows = (uint64_t)sqlite3_column_int64(st, 0);
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_OK || ctx->read_err) {
        char what[128];
        snprintf(what, sizeof what, "counting rows of \"%.100s\"", name);
        return view_error(ctx, db, rc, what);
    }
    return 0;
}

static int count_cmp(const void *a, const void *b)
{
    /* strcmp compares as unsigned char: memcmp order, shorter name first. */
    return strcmp(((const struct dbm_table_count *)a)->name, ((const struct dbm_table_count *)b)->name);
}

int dbm_snapview_table_counts(const struct dbm_dbimage *img, struct dbm_table_count **out, size_t *n)
{
    return dbm_snapview_table_counts_by(img, NULL, NULL, out, n);
}

int dbm_snapview_table_counts_by(const struct dbm_dbimage *img, dbm_rows_at_root fast, void *arg,
                                 struct dbm_table_count **out, size_t *n)
{
    struct snap_ctx ctx;
    struct dbm_table_count *v = NULL;
    size_t cnt = 0;
    sqlite3 *db;
    int err;

    *out = NULL;
    *n = 0;
    err = view_open(img, &ctx, &db);
    if (err < 0)
        return err;
    err = list_tables(&ctx, db, &v, &cnt);
    for (size_t i = 0; err == 0 && i < cnt; i++) {
        err = fast && v[i].root ? fast(arg, v[i].root, &v[i].rows) : -ENOTSUP;
        if (err == -ENOTSUP)
            err = count_rows(&ctx, db, v[i].name, &v[i].rows);
    }
    view_close(db);
    if (err < 0) {
        dbm_table_counts_free(v, cnt);
        return err;
    }
    if (cnt > 1)
        qsort(v, cnt, sizeof *v, count_cmp);
    *out = v;
    *n = cnt;
    return 0;
}

/* ---- integrity ---- */

/* The first message of integrity_check's report, which SQLite gives as one
 * row "*** in database main ***\nmsg1\nmsg2...": *len bytes from the result. */
static const char *first_message(const char *report, int *len)
{
    const char *s = report;
    if (strncmp(s, "*** in database ", 16) == 0 && strchr(s, '\n'))
        s = strchr(s, '\n') + 1;
    const char *nl = strchr(s, '\n');
    *len = (int)(nl ? (size_t)(nl - s) : strlen(s));
    return s;
}

int dbm_snapview_integrity(const struct dbm_dbimage *img, char *msg, size_t msgsz)
{
    struct snap_ctx ctx;
    sqlite3_stmt *st = NULL;
    sqlite3 *db;
    const char *first = NULL;
    int err, rc;

    if (msg && msgsz)
        msg[0] = '\0';
    err = view_open(img, &ctx, &db);
    if (err < 0)
        return err;
    rc = sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL);
    if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        first = (const char *)sqlite3_column_text(st, 0);
        rc = first ? SQLITE_OK : SQLITE_NOMEM;
    }
    if (rc != SQLITE_OK || ctx.read_err) {
        err = view_error(&ctx, db, rc, "integrity check");
    } else if (strcmp(first, "ok") != 0) {
        int len;
        first = first_message(first, &len);
        dbm_err("snapview: %s (txid %" PRIu64 "): integrity check: %.*s", img->name, img->txid, len, first);
        if (msg && msgsz)
            snprintf(msg, msgsz, "%.*s", len, first);
        err = -EINVAL;
    }
    sqlite3_finalize(st);
    view_close(db);
    return err;
}
