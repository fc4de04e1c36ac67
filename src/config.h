/* config.h - the state directory's config file (dbmovefs.conf).
 *
 * INI-like: "[daemon]" and "[env NAME]" sections, "key = value" lines,
 * '#' or ';' comments. Every error names the file, the line and what would
 * be accepted. A parsed config is immutable: a reload builds a new one. */
#ifndef DBM_CONFIG_H
#define DBM_CONFIG_H
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define DBM_CONFIG_FILE "dbmovefs.conf"
#define DBM_ENV_NAME_MAX 32
#define DBM_MAX_ENVS 64

enum dbm_env_type { DBM_ENV_PRODUCTION = 0, DBM_ENV_SANDBOX, DBM_ENV_DEVTEST };
const char *dbm_env_type_name(enum dbm_env_type t);

/* Who may do what: users and groups (numeric after resolution). */
struct dbm_acl {
    uid_t *uids;
    size_t nuids;
    gid_t *gids;
    size_t ngids;
    int everyone;  /* '*' */
};

struct dbm_env_conf {
    char name[DBM_ENV_NAME_MAX + 1];
    enum dbm_env_type type;
    uint64_t retention_sec;       /* history kept (28d production, 7d otherwise) */
    uid_t owner;
    gid_t group;
    mode_t mode;                  /* of the environment directory; files derive from it */
    struct dbm_acl readers, writers, operators;
    char *readers_text, *writers_text, *operators_text; /* as written, for info */
    char *post_refresh_script;    /* absolute path or NULL */
    uint32_t max_databases;       /* 0: unlimited */
    uint64_t max_db_bytes;        /* 0: unlimited */
    uint32_t ops_limit;           /* operations started per ops_window */
    uint64_t ops_window_sec;
    uint64_t snapshot_cadence_sec; /* spacing of listed restore points */
    uint32_t export_at[24];       /* daily export times, seconds after 00:00 UTC, sorted */
    size_t nexport_at;
    char *export_schedule_text;
    int line;                     /* where the section starts */
};

struct dbm_config {
    char *path;
    int log_level;                /* enum dbm_log_level */
    uint64_t export_cache_bytes;
    uint64_t segment_bytes;       /* page store segment size */
    struct dbm_env_conf *envs;
    size_t nenvs;
};

/* Parses text (named fname in messages). On error returns -EINVAL and a
 * one-line message "FILE:LINE: problem; accepted: ..." in err. *out is a
 * new object (dbm_config_free). */
int dbm_config_parse(const char *text, const char *fname, struct dbm_config **out, char *err, size_t errsz);
/* Reads and parses path. -errno (and err) on failure. */
int dbm_config_load(const char *path, struct dbm_config **out, char *err, size_t errsz);
void dbm_config_free(struct dbm_config *c); /* accepts NULL */

const struct dbm_env_conf *dbm_config_env(const struct dbm_config *c, const char *name);

/* The commented example config --init writes (three environments). */
extern const char dbm_config_default_text[];

/* What a caller may do in an environment. */
enum dbm_access { DBM_ACCESS_READ = 1, DBM_ACCESS_WRITE = 2, DBM_ACCESS_OPERATE = 4 };
/* 1 if uid (with its groups) has every right in want: root always; the
 * owner and mode bits as for a directory (group and other r/w bits); the
 * lists add readers (read), writers (read, write), operators (all). */
int dbm_env_allows(const struct dbm_env_conf *e, uid_t uid, gid_t gid, const gid_t *groups, size_t ngroups,
                   int want);

#endif
