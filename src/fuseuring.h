/* fuseuring.h - FUSE over io_uring: the kernel hands requests to per-CPU
 * queues of registered buffers, answered in place, instead of read() and
 * writev() on /dev/fuse (Linux 6.14 and later, when root has enabled it with
 * /sys/module/fuse/parameters/enable_uring). Part of the FUSE glue: the only
 * other module (with fsops and main) that sees libfuse.
 *
 * Why: a /dev/fuse round trip mostly waits for a daemon thread to wake on
 * another, idle CPU (15.6 us per lock request against 5.5 us with both on
 * one CPU, bench/README.md). A queue per CPU, served by threads pinned to it,
 * answers a request on the CPU that made it. */
#ifndef DBM_FUSEURING_H
#define DBM_FUSEURING_H

#include <stddef.h>

struct fuse_session;
struct dbm_sbuf;
struct dbm_fusepass;
struct dbm_uring;

enum dbm_uring_mode { DBM_URING_OFF, DBM_URING_AUTO };

/* Where a reply wakes the application (-o wakeup=...):
 * LOCAL  on the CPU that served its request, where it made it. Queue
 *        threads run at SCHED_IDLE, which the scheduler counts as an idle
 *        CPU when it places the woken caller; otherwise it moves the caller
 *        to an idle CPU, and waking an idle vCPU costs more than the whole
 *        request (bench/README.md). While tasks wait for CPUs (cpuguard.h)
 *        they run at the daemon's policy instead. Needs the right to leave
 *        SCHED_IDLE again (CAP_SYS_NICE or RLIMIT_NICE >= 20), a SCHED_OTHER
 *        or SCHED_BATCH daemon, and the kernel's CPU pressure; without them,
 *        ANY.
 * ANY    wherever the scheduler likes. */
enum dbm_wakeup_mode { DBM_WAKEUP_ANY, DBM_WAKEUP_LOCAL };

/* Creates the transport object of a session; nothing runs yet. The session
 * must outlive it. NULL only when out of memory. */
struct dbm_uring *dbm_uring_create(struct fuse_session *se, enum dbm_uring_mode mode, enum dbm_wakeup_mode wakeup);

/* After fuse_session_mount() and before the session loop: installs the
 * session's custom I/O, which also feeds pass (may be NULL; borrowed, must
 * outlive the session loop) every request read from /dev/fuse and every
 * reply (fusepass.h); in AUTO mode, if the kernel allows it, starts the
 * queue threads, which register once the kernel has answered INIT. Payload
 * buffers hold max_write bytes (the value the INIT reply announces). When the
 * kernel does not allow it the /dev/fuse loop serves everything and the
 * reason is kept for dbm_uring_report(). Returns 0 or -errno (logged). */
int dbm_uring_start(struct dbm_uring *u, size_t max_write, struct dbm_fusepass *pass);

/* Stops and joins the queue threads (after the session loop has ended and
 * the mount is gone), frees everything. Accepts NULL. */
void dbm_uring_destroy(struct dbm_uring *u);

/* Appends fuse_transport, fuse_transport_detail and fuse_wakeup lines.
 * Thread-safe; accepts NULL (reported as /dev/fuse). */
void dbm_uring_report(const struct dbm_uring *u, struct dbm_sbuf *b);

/* Where a reply's data can be built when the calling thread is serving a
 * request from an io_uring queue and size bytes fit: the entry's own reply
 * buffer, so that a reply (fuse_reply_buf) whose data starts there is not
 * copied again. It holds the request's own data (a WRITE's): only for a
 * request that brings none (READ). NULL otherwise (on /dev/fuse, or too big
 * for the entry): the caller uses a buffer of its own. Valid until the
 * request is answered. */
void *dbm_uring_reply_buf(size_t size);

#endif
