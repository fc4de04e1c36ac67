/* fsops_snap.c - the snapshots/ tree of each environment: restore points,
 * read-only views of each database at an instant, export.bacpac and its
 * checksum. Part of the FUSE glue (fsops_i.h).
 *
 * A snapshot directory is an entry of a table, named as it was looked up
 * ("latest", "20261120T103200Z", "2026-11-20T10:32:00Z"...). Its inode is
 * (K_SNAP, env, slot); the slot lives while the kernel holds a lookup of it.
 * "latest" is resolved again at every lookup. sn_mu protects the table; it
 * is taken after cfg_lock and before the page store (dbm_snapshot_put). */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "catalog.h"
#include "config.h"
#include "crypto.h"
#include "daemon.h"
#include "exports.h"
#include "fsops_i.h"
#include "log.h"
#include "snapshot.h"
#include "strutil.h"
#include "timefmt.h"

#define TTL_SNAP 1.0
#define SHA_FILE_LEN (DBM_SHA256_HEX_LEN + 2 + sizeof "export.bacpac" - 1 + 1)

struct snapent {
    int used;
    int env;
    int latest;
    char name[64];
    uint64_t nlookup;
    struct dbm_snapshot *snap;
};

static pthread_mutex_t sn_mu = PTHREAD_MUTEX_INITIALIZER;
static struct snapent *tab;
static size_t ntab;

struct viewfh {
    struct dbm_snapshot *snap;
    int idx;
    char scratch[];
};

struct expfh {
    struct dbm_export *e;
};

static void drop_view(void *obj)
{
    struct viewfh *v = obj;
    dbm_snapshot_put(v->snap);
    free(v);
}

static void drop_export(void *obj)
{
    struct expfh *h = obj;
    dbm_export_put(h->e);
    free(h);
}

int dbm_snapfs_is(fuse_ino_t ino)
{
    enum kind k = ino_kind(ino);
    return k >= K_SNAPDIR && k <= K_SNAPSHA;
}

/* An export.bacpac looked up once it was produced gets another inode (this
 * bit in its id): the kernel then holds its exact size from the start. With
 * the writeback cache the kernel takes a regular file's size from the daemon
 * only when it creates the inode, so the first inode keeps the bound it was
 * created with (fs-layout.md); its entry is never cached, so the next lookup
 * finds the new one. */
#define EXP_PRODUCED (1ull << 39)

static uint64_t slot_of(fuse_ino_t ino)
{
    return ino_kind(ino) == K_SNAPDB ? ino_id(ino) >> 16 : ino_id(ino) & ~EXP_PRODUCED;
}

/* A new reference to the snapshot of slot, or NULL. */
static struct dbm_snapshot *snap_get(uint64_t slot)
{
    struct dbm_snapshot *s = NULL;
    pthread_mutex_lock(&sn_mu);
    if (slot >= 1 && slot <= ntab && tab[slot - 1].used) {
        s = tab[slot - 1].snap;
        dbm_snapshot_get(s);
    }
    pthread_mutex_unlock(&sn_mu);
    return s;
}

/* Parses a snapshot name and checks it against the window. */
static int parse_instant(struct dbm_daemon *d, struct dbm_env *e, const char *name, uint64_t *ns, int *latest)
{
    uint64_t now = dbm_now_ns(), earliest = 0;
    const char *why = NULL;
    char a[40] = "-", b[40];
    *latest = strcmp(name, "latest") == 0;
    if (*latest) {
        *ns = now;
        return 0;
    }
    if (dbm_ts_parse(name, ns, &why) < 0) {
        dbm_notice("%s/snapshots/%s: not an instant (%s); accepted: latest, 20261120T103200Z, or RFC 3339 such as "
                   "2026-11-20T10:32:00Z (fractional seconds and offsets allowed)",
                   e->name, name, why);
        return -ENOENT;
    }
    int rc = dbm_snapshot_window(d->cat, d->store, e->name, e->conf->retention_sec, now, &earliest);
    if (rc < 0)
        return rc;
    uint64_t horizon = now - e->conf->retention_sec * DBM_NS_PER_SEC;
    uint64_t first = earliest ? earliest : horizon;
    dbm_ts_rfc3339(first, a, sizeof a);
    dbm_ts_rfc3339(now, b, sizeof b);
    if (*ns > now) {
        dbm_notice("%s/snapshots/%s: in the future; the window is %s to now (%s)", e->name, name, a, b);
        return -ENOENT;
    }
    if (*ns < horizon || (earliest && *ns < earliest)) {
        dbm_notice("%s/snapshots/%s: older than the earliest restore point; the window is %s to now (%s)", e->name,
                   name, a, b);
        return -ENOENT;
    }
    return 0;
}

/* Finds or adds the table entry of (env, name) holding snap; takes one
 * lookup. Returns the slot, or 0 if the table cannot grow. */
static uint64_t snap_enter(int env, const char *name, int latest, struct dbm_snapshot *snap)
{
    pthread_mutex_lock(&sn_mu);
    struct snapent *free_ent = NULL, *ent = NULL;
    for (size_t i = 0; i < ntab && !ent; i++) {
        if (tab[i].used && tab[i].env == env && strcmp(tab[i].name, name) == 0)
            ent = &tab[i];
        else if (!tab[i].used && !free_ent)
            free_ent = &tab[i];
    }
    struct dbm_snapshot *drop = NULL;
    if (ent) {
        if (latest && !dbm_snapshot_same(ent->snap, snap)) {
            drop = ent->snap; /* handles keep their own references */
            ent->snap = snap;
        } else {
            drop = snap;
        }
    } else {
        if (!free_ent && ntab < (1u << 24) - 1) {
            size_t nn = ntab ? ntab * 2 : 64;
            struct snapent *t = realloc(tab, nn * sizeof *t);
            if (t) {
                memset(t + ntab, 0, (nn - ntab) * sizeof *t);
                free_ent = &t[ntab];
                tab = t;
                ntab = nn;
            }
        }
        if (!free_ent) {
            pthread_mutex_unlock(&sn_mu);
            dbm_snapshot_put(snap);
            return 0;
        }
        ent = free_ent;
        ent->used = 1;
        ent->env = env;
        ent->latest = latest;
        dbm_strlcpy(ent->name, name, sizeof ent->name);
        ent->snap = snap;
        ent->nlookup = 0;
    }
    ent->nlookup++;
    uint64_t slot = (uint64_t)(ent - tab) + 1;
    pthread_mutex_unlock(&sn_mu);
    dbm_snapshot_put(drop);
    return slot;
}

void dbm_snapfs_forget(fuse_ino_t ino, uint64_t nlookup)
{
    uint64_t slot = ino_id(ino);
    struct dbm_snapshot *drop = NULL;
    pthread_mutex_lock(&sn_mu);
    if (slot >= 1 && slot <= ntab && tab[slot - 1].used) {
        struct snapent *ent = &tab[slot - 1];
        ent->nlookup = ent->nlookup > nlookup ? ent->nlookup - nlookup : 0;
        if (ent->nlookup == 0) {
            drop = ent->snap;
            ent->used = 0;
            ent->snap = NULL;
        }
    }
    pthread_mutex_unlock(&sn_mu);
    dbm_snapshot_put(drop);
}

static void fill_common(struct dbm_env *e, struct stat *st, fuse_ino_t ino, uint64_t mtime_ns)
{
    memset(st, 0, sizeof *st);
    st->st_ino = ino;
    st->st_nlink = 1;
    st->st_uid = e->conf->owner;
    st->st_gid = e->conf->group;
    st->st_blksize = 4096;
    st->st_mtim.tv_sec = (time_t)(mtime_ns / DBM_NS_PER_SEC);
    st->st_mtim.tv_nsec = (long)(mtime_ns % DBM_NS_PER_SEC);
    st->st_atim = st->st_ctim = st->st_mtim;
}

/* Whether the export of slot's snapshot is produced (its size exact). */
static int export_produced(struct dbm_daemon *d, uint64_t slot)
{
    struct dbm_snapshot *s = snap_get(slot);
    uint64_t size;
    int done = s && dbm_export_peek_size(d->exports, s, &size) == 1;
    dbm_snapshot_put(s);
    return done;
}

static int slot_is_latest(uint64_t slot)
{
    pthread_mutex_lock(&sn_mu);
    int l = slot >= 1 && slot <= ntab && tab[slot - 1].used && tab[slot - 1].latest;
    pthread_mutex_unlock(&sn_mu);
    return l;
}

int dbm_snapfs_attr(struct dbm_daemon *d, struct dbm_env *e, fuse_ino_t ino, struct stat *st, double *ttl)
{
    mode_t dmode = e->conf->mode & 0555, fmode = e->conf->mode & 0444;
    *ttl = TTL_SNAP;
    if (ino_kind(ino) == K_SNAPDIR) {
        fill_common(e, st, ino, dbm_now_ns());
        st->st_mode = S_IFDIR | dmode;
        st->st_nlink = 2;
        *ttl = 0;
        return 0;
    }
    uint64_t slot = slot_of(ino);
    struct dbm_snapshot *s = snap_get(slot);
    if (!s)
        return -ENOENT;
    if (slot_is_latest(slot))
        *ttl = 0;
    int rc = 0;
    fill_common(e, st, ino, s->canonical_ns ? s->canonical_ns : s->instant_ns);
    switch (ino_kind(ino)) {
    case K_SNAP:
        st->st_mode = S_IFDIR | dmode;
        st->st_nlink = 3;
        break;
    case K_SNAPDBDIR:
        st->st_mode = S_IFDIR | dmode;
        st->st_nlink = 2;
        break;
    case K_SNAPDB: {
        size_t idx = ino_id(ino) & 0xffff;
        if (idx >= s->n) {
            rc = -ENOENT;
            break;
        }
        const struct dbm_dbimage *img = &s->dbs[idx];
        fill_common(e, st, ino, img->commit_ns);
        st->st_mode = S_IFREG | fmode;
        st->st_size = (off_t)((uint64_t)img->page_size * img->db_pages);
        break;
    }
    case K_SNAPEXP: {
        uint64_t size = 0;
        /* exact once produced; until then an upper bound (fs-layout.md) */
        int done = dbm_export_peek_size(d->exports, s, &size);
        rc = done < 0 ? done : 0;
        st->st_mode = S_IFREG | fmode;
        st->st_size = (off_t)size;
        *ttl = 0;
        break;
    }
    case K_SNAPSHA:
        st->st_mode = S_IFREG | fmode;
        st->st_size = (off_t)SHA_FILE_LEN;
        break;
    default:
        rc = -ENOENT;
    }
    st->st_blocks = (st->st_size + 511) / 512;
    dbm_snapshot_put(s);
    return rc;
}

int dbm_snapfs_lookup(struct dbm_daemon *d, struct dbm_env *e, fuse_ino_t parent, const char *name, fuse_ino_t *ino,
                      struct stat *st, double *ttl)
{
    int rc;
    switch (ino_kind(parent)) {
    case K_SNAPDIR: {
        uint64_t ns;
        int latest;
        struct dbm_snapshot *s;
        if (strlen(name) >= sizeof tab[0].name)
            return -ENOENT;
        if ((rc = parse_instant(d, e, name, &ns, &latest)) < 0)
            return rc;
        if ((rc = dbm_snapshot_resolve(d->cat, d->store, e->name, dbm_env_type_name(e->conf->type), ns, &s)) < 0)
            return rc;
        uint64_t slot = snap_enter(e->index, name, latest, s);
        if (!slot)
            return -ENOMEM;
        *ino = mkino(K_SNAP, e->index, slot);
        rc = dbm_snapfs_attr(d, e, *ino, st, ttl);
        if (rc < 0)
            dbm_snapfs_forget(*ino, 1);
        return rc;
    }
    case K_SNAP:
        if (strcmp(name, "db") == 0)
            *ino = mkino(K_SNAPDBDIR, e->index, ino_id(parent));
        else if (strcmp(name, "export.bacpac") == 0)
            *ino = mkino(K_SNAPEXP, e->index, ino_id(parent) | (export_produced(d, ino_id(parent)) ? EXP_PRODUCED : 0));
        else if (strcmp(name, "export.bacpac.sha256") == 0)
            *ino = mkino(K_SNAPSHA, e->index, ino_id(parent));
        else
            return -ENOENT;
        return dbm_snapfs_attr(d, e, *ino, st, ttl);
    case K_SNAPDBDIR: {
        struct dbm_snapshot *s = snap_get(ino_id(parent));
        if (!s)
            return -ENOENT;
        int idx = dbm_snapshot_find(s, name);
        dbm_snapshot_put(s);
        if (idx < 0)
            return -ENOENT;
        *ino = mkino(K_SNAPDB, e->index, ino_id(parent) << 16 | (uint64_t)idx);
        return dbm_snapfs_attr(d, e, *ino, st, ttl);
    }
    default:
        return -ENOTDIR;
    }
}

int dbm_snapfs_list(struct dbm_daemon *d, struct dbm_env *e, fuse_ino_t ino, size_t start,
                    int (*add)(void *arg, const char *name, fuse_ino_t ino, mode_t mode), void *arg)
{
    if (ino_kind(ino) == K_SNAPDBDIR) {
        struct dbm_snapshot *s = snap_get(ino_id(ino));
        if (!s)
            return -ENOENT;
        for (size_t i = start; i < s->n; i++)
            if (add(arg, s->dbs[i].name, mkino(K_SNAPDB, e->index, ino_id(ino) << 16 | i), S_IFREG))
                break;
        dbm_snapshot_put(s);
        return 0;
    }
    /* snapshots/: "latest", then restore points at the cadence, newest first */
    uint64_t now = dbm_now_ns(), earliest = 0;
    int rc = dbm_snapshot_window(d->cat, d->store, e->name, e->conf->retention_sec, now, &earliest);
    if (rc < 0)
        return rc;
    fuse_ino_t any = mkino(K_SNAP, e->index, (1ULL << 40) - 1); /* readdir needs a non-zero d_ino */
    size_t k = 0;
    if (k++ >= start && add(arg, "latest", any, S_IFDIR))
        return 0;
    if (!earliest)
        return 0;
    uint64_t cad = e->conf->snapshot_cadence_sec * DBM_NS_PER_SEC;
    uint64_t first = (earliest + cad - 1) / cad * cad;
    for (uint64_t t = now / cad * cad; t >= first && t > 0; t -= cad) {
        char name[DBM_TS_COMPACT_LEN + 1];
        dbm_ts_compact(t, name);
        if (k++ >= start && add(arg, name, any, S_IFDIR))
            break;
    }
    return 0;
}

static void open_view(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    uint64_t slot = slot_of(ino);
    struct dbm_snapshot *s = snap_get(slot);
    size_t idx = ino_id(ino) & 0xffff;
    if (!s || idx >= s->n) {
        dbm_snapshot_put(s);
        fuse_reply_err(req, ENOENT);
        return;
    }
    struct viewfh *v = malloc(sizeof *v + s->dbs[idx].page_size);
    if (!v) {
        dbm_snapshot_put(s);
        fuse_reply_err(req, ENOMEM);
        return;
    }
    v->snap = s;
    v->idx = (int)idx;
    if (dbm_fs_fh_give(fi, v, drop_view) < 0) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    /* a past instant never changes: let the page cache keep it; latest may */
    int latest = slot_is_latest(slot);
    fi->keep_cache = !latest;
    fi->direct_io = latest;
    fuse_reply_open(req, fi);
}

static void open_export(fuse_req_t req, struct dbm_daemon *d, fuse_ino_t ino, struct fuse_file_info *fi, int sha)
{
    struct dbm_snapshot *s = snap_get(slot_of(ino));
    if (!s) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    struct dbm_export *e = NULL;
    int rc = dbm_export_get(d->exports, s, &e);
    dbm_snapshot_put(s);
    if (rc < 0) {
        fuse_reply_err(req, -rc);
        return;
    }
    if (sha) {
        /* reading the checksum finishes the export (this waits for it) */
        char hex[DBM_SHA256_HEX_LEN + 1], line[SHA_FILE_LEN + 1];
        uint64_t size;
        rc = dbm_export_wait(e);
        if (rc == 0 && dbm_export_size(e, &size, hex) == 1) {
            snprintf(line, sizeof line, "%s  export.bacpac\n", hex);
            rc = dbm_fs_textfh_give(fi, line, SHA_FILE_LEN);
        } else if (rc == 0) {
            rc = -EIO;
        }
        dbm_export_put(e);
        if (rc < 0) {
            fuse_reply_err(req, -rc);
            return;
        }
        fi->direct_io = 1;
        fuse_reply_open(req, fi);
        return;
    }
    struct expfh *h = malloc(sizeof *h);
    if (!h) {
        dbm_export_put(e);
        fuse_reply_err(req, ENOMEM);
        return;
    }
    h->e = e;
    if (dbm_fs_fh_give(fi, h, drop_export) < 0) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    int fd;
    uint64_t exact;
    if ((ino_id(ino) & EXP_PRODUCED) && dbm_export_file(e, &fd, &exact) && !slot_is_latest(slot_of(ino))) {
        /* produced, immutable, and the kernel created the inode with its
         * exact size: the page cache may keep it (warm reads at memory speed) */
        fi->keep_cache = 1;
        fuse_reply_open(req, fi);
        return;
    }
    /* reads come to us whatever stat said (an upper bound until produced) */
    fi->direct_io = 1;
    /* While it is produced, the size the kernel holds is only a bound, and
     * sendfile/splice read through the page cache up to it (zero padding).
     * A non-seekable open makes sendfile fail at once (ESPIPE), so copiers
     * such as Python's shutil fall back to plain reads, which stream whole. */
    uint64_t size;
    if (!dbm_export_size(e, &size, NULL))
        fi->nonseekable = 1;
    fuse_reply_open(req, fi);
}

void dbm_snapfs_open(fuse_req_t req, struct dbm_daemon *d, fuse_ino_t ino, struct fuse_file_info *fi)
{
    if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
        fuse_reply_err(req, EROFS);
        return;
    }
    switch (ino_kind(ino)) {
    case K_SNAPDB: open_view(req, ino, fi); return;
    case K_SNAPEXP: open_export(req, d, ino, fi, 0); return;
    case K_SNAPSHA: open_export(req, d, ino, fi, 1); return;
    default: fuse_reply_err(req, EISDIR); return;
    }
}

void dbm_snapfs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
    if (ino_kind(ino) == K_SNAPEXP) {
        /* a produced export is an immutable file: read from it as it is */
        struct expfh *h = dbm_fs_fh(fi);
        int fd;
        uint64_t total;
        if (dbm_export_file(h->e, &fd, &total)) {
            size_t n = (uint64_t)off >= total ? 0 : (uint64_t)off + size > total ? (size_t)(total - (uint64_t)off) : size;
            dbm_fs_reply_fd(req, fd, off, n);
            return;
        }
    }
    char *owned, *buf = dbm_fs_reply_buf(size, &owned);
    if (!buf) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    ssize_t n;
    if (ino_kind(ino) == K_SNAPDB) {
        struct viewfh *v = dbm_fs_fh(fi);
        n = dbm_dbimage_pread(&v->snap->dbs[v->idx], buf, size, (uint64_t)off, v->scratch);
    } else {
        struct expfh *h = dbm_fs_fh(fi);
        n = dbm_export_read(h->e, buf, size, off);
    }
    if (n < 0)
        fuse_reply_err(req, (int)-n);
    else
        fuse_reply_buf(req, buf, (size_t)n);
    free(owned);
}

void dbm_snapfs_cleanup(void)
{
    pthread_mutex_lock(&sn_mu);
    struct snapent *t = tab;
    size_t n = ntab;
    tab = NULL;
    ntab = 0;
    pthread_mutex_unlock(&sn_mu);
    for (size_t i = 0; i < n; i++)
        if (t[i].used)
            dbm_snapshot_put(t[i].snap);
    free(t);
}
