"""speedtest1: SQLite's own benchmark program, on a native directory and through the mount."""

import os
import subprocess
import time

import benchlib as B

TARGETS = {"wal": 1.5, "delete": 2.0}


def build_speedtest1():
    exe = os.path.join(B.CACHE, "speedtest1")
    if not os.access(exe, os.X_OK):
        B.log("building speedtest1 into", B.CACHE)
        B.run(["/work/shared/tools/build-speedtest1", B.CACHE], stdout=subprocess.DEVNULL)
    return exe


def one(exe, size, mode, path):
    for sfx in ("", "-journal", "-wal", "-shm"):
        if os.path.exists(path + sfx):
            os.unlink(path + sfx)
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
    with B.Workdir("speedtest1") as w:
        m = w.start()
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
        out.append(("daemon_peak_rss_kb", str(B.proc_status(m.pid, "VmHWM"))))
    return out
