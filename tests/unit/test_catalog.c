/* test_catalog.c - the catalog: schema creation and migration, refusal of a
 * newer schema, environments, databases over time, audit. Uses sqlite3
 * directly only to build old catalogs and to look at what was written. */
#include "catalog.h"
#include "check.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static char tmpdir[64];

static void path_in(char *buf, size_t size, const char *name)
{
    snprintf(buf, size, "%s/%s", tmpdir, name);
}

/* Removes a catalog and its WAL companions. */
static void remove_db(const char *path)
{
    char p[256];
    unlink(path);
    snprintf(p, sizeof p, "%s-wal", path);
    unlink(p);
    snprintf(p, sizeof p, "%s-shm", path);
    unlink(p);
    snprintf(p, sizeof p, "%s-journal", path);
    unlink(p);
}

/* Runs sql on the file at path with a private connection; 0 or the SQLite code. */
static int raw_exec(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    int rc = sqlite3_open(path, &db);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        fprintf(stderr, "  raw_exec: %s\n", db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
    sqlite3_close(db);
    return rc;
}

/* The first column of the first row of sql as an integer; -999 on error. */
static long long raw_int(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    long long v = -999;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    else
        fprintf(stderr, "  raw_int(%s): %s\n", sql, db ? sqlite3_errmsg(db) : "open failed");
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* Collects what db_list reports. */
struct listing {
    int n;
    struct dbm_cat_db v[16];
    int stop_after; /* return 42 after this many; 0: never */
};

static int collect(const struct dbm_cat_db *db, void *arg)
{
    struct listing *l = arg;
    if (l->n < 16)
        l->v[l->n] = *db;
    l->n++;
    return l->stop_after && l->n >= l->stop_after ? 42 : 0;
}

/* db_list of env at at_ns must name exactly the databases in want
 * ("name:timeline" separated by spaces, in order). */
static void expect_list(struct dbm_catalog *c, const char *env, uint64_t at_ns, const char *want, int line)
{
    struct listing l = { 0 };
    int rc = dbm_catalog_db_list(c, env, at_ns, collect, &l);
    char got[256] = "";
    for (int i = 0; i < l.n && i < 16; i++)
        snprintf(got + strlen(got), sizeof got - strlen(got), "%s%s:%llu", i ? " " : "", l.v[i].name,
                 (unsigned long long)l.v[i].timeline);
    if (rc != 0 || strcmp(got, want) != 0)
        fprintf(stderr, "  from line %d: list %s at %llu: rc %d '%s', want '%s'\n", line, env,
                (unsigned long long)at_ns, rc, got, want);
    CHECK_EQ_INT(rc, 0);
    CHECK(strcmp(got, want) == 0);
}

#define LIST(c, env, at, want) expect_list(c, env, at, want, __LINE__)

/* Ids of the databases test_databases adds, for the later checks. */
static int64_t a1, a2, b, cc, x;

static void test_envs(struct dbm_catalog *c)
{
    struct dbm_cat_env env;
    CHECK_EQ_INT(dbm_catalog_env_get(c, "prod", &env), -ENOENT);
    CHECK_EQ_INT(dbm_catalog_env_ensure(c, "prod", "production", 1000), 0);
    CHECK_EQ_INT(dbm_catalog_env_ensure(c, "uat", "sandbox", 1500), 0);
    memset(&env, 0, sizeof env);
    CHECK_EQ_INT(dbm_catalog_env_get(c, "prod", &env), 0);
    CHECK(strcmp(env.state, "online") == 0);
    CHECK(env.created_ns == 1000);
    CHECK(env.chain_start_ns == 1000);
    /* a known environment keeps its record */
    CHECK_EQ_INT(dbm_catalog_env_ensure(c, "prod", "production", 5000), 0);
    CHECK_EQ_INT(dbm_catalog_env_get(c, "prod", &env), 0);
    CHECK(env.created_ns == 1000 && env.chain_start_ns == 1000);
    CHECK_EQ_INT(dbm_catalog_env_get(c, "uat", &env), 0);
    CHECK(env.created_ns == 1500);
    CHECK_EQ_INT(dbm_catalog_env_get(c, "Prod", &env), -ENOENT);
}

static void test_databases(struct dbm_catalog *c)
{
    /* databases over time:
     *   a  tl 1: 100 .. 200      b  tl 3: 150 ..
     *   a  tl 2: 300 ..          c  tl 4: 250 .. 260
     *   uat/x tl 5: 50 ..                                 */
    CHECK_EQ_INT(dbm_catalog_db_add(c, "prod", "a", 1, 100, &a1), 0);
    CHECK(a1 > 0);
    CHECK_EQ_INT(dbm_catalog_db_add(c, "prod", "b", 3, 150, &b), 0);
    CHECK_EQ_INT(dbm_catalog_db_add(c, "uat", "x", 5, 50, &x), 0);
    CHECK(b != a1 && x != b);
    /* one live database per name and environment */
    CHECK_EQ_INT(dbm_catalog_db_add(c, "prod", "a", 9, 160, NULL), -EEXIST);
    CHECK_EQ_INT(dbm_catalog_db_add(c, "uat", "a", 6, 160, NULL), 0); /* same name, other env */
    struct dbm_cat_db d;
    memset(&d, 0, sizeof d);
    CHECK_EQ_INT(dbm_catalog_db_live(c, "prod", "a", &d), 0);
    CHECK(d.id == a1 && strcmp(d.name, "a") == 0 && d.timeline == 1 && d.created_ns == 100 && d.deleted_ns == 0);
    CHECK_EQ_INT(dbm_catalog_db_drop(c, a1, 200), 0);
    CHECK_EQ_INT(dbm_catalog_db_live(c, "prod", "a", &d), -ENOENT);
    CHECK_EQ_INT(dbm_catalog_db_drop(c, a1, 999), 0); /* dropping again keeps the first time */
    CHECK_EQ_INT(dbm_catalog_db_add(c, "prod", "a", 2, 300, &a2), 0);
    CHECK(a2 != a1);
    CHECK_EQ_INT(dbm_catalog_db_add(c, "prod", "c", 4, 250, &cc), 0);
    CHECK_EQ_INT(dbm_catalog_db_drop(c, cc, 260), 0);
    CHECK_EQ_INT(dbm_catalog_db_live(c, "prod", "a", &d), 0);
    CHECK(d.id == a2 && d.timeline == 2 && d.created_ns == 300 && d.deleted_ns == 0);
    CHECK_EQ_INT(dbm_catalog_db_live(c, "prod", "c", &d), -ENOENT);
    CHECK_EQ_INT(dbm_catalog_db_live(c, "prod", "x", &d), -ENOENT);
    CHECK_EQ_INT(dbm_catalog_db_live(c, "nowhere", "a", &d), -ENOENT);

    LIST(c, "prod", 0, "a:2 b:3");
    LIST(c, "prod", 99, "");
    LIST(c, "prod", 100, "a:1"); /* created at the instant: there */
    LIST(c, "prod", 150, "a:1 b:3");
    LIST(c, "prod", 199, "a:1 b:3");
    LIST(c, "prod", 200, "b:3"); /* deleted at the instant: gone */
    LIST(c, "prod", 255, "b:3 c:4");
    LIST(c, "prod", 260, "b:3");
    LIST(c, "prod", 299, "b:3");
    LIST(c, "prod", 300, "a:2 b:3");
    LIST(c, "prod", UINT64_C(1) << 62, "a:2 b:3");
    LIST(c, "uat", 0, "a:6 x:5");
    LIST(c, "uat", 100, "x:5");
    LIST(c, "dev", 0, "");
}

static void test_lookups(struct dbm_catalog *c)
{
    struct dbm_cat_db d;

    /* the fields of a listed dropped database */
    struct listing l = { 0 };
    CHECK_EQ_INT(dbm_catalog_db_list(c, "prod", 255, collect, &l), 0);
    CHECK(l.n == 2 && l.v[1].id == cc && l.v[1].created_ns == 250 && l.v[1].deleted_ns == 260);
    /* a callback's non-zero value stops the walk and is returned */
    memset(&l, 0, sizeof l);
    l.stop_after = 1;
    CHECK_EQ_INT(dbm_catalog_db_list(c, "prod", 0, collect, &l), 42);
    CHECK_EQ_INT(l.n, 1);

    /* by timeline, live or dropped */
    CHECK_EQ_INT(dbm_catalog_db_by_timeline(c, 1, &d), 0);
    CHECK(d.id == a1 && strcmp(d.name, "a") == 0 && d.created_ns == 100 && d.deleted_ns == 200);
    CHECK_EQ_INT(dbm_catalog_db_by_timeline(c, 2, &d), 0);
    CHECK(d.id == a2 && d.deleted_ns == 0);
    CHECK_EQ_INT(dbm_catalog_db_by_timeline(c, 5, &d), 0);
    CHECK(d.id == x && strcmp(d.name, "x") == 0);
    CHECK_EQ_INT(dbm_catalog_db_by_timeline(c, 77, &d), -ENOENT);

}

static void test_create_and_reopen(void)
{
    char path[160];
    path_in(path, sizeof path, DBM_CATALOG_FILE);
    struct dbm_catalog *c = NULL;
    CHECK_EQ_INT(dbm_catalog_open(path, &c), 0);
    if (!c)
        return;
    CHECK_EQ_INT(dbm_catalog_version(c), DBM_CATALOG_VERSION);
    test_envs(c);
    test_databases(c);
    test_lookups(c);

    /* audit */
    CHECK_EQ_INT(dbm_catalog_audit(c, 1000, 1001, 4242, "prod", "refresh uat from prod", "accepted"), 0);
    CHECK_EQ_INT(dbm_catalog_audit(c, 0, 0, 1, NULL, "status", "refused: no such env"), 0);
    dbm_catalog_close(c);
    dbm_catalog_close(NULL);

    CHECK_EQ_INT(raw_int(path, "SELECT count(*) FROM audit"), 2);
    CHECK_EQ_INT(raw_int(path, "SELECT count(*) FROM audit WHERE uid = 1000 AND gid = 1001 AND pid = 4242"
                               " AND env = 'prod' AND request = 'refresh uat from prod' AND verdict = 'accepted'"
                               " AND time_ns > 1577836800000000000"),
                 1);
    CHECK_EQ_INT(raw_int(path, "SELECT count(*) FROM audit WHERE env IS NULL AND verdict LIKE 'refused%'"), 1);
    CHECK_EQ_INT(raw_int(path, "PRAGMA user_version"), DBM_CATALOG_VERSION);

    /* reopen: everything is still there, no migration runs */
    c = NULL;
    CHECK_EQ_INT(dbm_catalog_open(path, &c), 0);
    if (!c)
        return;
    CHECK_EQ_INT(dbm_catalog_version(c), DBM_CATALOG_VERSION);
    struct dbm_cat_env env;
    CHECK_EQ_INT(dbm_catalog_env_get(c, "prod", &env), 0);
    CHECK(env.created_ns == 1000);
    LIST(c, "prod", 0, "a:2 b:3");
    LIST(c, "prod", 255, "b:3 c:4");
    CHECK_EQ_INT(dbm_catalog_db_add(c, "prod", "b", 10, 400, NULL), -EEXIST);
    int64_t nid = 0;
    CHECK_EQ_INT(dbm_catalog_db_add(c, "prod", "d", 11, 400, &nid), 0);
    CHECK(nid > a2 && nid > cc);
    dbm_catalog_close(c);
    CHECK_EQ_INT(raw_int(path, "SELECT count(*) FROM databases"), 7);
    remove_db(path);
}

/* The schema as version 1 shipped it. */
static const char v1_schema[] =
    "CREATE TABLE environments(name TEXT PRIMARY KEY, type TEXT NOT NULL, state TEXT NOT NULL,"
    "  created_ns INTEGER NOT NULL, chain_start_ns INTEGER NOT NULL);"
    "CREATE TABLE audit(id INTEGER PRIMARY KEY, time_ns INTEGER NOT NULL, uid INTEGER, gid INTEGER,"
    "  pid INTEGER, env TEXT, request TEXT, verdict TEXT);"
    "INSERT INTO environments VALUES('prod', 'production', 'offline', 11, 22);"
    "INSERT INTO audit(time_ns, uid, gid, pid, env, request, verdict) VALUES(5, 1, 2, 3, 'prod', 'old', 'ok');"
    "PRAGMA user_version = 1;";

static void test_migrate_from_v1(void)
{
    char path[160];
    path_in(path, sizeof path, "v1.db");
    CHECK_EQ_INT(raw_exec(path, v1_schema), SQLITE_OK);
    CHECK_EQ_INT(raw_int(path, "PRAGMA user_version"), 1);

    struct dbm_catalog *c = NULL;
    CHECK_EQ_INT(dbm_catalog_open(path, &c), 0);
    if (!c)
        return;
    CHECK_EQ_INT(dbm_catalog_version(c), DBM_CATALOG_VERSION);
    struct dbm_cat_env env;
    CHECK_EQ_INT(dbm_catalog_env_get(c, "prod", &env), 0);
    CHECK(strcmp(env.state, "offline") == 0 && env.created_ns == 11 && env.chain_start_ns == 22);
    CHECK_EQ_INT(dbm_catalog_env_ensure(c, "prod", "production", 99), 0);
    CHECK_EQ_INT(dbm_catalog_env_get(c, "prod", &env), 0);
    CHECK(strcmp(env.state, "offline") == 0 && env.created_ns == 11); /* state kept */
    /* the new tables work */
    CHECK_EQ_INT(dbm_catalog_db_add(c, "prod", "a", 1, 100, NULL), 0);
    CHECK_EQ_INT(dbm_catalog_db_add(c, "prod", "a", 2, 100, NULL), -EEXIST);
    LIST(c, "prod", 0, "a:1");
    dbm_catalog_close(c);
    CHECK_EQ_INT(raw_int(path, "SELECT count(*) FROM audit WHERE request = 'old' AND verdict = 'ok'"), 1);
    CHECK_EQ_INT(raw_int(path, "PRAGMA user_version"), DBM_CATALOG_VERSION);
    remove_db(path);

    /* a migration that fails is rolled back whole: version and tables stay */
    CHECK_EQ_INT(raw_exec(path, v1_schema), SQLITE_OK);
    CHECK_EQ_INT(raw_exec(path, "CREATE TABLE x(y); CREATE INDEX databases_env ON x(y);"), SQLITE_OK);
    c = NULL;
    int rc = dbm_catalog_open(path, &c);
    CHECK(rc < 0);
    CHECK(c == NULL);
    CHECK_EQ_INT(raw_int(path, "PRAGMA user_version"), 1);
    CHECK_EQ_INT(raw_int(path, "SELECT count(*) FROM sqlite_master WHERE name = 'databases'"), 0);
    remove_db(path);
}

static void test_refusals(void)
{
    char path[160];
    path_in(path, sizeof path, "new.db");
    char sql[64];
    snprintf(sql, sizeof sql, "CREATE TABLE t(x); PRAGMA user_version = %d;", DBM_CATALOG_VERSION + 1);
    CHECK_EQ_INT(raw_exec(path, sql), SQLITE_OK);
    struct dbm_catalog *c = (struct dbm_catalog *)&c;
    CHECK_EQ_INT(dbm_catalog_open(path, &c), -EPROTO);
    CHECK(c == (struct dbm_catalog *)&c);
    /* and left alone */
    CHECK_EQ_INT(raw_int(path, "PRAGMA user_version"), DBM_CATALOG_VERSION + 1);
    CHECK_EQ_INT(raw_int(path, "SELECT count(*) FROM sqlite_master"), 1);
    remove_db(path);

    /* not a SQLite file */
    path_in(path, sizeof path, "junk.db");
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0);
    if (fd >= 0) {
        char junk[4096];
        memset(junk, 'j', sizeof junk);
        CHECK(write(fd, junk, sizeof junk) == (ssize_t)sizeof junk);
        close(fd);
    }
    CHECK(dbm_catalog_open(path, &c) < 0);
    CHECK(c == (struct dbm_catalog *)&c);
    remove_db(path);

    /* a directory that does not exist */
    path_in(path, sizeof path, "missing/catalog.db");
    CHECK_EQ_INT(dbm_catalog_open(path, &c), -ENOENT);
    CHECK(c == (struct dbm_catalog *)&c);
}

int main(void)
{
    dbm_log_setup(0, DBM_LOG_ERR);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_catalog.XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return EXIT_FAILURE;
    }
    test_create_and_reopen();
    test_migrate_from_v1();
    test_refusals();
    CHECK_EQ_INT(rmdir(tmpdir), 0); /* fails if a test left a file behind */
    return CHECK_DONE();
}
