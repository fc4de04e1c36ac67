/* exports.c - see exports.h. */
#include "exports.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bacpac.h"
#include "crypto.h"
#include "log.h"
#include "thread.h"
#include "snapshot.h"
#include "strutil.h"
#include "sysio.h"
#include "timefmt.h"

#define KEY_LEN 32 /* hex characters of the key used in file names */

/* Cache files: <key>.bacpac (a complete export), <key>.sha256 (its checksum
 * and size), <key>.bacpac.part (a production in progress). */
#define SUFFIX_DATA ".bacpac"
#define SUFFIX_SUM ".sha256"
#define SUFFIX_PART ".bacpac.part"

struct cache_name {
    char s[KEY_LEN + 16];
};

static struct cache_name cache_name(const char *key, const char *suffix)
{
    struct cache_name n;
    snprintf(n.s, sizeof n.s, "%s%s", key, suffix);
    return n;
}

struct dbm_export {
    struct dbm_exports *x;
    char key[KEY_LEN + 1];
    char label[96];              /* "prod@20261120T103200Z" for status */
    int refs;                    /* under x->mu */
    pthread_mutex_t mu;          /* protects the fields below */
    pthread_cond_t cv;           /* produced grew, or production ended */
    int fd;                      /* the .part file while producing, then the cached file */
    int producing, done, error;  /* error: -errno of a failed production */
    uint64_t produced, bound, size;
    char sha[DBM_SHA256_HEX_LEN + 1];
    uint64_t last_use_ns;        /* for LRU */
    int cancel;
    pthread_t thread;            /* detached; producing says whether it runs */
    struct dbm_snapshot *snap;   /* held while producing */
};

struct dbm_exports {
    char *dir;
    int dirfd;
    uint64_t bound;
    pthread_mutex_t mu;          /* protects v, n, and each export's refs */
    struct dbm_export **v;
    size_t n, cap;
    uint64_t produced_total;
};

/* What bacpac produces snap's export from. The level is part of the
 * export's identity (same state, same bytes): never vary it. Output waiting
 * for the manifest is spooled in the cache directory, beside the export. */
static struct dbm_bacpac_params params_of(const struct dbm_exports *x, const struct dbm_snapshot *s)
{
    struct dbm_bacpac_params p = { .env = s->env, .env_type = s->env_type, .instant_ns = s->canonical_ns,
                                   .dbs = s->dbs, .ndbs = s->n, .level = 3, .spool_dir = x->dir };
    return p;
}

static int key_of(const struct dbm_snapshot *s, char key[KEY_LEN + 1])
{
    struct dbm_sbuf b = { 0 };
    dbm_sbuf_printf(&b, "bacpac-v2\n%s\n%s\n", s->env, s->env_type);
    for (size_t i = 0; i < s->n; i++)
        dbm_sbuf_printf(&b, "%s\n%llu\n%llu\n", s->dbs[i].name, (unsigned long long)s->dbs[i].timeline,
                        (unsigned long long)s->dbs[i].txid);
    if (!dbm_sbuf_ok(&b)) {
        dbm_sbuf_free(&b);
        return -ENOMEM;
    }
    struct dbm_sha256 *h;
    uint8_t md[DBM_SHA256_LEN];
    char hex[DBM_SHA256_HEX_LEN + 1];
    int rc = dbm_sha256_create(&h);
    if (rc == 0 && (rc = dbm_sha256_update(h, b.buf, b.len)) == 0 && (rc = dbm_sha256_final(h, md)) == 0) {
        dbm_crypto_hex(md, DBM_SHA256_LEN, hex);
        memcpy(key, hex, KEY_LEN);
        key[KEY_LEN] = '\0';
    }
    dbm_sha256_destroy(h);
    dbm_sbuf_free(&b);
    return rc;
}

int dbm_exports_open(const char *cache_dir, uint64_t bound_bytes, struct dbm_exports **out)
{
    struct dbm_exports *x = calloc(1, sizeof *x);
    if (!x)
        return -ENOMEM;
    pthread_mutex_init(&x->mu, NULL);
    x->bound = bound_bytes;
    x->dirfd = -1;
    int rc;
    if (!(x->dir = strdup(cache_dir))) {
        rc = -ENOMEM;
        goto fail;
    }
    if (mkdir(cache_dir, 0750) < 0 && errno != EEXIST) {
        rc = -errno;
        goto fail;
    }
    if ((x->dirfd = open(cache_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
        rc = -errno;
        goto fail;
    }
    /* productions cut short by a previous run are worthless */
    DIR *d = fdopendir(dup(x->dirfd));
    struct dirent *de;
    while (d && (de = readdir(d)))
        if (strstr(de->d_name, SUFFIX_PART))
            unlinkat(x->dirfd, de->d_name, 0);
    if (d)
        closedir(d);
    *out = x;
    return 0;
fail:
    dbm_exports_close(x);
    return rc;
}

static void export_free(struct dbm_export *e)
{
    if (e->fd >= 0)
        close(e->fd);
    dbm_snapshot_put(e->snap);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    free(e);
}

void dbm_exports_close(struct dbm_exports *x)
{
    if (!x)
        return;
    /* cancel every production, then wait for the producers to let go (they
     * take x->mu at their end, so no lock is held while waiting) */
    for (int busy = 1; busy;) {
        busy = 0;
        pthread_mutex_lock(&x->mu);
        for (size_t i = 0; i < x->n; i++) {
            pthread_mutex_lock(&x->v[i]->mu);
            x->v[i]->cancel = 1;
            busy |= x->v[i]->producing;
            pthread_mutex_unlock(&x->v[i]->mu);
        }
        pthread_mutex_unlock(&x->mu);
        if (busy)
            usleep(10000);
    }
    for (size_t i = 0; i < x->n; i++)
        export_free(x->v[i]);
    free(x->v);
    if (x->dirfd >= 0)
        close(x->dirfd);
    free(x->dir);
    pthread_mutex_destroy(&x->mu);
    free(x);
}

void dbm_exports_set_bound(struct dbm_exports *x, uint64_t bound_bytes)
{
    pthread_mutex_lock(&x->mu);
    x->bound = bound_bytes;
    pthread_mutex_unlock(&x->mu);
}

/* Drops completed, unreferenced exports, least recently used first, until
 * the cache fits its bound. x->mu held. */
static void evict_locked(struct dbm_exports *x)
{
    for (;;) {
        uint64_t total = 0;
        struct dbm_export *lru = NULL;
        size_t at = 0;
        for (size_t i = 0; i < x->n; i++) {
            struct dbm_export *e = x->v[i];
            if (!e->done)
                continue;
            total += e->size;
            if (e->refs == 0 && (!lru || e->last_use_ns < lru->last_use_ns)) {
                lru = e;
                at = i;
            }
        }
        if (total <= x->bound || !lru)
            return;
        unlinkat(x->dirfd, cache_name(lru->key, SUFFIX_DATA).s, 0);
        unlinkat(x->dirfd, cache_name(lru->key, SUFFIX_SUM).s, 0);
        dbm_info("export cache: evicted %s (%llu bytes) to stay within %llu bytes", lru->label,
                 (unsigned long long)lru->size, (unsigned long long)x->bound);
        x->v[at] = x->v[--x->n];
        export_free(lru);
    }
}

struct sinkctx {
    struct dbm_export *e;
    uint64_t off;
};

static int sink(void *arg, const void *buf, size_t len)
{
    struct sinkctx *c = arg;
    struct dbm_export *e = c->e;
    int rc = dbm_pwrite_all(e->fd, buf, len, (off_t)c->off);
    if (rc < 0)
        return rc;
    c->off += len;
    pthread_mutex_lock(&e->mu);
    e->produced = c->off;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
    return 0;
}

static int cancelled(void *arg)
{
    struct dbm_export *e = ((struct sinkctx *)arg)->e; /* bacpac passes the sink's argument */
    pthread_mutex_lock(&e->mu);
    int c = e->cancel;
    pthread_mutex_unlock(&e->mu);
    return c;
}

/* Renames the finished .part into place and records its checksum. */
static int publish(struct dbm_export *e, const uint8_t sha[DBM_SHA256_LEN], uint64_t size)
{
    struct dbm_exports *x = e->x;
    struct cache_name part = cache_name(e->key, SUFFIX_PART), fin = cache_name(e->key, SUFFIX_DATA),
                      meta = cache_name(e->key, SUFFIX_SUM);
    char line[128];
    dbm_crypto_hex(sha, DBM_SHA256_LEN, e->sha);
    int n = snprintf(line, sizeof line, "%s %llu\n", e->sha, (unsigned long long)size);
    int fd = openat(x->dirfd, meta.s, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0)
        return -errno;
    int rc = dbm_pwrite_all(fd, line, (size_t)n, 0);
    close(fd);
    if (rc == 0 && renameat(x->dirfd, part.s, x->dirfd, fin.s) < 0)
        rc = -errno;
    return rc;
}

static void *produce(void *arg)
{
    struct dbm_export *e = arg;
    struct dbm_snapshot *s = e->snap;
    struct dbm_bacpac_params p = params_of(e->x, s);
    struct sinkctx c = { .e = e };
    uint8_t sha[DBM_SHA256_LEN];
    uint64_t size = 0, t0 = dbm_now_ns();
    int rc = dbm_bacpac_produce(&p, sink, &c, cancelled, sha, &size);
    if (rc == 0)
        rc = publish(e, sha, size);
    /* dbm_export_get relabels under x->mu, maybe while this runs */
    char label[sizeof e->label];
    pthread_mutex_lock(&e->x->mu);
    memcpy(label, e->label, sizeof label);
    pthread_mutex_unlock(&e->x->mu);
    if (rc < 0) {
        unlinkat(e->x->dirfd, cache_name(e->key, SUFFIX_PART).s, 0);
        if (rc != -ECANCELED)
            dbm_err("export %s failed: %s", label, strerror(-rc));
    } else {
        dbm_info("export %s produced: %llu bytes in %.2f s", label, (unsigned long long)size,
                 (double)(dbm_now_ns() - t0) / 1e9);
    }
    pthread_mutex_lock(&e->x->mu);
    pthread_mutex_lock(&e->mu);
    e->producing = 0;
    if (rc < 0) {
        e->error = rc;
    } else {
        e->done = 1;
        e->size = size;
        e->produced = size;
    }
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
    if (rc == 0) {
        e->x->produced_total++;
        evict_locked(e->x);
    }
    pthread_mutex_unlock(&e->x->mu);
    return NULL;
}

/* A cached file from this or an earlier run. x->mu held. */
static struct dbm_export *load_cached(struct dbm_exports *x, const char *key)
{
    char line[128] = "";
    int mfd = openat(x->dirfd, cache_name(key, SUFFIX_SUM).s, O_RDONLY | O_CLOEXEC);
    if (mfd < 0)
        return NULL;
    ssize_t n = read(mfd, line, sizeof line - 1);
    close(mfd);
    char sha[DBM_SHA256_HEX_LEN + 1];
    unsigned long long size;
    if (n <= 0 || sscanf(line, "%64s %llu", sha, &size) != 2 || strlen(sha) != DBM_SHA256_HEX_LEN)
        return NULL;
    int fd = openat(x->dirfd, cache_name(key, SUFFIX_DATA).s, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || (uint64_t)st.st_size != size) {
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    struct dbm_export *e = calloc(1, sizeof *e);
    if (!e) {
        close(fd);
        return NULL;
    }
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    e->fd = fd;
    e->done = 1;
    e->size = e->produced = size;
    memcpy(e->sha, sha, sizeof e->sha);
    return e;
}

int dbm_export_get(struct dbm_exports *x, struct dbm_snapshot *snap, struct dbm_export **out)
{
    char key[KEY_LEN + 1], ts[DBM_TS_COMPACT_LEN + 1];
    int rc = key_of(snap, key);
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&x->mu);
    struct dbm_export *e = NULL;
    for (size_t i = 0; i < x->n && !e; i++)
        if (strcmp(x->v[i]->key, key) == 0 && !x->v[i]->error)
            e = x->v[i];
    if (!e && (rc = dbm_grow((void **)&x->v, &x->cap, x->n + 1, sizeof *x->v)) < 0)
        goto out;
    if (!e && (e = load_cached(x, key)) == NULL) {
        /* start a production */
        if (!(e = calloc(1, sizeof *e))) {
            rc = -ENOMEM;
            goto out;
        }
        pthread_mutex_init(&e->mu, NULL);
        pthread_cond_init(&e->cv, NULL);
        e->fd = openat(x->dirfd, cache_name(key, SUFFIX_PART).s, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
        if (e->fd < 0) {
            rc = -errno;
            export_free(e);
            goto out;
        }
        e->x = x;
        memcpy(e->key, key, sizeof e->key);
        dbm_snapshot_get(snap);
        e->snap = snap;
        struct dbm_bacpac_params p = params_of(x, snap);
        e->bound = dbm_bacpac_size_bound(&p);
        e->producing = 1;
        if ((rc = dbm_thread_start(&e->thread, "dbm-export", produce, e)) < 0) {
            export_free(e);
            goto out;
        }
        pthread_detach(e->thread);
    }
    if (!e->x) {
        e->x = x;
        memcpy(e->key, key, sizeof e->key);
    }
    /* (re)label for status with the instant that asked for it */
    dbm_ts_compact(snap->instant_ns, ts);
    snprintf(e->label, sizeof e->label, "%s@%s", snap->env, ts);
    int listed = 0;
    for (size_t i = 0; i < x->n; i++)
        listed |= x->v[i] == e;
    if (!listed)
        x->v[x->n++] = e;
    e->refs++;
    e->last_use_ns = dbm_now_ns();
    *out = e;
    rc = 0;
out:
    pthread_mutex_unlock(&x->mu);
    return rc;
}

void dbm_export_put(struct dbm_export *e)
{
    if (!e)
        return;
    struct dbm_exports *x = e->x;
    pthread_mutex_lock(&x->mu);
    e->refs--;
    e->last_use_ns = dbm_now_ns();
    if (e->refs == 0) {
        if (e->error) {
            /* a failed production is forgotten: the next reader tries again */
            for (size_t i = 0; i < x->n; i++)
                if (x->v[i] == e && !e->producing) {
                    x->v[i] = x->v[--x->n];
                    export_free(e);
                    break;
                }
        } else {
            evict_locked(x);
        }
    }
    pthread_mutex_unlock(&x->mu);
}

ssize_t dbm_export_read(struct dbm_export *e, void *buf, size_t size, off_t off)
{
    /* wait for the whole request, as a regular file would return it: many
     * readers (tar among them) take a short read for the end of the file */
    pthread_mutex_lock(&e->mu);
    while (!e->done && !e->error && e->produced < (uint64_t)off + size)
        pthread_cond_wait(&e->cv, &e->mu);
    int err = e->error;
    uint64_t avail = e->produced;
    int fd = e->fd;
    pthread_mutex_unlock(&e->mu);
    if (err && avail <= (uint64_t)off)
        return err;
    if ((uint64_t)off >= avail)
        return 0;
    if (size > avail - (uint64_t)off)
        size = (size_t)(avail - (uint64_t)off);
    ssize_t n = dbm_pread_all(fd, buf, size, off);
    return n;
}

int dbm_export_file(struct dbm_export *e, int *fd, uint64_t *size)
{
    pthread_mutex_lock(&e->mu);
    int done = e->done;
    *fd = e->fd;
    *size = e->size;
    pthread_mutex_unlock(&e->mu);
    return done;
}

int dbm_export_wait(struct dbm_export *e)
{
    pthread_mutex_lock(&e->mu);
    while (!e->done && !e->error)
        pthread_cond_wait(&e->cv, &e->mu);
    int rc = e->error;
    pthread_mutex_unlock(&e->mu);
    return rc;
}

int dbm_export_size(struct dbm_export *e, uint64_t *size, char *sha_hex)
{
    pthread_mutex_lock(&e->mu);
    int done = e->done;
    *size = done ? e->size : e->bound;
    if (done && sha_hex)
        memcpy(sha_hex, e->sha, DBM_SHA256_HEX_LEN + 1);
    pthread_mutex_unlock(&e->mu);
    return done;
}

int dbm_export_peek_size(struct dbm_exports *x, struct dbm_snapshot *snap, uint64_t *size)
{
    char key[KEY_LEN + 1];
    int rc = key_of(snap, key), done = 0;
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&x->mu);
    for (size_t i = 0; i < x->n; i++) {
        struct dbm_export *e = x->v[i];
        if (strcmp(e->key, key) == 0 && !e->error) {
            pthread_mutex_lock(&e->mu);
            done = e->done;
            *size = done ? e->size : e->bound;
            pthread_mutex_unlock(&e->mu);
            pthread_mutex_unlock(&x->mu);
            return done;
        }
    }
    struct dbm_export *c = load_cached(x, key);
    if (c) {
        /* keep it: the next open finds it without reading the metadata again */
        c->x = x;
        memcpy(c->key, key, sizeof c->key);
        snprintf(c->label, sizeof c->label, "%s@cached", snap->env);
        if (dbm_grow((void **)&x->v, &x->cap, x->n + 1, sizeof *x->v) == 0) {
            x->v[x->n++] = c;
            *size = c->size;
            done = 1;
        } else {
            export_free(c);
        }
    }
    pthread_mutex_unlock(&x->mu);
    if (!done) {
        struct dbm_bacpac_params p = params_of(x, snap);
        *size = dbm_bacpac_size_bound(&p);
    }
    return done;
}

void dbm_exports_report(struct dbm_exports *x, struct dbm_sbuf *b)
{
    pthread_mutex_lock(&x->mu);
    uint64_t used = 0;
    size_t files = 0, producing = 0;
    for (size_t i = 0; i < x->n; i++) {
        struct dbm_export *e = x->v[i];
        pthread_mutex_lock(&e->mu);
        if (e->done) {
            used += e->size;
            files++;
        } else if (e->producing) {
            char key[128];
            producing++;
            snprintf(key, sizeof key, "export.%s", e->label);
            dbm_sbuf_kv(b, key, "producing %llu bytes written, at most %llu", (unsigned long long)e->produced,
                        (unsigned long long)e->bound);
        }
        pthread_mutex_unlock(&e->mu);
    }
    dbm_sbuf_kv(b, "exports_producing", "%zu", producing);
    dbm_sbuf_kv(b, "export_cache_files", "%zu", files);
    dbm_sbuf_kv(b, "export_cache_bytes", "%llu", (unsigned long long)used);
    dbm_sbuf_kv(b, "export_cache_bound", "%llu", (unsigned long long)x->bound);
    dbm_sbuf_kv(b, "exports_produced", "%llu", (unsigned long long)x->produced_total);
    pthread_mutex_unlock(&x->mu);
}
