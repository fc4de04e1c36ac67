/* daemon.h - the daemon's state: the state directory and its lock, the
 * current configuration (swapped whole on reload), the catalog, the page
 * store and one runtime object per environment.
 *
 * Lock order (outermost first): dbm_daemon.cfg_lock -> dbm_env locks (see
 * livedb.h) -> page store locks -> catalog lock. */
#ifndef DBM_DAEMON_H
#define DBM_DAEMON_H
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "config.h"

struct dbm_catalog;
struct dbm_store;
struct dbm_livedb;
struct dbm_exports;
struct dbm_uring;
struct dbm_fusepass;
struct dbm_fusewb;
struct dbm_reserve;

#include "livedb.h"

#define DBM_LOCK_FILE "lock"
#define DBM_RESERVE_FILE "reserve" /* reserve.h */

/* One environment's runtime. Created when the config first declares it and
 * kept until the daemon exits (so inode numbers stay meaningful); conf is
 * NULL while a reload has removed it (it is then hidden). */
struct dbm_env {
    int index;                        /* in dbm_daemon.envs; part of inode numbers */
    char name[DBM_ENV_NAME_MAX + 1];
    const struct dbm_env_conf *conf;  /* points into the current config; read under cfg_lock */
    uint64_t created_ns;              /* timestamps shown by ls -l */
    _Atomic uint64_t changed_ns;
    struct dbm_livedb *live;          /* the db/ directory (livedb.h) */
    uint64_t export_done_ns;          /* last scheduled export produced (maintenance thread only) */
};

struct dbm_daemon {
    char *state_dir;
    int lock_fd;                      /* flock'd for the daemon's life */
    pthread_rwlock_t cfg_lock;        /* protects cfg and every env->conf */
    struct dbm_config *cfg;
    struct dbm_catalog *cat;
    struct dbm_store *store;
    struct dbm_exports *exports;      /* export.bacpac productions and cache */
    struct dbm_env *envs[DBM_MAX_ENVS * 4];
    int nenvs;
    uint64_t start_ns;
    _Atomic uint64_t reloads, reload_failures;
    pthread_t maint;                  /* retention: see dbm_daemon_maintain */
    int maint_running;
    pthread_mutex_t maint_mu;         /* protects maint_stop; leaf */
    pthread_cond_t maint_cv;
    int maint_stop;
    struct dbm_uring *uring;          /* the FUSE transport, set by main; may be NULL */
    struct dbm_fusepass *pass;        /* passthrough, set by main; may be NULL */
    struct dbm_fusewb *wb;            /* the writeback cache, set by main; may be NULL */
    int writeback;                    /* the livedbs run with the writeback cache (set at open) */
    struct dbm_reserve *reserve;      /* with writeback: space for the kernel's cached writes (reserve.h) */
    struct dbm_livedb_backing backing; /* every livedb's passthrough hooks (fsops sets them) */
    uid_t mount_uid;                  /* owner of README and status */
    gid_t mount_gid;
};

/* --init: creates dir (or uses an empty existing one) with the commented
 * default config. Refuses (-EEXIST) to touch a directory that has one.
 * Prints nothing; err gets a message on failure. */
int dbm_daemon_init_state(const char *dir, char *err, size_t errsz);

/* Validates and opens the state directory: takes its lock (-EBUSY if
 * another daemon holds it), loads the config, opens the catalog and the
 * page store, builds the environments (writeback: their databases are
 * served with FUSE's writeback cache, fusewb.h). err gets a message on
 * failure.
 * The caller applies cfg->log_level when logging goes where it stays. */
int dbm_daemon_open(const char *state_dir, int writeback, struct dbm_daemon **out, char *err, size_t errsz);
/* INIT: the kernel did not offer the writeback cache the environments were
 * opened for; they run without it. */
void dbm_daemon_writeback_off(struct dbm_daemon *d);
/* Once mounted, with the writeback cache: holds room for max_dirty bytes the
 * kernel may keep of the mount (twice: written back, then recorded), at most
 * an eighth of the state directory's file system (reserve.h). Logged. */
void dbm_daemon_reserve(struct dbm_daemon *d, uint64_t max_dirty);
void dbm_daemon_close(struct dbm_daemon *d); /* accepts NULL and half-built objects */
/* Writes this process's pid into the lock file (again, after a fork). */
void dbm_daemon_record_pid(struct dbm_daemon *d);

/* SIGHUP: parses the config again; on success swaps it in and returns 0; on
 * failure keeps the old one, logs why and returns -errno. */
int dbm_daemon_reload(struct dbm_daemon *d);

/* Retention: drops history older than each environment's window (the page
 * store keeps the newest state and what branches need) and the history of
 * removed databases once their removal has left the window. */
void dbm_daemon_maintain(struct dbm_daemon *d);
/* Produces the exports the schedules call for (the latest scheduled instant
 * of each environment not yet produced). Returns the next scheduled instant
 * over all environments (0 if none). */
uint64_t dbm_daemon_scheduled_exports(struct dbm_daemon *d);
/* Wakes the maintenance thread (after a reload) so it plans again. */
void dbm_daemon_wake_maintenance(struct dbm_daemon *d);
/* Runs dbm_daemon_maintain every interval_sec, and scheduled exports when
 * due, in a thread until close. */
int dbm_daemon_start_maintenance(struct dbm_daemon *d, unsigned interval_sec);

/* The environment runtime by name or by index, visible (declared in the
 * current config) or NULL. Call under cfg_lock (read). */
struct dbm_env *dbm_daemon_env(struct dbm_daemon *d, const char *name);
struct dbm_env *dbm_daemon_env_at(struct dbm_daemon *d, int index);

#endif
