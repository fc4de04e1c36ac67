/* test_config.c - dbmovefs.conf: the default text, every key, a battery of
 * bad files with their exact messages, and dbm_env_allows. */
#include "check.h"
#include "config.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FNAME "t.conf"
#define DAY 86400ULL

static char tmpdir[64];

/* Writes len bytes of data to tmpdir/name; returns the path in a static buffer. */
static const char *write_file(const char *name, const char *data, size_t len)
{
    static char path[160];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0);
    if (fd >= 0) {
        CHECK(write(fd, data, len) == (ssize_t)len);
        close(fd);
    }
    return path;
}

/* Parses text that must be accepted; NULL (and a failed check) otherwise. */
static struct dbm_config *parse_ok(const char *text, int line)
{
    struct dbm_config *c = NULL;
    char err[1024] = "";
    int rc = dbm_config_parse(text, FNAME, &c, err, sizeof err);
    if (rc != 0)
        fprintf(stderr, "  from line %d: unexpected error %d: %s\n", line, rc, err);
    CHECK_EQ_INT(rc, 0);
    return rc == 0 ? c : NULL;
}

/* text must be refused with -EINVAL and a message that starts with
 * "t.conf:LINE: " (or "t.conf: " when line is 0) and contains want. */
static void parse_bad(const char *text, int line, const char *want, int src_line)
{
    struct dbm_config *c = (struct dbm_config *)&c; /* must stay untouched */
    char err[1024] = "", prefix[64];
    int rc = dbm_config_parse(text, FNAME, &c, err, sizeof err);
    if (line > 0)
        snprintf(prefix, sizeof prefix, "%s:%d: ", FNAME, line);
    else
        snprintf(prefix, sizeof prefix, "%s: ", FNAME);
    int ok = rc == -EINVAL && strncmp(err, prefix, strlen(prefix)) == 0 && strstr(err, want) != NULL;
    if (!ok)
        fprintf(stderr, "  from line %d: rc %d, message '%s'\n    want '%s...%s'\n", src_line, rc, err, prefix,
                want);
    CHECK(ok);
    CHECK(c == (struct dbm_config *)&c);
    CHECK(strchr(err, '\n') == NULL); /* one line */
}

#define OK(text) parse_ok(text, __LINE__)
#define BAD(text, line, want) parse_bad(text, line, want, __LINE__)

/* A minimal valid section, to append a key to. */
#define ENV "[env e]\ntype = sandbox\n"

static void test_default_text(void)
{
    struct dbm_config *c = OK(dbm_config_default_text);
    if (!c)
        return;
    CHECK_EQ_INT(c->nenvs, 3);
    CHECK(strcmp(c->path, FNAME) == 0);
    CHECK_EQ_INT(c->log_level, DBM_LOG_INFO);
    CHECK(c->export_cache_bytes == 4ULL << 30);
    CHECK(c->segment_bytes == 64ULL << 20);
    const char *names[] = { "prod", "uat", "dev" };
    enum dbm_env_type types[] = { DBM_ENV_PRODUCTION, DBM_ENV_SANDBOX, DBM_ENV_DEVTEST };
    uint64_t ret[] = { 28 * DAY, 7 * DAY, 7 * DAY };
    for (int i = 0; i < 3 && (size_t)i < c->nenvs; i++) {
        const struct dbm_env_conf *e = dbm_config_env(c, names[i]);
        CHECK(e == &c->envs[i]); /* in file order */
        if (!e)
            continue;
        CHECK_EQ_INT(e->type, types[i]);
        CHECK(e->retention_sec == ret[i]);
        CHECK_EQ_INT(e->mode, 0755);
        CHECK_EQ_INT(e->owner, 0);
        CHECK_EQ_INT(e->group, 0);
        CHECK(e->post_refresh_script == NULL);
        CHECK(e->readers_text == NULL && e->writers_text == NULL && e->operators_text == NULL);
        CHECK_EQ_INT(e->readers.nuids + e->readers.ngids + e->writers.nuids + e->operators.ngids, 0);
        CHECK_EQ_INT(e->ops_limit, 3);
        CHECK(e->ops_window_sec == DAY);
        CHECK(e->snapshot_cadence_sec == 3600);
        CHECK_EQ_INT(e->max_databases, 0);
        CHECK(e->max_db_bytes == 0);
    }
    CHECK_EQ_INT(c->envs[0].line, 17); /* the "[env prod]" line */
    CHECK(strcmp(dbm_env_type_name(DBM_ENV_PRODUCTION), "production") == 0);
    CHECK(strcmp(dbm_env_type_name(DBM_ENV_SANDBOX), "sandbox") == 0);
    CHECK(strcmp(dbm_env_type_name(DBM_ENV_DEVTEST), "devtest") == 0);
    CHECK(strcmp(dbm_env_type_name((enum dbm_env_type)7), "?") == 0);
    CHECK(dbm_config_env(c, "qa") == NULL);
    CHECK(dbm_config_env(c, "PROD") == NULL);
    dbm_config_free(c);
    dbm_config_free(NULL);
}

static void test_retention_defaults(void)
{
    struct dbm_config *c = OK("[env p]\ntype = production\n[env s]\ntype = sandbox\n[env d]\ntype = devtest\n"
                              "[env q]\nretention = 3d\ntype = production\n");
    if (!c)
        return;
    CHECK(dbm_config_env(c, "p")->retention_sec == 28 * DAY);
    CHECK(dbm_config_env(c, "s")->retention_sec == 7 * DAY);
    CHECK(dbm_config_env(c, "d")->retention_sec == 7 * DAY);
    CHECK(dbm_config_env(c, "q")->retention_sec == 3 * DAY); /* retention before type still counts */
    CHECK_EQ_INT(dbm_config_env(c, "q")->line, 7);
    dbm_config_free(c);
    /* the default applies to the last section too (finished at end of file) */
    c = OK("[env p]\ntype = production");
    if (c) {
        CHECK(c->envs[0].retention_sec == 28 * DAY);
        dbm_config_free(c);
    }
}

static void test_every_key(void)
{
    const char *script = write_file("post.sql", "UPDATE settings SET mail = 0;\n", 30);
    char text[2048];
    snprintf(text, sizeof text,
             "; a comment\n"
             "  # another\n"
             "[daemon]\n"
             "log_level = debug\n"
             "export_cache_size = 512M\n"
             "segment_size = 1MiB\n"
             "\n"
             "  [ env  a-1_x ]  \n"
             "type=sandbox\n"
             "\tretention   =   2w\t\n"
             "owner = daemon\n"
             "group = bin\n"
             "mode = 0750\n"
             "readers = bin, 5 @daemon\n"
             "writers = @2 *\n"
             "operators = root @root,@7\n"
             "post_refresh_script = %s\n"
             "max_databases = 12\n"
             "max_db_size = 10G\n"
             "ops_limit = 0\n"
             "ops_window = 90m\n"
             "snapshot_cadence = 15m\n"
             "[env 9]\r\n"
             "type = devtest\r\n"
             "owner = 1234\r\n"
             "group = 4321\r\n"
             "mode = 7\r\n"
             "retention = 3600\r\n"
             "max_databases = 100000\r\n"
             "[daemon]\n"
             "log_level = error\n",
             script);
    struct dbm_config *c = OK(text);
    if (!c)
        return;
    CHECK_EQ_INT(c->log_level, DBM_LOG_ERR); /* a second [daemon] section may set it again */
    CHECK(c->export_cache_bytes == 512ULL << 20);
    CHECK(c->segment_bytes == 1ULL << 20);
    CHECK_EQ_INT(c->nenvs, 2);
    const struct dbm_env_conf *e = dbm_config_env(c, "a-1_x");
    CHECK(e != NULL);
    if (e) {
        CHECK_EQ_INT(e->line, 8);
        CHECK_EQ_INT(e->type, DBM_ENV_SANDBOX);
        CHECK(e->retention_sec == 14 * DAY);
        CHECK_EQ_INT(e->owner, 1); /* daemon */
        CHECK_EQ_INT(e->group, 2); /* bin */
        CHECK_EQ_INT(e->mode, 0750);
        CHECK_EQ_INT(e->readers.nuids, 2);
        CHECK_EQ_INT(e->readers.ngids, 1);
        if (e->readers.nuids == 2 && e->readers.ngids == 1) {
            CHECK_EQ_INT(e->readers.uids[0], 2);
            CHECK_EQ_INT(e->readers.uids[1], 5);
            CHECK_EQ_INT(e->readers.gids[0], 1);
        }
        CHECK_EQ_INT(e->readers.everyone, 0);
        CHECK(e->readers_text && strcmp(e->readers_text, "bin, 5 @daemon") == 0);
        CHECK_EQ_INT(e->writers.nuids, 0);
        CHECK_EQ_INT(e->writers.ngids, 1);
        CHECK(e->writers.ngids == 1 && e->writers.gids[0] == 2);
        CHECK_EQ_INT(e->writers.everyone, 1);
        CHECK(e->writers_text && strcmp(e->writers_text, "@2 *") == 0);
        CHECK_EQ_INT(e->operators.nuids, 1);
        CHECK_EQ_INT(e->operators.ngids, 2);
        CHECK(e->operators.nuids == 1 && e->operators.uids[0] == 0);
        CHECK(e->operators.ngids == 2 && e->operators.gids[0] == 0 && e->operators.gids[1] == 7);
        CHECK(e->post_refresh_script && strcmp(e->post_refresh_script, script) == 0);
        CHECK_EQ_INT(e->max_databases, 12);
        CHECK(e->max_db_bytes == 10ULL << 30);
        CHECK_EQ_INT(e->ops_limit, 0);
        CHECK(e->ops_window_sec == 5400);
        CHECK(e->snapshot_cadence_sec == 900);
    }
    e = dbm_config_env(c, "9");
    CHECK(e != NULL);
    if (e) {
        CHECK_EQ_INT(e->type, DBM_ENV_DEVTEST);
        CHECK_EQ_INT(e->owner, 1234);
        CHECK_EQ_INT(e->group, 4321);
        CHECK_EQ_INT(e->mode, 07);
        CHECK(e->retention_sec == 3600); /* bare number: seconds */
        CHECK_EQ_INT(e->max_databases, 100000);
        CHECK(e->post_refresh_script == NULL);
    }
    dbm_config_free(c);
}

static void test_limits(void)
{
    /* longest name; 64 environments */
    struct dbm_config *c = OK("[env abcdefghijklmnopqrstuvwxyz012345]\ntype = devtest\n");
    if (c) {
        CHECK(dbm_config_env(c, "abcdefghijklmnopqrstuvwxyz012345") != NULL);
        dbm_config_free(c);
    }
    char many[4096] = "";
    for (int i = 0; i < DBM_MAX_ENVS; i++)
        snprintf(many + strlen(many), sizeof many - strlen(many), "[env e%d]\ntype = devtest\n", i);
    c = OK(many);
    if (c) {
        CHECK_EQ_INT(c->nenvs, DBM_MAX_ENVS);
        dbm_config_free(c);
    }
    snprintf(many + strlen(many), sizeof many - strlen(many), "[env e%d]\ntype = devtest\n", DBM_MAX_ENVS);
    BAD(many, 2 * DBM_MAX_ENVS + 1, "too many environments; accepted: at most 64");
}

static void test_bad_structure(void)
{
    BAD("[foo]\n", 1, "unknown section [foo]; accepted: [daemon] or [env NAME]");
    BAD("\n[environment x]\n", 2, "unknown section [environment x]; accepted");
    BAD("[env]\n", 1, "unknown section [env]; accepted");
    BAD("[Daemon]\n", 1, "unknown section [Daemon]");
    BAD(ENV "[env prod\n", 3, "section header '[env prod' is not closed; accepted: [daemon] or [env NAME]");
    BAD("[\n", 1, "section header '[' is not closed");
    BAD("[env Prod]\ntype = production\n", 1,
        "environment name 'Prod' is not accepted; accepted: 1 to 32 of a-z, 0-9, '-', '_', starting with a letter "
        "or digit, and not 'status' or 'readme'");
    BAD("[env abcdefghijklmnopqrstuvwxyz0123456]\n", 1,
        "environment name 'abcdefghijklmnopqrstuvwxyz0123456' is not accepted; accepted: 1 to 32");
    BAD("[env status]\n", 1, "environment name 'status' is not accepted");
    BAD("[env readme]\n", 1, "environment name 'readme' is not accepted");
    BAD("[env -x]\n", 1, "environment name '-x' is not accepted");
    BAD("[env a.b]\n", 1, "environment name 'a.b' is not accepted");
    BAD("[env a b]\n", 1, "environment name 'a b' is not accepted");
    BAD("[env a/b]\n", 1, "environment name 'a/b' is not accepted");
    BAD("[env prod]\ntype = production\n\n[env prod]\ntype = sandbox\n", 4, "environment 'prod' is declared twice");
    BAD("type = production\n" ENV, 1,
        "'type' is outside any section; accepted: settings after [daemon] or [env NAME]");
    BAD(ENV "hello\n", 3, "'hello' is not a setting; accepted: 'key = value', a [section] header or a # comment");
    BAD(ENV "colour = blue\n", 3,
        "unknown key 'colour' in [env e]; accepted: type, retention, owner, group, mode, readers, writers, "
        "operators, post_refresh_script, max_databases, max_db_size, ops_limit, ops_window, snapshot_cadence");
    BAD("[daemon]\ntype = sandbox\n" ENV, 2,
        "unknown key 'type' in [daemon]; accepted: log_level, export_cache_size, segment_size");
    BAD(ENV "Type = sandbox\n", 3, "unknown key 'Type' in [env e]");
    BAD(ENV "mode = 0750\nmode = 0700\n", 4, "'mode' is set twice in this section");
    BAD(ENV "type = devtest\n", 3, "'type' is set twice in this section");
    BAD("[daemon]\nlog_level = info\nlog_level = debug\n" ENV, 3, "'log_level' is set twice in this section");
    BAD(ENV "owner =\n", 3, "'owner' has no value");
    BAD(ENV "owner =   \t\n", 3, "'owner' has no value");
    BAD("[daemon]\nsegment_size=\n" ENV, 2, "'segment_size' has no value");
    BAD("", 0, "no environment is declared; accepted: at least one [env NAME] section with a type");
    BAD("# nothing\n[daemon]\nlog_level = info\n", 0, "no environment is declared");
}

static void test_bad_values(void)
{
    BAD("[env e]\ntype = prod\n", 2, "type: 'prod' is not a type; accepted: production, sandbox, devtest");
    BAD("[env e]\ntype = Production\n", 2, "type: 'Production' is not a type");
    /* missing type: the message points at the section's line */
    BAD("[env e]\nmode = 0750\n\n[env f]\ntype = devtest\n", 1,
        "[env e] has no 'type'; accepted: type = production, sandbox or devtest");
    BAD(ENV "\n[env f]\nmode = 0750\n", 4, "[env f] has no 'type'; accepted");
    BAD(ENV "[env f]\nretention = 1d\n[daemon]\nlog_level = info\n", 3, "[env f] has no 'type'");
    BAD(ENV "retention = soon\n", 3,
        "retention: 'soon' is not a duration; accepted: a number with s, m, h, d or w (e.g. 28d)");
    BAD(ENV "retention = 28 d\n", 3, "retention: '28 d' is not a duration");
    BAD(ENV "retention = 30m\n", 3, "retention: '30m' is out of range; accepted: 1h to 3650d");
    BAD(ENV "retention = 3651d\n", 3, "retention: '3651d' is out of range; accepted: 1h to 3650d");
    BAD(ENV "retention = 0\n", 3, "retention: '0' is out of range");
    BAD(ENV "ops_window = 30s\n", 3, "ops_window: '30s' is out of range; accepted: 1m to 365d");
    BAD(ENV "snapshot_cadence = 8d\n", 3, "snapshot_cadence: '8d' is out of range; accepted: 1m to 7d");
    BAD(ENV "snapshot_cadence = often\n", 3, "snapshot_cadence: 'often' is not a duration");
    BAD(ENV "mode = 9\n", 3, "mode: '9' is not accepted; accepted: octal permission bits 0000 to 0777 (e.g. 0750)");
    BAD(ENV "mode = 01000\n", 3, "mode: '01000' is not accepted; accepted: octal permission bits");
    BAD(ENV "mode = 0x1ff\n", 3, "mode: '0x1ff' is not accepted");
    BAD(ENV "mode = rwxr-x---\n", 3, "mode: 'rwxr-x---' is not accepted");
    BAD(ENV "mode = -1\n", 3, "mode: '-1' is not accepted");
    BAD(ENV "owner = no_such_user_dbm\n", 3,
        "owner: unknown user 'no_such_user_dbm'; accepted: a user name or a numeric uid");
    BAD(ENV "owner = 12ab\n", 3, "owner: unknown user '12ab'");
    BAD(ENV "owner = 4294967296\n", 3, "owner: unknown user '4294967296'");
    BAD(ENV "group = no_such_group_dbm\n", 3,
        "group: unknown group 'no_such_group_dbm'; accepted: a group name or a numeric gid");
    BAD(ENV "readers = root no_such_user_dbm\n", 3,
        "readers: unknown user 'no_such_user_dbm'; accepted: user names, uids, @group names, @gids or *");
    BAD(ENV "writers = @no_such_group_dbm\n", 3,
        "writers: unknown group 'no_such_group_dbm'; accepted: user names, uids, @group names, @gids or *");
    BAD(ENV "operators = *, @\n", 3, "operators: unknown group ''");
    BAD(ENV "max_db_size = 10Q\n", 3,
        "max_db_size: '10Q' is not accepted; accepted: a size of at least 0 bytes, with an optional K, M, G or T "
        "suffix (e.g. 4G)");
    BAD(ENV "max_db_size = 99999999T\n", 3, "max_db_size: '99999999T' is not accepted");
    BAD("[daemon]\nexport_cache_size = 1K\n" ENV, 2,
        "export_cache_size: '1K' is not accepted; accepted: a size of at least 1048576 bytes");
    BAD("[daemon]\nsegment_size = 32K\n" ENV, 2, "segment_size: '32K' is not accepted; accepted: a size of at least 65536");
    BAD("[daemon]\nlog_level = loud\n" ENV, 2,
        "log_level: 'loud' is not a level; accepted: error, warning, notice, info, debug");
    BAD(ENV "max_databases = -1\n", 3, "max_databases: '-1' is not accepted; accepted: a whole number from 0 to 100000");
    BAD(ENV "max_databases = 100001\n", 3, "max_databases: '100001' is not accepted");
    BAD(ENV "ops_limit = 3x\n", 3, "ops_limit: '3x' is not accepted; accepted: a whole number from 0 to 100000");
    BAD(ENV "ops_limit = 99999999999999999999999\n", 3, "ops_limit: '99999999999999999999999' is not accepted");
    BAD(ENV "post_refresh_script = scripts/post.sql\n", 3,
        "post_refresh_script: 'scripts/post.sql' is not accepted; accepted: an absolute path to a SQL file");
    char text[512];
    snprintf(text, sizeof text, ENV "post_refresh_script = %s/missing.sql\n", tmpdir);
    BAD(text, 3, "/missing.sql' is not a readable regular file");
    snprintf(text, sizeof text, ENV "post_refresh_script = %s\n", tmpdir);
    BAD(text, 3, "' is not a readable regular file");
}

static void test_load(void)
{
    struct dbm_config *c = (struct dbm_config *)&c;
    char err[512] = "";
    char path[160];

    snprintf(path, sizeof path, "%s/absent.conf", tmpdir);
    CHECK_EQ_INT(dbm_config_load(path, &c, err, sizeof err), -ENOENT);
    CHECK(strncmp(err, path, strlen(path)) == 0 && strstr(err, "cannot open") != NULL);
    CHECK(c == (struct dbm_config *)&c);

    static const char nul[] = "[env a]\ntype = sandbox\0\n";
    const char *p = write_file("nul.conf", nul, sizeof nul - 1);
    err[0] = '\0';
    CHECK_EQ_INT(dbm_config_load(p, &c, err, sizeof err), -EINVAL);
    CHECK(strncmp(err, p, strlen(p)) == 0 && strstr(err, ": contains a NUL byte; accepted: a text file") != NULL);
    CHECK(c == (struct dbm_config *)&c);

    /* errors from a loaded file name its path and line */
    p = write_file("bad.conf", "[env a]\ntype = sandbox\nmode = 9\n", 32);
    snprintf(path, sizeof path, "%s:3: mode: '9'", p);
    CHECK_EQ_INT(dbm_config_load(p, &c, err, sizeof err), -EINVAL);
    CHECK(strncmp(err, path, strlen(path)) == 0);

    CHECK_EQ_INT(dbm_config_load(tmpdir, &c, err, sizeof err), -EINVAL); /* a directory */
    CHECK(strstr(err, "not a regular file") != NULL);

    p = write_file(DBM_CONFIG_FILE, dbm_config_default_text, strlen(dbm_config_default_text));
    CHECK_EQ_INT(dbm_config_load(p, &c, err, sizeof err), 0);
    if (c != (struct dbm_config *)&c) {
        CHECK(strcmp(c->path, p) == 0);
        CHECK_EQ_INT(c->nenvs, 3);
        dbm_config_free(c);
    }

    /* a short error buffer is truncated, never overrun */
    char small[12];
    memset(small, 'x', sizeof small);
    CHECK_EQ_INT(dbm_config_parse("[foo]\n", FNAME, &c, small, 8), -EINVAL);
    CHECK(strcmp(small, "t.conf:") == 0 && small[8] == 'x');
}

/* An environment owned by uid 1 / gid 2 with the given mode and lists. */
static struct dbm_config *acl_env(const char *mode, const char *lists)
{
    char text[512];
    snprintf(text, sizeof text, "[env a]\ntype = sandbox\nowner = 1\ngroup = 2\nmode = %s\n%s", mode, lists);
    return OK(text);
}

#define R DBM_ACCESS_READ
#define W DBM_ACCESS_WRITE
#define O DBM_ACCESS_OPERATE
#define RW (R | W)
#define RWO (R | W | O)

/* The rights uid/gid/groups have, as a mask, asked right by right. */
static int rights(const struct dbm_env_conf *e, uid_t uid, gid_t gid, const gid_t *groups, size_t ngroups)
{
    int have = 0;
    for (int w = 1; w <= O; w <<= 1)
        if (dbm_env_allows(e, uid, gid, groups, ngroups, w))
            have |= w;
    /* asking for several at once is the conjunction */
    CHECK_EQ_INT(dbm_env_allows(e, uid, gid, groups, ngroups, RWO), have == RWO);
    CHECK_EQ_INT(dbm_env_allows(e, uid, gid, groups, ngroups, RW), (have & RW) == RW);
    return have;
}

static void test_allows(void)
{
    const gid_t g2[] = { 40, 2 }, g50[] = { 50 }, none[] = { 0 };
    struct dbm_config *c = acl_env("0750", "");
    if (c) {
        const struct dbm_env_conf *e = &c->envs[0];
        CHECK_EQ_INT(rights(e, 0, 0, NULL, 0), RWO);    /* root */
        CHECK_EQ_INT(rights(e, 1, 99, NULL, 0), RWO);   /* owner with rwx */
        CHECK_EQ_INT(rights(e, 5, 2, NULL, 0), R);      /* group r-x: primary gid */
        CHECK_EQ_INT(rights(e, 5, 99, g2, 2), R);       /* group by supplementary groups */
        CHECK_EQ_INT(rights(e, 5, 99, g50, 1), 0);      /* other --- */
        CHECK_EQ_INT(rights(e, 5, 99, NULL, 0), 0);
        dbm_config_free(c);
    }
    c = acl_env("0000", "");
    if (c) {
        CHECK_EQ_INT(rights(&c->envs[0], 0, 0, none, 1), RWO); /* root ignores the bits */
        CHECK_EQ_INT(rights(&c->envs[0], 1, 2, NULL, 0), 0);
        dbm_config_free(c);
    }
    c = acl_env("0576", "");
    if (c) {
        const struct dbm_env_conf *e = &c->envs[0];
        CHECK_EQ_INT(rights(e, 1, 2, g2, 2), R);  /* the owner's bits win over the group's */
        CHECK_EQ_INT(rights(e, 5, 2, NULL, 0), RW); /* group rwx: write but no operate */
        CHECK_EQ_INT(rights(e, 5, 7, NULL, 0), 0);  /* other rw-: no x, so nothing */
        dbm_config_free(c);
    }
    c = acl_env("0755", "");
    if (c) {
        CHECK_EQ_INT(rights(&c->envs[0], 7, 7, NULL, 0), R); /* other r-x */
        CHECK_EQ_INT(rights(&c->envs[0], 1, 7, NULL, 0), RWO);
        dbm_config_free(c);
    }
    c = acl_env("0700", "readers = 7 @60\nwriters = 8, @50\noperators = 9 @70\n");
    if (c) {
        const struct dbm_env_conf *e = &c->envs[0];
        const gid_t g60[] = { 3, 60 }, g70[] = { 70 };
        CHECK_EQ_INT(rights(e, 7, 7, NULL, 0), R);
        CHECK_EQ_INT(rights(e, 6, 60, NULL, 0), R);     /* @group by primary gid */
        CHECK_EQ_INT(rights(e, 6, 6, g60, 2), R);       /* @group by supplementary gid */
        CHECK_EQ_INT(rights(e, 8, 8, NULL, 0), RW);
        CHECK_EQ_INT(rights(e, 6, 6, g50, 1), RW);
        CHECK_EQ_INT(rights(e, 9, 9, NULL, 0), RWO);
        CHECK_EQ_INT(rights(e, 6, 6, g70, 1), RWO);
        CHECK_EQ_INT(rights(e, 6, 6, NULL, 0), 0);      /* in no list */
        CHECK_EQ_INT(rights(e, 6, 6, g2, 2), 0);        /* the env's group has ---, lists do not name it */
        dbm_config_free(c);
    }
    c = acl_env("0700", "readers = *\n");
    if (c) {
        CHECK_EQ_INT(rights(&c->envs[0], 12345, 12345, NULL, 0), R);
        dbm_config_free(c);
    }
    c = acl_env("0700", "writers = *\noperators = 77\n");
    if (c) {
        CHECK_EQ_INT(rights(&c->envs[0], 12345, 12345, NULL, 0), RW);
        CHECK_EQ_INT(rights(&c->envs[0], 77, 12345, NULL, 0), RWO);
        dbm_config_free(c);
    }
    c = acl_env("0700", "operators = *\n");
    if (c) {
        CHECK_EQ_INT(rights(&c->envs[0], 12345, 12345, NULL, 0), RWO);
        dbm_config_free(c);
    }
}

int main(void)
{
    dbm_log_setup(0, DBM_LOG_ERR);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_config.XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return EXIT_FAILURE;
    }
    test_default_text();
    test_retention_defaults();
    test_every_key();
    test_limits();
    test_bad_structure();
    test_bad_values();
    test_load();
    test_allows();

    const char *files[] = { "post.sql", "nul.conf", "bad.conf", DBM_CONFIG_FILE };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char p[160];
        snprintf(p, sizeof p, "%s/%s", tmpdir, files[i]);
        unlink(p);
    }
    CHECK_EQ_INT(rmdir(tmpdir), 0);
    return CHECK_DONE();
}
