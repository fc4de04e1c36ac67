/* config.c - see config.h. One pass over the lines; each setter validates its
 * value and reports what would be accepted. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "strutil.h"
#include "timefmt.h"

const char dbm_config_default_text[] =
    "# dbmovefs configuration. Reload with: kill -HUP $(pidof dbmovefs)\n"
    "# Format: [daemon] and [env NAME] sections, 'key = value' lines, '#' comments.\n"
    "# Reference: fs-layout.md, section \"Configuration\".\n"
    "\n"
    "[daemon]\n"
    "# error, warning, notice, info or debug\n"
    "log_level = info\n"
    "# bound of the cache of produced exports (K, M, G, T suffixes)\n"
    "export_cache_size = 4G\n"
    "\n"
    "# One section per environment. type: production, sandbox or devtest.\n"
    "# retention: how far back restore points go (default 28d for production,\n"
    "# 7d for sandbox and devtest). owner/group/mode: shown by ls -l on the\n"
    "# environment directory and used for access like a directory's bits.\n"
    "# readers/writers/operators: extra users and @groups (or *) that may read,\n"
    "# write databases, or also start operations.\n"
    "[env prod]\n"
    "type = production\n"
    "retention = 28d\n"
    "owner = root\n"
    "group = root\n"
    "mode = 0755\n"
    "# readers = alice @auditors\n"
    "# writers = erp\n"
    "# operators = @dba\n"
    "ops_limit = 3\n"
    "ops_window = 24h\n"
    "snapshot_cadence = 1h\n"
    "# exports produced ahead for backup jobs, daily at these UTC times\n"
    "# export_schedule = 00:00\n"
    "\n"
    "[env uat]\n"
    "type = sandbox\n"
    "retention = 7d\n"
    "mode = 0755\n"
    "# SQL run against each database after a refresh or restore, before the\n"
    "# environment comes online: disable e-mail, scrub data...\n"
    "# post_refresh_script = /etc/dbmovefs/uat-post-refresh.sql\n"
    "\n"
    "[env dev]\n"
    "type = devtest\n"
    "retention = 7d\n"
    "mode = 0755\n";

static const char *const type_names[] = { "production", "sandbox", "devtest" };

const char *dbm_env_type_name(enum dbm_env_type t)
{
    return (unsigned)t < 3 ? type_names[t] : "?";
}

#define ENV_KEYS                                                                           \
    "type, retention, owner, group, mode, readers, writers, operators, post_refresh_script, " \
    "max_databases, max_db_size, ops_limit, ops_window, snapshot_cadence, export_schedule"
#define DAEMON_KEYS "log_level, export_cache_size, segment_size"

struct parser {
    const char *fname;
    int line;
    char *err;
    size_t errsz;
    struct dbm_config *cfg;
    struct dbm_env_conf *env; /* current [env] section or NULL */
    int in_daemon;
    unsigned seen;            /* bit per key index in this section: duplicates are errors */
};

__attribute__((format(printf, 2, 3))) static int perr(struct parser *p, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (p->line > 0)
        snprintf(p->err, p->errsz, "%s:%d: %s", p->fname, p->line, msg);
    else
        snprintf(p->err, p->errsz, "%s: %s", p->fname, msg);
    return -EINVAL;
}

static void acl_free(struct dbm_acl *a)
{
    free(a->uids);
    free(a->gids);
    memset(a, 0, sizeof *a);
}

static void env_free(struct dbm_env_conf *e)
{
    acl_free(&e->readers);
    acl_free(&e->writers);
    acl_free(&e->operators);
    free(e->readers_text);
    free(e->writers_text);
    free(e->operators_text);
    free(e->post_refresh_script);
    free(e->export_schedule_text);
}

void dbm_config_free(struct dbm_config *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->nenvs; i++)
        env_free(&c->envs[i]);
    free(c->envs);
    free(c->path);
    free(c);
}

const struct dbm_env_conf *dbm_config_env(const struct dbm_config *c, const char *name)
{
    for (size_t i = 0; i < c->nenvs; i++)
        if (strcmp(c->envs[i].name, name) == 0)
            return &c->envs[i];
    return NULL;
}

/* A numeric uid or gid: 1 and *v if s is one, 0 if s is a name, -EINVAL if
 * it starts with a digit but is not a valid id. */
static int parse_numeric_id(const char *s, unsigned long *v)
{
    char *end;
    if (!isdigit((unsigned char)*s))
        return 0;
    *v = strtoul(s, &end, 10);
    return *end || *v > 0x7fffffffUL ? -EINVAL : 1;
}

static int parse_uid(const char *s, uid_t *out)
{
    unsigned long v;
    int rc = parse_numeric_id(s, &v);
    if (rc < 0)
        return rc;
    if (rc > 0) {
        *out = (uid_t)v;
        return 0;
    }
    struct passwd pw, *res = NULL;
    char buf[4096];
    if (getpwnam_r(s, &pw, buf, sizeof buf, &res) != 0 || !res)
        return -ENOENT;
    *out = res->pw_uid;
    return 0;
}

static int parse_gid(const char *s, gid_t *out)
{
    unsigned long v;
    int rc = parse_numeric_id(s, &v);
    if (rc < 0)
        return rc;
    if (rc > 0) {
        *out = (gid_t)v;
        return 0;
    }
    struct group gr, *res = NULL;
    char buf[8192];
    if (getgrnam_r(s, &gr, buf, sizeof buf, &res) != 0 || !res)
        return -ENOENT;
    *out = res->gr_gid;
    return 0;
}

static int set_acl(struct parser *p, const char *key, const char *val, struct dbm_acl *a, char **text)
{
    char *copy = strdup(val);
    if (!copy)
        return perr(p, "out of memory");
    int rc = 0;
    char *save = NULL;
    for (char *tok = strtok_r(copy, " \t,", &save); tok; tok = strtok_r(NULL, " \t,", &save)) {
        if (strcmp(tok, "*") == 0) {
            a->everyone = 1;
        } else if (tok[0] == '@') {
            gid_t g;
            if (parse_gid(tok + 1, &g) < 0) {
                rc = perr(p, "%s: unknown group '%s'; accepted: user names, uids, @group names, @gids or *",
                          key, tok + 1);
                break;
            }
            gid_t *tmp = realloc(a->gids, (a->ngids + 1) * sizeof *tmp);
            if (!tmp) {
                rc = perr(p, "out of memory");
                break;
            }
            a->gids = tmp;
            a->gids[a->ngids++] = g;
        } else {
            uid_t u;
            if (parse_uid(tok, &u) < 0) {
                rc = perr(p, "%s: unknown user '%s'; accepted: user names, uids, @group names, @gids or *",
                          key, tok);
                break;
            }
            uid_t *tmp = realloc(a->uids, (a->nuids + 1) * sizeof *tmp);
            if (!tmp) {
                rc = perr(p, "out of memory");
                break;
            }
            a->uids = tmp;
            a->uids[a->nuids++] = u;
        }
    }
    free(copy);
    if (rc == 0 && !(*text = strdup(val)))
        rc = perr(p, "out of memory");
    return rc;
}

static int set_duration(struct parser *p, const char *key, const char *val, uint64_t min, uint64_t max,
                        uint64_t *out)
{
    uint64_t s;
    char a[24], b[24];
    dbm_duration_format(min, a, sizeof a);
    dbm_duration_format(max, b, sizeof b);
    if (dbm_duration_parse(val, 1, &s) < 0)
        return perr(p, "%s: '%s' is not a duration; accepted: a number with s, m, h, d or w (e.g. 28d)", key, val);
    if (s < min || s > max)
        return perr(p, "%s: '%s' is out of range; accepted: %s to %s", key, val, a, b);
    *out = s;
    return 0;
}

static int set_u32(struct parser *p, const char *key, const char *val, uint32_t max, uint32_t *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(val, &end, 10);
    if (!isdigit((unsigned char)*val) || *end || errno || v > max)
        return perr(p, "%s: '%s' is not accepted; accepted: a whole number from 0 to %u", key, val, max);
    *out = (uint32_t)v;
    return 0;
}

static int set_size(struct parser *p, const char *key, const char *val, uint64_t min, uint64_t *out)
{
    uint64_t v;
    if (dbm_size_parse(val, &v) < 0 || v < min)
        return perr(p, "%s: '%s' is not accepted; accepted: a size of at least %llu bytes, with an optional K, M, G "
                       "or T suffix (e.g. 4G)",
                    key, val, (unsigned long long)min);
    *out = v;
    return 0;
}

static int u32_cmp(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* "00:00 12:30 18:00:05": daily UTC times at which exports are produced ahead. */
static int set_schedule(struct parser *p, const char *val, struct dbm_env_conf *e)
{
    char *copy = strdup(val), *save = NULL;
    if (!copy)
        return perr(p, "out of memory");
    int rc = 0;
    for (char *tok = strtok_r(copy, " \t,", &save); tok; tok = strtok_r(NULL, " \t,", &save)) {
        /* exactly HH:MM or HH:MM:SS */
        size_t len = strlen(tok);
        int shape = (len == 5 || len == 8) && tok[2] == ':' && (len == 5 || tok[5] == ':');
        for (size_t k = 0; shape && k < len; k++)
            shape = (k == 2 || k == 5) ? 1 : isdigit((unsigned char)tok[k]) != 0;
        unsigned h = 0, m = 0, sec = 0;
        if (shape) {
            h = (unsigned)((tok[0] - '0') * 10 + tok[1] - '0');
            m = (unsigned)((tok[3] - '0') * 10 + tok[4] - '0');
            if (len == 8)
                sec = (unsigned)((tok[6] - '0') * 10 + tok[7] - '0');
        }
        if (!shape || h > 23 || m > 59 || sec > 59) {
            rc = perr(p, "export_schedule: '%s' is not a time; accepted: daily UTC times HH:MM or HH:MM:SS, "
                         "separated by spaces (e.g. 00:00 12:00)", tok);
            break;
        }
        if (e->nexport_at == sizeof e->export_at / sizeof e->export_at[0]) {
            rc = perr(p, "export_schedule: too many times; accepted: at most 24");
            break;
        }
        e->export_at[e->nexport_at++] = h * 3600 + m * 60 + sec;
    }
    free(copy);
    if (rc == 0) {
        qsort(e->export_at, e->nexport_at, sizeof e->export_at[0], u32_cmp);
        if (!(e->export_schedule_text = strdup(val)))
            rc = perr(p, "out of memory");
    }
    return rc;
}

static const char *const env_keys[] = { "type", "retention", "owner", "group", "mode", "readers", "writers",
                                        "operators", "post_refresh_script", "max_databases", "max_db_size",
                                        "ops_limit", "ops_window", "snapshot_cadence", "export_schedule", NULL };

static int env_set(struct parser *p, int k, const char *key, const char *val)
{
    struct dbm_env_conf *e = p->env;
    switch (k) {
    case 0:
        for (int i = 0; i < 3; i++) {
            if (strcmp(val, type_names[i]) == 0) {
                e->type = (enum dbm_env_type)i;
                return 0;
            }
        }
        return perr(p, "type: '%s' is not a type; accepted: production, sandbox, devtest", val);
    case 1: return set_duration(p, key, val, 3600, 3650ULL * 86400, &e->retention_sec);
    case 2:
        if (parse_uid(val, &e->owner) < 0)
            return perr(p, "owner: unknown user '%s'; accepted: a user name or a numeric uid", val);
        return 0;
    case 3:
        if (parse_gid(val, &e->group) < 0)
            return perr(p, "group: unknown group '%s'; accepted: a group name or a numeric gid", val);
        return 0;
    case 4: {
        char *end;
        unsigned long m = strtoul(val, &end, 8);
        if (!isdigit((unsigned char)*val) || *end || m > 0777)
            return perr(p, "mode: '%s' is not accepted; accepted: octal permission bits 0000 to 0777 (e.g. 0750)",
                        val);
        e->mode = (mode_t)m;
        return 0;
    }
    case 5: return set_acl(p, key, val, &e->readers, &e->readers_text);
    case 6: return set_acl(p, key, val, &e->writers, &e->writers_text);
    case 7: return set_acl(p, key, val, &e->operators, &e->operators_text);
    case 8: {
        struct stat st;
        if (val[0] != '/')
            return perr(p, "post_refresh_script: '%s' is not accepted; accepted: an absolute path to a SQL file", val);
        if (stat(val, &st) < 0 || !S_ISREG(st.st_mode))
            return perr(p, "post_refresh_script: '%s' is not a readable regular file", val);
        if (!(e->post_refresh_script = strdup(val)))
            return perr(p, "out of memory");
        return 0;
    }
    case 9: return set_u32(p, key, val, 100000, &e->max_databases);
    case 10: return set_size(p, key, val, 0, &e->max_db_bytes);
    case 11: return set_u32(p, key, val, 100000, &e->ops_limit);
    case 12: return set_duration(p, key, val, 60, 365ULL * 86400, &e->ops_window_sec);
    case 13: return set_duration(p, key, val, 60, 7ULL * 86400, &e->snapshot_cadence_sec);
    case 14: return set_schedule(p, val, e);
    }
    return perr(p, "internal: key %d", k);
}

static const char *const daemon_keys[] = { "log_level", "export_cache_size", "segment_size", NULL };

static int daemon_set(struct parser *p, int k, const char *key, const char *val)
{
    switch (k) {
    case 0: {
        enum dbm_log_level l;
        if (dbm_log_parse_level(val, &l) < 0)
            return perr(p, "log_level: '%s' is not a level; accepted: error, warning, notice, info, debug", val);
        p->cfg->log_level = (int)l;
        return 0;
    }
    case 1: return set_size(p, key, val, 1 << 20, &p->cfg->export_cache_bytes);
    case 2: return set_size(p, key, val, 64 << 10, &p->cfg->segment_bytes);
    }
    return perr(p, "internal: key %d", k);
}

static int valid_env_name(const char *n)
{
    size_t len = strlen(n);
    if (len == 0 || len > DBM_ENV_NAME_MAX || !(islower((unsigned char)n[0]) || isdigit((unsigned char)n[0])))
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!(islower((unsigned char)n[i]) || isdigit((unsigned char)n[i]) || n[i] == '-' || n[i] == '_'))
            return 0;
    /* names the mount root uses itself */
    return strcmp(n, "status") != 0 && strcmp(n, "readme") != 0;
}

static int finish_env(struct parser *p)
{
    struct dbm_env_conf *e = p->env;
    if (!e)
        return 0;
    if (!(p->seen & 1u)) {
        p->line = e->line;
        return perr(p, "[env %s] has no 'type'; accepted: type = production, sandbox or devtest", e->name);
    }
    if (!(p->seen & 2u))
        e->retention_sec = (e->type == DBM_ENV_PRODUCTION ? 28 : 7) * 86400ULL;
    p->env = NULL;
    return 0;
}

static int open_section(struct parser *p, char *s)
{
    int rc = finish_env(p);
    if (rc < 0)
        return rc;
    p->seen = 0;
    p->in_daemon = 0;
    size_t n = strlen(s);
    if (n < 2 || s[n - 1] != ']')
        return perr(p, "section header '%s' is not closed; accepted: [daemon] or [env NAME]", s);
    s[n - 1] = '\0';
    char *name = dbm_strtrim(s + 1);
    if (strcmp(name, "daemon") == 0) {
        p->in_daemon = 1;
        return 0;
    }
    if (strncmp(name, "env", 3) != 0 || !isspace((unsigned char)name[3]))
        return perr(p, "unknown section [%s]; accepted: [daemon] or [env NAME]", name);
    char *en = dbm_strtrim(name + 4);
    if (!valid_env_name(en))
        return perr(p, "environment name '%s' is not accepted; accepted: 1 to %d of a-z, 0-9, '-', '_', starting "
                       "with a letter or digit, and not 'status' or 'readme'",
                    en, DBM_ENV_NAME_MAX);
    struct dbm_config *c = p->cfg;
    if (dbm_config_env(c, en))
        return perr(p, "environment '%s' is declared twice", en);
    if (c->nenvs >= DBM_MAX_ENVS)
        return perr(p, "too many environments; accepted: at most %d", DBM_MAX_ENVS);
    struct dbm_env_conf *tmp = realloc(c->envs, (c->nenvs + 1) * sizeof *tmp);
    if (!tmp)
        return perr(p, "out of memory");
    c->envs = tmp;
    struct dbm_env_conf *e = &c->envs[c->nenvs++];
    memset(e, 0, sizeof *e);
    dbm_strlcpy(e->name, en, sizeof e->name);
    e->owner = 0;
    e->group = 0;
    e->mode = 0755;
    e->ops_limit = 3;
    e->ops_window_sec = 86400;
    e->snapshot_cadence_sec = 3600;
    e->line = p->line;
    p->env = e;
    return 0;
}

static int lookup_key(const char *const *keys, const char *k)
{
    for (int i = 0; keys[i]; i++)
        if (strcmp(keys[i], k) == 0)
            return i;
    return -1;
}

static int parse_line(struct parser *p, char *line)
{
    char *s = dbm_strtrim(line);
    if (*s == '\0' || *s == '#' || *s == ';')
        return 0;
    if (*s == '[')
        return open_section(p, s);
    char *eq = strchr(s, '=');
    if (!eq)
        return perr(p, "'%s' is not a setting; accepted: 'key = value', a [section] header or a # comment", s);
    *eq = '\0';
    char *key = dbm_strtrim(s), *val = dbm_strtrim(eq + 1);
    if (!p->env && !p->in_daemon)
        return perr(p, "'%s' is outside any section; accepted: settings after [daemon] or [env NAME]", key);
    const char *const *keys = p->env ? env_keys : daemon_keys;
    int k = lookup_key(keys, key);
    if (k < 0)
        return perr(p, "unknown key '%s' in [%s%s]; accepted: %s", key, p->env ? "env " : "daemon",
                    p->env ? p->env->name : "", p->env ? ENV_KEYS : DAEMON_KEYS);
    if (p->seen & (1u << k))
        return perr(p, "'%s' is set twice in this section", key);
    p->seen |= 1u << k;
    if (*val == '\0')
        return perr(p, "'%s' has no value", key);
    return p->env ? env_set(p, k, key, val) : daemon_set(p, k, key, val);
}

int dbm_config_parse(const char *text, const char *fname, struct dbm_config **out, char *err, size_t errsz)
{
    struct dbm_config *c = calloc(1, sizeof *c);
    char *copy = strdup(text);
    struct parser p = { .fname = fname, .err = err, .errsz = errsz, .cfg = c };
    int rc = 0;
    if (!c || !copy || !(c->path = strdup(fname))) {
        rc = perr(&p, "out of memory");
        goto fail;
    }
    c->log_level = DBM_LOG_INFO;
    c->export_cache_bytes = 4ULL << 30;
    c->segment_bytes = 64ULL << 20;
    char *save = NULL, *cur = copy;
    /* strsep keeps empty lines, so line numbers stay exact */
    for (char *line; (line = strsep(&cur, "\n")) != NULL;) {
        (void)save;
        p.line++;
        if ((rc = parse_line(&p, line)) < 0)
            goto fail;
    }
    p.line = 0;
    if ((rc = finish_env(&p)) < 0)
        goto fail;
    if (c->nenvs == 0) {
        rc = perr(&p, "no environment is declared; accepted: at least one [env NAME] section with a type");
        goto fail;
    }
    free(copy);
    *out = c;
    return 0;
fail:
    free(copy);
    dbm_config_free(c);
    return rc;
}

int dbm_config_load(const char *path, struct dbm_config **out, char *err, size_t errsz)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errsz, "%s: cannot open: %s", path, strerror(e));
        return -e;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > (1 << 20)) {
        close(fd);
        snprintf(err, errsz, "%s: not a regular file of at most 1 MiB", path);
        return -EINVAL;
    }
    char *buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        close(fd);
        snprintf(err, errsz, "%s: out of memory", path);
        return -ENOMEM;
    }
    ssize_t n = read(fd, buf, (size_t)st.st_size);
    int e = errno;
    close(fd);
    if (n < 0) {
        free(buf);
        snprintf(err, errsz, "%s: read failed: %s", path, strerror(e));
        return -e;
    }
    buf[n] = '\0';
    if (memchr(buf, '\0', (size_t)n)) {
        free(buf);
        snprintf(err, errsz, "%s: contains a NUL byte; accepted: a text file", path);
        return -EINVAL;
    }
    int rc = dbm_config_parse(buf, path, out, err, errsz);
    free(buf);
    return rc;
}

static int in_list_u(const uid_t *v, size_t n, uid_t x)
{
    for (size_t i = 0; i < n; i++)
        if (v[i] == x)
            return 1;
    return 0;
}

static int acl_match(const struct dbm_acl *a, uid_t uid, gid_t gid, const gid_t *groups, size_t ngroups)
{
    if (a->everyone || in_list_u(a->uids, a->nuids, uid))
        return 1;
    for (size_t i = 0; i < a->ngids; i++) {
        if (a->gids[i] == gid)
            return 1;
        for (size_t j = 0; j < ngroups; j++)
            if (groups[j] == a->gids[i])
                return 1;
    }
    return 0;
}

int dbm_env_allows(const struct dbm_env_conf *e, uid_t uid, gid_t gid, const gid_t *groups, size_t ngroups,
                   int want)
{
    if (uid == 0)
        return 1;
    int have = 0;
    unsigned bits;
    if (uid == e->owner) {
        bits = (e->mode >> 6) & 7;
    } else {
        int ing = gid == e->group;
        for (size_t j = 0; j < ngroups && !ing; j++)
            ing = groups[j] == e->group;
        bits = ing ? (e->mode >> 3) & 7 : e->mode & 7;
    }
    /* a directory's r+x lets you read; w (with x) lets you write; the owner operates */
    if ((bits & 5) == 5)
        have |= DBM_ACCESS_READ;
    if ((bits & 3) == 3)
        have |= DBM_ACCESS_WRITE;
    if (uid == e->owner && (bits & 7) == 7)
        have |= DBM_ACCESS_OPERATE;
    if (acl_match(&e->readers, uid, gid, groups, ngroups))
        have |= DBM_ACCESS_READ;
    if (acl_match(&e->writers, uid, gid, groups, ngroups))
        have |= DBM_ACCESS_READ | DBM_ACCESS_WRITE;
    if (acl_match(&e->operators, uid, gid, groups, ngroups))
        have |= DBM_ACCESS_READ | DBM_ACCESS_WRITE | DBM_ACCESS_OPERATE;
    return (have & want) == want;
}
