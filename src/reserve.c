/* reserve.c - see reserve.h.
 *
 * The file's size is what it holds: it grows a MiB at a time with
 * fallocate (so a full disk leaves it at a whole MiB, with no blocks past
 * its end) and shrinks with ftruncate, which frees the blocks at once. */
#include "reserve.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "strutil.h"
#include "sysio.h"

#define STEP (1ull << 20)

struct dbm_reserve {
    pthread_mutex_t mu;   /* protects what follows; leaf */
    int fd;
    uint64_t target, have;
};

int dbm_reserve_open(int dirfd, const char *name, struct dbm_reserve **out)
{
    struct dbm_reserve *r = calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    pthread_mutex_init(&r->mu, NULL);
    r->fd = openat(dirfd, name, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    struct stat st;
    if (r->fd < 0 || fstat(r->fd, &st) < 0) {
        int e = errno;
        dbm_reserve_close(r);
        return -e;
    }
    r->have = (uint64_t)st.st_size;
    *out = r;
    return 0;
}

void dbm_reserve_close(struct dbm_reserve *r)
{
    if (!r)
        return;
    if (r->fd >= 0)
        close(r->fd);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

/* Allocates [off, off + STEP) of the file: fallocate, or zeros written
 * where the file system has no fallocate. 0 or -errno. */
static int alloc_step(int fd, uint64_t off)
{
    if (fallocate(fd, 0, (off_t)off, (off_t)STEP) == 0)
        return 0;
    if (errno != EOPNOTSUPP)
        return -errno;
    static const char zeros[64 << 10];
    for (uint64_t done = 0; done < STEP; done += sizeof zeros) {
        int rc = dbm_pwrite_all(fd, zeros, sizeof zeros, (off_t)(off + done));
        if (rc < 0) {
            (void)!ftruncate(fd, (off_t)off); /* nothing half-held */
            return rc;
        }
    }
    return 0;
}

/* Grows towards the target a MiB at a time. r->mu held. */
static int grow(struct dbm_reserve *r)
{
    while (r->have < r->target) {
        int rc = alloc_step(r->fd, r->have);
        if (rc < 0)
            return rc;
        r->have += STEP;
    }
    return 0;
}

int dbm_reserve_set_target(struct dbm_reserve *r, uint64_t bytes)
{
    pthread_mutex_lock(&r->mu);
    r->target = (bytes + STEP - 1) / STEP * STEP;
    int rc = 0;
    if (r->have > r->target) {
        if (ftruncate(r->fd, (off_t)r->target) < 0)
            rc = -errno;
        else
            r->have = r->target;
    }
    if (rc == 0)
        rc = grow(r);
    pthread_mutex_unlock(&r->mu);
    return rc;
}

int dbm_reserve_release(struct dbm_reserve *r, uint64_t n)
{
    if (!r)
        return 0;
    pthread_mutex_lock(&r->mu);
    uint64_t step = (n + STEP - 1) / STEP * STEP;
    uint64_t to = r->have > step ? r->have - step : 0;
    int whole = r->have >= r->target;
    int freed = r->have > 0 && ftruncate(r->fd, (off_t)to) == 0;
    if (freed)
        r->have = to;
    pthread_mutex_unlock(&r->mu);
    /* once as it starts to drain, once as it runs out: not at every write */
    if (freed && whole)
        dbm_warn("the state directory's file system is full: the space reserve goes to writes SQLite already counted "
                 "done; new write transactions wait until it is whole again");
    if (freed && to == 0)
        dbm_warn("the space reserve is used up: writes SQLite counted done fail from now on until there is room");
    return freed;
}

int dbm_reserve_refill(struct dbm_reserve *r)
{
    if (!r)
        return 0;
    pthread_mutex_lock(&r->mu);
    int rc = grow(r); /* no system call when whole */
    pthread_mutex_unlock(&r->mu);
    return rc;
}

void dbm_reserve_report(struct dbm_reserve *r, struct dbm_sbuf *b)
{
    if (!r) {
        dbm_sbuf_kv(b, "space_reserve", "off");
        return;
    }
    pthread_mutex_lock(&r->mu);
    uint64_t have = r->have, target = r->target;
    pthread_mutex_unlock(&r->mu);
    dbm_sbuf_kv(b, "space_reserve", "%llu of %llu bytes", (unsigned long long)have, (unsigned long long)target);
}
