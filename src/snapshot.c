/* snapshot.c - see snapshot.h. */
#include "snapshot.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "catalog.h"
#include "log.h"
#include "pagestore.h"
#include "strutil.h"

struct snap_src {
    struct dbm_timeline *tl;
    uint64_t txid;
};

static int src_read(void *ctx, uint32_t pgno, void *buf)
{
    struct snap_src *s = ctx;
    int rc = dbm_tl_read_page(s->tl, s->txid, pgno, buf);
    return rc < 0 ? rc : 0;
}

struct collect {
    struct dbm_snapshot *s;
    struct dbm_store *store;
    uint64_t at;
    size_t cap;
    int rc;
};

static int collect_db(const struct dbm_cat_db *db, void *arg)
{
    struct collect *c = arg;
    struct dbm_snapshot *s = c->s;
    struct dbm_timeline *tl;
    int rc = dbm_tl_open(c->store, db->timeline, &tl);
    if (rc < 0) {
        dbm_err("snapshot of %s: cannot open the history of %s (timeline %llx): %s", s->env, db->name,
                (unsigned long long)db->timeline, strerror(-rc));
        return c->rc = rc;
    }
    struct dbm_txinfo ti;
    if ((rc = dbm_tl_txid_at(tl, c->at, &ti)) < 0) {
        dbm_tl_close(tl); /* nothing committed yet at that instant: absent */
        return 0;
    }
    if (s->n > 0 && strcmp(s->dbs[s->n - 1].name, db->name) == 0) {
        dbm_tl_close(tl); /* two records of one name: the list puts the newest first */
        return 0;
    }
    if (s->n == c->cap) {
        size_t nc = c->cap ? c->cap * 2 : 8;
        struct dbm_dbimage *d = realloc(s->dbs, nc * sizeof *d);
        struct snap_src *r = d ? realloc(s->src, nc * sizeof *r) : NULL;
        if (d)
            s->dbs = d;
        if (!d || !r) {
            dbm_tl_close(tl);
            return c->rc = -ENOMEM;
        }
        s->src = r;
        c->cap = nc;
    }
    struct dbm_tl_stat st;
    dbm_tl_stat(tl, &st);
    struct dbm_dbimage *img = &s->dbs[s->n];
    memset(img, 0, sizeof *img);
    dbm_strlcpy(img->name, db->name, sizeof img->name);
    img->page_size = st.page_size;
    img->db_pages = ti.db_pages;
    img->txid = ti.txid;
    img->commit_ns = ti.commit_ns;
    img->timeline = db->timeline;
    img->read_page = src_read;
    s->src[s->n].tl = tl;
    s->src[s->n].txid = ti.txid;
    s->n++;
    if (ti.commit_ns > s->canonical_ns)
        s->canonical_ns = ti.commit_ns;
    return 0;
}

int dbm_snapshot_resolve(struct dbm_catalog *cat, struct dbm_store *store, const char *env, const char *env_type,
                         uint64_t instant_ns, struct dbm_snapshot **out)
{
    struct dbm_snapshot *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->refs = 1;
    dbm_strlcpy(s->env, env, sizeof s->env);
    dbm_strlcpy(s->env_type, env_type, sizeof s->env_type);
    s->instant_ns = instant_ns;
    struct collect c = { .s = s, .store = store, .at = instant_ns };
    int rc = dbm_catalog_db_list(cat, env, instant_ns, collect_db, &c);
    if (rc == 0)
        rc = c.rc;
    if (rc < 0) {
        dbm_snapshot_put(s);
        return rc;
    }
    /* ctx pointers are set once the arrays stop moving */
    for (size_t i = 0; i < s->n; i++)
        s->dbs[i].ctx = &s->src[i];
    *out = s;
    return 0;
}

void dbm_snapshot_get(struct dbm_snapshot *s) { __atomic_add_fetch(&s->refs, 1, __ATOMIC_RELAXED); }

void dbm_snapshot_put(struct dbm_snapshot *s)
{
    if (!s || __atomic_sub_fetch(&s->refs, 1, __ATOMIC_ACQ_REL) > 0)
        return;
    for (size_t i = 0; i < s->n; i++)
        dbm_tl_close(s->src[i].tl);
    free(s->src);
    free(s->dbs);
    free(s);
}

int dbm_snapshot_find(const struct dbm_snapshot *s, const char *name)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->dbs[i].name, name) == 0)
            return (int)i;
    return -1;
}

int dbm_snapshot_same(const struct dbm_snapshot *a, const struct dbm_snapshot *b)
{
    if (a->n != b->n || strcmp(a->env, b->env) != 0)
        return 0;
    for (size_t i = 0; i < a->n; i++)
        if (a->dbs[i].timeline != b->dbs[i].timeline || a->dbs[i].txid != b->dbs[i].txid ||
            strcmp(a->dbs[i].name, b->dbs[i].name) != 0)
            return 0;
    return 1;
}

struct window {
    struct dbm_store *store;
    uint64_t earliest;
};

static int window_db(const struct dbm_cat_db *db, void *arg)
{
    struct window *w = arg;
    struct dbm_timeline *tl;
    struct dbm_tl_stat st;
    if (dbm_tl_open(w->store, db->timeline, &tl) < 0)
        return 0;
    if (dbm_tl_stat(tl, &st) == 0 && st.last_txid && (w->earliest == 0 || st.first_ns < w->earliest))
        w->earliest = st.first_ns;
    dbm_tl_close(tl);
    return 0;
}

int dbm_snapshot_window(struct dbm_catalog *cat, struct dbm_store *store, const char *env, uint64_t retention_sec,
                        uint64_t now_ns, uint64_t *earliest_ns)
{
    struct window w = { .store = store };
    uint64_t horizon = now_ns > retention_sec * 1000000000ULL ? now_ns - retention_sec * 1000000000ULL : 0;
    /* every database that existed at some point of the window */
    int rc = dbm_catalog_db_list_since(cat, env, horizon, window_db, &w);
    if (rc < 0)
        return rc;
    *earliest_ns = w.earliest && w.earliest < horizon ? horizon : w.earliest;
    return 0;
}
