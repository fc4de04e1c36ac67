/* cpuguard.c - see cpuguard.h.
 *
 * /proc/pressure/cpu's first line is "some avg10=.. avg60=.. avg300=..
 * total=US": total counts the microseconds in which at least one runnable
 * task waited for a CPU. The kernel's own triggers (poll() on a threshold)
 * would spare the periodic reads, but without CAP_SYS_RESOURCE it takes only
 * 2 s windows, and on the reference machine (Linux 6.18) such a trigger
 * fired on an idle system (784 us of waiting against a 400 ms threshold). So
 * the guard reads the total every 100 ms (a few microseconds each).
 *
 * Ownership: the guard owns its thread and files; fn is called with no lock
 * of the guard held. */
#include "cpuguard.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "log.h"
#include "timefmt.h"

#define PSI_PATH "/proc/pressure/cpu"
#define SAMPLE_MS 100
#define WINDOW 5          /* samples: contended once tasks waited ... */
#define CONTENDED_PERCENT 20 /* ... this share of the last WINDOW samples' time */
#define CALM_PERCENT 10   /* calm again after CALM_SAMPLES samples under this */
#define CALM_SAMPLES 20   /* (2 s) */

struct dbm_cpuguard {
    dbm_cpuguard_fn fn;
    void *arg;
    char path[256];
    int stat;      /* read for totals */
    int stopfd;    /* eventfd: stop */
    pthread_t th;
};

/* The "some" total in microseconds, or -errno. */
static int64_t total_us(int fd)
{
    char buf[256];
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    if (n < 0)
        return -errno;
    buf[n] = 0;
    const char *t = strstr(buf, "total=");
    if (strncmp(buf, "some ", 5) != 0 || !t)
        return -EINVAL;
    return (int64_t)strtoull(t + 6, NULL, 10);
}

/* Waits ms for a stop: 1 if asked to, 0 if the time passed. */
static int stopped(struct dbm_cpuguard *g, int ms)
{
    for (;;) {
        struct pollfd p = { .fd = g->stopfd, .events = POLLIN };
        int n = poll(&p, 1, ms);
        if (n < 0 && errno == EINTR)
            continue;
        return n != 0;
    }
}

static void *guard_main(void *arg)
{
    struct dbm_cpuguard *g = arg;
    uint64_t wait[WINDOW] = { 0 }, span[WINDOW] = { 0 };
    unsigned at = 0;
    int contended = 0, quiet = 0;
    int64_t prev = total_us(g->stat);
    uint64_t prev_t = dbm_mono_ns() / 1000;
    while (!stopped(g, SAMPLE_MS)) {
        int64_t cur = total_us(g->stat);
        uint64_t t = dbm_mono_ns() / 1000;
        /* an unreadable total counts as all waiting: the safe side */
        uint64_t dt = t - prev_t, dw = prev >= 0 && cur >= prev ? (uint64_t)(cur - prev) : dt;
        prev = cur;
        prev_t = t;
        wait[at] = dw;
        span[at] = dt;
        at = (at + 1) % WINDOW;
        if (!contended) {
            uint64_t sw = 0, st = 0;
            for (unsigned i = 0; i < WINDOW; i++)
                sw += wait[i], st += span[i];
            if (sw * 100 > st * CONTENDED_PERCENT) {
                contended = 1;
                quiet = 0;
                g->fn(g->arg, 1);
            }
        } else if (dw * 100 >= dt * CALM_PERCENT) {
            quiet = 0;
        } else if (++quiet >= CALM_SAMPLES) {
            contended = 0;
            memset(wait, 0, sizeof wait);
            memset(span, 0, sizeof span);
            g->fn(g->arg, 0);
        }
    }
    return NULL;
}

struct dbm_cpuguard *dbm_cpuguard_start(dbm_cpuguard_fn fn, void *arg, char *why, size_t whylen)
{
    struct dbm_cpuguard *g = calloc(1, sizeof *g);
    if (!g) {
        snprintf(why, whylen, "out of memory");
        return NULL;
    }
    g->fn = fn;
    g->arg = arg;
    g->stat = g->stopfd = -1;
    const char *env = getenv("DBMOVEFS_PSI_CPU");
    snprintf(g->path, sizeof g->path, "%s", env && *env ? env : PSI_PATH);
    int64_t rc;
    if ((g->stat = open(g->path, O_RDONLY | O_CLOEXEC)) < 0 || (rc = total_us(g->stat)) < 0) {
        rc = g->stat < 0 ? -errno : rc;
        snprintf(why, whylen, "cannot read CPU pressure from %s: %s", g->path, strerror((int)-rc));
        goto fail;
    }
    int err = 0;
    sigset_t all, old;
    sigfillset(&all);
    if ((g->stopfd = eventfd(0, EFD_CLOEXEC)) >= 0) {
        pthread_sigmask(SIG_BLOCK, &all, &old); /* the eventfd stops it; signals are for others */
        err = pthread_create(&g->th, NULL, guard_main, g);
        if (err == 0)
            pthread_setname_np(g->th, "dbm-cpuguard");
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    if (g->stopfd < 0 || err != 0) {
        snprintf(why, whylen, "cannot start the CPU pressure thread: %s", strerror(g->stopfd < 0 ? errno : err));
        goto fail;
    }
    return g;
fail:
    if (g->stat >= 0)
        close(g->stat);
    if (g->stopfd >= 0)
        close(g->stopfd);
    free(g);
    return NULL;
}

void dbm_cpuguard_stop(struct dbm_cpuguard *g)
{
    if (!g)
        return;
    uint64_t one = 1;
    if (write(g->stopfd, &one, sizeof one) < 0)
        dbm_warn("CPU pressure: cannot stop its thread: %s", strerror(errno));
    pthread_join(g->th, NULL);
    close(g->stat);
    close(g->stopfd);
    free(g);
}
