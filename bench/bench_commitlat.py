"""Commit latency while history grows: a WAL database of BENCH_COMMITLAT_MB MiB (default 256),
then BENCH_COMMITLAT_TX transactions that each update BENCH_COMMITLAT_ROWS random rows
(synchronous=FULL), each COMMIT timed; native vs mount in the same run: p50, p99 and the slowest
commit, and the page store's images the mount wrote meanwhile. An image falls due after
max(64 MiB, database size) of history; it is written by a thread of its own, so no commit should
wait for a copy of the database (no target in the issue: the slowest commit is the figure to
watch)."""

import os
import subprocess

import benchlib as B

PY = "/usr/bin/python3"
CLIENT = os.path.join(B.BENCH, "commitlat_client.py")


def one(path, mb, tx, rows):
    """(seconds to build the database, [commit latency in seconds])."""
    B.remove_db(path)
    r = subprocess.run([PY, CLIENT, path, str(mb), str(tx), str(rows)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("commitlat client on %s failed (%d): %s" % (path, r.returncode, r.stderr))
    v = [float(x) for x in r.stdout.split()]
    if len(v) != tx + 1:
        raise RuntimeError("commitlat client on %s printed %d figures, expected %d" % (path, len(v), tx + 1))
    B.remove_db(path)
    return v[0], v[1:]


def pct(xs, p):
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100.0 * len(s)))]


def images(state):
    """Finished page-store images under the state directory."""
    n = 0
    for _, _, files in os.walk(state):
        n += sum(1 for f in files if f.startswith("image.") and not f.endswith(".tmp"))
    return n


def bench(outdir, quick):
    mb = int(os.environ.get("BENCH_COMMITLAT_MB", "16" if quick else "256"))
    tx = int(os.environ.get("BENCH_COMMITLAT_TX", "40" if quick else "1000"))
    rows = int(os.environ.get("BENCH_COMMITLAT_ROWS", "200"))
    out = [("benchmark", "WAL database of %d MiB, then %d transactions of %d random-row updates "
            "(1000-byte rows), synchronous=FULL, /usr/bin/python3 sqlite3, each COMMIT timed; "
            "native, then mount" % (mb, tx, rows)),
           ("database_mib", str(mb)), ("transactions", str(tx)), ("rows_per_transaction", str(rows))]
    with B.Workdir("commitlat") as w:
        m = w.start()
        res = {}
        for side, path in (("native", os.path.join(w.native, "lat.db")), ("mount", os.path.join(m.db, "lat.db"))):
            before = images(w.state)
            build, lat = one(path, mb, tx, rows)
            res[side] = lat
            B.log("commitlat %s: build %.1f s, p50 %.2f ms, p99 %.2f ms, max %.1f ms" %
                  (side, build, pct(lat, 50) * 1e3, pct(lat, 99) * 1e3, max(lat) * 1e3))
            out += [("%s_build_sec" % side, B.fmt(build, 2)),
                    ("%s_commit_p50_ms" % side, B.fmt(pct(lat, 50) * 1e3, 2)),
                    ("%s_commit_p99_ms" % side, B.fmt(pct(lat, 99) * 1e3, 2)),
                    ("%s_commit_max_ms" % side, B.fmt(max(lat) * 1e3, 1)),
                    ("%s_slowest_commits_ms" % side,
                     " ".join(B.fmt(x * 1e3, 1) for x in sorted(lat, reverse=True)[:5]))]
            if side == "mount":
                out.append(("mount_images_written", str(images(w.state) - before)))
        for k, p in (("p50", 50), ("p99", 99)):
            out.append(("commit_%s_ratio_mount_over_native" % k, B.fmt(pct(res["mount"], p) / pct(res["native"], p), 2)))
        out.append(("commit_max_ratio_mount_over_native", B.fmt(max(res["mount"]) / max(res["native"]), 2)))
        out.append(("daemon_peak_rss_kb", str(B.proc_status(m.pid, "VmHWM"))))
    return out
