/* test_thread.c - dbm_thread_start gives a thread the scheduling policy and
 * the CPUs the process started with, whatever its starter's: a FUSE queue
 * thread is pinned to one CPU and may wait at SCHED_IDLE. */
#include "check.h"
#include "thread.h"

#include <sched.h>
#include <unistd.h>

struct seen {
    int policy;
    cpu_set_t cpus;
};

static void *report(void *arg)
{
    struct seen *s = arg;
    s->policy = sched_getscheduler(0);
    sched_getaffinity(0, sizeof s->cpus, &s->cpus);
    return NULL;
}

/* Starts a thread from one whose policy and CPUs are (policy, cpu) and says
 * what the started thread saw. */
struct starter {
    int policy, cpu, rc;
    struct seen seen;
};

static void *start_one(void *arg)
{
    struct starter *st = arg;
    struct sched_param sp = { 0 };
    if (st->cpu >= 0) {
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(st->cpu, &one);
        CHECK(sched_setaffinity(0, sizeof one, &one) == 0);
    }
    if (st->policy != SCHED_OTHER)
        CHECK(sched_setscheduler(0, st->policy, &sp) == 0);
    pthread_t th;
    st->rc = dbm_thread_start(&th, "dbm-test", report, &st->seen);
    if (st->rc == 0)
        pthread_join(th, NULL);
    return NULL;
}

static struct seen from(int policy, int cpu)
{
    struct starter st = { .policy = policy, .cpu = cpu };
    pthread_t th;
    CHECK(pthread_create(&th, NULL, start_one, &st) == 0);
    pthread_join(th, NULL);
    CHECK_EQ_INT(st.rc, 0);
    return st.seen;
}

int main(void)
{
    cpu_set_t all;
    CHECK(sched_getaffinity(0, sizeof all, &all) == 0);
    CHECK_EQ_INT(dbm_thread_policy(), sched_getscheduler(0));
    int first = -1;
    for (int c = 0; c < CPU_SETSIZE && first < 0; c++)
        if (CPU_ISSET(c, &all))
            first = c;
    CHECK(first >= 0);

    /* a plain starter: the same policy and CPUs */
    struct seen s = from(SCHED_OTHER, -1);
    CHECK_EQ_INT(s.policy, SCHED_OTHER);
    CHECK(CPU_EQUAL(&s.cpus, &all));

    /* a starter pinned to one CPU: the started thread is not */
    s = from(SCHED_OTHER, first);
    CHECK(CPU_EQUAL(&s.cpus, &all));

    /* a starter at SCHED_IDLE (going there needs no right): the started
     * thread runs at the process's policy when leaving SCHED_IDLE is
     * allowed (root, CAP_SYS_NICE), or stays where it inherits otherwise */
    s = from(SCHED_IDLE, first);
    CHECK(CPU_EQUAL(&s.cpus, &all));
    if (geteuid() == 0)
        CHECK_EQ_INT(s.policy, SCHED_OTHER);
    else
        CHECK(s.policy == SCHED_OTHER || s.policy == SCHED_IDLE);
    return CHECK_DONE();
}
