/* catalog.c - see catalog.h. The only module besides the snapshot reader that
 * sees sqlite3; SQLITE_* codes become -errno here. */
#include "catalog.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "strutil.h"
#include "timefmt.h"

struct dbm_catalog {
    pthread_mutex_t lock; /* protects db; a leaf lock */
    sqlite3 *db;
};

/* Migration i takes the schema from version i to i + 1. Never edit a
 * released step: append a new one and bump DBM_CATALOG_VERSION. */
static const char *const migrations[DBM_CATALOG_VERSION] = {
    /* 0 -> 1: environments and audit */
    "CREATE TABLE environments(name TEXT PRIMARY KEY, type TEXT NOT NULL, state TEXT NOT NULL,"
    "  created_ns INTEGER NOT NULL, chain_start_ns INTEGER NOT NULL);"
    "CREATE TABLE audit(id INTEGER PRIMARY KEY, time_ns INTEGER NOT NULL, uid INTEGER, gid INTEGER,"
    "  pid INTEGER, env TEXT, request TEXT, verdict TEXT);",
    /* 1 -> 2: databases and their timelines in the page store */
    "CREATE TABLE databases(id INTEGER PRIMARY KEY, env TEXT NOT NULL, name TEXT NOT NULL,"
    "  timeline INTEGER NOT NULL, created_ns INTEGER NOT NULL, deleted_ns INTEGER);"
    "CREATE UNIQUE INDEX databases_live ON databases(env, name) WHERE deleted_ns IS NULL;"
    "CREATE INDEX databases_env ON databases(env, name, created_ns);",
};

static int map_rc(sqlite3 *db, int rc, const char *what)
{
    if (rc == SQLITE_OK || rc == SQLITE_DONE || rc == SQLITE_ROW)
        return 0;
    dbm_err("catalog: %s: %s", what, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
    switch (rc & 0xff) {
    case SQLITE_FULL: return -ENOSPC;
    case SQLITE_NOMEM: return -ENOMEM;
    case SQLITE_BUSY:
    case SQLITE_LOCKED: return -EBUSY;
    case SQLITE_CONSTRAINT: return -EEXIST;
    case SQLITE_READONLY:
    case SQLITE_PERM:
    case SQLITE_AUTH: return -EACCES;
    case SQLITE_CANTOPEN: return -ENOENT;
    default: return -EIO;
    }
}

static int exec(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        dbm_err("catalog: %s", msg ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
        return map_rc(NULL, rc, "exec");
    }
    return 0;
}

static int user_version(sqlite3 *db)
{
    sqlite3_stmt *st;
    int v = -1;
    if (sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK) {
        if (sqlite3_step(st) == SQLITE_ROW)
            v = sqlite3_column_int(st, 0);
        sqlite3_finalize(st);
    }
    return v;
}

static int migrate(sqlite3 *db)
{
    int v = user_version(db);
    if (v < 0)
        return -EIO;
    if (v > DBM_CATALOG_VERSION) {
        dbm_err("catalog: schema version %d is newer than this dbmovefs understands (%d): upgrade dbmovefs", v,
                DBM_CATALOG_VERSION);
        return -EPROTO;
    }
    for (; v < DBM_CATALOG_VERSION; v++) {
        char sql[64];
        int rc = exec(db, "BEGIN IMMEDIATE");
        if (rc == 0)
            rc = exec(db, migrations[v]);
        snprintf(sql, sizeof sql, "PRAGMA user_version=%d", v + 1);
        if (rc == 0)
            rc = exec(db, sql);
        if (rc == 0)
            rc = exec(db, "COMMIT");
        if (rc < 0) {
            exec(db, "ROLLBACK");
            dbm_err("catalog: migration to schema version %d failed", v + 1);
            return rc;
        }
        dbm_info("catalog: migrated to schema version %d", v + 1);
    }
    return 0;
}

int dbm_catalog_open(const char *path, struct dbm_catalog **out)
{
    struct dbm_catalog *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    pthread_mutex_init(&c->lock, NULL);
    int rc = sqlite3_open_v2(path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        rc = map_rc(c->db, rc, path);
        goto fail;
    }
    sqlite3_busy_timeout(c->db, 5000);
    if ((rc = exec(c->db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON")) < 0)
        goto fail;
    if ((rc = migrate(c->db)) < 0)
        goto fail;
    *out = c;
    return 0;
fail:
    dbm_catalog_close(c);
    return rc;
}

void dbm_catalog_close(struct dbm_catalog *c)
{
    if (!c)
        return;
    sqlite3_close_v2(c->db);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

int dbm_catalog_version(struct dbm_catalog *c)
{
    pthread_mutex_lock(&c->lock);
    int v = user_version(c->db);
    pthread_mutex_unlock(&c->lock);
    return v;
}

/* Binds args described by fmt ('t' text, 'i' int64, 'n' NULL) and steps once. */
static int run(struct dbm_catalog *c, const char *sql, const char *fmt, ...)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(c->db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return map_rc(c->db, rc, sql);
    va_list ap;
    va_start(ap, fmt);
    for (int i = 0; fmt[i]; i++) {
        if (fmt[i] == 't')
            sqlite3_bind_text(st, i + 1, va_arg(ap, const char *), -1, SQLITE_TRANSIENT);
        else if (fmt[i] == 'i')
            sqlite3_bind_int64(st, i + 1, va_arg(ap, int64_t));
        else
            sqlite3_bind_null(st, i + 1);
    }
    va_end(ap);
    rc = sqlite3_step(st);
    int ret = map_rc(c->db, rc, sql);
    sqlite3_finalize(st);
    return ret;
}

int dbm_catalog_env_ensure(struct dbm_catalog *c, const char *env, const char *type, uint64_t now_ns)
{
    pthread_mutex_lock(&c->lock);
    int rc = run(c,
                 "INSERT INTO environments(name, type, state, created_ns, chain_start_ns) VALUES(?1, ?2, 'online', ?3, ?3)"
                 " ON CONFLICT(name) DO UPDATE SET type = excluded.type",
                 "tti", env, type, (int64_t)now_ns);
    pthread_mutex_unlock(&c->lock);
    return rc;
}

int dbm_catalog_env_get(struct dbm_catalog *c, const char *env, struct dbm_cat_env *out)
{
    pthread_mutex_lock(&c->lock);
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(c->db, "SELECT state, created_ns, chain_start_ns FROM environments WHERE name = ?1",
                                -1, &st, NULL);
    if (rc != SQLITE_OK) {
        rc = map_rc(c->db, rc, "env_get");
        goto out;
    }
    sqlite3_bind_text(st, 1, env, -1, SQLITE_TRANSIENT);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        dbm_strlcpy(out->state, (const char *)sqlite3_column_text(st, 0), sizeof out->state);
        out->created_ns = (uint64_t)sqlite3_column_int64(st, 1);
        out->chain_start_ns = (uint64_t)sqlite3_column_int64(st, 2);
        rc = 0;
    } else {
        rc = rc == SQLITE_DONE ? -ENOENT : map_rc(c->db, rc, "env_get");
    }
    sqlite3_finalize(st);
out:
    pthread_mutex_unlock(&c->lock);
    return rc;
}

int dbm_catalog_db_add(struct dbm_catalog *c, const char *env, const char *name, uint64_t timeline,
                       uint64_t created_ns, int64_t *id_out)
{
    pthread_mutex_lock(&c->lock);
    int rc = run(c, "INSERT INTO databases(env, name, timeline, created_ns) VALUES(?1, ?2, ?3, ?4)", "ttii", env, name,
                 (int64_t)timeline, (int64_t)created_ns);
    if (rc == 0 && id_out)
        *id_out = sqlite3_last_insert_rowid(c->db);
    pthread_mutex_unlock(&c->lock);
    return rc;
}

int dbm_catalog_db_drop(struct dbm_catalog *c, int64_t id, uint64_t deleted_ns)
{
    pthread_mutex_lock(&c->lock);
    int rc = run(c, "UPDATE databases SET deleted_ns = ?2 WHERE id = ?1 AND deleted_ns IS NULL", "ii", id,
                 (int64_t)deleted_ns);
    pthread_mutex_unlock(&c->lock);
    return rc;
}

static void row_to_db(sqlite3_stmt *st, struct dbm_cat_db *d)
{
    d->id = sqlite3_column_int64(st, 0);
    dbm_strlcpy(d->name, (const char *)sqlite3_column_text(st, 1), sizeof d->name);
    d->timeline = (uint64_t)sqlite3_column_int64(st, 2);
    d->created_ns = (uint64_t)sqlite3_column_int64(st, 3);
    d->deleted_ns = (uint64_t)sqlite3_column_int64(st, 4);
}

/* Runs a SELECT of the databases columns; cb per row (or first row into one). */
static int select_dbs(struct dbm_catalog *c, const char *sql, const char *env, const char *name, int64_t num,
                      int (*cb)(const struct dbm_cat_db *, void *), void *arg, struct dbm_cat_db *one)
{
    pthread_mutex_lock(&c->lock);
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(c->db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK) {
        rc = map_rc(c->db, rc, sql);
        pthread_mutex_unlock(&c->lock);
        return rc;
    }
    if (env)
        sqlite3_bind_text(st, 1, env, -1, SQLITE_TRANSIENT);
    if (name)
        sqlite3_bind_text(st, 2, name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, num);
    int found = 0, ret = 0;
    /* collect first, call back after unlocking: callbacks may use the catalog */
    struct dbm_cat_db *rows = NULL;
    size_t n = 0, cap = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        found = 1;
        if (one) {
            row_to_db(st, one);
            break;
        }
        if ((ret = dbm_grow((void **)&rows, &cap, n + 1, sizeof *rows)) < 0)
            break;
        row_to_db(st, &rows[n++]);
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        ret = map_rc(c->db, rc, sql);
    sqlite3_finalize(st);
    pthread_mutex_unlock(&c->lock);
    for (size_t i = 0; ret == 0 && i < n; i++)
        ret = cb(&rows[i], arg);
    free(rows);
    if (ret == 0 && one && !found)
        ret = -ENOENT;
    return ret;
}

#define DB_COLS "SELECT id, name, timeline, created_ns, coalesce(deleted_ns, 0) FROM databases "

int dbm_catalog_db_live(struct dbm_catalog *c, const char *env, const char *name, struct dbm_cat_db *out)
{
    return select_dbs(c, DB_COLS "WHERE env = ?1 AND name = ?2 AND deleted_ns IS NULL AND ?3 = ?3", env, name, 0,
                      NULL, NULL, out);
}

int dbm_catalog_db_list(struct dbm_catalog *c, const char *env, uint64_t at_ns,
                        int (*cb)(const struct dbm_cat_db *db, void *arg), void *arg)
{
    if (at_ns == 0)
        return select_dbs(c, DB_COLS "WHERE env = ?1 AND deleted_ns IS NULL AND ?3 = ?3 ORDER BY name", env, NULL, 0,
                          cb, arg, NULL);
    return select_dbs(c,
                      DB_COLS "WHERE env = ?1 AND created_ns <= ?3 AND (deleted_ns IS NULL OR deleted_ns > ?3)"
                              " ORDER BY name, created_ns DESC",
                      env, NULL, (int64_t)at_ns, cb, arg, NULL);
}

int dbm_catalog_db_list_since(struct dbm_catalog *c, const char *env, uint64_t since_ns,
                              int (*cb)(const struct dbm_cat_db *db, void *arg), void *arg)
{
    return select_dbs(c, DB_COLS "WHERE env = ?1 AND (deleted_ns IS NULL OR deleted_ns >= ?3) ORDER BY name, created_ns DESC",
                      env, NULL, (int64_t)since_ns, cb, arg, NULL);
}

int dbm_catalog_db_by_timeline(struct dbm_catalog *c, uint64_t t, struct dbm_cat_db *out)
{
    return select_dbs(c, DB_COLS "WHERE timeline = ?3", NULL, NULL, (int64_t)t, NULL, NULL, out);
}

int dbm_catalog_db_expired(struct dbm_catalog *c, const char *env, uint64_t before_ns,
                           int (*cb)(const struct dbm_cat_db *db, void *arg), void *arg)
{
    return select_dbs(c, DB_COLS "WHERE env = ?1 AND deleted_ns IS NOT NULL AND deleted_ns < ?3", env, NULL,
                      (int64_t)before_ns, cb, arg, NULL);
}

int dbm_catalog_db_purge(struct dbm_catalog *c, int64_t id)
{
    pthread_mutex_lock(&c->lock);
    int rc = run(c, "DELETE FROM databases WHERE id = ?1 AND deleted_ns IS NOT NULL", "i", id);
    pthread_mutex_unlock(&c->lock);
    return rc;
}

int dbm_catalog_audit(struct dbm_catalog *c, uid_t uid, gid_t gid, pid_t pid, const char *env, const char *request,
                      const char *verdict)
{
    pthread_mutex_lock(&c->lock);
    int rc = run(c, "INSERT INTO audit(time_ns, uid, gid, pid, env, request, verdict) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                 "iiiittt", (int64_t)dbm_now_ns(), (int64_t)uid, (int64_t)gid, (int64_t)pid, env, request, verdict);
    pthread_mutex_unlock(&c->lock);
    return rc;
}
