/* fsops.c - see fsops.h.
 *
 * Inode numbers encode what a node is, so most of the tree needs no table:
 *   1 root, 2 /README, 3 /status,
 *   (kind << 56) | (env index << 40) | id  for everything in an environment.
 * db/ files carry the livedb's file id. Each handler sends exactly one reply;
 * no lock is held across a reply. */
#include "fsops.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "config.h"
#include "daemon.h"
#include "fusepass.h"
#include "fuseuring.h"
#include "fusewb.h"
#include "livedb.h"
#include "log.h"
#include "strutil.h"
#include "sysio.h"
#include "textgen.h"
#include "timefmt.h"

#include "fsops_i.h"

static struct dbm_daemon *D(fuse_req_t req) { return fuse_req_userdata(req); }

static void ns_to_ts(uint64_t ns, struct timespec *ts)
{
    ts->tv_sec = (time_t)(ns / DBM_NS_PER_SEC);
    ts->tv_nsec = (long)(ns % DBM_NS_PER_SEC);
}

/* Caller identity and rights. */
static int caller_may(fuse_req_t req, const struct dbm_env_conf *c, int want)
{
    const struct fuse_ctx *ctx = fuse_req_ctx(req);
    /* Supplementary groups cost a read of /proc per request: skip it when
     * the uid and primary gid already allow, unless the group bits are
     * narrower than the others' (then membership can take rights away). */
    unsigned gbits = (c->mode >> 3) & 7, obits = c->mode & 7;
    if ((obits & ~gbits) == 0 && dbm_env_allows(c, ctx->uid, ctx->gid, NULL, 0, want))
        return 1;
    gid_t groups[64];
    int n = fuse_req_getgroups(req, 64, groups);
    if (n <= 0 || n > 64)
        return 0;
    return dbm_env_allows(c, ctx->uid, ctx->gid, groups, (size_t)n, want);
}

/* With the writeback cache the kernel takes a regular file's size from the
 * daemon only when it creates the inode (fusewb.h), and a text file's length
 * changes from one read to the next: each lookup of one then gives another
 * inode (a generation in these bits of its id), never cached, so that stat
 * shows the length of the content generated at that moment. */
#define TEXT_GEN_SHIFT 16
#define TEXT_GEN_MASK (ID_MASK & ~((1ull << TEXT_GEN_SHIFT) - 1))

/* A text file's inode without its generation. */
static fuse_ino_t text_base(fuse_ino_t ino)
{
    enum kind k = ino_kind(ino);
    return k == K_TOP || k == K_ENV_INFO || k == K_ENV_STATUS ? ino & ~(fuse_ino_t)TEXT_GEN_MASK : ino;
}

/* Generates a text file's content (cfg_lock held for reading). -ENOENT if
 * the node is gone (environment removed by a reload). */
static int gen_text(struct dbm_daemon *d, fuse_ino_t ino, struct dbm_sbuf *b)
{
    ino = text_base(ino);
    if (ino == INO_README) {
        dbm_text_readme(d, b);
        return 0;
    }
    if (ino == INO_STATUS) {
        pthread_rwlock_unlock(&d->cfg_lock); /* root status takes the lock itself */
        dbm_text_root_status(d, b);
        pthread_rwlock_rdlock(&d->cfg_lock);
        return 0;
    }
    struct dbm_env *e = dbm_daemon_env_at(d, ino_env(ino));
    if (!e)
        return -ENOENT;
    if (ino_kind(ino) == K_ENV_INFO)
        dbm_text_env_info(d, e, b);
    else
        dbm_text_env_status(d, e, b);
    return 0;
}

static int is_text(fuse_ino_t ino)
{
    ino = text_base(ino);
    return ino == INO_README || ino == INO_STATUS || ino_kind(ino) == K_ENV_INFO || ino_kind(ino) == K_ENV_STATUS;
}

/* The inode a lookup of text file ino gives (see TEXT_GEN_SHIFT). */
static fuse_ino_t text_lookup_ino(struct dbm_daemon *d, fuse_ino_t ino)
{
    static _Atomic uint64_t gen;
    if (!dbm_fusewb_wanted(d->wb))
        return ino;
    uint64_t g = __atomic_add_fetch(&gen, 1, __ATOMIC_RELAXED) & (TEXT_GEN_MASK >> TEXT_GEN_SHIFT);
    return ino | (fuse_ino_t)(g ? g : 1) << TEXT_GEN_SHIFT;
}

/* Fills st for any node but db files. cfg_lock held for reading. */
static int node_attr(struct dbm_daemon *d, fuse_ino_t ino, struct stat *st, size_t text_len)
{
    memset(st, 0, sizeof *st);
    st->st_ino = ino;
    st->st_nlink = 1;
    st->st_blksize = 4096;
    uint64_t now = dbm_now_ns();
    if (ino_kind(ino) == K_TOP) {
        fuse_ino_t base = text_base(ino);
        st->st_uid = d->mount_uid;
        st->st_gid = d->mount_gid;
        ns_to_ts(d->start_ns, &st->st_mtim);
        if (ino == INO_ROOT) {
            st->st_mode = S_IFDIR | 0755;
            st->st_nlink = 2 + (nlink_t)d->cfg->nenvs;
        } else if (base == INO_README) {
            st->st_mode = S_IFREG | 0444;
        } else if (base == INO_STATUS) {
            st->st_mode = S_IFREG | 0444;
            ns_to_ts(now, &st->st_mtim);
        } else {
            return -ENOENT;
        }
    } else {
        struct dbm_env *e = dbm_daemon_env_at(d, ino_env(ino));
        if (!e)
            return -ENOENT;
        const struct dbm_env_conf *c = e->conf;
        st->st_uid = c->owner;
        st->st_gid = c->group;
        ns_to_ts(e->changed_ns, &st->st_mtim);
        switch (ino_kind(ino)) {
        case K_ENV:
            st->st_mode = S_IFDIR | c->mode;
            st->st_nlink = 4; /* ., .., db, snapshots */
            ns_to_ts(e->created_ns, &st->st_mtim);
            break;
        case K_DBDIR:
            st->st_mode = S_IFDIR | c->mode;
            st->st_nlink = 2;
            break;
        case K_ENV_INFO:
            st->st_mode = S_IFREG | (c->mode & 0444);
            break;
        case K_ENV_STATUS:
            st->st_mode = S_IFREG | (c->mode & 0444);
            ns_to_ts(now, &st->st_mtim);
            break;
        default:
            return -ENOENT;
        }
    }
    st->st_atim = st->st_ctim = st->st_mtim;
    if (is_text(ino)) {
        st->st_size = (off_t)text_len;
        st->st_blocks = (blkcnt_t)((text_len + 511) / 512);
    }
    return 0;
}

/* Attributes of a node, generating text content to know its size. */
static int attr_of(struct dbm_daemon *d, fuse_ino_t ino, struct stat *st, double *ttl)
{
    if (dbm_snapfs_is(ino)) {
        struct dbm_env *e = dbm_daemon_env_at(d, ino_env(ino));
        return e ? dbm_snapfs_attr(d, e, ino, st, ttl) : -ENOENT;
    }
    if (ino_kind(ino) == K_DBFILE) {
        struct dbm_env *e = dbm_daemon_env_at(d, ino_env(ino));
        if (!e)
            return -ENOENT;
        *ttl = TTL_DB;
        int rc = dbm_livedb_getattr(e->live, ino_id(ino), st);
        st->st_ino = ino;
        return rc;
    }
    size_t len = 0;
    if (is_text(ino)) {
        struct dbm_sbuf b = { 0 };
        int rc = gen_text(d, ino, &b);
        len = b.len;
        dbm_sbuf_free(&b);
        if (rc < 0)
            return rc;
        *ttl = TTL_TEXT;
    } else {
        *ttl = TTL_DIR;
    }
    return node_attr(d, ino, st, len);
}

void dbm_fs_reply_entry(fuse_req_t req, fuse_ino_t ino, const struct stat *st, double ttl)
{
    struct fuse_entry_param e;
    memset(&e, 0, sizeof e);
    e.ino = ino;
    e.attr = *st;
    e.attr_timeout = ttl;
    /* text files keep their names, unless each lookup gives another inode
     * (TEXT_GEN_SHIFT); snapshot names (latest) re-resolve */
    e.entry_timeout = ttl > 0 || dbm_snapfs_is(ino) || text_base(ino) != ino ? ttl : TTL_DIR;
    fuse_reply_entry(req, &e);
}

char *dbm_fs_reply_buf(size_t size, char **owned)
{
    char *buf = dbm_uring_reply_buf(size);
    *owned = NULL;
    if (!buf)
        buf = *owned = malloc(size ? size : 1);
    return buf;
}

void dbm_fs_reply_fd(fuse_req_t req, int fd, off_t off, size_t size)
{
    char *buf = dbm_uring_reply_buf(size);
    if (buf) {
        /* io_uring: the reply goes from its entry's buffer, so read into it */
        ssize_t n = dbm_pread_all(fd, buf, size, off);
        if (n < 0)
            fuse_reply_err(req, (int)-n);
        else
            fuse_reply_buf(req, buf, (size_t)n);
        return;
    }
    /* /dev/fuse: the kernel splices straight from the file, no copy */
    struct fuse_bufvec bv = FUSE_BUFVEC_INIT(size);
    bv.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
    bv.buf[0].fd = fd;
    bv.buf[0].pos = off;
    fuse_reply_data(req, &bv, FUSE_BUF_SPLICE_MOVE);
}

/* A "not found" that the kernel may cache: SQLite probes for -journal and
 * -wal files constantly. */
static void reply_negative(fuse_req_t req, double ttl)
{
    struct fuse_entry_param e;
    memset(&e, 0, sizeof e);
    e.entry_timeout = ttl;
    fuse_reply_entry(req, &e);
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
    struct dbm_daemon *d = userdata;
    if (conn->capable & FUSE_CAP_POSIX_LOCKS)
        conn->want |= FUSE_CAP_POSIX_LOCKS;
    /* Explicit invalidation instead of dropping the whole cache on every
     * mtime change (fuse-notes.md): db files change only through us. */
    conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
    /* the writeback cache (fusewb.h), or every write as SQLite makes it */
    int wb = dbm_fusewb_wanted(d->wb) && (conn->capable & FUSE_CAP_WRITEBACK_CACHE);
    if (!wb && d->writeback)
        dbm_daemon_writeback_off(d); /* opened for it, not offered: journals need no direct I/O then */
    dbm_fusewb_init(d->wb, wb);
    if (wb)
        conn->want |= FUSE_CAP_WRITEBACK_CACHE;
    else
        conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
    if (conn->capable & FUSE_CAP_SPLICE_WRITE)
        conn->want |= FUSE_CAP_SPLICE_WRITE;
    conn->want &= ~FUSE_CAP_FLOCK_LOCKS;
    conn->max_write = DBM_FUSE_MAX_WRITE;
    dbm_info("FUSE connection initialised (protocol %u.%u)", conn->proto_major, conn->proto_minor);
}

static int ready_fd = -1;

static void op_init_ready(void *userdata, struct fuse_conn_info *conn)
{
    op_init(userdata, conn);
    if (ready_fd >= 0) {
        /* the parent waits for this byte to exit 0: the mount is usable */
        if (write(ready_fd, "0", 1) != 1)
            dbm_warn("cannot tell the parent the mount is ready: %s", strerror(errno));
        close(ready_fd);
        ready_fd = -1;
    }
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    struct dbm_daemon *d = D(req);
    fuse_ino_t ino = 0;
    struct stat st;
    double ttl = TTL_DIR;
    int rc = -ENOENT;
    pthread_rwlock_rdlock(&d->cfg_lock);
    if (parent == INO_ROOT) {
        struct dbm_env *e;
        if (strcmp(name, "README") == 0)
            ino = text_lookup_ino(d, INO_README);
        else if (strcmp(name, "status") == 0)
            ino = text_lookup_ino(d, INO_STATUS);
        else if ((e = dbm_daemon_env(d, name)))
            ino = mkino(K_ENV, e->index, 0);
        rc = ino ? attr_of(d, ino, &st, &ttl) : -ENOENT;
    } else {
        struct dbm_env *e = dbm_daemon_env_at(d, ino_env(parent));
        if (!e) {
            rc = -ENOENT;
        } else if (!caller_may(req, e->conf, DBM_ACCESS_READ)) {
            rc = -EACCES;
        } else if (ino_kind(parent) == K_ENV) {
            if (strcmp(name, "info") == 0)
                ino = text_lookup_ino(d, mkino(K_ENV_INFO, e->index, 0));
            else if (strcmp(name, "status") == 0)
                ino = text_lookup_ino(d, mkino(K_ENV_STATUS, e->index, 0));
            else if (strcmp(name, "db") == 0)
                ino = mkino(K_DBDIR, e->index, 0);
            else if (strcmp(name, "snapshots") == 0)
                ino = mkino(K_SNAPDIR, e->index, 0);
            rc = ino ? attr_of(d, ino, &st, &ttl) : -ENOENT;
        } else if (dbm_snapfs_is(parent)) {
            rc = dbm_snapfs_lookup(d, e, parent, name, &ino, &st, &ttl);
        } else if (ino_kind(parent) == K_DBDIR) {
            uint64_t id;
            rc = dbm_livedb_lookup(e->live, name, &id, &st);
            if (rc == 0) {
                ino = mkino(K_DBFILE, e->index, id);
                st.st_ino = ino;
                ttl = TTL_DB;
            }
        } else {
            rc = -ENOTDIR;
        }
    }
    pthread_rwlock_unlock(&d->cfg_lock);
    if (rc == 0)
        dbm_fs_reply_entry(req, ino, &st, ttl);
    else if (rc == -ENOENT && ino_kind(parent) == K_DBDIR)
        reply_negative(req, TTL_DB);
    else if (rc == -ENOENT && dbm_snapfs_is(parent))
        reply_negative(req, 0); /* time moves: an instant in the future becomes valid */
    else
        fuse_reply_err(req, -rc);
}

static void forget_one(struct dbm_daemon *d, fuse_ino_t ino, uint64_t n)
{
    if (ino_kind(ino) == K_SNAP) {
        dbm_snapfs_forget(ino, n);
        return;
    }
    if (ino_kind(ino) != K_DBFILE)
        return;
    int idx = ino_env(ino);
    /* the runtime outlives reloads, so a hidden env still forgets; the lock
     * orders this read of envs[] after a reload that appended to it */
    pthread_rwlock_rdlock(&d->cfg_lock);
    if (idx < d->nenvs)
        dbm_livedb_forget(d->envs[idx]->live, ino_id(ino), n);
    pthread_rwlock_unlock(&d->cfg_lock);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
    forget_one(D(req), ino, nlookup);
    fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *f)
{
    for (size_t i = 0; i < count; i++)
        forget_one(D(req), f[i].ino, f[i].nlookup);
    fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct dbm_daemon *d = D(req);
    struct stat st;
    double ttl;
    int rc;
    pthread_rwlock_rdlock(&d->cfg_lock);
    if (fi && is_text(ino) && fi->fh) {
        /* fstat on an open text file: the size of what this handle reads */
        struct textfh *t = dbm_fs_fh(fi);
        rc = node_attr(d, ino, &st, t->len);
        ttl = TTL_TEXT;
    } else {
        rc = attr_of(d, ino, &st, &ttl);
    }
    pthread_rwlock_unlock(&d->cfg_lock);
    if (rc < 0)
        fuse_reply_err(req, -rc);
    else
        fuse_reply_attr(req, &st, ttl);
}

static struct dbm_env *db_env(struct dbm_daemon *d, fuse_ino_t ino, fuse_req_t req, int want, int *rc)
{
    struct dbm_env *e = dbm_daemon_env_at(d, ino_env(ino));
    *rc = 0;
    if (!e)
        *rc = -ENOENT;
    else if (want && !caller_may(req, e->conf, want))
        *rc = -EACCES;
    return *rc ? NULL : e;
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi)
{
    struct dbm_daemon *d = D(req);
    struct stat st;
    int rc;
    (void)fi;
    pthread_rwlock_rdlock(&d->cfg_lock);
    if (dbm_snapfs_is(ino)) {
        rc = -EROFS;
    } else if (ino_kind(ino) != K_DBFILE) {
        rc = -EPERM;
    } else if (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
        rc = -EPERM; /* owner and mode come from the configuration */
    } else {
        struct dbm_env *e = db_env(d, ino, req, DBM_ACCESS_WRITE, &rc);
        if (e && (to_set & FUSE_SET_ATTR_SIZE))
            rc = dbm_livedb_truncate(e->live, ino_id(ino), (uint64_t)attr->st_size, &st);
        else if (e)
            rc = dbm_livedb_getattr(e->live, ino_id(ino), &st); /* times: not settable (livedb.h) */
        st.st_ino = ino;
    }
    pthread_rwlock_unlock(&d->cfg_lock);
    if (rc < 0)
        fuse_reply_err(req, -rc);
    else
        fuse_reply_attr(req, &st, TTL_DB);
}

/* ---- directories ---- */

struct dirbuf {
    fuse_req_t req;
    char *buf;
    size_t size, len;
    off_t next;
};

/* Adds one entry; returns 1 when the reply buffer is full. */
static int dir_add(struct dirbuf *db, const char *name, fuse_ino_t ino, mode_t mode)
{
    struct stat st = { .st_ino = ino, .st_mode = mode };
    size_t need = fuse_add_direntry(db->req, NULL, 0, name, NULL, 0);
    if (db->len + need > db->size)
        return 1;
    db->next++;
    fuse_add_direntry(db->req, db->buf + db->len, db->size - db->len, name, &st, db->next);
    db->len += need;
    return 0;
}

static int dir_add_cb(void *arg, const char *name, fuse_ino_t ino, mode_t mode)
{
    return dir_add(arg, name, ino, mode);
}

struct dbfile_iter {
    struct dirbuf *db;
    int env;
};

static int dbfile_cb(const char *name, uint64_t id, const struct stat *st, void *arg)
{
    struct dbfile_iter *it = arg;
    return dir_add(it->db, name, mkino(K_DBFILE, it->env, id), st->st_mode);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct dbm_daemon *d = D(req);
    int rc = 0;
    if (ino != INO_ROOT) {
        pthread_rwlock_rdlock(&d->cfg_lock);
        db_env(d, ino, req, DBM_ACCESS_READ, &rc);
        pthread_rwlock_unlock(&d->cfg_lock);
    }
    if (rc < 0)
        fuse_reply_err(req, -rc);
    else
        fuse_reply_open(req, fi);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
    struct dbm_daemon *d = D(req);
    (void)fi;
    char *buf = malloc(size);
    if (!buf) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    struct dirbuf db = { .req = req, .buf = buf, .size = size, .next = off };
    int rc = 0;
    pthread_rwlock_rdlock(&d->cfg_lock);
    /* Entries are numbered; off is how many were already returned. The
     * fixed entries come first; listings of variable parts resume by index. */
    const char *fixed[8];
    fuse_ino_t fino[8];
    mode_t fmode[8];
    int nf = 0;
    fixed[nf] = ".", fino[nf] = ino, fmode[nf++] = S_IFDIR;
    fixed[nf] = "..", fino[nf] = INO_ROOT, fmode[nf++] = S_IFDIR;
    struct dbm_env *e = NULL;
    if (ino == INO_ROOT) {
        fixed[nf] = "README", fino[nf] = INO_README, fmode[nf++] = S_IFREG;
        fixed[nf] = "status", fino[nf] = INO_STATUS, fmode[nf++] = S_IFREG;
    } else if ((e = dbm_daemon_env_at(d, ino_env(ino))) == NULL) {
        rc = -ENOENT;
    } else if (ino_kind(ino) == K_ENV) {
        fixed[nf] = "info", fino[nf] = mkino(K_ENV_INFO, e->index, 0), fmode[nf++] = S_IFREG;
        fixed[nf] = "status", fino[nf] = mkino(K_ENV_STATUS, e->index, 0), fmode[nf++] = S_IFREG;
        fixed[nf] = "db", fino[nf] = mkino(K_DBDIR, e->index, 0), fmode[nf++] = S_IFDIR;
        fixed[nf] = "snapshots", fino[nf] = mkino(K_SNAPDIR, e->index, 0), fmode[nf++] = S_IFDIR;
    } else if (ino_kind(ino) == K_DBDIR || ino_kind(ino) == K_SNAPDIR) {
        fino[1] = mkino(K_ENV, e->index, 0);
    } else if (ino_kind(ino) == K_SNAP) {
        fino[1] = mkino(K_SNAPDIR, e->index, 0);
        fixed[nf] = "db", fino[nf] = mkino(K_SNAPDBDIR, e->index, ino_id(ino)), fmode[nf++] = S_IFDIR;
        fixed[nf] = "export.bacpac", fino[nf] = mkino(K_SNAPEXP, e->index, ino_id(ino)), fmode[nf++] = S_IFREG;
        fixed[nf] = "export.bacpac.sha256", fino[nf] = mkino(K_SNAPSHA, e->index, ino_id(ino)),
        fmode[nf++] = S_IFREG;
    } else if (ino_kind(ino) == K_SNAPDBDIR) {
        fino[1] = mkino(K_SNAP, e->index, ino_id(ino));
    } else {
        rc = -ENOTDIR;
    }
    int full = 0;
    for (int i = (int)off; rc == 0 && !full && i < nf; i++)
        full = dir_add(&db, fixed[i], fino[i], fmode[i]);
    if (rc == 0 && !full) {
        off_t done = off > nf ? off - nf : 0; /* variable entries already returned */
        if (ino == INO_ROOT) {
            int k = 0;
            for (int i = 0; i < d->nenvs; i++) {
                if (!d->envs[i]->conf)
                    continue;
                if (k++ < done)
                    continue;
                if (dir_add(&db, d->envs[i]->name, mkino(K_ENV, i, 0), S_IFDIR))
                    break;
            }
        } else if (ino_kind(ino) == K_DBDIR) {
            struct dbfile_iter it = { .db = &db, .env = e->index };
            rc = dbm_livedb_list(e->live, (size_t)done, dbfile_cb, &it);
        } else if (ino_kind(ino) == K_SNAPDIR || ino_kind(ino) == K_SNAPDBDIR) {
            rc = dbm_snapfs_list(d, e, ino, (size_t)done, dir_add_cb, &db);
        }
    }
    pthread_rwlock_unlock(&d->cfg_lock);
    if (rc < 0)
        fuse_reply_err(req, -rc);
    else
        fuse_reply_buf(req, buf, db.len);
    free(buf);
}

/* ---- files ---- */

struct fhent {
    struct fhent *prev, *next;
    void *obj;
    void (*drop)(void *obj);
};

/* fh_mu guards the list; it is taken alone (never with cfg_lock or a
 * livedb lock held), and drop() runs outside it. */
static pthread_mutex_t fh_mu = PTHREAD_MUTEX_INITIALIZER;
static struct fhent fh_list = { &fh_list, &fh_list, NULL, NULL };

int dbm_fs_fh_give(struct fuse_file_info *fi, void *obj, void (*drop)(void *obj))
{
    struct fhent *h = malloc(sizeof *h);
    if (!h) {
        drop(obj);
        return -ENOMEM;
    }
    h->obj = obj;
    h->drop = drop;
    pthread_mutex_lock(&fh_mu);
    h->next = fh_list.next;
    h->prev = &fh_list;
    h->next->prev = h;
    fh_list.next = h;
    pthread_mutex_unlock(&fh_mu);
    fi->fh = (uintptr_t)h;
    return 0;
}

void *dbm_fs_fh(const struct fuse_file_info *fi)
{
    return fi && fi->fh ? ((struct fhent *)(uintptr_t)fi->fh)->obj : NULL;
}

static void fh_unlink_drop(struct fhent *h)
{
    pthread_mutex_lock(&fh_mu);
    h->prev->next = h->next;
    h->next->prev = h->prev;
    pthread_mutex_unlock(&fh_mu);
    h->drop(h->obj);
    free(h);
}

void dbm_fs_fh_release(struct fuse_file_info *fi)
{
    if (fi->fh)
        fh_unlink_drop((struct fhent *)(uintptr_t)fi->fh);
    fi->fh = 0;
}

/* At unmount, with no thread serving requests any more. */
static void fh_drop_all(void)
{
    size_t n = 0;
    for (;;) {
        pthread_mutex_lock(&fh_mu);
        struct fhent *h = fh_list.next == &fh_list ? NULL : fh_list.next;
        pthread_mutex_unlock(&fh_mu);
        if (!h)
            break;
        fh_unlink_drop(h);
        n++;
    }
    if (n)
        dbm_info("unmount: dropped %zu file handle(s) the kernel did not release", n);
}

static void drop_free(void *obj)
{
    free(obj);
}

static void drop_dbhandle(void *obj)
{
    dbm_livedb_release(obj);
}

int dbm_fs_textfh_give(struct fuse_file_info *fi, const char *data, size_t len)
{
    struct textfh *t = malloc(sizeof *t + len);
    if (!t)
        return -ENOMEM;
    t->len = len;
    memcpy(t->data, data, len);
    return dbm_fs_fh_give(fi, t, drop_free);
}

static void open_text(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct dbm_daemon *d = D(req);
    if ((fi->flags & O_ACCMODE) != O_RDONLY) {
        fuse_reply_err(req, EACCES);
        return;
    }
    struct dbm_sbuf b = { 0 };
    pthread_rwlock_rdlock(&d->cfg_lock);
    int rc = gen_text(d, ino, &b);
    pthread_rwlock_unlock(&d->cfg_lock);
    if (rc == 0)
        rc = dbm_sbuf_ok(&b) ? dbm_fs_textfh_give(fi, b.buf, b.len) : -ENOMEM;
    dbm_sbuf_free(&b);
    if (rc < 0) {
        fuse_reply_err(req, -rc);
        return;
    }
    fi->direct_io = 1;  /* each open sees content generated for it, never a stale cache */
    fi->keep_cache = 0;
    fuse_reply_open(req, fi);
}

/* How the kernel opens a database file: the page cache stays valid (every
 * change comes through us) unless passthrough writes bypass it; a WAL or
 * journal in passthrough goes to its backing file (fusepass.h). The reply must follow
 * on this thread: the passthrough mark is per thread. */
static void set_dbfile_open(struct fuse_file_info *fi, struct dbm_dbhandle *h)
{
    int cacheable;
    int id = dbm_livedb_handle_passthrough(h, &cacheable);
    fi->keep_cache = cacheable;
    fi->direct_io = dbm_livedb_handle_direct(h);
    dbm_fusepass_reply_next(id);
}

static void reply_open_dbfile(fuse_req_t req, struct fuse_file_info *fi, struct dbm_dbhandle *h)
{
    set_dbfile_open(fi, h);
    fuse_reply_open(req, fi);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct dbm_daemon *d = D(req);
    if (is_text(ino)) {
        open_text(req, ino, fi);
        return;
    }
    if (dbm_snapfs_is(ino)) {
        dbm_snapfs_open(req, d, ino, fi);
        return;
    }
    if (ino_kind(ino) != K_DBFILE) {
        fuse_reply_err(req, EISDIR);
        return;
    }
    int rc, acc = fi->flags & O_ACCMODE;
    pthread_rwlock_rdlock(&d->cfg_lock);
    struct dbm_env *e = db_env(d, ino, req, acc == O_RDONLY ? DBM_ACCESS_READ : DBM_ACCESS_WRITE, &rc);
    struct dbm_dbhandle *h = NULL;
    if (e)
        rc = dbm_livedb_open_file(e->live, ino_id(ino), fi->flags, &h);
    pthread_rwlock_unlock(&d->cfg_lock);
    if (rc == 0 && dbm_fusewb_is_own(d->wb, fuse_req_ctx(req)->pid))
        dbm_livedb_handle_set_own(h); /* the writeback helper's (fusewb.h) */
    if (rc == 0)
        rc = dbm_fs_fh_give(fi, h, drop_dbhandle);
    if (rc < 0) {
        fuse_reply_err(req, -rc);
        return;
    }
    reply_open_dbfile(req, fi, h);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, struct fuse_file_info *fi)
{
    struct dbm_daemon *d = D(req);
    (void)mode;
    int rc;
    struct stat st;
    uint64_t id = 0;
    struct dbm_dbhandle *h = NULL;
    pthread_rwlock_rdlock(&d->cfg_lock);
    struct dbm_env *e = NULL;
    if (dbm_snapfs_is(parent))
        rc = -EROFS;
    else if (ino_kind(parent) != K_DBDIR)
        rc = parent == INO_ROOT || ino_kind(parent) == K_ENV ? -EPERM : -ENOTDIR;
    else if ((e = db_env(d, parent, req, DBM_ACCESS_WRITE, &rc)))
        rc = dbm_livedb_create(e->live, name, fi->flags, &id, &st, &h);
    pthread_rwlock_unlock(&d->cfg_lock);
    if (rc == 0)
        rc = dbm_fs_fh_give(fi, h, drop_dbhandle);
    if (rc < 0) {
        fuse_reply_err(req, -rc);
        return;
    }
    struct fuse_entry_param ep;
    memset(&ep, 0, sizeof ep);
    ep.ino = mkino(K_DBFILE, e->index, id);
    st.st_ino = ep.ino;
    ep.attr = st;
    ep.attr_timeout = ep.entry_timeout = TTL_DB;
    set_dbfile_open(fi, h);
    fuse_reply_create(req, &ep, fi);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
    (void)parent, (void)name, (void)mode, (void)rdev;
    fuse_reply_err(req, EPERM);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
    (void)name, (void)mode;
    fuse_reply_err(req, dbm_snapfs_is(parent) ? EROFS : EPERM);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    struct dbm_daemon *d = D(req);
    int rc;
    pthread_rwlock_rdlock(&d->cfg_lock);
    struct dbm_env *e = NULL;
    if (dbm_snapfs_is(parent))
        rc = -EROFS;
    else if (ino_kind(parent) != K_DBDIR)
        rc = -EPERM;
    else if ((e = db_env(d, parent, req, DBM_ACCESS_WRITE, &rc)))
        rc = dbm_livedb_unlink(e->live, name);
    pthread_rwlock_unlock(&d->cfg_lock);
    fuse_reply_err(req, -rc);
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent, const char *newname,
                      unsigned int flags)
{
    (void)parent, (void)name, (void)newparent, (void)newname, (void)flags;
    /* SQLite never renames its files; a database's name is its identity in the history */
    dbm_info("rename refused: database names are fixed (copy or move a database with an operation instead)");
    fuse_reply_err(req, EPERM);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
    if (dbm_snapfs_is(ino) && ino_kind(ino) != K_SNAPSHA) {
        dbm_snapfs_read(req, ino, size, off, fi);
        return;
    }
    if (is_text(ino) || ino_kind(ino) == K_SNAPSHA) {
        /* Reply from a copy: once the kernel has the data the reader may
         * close, and another thread's RELEASE frees the handle while this
         * reply is still being sent. */
        struct textfh *t = dbm_fs_fh(fi);
        size_t n = (uint64_t)off >= t->len ? 0 : (size_t)off + size > t->len ? t->len - (size_t)off : size;
        char *owned, *copy = dbm_fs_reply_buf(n, &owned);
        if (!copy) {
            fuse_reply_err(req, ENOMEM);
            return;
        }
        if (n)
            memcpy(copy, t->data + off, n);
        fuse_reply_buf(req, copy, n);
        free(owned);
        return;
    }
    struct dbm_dbhandle *h = dbm_fs_fh(fi);
    if (dbm_livedb_shadowed(h)) {
        /* a transaction's pages wait in a shadow: read through it */
        char *owned, *buf = dbm_fs_reply_buf(size, &owned);
        ssize_t n = buf ? dbm_livedb_read(h, buf, size, off) : -ENOMEM;
        if (n < 0)
            fuse_reply_err(req, (int)-n);
        else
            fuse_reply_buf(req, buf, (size_t)n);
        free(owned);
        return;
    }
    dbm_fs_reply_fd(req, dbm_livedb_handle_fd(h), off, size);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi)
{
    if (ino_kind(ino) != K_DBFILE) {
        fuse_reply_err(req, dbm_snapfs_is(ino) ? EROFS : EBADF);
        return;
    }
    ssize_t n = dbm_livedb_write(dbm_fs_fh(fi), buf, size, off);
    if (n < 0)
        fuse_reply_err(req, (int)-n);
    else
        fuse_reply_write(req, (size_t)n);
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    int rc = 0;
    if (ino_kind(ino) == K_DBFILE)
        rc = dbm_livedb_flush(dbm_fs_fh(fi), fi->lock_owner);
    fuse_reply_err(req, -rc);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino;
    dbm_fs_fh_release(fi);
    fuse_reply_err(req, 0);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    int rc = 0;
    if (ino_kind(ino) == K_DBFILE)
        rc = dbm_livedb_fsync(dbm_fs_fh(fi), datasync, fuse_req_ctx(req)->pid);
    fuse_reply_err(req, -rc);
}

static void op_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    struct dbm_daemon *d = D(req);
    (void)datasync, (void)fi;
    int rc = 0;
    if (ino_kind(ino) == K_DBDIR) {
        /* SQLite syncs db/ after creating a journal: make that real */
        int idx = ino_env(ino);
        pthread_rwlock_rdlock(&d->cfg_lock);
        if (idx < d->nenvs)
            rc = dbm_livedb_fsyncdir(d->envs[idx]->live);
        pthread_rwlock_unlock(&d->cfg_lock);
    }
    fuse_reply_err(req, -rc);
}

static void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len, struct fuse_file_info *fi)
{
    int rc = -EOPNOTSUPP;
    if (ino_kind(ino) == K_DBFILE)
        rc = dbm_livedb_fallocate(dbm_fs_fh(fi), mode, off, len);
    fuse_reply_err(req, -rc);
}

static void op_getlk(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi, struct flock *lock)
{
    if (ino_kind(ino) != K_DBFILE) {
        lock->l_type = F_UNLCK;
        fuse_reply_lock(req, lock);
        return;
    }
    int rc = dbm_livedb_getlk(dbm_fs_fh(fi), fi->lock_owner, lock);
    if (rc < 0)
        fuse_reply_err(req, -rc);
    else
        fuse_reply_lock(req, lock);
}

static int req_interrupted(void *arg) { return fuse_req_interrupted((fuse_req_t)arg); }

static void op_setlk(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi, struct flock *lock, int sleep)
{
    /* read-only, immutable nodes (snapshot views): nothing to arbitrate */
    int rc = 0;
    if (ino_kind(ino) == K_DBFILE)
        rc = dbm_livedb_setlk(dbm_fs_fh(fi), fi->lock_owner, lock, sleep,
                              req_interrupted, req);
    fuse_reply_err(req, -rc);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
    struct dbm_daemon *d = D(req);
    struct statvfs sv;
    (void)ino;
    if (statvfs(d->state_dir, &sv) < 0) {
        fuse_reply_err(req, errno);
        return;
    }
    sv.f_namemax = 255;
    fuse_reply_statfs(req, &sv);
}

static void op_destroy(void *userdata)
{
    (void)userdata;
    /* handles first: snapshot views hold snapshot references */
    fh_drop_all();
    /* the kernel does not forget every inode at unmount: let the snapshots go */
    dbm_snapfs_cleanup();
}

static const struct fuse_lowlevel_ops ops = {
    .init = op_init_ready,
    .destroy = op_destroy,
    .lookup = op_lookup,
    .forget = op_forget,
    .forget_multi = op_forget_multi,
    .getattr = op_getattr,
    .setattr = op_setattr,
    .opendir = op_opendir,
    .readdir = op_readdir,
    .open = op_open,
    .create = op_create,
    .mknod = op_mknod,
    .mkdir = op_mkdir,
    .unlink = op_unlink,
    .rename = op_rename,
    .read = op_read,
    .write = op_write,
    .flush = op_flush,
    .release = op_release,
    .fsync = op_fsync,
    .fsyncdir = op_fsyncdir,
    .fallocate = op_fallocate,
    .getlk = op_getlk,
    .setlk = op_setlk,
    .statfs = op_statfs,
};

/* The livedbs' passthrough hooks: d->pass is set by main before the session
 * loop and cleared after it, when no handler runs. */
static int backing_open(void *ctx, int fd)
{
    struct dbm_daemon *d = ctx;
    return dbm_fusepass_backing_open(d->pass, fd);
}

static void backing_close(void *ctx, int id)
{
    struct dbm_daemon *d = ctx;
    dbm_fusepass_backing_close(d->pass, id);
}

/* tag: the environment's index (daemon.c) */
static int backing_wb_flush(void *ctx, uint64_t tag, uint64_t id)
{
    struct dbm_daemon *d = ctx;
    return dbm_fusewb_flush(d->wb, mkino(K_DBFILE, (int)tag, id));
}

static int backing_wb_reset(void *ctx, uint64_t tag, uint64_t id, int64_t size)
{
    struct dbm_daemon *d = ctx;
    return dbm_fusewb_reset(d->wb, mkino(K_DBFILE, (int)tag, id), size);
}

struct fuse_session *dbm_fs_session_new(struct dbm_daemon *d, struct fuse_args *args, int rfd)
{
    ready_fd = rfd;
    d->backing = (struct dbm_livedb_backing){ .open = backing_open, .close = backing_close,
                                              .wb_flush = backing_wb_flush, .wb_reset = backing_wb_reset, .ctx = d };
    return fuse_session_new(args, &ops, sizeof ops, d);
}
