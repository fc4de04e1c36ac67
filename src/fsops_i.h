/* fsops_i.h - private to the FUSE glue (fsops.c, fsops_snap.c): inode
 * numbering and helpers both use. */
#ifndef DBM_FSOPS_I_H
#define DBM_FSOPS_I_H
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include "fsops.h"

struct dbm_daemon;
struct dbm_env;

enum kind {
    K_TOP = 0,      /* ino 1..3 */
    K_ENV = 1,      /* <env>/ */
    K_ENV_INFO,     /* <env>/info */
    K_ENV_STATUS,   /* <env>/status */
    K_DBDIR,        /* <env>/db/ */
    K_DBFILE,       /* <env>/db/<file> (id = livedb file id) */
    K_SNAPDIR,      /* <env>/snapshots/ */
    K_SNAP,         /* <env>/snapshots/<instant>/ (id = snapshot table slot) */
    K_SNAPDBDIR,    /* <env>/snapshots/<instant>/db/ */
    K_SNAPDB,       /* .../db/<name> (id = slot << 16 | image index) */
    K_SNAPEXP,      /* .../export.bacpac */
    K_SNAPSHA,      /* .../export.bacpac.sha256 */
};

#define INO_ROOT 1
#define INO_README 2
#define INO_STATUS 3
#define KIND_SHIFT 56
#define ENV_SHIFT 40
#define ID_MASK ((1ULL << ENV_SHIFT) - 1)

static inline fuse_ino_t mkino(enum kind k, int env, uint64_t id)
{
    return ((uint64_t)k << KIND_SHIFT) | ((uint64_t)env << ENV_SHIFT) | (id & ID_MASK);
}
static inline enum kind ino_kind(fuse_ino_t ino) { return (enum kind)(ino >> KIND_SHIFT); }
static inline int ino_env(fuse_ino_t ino) { return (int)((ino >> ENV_SHIFT) & 0xffff); }
static inline uint64_t ino_id(fuse_ino_t ino) { return ino & ID_MASK; }

/* How long the kernel may cache: text files are regenerated on every open,
 * so their attributes are never cached; the tree's shape changes only on
 * reload; db files change only through this mount. */
#define TTL_TEXT 0.0
#define TTL_DIR 1.0
#define TTL_DB 1.0

struct textfh {
    size_t len;
    char data[];
};

/* fsops.c */
void dbm_fs_reply_entry(fuse_req_t req, fuse_ino_t ino, const struct stat *st, double ttl);
/* A buffer for a READ's reply of size bytes: the io_uring entry's own
 * (*owned NULL: the reply is not copied again) or a new one (*owned: free it
 * after replying). NULL when out of memory. */
char *dbm_fs_reply_buf(size_t size, char **owned);
/* Replies to a READ with up to size bytes of fd at off: read straight into
 * the io_uring entry, or spliced by the kernel on /dev/fuse. */
void dbm_fs_reply_fd(fuse_req_t req, int fd, off_t off, size_t size);
/* Gives fi a text handle holding a copy of data: 0 or -ENOMEM. */
int dbm_fs_textfh_give(struct fuse_file_info *fi, const char *data, size_t len);

/* Open file handles. Every object handed to the kernel as fi->fh goes on one
 * list, so that those whose RELEASE never comes (the connection ended while a
 * reader was closing: unmount, SIGTERM) are dropped at unmount, not leaked.
 * give takes obj in every case: 0, or -ENOMEM with obj already dropped.
 * release: takes it off the list and drops it. */
int dbm_fs_fh_give(struct fuse_file_info *fi, void *obj, void (*drop)(void *obj));
void *dbm_fs_fh(const struct fuse_file_info *fi);
void dbm_fs_fh_release(struct fuse_file_info *fi);

/* fsops_snap.c: the snapshots/ tree. Handlers reply themselves where they
 * take a req; the others return 0 or -errno. cfg_lock is held (read) by the
 * caller where e is passed. */
int dbm_snapfs_is(fuse_ino_t ino);
int dbm_snapfs_lookup(struct dbm_daemon *d, struct dbm_env *e, fuse_ino_t parent, const char *name, fuse_ino_t *ino,
                      struct stat *st, double *ttl);
int dbm_snapfs_attr(struct dbm_daemon *d, struct dbm_env *e, fuse_ino_t ino, struct stat *st, double *ttl);
void dbm_snapfs_forget(fuse_ino_t ino, uint64_t nlookup);
/* Variable entries of a snapshot directory from index start; add() returns 1 when full. */
int dbm_snapfs_list(struct dbm_daemon *d, struct dbm_env *e, fuse_ino_t ino, size_t start,
                    int (*add)(void *arg, const char *name, fuse_ino_t ino, mode_t mode), void *arg);
void dbm_snapfs_open(fuse_req_t req, struct dbm_daemon *d, fuse_ino_t ino, struct fuse_file_info *fi);
void dbm_snapfs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi);
/* At unmount: drops every snapshot the table holds. */
void dbm_snapfs_cleanup(void);

#endif
