/* main.c - options, objects, the FUSE loop, unwinding. Nothing else. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon.h"
#include "dbm_config.h"
#include "fsops.h"
#include "fusepass.h"
#include "fuseuring.h"
#include "fusewb.h"
#include "log.h"

static const char usage[] =
    "usage: dbmovefs [options] STATE_DIR MOUNTPOINT\n"
    "       dbmovefs --init STATE_DIR\n"
    "\n"
    "Mounts the database environments declared in STATE_DIR/dbmovefs.conf.\n"
    "\n"
    "  --init DIR       create a state directory with an example config\n"
    "                   (environments prod, uat, dev); refuses to overwrite one\n"
    "  -f               stay in the foreground, log to stderr\n"
    "  -d               debug: foreground, debug log level and FUSE tracing\n"
    "  -s               single-threaded (and io_uring=off unless asked for)\n"
    "  -o OPT[,OPT...]  mount options: allow_other, default FUSE options, and\n"
    "                   io_uring=auto|off: serve requests through per-CPU io_uring\n"
    "                   queues when the kernel allows it (auto, the default),\n"
    "                   or always through /dev/fuse (off)\n"
    "                   wakeup=local|any: with io_uring, a reply wakes the\n"
    "                   application on the CPU that served it (local, the\n"
    "                   default; needs CAP_SYS_NICE and /proc/pressure/cpu) or\n"
    "                   where the scheduler likes\n"
    "                   writeback=auto|off: the kernel caches writes to databases\n"
    "                   and WALs and sends them in large writes (auto, the\n"
    "                   default; needs CAP_DAC_READ_SEARCH and 8 threads or\n"
    "                   more) or each as SQLite makes it (off)\n"
    "                   passthrough=auto|off: without the writeback cache, WAL\n"
    "                   and journal files are read and written by the kernel\n"
    "                   without a request each (auto, the default; needs\n"
    "                   CAP_SYS_ADMIN) or through the daemon (off)\n"
    "  -h, --help       this help\n"
    "  -V, --version    print the version\n"
    "\n"
    "Without -f, returns once the mount is ready (exit status 0) or failed (1);\n"
    "logs then go to syslog. Unmount with: fusermount3 -u MOUNTPOINT\n"
    "SIGHUP reloads the config; SIGTERM and SIGINT unmount and exit.\n";

struct cli {
    const char *state_dir;
    const char *mountpoint;
    int npos;
    char *io_uring; /* -o io_uring=MODE, allocated by fuse_opt_parse */
    char *wakeup;   /* -o wakeup=MODE, likewise */
    char *passthrough; /* -o passthrough=MODE, likewise */
    char *writeback;   /* -o writeback=MODE, likewise */
    unsigned max_threads; /* -o max_threads=N; 0: not given */
};

/* max_threads is taken here because fuse_parse_cmdline() reports its own
 * default (10) as if it had been given */
static const struct fuse_opt cli_opts[] = {
    { "io_uring=%s", offsetof(struct cli, io_uring), 0 },
    { "wakeup=%s", offsetof(struct cli, wakeup), 0 },
    { "passthrough=%s", offsetof(struct cli, passthrough), 0 },
    { "writeback=%s", offsetof(struct cli, writeback), 0 },
    { "max_threads=%u", offsetof(struct cli, max_threads), 0 },
    FUSE_OPT_END,
};

/* /dev/fuse loop threads unless -o max_threads=N: each blocked lock waiter
 * holds one, and the unlock that frees it needs another */
#define DEFAULT_MAX_THREADS 64

static int opt_proc(void *data, const char *arg, int key, struct fuse_args *outargs)
{
    struct cli *c = data;
    (void)outargs;
    if (key == FUSE_OPT_KEY_NONOPT) {
        if (c->npos == 0)
            c->state_dir = arg;
        else if (c->npos == 1)
            c->mountpoint = arg;
        c->npos++;
        return 0; /* consumed: libfuse must not see our positionals */
    }
    return 1;
}

/* The mountpoint must be an existing, empty directory. */
static int check_mountpoint(const char *mp)
{
    struct stat st;
    if (stat(mp, &st) < 0) {
        fprintf(stderr, "dbmovefs: mountpoint %s: %s\n", mp, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        fprintf(stderr, "dbmovefs: mountpoint %s is not a directory\n", mp);
        return -1;
    }
    DIR *dir = opendir(mp);
    if (!dir) {
        fprintf(stderr, "dbmovefs: mountpoint %s: %s\n", mp, strerror(errno));
        return -1;
    }
    struct dirent *de;
    int n = 0;
    while ((de = readdir(dir)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
            n++;
    closedir(dir);
    if (n) {
        fprintf(stderr, "dbmovefs: mountpoint %s is not empty (or is already mounted): refusing to hide its contents\n",
                mp);
        return -1;
    }
    return 0;
}

static int reload_stop; /* __atomic: set by main, read by the reload thread */

/* SIGHUP is blocked in every thread; this one waits for it and reloads.
 * main stops it (reload_stop, then a SIGHUP to it) before tearing down. */
static void *reload_thread(void *arg)
{
    struct dbm_daemon *d = arg;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGHUP);
    for (;;) {
        int sig;
        if (sigwait(&set, &sig) != 0 || sig != SIGHUP)
            continue;
        if (__atomic_load_n(&reload_stop, __ATOMIC_ACQUIRE))
            break;
        dbm_daemon_reload(d);
    }
    return NULL;
}

/* The page store keeps a descriptor per log segment it has read: allow as
 * many as the hard limit does rather than the usual 1024. */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            dbm_warn("cannot raise the open-file limit: %s", strerror(errno));
    }
}

/* Forks; the parent waits for the child's readiness byte and exits with
 * its verdict. Returns the write end of the pipe in the child. */
static int daemonize(void)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) {
        perror("dbmovefs: pipe");
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("dbmovefs: fork");
        return -1;
    }
    if (pid > 0) {
        char c = '1';
        close(p[1]);
        ssize_t n;
        do
            n = read(p[0], &c, 1);
        while (n < 0 && errno == EINTR);
        _exit(n == 1 && c == '0' ? 0 : 1);
    }
    close(p[0]);
    setsid();
    if (chdir("/") < 0)
        perror("dbmovefs: chdir");
    return p[1];
}

static void detach_stdio(void)
{
    int fd = open("/dev/null", O_RDWR);
    if (fd >= 0) {
        dup2(fd, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        if (fd > 2)
            close(fd);
    }
}

int main(int argc, char *argv[])
{
    if (argc == 3 && strcmp(argv[1], "--init") == 0) {
        char err[1024];
        if (dbm_daemon_init_state(argv[2], err, sizeof err) < 0) {
            fprintf(stderr, "dbmovefs: %s\n", err);
            return 1;
        }
        printf("created %s/%s with environments prod (production), uat (sandbox), dev (devtest)\n"
               "mount it with: dbmovefs %s MOUNTPOINT\n", argv[2], DBM_CONFIG_FILE, argv[2]);
        return 0;
    }
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(usage, stdout);
            return 0;
        }
        if (strcmp(argv[i], "--version") == 0 || strcmp(argv[i], "-V") == 0) {
            printf("dbmovefs %s (libfuse %s)\n", DBM_VERSION, fuse_pkgversion());
            return 0;
        }
        if (strcmp(argv[i], "--init") == 0) {
            fprintf(stderr, "dbmovefs: --init takes exactly one argument: dbmovefs --init STATE_DIR\n");
            return 2;
        }
    }
    struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
    struct cli cli = { 0 };
    struct fuse_cmdline_opts opts;
    if (fuse_opt_parse(&args, &cli, cli_opts, opt_proc) < 0 || fuse_parse_cmdline(&args, &opts) < 0)
        return 2;
    /* the two-value -o options, each the first value or the second (or not
     * given: -1); the first bad one is refused, saying what is accepted */
    const struct {
        const char *name, *value, *first, *second;
    } choice[] = {
        { "io_uring", cli.io_uring, "auto", "off" },
        { "wakeup", cli.wakeup, "local", "any" },
        { "passthrough", cli.passthrough, "auto", "off" },
        { "writeback", cli.writeback, "auto", "off" },
    };
    int pick[sizeof choice / sizeof *choice], refused = 0;
    for (size_t i = 0; i < sizeof choice / sizeof *choice && !refused; i++) {
        const char *v = choice[i].value;
        pick[i] = !v ? -1 : !strcmp(v, choice[i].first) ? 0 : !strcmp(v, choice[i].second) ? 1 : -2;
        if ((refused = pick[i] == -2))
            fprintf(stderr, "dbmovefs: -o %s=%s: expected %s=%s or %s=%s\n", choice[i].name, v, choice[i].name,
                    choice[i].first, choice[i].name, choice[i].second);
    }
    /* auto by default: a request served on its caller's CPU costs as much as
     * a /dev/fuse round trip or far less (when the daemon shares the
     * caller's scheduling group; bench/README.md); it falls back to
     * /dev/fuse by itself */
    enum dbm_uring_mode umode = pick[0] == 0 ? DBM_URING_AUTO
                                : pick[0] == 1 || opts.singlethread ? DBM_URING_OFF /* -s: one thread, as asked */
                                                                    : DBM_URING_AUTO;
    enum dbm_wakeup_mode wmode = pick[1] == 1 ? DBM_WAKEUP_ANY : DBM_WAKEUP_LOCAL;
    enum dbm_pass_mode pmode = pick[2] == 1 ? DBM_PASS_OFF : DBM_PASS_AUTO;
    enum dbm_wb_mode wbmode = pick[3] == 1 ? DBM_WB_OFF : DBM_WB_AUTO;
    free(cli.io_uring);
    free(cli.wakeup);
    free(cli.passthrough);
    free(cli.writeback);
    if (refused) {
        fuse_opt_free_args(&args);
        return 2;
    }
    if (cli.npos != 2) {
        fprintf(stderr, "dbmovefs: expected STATE_DIR and MOUNTPOINT, got %d argument%s\n%s", cli.npos,
                cli.npos == 1 ? "" : "s", usage);
        fuse_opt_free_args(&args);
        return 2;
    }
    /* in the background only warnings reach the terminal before the log
     * moves to syslog; in the foreground the config's level applies at once */
    dbm_log_setup(0, opts.debug ? DBM_LOG_DEBUG : opts.foreground ? DBM_LOG_INFO : DBM_LOG_WARN);
    raise_fd_limit();
    if (check_mountpoint(cli.mountpoint) < 0)
        return 1;
    char *mountpoint = realpath(cli.mountpoint, NULL);
    struct dbm_daemon *d = NULL;
    char err[1024];
    unsigned threads = opts.singlethread ? 0 : cli.max_threads ? cli.max_threads : DEFAULT_MAX_THREADS;
    struct dbm_fusewb *wb = mountpoint ? dbm_fusewb_create(wbmode, threads, mountpoint) : NULL;
    if (!wb) {
        fprintf(stderr, "dbmovefs: %s: %s\n", cli.mountpoint, mountpoint ? strerror(ENOMEM) : strerror(errno));
        free(mountpoint);
        return 1;
    }
    if (dbm_fusewb_wanted(wb))
        pmode = DBM_PASS_WRITEBACK; /* the kernel does not combine the two */
    if (dbm_daemon_open(cli.state_dir, dbm_fusewb_wanted(wb), &d, err, sizeof err) < 0) {
        fprintf(stderr, "dbmovefs: %s\n", err);
        dbm_fusewb_destroy(wb);
        free(mountpoint);
        return 1;
    }
    d->wb = wb;
    enum dbm_log_level level = opts.debug ? DBM_LOG_DEBUG : (enum dbm_log_level)d->cfg->log_level;
    if (opts.foreground)
        dbm_log_set_level(level);
    int ready = -1, ret = 1;
    if (!opts.foreground) {
        if ((ready = daemonize()) < 0)
            goto out_daemon;
        dbm_daemon_record_pid(d);
    }
    /* before any thread: it forks */
    int rc = dbm_fusewb_start(wb);
    if (rc < 0) {
        fprintf(stderr, "dbmovefs: cannot start the writeback cache's helper process: %s (-o writeback=off does "
                        "without it)\n", strerror(-rc));
        goto out_daemon;
    }
    /* SIGHUP goes to the reload thread only: block it before any thread starts */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    struct fuse_session *se = dbm_fs_session_new(d, &args, ready);
    if (!se)
        goto out_daemon;
    if (fuse_set_signal_handlers(se) < 0)
        goto out_session;
    signal(SIGHUP, SIG_DFL); /* libfuse hooks SIGHUP to exit; ours reloads (blocked, sigwait'ed) */
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    pthread_t rt;
    int have_rt = pthread_create(&rt, NULL, reload_thread, d) == 0;
    if (fuse_session_mount(se, mountpoint) != 0) {
        fprintf(stderr, "dbmovefs: cannot mount on %s (is /dev/fuse usable and fusermount3 installed?)\n", mountpoint);
        goto out_signals;
    }
    dbm_notice("dbmovefs %s serving %s on %s", DBM_VERSION, d->state_dir, mountpoint);
    dbm_fusewb_mounted(wb);
    uint64_t max_dirty = dbm_fusewb_cap_dirty(wb, DBM_WB_MAX_DIRTY);
    dbm_daemon_reserve(d, max_dirty ? max_dirty : DBM_WB_MAX_DIRTY); /* unknown: at most that, as set */
    /* before the loop: the custom I/O must be in place when INIT is answered */
    struct dbm_fusepass *pass = dbm_fusepass_create(fuse_session_fd(se), pmode);
    d->pass = pass;
    struct dbm_uring *uring = dbm_uring_create(se, umode, wmode);
    if (uring)
        dbm_uring_start(uring, DBM_FUSE_MAX_WRITE, pass);
    d->uring = uring;
    if (dbm_daemon_start_maintenance(d, 60) < 0) /* retention now, then every minute */
        dbm_warn("retention thread not started: history is trimmed at the next start only");
    if (!opts.foreground) {
        detach_stdio();
        dbm_log_setup(1, level);
    }
    if (opts.singlethread) {
        ret = fuse_session_loop(se);
    } else {
        struct fuse_loop_config *lc = fuse_loop_cfg_create();
        fuse_loop_cfg_set_clone_fd(lc, opts.clone_fd);
        if (opts.max_idle_threads != UINT_MAX) /* unset is -1: keep libfuse's default */
            fuse_loop_cfg_set_idle_threads(lc, opts.max_idle_threads);
        fuse_loop_cfg_set_max_threads(lc, cli.max_threads ? cli.max_threads : DEFAULT_MAX_THREADS);
        ret = fuse_session_loop_mt(se, lc);
        fuse_loop_cfg_destroy(lc);
    }
    /* the queue threads go first: unmounting closes the /dev/fuse fd they
     * submit on, and its number may be reused by then (EBADF, or a command
     * sent to another file). Joined, nothing reads status any more. */
    dbm_uring_destroy(uring);
    d->uring = NULL;
    fuse_session_unmount(se);
    d->pass = NULL; /* the livedbs may still close backing ids: they see NULL and leave it to the kernel */
    dbm_fusepass_destroy(pass);
    dbm_notice("unmounted %s; exiting", mountpoint);
    /* libfuse reports the signal that ended the loop; a requested shutdown is a clean exit */
    ret = (ret == 0 || ret == SIGTERM || ret == SIGINT) ? 0 : 1;
out_signals:
    if (have_rt) {
        __atomic_store_n(&reload_stop, 1, __ATOMIC_RELEASE);
        pthread_kill(rt, SIGHUP);
        pthread_join(rt, NULL);
    }
    fuse_remove_signal_handlers(se);
out_session:
    fuse_session_destroy(se);
out_daemon:
    dbm_daemon_close(d);
    dbm_fusewb_destroy(wb);
    free(mountpoint);
    free(opts.mountpoint);
    fuse_opt_free_args(&args);
    return ret;
}
