"""Exports and snapshot views (fs-layout.md, "Snapshots") of a ~512 MiB database built THROUGH
the mount in large transactions, with mixed compressible rows (text-like columns plus some
randomblob: zstd -3 compresses it ~2.3x):

1. export throughput: a fresh state per repetition (one small row committed), then, timed,
   `cat MNT/prod/snapshots/<RFC 3339 now>/export.bacpac > /dev/null` (the lookup of a new
   instant, the production and the read) vs the reference pipeline on a native copy of the
   same database (`sqlite3 DB ".backup COPY"` then `tar --zstd -cf OUT COPY`) and vs the limit
   `zstd -T0 -3 -c DB > /dev/null`; the daemon's peak RSS (VmHWM) during each export;
2. reading a produced export through the mount vs reading its cached file in STATE/cache
   natively (cat > /dev/null, cold and warm);
3. queries on a read-only view at an instant in the past (full scan by `sqlite3 -readonly`,
   2000 point lookups by random rowid in one python3 sqlite3 connection) vs a native copy of
   the database as of that instant.

Ratios are reference time / mount time: higher is better for the mount."""

import glob
import os
import shutil
import subprocess
import time

import benchlib as B

SCAN = "select count(*), sum(length(b)) from t"
ROW_BYTES = 860       # about what one row takes in the file (for the batch size)

NAMES = ("Alice Bob Carol Dave Erin Frank Grace Heidi Ivan Judy Mallory Niaj Olivia Peggy Rupert "
         "Sybil Trent Victor Walter")
CITIES = ("Amsterdam Berlin Chicago Denver Edinburgh Frankfurt Geneva Houston Istanbul Jakarta "
          "Kyoto Lisbon Madrid Nairobi Oslo Paris Quito Rome")
LOREM = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt "
         "ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation "
         "ullamco laboris nisi ut aliquip ex ea commodo consequat. Duis aute irure dolor in "
         "reprehenderit in voluptate velit esse cillum dolore eu fugiat nulla pariatur. Excepteur "
         "sint occaecat cupidatat non proident, sunt in culpa qui officia deserunt mollit anim id "
         "est laborum. ")

SCHEMA = "create table t(a integer primary key, name text, qty integer, price real, b blob)"
INSERT = ("begin; with recursive c(i) as (select 1 union all select i+1 from c where i < %d) "
          "insert into t(name, qty, price, b) select "
          "'customer-' || (abs(random()) %% 100000) || ' ' || substr('" + NAMES + "', 1 + abs(random()) %% 80, 12), "
          "abs(random()) %% 1000, (abs(random()) %% 100000) / 100.0, "
          "cast(printf('order %%d shipped to %%s on 2026-%%02d-%%02d; status=%%s; note: ', i, "
          "substr('" + CITIES + "', 1 + abs(random()) %% 100, 10), 1 + abs(random()) %% 12, "
          "1 + abs(random()) %% 28, substr('pending shipped delivered returned cancelled', "
          "1 + 8 * (abs(random()) %% 5), 8)) "
          "|| substr('" + LOREM + "', 1 + abs(random()) %% 200, 250 + abs(random()) %% 200) "
          "|| hex(randomblob(60 + abs(random()) %% 40)) || randomblob(150 + abs(random()) %% 100) as blob) "
          "from c; commit;")

# point lookups, in their own python3 process: prints "<seconds> <rows found> <digest>"
LOOKUP = r"""
import hashlib, random, sqlite3, sys, time
path, n, maxid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ids = random.Random(42).sample(range(1, maxid + 1), min(n, maxid))
t0 = time.monotonic()
c = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
h, found = hashlib.sha256(), 0
for i in ids:
    r = c.execute("select a, name, qty, price, b from t where a = ?", (i,)).fetchone()
    if r is not None:
        found += 1
        h.update(repr(r).encode())
c.close()
print("%.6f %d %s" % (time.monotonic() - t0, found, h.hexdigest()[:16]))
"""


def now_rfc3339():
    ns = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + ".%09dZ" % (ns % 10**9)


def sh(cmd, cwd=None):
    """Run a shell command, timed; returns (seconds, stdout)."""
    t0 = time.monotonic()
    r = subprocess.run(cmd, shell=True, cwd=cwd, capture_output=True, text=True)
    dt = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (cmd, r.returncode, r.stderr.strip()))
    return dt, r.stdout.strip()


def q(p):
    return "'" + p.replace("'", "'\\''") + "'"


def build(path, total, batch):
    per = max(1, batch // ROW_BYTES)
    commits = 0
    t0 = time.monotonic()
    B.run(["sqlite3", path, SCHEMA])
    while os.path.getsize(path) < total:
        left = (total - os.path.getsize(path)) // ROW_BYTES + 1
        B.run(["sqlite3", path, INSERT % min(per, left)])
        commits += 1
    return commits, time.monotonic() - t0


def cache_file(state, sha):
    """STATE/cache/<key>.bacpac whose <key>.sha256 records this checksum."""
    for meta in glob.glob(os.path.join(state, "cache", "*.sha256")):
        with open(meta) as f:
            if f.read().split()[:1] == [sha]:
                return meta[:-len(".sha256")] + ".bacpac"
    raise RuntimeError("no file in %s/cache has sha256 %s" % (state, sha))


def series(out, key, unit, lists, size=None):
    for side, xs in lists:
        out.append(("%s_%s_%s" % (key, side, unit), " ".join(B.fmt(x, 3) for x in xs)))
        if size is not None:
            out.append(("%s_%s_median_mib_per_sec" % (key, side), B.fmt(size / B.median(xs) / 2**20, 1)))
        else:
            out.append(("%s_%s_median_%s" % (key, side, unit), B.fmt(B.median(xs), 3)))


def bench(outdir, quick):
    total = int(os.environ.get("BENCH_EXPORT_BYTES", str(16 << 20 if quick else 512 << 20)))
    reps = 1 if quick else int(os.environ.get("BENCH_REPS", "3"))
    nlook = int(os.environ.get("BENCH_EXPORT_LOOKUPS", "2000"))
    batch = (4 << 20) if quick else (64 << 20)
    out = [("benchmark", "exports and snapshot views of a ~%d MiB database (t: text-like columns plus "
            "randomblob, zstd -3 ratio ~2.3x) built through the mount (DELETE mode, transactions of "
            "%d MiB); alternating sides, median of %d; all ratios are reference_time / mount_time, so "
            "HIGHER IS BETTER for the mount" % (total >> 20, batch >> 20, reps)),
           ("database_bytes_requested", str(total)), ("repetitions", str(reps))]
    with B.Workdir("export") as w:
        m = w.start()
        mdb = os.path.join(m.db, "big.db")
        ndb = os.path.join(w.native, "big.db")
        past_db = os.path.join(w.native, "past.db")
        snaps = os.path.join(m.mnt, "prod", "snapshots")
        commits, bt = build(mdb, total, batch)
        size = os.path.getsize(mdb)
        rows = int(sh("sqlite3 %s 'select max(a) from t'" % q(mdb))[1])
        time.sleep(0.01)
        past = now_rfc3339()          # the instant of part 3: the database as built
        shutil.copyfile(mdb, past_db)
        st = m.env_status()
        B.log("built %d rows, %d bytes through the mount in %d commits, %.1f s" % (rows, size, commits, bt))
        out += [("rows", str(rows)), ("database_bytes", str(size)),
                ("build_commits", str(commits)), ("build_through_mount_sec", B.fmt(bt, 2)),
                ("build_commits_recorded", st.get("db.big.db.commits", "?")),
                ("build_history_bytes", st.get("db.big.db.history_bytes", "?"))]

        # --- 1. export throughput -------------------------------------------------------------
        sides = ("mount", "reference", "zstd")
        times = {s: [] for s in sides}
        hwm, rss_before, exp_sizes = [], [], []
        inst = None
        copy, tarf = os.path.join(w.native, "copy.db"), os.path.join(w.native, "out.tar.zst")
        for i in range(reps):
            B.run(["sqlite3", mdb, "insert into t(name, qty, price, b) values('rep %d', %d, 0, 'x')" % (i, i)])
            time.sleep(0.01)
            inst = now_rfc3339()
            shutil.copyfile(mdb, ndb)   # the native copy of the same state
            if os.path.getsize(ndb) != os.path.getsize(mdb):
                raise RuntimeError("native copy has %d bytes, mount shows %d"
                                   % (os.path.getsize(ndb), os.path.getsize(mdb)))
            order = sides[i % 3:] + sides[:i % 3]   # rotate which side goes first
            for side in order:
                if side == "mount":
                    rss_before.append(B.proc_status(m.pid, "VmRSS"))
                    B.reset_hwm(m.pid)
                    dt, _ = sh("cat %s > /dev/null" % q(os.path.join(snaps, inst, "export.bacpac")))
                    hwm.append(B.proc_status(m.pid, "VmHWM"))
                elif side == "reference":
                    dt, _ = sh("sqlite3 big.db '.backup copy.db' && tar --zstd -cf out.tar.zst copy.db",
                               cwd=w.native)
                    os.unlink(copy)
                    os.unlink(tarf)
                else:
                    dt, _ = sh("zstd -q -T0 -3 -c big.db > /dev/null", cwd=w.native)
                times[side].append(dt)
                B.log("export run %d %s: %.2f s" % (i + 1, side, dt))
            # untimed checks: checksum file, and the database in the archive is the native copy
            d = os.path.join(snaps, inst)
            sh("sha256sum -c --quiet export.bacpac.sha256", cwd=d)
            sh("tar --zstd -xOf %s db/big.db | cmp - %s" % (q(os.path.join(d, "export.bacpac")), q(ndb)))
            exp_sizes.append(os.path.getsize(os.path.join(d, "export.bacpac")))
        nsize = os.path.getsize(ndb)
        mm = B.median(times["mount"])
        out += [("export_database_bytes", str(nsize)),
                ("export_bacpac_bytes", " ".join(map(str, exp_sizes))),
                ("export_compression_ratio", B.fmt(nsize / exp_sizes[-1], 2))]
        series(out, "export", "sec", [(s, times[s]) for s in sides], size=nsize)
        r_ref = B.median(times["reference"]) / mm
        r_zstd = B.median(times["zstd"]) / mm
        out += [("export_ratio_reference_over_mount_time", B.fmt(r_ref, 2)),
                ("export_ratio_reference_over_mount_time_target", ">= 1.5"),
                ("export_ratio_reference_over_mount_time_meets_target", "yes" if r_ref >= 1.5 else "no"),
                ("export_ratio_zstd_over_mount_time", B.fmt(r_zstd, 2)),
                ("export_ratio_zstd_over_mount_time_target", ">= 0.8"),
                ("export_ratio_zstd_over_mount_time_meets_target", "yes" if r_zstd >= 0.8 else "no"),
                ("daemon_rss_kb_before_each_export", " ".join(map(str, rss_before))),
                ("daemon_peak_rss_kb_during_each_export", " ".join(map(str, hwm))),
                ("daemon_peak_rss_kb_during_exports_max", str(max(hwm)))]

        # --- 2. reading a produced export vs its cached file ----------------------------------
        mexp = os.path.join(snaps, inst, "export.bacpac")
        with open(mexp + ".sha256") as f:
            sha = f.read().split()[0]
        cexp = cache_file(w.state, sha)
        esize = os.path.getsize(cexp)
        if os.path.getsize(mexp) != esize:
            raise RuntimeError("export shows %d bytes, cached file has %d" % (os.path.getsize(mexp), esize))
        out.append(("read_export_bytes", str(esize)))
        for temp in ("cold", "warm"):
            nat, mnt = [], []
            for i in range(reps):
                for side, p, lst in (("cache", cexp, nat), ("mount", mexp, mnt)):
                    cmd = "cat %s > /dev/null" % q(p)
                    if temp == "warm":
                        sh(cmd)
                    else:
                        B.drop_caches()
                    dt, _ = sh(cmd)
                    lst.append(dt)
                    B.log("read export %s %s run %d: %.3f s" % (temp, side, i + 1, dt))
            key = "read_export_%s" % temp
            series(out, key, "sec", (("native_cache", nat), ("mount", mnt)), size=esize)
            r = B.median(nat) / B.median(mnt)
            out += [("%s_ratio_native_over_mount_time" % key, B.fmt(r, 2)),
                    ("%s_ratio_native_over_mount_time_target" % key, ">= 0.8"),
                    ("%s_ratio_native_over_mount_time_meets_target" % key, "yes" if r >= 0.8 else "no")]

        # --- 3. queries on a view in the past vs a native copy as of that instant --------------
        view = os.path.join(snaps, past, "db", "big.db")
        if os.path.getsize(view) != os.path.getsize(past_db):
            raise RuntimeError("view at %s has %d bytes, native copy %d"
                               % (past, os.path.getsize(view), os.path.getsize(past_db)))
        sh("cmp %s %s" % (q(view), q(past_db)))   # untimed: the view has the bytes of that instant
        out += [("view_instant", "%s (the state right after the build, before the %d rows of part 1)"
                 % (past, reps))]
        for kind in ("scan", "lookup"):
            for temp in ("cold", "warm"):
                nat, mnt, expect = [], [], None
                for i in range(reps):
                    for side, p, lst in (("native", past_db, nat), ("mount", view, mnt)):
                        if kind == "scan":
                            cmd = "sqlite3 -readonly %s %s" % (q(p), q(SCAN))
                        else:
                            cmd = "/usr/bin/python3 -c %s %s %d %d" % (q(LOOKUP), q(p), nlook, rows)
                        if temp == "warm":
                            sh(cmd)
                        else:
                            B.drop_caches()
                        dt, res = sh(cmd)
                        if kind == "lookup":   # time measured inside: open + lookups
                            secs, res = res.split(" ", 1)
                            dt = float(secs)
                        if expect is None:
                            expect = res
                        elif res != expect:
                            raise RuntimeError("%s result %r on %s differs from %r" % (kind, res, side, expect))
                        lst.append(dt)
                        B.log("view %s %s %s run %d: %.3f s" % (kind, temp, side, i + 1, dt))
                key = "view_%s_%s" % (kind, temp)
                series(out, key, "sec", (("native", nat), ("mount", mnt)))
                out.append(("%s_ratio_native_over_mount_time" % key, B.fmt(B.median(nat) / B.median(mnt), 2)))
                if temp == "warm":
                    out.append(("view_%s_result" % kind, expect))
        out += [("view_lookups", "%d random rowids (seed 42) in one python3 sqlite3 connection "
                 "(mode=ro), timed inside the process (open + lookups)" % min(nlook, rows)),
                ("view_target", "none set by the issue (reported for reference)")]
        st = dict(l.rstrip("\n").split(": ", 1) for l in open(os.path.join(m.mnt, "status")) if ": " in l)
        out += [("exports_produced", st.get("exports_produced", "?")),
                ("export_cache_bytes", st.get("export_cache_bytes", "?"))]
        bad = [l for l in open(m.logpath) if "[error]" in l or "[warning]" in l]
        out.append(("daemon_log_error_warning_lines", str(len(bad))))
    return out
