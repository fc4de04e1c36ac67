"""Sequential read of a large database (1 GiB by default) through the mount vs a native copy,
cold (caches dropped before each read) and warm, with `cat DB > /dev/null` and a full-table
scan (`sqlite3 DB "select count(*), sum(length(b)) from t"`). The database is built THROUGH the
mount (so it is recorded) in large transactions; the native copy is a byte copy of it.
Reports the daemon's peak RSS (VmHWM) during the build and during the reads."""

import os
import shutil
import subprocess
import time

import benchlib as B

ROW = 4000            # bytes of blob per row (one row per 4 KiB page, no overflow)
SCAN = "select count(*), sum(length(b)) from t"


def build(path, total, batch):
    rows = total // (ROW + 96)
    per = max(1, batch // (ROW + 96))
    done = 0
    t0 = time.monotonic()
    B.run(["sqlite3", path, "create table t(a integer primary key, b blob)"])
    while done < rows:
        k = min(per, rows - done)
        sql = ("begin; with recursive c(i) as (select 1 union all select i+1 from c where i < %d) "
               "insert into t(b) select randomblob(%d) from c; commit;" % (k, ROW))
        B.run(["sqlite3", path, sql])
        done += k
    return rows, time.monotonic() - t0


def timed(cmd, cold):
    if cold:
        B.drop_caches()
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, shell=isinstance(cmd, str))
    dt = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (cmd, r.returncode, r.stderr))
    return dt, r.stdout.strip()


def bench(outdir, quick):
    total = int(os.environ.get("BENCH_SEQREAD_BYTES", str(16 << 20 if quick else 1 << 30)))
    reps = 1 if quick else int(os.environ.get("BENCH_REPS", "3"))
    batch = 64 << 20
    out = [("benchmark", "sequential read of a %d MiB database built through the mount (DELETE mode, "
            "transactions of %d MiB), native byte copy; cat DB > /dev/null and sqlite3 '%s'; "
            "cold = sync + drop_caches before each read; alternating native/mount, median of %d"
            % (total >> 20, batch >> 20, SCAN, reps)),
           ("database_bytes_requested", str(total)), ("repetitions", str(reps))]
    with B.Workdir("seqread") as w:
        m = w.start()
        mdb = os.path.join(m.db, "big.db")
        ndb = os.path.join(w.native, "big.db")
        rss0 = B.proc_status(m.pid, "VmRSS")
        rows, bt = build(mdb, total, batch)
        size = os.path.getsize(mdb)
        st = m.env_status()
        B.log("built %d rows, %d bytes through the mount in %.1f s" % (rows, size, bt))
        out += [("rows", str(rows)), ("database_bytes", str(size)),
                ("build_through_mount_sec", B.fmt(bt, 2)),
                ("build_through_mount_mb_per_sec", B.fmt(size / bt / 1e6, 1)),
                ("build_commits_recorded", st.get("db.big.db.commits", "?")),
                ("build_history_bytes", st.get("db.big.db.history_bytes", "?")),
                ("daemon_rss_kb_before_build", str(rss0)),
                ("daemon_peak_rss_kb_during_build", str(B.proc_status(m.pid, "VmHWM")))]
        t0 = time.monotonic()
        shutil.copyfile(mdb, ndb)
        out.append(("copy_mount_to_native_sec", B.fmt(time.monotonic() - t0, 2)))
        if os.path.getsize(ndb) != size:
            raise RuntimeError("native copy has %d bytes, mount shows %d" % (os.path.getsize(ndb), size))
        # restart the daemon so the reads start from a fresh process (and a fresh peak RSS)
        m.stop()
        m = w.start()
        if os.path.getsize(mdb) != size:
            raise RuntimeError("after remount the database shows %d bytes, not %d" % (os.path.getsize(mdb), size))
        rss_before = B.proc_status(m.pid, "VmRSS")
        hwm_before = B.proc_status(m.pid, "VmHWM")
        B.reset_hwm(m.pid)
        expect = None
        for kind, mk in (("cat", lambda p: "cat '%s' > /dev/null" % p),
                         ("scan", lambda p: ["sqlite3", p, SCAN])):
            for temp in ("cold", "warm"):
                nat, mnt = [], []
                for i in range(reps):
                    for side, p, lst in (("native", ndb, nat), ("mount", mdb, mnt)):
                        if temp == "warm":
                            timed(mk(p), False)  # fill the caches
                        dt, res = timed(mk(p), temp == "cold")
                        if kind == "scan":
                            if expect is None:
                                expect = res
                            elif res != expect:
                                raise RuntimeError("scan result %r on %s differs from %r" % (res, side, expect))
                        lst.append(dt)
                        B.log("seqread %s %s %s run %d: %.2f s" % (kind, temp, side, i + 1, dt))
                key = "%s_%s" % (kind, temp)
                mn, mm = B.median(nat), B.median(mnt)
                out += [
                    ("%s_native_sec" % key, " ".join(B.fmt(x, 3) for x in nat)),
                    ("%s_mount_sec" % key, " ".join(B.fmt(x, 3) for x in mnt)),
                    ("%s_native_mb_per_sec" % key, B.fmt(size / mn / 1e6, 0)),
                    ("%s_mount_mb_per_sec" % key, B.fmt(size / mm / 1e6, 0)),
                    ("%s_ratio_mount_over_native_time" % key, B.fmt(mm / mn, 2)),
                ]
        out += [("scan_result", expect),
                ("daemon_rss_kb_before_reads", str(rss_before)),
                ("daemon_peak_rss_kb_at_start_before_reads", str(hwm_before)),
                ("daemon_peak_rss_kb_during_reads", str(B.proc_status(m.pid, "VmHWM"))),
                ("target", "none set by the issue (reported for reference; RSS should stay "
                 "flat, independent of the database size)")]
    return out
