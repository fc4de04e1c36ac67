"""Snapshots: time-travel views and export.bacpac streamed on demand (issue: snapshots)."""
import datetime
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import threading
import time

import pytest

from conftest import PY, kv, run, wait_for


def rfc3339(ns, offset_minutes=0):
    tz = datetime.timezone(datetime.timedelta(minutes=offset_minutes))
    dt = datetime.datetime.fromtimestamp(ns // 10**9, tz)
    sign = "+" if offset_minutes >= 0 else "-"
    off = "Z" if offset_minutes == 0 else f"{sign}{abs(offset_minutes) // 60:02d}:{abs(offset_minutes) % 60:02d}"
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{ns % 10**9:09d}" + off


def compact(ns):
    return datetime.datetime.fromtimestamp(ns // 10**9, datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


WRITER = """
import sqlite3, sys, time
db, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = sqlite3.connect(db, isolation_level=None)
c.execute(f"PRAGMA journal_mode={mode}")
c.execute("CREATE TABLE IF NOT EXISTS t(i INTEGER PRIMARY KEY, pad)")
for i in range(1, n + 1):
    before = time.time_ns()
    c.execute("INSERT INTO t VALUES (?, randomblob(?))", (i, 50 + (i * 131) % 3000))
    after = time.time_ns()
    print(i, before, after, flush=True)
    time.sleep(0.004)
"""


def write_rows(db, mode, n):
    """Commits rows 1..n, one per transaction; returns [(i, before_ns, after_ns)]."""
    out = run(PY, "-c", WRITER, db, mode, n).stdout.split("\n")
    return [tuple(int(x) for x in line.split()) for line in out if line.strip()]


def view_rows(path):
    return run("sqlite3", "-readonly", path, "SELECT count(*), coalesce(max(i), 0) FROM t;").stdout.strip()


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def extract(bacpac, dest):
    os.makedirs(dest, exist_ok=True)
    run("tar", "--zstd", "-xf", bacpac, "-C", dest)
    return dest


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_views_and_exports_hold_exactly_what_was_committed(mount, tmpbase, mode):
    db = mount.p("prod", "db", "o.db")
    rows = write_rows(db, mode, 40)
    snaps = mount.p("prod", "snapshots")
    checked = 0
    for k in range(0, len(rows) - 1, 3):
        i, _, after = rows[k]
        before_next = rows[k + 1][1]
        t = (after + before_next) // 2           # between commit i and commit i + 1
        for name in (rfc3339(t), rfc3339(t, 60), rfc3339(t, -330)):
            assert view_rows(os.path.join(snaps, name, "db", "o.db")) == f"{i}|{i}", name
        checked += 1
        if k % 9 == 0:
            # the export at that instant equals the view
            d = extract(os.path.join(snaps, rfc3339(t), "export.bacpac"), os.path.join(tmpbase, f"x{k}"))
            assert run("sqlite3", os.path.join(d, "db", "o.db"), "PRAGMA integrity_check;").stdout.strip() == "ok"
            assert run("sqldiff", os.path.join(d, "db", "o.db"),
                       os.path.join(snaps, rfc3339(t), "db", "o.db")).stdout == ""
            man = __import__("json").load(open(os.path.join(d, "manifest.json")))
            assert man["environment"] == "prod" and man["environment_type"] == "production"
            (entry,) = man["databases"]
            assert entry["name"] == "o.db" and entry["tables"] == {"t": i}
            assert entry["sha256"] == sha(os.path.join(d, "db", "o.db"))
            assert entry["size"] == os.path.getsize(os.path.join(d, "db", "o.db"))
    assert checked >= 10
    # at an exact commit time (taken from the manifest) the commit is included
    man = __import__("json").load(open(os.path.join(extract(mount.p("prod", "snapshots", "latest", "export.bacpac"),
                                                              os.path.join(tmpbase, "latest")), "manifest.json")))
    exact = man["databases"][0]["commit_ns"]
    assert view_rows(os.path.join(snaps, rfc3339(exact), "db", "o.db")) == "40|40"
    assert view_rows(os.path.join(snaps, rfc3339(exact - 1), "db", "o.db")) == "39|39"
    # second precision: everything committed before that second, nothing after
    sec = (rows[20][2] // 10**9 + 1) * 10**9
    while time.time_ns() <= sec:  # an instant in the future is refused
        time.sleep(0.05)
    n = int(view_rows(os.path.join(snaps, compact(sec), "db", "o.db")).split("|")[0])
    assert all(r[0] <= n for r in rows if r[2] <= sec) and all(r[0] > n for r in rows if r[1] > sec)


def test_listing_latest_and_read_only(mount):
    db = mount.p("uat", "db", "a.db")
    run("sqlite3", db, "CREATE TABLE t(i); INSERT INTO t VALUES (1);")
    names = os.listdir(mount.p("uat", "snapshots"))
    assert names[0] == "latest" or "latest" in names
    assert all(n == "latest" or re.fullmatch(r"\d{8}T\d{6}Z", n) for n in names)
    latest = mount.p("uat", "snapshots", "latest")
    assert sorted(os.listdir(latest)) == ["db", "export.bacpac", "export.bacpac.sha256"]
    assert os.listdir(os.path.join(latest, "db")) == ["a.db"]
    view = os.path.join(latest, "db", "a.db")
    with pytest.raises(OSError) as e:
        open(view, "r+b")
    assert e.value.errno == 30  # EROFS
    p = run("sqlite3", view, "INSERT INTO t VALUES (2);", check=False)
    assert p.returncode != 0 and "readonly" in p.stderr
    assert run("sqlite3", f"file:{view}?immutable=1", "SELECT count(*) FROM t;").stdout.strip() == "1"
    with pytest.raises(OSError):
        os.mkdir(os.path.join(latest, "x"))
    with pytest.raises(OSError):
        os.unlink(view)
    # latest follows new commits
    run("sqlite3", db, "INSERT INTO t VALUES (2);")
    assert run("sqlite3", "-readonly", mount.p("uat", "snapshots", "latest", "db", "a.db"),
               "SELECT count(*) FROM t;").stdout.strip() == "2"


def test_bad_instants_are_enoent_and_the_log_says_why(mount):
    run("sqlite3", mount.p("prod", "db", "b.db"), "CREATE TABLE t(i);")
    future = compact(time.time_ns() + 3600 * 10**9)
    cases = {"garbage": "not an instant", "2026-13-01T00:00:00Z": "not an instant",
             "20261120T103200": "not an instant", future: "in the future",
             "2001-01-01T00:00:00Z": "older than the earliest restore point"}
    for name, why in cases.items():
        with pytest.raises(FileNotFoundError):
            os.stat(mount.p("prod", "snapshots", name))
        assert re.search(re.escape(f"prod/snapshots/{name}: {why}"), mount.read_log()), name
    assert "the window is" in mount.read_log()
    # the window's start is in info, and an instant just before it is refused
    earliest = kv(open(mount.p("prod", "info")).read())["earliest_restore_point"]
    assert earliest in mount.read_log()
    assert os.path.isdir(mount.p("prod", "snapshots", earliest))


def test_removed_database_stays_in_past_snapshots(mount):
    db = mount.p("dev", "db", "gone.db")
    run("sqlite3", db, "CREATE TABLE t(i); INSERT INTO t VALUES (7);")
    t = time.time_ns()
    time.sleep(0.01)
    os.unlink(db)
    assert os.listdir(mount.p("dev", "snapshots", "latest", "db")) == []
    past = mount.p("dev", "snapshots", rfc3339(t), "db", "gone.db")
    assert run("sqlite3", "-readonly", past, "SELECT i FROM t;").stdout.strip() == "7"


def make_history(m, n=300):
    db = m.p("prod", "db", "e.db")
    run("sqlite3", db, "PRAGMA journal_mode=wal; CREATE TABLE t(i INTEGER PRIMARY KEY, b);"
        f"INSERT INTO t SELECT value, randomblob(2000) FROM generate_series(1, {n});")
    t1 = time.time_ns()
    time.sleep(0.01)
    t2 = time.time_ns()
    time.sleep(0.01)
    run("sqlite3", db, "INSERT INTO t VALUES (NULL, 'later');")
    return t1, t2


def test_exports_are_deterministic_and_verifiable(new_mount, tmpbase):
    m = new_mount()
    t1, t2 = make_history(m)
    a = m.p("prod", "snapshots", rfc3339(t1), "export.bacpac")
    b = m.p("prod", "snapshots", rfc3339(t2), "export.bacpac")  # resolves to the same transaction
    first = open(a, "rb").read()
    assert first == open(a, "rb").read()
    assert first == open(b, "rb").read()
    assert os.stat(a).st_size == len(first)  # exact once produced
    run("zstd", "-t", a)
    d = os.path.join(m.mnt, "prod", "snapshots", rfc3339(t1))
    assert run("sha256sum", "-c", "export.bacpac.sha256", cwd=d).stdout.strip() == "export.bacpac: OK"
    other = open(m.p("prod", "snapshots", "latest", "export.bacpac"), "rb").read()
    assert other != first
    m.stop()
    shutil.rmtree(os.path.join(m.state, "cache"))  # produced again from the history: same bytes
    m.start()
    assert open(a, "rb").read() == first
    assert open(m.p("prod", "snapshots", compact(t1 + 10**9) if False else rfc3339(t1), "export.bacpac"),
                "rb").read() == first


def test_tools_copy_exports_whole(new_mount, tmpbase):
    m = new_mount()
    make_history(m, 2000)
    out = os.path.join(tmpbase, "out")
    os.mkdir(out)

    def fresh_export():
        # a new state each time, so the export is not produced yet when the tool starts
        run("sqlite3", m.p("prod", "db", "e.db"), "INSERT INTO t VALUES (NULL, randomblob(100));")
        return m.p("prod", "snapshots", rfc3339(time.time_ns()), "export.bacpac")

    def valid(path):
        return subprocess.run(["zstd", "-t", path], capture_output=True).returncode == 0

    # tools that read to the end: whole copies even before production finished
    src = fresh_export()
    run("cp", src, os.path.join(out, "cp.bacpac"))
    assert valid(os.path.join(out, "cp.bacpac"))
    assert subprocess.run(f"cat {src} | zstd -t", shell=True).returncode == 0
    src = fresh_export()
    shutil.copyfile(src, os.path.join(out, "py.bacpac"))
    assert valid(os.path.join(out, "py.bacpac"))
    assert sha(os.path.join(out, "py.bacpac")) == sha(src)
    src = fresh_export()
    p = run("rsync", src, os.path.join(out, "rs.bacpac"), check=False)
    assert (p.returncode == 0 and valid(os.path.join(out, "rs.bacpac"))) or p.returncode != 0
    if p.returncode == 0:
        assert sha(os.path.join(out, "rs.bacpac")) == sha(src)
    # tar trusts stat: before production it must fail loudly, never copy short or empty
    src = fresh_export()
    p = run("tar", "-cf", os.path.join(out, "t.tar"), "-C", os.path.dirname(src), "export.bacpac", check=False)
    if p.returncode == 0:
        with tarfile.open(os.path.join(out, "t.tar")) as tf:
            tf.extract("export.bacpac", os.path.join(out, "tx"))
        assert sha(os.path.join(out, "tx", "export.bacpac")) == sha(src)
    else:
        assert "shrank" in p.stderr or "changed" in p.stderr
    # after reading the .sha256, stat is exact and tar and rsync copy it whole
    src = fresh_export()
    open(src + ".sha256").read()
    run("tar", "-cf", os.path.join(out, "t2.tar"), "-C", os.path.dirname(src), "export.bacpac")
    with tarfile.open(os.path.join(out, "t2.tar")) as tf:
        tf.extract("export.bacpac", os.path.join(out, "t2"))
    assert sha(os.path.join(out, "t2", "export.bacpac")) == sha(src)
    run("rsync", src, os.path.join(out, "rs2.bacpac"))
    assert sha(os.path.join(out, "rs2.bacpac")) == sha(src)
    d = os.path.dirname(src)
    assert run("sha256sum", "-c", "export.bacpac.sha256", cwd=d).returncode == 0


def test_concurrent_readers_share_one_production_and_early_close_leaks_nothing(new_mount, tmpbase):
    m = new_mount()
    make_history(m, 3000)
    t = time.time_ns()
    src = m.p("prod", "snapshots", rfc3339(t), "export.bacpac")
    results = {}

    def reader(k):
        results[k] = hashlib.sha256(open(src, "rb").read()).hexdigest()

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    # a reader that stops early
    assert len(subprocess.run(["head", "-c", "1000", src], capture_output=True).stdout) == 1000
    for th in threads:
        th.join(timeout=120)
    assert len(set(results.values())) == 1
    assert m.read_log().count("prod@" + compact(t) + " produced") <= 1
    produced = [ln for ln in m.read_log().splitlines() if " produced: " in ln]
    assert len(produced) == 1, produced
    wait_for(lambda: kv(open(m.p("status")).read())["exports_producing"] == "0", what="production end")
    st = kv(open(m.p("status")).read())
    assert st["export_cache_files"] == "1"
    cache = os.path.join(m.state, "cache")
    assert not [f for f in os.listdir(cache) if f.endswith(".part")]
    # early close of a fresh export: production completes and is cached
    run("sqlite3", m.p("prod", "db", "e.db"), "INSERT INTO t VALUES (NULL, 1);")
    p = subprocess.Popen(f"head -c 100 {m.p('prod', 'snapshots', 'latest', 'export.bacpac')} > /dev/null",
                         shell=True)
    assert p.wait(timeout=60) == 0
    wait_for(lambda: kv(open(m.p("status")).read())["export_cache_files"] == "2", timeout=60, what="cached")


def test_cache_is_bounded_lru(new_mount, tmpbase):
    conf = open(os.path.join(tmpbase, "state", "dbmovefs.conf")).read() if os.path.exists(
        os.path.join(tmpbase, "state", "dbmovefs.conf")) else None
    m = new_mount(start=False)
    c = open(os.path.join(m.state, "dbmovefs.conf")).read().replace("export_cache_size = 4G", "export_cache_size = 1M")
    open(os.path.join(m.state, "dbmovefs.conf"), "w").write(c)
    m.start()
    db = m.p("prod", "db", "c.db")
    run("sqlite3", db, "CREATE TABLE t(b); INSERT INTO t SELECT randomblob(1000) FROM generate_series(1, 400);")
    sizes = []
    for k in range(5):
        run("sqlite3", db, "INSERT INTO t SELECT randomblob(1000) FROM generate_series(1, 50);")
        snap = m.p("prod", "snapshots", rfc3339(time.time_ns()))
        open(os.path.join(snap, "export.bacpac.sha256")).read()
        sizes.append(os.stat(os.path.join(snap, "export.bacpac")).st_size)
    assert sum(sizes) > 1 << 20
    st = kv(open(m.p("status")).read())
    assert int(st["export_cache_bytes"]) <= 1 << 20
    assert int(st["export_cache_bound"]) == 1 << 20
    files = [f for f in os.listdir(os.path.join(m.state, "cache")) if f.endswith(".bacpac")]
    assert 1 <= len(files) < 5
    assert "export cache: evicted" in m.read_log()
    assert conf is None or conf


def test_scheduled_export_is_produced_ahead(new_mount):
    m = new_mount()
    run("sqlite3", m.p("uat", "db", "s.db"), "CREATE TABLE t(i); INSERT INTO t VALUES (1);")
    conf = os.path.join(m.state, "dbmovefs.conf")
    at = time.time_ns() + 3 * 10**9
    hhmmss = datetime.datetime.fromtimestamp(at // 10**9, datetime.timezone.utc).strftime("%H:%M:%S")
    text = open(conf).read().replace("[env uat]\ntype = sandbox\n",
                                     f"[env uat]\ntype = sandbox\nexport_schedule = 23:59 {hhmmss}\n")
    open(conf, "w").write(text)
    os.kill(m.proc.pid, __import__("signal").SIGHUP)
    wait_for(lambda: kv(open(m.p("uat", "info")).read())["export_schedule"] == f"23:59 {hhmmss}", what="reload")
    wait_for(lambda: "scheduled export of " + compact(at) in m.read_log(), timeout=30, what="scheduled export")
    # it is in the cache: stat is exact at once, and reading it produces nothing new
    path = m.p("uat", "snapshots", compact(at), "export.bacpac")
    produced = kv(open(m.p("status")).read())["exports_produced"]
    size = os.stat(path).st_size
    data = open(path, "rb").read()
    assert len(data) == size
    assert kv(open(m.p("status")).read())["exports_produced"] == produced
    run("zstd", "-t", path)
    # a bad schedule is refused with its line
    open(conf, "w").write(text.replace(f"export_schedule = 23:59 {hhmmss}", "export_schedule = 25:00"))
    m.expect_error("reload refused")
    os.kill(m.proc.pid, __import__("signal").SIGHUP)
    wait_for(lambda: "export_schedule: '25:00' is not a time" in m.read_log(), what="refused reload")


def test_restic_backs_up_an_export_being_produced(new_mount, tmpbase):
    m = new_mount()
    make_history(m, 1500)
    src = m.p("prod", "snapshots", rfc3339(time.time_ns()), "export.bacpac")
    env = dict(os.environ, RESTIC_PASSWORD="test", RESTIC_REPOSITORY=os.path.join(tmpbase, "repo"),
               RESTIC_CACHE_DIR=os.path.join(tmpbase, "rcache"))
    run("restic", "init", env=env)
    run("restic", "backup", src, env=env, timeout=300)
    run("restic", "restore", "latest", "--target", os.path.join(tmpbase, "restored"), env=env, timeout=300)
    restored = os.path.join(tmpbase, "restored") + src
    assert sha(restored) == sha(src)
    run("zstd", "-t", restored)
