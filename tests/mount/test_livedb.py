"""Live SQLite databases through the mount, every commit recorded (issue: backup engine)."""
import contextlib
import filecmp
import os
import sqlite3
import subprocess
import textwrap
import time

import pytest

from conftest import PY, Mount, db_info, history_image, kv, run, sql, wait_for


def same_as_history(m, env, name, tmpbase):
    """With the daemon stopped: the recorded image equals the live file, byte for byte."""
    img = os.path.join(tmpbase, name + ".img")
    history_image(m.state, env, name, img)
    live = os.path.join(m.state, "envs", env, "db", name)
    assert filecmp.cmp(img, live, shallow=False), f"history of {name} differs from the live file"


@pytest.mark.parametrize("mode", ["delete", "truncate", "persist", "wal"])
@pytest.mark.parametrize("sync", ["full", "normal", "off"])
def test_journal_modes_record_every_commit(new_mount, tmpbase, mode, sync):
    m = new_mount()
    db = m.p("prod", "db", "app.db")
    stmts = "".join(f"INSERT INTO t VALUES ({i}, randomblob({100 + i * 37 % 3000}));\n" for i in range(40))
    out = sql(db, f"PRAGMA journal_mode={mode}; PRAGMA synchronous={sync};\n"
                  "CREATE TABLE t(a INTEGER PRIMARY KEY, b);\n" + stmts +
                  "UPDATE t SET b = randomblob(5000) WHERE a % 7 = 0;\nDELETE FROM t WHERE a % 5 = 0;\n"
                  "PRAGMA integrity_check;\nSELECT count(*) FROM t;").stdout.split()
    assert out[-2:] == ["ok", "32"]
    info = db_info(m, "prod", "app.db")
    assert int(info["commits"]) >= 43
    assert info["journal_mode"] == mode
    assert info["refused_writes"] == "0"
    m.stop()
    same_as_history(m, "prod", "app.db", tmpbase)


def test_python_writers_and_readers_in_parallel(new_mount, tmpbase):
    m = new_mount()
    for mode in ("wal", "delete"):
        db = m.p("prod", "db", f"{mode}.db")
        sql(db, f"PRAGMA journal_mode={mode}; CREATE TABLE t(w, i, pad);")
        writer = textwrap.dedent(f"""
            import sqlite3, sys
            c = sqlite3.connect({db!r}, timeout=30, isolation_level=None)
            w = int(sys.argv[1])
            for i in range(60):
                c.execute("BEGIN IMMEDIATE")
                c.execute("INSERT INTO t VALUES (?, ?, randomblob(200))", (w, i))
                c.execute("COMMIT")
            """)
        reader = textwrap.dedent(f"""
            import sqlite3, time
            c = sqlite3.connect({db!r}, timeout=30)
            end = time.time() + 2
            last = 0
            while time.time() < end:
                n = c.execute("SELECT count(*) FROM t").fetchone()[0]
                assert n >= last, (n, last)
                last = n
            """)
        procs = [subprocess.Popen([PY, "-c", writer, str(w)]) for w in range(4)]
        procs.append(subprocess.Popen([PY, "-c", reader]))
        for p in procs:
            assert p.wait(timeout=120) == 0
        out = sql(db, "PRAGMA integrity_check; SELECT count(*), count(DISTINCT w || '.' || i) FROM t;").stdout
        assert out.split() == ["ok", "240|240"]
        assert int(db_info(m, "prod", f"{mode}.db")["commits"]) >= 241
    m.stop()
    same_as_history(m, "prod", "wal.db", tmpbase)
    same_as_history(m, "prod", "delete.db", tmpbase)


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_rolled_back_transactions_are_never_recorded(new_mount, tmpbase, mode):
    m = new_mount()
    db = m.p("prod", "db", "r.db")
    sql(db, f"PRAGMA journal_mode={mode}; CREATE TABLE t(a, b); INSERT INTO t VALUES (1, 'kept');")
    before = int(db_info(m, "prod", "r.db")["commits"])
    # a transaction larger than the cache spills pages to the file before ROLLBACK
    sql(db, "PRAGMA cache_size=5; BEGIN; INSERT INTO t SELECT value, randomblob(2000) FROM generate_series(1, 2000);"
            " UPDATE t SET b = 'changed' WHERE a = 1; ROLLBACK;")
    assert int(db_info(m, "prod", "r.db")["commits"]) == before
    assert sql(db, "SELECT b FROM t; PRAGMA integrity_check;").stdout.split() == ["kept", "ok"]
    m.stop()
    same_as_history(m, "prod", "r.db", tmpbase)


def test_wal_frames_rewritten_inside_a_transaction_are_recorded_at_their_commit(new_mount, tmpbase):
    """With a tiny cache a WAL transaction spills pages, writes some of them
    again in place and rewrites the frames' headers at commit: frames the
    daemon checked as they arrived change under it. Each commit is recorded
    before COMMIT returns (not later, at the checkpoint), and each recorded
    image holds exactly that commit's rows."""
    m = new_mount()
    db = m.p("prod", "db", "w.db")
    sql(db, "PRAGMA journal_mode=wal; CREATE TABLE t(a INTEGER PRIMARY KEY, b);"
            "INSERT INTO t SELECT value, printf('0-%0900d', value) FROM generate_series(1, 400);")
    base = int(db_info(m, "prod", "w.db")["commits"])
    rounds = 4
    c = sqlite3.connect(db, isolation_level=None)
    try:
        c.execute("PRAGMA cache_size=4")
        for r in range(1, rounds + 1):
            # two passes over every row: the second rewrites frames the first spilled
            c.execute("BEGIN")
            c.execute("UPDATE t SET b = printf('x-%0700d', a)")
            c.execute("UPDATE t SET b = printf(?, a)", (f"{r}-%0900d",))
            c.execute("COMMIT")
            assert int(db_info(m, "prod", "w.db")["commits"]) == base + r, f"round {r} not recorded at COMMIT"
        c.execute("BEGIN")
        c.execute("UPDATE t SET b = 'gone'")
        c.execute("ROLLBACK")
        assert int(db_info(m, "prod", "w.db")["commits"]) == base + rounds
    finally:
        c.close()
    assert sql(db, "PRAGMA integrity_check;").stdout.split() == ["ok"]
    m.stop()
    for r in range(0, rounds + 1):
        img = os.path.join(tmpbase, f"w-{r}.img")
        history_image(m.state, "prod", "w.db", img, at=base + r)
        out = sql(img, f"SELECT count(*) FROM t WHERE b = printf('{r}-%0900d', a); PRAGMA integrity_check;")
        assert out.stdout.split() == ["400", "ok"], f"image at commit {base + r}"


@pytest.mark.parametrize("mode", ["memory", "off"])
def test_unrecordable_journal_modes_are_refused(mount, mode):
    mount.expect_error(r"journal_mode MEMORY or OFF")
    db = mount.p("prod", "db", f"{mode}.db")
    sql(db, "CREATE TABLE t(a); INSERT INTO t VALUES (1);")
    p = sql(db, f"PRAGMA journal_mode={mode}; INSERT INTO t VALUES (2);", check=False)
    assert p.returncode != 0 and "disk I/O error" in p.stderr
    assert "journal_mode MEMORY or OFF" in mount.read_log()
    assert "supported: journal_mode DELETE, TRUNCATE, PERSIST or WAL" in mount.read_log()
    assert int(db_info(mount, "prod", f"{mode}.db")["refused_writes"]) >= 1
    # the database is unchanged and still usable in a supported mode
    assert sql(db, "PRAGMA integrity_check; SELECT count(*) FROM t;").stdout.split() == ["ok", "1"]


@pytest.mark.parametrize("mode", ["memory", "off"])
@pytest.mark.parametrize("sync", ["FULL", "OFF"])
def test_a_new_database_without_a_journal_is_refused(mount, mode, sync):
    """A new database's first transaction takes its EXCLUSIVE lock before
    SQLite opens the journal; with journal_mode MEMORY or OFF none comes, and
    nothing SQLite wrote may stay as if committed (with the writeback cache
    the kernel sends it only later)."""
    mount.expect_error(r"journal_mode MEMORY or OFF|could not write back")
    db = mount.p("prod", "db", f"new_{mode}_{sync}.db")
    p = sql(db, f"PRAGMA journal_mode={mode}; PRAGMA synchronous={sync}; CREATE TABLE t(a); INSERT INTO t VALUES (1);",
            check=False)
    assert p.returncode != 0 and "disk I/O error" in p.stderr, p.stderr
    assert "journal_mode MEMORY or OFF" in mount.read_log()
    # nothing of it counts: not in the file, not in the history, and the
    # name serves a database in a supported mode
    assert int(db_info(mount, "prod", f"new_{mode}_{sync}.db").get("commits", "0")) == 0
    sql(db, "PRAGMA journal_mode=DELETE; CREATE TABLE IF NOT EXISTS t(a); INSERT INTO t VALUES (2);")
    assert sql(db, "PRAGMA integrity_check; SELECT group_concat(a) FROM t;").stdout.split() == ["ok", "2"]


def test_names_sqlite_does_not_make_are_refused(mount):
    d = mount.p("prod", "db")
    p = run("sh", "-c", f"echo x > {d}/notes.txt", check=False)
    assert p.returncode != 0 and "Operation not permitted" in p.stderr
    assert "accepted names are NAME.db" in mount.read_log()
    for bad in ("x.db.bak", ".hidden.db", "a" * 70 + ".db", "x.db-journalx"):
        with pytest.raises(PermissionError):
            open(os.path.join(d, bad), "w")
    with pytest.raises(PermissionError):
        os.mkdir(os.path.join(d, "sub"))
    sql(os.path.join(d, "a.db"), "CREATE TABLE t(a);")
    p = run("mv", os.path.join(d, "a.db"), os.path.join(d, "b.db"), check=False)
    assert p.returncode != 0
    assert sorted(os.listdir(d)) == ["a.db"]


def test_rm_of_a_database_keeps_its_history(mount, tmpbase):
    db = mount.p("uat", "db", "gone.db")
    sql(db, "CREATE TABLE t(a); INSERT INTO t VALUES (1);")
    assert kv(open(mount.p("uat", "info")).read())["databases"] == "1"
    run("rm", db)
    assert os.listdir(mount.p("uat", "db")) == []
    assert kv(open(mount.p("uat", "info")).read())["databases"] == "0"
    rows = sql(os.path.join(mount.state, "catalog.db"),
               "SELECT name, deleted_ns IS NOT NULL, timeline FROM databases WHERE env='uat'").stdout.split()
    assert len(rows) == 1 and rows[0].startswith("gone.db|1|")
    timeline = int(rows[0].split("|")[2])
    assert os.path.isdir(os.path.join(mount.state, "store", f"{timeline:016x}")) or \
        any(str(timeline) in n for n in os.listdir(os.path.join(mount.state, "store")))
    # a new database of the same name starts a new history
    sql(db, "CREATE TABLE u(b);")
    rows = sql(os.path.join(mount.state, "catalog.db"),
               "SELECT count(*), count(DISTINCT timeline) FROM databases WHERE env='uat'").stdout.strip()
    assert rows == "2|2"


def test_locks_are_held_by_the_daemon(mount):
    db = mount.p("prod", "db", "l.db")
    sql(db, "CREATE TABLE t(a);")
    holder = subprocess.Popen([PY, "-c", textwrap.dedent(f"""
        import sqlite3, sys
        c = sqlite3.connect({db!r}, isolation_level=None)
        c.execute("BEGIN IMMEDIATE"); c.execute("INSERT INTO t VALUES (1)")
        print("held", flush=True); sys.stdin.readline()
        c.execute("COMMIT")
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    assert db_info(mount, "prod", "l.db")["writer"] == "active"
    p = run("sqlite3", "-cmd", ".timeout 100", db, "INSERT INTO t VALUES (2);", check=False)
    assert p.returncode != 0 and "database is locked" in p.stderr
    waiter = subprocess.Popen(["sqlite3", "-cmd", ".timeout 20000", db, "INSERT INTO t VALUES (3);"])
    time.sleep(0.3)
    holder.stdin.write("\n")
    holder.stdin.flush()
    assert holder.wait(timeout=30) == 0 and waiter.wait(timeout=30) == 0
    assert sql(db, "SELECT group_concat(a) FROM t ORDER BY a;").stdout.strip() in ("1,3", "3,1")
    assert db_info(mount, "prod", "l.db")["writer"] == "idle"


WRITER = """
import os, sqlite3, sys
db, log, mode, sync = sys.argv[1:5]
c = sqlite3.connect(db, timeout=10, isolation_level=None)
c.execute(f"PRAGMA journal_mode={mode}")
c.execute(f"PRAGMA synchronous={sync}")
c.execute("CREATE TABLE IF NOT EXISTS t(i INTEGER PRIMARY KEY, pad)")
with open(log, "a") as f:
    i = 0
    while True:
        i += 1
        try:
            c.execute("BEGIN IMMEDIATE")
            c.execute("INSERT INTO t VALUES (?, randomblob(?))", (i, 100 + (i * 997) % 6000))
            c.execute("COMMIT")
        except Exception:
            sys.exit(0)
        f.write(f"{i}\\n"); f.flush(); os.fsync(f.fileno())
"""


def crash_round(m, tmpbase, mode, name, sync="FULL", may_lose_last=False):
    """may_lose_last: the writer's last commit may be missing (see
    test_kill_9_while_the_kernel_writes_back_loses_no_commit)."""
    db = m.p("prod", "db", name)
    log = os.path.join(tmpbase, name + ".committed")
    w = subprocess.Popen([PY, "-c", WRITER, db, log, mode, sync], stderr=subprocess.DEVNULL)
    wait_for(lambda: os.path.exists(log) and os.path.getsize(log) > 200, timeout=30, what="writer progress")
    time.sleep(0.2)
    m.crash()
    w.wait(timeout=30)
    committed = [int(x) for x in open(log).read().split()]
    m.start()
    rows = set(int(x) for x in sql(db, "SELECT i FROM t;").stdout.split())
    lost = set(committed) - rows
    if may_lose_last:
        lost -= {committed[-1]}
    assert not lost, f"lost commits: {sorted(lost)[:10]}"
    assert sql(db, "PRAGMA integrity_check;").stdout.strip() == "ok"
    return committed


@pytest.mark.parametrize("mode", ["delete", "truncate", "persist", "wal"])
def test_kill_9_loses_no_commit(new_mount, tmpbase, mode):
    m = new_mount()
    m.expect_error(r".")  # the writer's requests fail when the daemon dies
    committed = crash_round(m, tmpbase, mode, "c.db")
    assert len(committed) > 5
    info = db_info(m, "prod", "c.db")
    assert int(info["commits"]) >= len(committed)
    m.stop()
    same_as_history(m, "prod", "c.db", tmpbase)


def helpers(m):
    """Pids of the daemon's child processes (the writeback cache's helper)."""
    out = []
    for p in os.listdir("/proc"):
        try:
            if p.isdigit() and open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1] == str(m.proc.pid):
                out.append(int(p))
        except (OSError, IndexError):
            pass
    return out


@pytest.mark.parametrize("mode, sync", [("wal", "NORMAL"), ("wal", "OFF"), ("delete", "OFF"), ("truncate", "OFF"),
                                        ("persist", "OFF")])
def test_kill_9_while_the_kernel_writes_back_loses_no_commit(new_mount, tmpbase, mode, sync):
    """With the writeback cache and commits SQLite does not sync, every commit
    point has the helper process make the kernel write back: kill -9 of the
    daemon meanwhile must lose no commit the writer saw, leave no process
    stuck, and end the helper too. One exception: a WAL commit with
    synchronous NORMAL or OFF is recorded when SQLite releases its WRITE lock,
    and SQLite ignores a failed unlock, so a daemon dying while it records
    that commit can lose it though SQLite reported it done (SQLite documents
    the same loss for an operating system crash in that mode); whatever
    reached the WAL's file is recorded at the restart."""
    m = new_mount()
    if not m.writeback():
        pytest.skip("the writeback cache is off in this run")
    m.expect_error(r".")
    for _ in range(3):
        helper = helpers(m)
        assert len(helper) == 1, f"expected the writeback helper beside the daemon, found {helper}"
        crash_round(m, tmpbase, mode, "wb.db", sync, may_lose_last=mode == "wal")
        wait_for(lambda: not os.path.exists(f"/proc/{helper[0]}"), timeout=10, what="the helper to end with the daemon")
    m.stop()
    same_as_history(m, "prod", "wb.db", tmpbase)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["delete", "truncate", "persist", "wal"])
def test_kill_9_loop(new_mount, tmpbase, mode):
    m = new_mount()
    m.expect_error(r".")
    for _ in range(int(os.environ.get("DBM_CRASH_ROUNDS", "40"))):
        crash_round(m, tmpbase, mode, "loop.db")
    m.stop()
    same_as_history(m, "prod", "loop.db", tmpbase)


def test_corrupt_history_reads_as_eio(new_mount, tmpbase):
    m = new_mount()
    db = m.p("prod", "db", "x.db")
    sql(db, "CREATE TABLE t(a); INSERT INTO t SELECT randomblob(1000) FROM generate_series(1, 50);")
    m.stop()
    store = os.path.join(m.state, "store")
    tl = os.path.join(store, sorted(os.listdir(store))[0])
    seg = sorted(f for f in os.listdir(tl) if f.startswith("log."))[0]
    path = os.path.join(tl, seg)
    data = bytearray(open(path, "rb").read(8192))
    # flip a byte inside the first page image (after the segment and record headers)
    with open(path, "r+b") as f:
        f.seek(4096)
        b = f.read(1)
        f.seek(4096)
        f.write(bytes([b[0] ^ 0x5A]))
    assert data  # read before the change
    # the first transaction's page 1 is the corrupted one: reading it is an I/O error, never wrong data
    p = history_image(m.state, "prod", "x.db", os.path.join(tmpbase, "x.img"), at=1, check=False)
    assert p.returncode != 0
    assert "Input/output error" in p.stderr
    assert "checksum" in p.stderr
    assert not os.path.exists(os.path.join(tmpbase, "x.img"))
    # later transactions (which rewrote that page) still read, and equal the live file
    same_as_history(m, "prod", "x.db", tmpbase)


@contextlib.contextmanager
def small_state_fs(tmpbase):
    """A mount (not started) whose state directory is on a 24 MiB tmpfs, with
    1 MiB store segments; the tmpfs is unmounted after the daemon stops.
    Yields (mount, tmpfs directory)."""
    state_fs = os.path.join(tmpbase, "fs")
    os.mkdir(state_fs)
    run("mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", state_fs)
    m = None
    try:
        m = Mount(tmpbase)
        run("cp", "-a", m.state, state_fs)  # the state on the small filesystem, the mountpoint not
        m.state = os.path.join(state_fs, "state")
        conf_path = os.path.join(m.state, "dbmovefs.conf")
        conf = open(conf_path).read()
        assert "log_level = info\n" in conf
        open(conf_path, "w").write(conf.replace("log_level = info\n", "log_level = info\nsegment_size = 1M\n", 1))
        yield m, state_fs
    finally:
        if m is not None:
            m.stop()
        run("umount", state_fs, check=False)


def stop_and_compare(m, name, tmpbase):
    """Stops the daemon; the history of prod/name equals the file; the log holds no unexpected error."""
    m.stop()
    same_as_history(m, "prod", name, tmpbase)
    m.check_log()


def test_full_disk_refuses_commits_and_recovers(tmpbase):
    with small_state_fs(tmpbase) as (m, state_fs):
        m.expect_error(r"cannot record a commit|No space left|disk|space")
        m.start()
        db = m.p("prod", "db", "f.db")
        p = sql(db, "CREATE TABLE t(i INTEGER PRIMARY KEY, b);", check=False)
        assert p.returncode == 0, m.read_log()
        filler = os.path.join(state_fs, "filler")
        run("sh", "-c", f"dd if=/dev/zero of={filler} bs=1M count=100 2>/dev/null || true")
        run("rm", "-f", filler)
        run("sh", "-c", f"dd if=/dev/zero of={filler} bs=1M count=14 2>/dev/null")
        ok = 0
        failed = None
        for i in range(1, 400):
            p = sql(db, f"INSERT INTO t VALUES ({i}, randomblob(200000));", check=False)
            if p.returncode != 0:
                failed = p.stderr
                break
            ok = i
        assert failed is not None, "the disk never filled"
        assert "full" in failed or "I/O" in failed, failed
        # the daemon is alive and everything committed is there
        assert "prod" in os.listdir(m.mnt)
        assert sql(db, "PRAGMA integrity_check; SELECT count(*) FROM t;").stdout.split() == ["ok", str(ok)]
        os.unlink(filler)
        sql(db, f"INSERT INTO t VALUES ({ok + 1}, randomblob(1000));")
        assert sql(db, "SELECT count(*) FROM t;").stdout.strip() == str(ok + 1)
        stop_and_compare(m, "f.db", tmpbase)


# what a full disk under a WAL database may log (none of it required)
FULL_DISK_WAL_ERRORS = [
    r"pagestore: .*No space left on device",                        # a record, before the reserve gives room
    r"w.db: the kernel's write-back to the database file failed",   # a checkpoint
    r"w.db: the kernel could not write back what SQLite wrote",
    r"w.db: a write transaction is refused: the state directory's file system has",
    r"w.db: cannot record",
]

@contextlib.contextmanager
def wal_on_small_fs(tmpbase, schema):
    """small_state_fs, started, allowing what a full disk logs, with prod/w.db
    in WAL mode made by schema. Yields (mount, database path, filler path)."""
    with small_state_fs(tmpbase) as (m, state_fs):
        for e in FULL_DISK_WAL_ERRORS:
            m.expect_error(e)
        m.start()
        db = m.p("prod", "db", "w.db")
        sql(db, "PRAGMA journal_mode=WAL; " + schema)
        yield m, db, os.path.join(state_fs, "filler")


# argv: DB SYNCHRONOUS FILLER; c: a connection with that synchronous setting
FILL_SCRIPT_START = r"""
import sqlite3, subprocess, sys
db, sync, filler = sys.argv[1:4]
c = sqlite3.connect(db, isolation_level=None)
c.execute("pragma synchronous=" + sync)
"""

WAL_THEN_FILL = FILL_SCRIPT_START + r"""
c.execute("pragma wal_autocheckpoint=0")  # the file grows only at the closing checkpoint
for i in range(1, 101):
    c.execute("insert into t values (?, randomblob(20000))", (i,))
subprocess.run(["sh", "-c", "dd if=/dev/zero of=%s bs=64k 2>/dev/null" % filler])
c.close()  # its checkpoint cannot grow the file: the WAL must stay
"""


@pytest.mark.parametrize("sync", ["FULL", "OFF"])
def test_full_disk_at_a_checkpoint_keeps_the_wal_and_readers_read(tmpbase, sync):
    # the last connection's checkpoint grows the file on a full disk. With
    # synchronous=OFF SQLite syncs nothing and removes the WAL after it: the
    # writes the kernel holds must reach the file first, whole (a short write
    # was taken as written), or the WAL stays. A full disk must not stop the
    # next reader, which rebuilds the wal-index under WAL's WRITE lock.
    with wal_on_small_fs(tmpbase, "CREATE TABLE t(i INTEGER PRIMARY KEY, b);") as (m, db, filler):
        run(PY, "-c", WAL_THEN_FILL, db, sync, filler, check=False)
        assert os.path.exists(os.path.join(m.state, "envs", "prod", "db", "w.db-wal")), m.read_log()
        q = "PRAGMA integrity_check; SELECT count(*), sum(length(b)) FROM t;"
        assert sql(db, q).stdout.split() == ["ok", "100|2000000"]
        p = sql(db, "INSERT INTO t VALUES (101, 'x');", check=False)
        assert p.returncode != 0 and ("full" in p.stderr or "I/O" in p.stderr or "locked" in p.stderr), p.stderr
        os.unlink(filler)
        sql(db, "INSERT INTO t VALUES (101, 'x');")
        m.stop()
        m.start()  # whatever the file lacked is rewritten from the history
        assert sql(db, q).stdout.split() == ["ok", "101|2000001"]
        stop_and_compare(m, "w.db", tmpbase)


FILL_DURING_WAL_COMMIT = FILL_SCRIPT_START + r"""
out = []
try:
    c.execute("begin")
    for i in range(1, 41):
        c.execute("insert into t values (?, randomblob(20000))", (i,))
    # another program fills the disk while SQLite's writes wait in the kernel
    subprocess.run(["sh", "-c", "dd if=/dev/zero of=%s bs=64k 2>/dev/null" % filler])
    c.execute("commit")
    out.append("committed")
except sqlite3.Error as e:
    out.append("failed: %s" % e)
for conn in (c, sqlite3.connect(db)):
    out.append("%s %d" % (conn.execute("pragma integrity_check").fetchone()[0],
                          conn.execute("select count(*) from t").fetchone()[0]))
print("; ".join(out))
"""


@pytest.mark.parametrize("sync", ["NORMAL", "OFF"])
def test_full_disk_keeps_a_wal_commit_sqlite_counted_done(tmpbase, sync):
    # WAL with synchronous NORMAL or OFF: SQLite's COMMIT returns before its
    # frames reach the daemon (the writeback cache). If the disk fills
    # meanwhile, their write-back and their record take the space reserve:
    # the commit is kept, and nobody reads a frame that was never written
    # (before the reserve: "database disk image is malformed", then the
    # commit was gone after a restart)
    with wal_on_small_fs(tmpbase, "CREATE TABLE t(i INTEGER PRIMARY KEY, b); INSERT INTO t VALUES (0, 'x');") \
            as (m, db, filler):
        out = run(PY, "-c", FILL_DURING_WAL_COMMIT, db, sync, filler).stdout.strip()
        rows = 41 if out.startswith("committed") else 1
        if m.writeback():
            assert out == "committed; ok 41; ok 41", out + m.read_log()
        else:  # the write itself fails, and SQLite rolls back
            assert out.endswith("; ok 1; ok 1"), out
        assert "space_reserve: " in open(m.p("status")).read()
        p = sql(db, "INSERT INTO t VALUES (100, 'x');", check=False)
        assert p.returncode != 0, "a write transaction started on a full disk"
        os.unlink(filler)
        sql(db, "INSERT INTO t VALUES (100, 'x');")
        m.stop()
        m.start()
        assert sql(db, "PRAGMA integrity_check; SELECT count(*) FROM t;").stdout.split() == ["ok", str(rows + 1)]
        stop_and_compare(m, "w.db", tmpbase)


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_large_transaction_is_recorded_with_bounded_memory(new_mount, tmpbase, mode):
    from conftest import BIN
    libs = subprocess.run(["ldd", BIN], capture_output=True, text=True).stdout
    if "asan" in libs:
        pytest.skip("ASan's quarantine keeps freed memory: peak RSS says nothing here")
    if "tsan" in libs:
        # with the writeback cache, writes come in 1 MiB requests, and each
        # request buffer they fill is shadowed several times over by TSan
        pytest.skip("TSan's shadow memory multiplies the touched request buffers: peak RSS says nothing here")
    m = new_mount()
    db = m.p("prod", "db", "big.db")
    sql(db, f"PRAGMA journal_mode={mode}; CREATE TABLE t(a, b);")
    pid = m.proc.pid
    def hwm():
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    before = hwm()
    # one transaction of ~120 MiB
    sql(db, "BEGIN; INSERT INTO t SELECT value, randomblob(4000) FROM generate_series(1, 30000); COMMIT;",
        timeout=300)
    assert int(db_info(m, "prod", "big.db")["commits"]) >= 2
    grew = hwm() - before
    assert grew < 48 << 20, f"the daemon grew by {grew >> 20} MiB recording a 120 MiB transaction"
    m.stop()
    same_as_history(m, "prod", "big.db", tmpbase)


def test_switching_journal_modes_keeps_history_exact(new_mount, tmpbase):
    m = new_mount()
    db = m.p("prod", "db", "sw.db")
    sql(db, "CREATE TABLE t(a, b); INSERT INTO t VALUES (1, randomblob(3000));"
            "PRAGMA journal_mode=wal; INSERT INTO t VALUES (2, randomblob(3000));"
            "PRAGMA journal_mode=delete; INSERT INTO t VALUES (3, randomblob(3000));"
            "PRAGMA journal_mode=truncate; INSERT INTO t VALUES (4, 'x');"
            "PRAGMA journal_mode=wal; INSERT INTO t VALUES (5, 'y');")
    assert db_info(m, "prod", "sw.db")["journal_mode"] == "wal"
    m.stop()
    same_as_history(m, "prod", "sw.db", tmpbase)


LIMITS = """
[env prod]
type = production
max_databases = 2
max_db_size = 256K
"""


def test_limits_are_enforced_with_clear_errors(new_mount, tmpbase):
    m = new_mount(LIMITS)
    d = m.p("prod", "db")
    sql(os.path.join(d, "a.db"), "CREATE TABLE t(b);")
    sql(os.path.join(d, "b.db"), "CREATE TABLE t(b);")
    p = run("touch", os.path.join(d, "c.db"), check=False)
    assert p.returncode != 0 and "Disk quota exceeded" in p.stderr
    assert "maximum of 2 databases (max_databases)" in m.read_log()
    # journals and WAL files of existing databases are not databases
    sql(os.path.join(d, "a.db"), "INSERT INTO t VALUES (1);")
    ok = 0
    for i in range(100):
        p = sql(os.path.join(d, "b.db"), "INSERT INTO t VALUES (randomblob(20000));", check=False)
        if p.returncode != 0:
            # the write itself fails; with the writeback cache the kernel sends
            # it at the commit's sync, which fails instead
            assert ("disk I/O error" if m.writeback() else "database or disk is full") in p.stderr, p.stderr
            break
        ok += 1
    else:
        raise AssertionError("max_db_size never refused a write")
    assert os.path.getsize(os.path.join(m.state, "envs", "prod", "db", "b.db")) <= 256 * 1024
    assert "would grow past max_db_size" in m.read_log()
    assert sql(os.path.join(d, "b.db"), "PRAGMA integrity_check; SELECT count(*) FROM t;").stdout.split() == \
        ["ok", str(ok)]
    m.stop()
    same_as_history(m, "prod", "b.db", tmpbase)


@pytest.mark.parametrize("sync", ["OFF", "FULL"])
def test_wal_checkpoint_past_max_db_size_keeps_the_wal_and_every_commit(new_mount, tmpbase, sync):
    # WAL commits are recorded whatever the size; the checkpoint that would
    # grow the file past max_db_size is refused (its ftruncate size hint, then
    # its writes past the end; with the writeback cache those come back at the
    # write-back, after SQLite has moved on), so the WAL must stay
    m = new_mount(LIMITS)
    m.expect_error(r"w.db: the kernel's write-back to the database file failed")
    m.expect_error(r"w.db: the kernel could not write back what SQLite wrote")
    db = m.p("prod", "db", "w.db")
    sql(db, "PRAGMA journal_mode=WAL; CREATE TABLE t(b);")
    script = f"PRAGMA synchronous={sync};" + "INSERT INTO t VALUES (randomblob(20000));" * 30
    sql(db, script, check=False)  # its closing checkpoint may fail: the commits stand
    time.sleep(1.5)  # a background sync (every second) runs meanwhile: the restart must still find it all
    rows = sql(db, "PRAGMA integrity_check; SELECT count(*) FROM t;").stdout.split()
    assert rows == ["ok", "30"], rows
    assert "would grow past max_db_size" in m.read_log()
    m.stop()
    m.start()
    q = "PRAGMA integrity_check; SELECT count(*), sum(length(b)) FROM t; SELECT hex(b) FROM t ORDER BY rowid;"
    live = sql(db, q).stdout
    assert live.split()[:2] == ["ok", "30|600000"], live[:100]
    m.stop()
    # the file and its WAL (kept while the file may not grow) hold what the history holds
    img = os.path.join(tmpbase, "w.db.img")
    history_image(m.state, "prod", "w.db", img)
    assert run("sqlite3", img, q).stdout == live


SPILL_PAST_LIMIT = r"""
import os, sqlite3, subprocess, sys
db = sys.argv[1]
c = sqlite3.connect(db, isolation_level=None)
c.execute("pragma synchronous=OFF")
c.execute("pragma cache_size=8")  # pages: the transaction spills to the file
c.execute("create table u(i integer primary key, b)")
c.execute("create table t(i integer primary key, b)")
for i in range(1, 41):
    c.execute("insert into u values (?, randomblob(3000))", (i,))
out = []
try:
    c.execute("begin")
    for i in range(1, 31):  # grows the file past max_db_size
        c.execute("insert into t values (?, randomblob(3000))", (i,))
    for i in range(1, 41):  # rewrites low pages: the new high ones leave the cache
        c.execute("update u set b = randomblob(3000) where i = ?", (i,))
    # with the writeback cache: the kernel writes the spilled pages back
    # now, the daemon refuses those past the limit, and another process's
    # fsync takes the error, so SQLite's commit never hears of it
    subprocess.run(["sync"])
    fd = os.open(db, os.O_RDWR)
    try:
        os.fsync(fd)
    except OSError as e:
        out.append("other fsync: " + e.strerror)
    os.close(fd)
    c.execute("commit")
    out.append("committed")
except sqlite3.Error as e:
    out.append("failed: " + str(e))
out.append("rows %d" % c.execute("select count(*) from t").fetchone()[0])
print("; ".join(out))
"""


def test_refused_write_back_of_a_spilled_page_fails_the_commit(new_mount, tmpbase):
    # synchronous=OFF: SQLite never syncs, so with the writeback cache a
    # refused write-back is reported to whichever close or sync comes first;
    # here another process's fsync. The commit must still fail (it recorded
    # a corrupt database before the fix), and SQLite roll it back
    m = new_mount(LIMITS)
    m.expect_error(r"s.db: commit refused: a write of this transaction that the kernel sent back later was refused")
    m.expect_error(r"s.db: the kernel could not write back what SQLite wrote")
    db = m.p("prod", "db", "s.db")
    p = run(PY, "-c", SPILL_PAST_LIMIT, db)
    assert "committed" not in p.stdout, p.stdout + m.read_log()
    assert p.stdout.strip().endswith("rows 0"), p.stdout
    assert sql(db, "PRAGMA integrity_check; SELECT count(*) FROM u; SELECT count(*) FROM t;").stdout.split() == \
        ["ok", "40", "0"]
    log = m.read_log()
    assert "would grow past max_db_size" in log
    # a transaction's refused page is not a failed write to the file itself
    assert "the file may lack committed pages" not in log
    if m.writeback():
        assert "commit refused" in log or "could not write back" in log, log
    sql(db, "INSERT INTO t VALUES (1, 'after');")
    m.stop()
    same_as_history(m, "prod", "s.db", tmpbase)


def test_database_placed_by_hand_is_recorded_whole_at_start(new_mount, tmpbase):
    m = new_mount(start=False)
    path = os.path.join(m.state, "envs", "prod", "db")
    os.makedirs(path, exist_ok=True)
    run("sqlite3", os.path.join(path, "hand.db"),
        "CREATE TABLE t(a, b); INSERT INTO t SELECT value, randomblob(500) FROM generate_series(1, 300);")
    m.start()
    assert "does not match its recorded history: recording it whole" in m.read_log()
    assert int(db_info(m, "prod", "hand.db")["commits"]) == 1
    assert sql(m.p("prod", "db", "hand.db"), "SELECT count(*) FROM t;").stdout.strip() == "300"
    m.stop()
    same_as_history(m, "prod", "hand.db", tmpbase)
