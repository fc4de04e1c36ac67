/* lockmgr.c - see lockmgr.h. A flat array: SQLite holds a handful of ranges
 * per file, so linear scans beat any tree here. */
#include "lockmgr.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

#include "strutil.h"

void dbm_locktab_free(struct dbm_locktab *t)
{
    free(t->v);
    memset(t, 0, sizeof *t);
}

static int overlaps(const struct dbm_lock *l, uint64_t start, uint64_t end)
{
    return l->start <= end && start <= l->end;
}

int dbm_lock_test(const struct dbm_locktab *t, uint64_t owner, short type, uint64_t start, uint64_t end,
                  struct dbm_lock *conflict)
{
    for (size_t i = 0; i < t->n; i++) {
        const struct dbm_lock *l = &t->v[i];
        if (l->owner == owner || !overlaps(l, start, end))
            continue;
        if (type == F_WRLCK || l->type == F_WRLCK) {
            if (conflict)
                *conflict = *l;
            return 1;
        }
    }
    return 0;
}

static int push(struct dbm_locktab *t, const struct dbm_lock *l)
{
    if (dbm_grow((void **)&t->v, &t->cap, t->n + 1, sizeof *t->v) < 0)
        return -ENOMEM;
    t->v[t->n++] = *l;
    return 0;
}

int dbm_lock_set(struct dbm_locktab *t, uint64_t owner, pid_t pid, short type, uint64_t start, uint64_t end)
{
    if (start > end)
        return -EINVAL;
    if (type != F_UNLCK && dbm_lock_test(t, owner, type, start, end, NULL))
        return -EAGAIN;
    /* Rebuild into a new array: cut [start, end] out of this owner's ranges
     * (a range may split in two), then add the new one. All or nothing. */
    struct dbm_lock *nv = malloc((t->n * 2 + 1) * sizeof *nv);
    if (!nv)
        return -ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < t->n; i++) {
        const struct dbm_lock *l = &t->v[i];
        if (l->owner != owner || !overlaps(l, start, end)) {
            nv[k++] = *l;
            continue;
        }
        if (l->start < start) {
            nv[k] = *l;
            nv[k++].end = start - 1;
        }
        if (l->end > end) {
            nv[k] = *l;
            nv[k++].start = end + 1;
        }
    }
    free(t->v);
    t->v = nv;
    t->n = k;
    t->cap = k; /* push() grows it */
    if (type == F_UNLCK)
        return 0;
    /* merge with adjacent ranges of the same owner and type */
    struct dbm_lock nl = { .owner = owner, .pid = pid, .type = type, .start = start, .end = end };
    for (size_t i = 0; i < t->n;) {
        struct dbm_lock *l = &t->v[i];
        if (l->owner == owner && l->type == type &&
            ((l->end != DBM_LOCK_EOF && l->end + 1 == nl.start) || (nl.end != DBM_LOCK_EOF && nl.end + 1 == l->start))) {
            if (l->start < nl.start)
                nl.start = l->start;
            if (l->end > nl.end)
                nl.end = l->end;
            t->v[i] = t->v[--t->n];
            continue;
        }
        i++;
    }
    return push(t, &nl);
}

size_t dbm_lock_release_owner(struct dbm_locktab *t, uint64_t owner)
{
    size_t dropped = 0;
    for (size_t i = 0; i < t->n;) {
        if (t->v[i].owner == owner) {
            t->v[i] = t->v[--t->n];
            dropped++;
        } else {
            i++;
        }
    }
    return dropped;
}

int dbm_lock_owner_holds(const struct dbm_locktab *t, uint64_t owner, uint64_t start, uint64_t end)
{
    for (size_t i = 0; i < t->n; i++)
        if (t->v[i].owner == owner && t->v[i].start <= end && start <= t->v[i].end)
            return 1;
    return 0;
}

int dbm_lock_held_at(const struct dbm_locktab *t, short type, uint64_t off)
{
    for (size_t i = 0; i < t->n; i++)
        if (t->v[i].start <= off && off <= t->v[i].end && (type == F_RDLCK || t->v[i].type == F_WRLCK))
            return 1;
    return 0;
}
