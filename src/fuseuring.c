/* fuseuring.c - see fuseuring.h.
 *
 * libfuse 3.14 predates the protocol, so this module joins the two:
 * - the session keeps its /dev/fuse loop: INIT, FORGET and INTERRUPT always
 *   come that way, and so does everything until every queue has an entry;
 * - a worker rebuilds each request it fetches exactly as /dev/fuse would have
 *   delivered it (in-header, per-opcode header, payload) in front of its
 *   payload buffer, so the payload is not copied, and runs
 *   fuse_session_process_buf() on it;
 * - the session's custom writev recognises the reply to the request its own
 *   thread is serving and copies it into the entry's buffers; every other
 *   write (replies to /dev/fuse requests, notifications) goes to the device;
 * - the worker then commits the reply and fetches the next request with one
 *   io_uring_enter().
 * Handlers reply on the thread that called them (fsops), which is what the
 * thread-local match relies on.
 *
 * Waking the caller where it is (-o wakeup=local, fuseuring.h): queue
 * threads run at SCHED_IDLE, which the scheduler counts as an idle CPU when
 * it places the caller a commit wakes, so it stays where it is instead of
 * waiting for an idle vCPU to wake (30-70 us in this VM).
 * Measured (bench/README.md): without it, a caller in another scheduling
 * group than the daemon moved CPU on nearly every reply (30,600 migrations
 * in 3,000 WAL commits against 15 with it); with it, 4,600 -> 8,600
 * commits/s. An idle-class thread waits behind any other task that wants
 * its CPU, and so does the request it is given: with two CPU-bound processes
 * in the daemon's own group, a lock request took 3.7 ms instead of 27 us. So
 * a CPU pressure guard (cpuguard.h) moves every queue thread to the daemon's
 * own policy while tasks wait for CPUs, and back once they stop. (The first
 * way, SCHED_IDLE only around each commit, cost two sched_setscheduler
 * calls, 1.2 us per request, and had the same exposure: the next request
 * waited for the thread to get back from idle.)
 *
 * Threads and ownership: struct dbm_uring owns the queues, each a fixed
 * array of worker slots; each worker owns one io_uring instance (single
 * issuer: only it submits) with one registered entry, and that entry's
 * buffers. Workers of queue q are pinned to CPU q because the kernel queues a
 * request on the queue of the CPU the caller runs on. Each queue has
 * PER_QUEUE workers from the start, because a handler that blocks (an
 * F_SETLKW waiter) holds its entry, and the kernel gives an entry registered
 * later only requests that arrive after it, not those already waiting: a
 * queue that grew on demand could leave a queued unlock unserved behind
 * blocked waiters. Idle workers cost a thread and untouched buffer pages.
 * Workers are started by dbm_uring_start and joined by dbm_uring_destroy,
 * both on the main thread, so the queues need no lock. u->mu (guards why) is
 * a leaf. */
#define FUSE_USE_VERSION 312
#include "fuseuring.h"

#include <errno.h>
#include <linux/fuse.h>
#include <linux/io_uring.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <fuse_lowlevel.h>

#include "cpuguard.h"
#include "fusepass.h"
#include "log.h"
#include "strutil.h"
#include "thread.h"

/* The FUSE-over-io_uring ABI (kernel 6.14, protocol 7.42). Debian 12's
 * <linux/fuse.h> predates it, so the layout is declared here; the sizes are
 * checked below. */
#define URING_HDR_IN_OUT 128
#define URING_HDR_OP_IN 128
enum { URING_CMD_REGISTER = 1, URING_CMD_COMMIT_AND_FETCH = 2 };
struct uring_ent_in_out {
    uint64_t flags;
    uint64_t commit_id; /* the request's unique, given back on commit */
    uint32_t payload_sz; /* bytes used in the payload buffer, both ways */
    uint32_t padding;
    uint64_t reserved;
};
struct uring_req_header {
    char in_out[URING_HDR_IN_OUT]; /* fuse_in_header, then fuse_out_header */
    char op_in[URING_HDR_OP_IN];   /* the opcode's fixed header (in_args[0]) */
    struct uring_ent_in_out ent;
};
struct uring_cmd_req { /* in the SQE's 80-byte command area */
    uint64_t flags;
    uint64_t commit_id;
    uint16_t qid;
    uint8_t padding[6];
};
_Static_assert(sizeof(struct uring_req_header) == 288, "fuse_uring_req_header is 288 bytes");
_Static_assert(sizeof(struct uring_cmd_req) == 24, "fuse_uring_cmd_req is 24 bytes");
_Static_assert(sizeof(struct io_uring_sqe) == 64, "a 64-byte SQE, doubled by IORING_SETUP_SQE128");

#define SQE_SIZE 128
#define ENABLE_PARAM "/sys/module/fuse/parameters/enable_uring"
#define PREFIX 256 /* room before the payload for the in-header and op header */
#define PER_QUEUE 32 /* blocked lock waiters a CPU can have before its queue starves */
#define MAX_QUEUES 256
#define WAKE_SIGNAL SIGUSR2

enum state { ST_OFF, ST_STARTING, ST_ACTIVE, ST_FAILED }; /* why says why not active */

struct ring {
    int fd;
    void *sq_map, *cq_map, *sqe_map;
    size_t sq_len, cq_len, sqe_len;
    unsigned *sq_tail, *sq_mask, *sq_array;
    unsigned *cq_head, *cq_tail, *cq_mask;
    struct io_uring_cqe *cqes;
};

struct worker {
    struct dbm_uring *u;
    pthread_t th;
    unsigned qid;
    struct ring ring;
    struct iovec iov[2];          /* registered: header, payload */
    struct uring_req_header *hdr;
    char *block;                  /* PREFIX bytes, then the payload buffer */
    uint64_t unique;              /* the request being served */
    int replied;
    pid_t tid;                    /* set once running (under u->mu) */
};

struct queue {
    unsigned nworkers;            /* slots [0, nworkers) have been started */
    struct worker w[PER_QUEUE];
};

struct dbm_uring {
    struct fuse_session *se;
    enum dbm_uring_mode mode;
    int fuse_fd;
    size_t payload_len;
    unsigned nq;
    struct queue *q;
    _Atomic int state;
    _Atomic int stop;
    enum dbm_wakeup_mode wakeup;  /* as asked */
    _Atomic int local;            /* wakeup=local in effect: the guard runs */
    struct dbm_cpuguard *guard;   /* with local; taken (atomic exchange) by whoever stops it */
    pthread_mutex_t mu;           /* protects why, wake_why, contended, spells, workers' tid; a leaf */
    int contended;                /* tasks wait for CPUs: queue threads at policy, not SCHED_IDLE */
    unsigned long spells;         /* contended spells so far */
    char why[200];                /* why /dev/fuse serves the mount */
    char wake_why[200];           /* why wakeup=local is not in effect (set while starting io_uring) */
};

static __thread struct worker *serving; /* the worker whose request this thread is handling */
/* The custom I/O's view of passthrough (one session per process): set by
 * dbm_uring_start before the session loop, read by every I/O call after. */
static struct dbm_fusepass *io_pass;

/* ---- a minimal io_uring: one SQE in flight per ring ---- */

static int ring_setup(unsigned entries, struct io_uring_params *p)
{
    /* single issuer + deferred task work: the kernel copies a request into
     * our buffers when this thread waits for it, not by interrupting it */
    unsigned flagsets[] = { IORING_SETUP_SQE128 | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
                            IORING_SETUP_SQE128 | IORING_SETUP_COOP_TASKRUN, IORING_SETUP_SQE128 };
    int fd = -EINVAL;
    for (size_t i = 0; i < sizeof flagsets / sizeof flagsets[0]; i++) {
        memset(p, 0, sizeof *p);
        p->flags = flagsets[i];
        fd = (int)syscall(__NR_io_uring_setup, entries, p);
        if (fd >= 0)
            return fd;
        fd = -errno;
        if (fd != -EINVAL)
            break;
    }
    return fd;
}

static void ring_close(struct ring *r)
{
    if (r->sqe_map && r->sqe_map != MAP_FAILED)
        munmap(r->sqe_map, r->sqe_len);
    if (r->cq_map && r->cq_map != MAP_FAILED && r->cq_map != r->sq_map)
        munmap(r->cq_map, r->cq_len);
    if (r->sq_map && r->sq_map != MAP_FAILED)
        munmap(r->sq_map, r->sq_len);
    if (r->fd >= 0)
        close(r->fd);
    memset(r, 0, sizeof *r);
    r->fd = -1;
}

static int ring_open(struct ring *r)
{
    struct io_uring_params p;
    memset(r, 0, sizeof *r);
    r->fd = ring_setup(2, &p);
    if (r->fd < 0)
        return r->fd;
    r->sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    r->cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    if (p.features & IORING_FEAT_SINGLE_MMAP)
        r->sq_len = r->cq_len = r->sq_len > r->cq_len ? r->sq_len : r->cq_len;
    r->sq_map = mmap(NULL, r->sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQ_RING);
    if (r->sq_map == MAP_FAILED)
        goto fail;
    r->cq_map = (p.features & IORING_FEAT_SINGLE_MMAP)
                    ? r->sq_map
                    : mmap(NULL, r->cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
                           IORING_OFF_CQ_RING);
    if (r->cq_map == MAP_FAILED)
        goto fail;
    r->sqe_len = p.sq_entries * SQE_SIZE;
    r->sqe_map = mmap(NULL, r->sqe_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES);
    if (r->sqe_map == MAP_FAILED)
        goto fail;
    char *sq = r->sq_map, *cq = r->cq_map;
    r->sq_tail = (unsigned *)(sq + p.sq_off.tail);
    r->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    r->sq_array = (unsigned *)(sq + p.sq_off.array);
    r->cq_head = (unsigned *)(cq + p.cq_off.head);
    r->cq_tail = (unsigned *)(cq + p.cq_off.tail);
    r->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    return 0;
fail:;
    int rc = -errno;
    ring_close(r);
    return rc;
}

/* Queues one URING_CMD on the FUSE device; the caller then enters. */
static void ring_push_cmd(struct ring *r, int fuse_fd, uint32_t op, const struct iovec *iov,
                          const struct uring_cmd_req *req)
{
    unsigned tail = *r->sq_tail; /* only this thread writes it */
    unsigned idx = tail & *r->sq_mask;
    struct io_uring_sqe *sqe = (struct io_uring_sqe *)((char *)r->sqe_map + (size_t)idx * SQE_SIZE);
    memset(sqe, 0, SQE_SIZE);
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->fd = fuse_fd;
    sqe->cmd_op = op;
    if (iov) {
        sqe->addr = (uint64_t)(uintptr_t)iov;
        sqe->len = 2;
    }
    memcpy(sqe->cmd, req, sizeof *req);
    r->sq_array[idx] = idx;
    __atomic_store_n(r->sq_tail, tail + 1, __ATOMIC_RELEASE);
}

/* Submits what was pushed and waits for one completion: its result (>= 0),
 * or -errno of io_uring_enter (-EINTR when woken to stop). */
static int ring_submit_wait(struct ring *r, unsigned to_submit, int *res)
{
    for (;;) {
        unsigned head = *r->cq_head;
        if (head != __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE) && to_submit == 0) {
            *res = r->cqes[head & *r->cq_mask].res;
            __atomic_store_n(r->cq_head, head + 1, __ATOMIC_RELEASE);
            return 0;
        }
        long n = syscall(__NR_io_uring_enter, r->fd, to_submit, 1, IORING_ENTER_GETEVENTS, NULL, 0);
        if (n < 0)
            return -errno;
        to_submit -= (unsigned)n < to_submit ? (unsigned)n : to_submit;
    }
}

/* ---- requests and replies ---- */

static void set_wake_why(struct dbm_uring *u, const char *why)
{
    pthread_mutex_lock(&u->mu);
    snprintf(u->wake_why, sizeof u->wake_why, "%s", why);
    pthread_mutex_unlock(&u->mu);
}

/* The custom writev: the reply to this thread's ring request goes into the
 * entry; anything else goes to /dev/fuse as libfuse would have written it. */
static ssize_t uring_writev(int fd, struct iovec *iov, int count, void *userdata)
{
    (void)userdata;
    dbm_fusepass_patch_reply(io_pass, iov, count);
    struct worker *w = serving;
    const struct fuse_out_header *oh = iov[0].iov_base;
    if (!w || w->replied || count < 1 || iov[0].iov_len != sizeof *oh || oh->unique != w->unique)
        return writev(fd, iov, count);
    size_t n = 0;
    for (int i = 1; i < count; i++) {
        if (iov[i].iov_len > w->u->payload_len - n) {
            dbm_err("io_uring: a %u-byte reply does not fit the %zu-byte buffer", oh->len, w->u->payload_len);
            errno = EINVAL;
            return -1; /* libfuse logs it; the worker answers EIO */
        }
        if (iov[i].iov_base != w->block + PREFIX + n) /* built in place: dbm_uring_reply_buf */
            memmove(w->block + PREFIX + n, iov[i].iov_base, iov[i].iov_len);
        n += iov[i].iov_len;
    }
    memcpy(w->hdr->in_out, oh, sizeof *oh);
    w->hdr->ent.payload_sz = (uint32_t)n;
    w->replied = 1;
    return (ssize_t)(sizeof *oh + n);
}

void *dbm_uring_reply_buf(size_t size)
{
    struct worker *w = serving;
    /* the request's own headers sit before PREFIX: the payload area is free
     * once the handler runs (a READ brings no payload) */
    return w && !w->replied && size <= w->u->payload_len ? w->block + PREFIX : NULL;
}

static ssize_t uring_read(int fd, void *buf, size_t len, void *userdata)
{
    (void)userdata;
    ssize_t n = read(fd, buf, len);
    if (n > 0)
        dbm_fusepass_saw_request(io_pass, buf, (size_t)n);
    return n;
}

static void reply_error(struct worker *w, uint64_t unique, int err)
{
    struct fuse_out_header oh = { .len = sizeof oh, .error = -err, .unique = unique };
    memcpy(w->hdr->in_out, &oh, sizeof oh);
    w->hdr->ent.payload_sz = 0;
}

/* Runs the fetched request through libfuse; leaves its reply in the entry. */
static void serve(struct worker *w)
{
    struct fuse_in_header ih;
    memcpy(&ih, w->hdr->in_out, sizeof ih);
    uint32_t psz = w->hdr->ent.payload_sz;
    size_t fixed = sizeof ih + (size_t)psz;
    if (psz > w->u->payload_len || ih.len < fixed || ih.len - fixed > URING_HDR_OP_IN) {
        dbm_err("io_uring: malformed request (opcode %u, length %u, payload %u): answered EIO", ih.opcode, ih.len,
                psz);
        reply_error(w, ih.unique, EIO);
        return;
    }
    size_t op_len = ih.len - fixed;
    char *start = w->block + PREFIX - op_len - sizeof ih;
    memcpy(start, &ih, sizeof ih);
    memcpy(start + sizeof ih, w->hdr->op_in, op_len);
    struct fuse_buf fb = { .mem = start, .size = ih.len };
    w->unique = ih.unique;
    w->replied = 0;
    serving = w;
    fuse_session_process_buf(w->u->se, &fb);
    serving = NULL;
    if (!w->replied) {
        /* a request libfuse did not answer (no reply for this opcode, or the
         * reply failed): the entry must still be committed to be reused */
        dbm_err("io_uring: request %llu (opcode %u) got no reply: answered EIO", (unsigned long long)ih.unique,
                ih.opcode);
        reply_error(w, ih.unique, EIO);
    }
}

/* Only a failure before the first request is served changes the transport:
 * after that the kernel routes everything through the queues for good. */
static void set_failed(struct dbm_uring *u, const char *fmt, int err)
{
    char why[sizeof u->why];
    snprintf(why, sizeof why, fmt, strerror(err));
    pthread_mutex_lock(&u->mu);
    int expect = ST_STARTING;
    int first = __atomic_compare_exchange_n((int *)&u->state, &expect, ST_FAILED, 0, __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE);
    if (first)
        memcpy(u->why, why, sizeof why);
    pthread_mutex_unlock(&u->mu);
    if (first) {
        dbm_warn("FUSE over io_uring not used: %s; /dev/fuse serves the mount", why);
        /* nothing left for it to move (not under u->mu: its callback takes it) */
        dbm_cpuguard_stop(__atomic_exchange_n(&u->guard, NULL, __ATOMIC_ACQ_REL));
    } else if (expect == ST_ACTIVE)
        dbm_err("io_uring: a queue thread ended: %s", why);
}

/* Registers the entry, retrying while the kernel has not finished INIT. */
static int do_register(struct worker *w, int *res)
{
    struct uring_cmd_req req = { .qid = (uint16_t)w->qid };
    for (int tries = 0;; tries++) {
        ring_push_cmd(&w->ring, w->u->fuse_fd, URING_CMD_REGISTER, w->iov, &req);
        int rc = ring_submit_wait(&w->ring, 1, res);
        if (rc < 0)
            return rc;
        if (*res != -EAGAIN || tries >= 5000 || __atomic_load_n(&w->u->stop, __ATOMIC_ACQUIRE))
            return 0;
        struct timespec ts = { 0, 2 * 1000 * 1000 }; /* INIT is being answered */
        nanosleep(&ts, NULL);
    }
}

static int shutting_down(int res)
{
    return res == -ENOTCONN || res == -ECONNABORTED || res == -ECANCELED;
}

/* A starting queue thread: publishes its tid (for on_pressure) and takes
 * the policy of the moment. */
static void follow_wakeup(struct worker *w)
{
    struct dbm_uring *u = w->u;
    struct sched_param sp = { 0 };
    pthread_mutex_lock(&u->mu);
    w->tid = gettid();
    /* going to SCHED_IDLE needs no right */
    if (__atomic_load_n(&u->local, __ATOMIC_RELAXED) && !u->contended)
        (void)sched_setscheduler(0, SCHED_IDLE, &sp);
    pthread_mutex_unlock(&u->mu);
}

/* The guard's callback (its thread): every queue thread to the daemon's
 * policy while CPUs are contended, to SCHED_IDLE once they are not. */
static void on_pressure(void *arg, int contended)
{
    struct dbm_uring *u = arg;
    struct sched_param sp = { 0 };
    int policy = contended ? dbm_thread_policy() : SCHED_IDLE, failed = 0;
    pthread_mutex_lock(&u->mu);
    u->contended = contended;
    u->spells += contended != 0;
    unsigned long spells = u->spells;
    /* every slot: a worker publishes its tid (and takes the policy of the
     * moment) itself, and clears it as it ends, so that a tid the kernel
     * gives to someone else later is never touched */
    for (unsigned qid = 0; u->q && qid < u->nq; qid++)
        for (unsigned i = 0; i < PER_QUEUE; i++) {
            struct worker *w = &u->q[qid].w[i];
            if (w->tid && sched_setscheduler(w->tid, policy, &sp) < 0)
                failed = errno;
        }
    pthread_mutex_unlock(&u->mu);
    if (failed)
        dbm_err("io_uring: cannot move queue threads to %s: %s", contended ? "the daemon's policy" : "SCHED_IDLE",
                strerror(failed));
    if (contended)
        dbm_info("CPU contention (spell %lu): queue threads at the daemon's policy; replies wake callers anywhere "
                 "until it passes", spells);
    else
        dbm_info("CPU contention over: queue threads at SCHED_IDLE; replies wake callers locally");
}

static void *worker_run(struct worker *w);

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    void *r = worker_run(w);
    pthread_mutex_lock(&w->u->mu);
    w->tid = 0;
    pthread_mutex_unlock(&w->u->mu);
    return r;
}

static void *worker_run(struct worker *w)
{
    struct dbm_uring *u = w->u;
    /* first: the io-wq threads the kernel starts for a registration refused
     * before INIT (-EAGAIN) take this policy too, and a thread that carries
     * the queue name (below) already has the policy of the moment */
    follow_wakeup(w);
    cpu_set_t cpus;
    CPU_ZERO(&cpus);
    CPU_SET(w->qid, &cpus);
    /* an offline CPU cannot be pinned to; the queue still needs its entry */
    (void)pthread_setaffinity_np(pthread_self(), sizeof cpus, &cpus);
    char name[16];
    snprintf(name, sizeof name, "dbm-uring-q%u", w->qid);
    pthread_setname_np(pthread_self(), name); /* the tests tell queue threads by it */
    int res = 0, reregistered = 0;
    /* a single-issuer ring belongs to the thread that creates it */
    int rc = ring_open(&w->ring);
    if (rc < 0) {
        set_failed(u, "cannot set up an io_uring: %s", -rc);
        return NULL;
    }
    rc = do_register(w, &res);
    for (;;) {
        while (rc == -EINTR && !__atomic_load_n(&u->stop, __ATOMIC_ACQUIRE))
            rc = ring_submit_wait(&w->ring, 0, &res);
        if (rc < 0 || __atomic_load_n(&u->stop, __ATOMIC_ACQUIRE))
            break;
        if (res < 0 && !shutting_down(res) && !reregistered++ &&
            __atomic_load_n(&u->state, __ATOMIC_ACQUIRE) == ST_ACTIVE) {
            /* a refused commit loses the entry (the kernel forgets it): register afresh, once */
            dbm_warn("io_uring: queue %u: commit refused (%s); registering the entry again", w->qid, strerror(-res));
            rc = do_register(w, &res);
            continue;
        }
        if (res < 0)
            break;
        int expect = ST_STARTING;
        __atomic_compare_exchange_n((int *)&u->state, &expect, ST_ACTIVE, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
        serve(w);
        struct uring_cmd_req req = { .commit_id = w->hdr->ent.commit_id, .qid = (uint16_t)w->qid };
        ring_push_cmd(&w->ring, u->fuse_fd, URING_CMD_COMMIT_AND_FETCH, NULL, &req);
        rc = ring_submit_wait(&w->ring, 1, &res); /* commits (wakes the caller), waits for the next */
    }
    if (__atomic_load_n(&u->stop, __ATOMIC_ACQUIRE))
        return NULL;
    if (rc < 0)
        set_failed(u, "io_uring_enter: %s", -rc);
    else if (!shutting_down(res))
        set_failed(u, "the kernel refused a queue entry: %s", -res);
    return NULL;
}

/* ---- life cycle ---- */

static int possible_cpus(void)
{
    /* the kernel makes one queue per possible CPU, online or not */
    FILE *f = fopen("/sys/devices/system/cpu/possible", "r");
    int lo = 0, hi = -1;
    if (f) {
        char line[256];
        if (fgets(line, sizeof line, f)) {
            for (char *tok = strtok(line, ",\n"); tok; tok = strtok(NULL, ",\n"))
                if (sscanf(tok, "%d-%d", &lo, &hi) == 2 || sscanf(tok, "%d", &hi) == 1)
                    continue;
        }
        fclose(f);
    }
    if (hi < 0)
        hi = (int)sysconf(_SC_NPROCESSORS_CONF) - 1;
    return hi + 1;
}

/* Whether the kernel's switch allows it; if not, u->why says why. */
static int kernel_allows(struct dbm_uring *u)
{
    FILE *f = fopen(ENABLE_PARAM, "r");
    if (!f) {
        snprintf(u->why, sizeof u->why, "this kernel has no FUSE over io_uring (Linux 6.14 or later has it)");
        return 0;
    }
    int c = fgetc(f);
    fclose(f);
    if (c != 'Y') {
        snprintf(u->why, sizeof u->why, "disabled in the kernel; as root: echo Y > %s", ENABLE_PARAM);
        return 0;
    }
    return 1;
}

static void wake_handler(int sig)
{
    (void)sig; /* only interrupts io_uring_enter */
}

/* Whether a thread of this daemon can go to SCHED_IDLE and back: tried on a
 * thread of its own, which ends either way (stuck at SCHED_IDLE if not). */
static void *probe_idle(void *arg)
{
    (void)arg;
    struct sched_param sp = { 0 };
    int policy = dbm_thread_policy(); /* queue threads' while CPUs are contended */
    if (policy != SCHED_OTHER && policy != SCHED_BATCH)
        return (void *)"any (the daemon runs under a real-time or idle policy)";
    if (sched_setscheduler(0, SCHED_IDLE, &sp) < 0 || sched_setscheduler(0, policy, &sp) < 0)
        return (void *)"any (leaving SCHED_IDLE needs CAP_SYS_NICE or RLIMIT_NICE >= 20)";
    return NULL;
}

static void decide_wakeup(struct dbm_uring *u)
{
    void *why = (void *)"any (-o wakeup=any)";
    if (u->wakeup == DBM_WAKEUP_LOCAL) {
        pthread_t th;
        why = (void *)"any (cannot start a thread to try SCHED_IDLE)";
        if (pthread_create(&th, NULL, probe_idle, u) == 0)
            pthread_join(th, &why);
    }
    char gwhy[sizeof u->wake_why - 8], buf[sizeof u->wake_why];
    struct dbm_cpuguard *g = why ? NULL : dbm_cpuguard_start(on_pressure, u, gwhy, sizeof gwhy);
    __atomic_store_n(&u->guard, g, __ATOMIC_RELEASE);
    if (!why && !g) {
        /* without it an idle-class thread could starve behind a busy CPU */
        snprintf(buf, sizeof buf, "any (%s)", gwhy);
        why = buf;
    }
    if (!why)
        __atomic_store_n(&u->local, 1, __ATOMIC_RELAXED);
    else
        set_wake_why(u, why);
}

struct dbm_uring *dbm_uring_create(struct fuse_session *se, enum dbm_uring_mode mode, enum dbm_wakeup_mode wakeup)
{
    struct dbm_uring *u = calloc(1, sizeof *u);
    if (!u)
        return NULL;
    pthread_mutex_init(&u->mu, NULL);
    u->se = se;
    u->mode = mode;
    u->wakeup = wakeup;
    u->state = ST_OFF;
    snprintf(u->why, sizeof u->why, "off (-o io_uring=auto turns it on)");
    return u;
}

static int worker_init(struct dbm_uring *u, struct worker *w, unsigned qid)
{
    w->u = u;
    w->qid = qid;
    w->ring.fd = -1;
    w->hdr = calloc(1, sizeof *w->hdr);
    w->block = malloc(PREFIX + u->payload_len);
    if (!w->hdr || !w->block)
        return -ENOMEM;
    w->iov[0] = (struct iovec){ w->hdr, sizeof *w->hdr };
    w->iov[1] = (struct iovec){ w->block + PREFIX, u->payload_len };
    return 0;
}

static void queue_add_worker(struct dbm_uring *u, unsigned qid);

int dbm_uring_start(struct dbm_uring *u, size_t max_write, struct dbm_fusepass *pass)
{
    /* the custom I/O serves both transports: passthrough needs its hooks on /dev/fuse too */
    io_pass = pass;
    const struct fuse_custom_io io = { .writev = uring_writev, .read = uring_read };
    int rc = fuse_session_custom_io(u->se, &io, fuse_session_fd(u->se));
    if (rc < 0) {
        dbm_err("cannot install the session's I/O: %s; FUSE over io_uring and passthrough are not used",
                strerror(-rc));
        snprintf(u->why, sizeof u->why, "cannot install the session's I/O: %s", strerror(-rc));
        return rc;
    }
    if (u->mode == DBM_URING_OFF)
        return 0;
    if (!kernel_allows(u)) {
        dbm_info("FUSE over io_uring not used: %s", u->why);
        return 0;
    }
    u->state = ST_STARTING;
    snprintf(u->why, sizeof u->why, "starting: the kernel routes requests to the queues once each has an entry");
    /* the kernel's payload size: max_write, at least 8 KiB, in whole pages */
    long page = sysconf(_SC_PAGESIZE);
    size_t need = max_write < 8192 ? 8192 : max_write;
    u->payload_len = (need + (size_t)page - 1) / (size_t)page * (size_t)page;
    u->fuse_fd = fuse_session_fd(u->se);
    int ncpu = possible_cpus();
    if (ncpu > MAX_QUEUES)
        ncpu = MAX_QUEUES;
    u->nq = (unsigned)ncpu;
    struct sigaction sa = { .sa_handler = wake_handler }; /* no SA_RESTART: a stop interrupts the wait */
    sigemptyset(&sa.sa_mask);
    sigaction(WAKE_SIGNAL, &sa, NULL);
    u->q = calloc(u->nq, sizeof *u->q);
    if (!u->q) {
        set_failed(u, "%s", ENOMEM);
        return -ENOMEM;
    }
    decide_wakeup(u); /* before the workers: each takes the policy it says */
    for (unsigned qid = 0; qid < u->nq; qid++)
        for (int i = 0; i < PER_QUEUE; i++)
            queue_add_worker(u, qid);
    dbm_info("FUSE over io_uring: %u queues x %d threads, %zu-byte buffers; replies wake callers %s", u->nq,
             PER_QUEUE, u->payload_len, u->local ? "locally" : "anywhere");
    return 0;
}

/* Starts one more worker on queue qid (it has fewer than PER_QUEUE). A
 * failure is logged; the queue keeps what it has. */
static void queue_add_worker(struct dbm_uring *u, unsigned qid)
{
    struct queue *q = &u->q[qid];
    unsigned n = q->nworkers;
    struct worker *w = &q->w[n];
    int rc = worker_init(u, w, qid);
    if (rc == 0)
        rc = -pthread_create(&w->th, NULL, worker_main, w);
    if (rc == 0) {
        q->nworkers = n + 1;
    } else {
        free(w->hdr);
        free(w->block);
        pthread_mutex_lock(&u->mu); /* on_pressure reads the slot's tid */
        memset(w, 0, sizeof *w);
        pthread_mutex_unlock(&u->mu);
        if (n == 0)
            set_failed(u, "cannot start a queue thread: %s", -rc);
        else
            dbm_warn("io_uring: queue %u keeps %u threads: %s", qid, n, strerror(-rc));
    }
}

/* Joins a worker, waking it until it notices u->stop (a signal that lands
 * just before it waits again is lost, so it is repeated). 0 or -ETIMEDOUT. */
static int worker_join(struct worker *w)
{
    for (int tries = 0; tries < 400; tries++) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 5 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000L)
            ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_kill(w->th, WAKE_SIGNAL);
        if (pthread_timedjoin_np(w->th, NULL, &ts) == 0)
            return 0;
    }
    return -ETIMEDOUT;
}

void dbm_uring_destroy(struct dbm_uring *u)
{
    if (!u)
        return;
    dbm_cpuguard_stop(__atomic_exchange_n(&u->guard, NULL, __ATOMIC_ACQ_REL)); /* it walks the workers */
    __atomic_store_n(&u->stop, 1, __ATOMIC_RELEASE);
    /* wake them all first, so that they stop together, not one join at a time */
    for (unsigned qid = 0; u->q && qid < u->nq; qid++)
        for (unsigned i = 0; i < u->q[qid].nworkers; i++)
            pthread_kill(u->q[qid].w[i].th, WAKE_SIGNAL);
    int leaked = 0;
    for (unsigned qid = 0; u->q && qid < u->nq; qid++) {
        struct queue *q = &u->q[qid];
        unsigned n = q->nworkers;
        for (unsigned i = 0; i < n; i++) {
            struct worker *w = &q->w[i];
            if (worker_join(w) < 0) {
                dbm_warn("io_uring: a queue thread did not stop; leaving it");
                pthread_detach(w->th);
                leaked = 1; /* its buffers stay: it may still touch them */
                continue;
            }
            ring_close(&w->ring);
            free(w->hdr);
            free(w->block);
        }
    }
    if (leaked)
        return;
    free(u->q);
    pthread_mutex_destroy(&u->mu);
    free(u);
}

void dbm_uring_report(const struct dbm_uring *u, struct dbm_sbuf *b)
{
    int st = u ? __atomic_load_n(&u->state, __ATOMIC_ACQUIRE) : ST_OFF;
    char why[sizeof u->why] = "off";
    char wake_why[sizeof u->wake_why] = ""; /* read only while active */
    if (u) {
        pthread_mutex_lock((pthread_mutex_t *)&u->mu);
        memcpy(why, u->why, sizeof why);
        memcpy(wake_why, u->wake_why, sizeof wake_why);
        pthread_mutex_unlock((pthread_mutex_t *)&u->mu);
    }
    if (st == ST_ACTIVE) {
        dbm_sbuf_kv(b, "fuse_transport", "io_uring");
        dbm_sbuf_kv(b, "fuse_transport_detail", "%u queues (one per CPU), %d threads each", u->nq, PER_QUEUE);
        pthread_mutex_lock((pthread_mutex_t *)&u->mu);
        int contended = u->contended;
        pthread_mutex_unlock((pthread_mutex_t *)&u->mu);
        if (__atomic_load_n(&u->local, __ATOMIC_RELAXED) && !contended)
            dbm_sbuf_kv(b, "fuse_wakeup", "local (a reply wakes its caller on the CPU that served it)");
        else if (__atomic_load_n(&u->local, __ATOMIC_RELAXED))
            dbm_sbuf_kv(b, "fuse_wakeup", "any (tasks are waiting for CPUs; local again once they are not)");
        else
            dbm_sbuf_kv(b, "fuse_wakeup", "%s", wake_why);
        return;
    }
    dbm_sbuf_kv(b, "fuse_transport", "/dev/fuse");
    dbm_sbuf_kv(b, "fuse_transport_detail", "io_uring %s", why);
    dbm_sbuf_kv(b, "fuse_wakeup", "any (only FUSE over io_uring wakes callers locally)"); /* whatever was asked */
}
