/* thread.h - threads the daemon starts while it serves requests.
 *
 * Why: FUSE queue threads may run at SCHED_IDLE (fuseuring.h), and a thread
 * inherits the policy of the thread that starts it; an export producer or
 * the syncer started from a request handler would then run at idle
 * priority and stall whenever the CPUs are busy; and it inherits the CPUs it
 * may run on, so an export's compression would have one CPU, not all. */
#ifndef DBM_THREAD_H
#define DBM_THREAD_H

#include <pthread.h>

/* pthread_create() at the scheduling policy and on the CPUs the process
 * started with, whatever the calling thread's (a queue thread is pinned to
 * one CPU), named name (at most 15 bytes, for top -H; a thread inherits its
 * starter's name otherwise). 0 or -errno. */
int dbm_thread_start(pthread_t *th, const char *name, void *(*fn)(void *), void *arg);

/* The scheduling policy the process started with (SCHED_OTHER, ...). */
int dbm_thread_policy(void);

#endif
