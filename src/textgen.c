/* textgen.c - see textgen.h. Field names are an interface: fs-layout.md
 * documents each; add fields, never rename them. */
#include "textgen.h"

#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "catalog.h"
#include "config.h"
#include "daemon.h"
#include "reserve.h"
#include "dbm_config.h"
#include "exports.h"
#include "fusepass.h"
#include "fusewb.h"
#include "fuseuring.h"
#include "livedb.h"
#include "snapshot.h"
#include "strutil.h"
#include "timefmt.h"

void dbm_text_readme(struct dbm_daemon *d, struct dbm_sbuf *b)
{
    (void)d;
    dbm_sbuf_printf(b,
        "dbmovefs %s - database environments as directories\n"
        "\n"
        "  status              daemon: version, environments, operations\n"
        "  <env>/info          an environment's settings and databases\n"
        "  <env>/status        its state and current operation, fresh on every read\n"
        "  <env>/db/<name>.db  live SQLite databases: open them with sqlite3 or any\n"
        "                      program linked with libsqlite3; every committed\n"
        "                      transaction is recorded by the backup engine\n"
        "  <env>/snapshots/<instant>/db/<name>.db     read-only view at that instant\n"
        "  <env>/snapshots/<instant>/export.bacpac    zstd tar export (+ .sha256)\n"
        "      <instant>: latest, 20261120T103200Z or 2026-11-20T10:32:00Z\n"
        "\n"
        "Journal modes: DELETE, TRUNCATE, PERSIST, WAL (MEMORY and OFF are refused).\n"
        "Text files hold one 'key: value' per line. Full reference: fs-layout.md.\n",
        DBM_VERSION);
}

static void ts_kv(struct dbm_sbuf *b, const char *key, uint64_t ns)
{
    char ts[40];
    dbm_ts_rfc3339(ns, ts, sizeof ts);
    dbm_sbuf_kv(b, key, "%s", ts);
}

void dbm_text_root_status(struct dbm_daemon *d, struct dbm_sbuf *b)
{
    uint64_t now = dbm_now_ns();
    dbm_sbuf_kv(b, "version", "%s", DBM_VERSION);
    dbm_sbuf_kv(b, "pid", "%ld", (long)getpid());
    dbm_sbuf_kv(b, "state_dir", "%s", d->state_dir);
    ts_kv(b, "started", d->start_ns);
    dbm_sbuf_kv(b, "uptime_sec", "%llu", (unsigned long long)((now - d->start_ns) / DBM_NS_PER_SEC));
    dbm_uring_report(d->uring, b);
    dbm_fusepass_report(d->pass, b);
    dbm_fusewb_report(d->wb, b);
    dbm_reserve_report(d->reserve, b); /* NULL without the writeback cache */
    pthread_rwlock_rdlock(&d->cfg_lock);
    dbm_sbuf_kv(b, "config", "%s", d->cfg->path);
    dbm_sbuf_kv(b, "config_reloads", "%llu", (unsigned long long)d->reloads);
    dbm_sbuf_kv(b, "config_reload_failures", "%llu", (unsigned long long)d->reload_failures);
    dbm_sbuf_kv(b, "environments", "%zu", d->cfg->nenvs);
    for (int i = 0; i < d->nenvs; i++) {
        struct dbm_env *e = d->envs[i];
        struct dbm_cat_env ce;
        if (!e->conf)
            continue;
        if (dbm_catalog_env_get(d->cat, e->name, &ce) < 0)
            dbm_strlcpy(ce.state, "unknown", sizeof ce.state);
        char key[64];
        snprintf(key, sizeof key, "env.%s", e->name);
        dbm_sbuf_kv(b, key, "%s %s databases=%zu", dbm_env_type_name(e->conf->type), ce.state,
                    dbm_livedb_count(e->live));
    }
    pthread_rwlock_unlock(&d->cfg_lock);
    dbm_sbuf_kv(b, "operations_running", "0");
    dbm_sbuf_kv(b, "operations_queued", "0");
    dbm_exports_report(d->exports, b);
}

static void user_kv(struct dbm_sbuf *b, const char *key, uid_t uid)
{
    struct passwd pw, *res = NULL;
    char buf[1024];
    if (getpwuid_r(uid, &pw, buf, sizeof buf, &res) == 0 && res)
        dbm_sbuf_kv(b, key, "%s", res->pw_name);
    else
        dbm_sbuf_kv(b, key, "%u", (unsigned)uid);
}

static void group_kv(struct dbm_sbuf *b, const char *key, gid_t gid)
{
    struct group gr, *res = NULL;
    char buf[4096];
    if (getgrgid_r(gid, &gr, buf, sizeof buf, &res) == 0 && res)
        dbm_sbuf_kv(b, key, "%s", res->gr_name);
    else
        dbm_sbuf_kv(b, key, "%u", (unsigned)gid);
}

void dbm_text_env_info(struct dbm_daemon *d, struct dbm_env *e, struct dbm_sbuf *b)
{
    const struct dbm_env_conf *c = e->conf;
    struct dbm_cat_env ce;
    char dur[24];
    if (dbm_catalog_env_get(d->cat, e->name, &ce) < 0) {
        dbm_strlcpy(ce.state, "unknown", sizeof ce.state);
        ce.chain_start_ns = e->created_ns;
    }
    dbm_sbuf_kv(b, "name", "%s", e->name);
    dbm_sbuf_kv(b, "type", "%s", dbm_env_type_name(c->type));
    dbm_sbuf_kv(b, "state", "%s", ce.state);
    dbm_duration_format(c->retention_sec, dur, sizeof dur);
    dbm_sbuf_kv(b, "retention", "%s", dur);
    dbm_sbuf_kv(b, "retention_sec", "%llu", (unsigned long long)c->retention_sec);
    ts_kv(b, "created", e->created_ns);
    ts_kv(b, "restore_chain_start", ce.chain_start_ns);
    uint64_t earliest = 0;
    if (dbm_snapshot_window(d->cat, d->store, e->name, c->retention_sec, dbm_now_ns(), &earliest) == 0 && earliest)
        ts_kv(b, "earliest_restore_point", earliest);
    else
        dbm_sbuf_kv(b, "earliest_restore_point", "-");
    user_kv(b, "owner", c->owner);
    group_kv(b, "group", c->group);
    dbm_sbuf_kv(b, "mode", "%04o", (unsigned)c->mode);
    dbm_sbuf_kv(b, "readers", "%s", c->readers_text ? c->readers_text : "-");
    dbm_sbuf_kv(b, "writers", "%s", c->writers_text ? c->writers_text : "-");
    dbm_sbuf_kv(b, "operators", "%s", c->operators_text ? c->operators_text : "-");
    dbm_sbuf_kv(b, "post_refresh_script", "%s", c->post_refresh_script ? c->post_refresh_script : "-");
    dbm_sbuf_kv(b, "max_databases", "%u", c->max_databases);
    dbm_sbuf_kv(b, "max_db_size", "%llu", (unsigned long long)c->max_db_bytes);
    dbm_sbuf_kv(b, "ops_limit", "%u", c->ops_limit);
    dbm_duration_format(c->ops_window_sec, dur, sizeof dur);
    dbm_sbuf_kv(b, "ops_window", "%s", dur);
    dbm_duration_format(c->snapshot_cadence_sec, dur, sizeof dur);
    dbm_sbuf_kv(b, "snapshot_cadence", "%s", dur);
    dbm_sbuf_kv(b, "export_schedule", "%s", c->export_schedule_text ? c->export_schedule_text : "-");
    dbm_sbuf_kv(b, "databases", "%zu", dbm_livedb_count(e->live));
    dbm_livedb_report(e->live, b);
}

void dbm_text_env_status(struct dbm_daemon *d, struct dbm_env *e, struct dbm_sbuf *b)
{
    struct dbm_cat_env ce;
    if (dbm_catalog_env_get(d->cat, e->name, &ce) < 0)
        dbm_strlcpy(ce.state, "unknown", sizeof ce.state);
    dbm_sbuf_kv(b, "name", "%s", e->name);
    dbm_sbuf_kv(b, "state", "%s", ce.state);
    ts_kv(b, "time", dbm_now_ns());
    dbm_sbuf_kv(b, "operation", "none");
    dbm_sbuf_kv(b, "phase", "idle");
    dbm_sbuf_kv(b, "progress", "-");
    dbm_sbuf_kv(b, "databases", "%zu", dbm_livedb_count(e->live));
    dbm_livedb_report(e->live, b);
}
