/* livedb.c - see livedb.h and livedb_i.h: the db/ namespace, open files and
 * POSIX locks. Commit detection lives in capture.c. */
#include "livedb.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include "livedb_i.h"
#include "log.h"
#include "reserve.h"
#include "pagestore.h"
#include "strutil.h"
#include "sysio.h"
#include "timefmt.h"

#define ALLOWED_NAMES \
    "NAME.db (1-64 of A-Z a-z 0-9 _ . -) and the NAME.db-journal, -wal, -shm and -mjXXXXXX9XX files SQLite makes"

static struct base *base_get(struct dbm_livedb *l, const char *name)
{
    for (size_t i = 0; i < l->nbases; i++)
        if (strcmp(l->bases[i]->name, name) == 0)
            return l->bases[i];
    if (dbm_grow((void **)&l->bases, &l->bases_cap, l->nbases + 1, sizeof *l->bases) < 0)
        return NULL;
    struct base *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    dbm_strlcpy(b->name, name, sizeof b->name);
    b->l = l;
    b->cursor_fd = -1;
    b->sh_fd = -1;
    b->mark_fd = -1;
    pthread_mutex_init(&b->mu, NULL);
    l->bases[l->nbases++] = b;
    return b;
}

static struct dbfile *file_by_name(struct dbm_livedb *l, const char *name)
{
    for (size_t i = 0; i < l->nfiles; i++)
        if (!l->files[i]->unlinked && strcmp(l->files[i]->name, name) == 0)
            return l->files[i];
    return NULL;
}

static struct dbfile *file_by_id(struct dbm_livedb *l, uint64_t id)
{
    for (size_t i = 0; i < l->nfiles; i++)
        if (l->files[i]->id == id)
            return l->files[i];
    return NULL;
}

static struct dbfile **base_slot(struct base *b, enum dbm_sqlfile kind)
{
    switch (kind) {
    case DBM_SQLFILE_DB: return &b->db;
    case DBM_SQLFILE_JOURNAL: return &b->journal;
    case DBM_SQLFILE_WAL: return &b->wal;
    default: return NULL;
    }
}

/* The WAL's backing file changed (a write-back, a truncation, a new file):
 * dbm_cap_wal_sync looks at it again (livedb_i.h). */
static void wal_changed(struct base *b) { __atomic_add_fetch(&b->wal_writes, 1, __ATOMIC_RELEASE); }

/* Adds a file object for an existing backing file. l->mu held. */
static struct dbfile *file_add(struct dbm_livedb *l, const char *name)
{
    char basename[DBM_DB_NAME_MAX + 1];
    enum dbm_sqlfile kind = dbm_sqlfile_classify(name, basename, sizeof basename);
    if (kind == DBM_SQLFILE_NONE)
        return NULL;
    if (dbm_grow((void **)&l->files, &l->files_cap, l->nfiles + 1, sizeof *l->files) < 0)
        return NULL;
    struct dbfile *f = calloc(1, sizeof *f);
    struct base *b = base_get(l, basename);
    if (!f || !b) {
        free(f);
        return NULL;
    }
    f->id = ++l->next_id;
    dbm_strlcpy(f->name, name, sizeof f->name);
    f->kind = kind;
    f->base = b;
    f->fd = -1;
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    struct dbfile **slot = base_slot(b, kind);
    if (slot)
        *slot = f;
    if (kind == DBM_SQLFILE_WAL)
        wal_changed(b);
    l->files[l->nfiles++] = f;
    return f;
}

static void file_free(struct dbfile *f)
{
    if (f->hdr_map)
        munmap(f->hdr_map, JHDR_MAP_LEN);
    if (f->fd >= 0)
        close(f->fd);
    dbm_locktab_free(&f->locks);
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cv);
    free(f);
}

/* Frees f if nothing refers to it any more. l->mu held. */
static void file_maybe_free(struct dbm_livedb *l, struct dbfile *f)
{
    if (!f->unlinked || f->nlookup || f->nopen)
        return;
    for (size_t i = 0; i < l->nfiles; i++) {
        if (l->files[i] == f) {
            l->files[i] = l->files[--l->nfiles];
            break;
        }
    }
    file_free(f);
}

int dbm_cap_ensure_fd(struct dbm_livedb *l, struct dbfile *f)
{
    if (f->fd >= 0)
        return 0;
    int fd = openat(l->dirfd, f->name, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    f->fd = fd;
    return 0;
}

int dbm_livedb_open(const struct dbm_livedb_params *p, struct dbm_livedb **out)
{
    struct dbm_livedb *l = calloc(1, sizeof *l);
    if (!l)
        return -ENOMEM;
    pthread_mutex_init(&l->mu, NULL);
    pthread_mutex_init(&l->sync_mu, NULL);
    pthread_cond_init(&l->sync_cv, NULL);
    l->dirfd = -1;
    l->capdir_fd = -1;
    l->store = p->store;
    l->cat = p->cat;
    l->backing = p->backing;
    l->writeback = p->writeback;
    l->reserve = p->reserve;
    l->tag = p->tag;
    l->fmode = 0644;
    dbm_strlcpy(l->env, p->env, sizeof l->env);
    int rc = -ENOMEM;
    l->dir = strdup(p->backing_dir);
    size_t n = strlen(p->backing_dir) + 16;
    l->capdir = malloc(n);
    if (!l->dir || !l->capdir)
        goto fail;
    snprintf(l->capdir, n, "%s/../capture", p->backing_dir);
    if (mkdir(l->capdir, 0750) < 0 && errno != EEXIST) {
        rc = -errno;
        goto fail;
    }
    l->capdir_fd = open(l->capdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    l->dirfd = open(l->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (l->dirfd < 0 || l->capdir_fd < 0) {
        rc = -errno;
        goto fail;
    }
    DIR *dir = fdopendir(dup(l->dirfd));
    if (!dir) {
        rc = -errno;
        goto fail;
    }
    struct dirent *de;
    while ((de = readdir(dir))) {
        if (de->d_name[0] == '.')
            continue;
        if (!file_add(l, de->d_name))
            dbm_warn("%s: ignoring %s/%s: not a name the mount serves", l->env, l->dir, de->d_name);
    }
    closedir(dir);
    for (size_t i = 0; i < l->nbases; i++) {
        if ((rc = dbm_cap_recover(l->bases[i])) < 0) {
            dbm_err("%s/%s: recovery failed: %s", l->env, l->bases[i]->name, strerror(-rc));
            goto fail;
        }
    }
    *out = l;
    return 0;
fail:
    dbm_livedb_close(l);
    return rc;
}

void dbm_livedb_close(struct dbm_livedb *l)
{
    if (!l)
        return;
    dbm_dur_stop(l);
    for (size_t i = 0; i < l->nfiles; i++)
        file_free(l->files[i]);
    for (size_t i = 0; i < l->nbases; i++) {
        dbm_cap_free(l->bases[i]);
        pthread_mutex_destroy(&l->bases[i]->mu);
        free(l->bases[i]);
    }
    free(l->files);
    free(l->bases);
    if (l->dirfd >= 0)
        close(l->dirfd);
    if (l->capdir_fd >= 0)
        close(l->capdir_fd);
    pthread_mutex_destroy(&l->sync_mu);
    pthread_cond_destroy(&l->sync_cv);
    free(l->dir);
    free(l->capdir);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

void dbm_livedb_set_owner(struct dbm_livedb *l, uid_t uid, gid_t gid, mode_t file_mode)
{
    pthread_mutex_lock(&l->mu);
    l->uid = uid;
    l->gid = gid;
    l->fmode = file_mode;
    pthread_mutex_unlock(&l->mu);
}

void dbm_livedb_set_limits(struct dbm_livedb *l, uint32_t max_dbs, uint64_t max_bytes)
{
    pthread_mutex_lock(&l->mu);
    l->max_dbs = max_dbs;
    __atomic_store_n(&l->max_db_bytes, max_bytes, __ATOMIC_RELAXED); /* read by writers without l->mu */
    pthread_mutex_unlock(&l->mu);
}

void dbm_livedb_writeback_off(struct dbm_livedb *l)
{
    pthread_mutex_lock(&l->mu);
    l->writeback = 0;
    pthread_mutex_unlock(&l->mu);
}

/* Live databases (db files not removed). l->mu held. */
static size_t count_dbs(struct dbm_livedb *l)
{
    size_t n = 0;
    for (size_t i = 0; i < l->nbases; i++)
        n += l->bases[i]->db != NULL;
    return n;
}

/* The backing file's own stat, through its descriptor when it has one. */
static int backing_stat(struct dbm_livedb *l, struct dbfile *f, struct stat *st)
{
    int rc = f->fd >= 0 ? fstat(f->fd, st) : fstatat(l->dirfd, f->name, st, 0);
    return rc < 0 ? -errno : 0;
}

/* The same without its change and modification times, which a stat would
 * mark as seen: the file's next write then takes a fine-grained time, which
 * moves every file's timestamp floor, and the page store's next append
 * changes its segment's time, which its fdatasync must write too: a device
 * write more per commit (bench/README.md). With the writeback cache the
 * kernel keeps a regular file's times itself once it knows the file, and
 * asks for them as often as a commit syncs; the times are left zero. */
static int backing_stat_timeless(struct dbm_livedb *l, struct dbfile *f, struct stat *st)
{
    struct statx sx;
    unsigned mask = (STATX_BASIC_STATS & ~(unsigned)(STATX_MTIME | STATX_CTIME)) | STATX_ATIME;
    int rc = f->fd >= 0 ? statx(f->fd, "", AT_EMPTY_PATH, mask, &sx) : statx(l->dirfd, f->name, 0, mask, &sx);
    if (rc < 0)
        return -errno;
    memset(st, 0, sizeof *st);
    st->st_dev = makedev(sx.stx_dev_major, sx.stx_dev_minor);
    st->st_ino = sx.stx_ino;
    st->st_mode = sx.stx_mode;
    st->st_nlink = sx.stx_nlink;
    st->st_size = (off_t)sx.stx_size;
    st->st_blksize = sx.stx_blksize;
    st->st_blocks = (blkcnt_t)sx.stx_blocks;
    st->st_atim.tv_sec = sx.stx_atime.tv_sec;
    st->st_atim.tv_nsec = sx.stx_atime.tv_nsec;
    return 0;
}

/* l->mu held. times: the reply creates the kernel's inode, or the kernel
 * takes times from it (not with the writeback cache, for a known file). */
static int file_stat_when(struct dbm_livedb *l, struct dbfile *f, struct stat *st, int times)
{
    int rc = times || !l->writeback ? backing_stat(l, f, st) : backing_stat_timeless(l, f, st);
    if (rc < 0)
        return rc;
    /* a transaction's pages wait in the shadow: the size it sees */
    if (f->base && f->base->db == f && dbm_dur_active(f->base))
        st->st_size = (off_t)dbm_dur_size(f->base);
    st->st_mode = S_IFREG | l->fmode;
    st->st_uid = l->uid;
    st->st_gid = l->gid;
    st->st_nlink = f->unlinked ? 0 : 1;
    return 0;
}

static int file_stat(struct dbm_livedb *l, struct dbfile *f, struct stat *st) { return file_stat_when(l, f, st, 1); }

int dbm_livedb_lookup(struct dbm_livedb *l, const char *name, uint64_t *id, struct stat *st)
{
    pthread_mutex_lock(&l->mu);
    struct dbfile *f = file_by_name(l, name);
    int rc = f ? file_stat(l, f, st) : -ENOENT;
    if (rc == 0) {
        f->nlookup++;
        *id = f->id;
    }
    pthread_mutex_unlock(&l->mu);
    return rc;
}

void dbm_livedb_forget(struct dbm_livedb *l, uint64_t id, uint64_t nlookup)
{
    pthread_mutex_lock(&l->mu);
    struct dbfile *f = file_by_id(l, id);
    if (f) {
        f->nlookup = f->nlookup > nlookup ? f->nlookup - nlookup : 0;
        file_maybe_free(l, f);
    }
    pthread_mutex_unlock(&l->mu);
}

int dbm_livedb_getattr(struct dbm_livedb *l, uint64_t id, struct stat *st)
{
    pthread_mutex_lock(&l->mu);
    struct dbfile *f = file_by_id(l, id);
    int rc = f ? file_stat_when(l, f, st, 0) : -ENOENT; /* a known file: the kernel keeps its times */
    pthread_mutex_unlock(&l->mu);
    return rc;
}

struct listent {
    char name[NAME_MAX + 1];
    uint64_t id;
    struct stat st;
};

static int listent_cmp(const void *a, const void *b)
{
    return strcmp(((const struct listent *)a)->name, ((const struct listent *)b)->name);
}

int dbm_livedb_list(struct dbm_livedb *l, size_t start,
                    int (*cb)(const char *name, uint64_t id, const struct stat *st, void *arg), void *arg)
{
    pthread_mutex_lock(&l->mu);
    struct listent *v = calloc(l->nfiles + 1, sizeof *v);
    size_t n = 0;
    for (size_t i = 0; v && i < l->nfiles; i++) {
        struct dbfile *f = l->files[i];
        if (f->unlinked || file_stat(l, f, &v[n].st) < 0)
            continue;
        dbm_strlcpy(v[n].name, f->name, sizeof v[n].name);
        v[n++].id = f->id;
    }
    pthread_mutex_unlock(&l->mu);
    if (!v)
        return -ENOMEM;
    qsort(v, n, sizeof *v, listent_cmp);
    for (size_t i = start; i < n; i++)
        if (cb(v[i].name, v[i].id, &v[i].st, arg))
            break;
    free(v);
    return 0;
}

/* locking_mode=EXCLUSIVE opens the WAL holding EXCLUSIVE on the database
 * and then takes no lock per transaction: only its writes can tell a commit
 * at once, so a WAL opened then is written through the daemon, write by
 * write (neither in passthrough nor cached). l->mu held. */
static int wal_opened_exclusive(struct dbfile *f)
{
    struct dbfile *db = f->base->db;
    if (!db || f->kind != DBM_SQLFILE_WAL)
        return 0;
    pthread_mutex_lock(&db->mu);
    int excl = dbm_lock_held_at(&db->locks, F_WRLCK, DBM_SHARED_FIRST);
    pthread_mutex_unlock(&db->mu);
    return excl;
}

/* Whether the new handle of f opens in passthrough. The kernel refuses an
 * inode opened both ways, or with two backing files: so the first open
 * decides, and the others follow while any is open. l->mu held. */
static int handle_passthrough(struct dbm_livedb *l, struct dbfile *f)
{
    const struct dbm_livedb_backing *bk = l->backing;
    if (l->writeback) {
        /* the first application open decides, the others follow while any
         * is open: the kernel holds a cached WAL's writes until written
         * back, and capture reads it at sync points, as in passthrough */
        if (f->kind == DBM_SQLFILE_WAL && !f->unlinked && f->nopen == f->nown) {
            f->wb_direct = wal_opened_exclusive(f);
            if (!f->wb_direct)
                __atomic_store_n(&f->base->wal_blind, 1, __ATOMIC_RELEASE);
        }
        return 0; /* the kernel refuses passthrough with the writeback cache */
    }
    if ((f->kind != DBM_SQLFILE_WAL && f->kind != DBM_SQLFILE_JOURNAL) || f->unlinked || f->fd < 0 || !bk ||
        !bk->open)
        return 0;
    if (f->pt_id > 0)
        return 1;
    if (f->nopen > 0)
        return 0; /* open through the daemon: so are the others until all close */
    if (wal_opened_exclusive(f))
        return 0;
    int id = bk->open(bk->ctx, f->fd);
    if (id <= 0) {
        if (id != -EOPNOTSUPP)
            dbm_warn("%s/%s: no passthrough (%s); served through the daemon", l->env, f->name, strerror(-id));
        return 0;
    }
    f->pt_id = id;
    __atomic_store_n(f->kind == DBM_SQLFILE_WAL ? &f->base->wal_blind : &f->base->journal_blind, 1,
                     __ATOMIC_RELEASE);
    return 1;
}

static int handle_new(struct dbm_livedb *l, struct dbfile *f, int flags, struct dbm_dbhandle **h)
{
    struct dbm_dbhandle *nh = malloc(sizeof *nh);
    if (!nh)
        return -ENOMEM;
    nh->f = f;
    nh->flags = flags;
    nh->own = 0;
    nh->pt = handle_passthrough(l, f);
    if (nh->pt)
        f->pt_open++;
    f->nopen++;
    *h = nh;
    return 0;
}

int dbm_livedb_create(struct dbm_livedb *l, const char *name, int flags, uint64_t *id, struct stat *st,
                      struct dbm_dbhandle **h)
{
    char basename[DBM_DB_NAME_MAX + 1];
    if (dbm_sqlfile_classify(name, basename, sizeof basename) == DBM_SQLFILE_NONE) {
        dbm_notice("%s: refusing to create db/%s: accepted names are " ALLOWED_NAMES, l->env, name);
        return -EPERM;
    }
    /* a new file fills its base's slot (b->wal, ...), which capture reads
     * under base.mu: taken first, in the lock order (bases live until close) */
    pthread_mutex_lock(&l->mu);
    struct base *b = base_get(l, basename);
    pthread_mutex_unlock(&l->mu);
    if (!b)
        return -ENOMEM;
    pthread_mutex_lock(&b->mu);
    pthread_mutex_lock(&l->mu);
    int rc = 0;
    struct dbfile *f = file_by_name(l, name);
    if (f && (flags & O_EXCL)) {
        rc = -EEXIST;
        goto out;
    }
    if (!f && l->max_dbs && dbm_sqlfile_classify(name, basename, sizeof basename) == DBM_SQLFILE_DB &&
        count_dbs(l) >= l->max_dbs) {
        dbm_notice("%s: refusing to create db/%s: the environment has its maximum of %u databases (max_databases)",
                   l->env, name, l->max_dbs);
        rc = -EDQUOT;
        goto out;
    }
    if (!f) {
        int fd = openat(l->dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
        if (fd < 0) {
            rc = -errno;
            goto out;
        }
        if (!(f = file_add(l, name))) {
            close(fd);
            unlinkat(l->dirfd, name, 0);
            rc = -ENOMEM;
            goto out;
        }
        f->fd = fd;
        if (f->kind != DBM_SQLFILE_JOURNAL) /* a journal's entry never needs to be durable (durable.c) */
            __atomic_store_n(&l->dir_dirty, 1, __ATOMIC_RELEASE);
        if (f->kind == DBM_SQLFILE_JOURNAL || f->kind == DBM_SQLFILE_WAL)
            __atomic_store_n(&b->unjournaled, 0, __ATOMIC_RELAXED);
    } else if ((rc = dbm_cap_ensure_fd(l, f)) < 0) {
        goto out;
    }
    if ((flags & O_TRUNC) && f->kind != DBM_SQLFILE_SHM && f->kind != DBM_SQLFILE_SUPER) {
        /* SQLite never truncates on open; a truncate of live data would bypass commit capture */
        rc = -EPERM;
        goto out;
    }
    if ((rc = file_stat(l, f, st)) < 0 || (rc = handle_new(l, f, flags, h)) < 0)
        goto out;
    f->nlookup++;
    *id = f->id;
out:
    pthread_mutex_unlock(&l->mu);
    pthread_mutex_unlock(&b->mu);
    return rc;
}

int dbm_livedb_open_file(struct dbm_livedb *l, uint64_t id, int flags, struct dbm_dbhandle **h)
{
    pthread_mutex_lock(&l->mu);
    struct dbfile *f = file_by_id(l, id);
    int rc = f ? dbm_cap_ensure_fd(l, f) : -ENOENT;
    if (rc == 0 && (flags & O_TRUNC) && f->kind != DBM_SQLFILE_SHM && f->kind != DBM_SQLFILE_SUPER)
        rc = -EPERM;
    if (rc == 0)
        rc = handle_new(l, f, flags, h);
    pthread_mutex_unlock(&l->mu);
    return rc;
}

void dbm_livedb_handle_set_own(struct dbm_dbhandle *h)
{
    struct dbm_livedb *l = h->f->base->l;
    pthread_mutex_lock(&l->mu);
    if (!h->own)
        h->f->nown++;
    h->own = 1;
    pthread_mutex_unlock(&l->mu);
}

int dbm_livedb_handle_fd(struct dbm_dbhandle *h) { return h->f->fd; }

int dbm_livedb_handle_direct(struct dbm_dbhandle *h)
{
    struct dbm_livedb *l = h->f->base->l;
    pthread_mutex_lock(&l->mu);
    int d = l->writeback && (h->f->kind == DBM_SQLFILE_JOURNAL || h->f->wb_direct);
    pthread_mutex_unlock(&l->mu);
    return d;
}

int dbm_livedb_handle_passthrough(struct dbm_dbhandle *h, int *cacheable)
{
    struct dbm_livedb *l = h->f->base->l;
    *cacheable = (h->f->kind != DBM_SQLFILE_WAL && h->f->kind != DBM_SQLFILE_JOURNAL) || !l->backing ||
                 !l->backing->open || l->writeback;
    if (!h->pt)
        return 0;
    pthread_mutex_lock(&l->mu);
    int id = h->f->pt_id;
    pthread_mutex_unlock(&l->mu);
    return id;
}

#define SYNC_POINT_ROOM (2ull << 20) /* reserve given to a commit's record at a time */

/* Passthrough: records what SQLite wrote to the WAL (wal) or journal behind
 * our back, before an operation that follows a commit or may overwrite one
 * (capture.c). A failure is logged: the commit stays pending (in the WAL,
 * or in the shadow), and the next sync point tries again. b->mu not held. */
static void sync_point(struct base *b, int wal, const char *what)
{
    if (!__atomic_load_n(wal ? &b->wal_blind : &b->journal_blind, __ATOMIC_ACQUIRE))
        return;
    /* the writeback cache holds what SQLite wrote until it is written back
     * (logged if it cannot be: the commit stays pending, and the next sync
     * point tries again) */
    if (wal && dbm_wb_flush_slot(b, &b->wal, 0) < 0)
        return;
    int rc;
    do {
        pthread_mutex_lock(&b->mu);
        rc = wal ? dbm_cap_wal_sync(b) : dbm_cap_journal_sync(b, 0);
        pthread_mutex_unlock(&b->mu);
        /* SQLite counted the commit done: its record may take the reserve */
    } while (rc == -ENOSPC && b->l->writeback && dbm_reserve_release(b->l->reserve, SYNC_POINT_ROOM));
    if (rc < 0)
        dbm_err("%s/%s: cannot record a commit %s: %s; retried at the next one", b->l->env, b->name, what,
                strerror(-rc));
}

/* Finds name's file and its base, or -ENOENT. */
static int find(struct dbm_livedb *l, const char *name, struct dbfile **fp, struct base **bp)
{
    pthread_mutex_lock(&l->mu);
    struct dbfile *f = file_by_name(l, name);
    if (f) {
        *fp = f;
        *bp = f->base;
    }
    pthread_mutex_unlock(&l->mu);
    return f ? 0 : -ENOENT;
}

int dbm_livedb_unlink(struct dbm_livedb *l, const char *name)
{
    struct dbfile *f;
    struct base *b;
    char basename[DBM_DB_NAME_MAX + 1];
    enum dbm_sqlfile kind = dbm_sqlfile_classify(name, basename, sizeof basename);
    if (kind == DBM_SQLFILE_NONE)
        return -ENOENT;
    int rc = find(l, name, &f, &b);
    if (rc < 0)
        return rc;
    /* a journal's removal commits: the pages the kernel holds come first; a
     * WAL's follows a checkpoint whose pages may still be in the kernel, and
     * if they cannot be written the WAL that holds them stays */
    if ((kind == DBM_SQLFILE_JOURNAL || kind == DBM_SQLFILE_WAL) && (rc = dbm_wb_flush_slot(b, &b->db, 0)) < 0)
        return rc;
    pthread_mutex_lock(&b->mu);
    /* the name may have changed hands while we waited for the base */
    pthread_mutex_lock(&l->mu);
    int same = file_by_name(l, name) == f;
    pthread_mutex_unlock(&l->mu);
    if (!same) {
        pthread_mutex_unlock(&b->mu);
        return -ENOENT;
    }
    if (f->kind == DBM_SQLFILE_JOURNAL && (rc = dbm_cap_journal_commit(b, JM_DELETE)) < 0)
        goto out; /* not recorded: the journal stays hot and SQLite rolls back */
    if (f->kind == DBM_SQLFILE_WAL && b->wal == f && (rc = dbm_cap_wal_sync(b)) < 0)
        goto out; /* its commits would be lost with it */
    if (unlinkat(l->dirfd, name, 0) < 0) {
        rc = -errno;
        goto out;
    }
    if (f->kind != DBM_SQLFILE_JOURNAL)
        __atomic_store_n(&l->dir_dirty, 1, __ATOMIC_RELEASE);
    if (f->kind == DBM_SQLFILE_WAL && b->wal == f) {
        dbm_cap_wal_truncated(b, 0);
        __atomic_store_n(&b->wal_blind, 0, __ATOMIC_RELEASE); /* the next WAL is a new file */
    }
    if (f->kind == DBM_SQLFILE_JOURNAL && b->journal == f)
        __atomic_store_n(&b->journal_blind, 0, __ATOMIC_RELEASE);
    if (f->kind == DBM_SQLFILE_DB) {
        dbm_dur_discard(b); /* an open transaction's pages: nothing to apply them to */
        dbm_cap_forget_history(b, dbm_now_ns());
        dbm_notice("%s: database %s removed; its history stays readable for the retention window", l->env, name);
    }
    pthread_mutex_lock(&l->mu);
    f->unlinked = 1;
    struct dbfile **slot = base_slot(b, f->kind);
    if (slot && *slot == f)
        *slot = NULL;
    file_maybe_free(l, f);
    pthread_mutex_unlock(&l->mu);
out:
    pthread_mutex_unlock(&b->mu);
    return rc;
}

/* -ENOSPC (logged) if database file f would grow to end, past the
 * environment's max_db_size; else 0. b->mu held. */
static int check_max_size(struct base *b, struct dbfile *f, uint64_t end)
{
    uint64_t max = __atomic_load_n(&b->l->max_db_bytes, __ATOMIC_RELAXED);
    uint64_t dsize;
    if (!max || end <= max || dbm_fd_size(f->fd, &dsize) < 0 ||
        end <= (b->db == f && dbm_dur_active(b) ? dbm_dur_size(b) : dsize))
        return 0;
    dbm_notice("%s/%s: write refused: the database would grow past max_db_size (%llu bytes)", b->l->env, b->name,
               (unsigned long long)max);
    return -ENOSPC;
}

int dbm_livedb_truncate(struct dbm_livedb *l, uint64_t id, uint64_t size, struct stat *st)
{
    pthread_mutex_lock(&l->mu);
    struct dbfile *f = file_by_id(l, id);
    int rc = f ? dbm_cap_ensure_fd(l, f) : -ENOENT;
    struct base *b = f ? f->base : NULL;
    pthread_mutex_unlock(&l->mu);
    if (rc < 0)
        return rc;
    /* a journal truncated to 0 commits: the pages the kernel holds come
     * first (never the truncated file's own: the kernel holds its writes
     * back until this returns); a WAL truncated to 0 (a TRUNCATE
     * checkpoint) as a WAL's removal (dbm_livedb_unlink) */
    if ((f->kind == DBM_SQLFILE_JOURNAL || f->kind == DBM_SQLFILE_WAL) && size == 0 &&
        (rc = dbm_wb_flush_slot(b, &b->db, 0)) < 0)
        return rc;
    pthread_mutex_lock(&b->mu);
    if (f->kind == DBM_SQLFILE_JOURNAL && size == 0 && (rc = dbm_cap_journal_commit(b, JM_TRUNCATE)) < 0)
        goto out;
    if (f->kind == DBM_SQLFILE_JOURNAL && size < JHDR_MAP_MIN)
        f->hdr_ok = 0; /* its mapped header may be past the end from now on (livedb_i.h) */
    if (f->kind == DBM_SQLFILE_WAL && b->wal == f && (rc = dbm_cap_wal_sync(b)) < 0)
        goto out;
    if (f->kind == DBM_SQLFILE_DB && (rc = check_max_size(b, f, size)) < 0)
        goto out; /* a checkpoint's size hint: its writes past the end would be refused too */
    if (f->kind == DBM_SQLFILE_DB && b->db == f)
        dbm_wb_txn_cut(b, size); /* a rollback's: a refused write past the end is gone */
    if (f->kind == DBM_SQLFILE_DB && b->db == f && dbm_dur_active(b)) {
        dbm_dur_truncate(b, size); /* applied with the commit */
        goto out;
    }
    if (ftruncate(f->fd, (off_t)size) < 0) {
        rc = -errno;
        goto out;
    }
    if (f->kind == DBM_SQLFILE_WAL) {
        wal_changed(b);
        dbm_cap_wal_truncated(b, size);
    }
out:
    pthread_mutex_unlock(&b->mu);
    if (rc == 0) {
        pthread_mutex_lock(&l->mu);
        rc = file_stat(l, f, st);
        pthread_mutex_unlock(&l->mu);
    }
    return rc;
}

/* The writeback cache: a write-back to the database file itself failed, so
 * the file may lack committed pages (a checkpoint's) for the rest of this run
 * (base.wb_lost). Without the cache SQLite hears of it at its write, and keeps
 * the WAL. b->mu held. */
static void wb_file_write_failed(struct base *b, int err)
{
    if (b->l->writeback && !__atomic_exchange_n(&b->wb_lost, 1, __ATOMIC_ACQ_REL))
        dbm_err("%s/%s: the kernel's write-back to the database file failed (%s): the file may lack committed "
                "pages; the history has them, and the daemon's next start rewrites them",
                b->l->env, b->name, strerror(err));
}

/* Writes all of buf, or fails: never a short count, which the kernel takes
 * as written when it writes back its cache (a full disk dropped the rest of
 * a checkpoint's write-back without an error). counted: SQLite may count
 * the write done without a request the daemon could fail (the WAL, the
 * wal-index): with the writeback cache it may take the space reserve
 * (dbm_wb_pwrite). A database write never does: its commit point, or the
 * WAL a checkpoint keeps, answers for it. size or -errno. */
static ssize_t write_whole(struct dbm_livedb *l, int fd, const void *buf, size_t size, off_t off, int counted)
{
    int rc = counted ? dbm_wb_pwrite(l, fd, buf, size, off) : dbm_pwrite_all(fd, buf, size, off);
    return rc < 0 ? rc : (ssize_t)size;
}

ssize_t dbm_livedb_write(struct dbm_dbhandle *h, const void *buf, size_t size, off_t off)
{
    struct dbfile *f = h->f;
    struct base *b = f->base;
    if (f->kind == DBM_SQLFILE_SHM || f->kind == DBM_SQLFILE_SUPER) /* no history: plain pass-through */
        return write_whole(b->l, f->fd, buf, size, off, f->kind == DBM_SQLFILE_SHM);
    int zeroed = f->kind == DBM_SQLFILE_JOURNAL && off == 0 && size >= 28 && !memcmp(buf, (char[28]){ 0 }, 28);
    /* PERSIST's commit (the journal's header zeroed): with the writeback
     * cache the transaction's pages may still be in the kernel; failing,
     * the commit fails and the journal stays hot */
    int rc = zeroed ? dbm_wb_flush_slot(b, &b->db, 0) : 0;
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&b->mu);
    ssize_t ret;
    if (f->unlinked || (f->kind == DBM_SQLFILE_DB && b->db != f) ||
        (f->kind == DBM_SQLFILE_WAL && __atomic_load_n(&b->wal_blind, __ATOMIC_ACQUIRE))) {
        /* an open handle of a removed file: write it, record nothing; a WAL
         * the kernel writes back (writeback cache): read at sync points */
        ret = write_whole(b->l, f->fd, buf, size, off, f->kind == DBM_SQLFILE_WAL && !f->unlinked);
        if (f->kind == DBM_SQLFILE_WAL && !f->unlinked)
            wal_changed(b);
        goto out;
    }
    if (f->kind == DBM_SQLFILE_DB) {
        if ((ret = check_max_size(b, f, (uint64_t)off + size)) < 0) {
            if (!dbm_dur_active(b) && !b->journal_active)
                wb_file_write_failed(b, ENOSPC); /* not a transaction's page (a checkpoint's) */
            goto out_db;
        }
        /* a checkpoint copies committed frames into the file: they must be recorded first */
        if (__atomic_load_n(&b->wal_blind, __ATOMIC_ACQUIRE) && (rc = dbm_cap_wal_sync(b)) < 0) {
            ret = rc;
            goto out;
        }
        rc = dbm_cap_journal_look(b);
        if (rc == 0)
            rc = dbm_cap_db_check_write(b, off, size);
        if (rc == 0 && (rc = dbm_dur_write(b, buf, size, off)) == 1) {
            ret = (ssize_t)size; /* in the shadow until the commit */
            rc = dbm_cap_db_written(b, buf, size, off);
            if (rc < 0)
                ret = rc;
            goto out_db;
        }
        if (rc < 0) {
            ret = rc;
            goto out_db;
        }
    }
    else if (zeroed)
        rc = dbm_cap_journal_commit(b, JM_PERSIST); /* PERSIST mode's commit: the header is zeroed */
    if (rc < 0) {
        ret = rc;
        goto out;
    }
    ret = write_whole(b->l, f->fd, buf, size, off, f->kind == DBM_SQLFILE_WAL);
    if (ret < 0) {
        if (f->kind == DBM_SQLFILE_DB && !b->journal_active)
            wb_file_write_failed(b, (int)-ret);
        goto out_db;
    }
    if (f->kind == DBM_SQLFILE_DB)
        rc = dbm_cap_db_written(b, buf, (size_t)ret, off);
    else if (f->kind == DBM_SQLFILE_JOURNAL)
        rc = dbm_cap_journal_written(b, off, (size_t)ret);
    else if (f->kind == DBM_SQLFILE_WAL)
        rc = dbm_cap_wal_written(b, buf, off, (size_t)ret);
    if (rc < 0)
        ret = rc;
out_db:
    /* a rollback transaction's write: what the commit point checks */
    if (f->kind == DBM_SQLFILE_DB && b->journal_active)
        dbm_wb_txn_write(b, (uint64_t)off, ret < 0 ? size : (uint64_t)ret, ret < 0 ? (int)ret : 0);
out:
    pthread_mutex_unlock(&b->mu);
    if (ret < 0 && f->kind != DBM_SQLFILE_JOURNAL)
        dbm_wb_refused(f); /* the kernel may have sent it back: its copy now differs */
    return ret;
}

/* Whether thread tid belongs to the process that holds a write lock on f at
 * byte off: the writer syncing its own file. Takes f->mu. */
static int synced_by_writer(struct dbfile *f, uint64_t off, pid_t tid)
{
    struct dbm_lock c;
    pthread_mutex_lock(&f->mu);
    int held = dbm_lock_test(&f->locks, 0, F_RDLCK, off, off, &c); /* owner 0: any conflicting write lock */
    pthread_mutex_unlock(&f->mu);
    return held && c.pid > 0 && tid > 0 && syscall(SYS_tgkill, c.pid, tid, 0) == 0;
}

/* The writeback cache: the kernel wrote f back before this sync; if the
 * writer itself synced it at its commit, the commit point needs no flush
 * (livewb.c). A sync by anyone else says nothing of what the writer writes
 * next, nor does a WAL sync that committed nothing (SQLite syncs a new WAL's
 * header before any frame, with synchronous=NORMAL too). committed: this
 * sync recorded a WAL commit. */
static void wb_note_sync(struct dbfile *f, pid_t tid, int committed)
{
    struct base *b = f->base;
    struct dbm_livedb *l = b->l;
    if (!l->writeback)
        return;
    if (f->kind == DBM_SQLFILE_DB && synced_by_writer(f, DBM_RESERVED_BYTE, tid)) {
        __atomic_store_n(&b->db_clean, 1, __ATOMIC_RELEASE);
    } else if (f->kind == DBM_SQLFILE_WAL && committed) {
        char name[NAME_MAX + 1];
        snprintf(name, sizeof name, "%s-shm", b->name);
        pthread_mutex_lock(&l->mu); /* keeps shm (livedb.mu before dbfile.mu) */
        struct dbfile *shm = file_by_name(l, name);
        if (shm && synced_by_writer(shm, DBM_SHM_WRITE_LOCK, tid))
            __atomic_store_n(&b->wal_clean, 1, __ATOMIC_RELEASE);
        pthread_mutex_unlock(&l->mu);
    }
}

int dbm_livedb_fsync(struct dbm_dbhandle *h, int datasync, pid_t tid)
{
    struct dbfile *f = h->f;
    if (f->kind == DBM_SQLFILE_DB || f->kind == DBM_SQLFILE_JOURNAL || f->kind == DBM_SQLFILE_WAL) {
        struct base *b = f->base;
        int real = 1;
        pthread_mutex_lock(&b->mu);
        uint64_t before = b->captured;
        int rc = f->kind == DBM_SQLFILE_WAL && b->wal == f       ? dbm_cap_wal_sync(b)
                 : f->kind == DBM_SQLFILE_JOURNAL && b->journal == f ? dbm_cap_journal_sync(b, 1)
                                                                     : 0;
        int committed = b->captured > before;
        if (rc == 0)
            rc = dbm_dur_fsync(b, f, &real);
        pthread_mutex_unlock(&b->mu);
        if (rc == 0)
            wb_note_sync(f, tid, committed);
        if (rc < 0 || !real)
            return rc; /* the store's append made the commit durable */
    }
    int rc = datasync ? fdatasync(f->fd) : fsync(f->fd);
    return rc < 0 ? -errno : 0;
}

int dbm_livedb_fsyncdir(struct dbm_livedb *l)
{
    /* only journals came and went since the last one: nothing needs it */
    if (!__atomic_exchange_n(&l->dir_dirty, 0, __ATOMIC_ACQ_REL))
        return 0;
    if (fsync(l->dirfd) < 0) {
        __atomic_store_n(&l->dir_dirty, 1, __ATOMIC_RELEASE);
        return -errno;
    }
    return 0;
}

int dbm_livedb_fallocate(struct dbm_dbhandle *h, int mode, off_t off, off_t len)
{
    if (mode != 0)
        return -EOPNOTSUPP; /* punching holes would change data behind the capture */
    struct base *b = h->f->base;
    pthread_mutex_lock(&b->mu);
    int rc = -posix_fallocate(h->f->fd, off, len);
    if (rc == 0 && h->f->kind == DBM_SQLFILE_DB && b->db == h->f)
        dbm_dur_extend(b, (uint64_t)off + (uint64_t)len);
    pthread_mutex_unlock(&b->mu);
    return rc;
}

int dbm_livedb_shadowed(struct dbm_dbhandle *h)
{
    struct dbfile *f = h->f;
    return f->kind == DBM_SQLFILE_DB && f->base && dbm_dur_active(f->base);
}

ssize_t dbm_livedb_read(struct dbm_dbhandle *h, void *buf, size_t size, off_t off)
{
    struct dbfile *f = h->f;
    struct base *b = f->base;
    pthread_mutex_lock(&b->mu);
    ssize_t n = b->db == f ? dbm_dur_pread(b, buf, size, off) : dbm_pread_all(f->fd, buf, size, off);
    pthread_mutex_unlock(&b->mu);
    return n;
}

int dbm_livedb_flush(struct dbm_dbhandle *h, uint64_t lock_owner)
{
    struct dbfile *f = h->f;
    struct dbm_livedb *l = f->base->l;
    pthread_mutex_lock(&l->mu);
    int own = h->own;
    pthread_mutex_unlock(&l->mu);
    if (own)
        return 0; /* the daemon's own descriptor: no lock, no commit to look for */
    if (f->kind == DBM_SQLFILE_SHM || f->kind == DBM_SQLFILE_DB) /* its locks go: it may have been writing */
        sync_point(f->base, f->kind == DBM_SQLFILE_SHM, "as a writer closed the database");
    pthread_mutex_lock(&f->mu);
    if (dbm_lock_release_owner(&f->locks, lock_owner))
        pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
    return 0;
}

void dbm_livedb_release(struct dbm_dbhandle *h)
{
    struct dbfile *f = h->f;
    struct dbm_livedb *l = f->base->l;
    int pt = h->pt;
    pthread_mutex_lock(&l->mu);
    if (pt && --f->pt_open == 0) {
        /* the kernel dropped its side when the last passthrough file closed */
        if (l->backing && l->backing->close)
            l->backing->close(l->backing->ctx, f->pt_id);
        f->pt_id = 0;
    }
    f->nopen--;
    f->nown -= h->own;
    free(h);
    file_maybe_free(l, f);
    pthread_mutex_unlock(&l->mu);
}

static void lock_range(const struct flock *fl, uint64_t *start, uint64_t *end)
{
    *start = (uint64_t)fl->l_start;
    *end = fl->l_len == 0 ? DBM_LOCK_EOF : (uint64_t)fl->l_start + (uint64_t)fl->l_len - 1;
}

int dbm_livedb_getlk(struct dbm_dbhandle *h, uint64_t owner, struct flock *fl)
{
    struct dbfile *f = h->f;
    uint64_t start, end;
    struct dbm_lock c;
    lock_range(fl, &start, &end);
    pthread_mutex_lock(&f->mu);
    int conflict = dbm_lock_test(&f->locks, owner, fl->l_type, start, end, &c);
    pthread_mutex_unlock(&f->mu);
    if (!conflict) {
        fl->l_type = F_UNLCK;
        return 0;
    }
    fl->l_type = c.type;
    fl->l_whence = SEEK_SET;
    fl->l_start = (off_t)c.start;
    fl->l_len = c.end == DBM_LOCK_EOF ? 0 : (off_t)(c.end - c.start + 1);
    fl->l_pid = c.pid;
    return 0;
}

/* Whether the database has a writer: RESERVED on the db file (rollback
 * modes) or WRITE in -shm (WAL). f->mu held. */
static void note_writer(struct dbfile *f)
{
    /* two files (db, -shm) with their own locks feed one flag: atomic */
    if (f->kind == DBM_SQLFILE_DB)
        __atomic_store_n(&f->base->writer, dbm_lock_held_at(&f->locks, F_WRLCK, DBM_RESERVED_BYTE), __ATOMIC_RELAXED);
    else if (f->kind == DBM_SQLFILE_SHM)
        __atomic_store_n(&f->base->writer, dbm_lock_held_at(&f->locks, F_WRLCK, DBM_SHM_WRITE_LOCK), __ATOMIC_RELAXED);
}

/* The writeback cache's checks before owner's write lock is granted (a
 * clear error here, where SQLite hears of it, rather than a write the kernel
 * sends later and nobody waits for): a write transaction (RESERVED, or WAL's
 * WRITE) needs room in the state directory. */
static int wb_lock_check(struct dbfile *f, uint64_t owner, uint64_t start, uint64_t end)
{
    struct base *b = f->base;
    if (f->kind == DBM_SQLFILE_SHM && start <= DBM_SHM_CKPT_LOCK && end >= DBM_SHM_CKPT_LOCK)
        __atomic_store_n(&b->db_clean, 0, __ATOMIC_RELEASE); /* a checkpoint writes the database */
    if (f->kind == DBM_SQLFILE_SHM && start == DBM_SHM_WRITE_LOCK && end == DBM_SHM_WRITE_LOCK) {
        __atomic_store_n(&b->wal_clean, 0, __ATOMIC_RELEASE); /* a new writer: nothing it writes is synced yet */
        /* a write transaction takes WRITE inside a read transaction (a read
         * mark held); a wal-index recovery, or a checkpoint, takes it without
         * one and appends nothing to the WAL: a full disk must not stop the
         * readers that recover the wal-index (a WAL kept by a failed
         * checkpoint needs it at every first open) */
        pthread_mutex_lock(&f->mu);
        int reading = dbm_lock_owner_holds(&f->locks, owner, DBM_SHM_READ_FIRST, DBM_SHM_READ_LAST);
        pthread_mutex_unlock(&f->mu);
        return reading ? dbm_wb_room(b->l, b->name) : 0;
    }
    if (f->kind == DBM_SQLFILE_DB && start <= DBM_RESERVED_BYTE && end >= DBM_RESERVED_BYTE) {
        __atomic_store_n(&b->db_clean, 0, __ATOMIC_RELEASE);
        return dbm_wb_room(b->l, b->name);
    }
    return 0;
}

/* The writeback cache, once the database file's EXCLUSIVE lock is granted
 * (SQLite takes it before it writes pages): noted when there is neither a
 * rollback journal nor a WAL yet (SQLite opens the journal of a new
 * database's first transaction, or of a VACUUM, after it); if none comes
 * (journal_mode MEMORY or OFF), the lock's end fails the transaction. */
static void wb_exclusive_granted(struct dbfile *f, uint64_t start, uint64_t end)
{
    struct base *b = f->base;
    if (f->kind != DBM_SQLFILE_DB || start > DBM_SHARED_FIRST || end < DBM_SHARED_FIRST)
        return;
    pthread_mutex_lock(&b->mu);
    if (!b->wal_mode && !b->wal && !b->journal)
        __atomic_store_n(&b->unjournaled, 1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&b->mu);
}

/* The writeback cache: whether this lock ends an EXCLUSIVE lock taken with
 * no journal, and none came (journal_mode MEMORY or OFF): the writes come
 * back and are refused (dbm_cap_db_check_write), and the commit fails. */
static int wb_unjournaled_end(struct dbfile *f, const struct flock *fl, uint64_t start, uint64_t end)
{
    struct base *b = f->base;
    if (f->kind != DBM_SQLFILE_DB || fl->l_type == F_WRLCK || start > DBM_SHARED_FIRST || end < DBM_SHARED_FIRST ||
        !__atomic_load_n(&b->unjournaled, __ATOMIC_RELAXED))
        return 0;
    (void)dbm_wb_flush_slot(b, &b->db, 1); /* the writes come back and are refused (logged) */
    if (!__atomic_exchange_n(&b->unjournaled, 0, __ATOMIC_RELAXED))
        return 0;
    dbm_wb_reset_db(b); /* nothing rolls them back: the kernel takes the file as recorded */
    return 1;
}

int dbm_livedb_setlk(struct dbm_dbhandle *h, uint64_t owner, const struct flock *fl, int sleep,
                     int (*interrupted)(void *), void *arg)
{
    struct dbfile *f = h->f;
    uint64_t start, end;
    lock_range(fl, &start, &end);
    int rc, unjournaled = 0;
    if (f->base->l->writeback && fl->l_type == F_WRLCK && (rc = wb_lock_check(f, owner, start, end)) < 0)
        return rc;
    if (f->base->l->writeback) {
        unjournaled = wb_unjournaled_end(f, fl, start, end);
        dbm_wb_resync(f->base); /* the kernel's copy of refused writes goes (SQLite reads again after a lock) */
    }
    /* the end of a write transaction (WRITE released) and the start of a
     * checkpoint (CKPT taken): the WAL's commits are recorded first */
    if (f->kind == DBM_SQLFILE_SHM && start <= DBM_SHM_CKPT_LOCK && end >= DBM_SHM_WRITE_LOCK &&
        (fl->l_type == F_UNLCK || (fl->l_type == F_WRLCK && end >= DBM_SHM_CKPT_LOCK)))
        sync_point(f->base, 1, fl->l_type == F_UNLCK ? "at the end of a write transaction" : "before a checkpoint");
    else if (f->kind == DBM_SQLFILE_DB && fl->l_type == F_UNLCK)
        sync_point(f->base, 0, "at the end of a write transaction"); /* PERSIST with synchronous=OFF */
    pthread_mutex_lock(&f->mu);
    for (;;) {
        rc = dbm_lock_set(&f->locks, owner, fl->l_pid, fl->l_type, start, end);
        if (rc != -EAGAIN || !sleep)
            break;
        if (interrupted && interrupted(arg)) {
            rc = -EINTR;
            break;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100 * 1000000L; /* poll for interruption every 100 ms */
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&f->cv, &f->mu, &ts);
    }
    if (rc == 0 && fl->l_type == F_UNLCK)
        pthread_cond_broadcast(&f->cv);
    if (rc == 0)
        note_writer(f);
    pthread_mutex_unlock(&f->mu);
    if (rc == 0 && fl->l_type == F_WRLCK && f->base->l->writeback)
        wb_exclusive_granted(f, start, end); /* takes b->mu: not under f->mu (lock order) */
    return rc == 0 && unjournaled ? -EIO : rc; /* the lock changed; the transaction's commit fails */
}

/* A copy of the bases array (bases live until close), to walk without l->mu.
 * NULL on allocation failure. The caller frees it. */
static struct base **bases_copy(struct dbm_livedb *l, size_t *n)
{
    pthread_mutex_lock(&l->mu);
    *n = l->nbases;
    struct base **v = malloc((*n + 1) * sizeof *v);
    if (v && *n)
        memcpy(v, l->bases, *n * sizeof *v);
    pthread_mutex_unlock(&l->mu);
    return v;
}

uint64_t dbm_livedb_gc(struct dbm_livedb *l, uint64_t horizon_ns)
{
    uint64_t freed = 0;
    size_t n;
    struct base **v = bases_copy(l, &n);
    for (size_t i = 0; v && i < n; i++) {
        struct dbm_timeline *tl = NULL;
        struct dbm_tl_stat st;
        /* take a reference under the base lock, collect without it: a GC that
         * writes an image must not hold up commits */
        pthread_mutex_lock(&v[i]->mu);
        if (v[i]->tl && dbm_tl_stat(v[i]->tl, &st) == 0 && dbm_tl_open(l->store, st.id, &tl) < 0)
            tl = NULL;
        pthread_mutex_unlock(&v[i]->mu);
        if (!tl)
            continue;
        int64_t r = dbm_tl_gc(tl, horizon_ns);
        if (r < 0)
            dbm_warn("%s/%s: retention: %s", l->env, v[i]->name, strerror((int)-r));
        else
            freed += (uint64_t)r;
        dbm_tl_close(tl);
    }
    free(v);
    return freed;
}

size_t dbm_livedb_count(struct dbm_livedb *l)
{
    pthread_mutex_lock(&l->mu);
    size_t n = count_dbs(l);
    pthread_mutex_unlock(&l->mu);
    return n;
}

static const char *const jmode_names[] = { "unknown", "delete", "truncate", "persist", "wal" };

void dbm_livedb_report(struct dbm_livedb *l, struct dbm_sbuf *sb)
{
    size_t n;
    struct base **v = bases_copy(l, &n);
    if (!v)
        return;
    for (size_t i = 0; i < n; i++) {
        struct base *b = v[i];
        pthread_mutex_lock(&b->mu);
        if (!b->db) {
            pthread_mutex_unlock(&b->mu);
            continue;
        }
        struct stat st;
        uint64_t size = backing_stat(l, b->db, &st) == 0 ? (uint64_t)st.st_size : 0;
        struct dbm_tl_stat ts;
        memset(&ts, 0, sizeof ts);
        if (b->tl)
            dbm_tl_stat(b->tl, &ts);
        char k[128], t1[40] = "-", t2[40] = "-";
        if (b->tl && ts.last_txid) {
            dbm_ts_rfc3339(ts.first_ns, t1, sizeof t1);
            dbm_ts_rfc3339(ts.last_ns, t2, sizeof t2);
        }
#define KV(field, ...) (snprintf(k, sizeof k, "db.%s.%s", b->name, field), dbm_sbuf_kv(sb, k, __VA_ARGS__))
        KV("size", "%llu", (unsigned long long)size);
        KV("page_size", "%u", b->page_size);
        KV("journal_mode", "%s", b->wal_mode ? "wal" : jmode_names[b->mode]);
        KV("commits", "%llu", (unsigned long long)ts.commits);
        KV("last_txid", "%llu", (unsigned long long)ts.last_txid);
        KV("history_bytes", "%llu", (unsigned long long)ts.history_bytes);
        KV("earliest_restore_point", "%s", t1);
        KV("latest_commit", "%s", t2);
        KV("writer", "%s", __atomic_load_n(&b->writer, __ATOMIC_RELAXED) ? "active" : "idle");
        KV("refused_writes", "%llu", (unsigned long long)b->refused);
#undef KV
        pthread_mutex_unlock(&b->mu);
    }
    free(v);
}
