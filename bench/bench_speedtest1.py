"""speedtest1: SQLite's own benchmark program, on a native directory and through the mount."""

import os
import re
import shutil
import subprocess
import tempfile
import time

import benchlib as B

TARGETS = {"wal": 1.5, "delete": 2.0}


def build_speedtest1():
    exe = os.path.join(B.CACHE, "speedtest1")
    if not os.access(exe, os.X_OK):
        B.log("building speedtest1 into", B.CACHE)
        B.run(["/work/shared/tools/build-speedtest1", B.CACHE], stdout=subprocess.DEVNULL)
    return exe


def build_rtt():
    exe = os.path.join(B.CACHE, "rtt")
    src = os.path.join(B.BENCH, "rtt.c")
    if not os.access(exe, os.X_OK) or os.path.getmtime(exe) < os.path.getmtime(src):
        os.makedirs(B.CACHE, exist_ok=True)
        B.run(["cc", "-O2", "-o", exe, src])
    return exe


def request_costs(native_dir, m):
    """Pipe ping-pong on one CPU and across two, and a lock round trip (F_SETLK) on a native
    SQLite file and through the mount: what a request costs on this machine."""
    rtt = build_rtt()
    out = {}
    for side, d in (("native", native_dir), ("mount", m.db)):
        path = os.path.join(d, "rtt.db")
        B.run(["sqlite3", path, "create table if not exists t(x)"])
        r = B.parse_kv(B.run([rtt, "file", path, "50000"], capture_output=True, text=True).stdout)
        out["setlk_%s_us" % side] = r["setlk_us"]
        os.unlink(path)
    # last: two busy processes on one CPU are CPU pressure, which moves the daemon's queue
    # threads off wakeup=local for a while (cpuguard.c)
    out.update(B.parse_kv(B.run([rtt, "pingpong", "100000"], capture_output=True, text=True).stdout))
    deadline = time.time() + 15
    while not m.root_status().get("fuse_wakeup", "local").startswith(B.WAKEUP) and time.time() < deadline:
        time.sleep(0.2)
    B.log("request costs (us): " + " ".join("%s=%s" % kv_ for kv_ in sorted(out.items())))
    return out


def count_requests(exe, size, mode, path):
    """FUSE requests of one (untimed) speedtest1 run through the mount, by opcode, from the
    kernel's fuse:fuse_request_send tracepoint (perf); None without perf."""
    perf = shutil.which("perf")
    if not perf:
        return None
    with tempfile.TemporaryDirectory(prefix="dbmovefs-bench-perf.") as d:
        data = os.path.join(d, "perf.data")
        B.remove_db(path)
        r = subprocess.run([perf, "record", "-q", "-a", "-e", "fuse:fuse_request_send", "-o", data, "--",
                            exe, "--size", str(size), "--journal", mode, path], capture_output=True, text=True)
        if r.returncode != 0:
            B.log("perf record failed (%d): %s" % (r.returncode, r.stderr.strip()[-300:]))
            return None
        counts = {}
        p = subprocess.Popen([perf, "script", "-i", data, "-F", "trace"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
        pat = re.compile(r"\((FUSE_[A-Z_]+)\)")
        for line in p.stdout:
            m = pat.search(line)
            if m:
                counts[m.group(1)] = counts.get(m.group(1), 0) + 1
        p.wait()
        return counts


def libfuse_reference(exe, size, mode, native_dir):
    """One speedtest1 run through libfuse's own example/passthrough (BENCH_LIBFUSE=1): the
    scale the issue gives for its targets, measured on this machine."""
    pt = B.run([os.path.join(B.BENCH, "build-libfuse-passthrough"), B.CACHE], capture_output=True,
               text=True).stdout.strip().splitlines()[-1]
    mnt = tempfile.mkdtemp(prefix="dbmovefs-bench-libfuse.")
    proc = subprocess.Popen([pt, "-f", mnt], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=not B.SAME_SESSION)
    try:
        deadline = time.time() + 10
        while not os.path.ismount(mnt):
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("libfuse passthrough did not mount")
            time.sleep(0.05)
        path = mnt + os.path.join(native_dir, "st-libfuse-%s.db" % mode)
        dt = one(exe, size, mode, path)
        B.remove_db(path)
        return dt
    finally:
        subprocess.run(["fusermount3", "-u", mnt], capture_output=True)
        proc.wait()
        os.rmdir(mnt)


def one(exe, size, mode, path):
    B.remove_db(path)
    t0 = time.monotonic()
    r = subprocess.run([exe, "--size", str(size), "--journal", mode, path],
                       capture_output=True, text=True)
    dt = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError("speedtest1 on %s failed (%d):\n%s%s" % (path, r.returncode,
                                                                    r.stdout[-2000:], r.stderr[-2000:]))
    ic = subprocess.run(["sqlite3", path, "pragma integrity_check"], capture_output=True, text=True)
    if ic.stdout.strip() != "ok":
        raise RuntimeError("integrity_check of %s after speedtest1: %s %s" % (path, ic.stdout, ic.stderr))
    return dt


def bench(outdir, quick):
    exe = build_speedtest1()
    size = int(os.environ.get("BENCH_SPEEDTEST1_SIZE", "5" if quick else "200"))
    reps = 1 if quick else int(os.environ.get("BENCH_REPS", "3"))
    out = [("benchmark", "speedtest1 --size %d --journal MODE DB (SQLite %s test program), "
            "native dir vs mount, alternating, median of %d" % (size, "speedtest1", reps)),
           ("size", str(size)), ("repetitions", str(reps))]
    libfuse = os.environ.get("BENCH_LIBFUSE", "0") == "1"
    with B.Workdir("speedtest1") as w:
        m = w.start()
        costs = request_costs(w.native, m)
        out += sorted(costs.items())
        for mode in ("wal", "delete"):
            nat, mnt, err = [], [], None
            for i in range(reps):
                nat.append(one(exe, size, mode, os.path.join(w.native, "st-%s-%d.db" % (mode, i))))
                B.log("speedtest1 %s native run %d: %.2f s" % (mode, i + 1, nat[-1]))
                os.unlink(os.path.join(w.native, "st-%s-%d.db" % (mode, i)))
                try:
                    mnt.append(one(exe, size, mode, os.path.join(m.db, "st-%s-%d.db" % (mode, i))))
                except RuntimeError as e:
                    # the daemon misbehaved: record it, keep its log, go on with the other mode
                    err = " ".join(str(e).split())
                    B.log("speedtest1 %s mount run %d FAILED: %s" % (mode, i + 1, err))
                    B.keep_log(m, outdir, "speedtest1-%s" % mode)
                    break
                B.log("speedtest1 %s mount  run %d: %.2f s" % (mode, i + 1, mnt[-1]))
            out += [("%s_native_sec" % mode, " ".join(B.fmt(x, 2) for x in nat)),
                    ("%s_native_median_sec" % mode, B.fmt(B.median(nat), 2))]
            if err:
                out += [("%s_mount_error" % mode, err),
                        ("%s_ratio_mount_over_native" % mode, "- (mount run failed)"),
                        ("%s_target" % mode, "<= %.1f" % TARGETS[mode]),
                        ("%s_meets_target" % mode, "no (mount run failed)")]
                continue
            st = m.env_status()
            ratio = B.median(mnt) / B.median(nat)
            out += [
                ("%s_mount_sec" % mode, " ".join(B.fmt(x, 2) for x in mnt)),
                ("%s_mount_median_sec" % mode, B.fmt(B.median(mnt), 2)),
                ("%s_commits_recorded_last_run" % mode, st.get("db.st-%s-%d.db.commits" % (mode, reps - 1), "?")),
                ("%s_ratio_mount_over_native" % mode, B.fmt(ratio, 2)),
                ("%s_target" % mode, "<= %.1f" % TARGETS[mode]),
                ("%s_meets_target" % mode, "yes" if ratio <= TARGETS[mode] else "no"),
            ]
            counts = None if quick else count_requests(exe, size, mode, os.path.join(m.db, "st-%s-count.db" % mode))
            if counts is None:
                out.append(("%s_fuse_requests" % mode, "- (not counted: needs perf and its tracepoint, and no --quick)"))
            else:
                top = sorted(counts.items(), key=lambda x: -x[1])
                out.append(("%s_fuse_requests" % mode, " ".join("%s=%d" % (k[5:].lower(), n) for k, n in top)))
                # the mount's time if a lock round trip were the only extra cost it had
                extra = counts.get("FUSE_SETLK", 0) * (float(costs["setlk_mount_us"]) -
                                                       float(costs["setlk_native_us"])) / 1e6
                out.append(("%s_lock_floor_ratio" % mode, B.fmt((B.median(nat) + extra) / B.median(nat), 2)))
            if libfuse:
                dt = libfuse_reference(exe, size, mode, w.native)
                B.log("speedtest1 %s libfuse passthrough: %.2f s" % (mode, dt))
                out += [("%s_libfuse_passthrough_sec" % mode, B.fmt(dt, 2)),
                        ("%s_libfuse_passthrough_ratio" % mode, B.fmt(dt / B.median(nat), 2))]
        out.append(("daemon_peak_rss_kb", str(B.proc_status(m.pid, "VmHWM"))))
    return out
