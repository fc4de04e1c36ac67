/* daemon.c - see daemon.h. */
#include "daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "catalog.h"
#include "exports.h"
#include "snapshot.h"
#include "livedb.h"
#include "log.h"
#include "pagestore.h"
#include "reserve.h"
#include "strutil.h"
#include "timefmt.h"

static int path_join(char *out, size_t size, const char *a, const char *b)
{
    int n = snprintf(out, size, "%s/%s", a, b);
    return (n < 0 || (size_t)n >= size) ? -ENAMETOOLONG : 0;
}

static int mkdir_p(const char *path, mode_t mode)
{
    char tmp[4096];
    if (dbm_strlcpy(tmp, path, sizeof tmp) >= sizeof tmp)
        return -ENAMETOOLONG;
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            if (mkdir(tmp, mode) < 0 && errno != EEXIST)
                return -errno;
            *p = '/';
        }
    }
    if (mkdir(tmp, mode) < 0 && errno != EEXIST)
        return -errno;
    return 0;
}

int dbm_daemon_init_state(const char *dir, char *err, size_t errsz)
{
    char conf[4096];
    struct stat st;
    if (path_join(conf, sizeof conf, dir, DBM_CONFIG_FILE) < 0) {
        snprintf(err, errsz, "%s: path too long", dir);
        return -ENAMETOOLONG;
    }
    if (stat(conf, &st) == 0) {
        snprintf(err, errsz, "%s already holds a %s: refusing to overwrite it", dir, DBM_CONFIG_FILE);
        return -EEXIST;
    }
    int rc = mkdir_p(dir, 0750);
    if (rc < 0) {
        snprintf(err, errsz, "%s: cannot create: %s", dir, strerror(-rc));
        return rc;
    }
    int fd = open(conf, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
    if (fd < 0) {
        rc = -errno;
        snprintf(err, errsz, "%s: cannot create: %s", conf, strerror(-rc));
        return rc;
    }
    size_t n = strlen(dbm_config_default_text);
    if (write(fd, dbm_config_default_text, n) != (ssize_t)n || fsync(fd) < 0) {
        rc = -errno;
        close(fd);
        unlink(conf);
        snprintf(err, errsz, "%s: cannot write: %s", conf, strerror(-rc));
        return rc;
    }
    close(fd);
    return 0;
}

/* Finds or makes the runtime of a declared environment. */
static int env_attach(struct dbm_daemon *d, const struct dbm_env_conf *ec, char *err, size_t errsz)
{
    struct dbm_env *e = NULL;
    for (int i = 0; i < d->nenvs; i++)
        if (strcmp(d->envs[i]->name, ec->name) == 0)
            e = d->envs[i];
    if (!e) {
        if (d->nenvs >= (int)(sizeof d->envs / sizeof d->envs[0])) {
            snprintf(err, errsz, "too many environments over the daemon's life; restart it");
            return -ENOSPC;
        }
        char dir[4096];
        snprintf(dir, sizeof dir, "%s/envs/%s/db", d->state_dir, ec->name);
        int rc = mkdir_p(dir, 0750);
        if (rc < 0) {
            snprintf(err, errsz, "%s: cannot create: %s", dir, strerror(-rc));
            return rc;
        }
        rc = dbm_catalog_env_ensure(d->cat, ec->name, dbm_env_type_name(ec->type), dbm_now_ns());
        if (rc < 0) {
            snprintf(err, errsz, "catalog: cannot record environment %s: %s", ec->name, strerror(-rc));
            return rc;
        }
        if (!(e = calloc(1, sizeof *e))) {
            snprintf(err, errsz, "out of memory");
            return -ENOMEM;
        }
        struct dbm_cat_env ce;
        e->index = d->nenvs;
        dbm_strlcpy(e->name, ec->name, sizeof e->name);
        e->created_ns = dbm_catalog_env_get(d->cat, ec->name, &ce) == 0 ? ce.created_ns : dbm_now_ns();
        e->changed_ns = dbm_now_ns();
        struct dbm_livedb_params lp = { .env = ec->name, .backing_dir = dir, .store = d->store, .cat = d->cat,
                                          .backing = &d->backing, .tag = (uint64_t)d->nenvs,
                                          .writeback = d->writeback, .reserve = d->reserve };
        if ((rc = dbm_livedb_open(&lp, &e->live)) < 0) {
            free(e);
            snprintf(err, errsz, "environment %s: cannot open its databases: %s", ec->name, strerror(-rc));
            return rc;
        }
        d->envs[d->nenvs++] = e;
    }
    e->conf = ec;
    dbm_livedb_set_owner(e->live, ec->owner, ec->group, ec->mode & 0666);
    dbm_livedb_set_limits(e->live, ec->max_databases, ec->max_db_bytes);
    return 0;
}

/* Points every runtime at cfg (or hides it). Call with cfg_lock held for writing. */
static int envs_apply(struct dbm_daemon *d, const struct dbm_config *cfg, char *err, size_t errsz)
{
    for (int i = 0; i < d->nenvs; i++)
        d->envs[i]->conf = NULL;
    for (size_t i = 0; i < cfg->nenvs; i++) {
        int rc = env_attach(d, &cfg->envs[i], err, errsz);
        if (rc < 0)
            return rc;
    }
    uint64_t now = dbm_now_ns();
    for (int i = 0; i < d->nenvs; i++)
        d->envs[i]->changed_ns = now;
    return 0;
}

static int take_lock(struct dbm_daemon *d, char *err, size_t errsz)
{
    char path[4096];
    path_join(path, sizeof path, d->state_dir, DBM_LOCK_FILE);
    d->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (d->lock_fd < 0) {
        int e = errno;
        snprintf(err, errsz, "%s: cannot open the lock file: %s", path, strerror(e));
        return -e;
    }
    if (flock(d->lock_fd, LOCK_EX | LOCK_NB) < 0) {
        int e = errno;
        char pid[32] = "";
        ssize_t n = pread(d->lock_fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = '\0';
        dbm_strtrim(pid);
        if (e == EWOULDBLOCK)
            snprintf(err, errsz, "%s is in use by another dbmovefs (pid %s): one daemon per state directory",
                     d->state_dir, pid[0] ? pid : "?");
        else
            snprintf(err, errsz, "%s: cannot lock: %s", path, strerror(e));
        return e == EWOULDBLOCK ? -EBUSY : -e;
    }
    dbm_daemon_record_pid(d);
    return 0;
}

void dbm_daemon_record_pid(struct dbm_daemon *d)
{
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(d->lock_fd, 0) < 0 || pwrite(d->lock_fd, pid, (size_t)n, 0) != n)
        dbm_warn("%s/%s: cannot record the pid: %s", d->state_dir, DBM_LOCK_FILE, strerror(errno));
}

int dbm_daemon_open(const char *state_dir, int writeback, struct dbm_daemon **out, char *err, size_t errsz)
{
    struct stat st;
    char path[4096];
    if (stat(state_dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, errsz, "state directory %s does not exist or is not a directory; create one with: dbmovefs --init %s",
                 state_dir, state_dir);
        return -ENOENT;
    }
    if (path_join(path, sizeof path, state_dir, DBM_CONFIG_FILE) < 0 || stat(path, &st) < 0) {
        snprintf(err, errsz, "%s is not a dbmovefs state directory (no %s); create one with: dbmovefs --init DIR",
                 state_dir, DBM_CONFIG_FILE);
        return -EINVAL;
    }
    struct dbm_daemon *d = calloc(1, sizeof *d);
    if (!d) {
        snprintf(err, errsz, "out of memory");
        return -ENOMEM;
    }
    d->lock_fd = -1;
    d->writeback = writeback;
    pthread_rwlock_init(&d->cfg_lock, NULL);
    pthread_mutex_init(&d->maint_mu, NULL);
    pthread_cond_init(&d->maint_cv, NULL);
    d->start_ns = dbm_now_ns();
    d->mount_uid = getuid();
    d->mount_gid = getgid();
    int rc;
    char *abs = realpath(state_dir, NULL);
    if (!abs) {
        rc = -errno;
        snprintf(err, errsz, "%s: %s", state_dir, strerror(-rc));
        goto fail;
    }
    d->state_dir = abs;
    if ((rc = take_lock(d, err, errsz)) < 0)
        goto fail;
    path_join(path, sizeof path, d->state_dir, DBM_CONFIG_FILE);
    if ((rc = dbm_config_load(path, &d->cfg, err, errsz)) < 0)
        goto fail;
    path_join(path, sizeof path, d->state_dir, DBM_CATALOG_FILE);
    if ((rc = dbm_catalog_open(path, &d->cat)) < 0) {
        snprintf(err, errsz, "%s: cannot open the catalog: %s", path, strerror(-rc));
        goto fail;
    }
    path_join(path, sizeof path, d->state_dir, "store");
    struct dbm_store_opts so = { .segment_bytes = d->cfg->segment_bytes };
    if ((rc = dbm_store_open(path, &so, &d->store)) < 0) {
        snprintf(err, errsz, "%s: cannot open the page store: %s", path, strerror(-rc));
        goto fail;
    }
    path_join(path, sizeof path, d->state_dir, "cache");
    if ((rc = dbm_exports_open(path, d->cfg->export_cache_bytes, &d->exports)) < 0) {
        snprintf(err, errsz, "%s: cannot open the export cache: %s", path, strerror(-rc));
        goto fail;
    }
    int sfd = open(d->state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (!writeback && sfd >= 0)
        unlinkat(sfd, DBM_RESERVE_FILE, 0); /* a run with the cache left it: nothing to hold room for now */
    if (writeback) {
        rc = sfd < 0 ? -errno : dbm_reserve_open(sfd, DBM_RESERVE_FILE, &d->reserve);
        if (rc < 0) {
            if (sfd >= 0)
                close(sfd);
            snprintf(err, errsz, "%s/%s: cannot open the space reserve: %s", d->state_dir, DBM_RESERVE_FILE,
                     strerror(-rc));
            goto fail;
        }
    }
    if (sfd >= 0)
        close(sfd);
    if ((rc = envs_apply(d, d->cfg, err, errsz)) < 0)
        goto fail;
    *out = d;
    return 0;
fail:
    dbm_daemon_close(d);
    return rc;
}

void dbm_daemon_writeback_off(struct dbm_daemon *d)
{
    pthread_rwlock_wrlock(&d->cfg_lock);
    d->writeback = 0; /* and environments a reload adds */
    for (int i = 0; i < d->nenvs; i++)
        dbm_livedb_writeback_off(d->envs[i]->live);
    pthread_rwlock_unlock(&d->cfg_lock);
    if (d->reserve)
        (void)dbm_reserve_set_target(d->reserve, 0); /* nothing to hold room for */
}

void dbm_daemon_reserve(struct dbm_daemon *d, uint64_t max_dirty)
{
    struct statvfs sv;
    if (!d->reserve || !d->writeback || statvfs(d->state_dir, &sv) < 0)
        return;
    uint64_t want = 2 * max_dirty + (16ull << 20);
    uint64_t cap = (uint64_t)sv.f_blocks * sv.f_frsize / 8;
    if (want > cap)
        want = cap;
    int rc = dbm_reserve_set_target(d->reserve, want);
    if (rc < 0)
        dbm_warn("space reserve: cannot hold %llu bytes in %s/%s (%s): write transactions wait until there is "
                 "room", (unsigned long long)want, d->state_dir, DBM_RESERVE_FILE, strerror(-rc));
    else
        dbm_info("space reserve: %llu bytes held in %s/%s for what the kernel caches", (unsigned long long)want,
                 d->state_dir, DBM_RESERVE_FILE);
}

void dbm_daemon_close(struct dbm_daemon *d)
{
    if (!d)
        return;
    if (d->maint_running) {
        pthread_mutex_lock(&d->maint_mu);
        d->maint_stop = 1;
        pthread_cond_signal(&d->maint_cv);
        pthread_mutex_unlock(&d->maint_mu);
        pthread_join(d->maint, NULL);
    }
    for (int i = 0; i < d->nenvs; i++) {
        dbm_livedb_close(d->envs[i]->live);
        free(d->envs[i]);
    }
    dbm_exports_close(d->exports);
    dbm_reserve_close(d->reserve); /* the file stays: the next start holds it again */
    dbm_store_close(d->store);
    dbm_catalog_close(d->cat);
    dbm_config_free(d->cfg);
    if (d->lock_fd >= 0)
        close(d->lock_fd); /* releases the flock */
    pthread_rwlock_destroy(&d->cfg_lock);
    free(d->state_dir);
    free(d);
}

int dbm_daemon_reload(struct dbm_daemon *d)
{
    char path[4096], err[1024];
    struct dbm_config *cfg;
    path_join(path, sizeof path, d->state_dir, DBM_CONFIG_FILE);
    int rc = dbm_config_load(path, &cfg, err, sizeof err);
    if (rc < 0) {
        d->reload_failures++;
        dbm_err("reload refused, keeping the running configuration: %s", err);
        return rc;
    }
    pthread_rwlock_wrlock(&d->cfg_lock);
    struct dbm_config *old = d->cfg;
    rc = envs_apply(d, cfg, err, sizeof err);
    if (rc < 0) {
        envs_apply(d, old, err, sizeof err); /* cannot fail: every env of old is attached */
        pthread_rwlock_unlock(&d->cfg_lock);
        dbm_config_free(cfg);
        d->reload_failures++;
        dbm_err("reload refused, keeping the running configuration: %s", err);
        return rc;
    }
    d->cfg = cfg;
    dbm_log_set_level((enum dbm_log_level)cfg->log_level);
    dbm_exports_set_bound(d->exports, cfg->export_cache_bytes);
    d->reloads++; /* with the swap: whoever sees the new config sees it counted */
    pthread_rwlock_unlock(&d->cfg_lock);
    dbm_config_free(old);
    dbm_notice("configuration reloaded from %s: %zu environments", path, cfg->nenvs);
    if (d->maint_running)
        dbm_daemon_wake_maintenance(d); /* schedules may have changed */
    return 0;
}

struct expire_ctx {
    struct dbm_daemon *d;
    const char *env;
};

static int expire_db(const struct dbm_cat_db *db, void *arg)
{
    struct expire_ctx *c = arg;
    int rc = dbm_tl_drop(c->d->store, db->timeline);
    if (rc == 0 || rc == -ENOENT) {
        dbm_catalog_db_purge(c->d->cat, db->id);
        dbm_info("%s/%s: removed database's history left the retention window: dropped", c->env, db->name);
    } else if (rc != -EBUSY) {
        dbm_warn("%s/%s: cannot drop expired history: %s", c->env, db->name, strerror(-rc));
    }
    return 0;
}

void dbm_daemon_maintain(struct dbm_daemon *d)
{
    uint64_t now = dbm_now_ns(), freed = 0;
    pthread_rwlock_rdlock(&d->cfg_lock);
    for (int i = 0; i < d->nenvs; i++) {
        struct dbm_env *e = d->envs[i];
        if (!e->conf)
            continue;
        uint64_t window = e->conf->retention_sec * DBM_NS_PER_SEC;
        uint64_t horizon = now > window ? now - window : 0;
        freed += dbm_livedb_gc(e->live, horizon);
        struct expire_ctx c = { d, e->name };
        dbm_catalog_db_expired(d->cat, e->name, horizon, expire_db, &c);
    }
    pthread_rwlock_unlock(&d->cfg_lock);
    if (freed)
        dbm_info("retention: freed %llu bytes of history", (unsigned long long)freed);
}

/* The latest scheduled instant at or before now, and the next one after. */
static void schedule_bounds(const struct dbm_env_conf *c, uint64_t now, uint64_t *last, uint64_t *next)
{
    uint64_t day = now / (86400 * DBM_NS_PER_SEC) * 86400 * DBM_NS_PER_SEC;
    *last = *next = 0;
    for (int k = -1; k <= 1; k++) {
        for (size_t i = 0; i < c->nexport_at; i++) {
            uint64_t t = day + (uint64_t)((int64_t)k * 86400 + c->export_at[i]) * DBM_NS_PER_SEC;
            if (t <= now && t > *last)
                *last = t;
            if (t > now && (*next == 0 || t < *next))
                *next = t;
        }
    }
}

uint64_t dbm_daemon_scheduled_exports(struct dbm_daemon *d)
{
    uint64_t now = dbm_now_ns(), next_all = 0;
    pthread_rwlock_rdlock(&d->cfg_lock);
    for (int i = 0; i < d->nenvs; i++) {
        struct dbm_env *e = d->envs[i];
        if (!e->conf || !e->conf->nexport_at)
            continue;
        uint64_t last, next;
        schedule_bounds(e->conf, now, &last, &next);
        if (next && (next_all == 0 || next < next_all))
            next_all = next;
        if (!last || last <= e->export_done_ns)
            continue;
        struct dbm_snapshot *s = NULL;
        struct dbm_export *x = NULL;
        char ts[DBM_TS_COMPACT_LEN + 1];
        dbm_ts_compact(last, ts);
        int rc = dbm_snapshot_resolve(d->cat, d->store, e->name, dbm_env_type_name(e->conf->type), last, &s);
        if (rc == 0)
            rc = dbm_export_get(d->exports, s, &x);
        if (rc == 0)
            rc = dbm_export_wait(x); /* a cached export returns at once */
        dbm_export_put(x);
        dbm_snapshot_put(s);
        if (rc == 0) {
            e->export_done_ns = last;
            dbm_info("%s: scheduled export of %s ready in the cache (snapshots/%s/export.bacpac)", e->name, ts, ts);
        } else {
            dbm_err("%s: scheduled export of %s failed: %s; retried at the next check", e->name, ts, strerror(-rc));
        }
    }
    pthread_rwlock_unlock(&d->cfg_lock);
    return next_all;
}

void dbm_daemon_wake_maintenance(struct dbm_daemon *d)
{
    pthread_mutex_lock(&d->maint_mu);
    pthread_cond_signal(&d->maint_cv);
    pthread_mutex_unlock(&d->maint_mu);
}

struct maint_arg {
    struct dbm_daemon *d;
    unsigned interval;
};

static void *maint_main(void *arg)
{
    struct dbm_daemon *d = ((struct maint_arg *)arg)->d;
    unsigned interval = ((struct maint_arg *)arg)->interval;
    free(arg);
    dbm_daemon_maintain(d); /* in this thread: start-up never waits for it */
    uint64_t next_export = dbm_daemon_scheduled_exports(d);
    uint64_t next_maint = dbm_now_ns() + (uint64_t)interval * DBM_NS_PER_SEC;
    pthread_mutex_lock(&d->maint_mu);
    while (!d->maint_stop) {
        /* sleep until the next retention pass or scheduled export, or a wake-up (reload) */
        uint64_t until = next_export && next_export < next_maint ? next_export : next_maint;
        struct timespec ts = { .tv_sec = (time_t)(until / DBM_NS_PER_SEC), .tv_nsec = (long)(until % DBM_NS_PER_SEC) };
        pthread_cond_timedwait(&d->maint_cv, &d->maint_mu, &ts);
        if (d->maint_stop)
            break;
        pthread_mutex_unlock(&d->maint_mu);
        if (dbm_now_ns() >= next_maint) {
            dbm_daemon_maintain(d);
            next_maint = dbm_now_ns() + (uint64_t)interval * DBM_NS_PER_SEC;
        }
        next_export = dbm_daemon_scheduled_exports(d);
        pthread_mutex_lock(&d->maint_mu);
    }
    pthread_mutex_unlock(&d->maint_mu);
    return NULL;
}

int dbm_daemon_start_maintenance(struct dbm_daemon *d, unsigned interval_sec)
{
    struct maint_arg *a = malloc(sizeof *a);
    if (!a)
        return -ENOMEM;
    a->d = d;
    a->interval = interval_sec;
    int rc = pthread_create(&d->maint, NULL, maint_main, a);
    if (rc) {
        free(a);
        return -rc;
    }
    d->maint_running = 1;
    return 0;
}

struct dbm_env *dbm_daemon_env(struct dbm_daemon *d, const char *name)
{
    for (int i = 0; i < d->nenvs; i++)
        if (d->envs[i]->conf && strcmp(d->envs[i]->name, name) == 0)
            return d->envs[i];
    return NULL;
}

struct dbm_env *dbm_daemon_env_at(struct dbm_daemon *d, int index)
{
    if (index < 0 || index >= d->nenvs || !d->envs[index]->conf)
        return NULL;
    return d->envs[index];
}
