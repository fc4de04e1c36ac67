/* catalog.h - the daemon's own records (environments, databases and their
 * timelines, audit) in a SQLite database in the state directory.
 *
 * The schema carries a version (PRAGMA user_version); opening runs the
 * migrations from whatever version is on disk up to DBM_CATALOG_VERSION in
 * one transaction each. A catalog newer than this binary is refused.
 * Thread-safe: one connection behind one mutex (lock order: after any
 * environment lock, before nothing). */
#ifndef DBM_CATALOG_H
#define DBM_CATALOG_H
#include <stdint.h>
#include <sys/types.h>

#define DBM_CATALOG_FILE "catalog.db"
#define DBM_CATALOG_VERSION 2

struct dbm_catalog;

/* Opens or creates; migrates. -errno and a log line on failure. */
int dbm_catalog_open(const char *path, struct dbm_catalog **out);
void dbm_catalog_close(struct dbm_catalog *c); /* accepts NULL */
int dbm_catalog_version(struct dbm_catalog *c);

struct dbm_cat_env {
    char state[16];        /* "online" or "offline" */
    uint64_t created_ns;
    uint64_t chain_start_ns; /* start of the current restore chain */
};
/* Records an environment declared by the config if it is new (online, chain
 * starting now); keeps the state of a known one. */
int dbm_catalog_env_ensure(struct dbm_catalog *c, const char *env, const char *type, uint64_t now_ns);
int dbm_catalog_env_get(struct dbm_catalog *c, const char *env, struct dbm_cat_env *out); /* -ENOENT */

#define DBM_DB_NAME_MAX 64
struct dbm_cat_db {
    int64_t id;
    char name[DBM_DB_NAME_MAX + 1];
    uint64_t timeline;
    uint64_t created_ns;
    uint64_t deleted_ns; /* 0 while live */
};
/* A database appears in env with a new timeline. *id_out may be NULL. */
int dbm_catalog_db_add(struct dbm_catalog *c, const char *env, const char *name, uint64_t timeline,
                       uint64_t created_ns, int64_t *id_out);
/* Marks it deleted at deleted_ns; its history stays (retention). */
int dbm_catalog_db_drop(struct dbm_catalog *c, int64_t id, uint64_t deleted_ns);
/* The live database of that name: 0, or -ENOENT. */
int dbm_catalog_db_live(struct dbm_catalog *c, const char *env, const char *name, struct dbm_cat_db *out);
/* Calls cb for each database of env that existed at at_ns (created at or
 * before, not deleted at or before); at_ns 0 means the live ones. Stops and
 * returns cb's value if it returns non-zero. Sorted by name. */
int dbm_catalog_db_list(struct dbm_catalog *c, const char *env, uint64_t at_ns,
                        int (*cb)(const struct dbm_cat_db *db, void *arg), void *arg);
/* Calls cb for each database of env live at or after since_ns (not deleted
 * before it), newest first per name. */
int dbm_catalog_db_list_since(struct dbm_catalog *c, const char *env, uint64_t since_ns,
                              int (*cb)(const struct dbm_cat_db *db, void *arg), void *arg);
/* Every database record (live or dropped) whose timeline is t: 0/-ENOENT. */
int dbm_catalog_db_by_timeline(struct dbm_catalog *c, uint64_t t, struct dbm_cat_db *out);

/* Removed databases of env whose deletion is older than before_ns (their
 * history has left the retention window): cb for each. */
int dbm_catalog_db_expired(struct dbm_catalog *c, const char *env, uint64_t before_ns,
                           int (*cb)(const struct dbm_cat_db *db, void *arg), void *arg);
/* Forgets a removed database's record once its history is gone. */
int dbm_catalog_db_purge(struct dbm_catalog *c, int64_t id);

/* Appends an audit record. */
int dbm_catalog_audit(struct dbm_catalog *c, uid_t uid, gid_t gid, pid_t pid, const char *env,
                      const char *request, const char *verdict);

#endif
