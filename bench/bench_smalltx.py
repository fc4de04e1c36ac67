"""Small transactions: one row per transaction, synchronous=FULL, native vs mount, DELETE and WAL,
with the block device's write and flush requests per commit on each side. Then one more run
through the mount under `strace -c -f -p DAEMON` to count the daemon's system calls per commit
(not timed)."""

import os
import re
import signal
import subprocess
import time

import benchlib as B

PY = "/usr/bin/python3"
CLIENT = os.path.join(B.BENCH, "smalltx_client.py")
TARGETS = {"delete": 1.0, "wal": 0.8}


def disk_counts(path):
    """(write requests, flush requests) completed so far by the block device holding path
    (/sys/dev/block/MAJ:MIN/stat; the whole device, so other writers count too), or None."""
    st = os.stat(path)
    try:
        with open("/sys/dev/block/%d:%d/stat" % (os.major(st.st_dev), os.minor(st.st_dev))) as f:
            v = [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return None
    return (v[4], v[15] if len(v) > 15 else 0)  # writes completed; flushes completed (Linux 5.5+)


def one(path, mode, n, disk=None, disk_path=None):
    """commits/s of one client run; disk: a list that gets (device writes, flushes) per commit
    of the device holding disk_path (the state directory, for a mount)."""
    B.remove_db(path)
    before = disk_counts(disk_path) if disk_path else None
    r = subprocess.run([PY, CLIENT, path, mode, str(n)], capture_output=True, text=True)
    after = disk_counts(disk_path) if disk_path else None
    if r.returncode != 0:
        raise RuntimeError("smalltx client on %s failed (%d): %s %s" % (path, r.returncode, r.stdout, r.stderr))
    dt, rows = r.stdout.split()
    if int(rows) != n:
        raise RuntimeError("smalltx on %s: %s rows, expected %d" % (path, rows, n))
    if disk is not None and before and after:
        disk.append(((after[0] - before[0]) / n, (after[1] - before[1]) / n))
    return n / float(dt)


def disk_pairs(mode, side, disk):
    """Result lines for the device writes and flushes per commit (medians over the runs)."""
    if not disk:
        return []
    return [("%s_%s_device_writes_per_commit" % (mode, side), B.fmt(B.median([d[0] for d in disk]), 2)),
            ("%s_%s_device_flushes_per_commit" % (mode, side), B.fmt(B.median([d[1] for d in disk]), 2))]


def strace_counts(m, path, mode, n):
    """Run the client through the mount while strace -c follows the daemon; per-commit counts."""
    sout = os.path.join(os.path.dirname(m.logpath), "strace-%s.txt" % mode)
    st = subprocess.Popen(["strace", "-c", "-f", "-o", sout, "-p", str(m.pid)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # let strace attach to every thread
    try:
        rate = one(path, mode, n)
    finally:
        st.send_signal(signal.SIGINT)
        st.wait(timeout=30)
    counts = {}
    with open(sout) as f:
        for line in f:
            p = line.split()
            # % time, seconds, usecs/call, calls, [errors], syscall
            if len(p) >= 5 and re.match(r"^[0-9.]+$", p[0]) and p[-1] != "total":
                counts[p[-1]] = int(p[3])
    return rate, counts


def bench(outdir, quick):
    n = int(os.environ.get("BENCH_SMALLTX_N", "50" if quick else "2000"))
    reps = 1 if quick else int(os.environ.get("BENCH_REPS", "3"))
    ns = max(20, n // 4)
    out = [("benchmark", "one INSERT per transaction (BEGIN; INSERT 100-byte row; COMMIT), "
            "synchronous=FULL, /usr/bin/python3 sqlite3, %d transactions, native vs mount "
            "alternating, median of %d" % (n, reps)),
           ("transactions", str(n)), ("repetitions", str(reps)),
           ("reference_litefs_tx_per_sec", "~100 (documented by LiteFS)"),
           ("goal_mount_tx_per_sec", "> 1000")]
    with B.Workdir("smalltx") as w:
        m = w.start()
        for mode in ("delete", "wal"):
            nat, mnt, nat_disk, mnt_disk = [], [], [], []
            for i in range(reps):
                nat.append(one(os.path.join(w.native, "tx-%s-%d.db" % (mode, i)), mode, n, nat_disk, w.native))
                B.log("smalltx %s native run %d: %.0f tx/s" % (mode, i + 1, nat[-1]))
                name = "tx-%s-%d.db" % (mode, i)
                mnt.append(one(os.path.join(m.db, name), mode, n, mnt_disk, w.state))
                B.log("smalltx %s mount  run %d: %.0f tx/s" % (mode, i + 1, mnt[-1]))
                commits = int(m.env_status().get("db.%s.commits" % name, "0"))
                if commits < n:
                    raise RuntimeError("mount recorded %d commits for %s, expected >= %d" % (commits, name, n))
            ratio = B.median(mnt) / B.median(nat)
            out += [
                ("%s_native_tx_per_sec" % mode, " ".join(B.fmt(x, 0) for x in nat)),
                ("%s_mount_tx_per_sec" % mode, " ".join(B.fmt(x, 0) for x in mnt)),
                ("%s_native_median_tx_per_sec" % mode, B.fmt(B.median(nat), 0)),
                ("%s_mount_median_tx_per_sec" % mode, B.fmt(B.median(mnt), 0)),
                ("%s_ratio_mount_over_native" % mode, B.fmt(ratio, 2)),
                ("%s_target" % mode, ">= %.1f" % TARGETS[mode]),
                ("%s_meets_target" % mode, "yes" if ratio >= TARGETS[mode] else "no"),
                ("%s_mount_over_1000_tx_per_sec" % mode, "yes" if B.median(mnt) > 1000 else "no"),
            ] + disk_pairs(mode, "native", nat_disk) + disk_pairs(mode, "mount", mnt_disk)
        # system calls of the daemon per commit, from a separate (untimed) run under strace
        for mode in ("delete", "wal"):
            rate, counts = strace_counts(m, os.path.join(m.db, "strace-%s.db" % mode), mode, ns)
            keys = ["fsync", "fdatasync", "pwrite64", "pread64", "write", "read", "writev",
                    "openat", "close", "fstat", "newfstatat", "statx", "fcntl", "ftruncate",
                    "unlink", "unlinkat", "futex"]
            per = ["%s=%.2f" % (k, counts[k] / ns) for k in keys if k in counts]
            out.append(("%s_strace_transactions" % mode, str(ns)))
            out.append(("%s_daemon_syscalls_per_commit" % mode, " ".join(per)))
            top = sorted(counts.items(), key=lambda kv: -kv[1])[:12]
            out.append(("%s_daemon_top_syscalls_total" % mode, " ".join("%s=%d" % kv for kv in top)))
        out.append(("daemon_peak_rss_kb", str(B.proc_status(m.pid, "VmHWM"))))
    return out
