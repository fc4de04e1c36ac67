/* fusewb.c - see fusewb.h.
 *
 * The helper: a child forked before the daemon starts any thread, which
 * serves one request at a time on a socket pair (struct req in, an errno
 * out). It opens the mount's root, opens the inode by file handle from it,
 * has the kernel write the file back (sync_file_range), or cut its size
 * (ftruncate, a request the daemon serves) and drop its clean pages
 * (POSIX_FADV_DONTNEED), and closes both:
 * it keeps nothing open, so an idle mount is never busy. Its opens reach the
 * daemon as requests like any other (fsops: dbm_fusewb_is_own). It ignores
 * the signals a service manager sends the whole group and ends when the
 * daemon does (the socket's end, or PR_SET_PDEATHSIG). Between fork and its
 * end it makes raw system calls only: the daemon may have locks held.
 *
 * Opening by handle: a FUSE file handle is the node id and the generation
 * (FILEID_INO64_GEN: three 32-bit words, the id's high and low halves, then
 * the generation; fs/fuse/inode.c). The daemon's entry replies give
 * generation 0. The kernel finds the inode in its cache without a request;
 * one it does not hold is ESTALE, as the daemon does not offer lookups by
 * node id (FUSE_EXPORT_SUPPORT): it caches nothing of such a file. The
 * helper checks that the mountpoint holds this mount (its device, which the
 * daemon reads from /proc/self/mountinfo once mounted and sends with each
 * request), so a mountpoint something else was mounted on after a lazy
 * unmount is never used.
 *
 * State: why has its own (leaf) lock; req_mu serializes requests to the helper
 * (held while it works: no other lock may be held then, livedb_i.h). */
#include "fusewb.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"
#include "strutil.h"
#include "sysio.h"

#define FUSE_MAGIC 0x65735546      /* statfs f_type of a FUSE mount */
#define FILEID_INO64_GEN 0x81
#define ON_WHY "on (the kernel caches writes to databases and WALs and sends them in large writes; journals use " \
               "direct I/O)"

enum { OP_FLUSH = 1, OP_RESET = 2 };

struct req {
    uint64_t ino;
    uint64_t dev; /* the mount's device (0: unknown, the first request's is kept) */
    int64_t size; /* OP_RESET: the size to cut to, or -1 */
    uint32_t op;
    uint32_t pad;
};

struct dbm_fusewb {
    enum dbm_wb_mode mode;
    char *mountpoint;
    pid_t helper;                 /* 0 until started */
    uint64_t dev;                 /* (atomic) the mount's device, 0 until dbm_fusewb_mounted */
    int sock;                     /* to the helper, or -1 */
    pthread_mutex_t req_mu;       /* one request at a time */
    struct dbm_stext why;         /* what fuse_writeback says */
};

static void set_why(struct dbm_fusewb *w, const char *why) { dbm_stext_set(&w->why, why); }

struct dbm_fusewb *dbm_fusewb_create(enum dbm_wb_mode mode, unsigned threads, const char *mountpoint)
{
    struct dbm_fusewb *w = calloc(1, sizeof *w);
    if (!w || !(w->mountpoint = strdup(mountpoint))) {
        free(w);
        return NULL;
    }
    w->sock = -1;
    pthread_mutex_init(&w->req_mu, NULL);
    const char *why = ON_WHY;
    char few[200];
    snprintf(few, sizeof few,
             "off (-o max_threads=%u, below %d: a commit point waits for writes that other threads must serve)",
             threads, DBM_WB_MIN_THREADS);
    if (mode == DBM_WB_OFF)
        why = "off (-o writeback=off)";
    else if (threads == 0)
        why = "off (-s: a commit point waits for writes that another thread must serve)";
    else if (threads < DBM_WB_MIN_THREADS)
        why = few;
    else if (!dbm_have_cap(CAP_DAC_READ_SEARCH))
        why = "off (reaching the kernel's copy of a file by handle needs CAP_DAC_READ_SEARCH)";
    w->mode = strcmp(why, ON_WHY) == 0 ? DBM_WB_AUTO : DBM_WB_OFF;
    dbm_stext_init(&w->why, why);
    return w;
}

void dbm_fusewb_destroy(struct dbm_fusewb *w)
{
    if (!w)
        return;
    if (w->sock >= 0)
        close(w->sock); /* the helper sees the end and exits */
    if (w->helper > 0)
        waitpid(w->helper, NULL, 0);
    dbm_stext_destroy(&w->why);
    pthread_mutex_destroy(&w->req_mu);
    free(w->mountpoint);
    free(w);
}

int dbm_fusewb_wanted(const struct dbm_fusewb *w)
{
    return w && __atomic_load_n(&w->mode, __ATOMIC_ACQUIRE) == DBM_WB_AUTO;
}

void dbm_fusewb_init(struct dbm_fusewb *w, int offered)
{
    if (dbm_fusewb_wanted(w) && !offered) {
        set_why(w, "off (the kernel did not offer it)");
        __atomic_store_n(&w->mode, DBM_WB_OFF, __ATOMIC_RELEASE); /* request threads read it after INIT */
    }
}

/* ---- the helper (raw system calls only) ---- */

/* Carries out r on the mount on mountpoint: 0 or -errno. dev: the mount's
 * device, r's or else the first call's. */
static int helper_do(const char *mountpoint, const struct req *r, dev_t *dev)
{
    if (r->dev)
        *dev = (dev_t)r->dev;
    int mfd = open(mountpoint, O_RDONLY | O_DIRECTORY | O_CLOEXEC); /* not O_PATH: open_by_handle_at refuses it */
    if (mfd < 0)
        return -errno;
    struct statfs sf;
    struct stat st;
    int rc = 0;
    if (fstatfs(mfd, &sf) < 0 || fstat(mfd, &st) < 0 || sf.f_type != FUSE_MAGIC || st.st_ino != 1 ||
        (*dev && st.st_dev != *dev)) {
        rc = -ENOTCONN; /* not (or no longer) this mount */
        goto out;
    }
    *dev = st.st_dev;
    union {
        struct file_handle fh;
        char buf[sizeof(struct file_handle) + 12];
    } h;
    uint32_t raw[3] = { (uint32_t)(r->ino >> 32), (uint32_t)r->ino, 0 };
    h.fh.handle_bytes = sizeof raw;
    h.fh.handle_type = FILEID_INO64_GEN;
    memcpy(h.fh.f_handle, raw, sizeof raw);
    int resize = r->op == OP_RESET && r->size >= 0;
    int fd = open_by_handle_at(mfd, &h.fh, (resize ? O_WRONLY : O_RDONLY) | O_CLOEXEC);
    if (fd < 0) {
        rc = errno == ESTALE ? 0 : -errno; /* not in the kernel's cache: nothing held */
        goto out;
    }
    if (r->op == OP_FLUSH &&
        sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER) <
            0)
        rc = -errno;
    if (resize && ftruncate(fd, r->size) < 0)
        rc = -errno;
    if (r->op == OP_RESET && rc == 0)
        rc = -posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    /* the close (FUSE's FLUSH) waits for every write-back in flight and
     * reports one the daemon refused, where sync_file_range may not (a
     * kernel that copies pages to write them back ends their writeback as
     * they are sent) */
    if (close(fd) < 0 && rc == 0 && r->op == OP_FLUSH)
        rc = -errno;
out:
    close(mfd);
    return rc;
}

static void helper_main(int sock, const char *mountpoint, pid_t parent)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(0); /* the daemon ended before the line above */
    struct sigaction ign = { .sa_handler = SIG_IGN };
    const int sigs[] = { SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGUSR1, SIGUSR2 };
    for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++)
        sigaction(sigs[i], &ign, NULL);
    if (sock != 3) {
        dup2(sock, 3);
        sock = 3;
    }
    syscall(SYS_close_range, 4u, ~0u, 0u); /* the state lock and everything else are the daemon's */
    /* nor its terminal or pipes: whoever waits for their end (a parent that
     * captured the daemon's output) must not wait for the helper */
    int null = open("/dev/null", O_RDWR);
    for (int fd = 0; null >= 0 && fd < 3; fd++)
        dup2(null, fd);
    if (null > 3)
        close(null);
    dev_t dev = 0;
    for (;;) {
        struct req r;
        ssize_t n = recv(sock, &r, sizeof r, 0);
        if (n != (ssize_t)sizeof r)
            _exit(0);
        int32_t rc = helper_do(mountpoint, &r, &dev);
        if (send(sock, &rc, sizeof rc, MSG_NOSIGNAL) != (ssize_t)sizeof rc)
            _exit(0);
    }
}

int dbm_fusewb_start(struct dbm_fusewb *w)
{
    if (!dbm_fusewb_wanted(w))
        return 0;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
        int e = errno;
        char why[200];
        snprintf(why, sizeof why, "off (cannot start its helper: %s)", strerror(e));
        set_why(w, why);
        w->mode = DBM_WB_OFF;
        return -e;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        close(sv[0]);
        helper_main(sv[1], w->mountpoint, parent);
    }
    int e = errno;
    close(sv[1]);
    if (pid < 0) {
        close(sv[0]);
        char why[200];
        snprintf(why, sizeof why, "off (cannot start its helper: %s)", strerror(e));
        set_why(w, why);
        w->mode = DBM_WB_OFF;
        return -e;
    }
    w->helper = pid;
    w->sock = sv[0];
    return 0;
}

/* One request to the helper, waited for. */
static int ask(struct dbm_fusewb *w, struct req *r)
{
    if (!w || w->sock < 0)
        return -EIO;
    r->dev = __atomic_load_n(&w->dev, __ATOMIC_ACQUIRE);
    pthread_mutex_lock(&w->req_mu);
    int32_t rc = -EIO;
    if (send(w->sock, r, sizeof *r, MSG_NOSIGNAL) != (ssize_t)sizeof *r ||
        recv(w->sock, &rc, sizeof rc, 0) != (ssize_t)sizeof rc) {
        rc = -EIO;
        dbm_err("writeback: its helper (pid %ld) is gone: commits that need the kernel to write back fail",
                (long)w->helper);
    }
    pthread_mutex_unlock(&w->req_mu);
    return rc;
}

void dbm_fusewb_mounted(struct dbm_fusewb *w)
{
    if (!dbm_fusewb_wanted(w))
        return;
    FILE *f = fopen("/proc/self/mountinfo", "re");
    if (!f)
        return;
    char *line = NULL, mp[4096];
    size_t cap = 0;
    unsigned maj, min;
    uint64_t dev = 0;
    /* "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [TAGS] - TYPE ...": the last
     * FUSE mount listed on the mountpoint is the newest, ours (a space in the
     * path is written \040: such a mountpoint keeps the first request's) */
    while (getline(&line, &cap, f) > 0) {
        const char *sep = strstr(line, " - ");
        if (sep && strncmp(sep + 3, "fuse", 4) == 0 &&
            sscanf(line, "%*u %*u %u:%u %*s %4095s", &maj, &min, mp) == 3 && strcmp(mp, w->mountpoint) == 0)
            dev = makedev(maj, min);
    }
    free(line);
    fclose(f);
    if (!dev)
        dbm_warn("writeback: %s is not in /proc/self/mountinfo as a FUSE mount: the helper checks the mountpoint "
                 "against the device it first finds there", w->mountpoint);
    __atomic_store_n(&w->dev, dev, __ATOMIC_RELEASE);
}

uint64_t dbm_fusewb_cap_dirty(const struct dbm_fusewb *w, uint64_t cap)
{
    uint64_t dev = w ? __atomic_load_n(&w->dev, __ATOMIC_ACQUIRE) : 0;
    if (!dev)
        return 0;
    /* FUSE caps a mount's dirty pages (strict_limit): max_bytes, derived
     * from its max_ratio (1%) of the dirty limit unless set (Linux 6.2+) */
    char path[96];
    snprintf(path, sizeof path, "/sys/class/bdi/%u:%u/max_bytes", major((dev_t)dev), minor((dev_t)dev));
    FILE *f = fopen(path, "re");
    unsigned long long v = 0;
    if (!f || fscanf(f, "%llu", &v) != 1)
        v = 0;
    if (f)
        fclose(f);
    if (v > cap && (f = fopen(path, "we"))) {
        /* a big machine's 1% would make a big space reserve: the batches
         * the cache is for need far less */
        int ok = fprintf(f, "%llu\n", (unsigned long long)cap) > 0;
        if (fclose(f) == 0 && ok)
            v = cap;
    }
    return v;
}

int dbm_fusewb_flush(struct dbm_fusewb *w, uint64_t ino)
{
    struct req r = { .ino = ino, .size = -1, .op = OP_FLUSH };
    return ask(w, &r);
}

int dbm_fusewb_reset(struct dbm_fusewb *w, uint64_t ino, int64_t size)
{
    struct req r = { .ino = ino, .size = size, .op = OP_RESET };
    return ask(w, &r);
}

int dbm_fusewb_is_own(const struct dbm_fusewb *w, pid_t tid)
{
    if (tid <= 0)
        return 0;
    return syscall(SYS_tgkill, getpid(), tid, 0) == 0 ||
           (w && w->helper > 0 && syscall(SYS_tgkill, w->helper, tid, 0) == 0);
}

void dbm_fusewb_report(const struct dbm_fusewb *w, struct dbm_sbuf *b)
{
    dbm_stext_kv(b, "fuse_writeback", w ? &w->why : NULL);
}
