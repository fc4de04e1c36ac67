/* thread.c - see thread.h. */
#include "thread.h"

#include <errno.h>
#include <sched.h>

static int start_policy = SCHED_OTHER;
static struct sched_param start_param;
static cpu_set_t start_cpus;
static int have_cpus;

/* Runs before main(), on the main thread: the policy and the CPUs the daemon
 * was given. */
__attribute__((constructor)) static void remember_start(void)
{
    int p = sched_getscheduler(0);
    if (p >= 0 && sched_getparam(0, &start_param) == 0)
        start_policy = p;
    have_cpus = sched_getaffinity(0, sizeof start_cpus, &start_cpus) == 0;
}

int dbm_thread_policy(void) { return start_policy; }

int dbm_thread_start(pthread_t *th, const char *name, void *(*fn)(void *), void *arg)
{
    int self = sched_getscheduler(0);
    pthread_attr_t a;
    int rc = pthread_attr_init(&a);
    if (rc != 0)
        return -rc;
    /* a queue thread is pinned to its CPU: an export's compression workers
     * and hashing job, started from there, would share that one CPU */
    int cpus = have_cpus && pthread_attr_setaffinity_np(&a, sizeof start_cpus, &start_cpus) == 0;
    int policy = self != start_policy && pthread_attr_setinheritsched(&a, PTHREAD_EXPLICIT_SCHED) == 0 &&
                 pthread_attr_setschedpolicy(&a, start_policy) == 0 &&
                 pthread_attr_setschedparam(&a, &start_param) == 0;
    rc = pthread_create(th, cpus || policy ? &a : NULL, fn, arg);
    /* leaving SCHED_IDLE takes a right the daemon may lack: then the thread
     * inherits the policy, as it would have without this */
    if (rc == EPERM && policy) {
        pthread_attr_setinheritsched(&a, PTHREAD_INHERIT_SCHED);
        rc = pthread_create(th, &a, fn, arg);
    }
    pthread_attr_destroy(&a);
    if (rc == 0)
        pthread_setname_np(*th, name);
    return -rc;
}
