/* dbm-history - reads the recorded history of a stopped dbmovefs state
 * directory: lists databases, and writes a database image as of a
 * transaction or an instant. Takes the state directory's lock, so it never
 * runs beside the daemon.
 *
 *   dbm-history STATE_DIR list
 *   dbm-history STATE_DIR image ENV NAME OUT [TXID | INSTANT]
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "catalog.h"
#include "config.h"
#include "log.h"
#include "pagestore.h"
#include "sysio.h"
#include "timefmt.h"

static int usage(void)
{
    fprintf(stderr, "usage: dbm-history STATE_DIR list\n"
                    "       dbm-history STATE_DIR image ENV NAME OUT [TXID | INSTANT]\n");
    return 2;
}

struct listctx {
    struct dbm_store *store;
};

static int print_db(const struct dbm_cat_db *db, void *arg)
{
    struct listctx *c = arg;
    struct dbm_timeline *t;
    struct dbm_tl_stat st;
    char a[40] = "-", b[40] = "-";
    if (dbm_tl_open(c->store, db->timeline, &t) < 0 || dbm_tl_stat(t, &st) < 0) {
        printf("  %s timeline=%llx (unreadable)\n", db->name, (unsigned long long)db->timeline);
        return 0;
    }
    if (st.last_txid) {
        dbm_ts_rfc3339(st.first_ns, a, sizeof a);
        dbm_ts_rfc3339(st.last_ns, b, sizeof b);
    }
    printf("  %s timeline=%llx page_size=%u pages=%u commits=%llu txids=%llu..%llu from=%s to=%s\n", db->name,
           (unsigned long long)db->timeline, st.page_size, st.db_pages, (unsigned long long)st.commits,
           (unsigned long long)st.first_txid, (unsigned long long)st.last_txid, a, b);
    dbm_tl_close(t);
    return 0;
}

static int write_image(struct dbm_timeline *t, uint64_t txid, const char *out)
{
    struct dbm_txinfo ti;
    int rc = dbm_tl_txinfo(t, txid, &ti);
    if (rc < 0) {
        fprintf(stderr, "dbm-history: transaction %llu is not in the history: %s\n", (unsigned long long)txid,
                strerror(-rc));
        return 1;
    }
    struct dbm_tl_stat st;
    dbm_tl_stat(t, &st);
    int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        fprintf(stderr, "dbm-history: %s: %s\n", out, strerror(errno));
        return 1;
    }
    char *page = malloc(st.page_size);
    for (uint32_t p = 1; page && p <= ti.db_pages; p++) {
        if ((rc = dbm_tl_read_page(t, txid, p, page)) < 0) {
            fprintf(stderr, "dbm-history: page %u at transaction %llu: %s\n", p, (unsigned long long)txid,
                    strerror(-rc));
            break;
        }
        if ((rc = dbm_pwrite_all(fd, page, st.page_size, (off_t)(p - 1) * st.page_size)) < 0) {
            fprintf(stderr, "dbm-history: %s: %s\n", out, strerror(-rc));
            break;
        }
    }
    free(page);
    if (close(fd) < 0 && rc >= 0)
        rc = -errno;
    if (rc < 0) {
        unlink(out);
        return 1;
    }
    printf("txid=%llu commit=%llu pages=%u\n", (unsigned long long)txid, (unsigned long long)ti.commit_ns,
           ti.db_pages);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return usage();
    dbm_log_setup(0, DBM_LOG_WARN);
    char path[4096];
    snprintf(path, sizeof path, "%s/lock", argv[1]);
    int lfd = open(path, O_RDWR);
    if (lfd < 0 || flock(lfd, LOCK_EX | LOCK_NB) < 0) {
        fprintf(stderr, "dbm-history: %s is in use (stop the daemon first) or not a state directory\n", argv[1]);
        return 1;
    }
    struct dbm_catalog *cat;
    struct dbm_store *store;
    snprintf(path, sizeof path, "%s/%s", argv[1], DBM_CATALOG_FILE);
    if (dbm_catalog_open(path, &cat) < 0)
        return 1;
    snprintf(path, sizeof path, "%s/store", argv[1]);
    if (dbm_store_open(path, NULL, &store) < 0)
        return 1;
    int ret = 0;
    if (strcmp(argv[2], "list") == 0) {
        struct dbm_config *cfg;
        char err[1024];
        snprintf(path, sizeof path, "%s/%s", argv[1], DBM_CONFIG_FILE);
        if (dbm_config_load(path, &cfg, err, sizeof err) < 0) {
            fprintf(stderr, "dbm-history: %s\n", err);
            return 1;
        }
        struct listctx c = { store };
        for (size_t i = 0; i < cfg->nenvs; i++) {
            printf("%s:\n", cfg->envs[i].name);
            dbm_catalog_db_list(cat, cfg->envs[i].name, 0, print_db, &c);
        }
        dbm_config_free(cfg);
    } else if (strcmp(argv[2], "image") == 0 && (argc == 6 || argc == 7)) {
        struct dbm_cat_db db;
        struct dbm_timeline *t;
        if (dbm_catalog_db_live(cat, argv[3], argv[4], &db) < 0) {
            fprintf(stderr, "dbm-history: no live database %s in %s\n", argv[4], argv[3]);
            return 1;
        }
        if (dbm_tl_open(store, db.timeline, &t) < 0)
            return 1;
        struct dbm_tl_stat st;
        dbm_tl_stat(t, &st);
        uint64_t txid = st.last_txid, ns;
        if (argc == 7) {
            char *end;
            txid = strtoull(argv[6], &end, 10);
            if (*end) {
                struct dbm_txinfo ti;
                const char *why;
                if (dbm_ts_parse(argv[6], &ns, &why) < 0) {
                    fprintf(stderr, "dbm-history: %s: %s\n", argv[6], why);
                    return 1;
                }
                if (dbm_tl_txid_at(t, ns, &ti) < 0) {
                    fprintf(stderr, "dbm-history: nothing committed at or before %s\n", argv[6]);
                    return 1;
                }
                txid = ti.txid;
            }
        }
        ret = write_image(t, txid, argv[5]);
        dbm_tl_close(t);
    } else {
        ret = usage();
    }
    dbm_store_close(store);
    dbm_catalog_close(cat);
    return ret;
}
