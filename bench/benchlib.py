"""Shared helpers of the dbmovefs benchmarks (bench/run): mounts, timing, machine facts, results."""

import datetime
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
DAEMON = os.path.join(ROOT, "build", "src", "dbmovefs")   # replaced by use_daemon()
IO_URING = os.environ.get("BENCH_IO_URING", "auto")        # -o io_uring=...; bench/run sets the kernel switch
# 1: the daemon stays in the bench's session (and so its scheduler autogroup), as when an
# application starts it; default: a session of its own, as a system service is
SAME_SESSION = os.environ.get("BENCH_SAME_SESSION", "0") == "1"
WAKEUP = os.environ.get("BENCH_WAKEUP", "local")           # -o wakeup=...
TRANSPORTS = []                                             # fuse_transport of each mount made
WAKEUPS = []                                                # fuse_wakeup of each mount made
PASSTHROUGH = os.environ.get("BENCH_PASSTHROUGH", "auto")  # -o passthrough=...
PASSTHROUGHS = []                                           # fuse_passthrough of each mount made
WRITEBACK = os.environ.get("BENCH_WRITEBACK", "auto")      # -o writeback=...
WRITEBACKS = []                                             # fuse_writeback of each mount made
CACHE = os.path.join(BENCH, ".cache")
REVISION = None   # what the daemon under test was built from (set by use_daemon)


def log(*a):
    print("[bench]", *a, file=sys.stderr, flush=True)


class Interrupted(BaseException):
    pass


def _on_signal(signum, frame):
    raise Interrupted("signal %d" % signum)


def install_signal_handlers():
    """SIGTERM/SIGHUP become an exception so that every `finally` (unmount, rm) runs."""
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _on_signal)


def run(cmd, check=True, **kw):
    return subprocess.run(cmd, check=check, **kw)


def build_head():
    """Build git HEAD (committed code only) under bench/.cache/head-REV; return (binary, rev)."""
    rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short=12", "HEAD"],
                         capture_output=True, text=True, check=True).stdout.strip()
    d = os.path.join(CACHE, "head-" + rev)
    exe = os.path.join(d, "build", "src", "dbmovefs")
    if not os.access(exe, os.X_OK):
        log("building HEAD %s into %s" % (rev, os.path.relpath(d, ROOT)))
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        git = subprocess.Popen(["git", "-C", ROOT, "archive", "HEAD"], stdout=subprocess.PIPE)
        run(["tar", "-x", "-C", d], stdin=git.stdout)
        git.wait()
        run(["meson", "setup", "build"], cwd=d, stdout=subprocess.DEVNULL)
        run(["ninja", "-C", "build"], cwd=d, stdout=subprocess.DEVNULL)
    return exe, rev + " (clean build of HEAD)"


def use_daemon(path, rev, workdir):
    """Benchmark a private copy of the binary, so a concurrent rebuild cannot change it mid-run."""
    global DAEMON, REVISION
    os.makedirs(workdir, exist_ok=True)
    DAEMON = os.path.join(workdir, "dbmovefs")
    shutil.copy2(path, DAEMON)
    REVISION = rev


def git_rev():
    try:
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no",
                                "--", "src", "meson.build"],
                               capture_output=True, text=True).stdout.strip()
        return rev + (" (build/ from a working tree with uncommitted src changes)" if dirty else "")
    except Exception:
        return "unknown"


def machine_facts():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "unknown"
    try:
        with open("/proc/meminfo") as f:
            mem = f.readline().split(":", 1)[1].strip()
    except OSError:
        pass
    return [
        ("date", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")),
        ("machine_nproc", str(os.cpu_count())),
        ("machine_kernel", platform.release()),
        ("machine_cpu", cpu),
        ("machine_memory", mem),
        ("dbmovefs_revision", REVISION or git_rev()),
        ("sqlite_version", sqlite3.sqlite_version),
        ("fuse_transport", " ".join(sorted(set(TRANSPORTS))) or "none"),
        ("fuse_wakeup", " | ".join(sorted(set(WAKEUPS))) or "none"),
        ("fuse_passthrough", " | ".join(sorted(set(PASSTHROUGHS))) or "none"),
        ("fuse_writeback", " | ".join(sorted(set(WRITEBACKS))) or "none"),
        ("daemon_session", "the bench's own (BENCH_SAME_SESSION=1)" if SAME_SESSION else "its own (setsid)"),
    ]


def median(xs):
    return statistics.median(xs)


def fmt(x, nd=3):
    return ("%." + str(nd) + "f") % x


def write_results(outdir, name, pairs):
    os.makedirs(outdir, exist_ok=True)
    path = os.path.join(outdir, name + ".txt")
    with open(path, "w") as f:
        for k, v in machine_facts() + pairs:
            f.write("%s: %s\n" % (k, v))
    log("wrote", os.path.relpath(path, ROOT))
    with open(path) as f:
        sys.stderr.write(f.read())
    return path


def proc_status(pid, key):
    """Value in kB of a /proc/PID/status field (VmHWM, VmRSS), or None."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_hwm(pid):
    """Reset the peak RSS (VmHWM) of pid to its current RSS (Linux >= 4.0)."""
    with open("/proc/%d/clear_refs" % pid, "w") as f:
        f.write("5")


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def keep_log(mount, outdir, tag):
    """Copy the daemon log next to the results (bench/results/tmp/, not committed)."""
    d = os.path.join(outdir, "tmp") if not outdir.rstrip("/").endswith("tmp") else outdir
    os.makedirs(d, exist_ok=True)
    dst = os.path.join(d, "%s-daemon.log" % tag)
    shutil.copyfile(mount.logpath, dst)
    log("daemon log kept in", os.path.relpath(dst, ROOT))


class Workdir:
    """A temporary directory holding the state dir, the mountpoint and the native reference
    directory (all on the same filesystem), removed at the end."""

    def __init__(self, tag):
        base = os.environ.get("BENCH_TMPDIR") or None
        self.path = tempfile.mkdtemp(prefix="dbmovefs-bench-%s." % tag, dir=base)
        self.state = os.path.join(self.path, "state")
        self.mnt = os.path.join(self.path, "mnt")
        self.native = os.path.join(self.path, "native")
        os.mkdir(self.mnt)
        os.mkdir(self.native)
        run([DAEMON, "--init", self.state], stdout=subprocess.DEVNULL)
        self.mount = None

    def start(self):
        self.mount = Mount(self.state, self.mnt, os.path.join(self.path, "daemon.log"))
        return self.mount

    def close(self):
        try:
            if self.mount:
                self.mount.stop()
        finally:
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def parse_kv(text):
    """`key: value` lines (a mount's text file, a helper program's output), as a dict."""
    return dict(l.split(": ", 1) for l in text.splitlines() if ": " in l)


def read_kv(path):
    """The `key: value` lines of one of the mount's text files, as a dict."""
    with open(path) as f:
        return parse_kv(f.read())


def remove_db(path):
    """Removes a database and the files SQLite keeps beside it, where they exist."""
    for sfx in ("", "-journal", "-wal", "-shm"):
        if os.path.exists(path + sfx):
            os.unlink(path + sfx)


class Mount:
    """dbmovefs -f STATE MNT in the background (log kept in a file so errors can be shown)."""

    def __init__(self, state, mnt, logpath):
        self.state, self.mnt, self.logpath = state, mnt, logpath
        self.logf = open(logpath, "a")
        opts = "io_uring=%s,wakeup=%s,passthrough=%s,writeback=%s" % (IO_URING, WAKEUP, PASSTHROUGH, WRITEBACK)
        self.proc = subprocess.Popen([DAEMON, "-f", "-o", opts, state, mnt], stdout=self.logf,
                                     stderr=subprocess.STDOUT, start_new_session=not SAME_SESSION)
        deadline = time.time() + 20
        while not os.path.exists(os.path.join(mnt, "status")):
            if self.proc.poll() is not None:
                raise RuntimeError("dbmovefs exited with %s:\n%s" % (self.proc.returncode, self.log_tail()))
            if time.time() > deadline:
                self.stop()
                raise RuntimeError("mount not ready after 20 s")
            time.sleep(0.05)
        with open(os.path.join(state, "lock")) as f:
            self.pid = int(f.read().split()[0])
        if self.pid != self.proc.pid:
            log("note: lock pid %d != started pid %d" % (self.pid, self.proc.pid))
        self.db = os.path.join(mnt, "prod", "db")
        if IO_URING == "auto":  # the kernel switches to the queues a moment after INIT
            deadline = time.time() + 5
            while self.root_status().get("fuse_transport") != "io_uring" and time.time() < deadline:
                time.sleep(0.05)
        TRANSPORTS.append(self.root_status().get("fuse_transport", "unknown"))
        WAKEUPS.append(self.root_status().get("fuse_wakeup", "unknown").split(" (")[0])
        PASSTHROUGHS.append(self.root_status().get("fuse_passthrough", "unknown").split(" (")[0])
        WRITEBACKS.append(self.root_status().get("fuse_writeback", "unknown").split(" (")[0])

    def root_status(self):
        return read_kv(os.path.join(self.mnt, "status"))

    def log_tail(self, n=40):
        try:
            with open(self.logpath) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def alive(self):
        return self.proc.poll() is None

    def env_status(self, env="prod"):
        return read_kv(os.path.join(self.mnt, env, "status"))

    def stop(self):
        if self.proc is None:
            return
        for attempt in range(50):
            r = subprocess.run(["fusermount3", "-u", self.mnt], capture_output=True)
            if r.returncode == 0 or self.proc.poll() is not None:
                break
            time.sleep(0.2)
        else:
            subprocess.run(["fusermount3", "-uz", self.mnt], capture_output=True)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            log("dbmovefs %d did not exit after unmount; sending SIGTERM" % self.proc.pid)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.returncode not in (0, None):
            log("dbmovefs exited with status %s; log tail:\n%s" % (self.proc.returncode, self.log_tail()))
        self.exit_status = self.proc.returncode
        self.proc = None
        self.logf.close()
        # anything alarming in the daemon log is worth showing
        bad = [l for l in open(self.logpath) if "[error]" in l or "[warning]" in l]
        if bad:
            log("daemon log has %d error/warning lines, first ones:\n%s" % (len(bad), "".join(bad[:10])))
