/* snapshot.h - an environment as of an instant: the databases that existed
 * then, each as of the last transaction committed at or before it.
 * Reference-counted and immutable once resolved. */
#ifndef DBM_SNAPSHOT_H
#define DBM_SNAPSHOT_H
#include <stddef.h>
#include <stdint.h>

#include "dbimage.h"

struct dbm_catalog;
struct dbm_store;
struct dbm_sbuf;

struct dbm_snapshot {
    int refs;                   /* atomic */
    char env[64];
    char env_type[16];
    uint64_t instant_ns;        /* the instant asked for */
    uint64_t canonical_ns;      /* latest commit among the images (the state's own instant) */
    size_t n;
    struct dbm_dbimage *dbs;    /* sorted by name */
    struct snap_src *src;       /* private: one timeline reference per image */
};

/* Resolves env at instant_ns. Returns a new reference. 0 or -errno. */
int dbm_snapshot_resolve(struct dbm_catalog *cat, struct dbm_store *store, const char *env, const char *env_type,
                         uint64_t instant_ns, struct dbm_snapshot **out);
void dbm_snapshot_get(struct dbm_snapshot *s);
void dbm_snapshot_put(struct dbm_snapshot *s); /* accepts NULL */
/* Index of the image named name, or -1. */
int dbm_snapshot_find(const struct dbm_snapshot *s, const char *name);
/* 1 if a and b hold the same images at the same transactions. */
int dbm_snapshot_same(const struct dbm_snapshot *a, const struct dbm_snapshot *b);

/* The restore window of env: earliest_ns is the oldest instant any of its
 * databases (live or removed within retention) can be read at, bounded by
 * now - retention; 0 if there is no history. */
int dbm_snapshot_window(struct dbm_catalog *cat, struct dbm_store *store, const char *env, uint64_t retention_sec,
                        uint64_t now_ns, uint64_t *earliest_ns);

#endif
