"""One durable write per commit: in the rollback modes the database file
holds committed states only, in WAL mode the WAL is not synced; the file is
synced in the background and repaired from the history after a power loss
(issue: the backup engine)."""
import os
import shutil
import subprocess
import sys

import pytest

from conftest import sql

NEVER = "3600000"  # DBMOVEFS_SYNC_INTERVAL_MS: no background sync during the test


def backing(m, name):
    return os.path.join(m.state, "envs", "prod", "db", name)


def count(db):
    return int(sql(db, "SELECT count(*) FROM t;").stdout)


def integrity(db):
    return sql(db, "PRAGMA integrity_check;").stdout.strip()


def pages(path, ps=4096):
    data = open(path, "rb").read()
    return [data[i:i + ps] for i in range(0, len(data), ps)]


@pytest.mark.parametrize("mode", ["DELETE", "TRUNCATE", "PERSIST"])
@pytest.mark.parametrize("loss", ["none_reached_disk", "some_reached_disk"])
def test_power_loss_is_repaired_from_the_history(new_mount, monkeypatch, mode, loss):
    """Simulates a power loss: after kill -9, the database file is put back to
    what was last synced (every later write lost, or only some of them), and a
    half-written journal is left beside it. The restart must rebuild every
    committed transaction from the history, and roll nothing back."""
    monkeypatch.setenv("DBMOVEFS_SYNC_INTERVAL_MS", NEVER)
    m = new_mount()
    db = m.p("prod", "db", "p.db")
    sql(db, f"PRAGMA journal_mode={mode}; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);"
            "INSERT INTO t(v) SELECT randomblob(300) FROM generate_series(1, 200);")
    m.stop()  # a clean stop syncs the file: this is the synced state
    synced = pages(backing(m, "p.db"))
    m.start()
    for i in range(40):  # each its own transaction, none synced to the file
        sql(db, f"PRAGMA journal_mode={mode}; INSERT INTO t(v) VALUES (randomblob(3000));"
                "UPDATE t SET v = randomblob(100) WHERE id = 1 + abs(random()) % 200;")
    sql(db, f"PRAGMA journal_mode={mode}; DELETE FROM t WHERE id % 7 = 0;")
    want = count(db)
    assert want == 240 - len([i for i in range(1, 241) if i % 7 == 0])
    m.crash()
    now = pages(backing(m, "p.db"))
    if loss == "none_reached_disk":
        lost = synced
    else:  # any subset of unsynced writes may have reached the disk
        lost = [(synced[i] if i < len(synced) and i % 2 else now[i]) for i in range(len(now))]
    with open(backing(m, "p.db"), "wb") as f:
        f.write(b"".join(lost))
    with open(backing(m, "p.db-journal"), "wb") as f:  # a journal whose writes were torn
        f.write(bytes.fromhex("d9d505f920a163d7") + b"\xff" * 4 + os.urandom(4096 + 20))
    m.start()
    assert not os.path.exists(backing(m, "p.db-journal"))
    assert count(db) == want
    assert integrity(db) == "ok"
    log = m.read_log()
    assert "rewrote" in log and "recorded after the last sync of the file" in log
    assert "removed the journal a crash left" in log


def test_background_sync_bounds_the_repair(new_mount, monkeypatch):
    """With the background sync on, a crash after it ran repairs nothing."""
    monkeypatch.setenv("DBMOVEFS_SYNC_INTERVAL_MS", "100")
    m = new_mount()
    db = m.p("prod", "db", "b.db")
    sql(db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);"
            "INSERT INTO t(v) SELECT randomblob(300) FROM generate_series(1, 50);")
    marker = os.path.join(m.state, "envs", "prod", "capture", "b.db.synced")
    before = open(marker, "rb").read()
    import time
    deadline = time.time() + 10
    while open(marker, "rb").read() == before and time.time() < deadline:
        time.sleep(0.05)
    assert open(marker, "rb").read() != before, "the background sync never advanced the marker"
    m.crash()
    m.start()
    assert count(db) == 50 and integrity(db) == "ok"
    assert "recorded after the last sync of the file" not in m.read_log()


def test_reads_inside_a_transaction_see_its_own_writes(new_mount, monkeypatch):
    """A tiny page cache makes SQLite spill pages mid-transaction and read them
    back through the mount; they wait in the shadow, not in the file."""
    m = new_mount()
    db = m.p("prod", "db", "s.db")
    sql(db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB); CREATE INDEX tv ON t(v);")
    sql(db, "PRAGMA cache_size=3; BEGIN; INSERT INTO t(v) SELECT randomblob(500) FROM generate_series(1, 3000);"
            "SELECT count(*) FROM t WHERE v > x'80'; UPDATE t SET v = randomblob(400) WHERE id % 3 = 0; COMMIT;")
    assert count(db) == 3000 and integrity(db) == "ok"
    size = os.stat(db).st_size
    # a VACUUM shrinks the file inside the transaction (a truncate in the shadow)
    sql(db, "DELETE FROM t WHERE id > 100; VACUUM;")
    assert os.stat(db).st_size < size
    assert os.stat(backing(m, "s.db")).st_size == os.stat(db).st_size
    assert count(db) == 100 and integrity(db) == "ok"
    # a spilled transaction rolled back leaves the file as it was
    before = open(db, "rb").read()
    sql(db, "PRAGMA cache_size=3; BEGIN; INSERT INTO t(v) SELECT randomblob(500) FROM generate_series(1, 2000);"
            "ROLLBACK;")
    assert open(db, "rb").read() == before
    assert open(backing(m, "s.db"), "rb").read() == before


def test_attached_databases_commit_together(new_mount):
    """A transaction over two databases uses a super-journal: it falls back to
    SQLite's own protocol, and both databases get it."""
    m = new_mount()
    a, b = m.p("prod", "db", "a.db"), m.p("prod", "db", "b.db")
    sql(a, "CREATE TABLE t(x);")
    sql(b, "CREATE TABLE t(x);")
    sql(a, f"ATTACH '{b}' AS other; BEGIN; INSERT INTO t VALUES (1); INSERT INTO other.t VALUES (2); COMMIT;"
           f"BEGIN; INSERT INTO t VALUES (3); INSERT INTO other.t VALUES (4); ROLLBACK;")
    assert sql(a, "SELECT x FROM t;").stdout.split() == ["1"]
    assert sql(b, "SELECT x FROM t;").stdout.split() == ["2"]
    assert integrity(a) == "ok" and integrity(b) == "ok"
    assert not [n for n in os.listdir(m.p("prod", "db")) if "-mj" in n]
    m.stop()
    m.start()
    assert sql(a, "SELECT x FROM t;").stdout.split() == ["1"]
    assert sql(b, "SELECT x FROM t;").stdout.split() == ["2"]


def test_switch_to_wal_and_back_survives_a_crash(new_mount, monkeypatch):
    monkeypatch.setenv("DBMOVEFS_SYNC_INTERVAL_MS", NEVER)
    m = new_mount()
    db = m.p("prod", "db", "w.db")
    sql(db, "CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t(v) VALUES (1), (2);")
    sql(db, "PRAGMA journal_mode=WAL; INSERT INTO t(v) VALUES (3);")
    sql(db, "PRAGMA journal_mode=DELETE; INSERT INTO t(v) VALUES (4);")
    m.crash()
    m.start()
    assert [int(x) for x in sql(db, "SELECT v FROM t ORDER BY id;").stdout.split()] == [1, 2, 3, 4]
    assert integrity(db) == "ok"


WAL_WRITER = r"""
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("pragma journal_mode=wal")
c.execute("pragma synchronous=" + sys.argv[2])
for i in range(40):
    c.execute("begin")
    c.execute("insert into t(v) values (randomblob(3000))")
    c.execute("update t set v = randomblob(100) where id = 1 + abs(random()) % 200")
    c.execute("commit")
    if i == 20:  # some frames reach the database file, unsynced
        c.execute("pragma wal_checkpoint(passive)")
print(c.execute("select count(*) from t").fetchone()[0], flush=True)
sys.stdin.read()  # holds the connection, and so the WAL, until killed
"""


def write_wal_then_crash(m, db, sync):
    """Runs WAL_WRITER, then kill -9s the daemon while it holds the WAL open;
    returns the row count the writer saw committed."""
    w = subprocess.Popen([sys.executable, "-c", WAL_WRITER, db, sync], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE)
    try:
        return int(w.stdout.readline())
    finally:
        m.crash()
        w.kill()
        w.wait()


@pytest.mark.parametrize("sync", ["FULL", "NORMAL"])
@pytest.mark.parametrize("loss", ["none_reached_disk", "some_reached_disk"])
def test_wal_power_loss_is_repaired_from_the_history(new_mount, monkeypatch, sync, loss):
    """WAL mode syncs neither the WAL nor the checkpoints. A power loss is
    simulated after kill -9: the database file is put back to what was last
    synced (or a page-by-page mix), the WAL torn to a prefix of its frames, and
    the daemon restarts as in a new boot. Every transaction the writer saw
    committed must be there; a WAL prefix must not roll any of them back."""
    monkeypatch.setenv("DBMOVEFS_SYNC_INTERVAL_MS", NEVER)
    m = new_mount()
    db = m.p("prod", "db", "w.db")
    sql(db, "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);"
            "INSERT INTO t(v) SELECT randomblob(300) FROM generate_series(1, 200);")
    m.stop()  # the last connection removed the WAL, the stop synced the file
    synced = pages(backing(m, "w.db"))
    m.start()
    seen = write_wal_then_crash(m, db, sync)
    assert seen == 240
    now = pages(backing(m, "w.db"))
    if loss == "none_reached_disk":
        lost = synced
    else:
        lost = [(synced[i] if i < len(synced) and i % 2 else now[i]) for i in range(len(now))]
    with open(backing(m, "w.db"), "wb") as f:
        f.write(b"".join(lost))
    wal = open(backing(m, "w.db-wal"), "rb").read()
    frames = (len(wal) - 32) // (24 + 4096)
    assert frames > 20
    with open(backing(m, "w.db-wal"), "wb") as f:  # a prefix of the frames, then a torn one
        f.write(wal[:32 + (frames // 3) * (24 + 4096)] + os.urandom(1000))
    monkeypatch.setenv("DBMOVEFS_BOOT_ID", "the-next-boot")
    m.start()
    assert count(db) == seen
    assert integrity(db) == "ok"
    log = m.read_log()
    assert "removed the WAL left by a reboot" in log
    m.stop()
    # the next start of the same boot trusts what it finds
    m.start()
    assert count(db) == seen and integrity(db) == "ok"


def test_wal_crash_in_the_same_boot_resumes_from_the_wal(new_mount, monkeypatch):
    """kill -9 without a reboot: the page cache kept the WAL, so the restart
    keeps it (SQLite's own recovery reads it) and no rebuild is needed. With
    the writeback cache, what the kernel held for the mount died with it (a
    checkpoint's pages among it): the restart rebuilds the file from the
    history, as after a reboot."""
    monkeypatch.setenv("DBMOVEFS_SYNC_INTERVAL_MS", NEVER)
    m = new_mount()
    db = m.p("prod", "db", "w.db")
    sql(db, "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);"
            "INSERT INTO t(v) SELECT randomblob(300) FROM generate_series(1, 200);")
    seen = write_wal_then_crash(m, db, "FULL")
    assert os.path.exists(backing(m, "w.db-wal"))
    m.start()
    assert count(db) == seen and integrity(db) == "ok"
    log = m.read_log()
    if m.writeback():
        assert "removed the WAL left by a reboot" in log
    else:
        assert "removed the WAL" not in log and "rewrote" not in log


ATTACHED_WRITER = r"""
import sqlite3, sys
a = sqlite3.connect(sys.argv[1], isolation_level=None)
a.execute("attach ? as o", (sys.argv[2],))
i = 0
while True:
    i += 1
    a.execute("begin")
    a.execute("insert into t(v) values (randomblob(2000))")
    a.execute("insert into o.t(v) values (randomblob(2000))")
    a.execute("commit")
    print(i, flush=True)
"""


def test_crash_during_attached_commits_keeps_the_databases_together(new_mount):
    """kill -9 while a multi-database commit is under way (its super-journal
    exists), at varying points of it: after the restart both databases have
    the same transactions. SQLite's rule decides: the transaction committed
    exactly when its super-journal is gone."""
    m = new_mount()
    a, b = m.p("prod", "db", "a.db"), m.p("prod", "db", "b.db")
    for d in (a, b):
        sql(d, "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);"
               "INSERT INTO t(v) SELECT randomblob(500) FROM generate_series(1, 50);")
    back = os.path.join(m.state, "envs", "prod", "db")
    import time
    for attempt in range(40):
        w = subprocess.Popen([sys.executable, "-c", ATTACHED_WRITER, a, b], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
        try:
            for _ in range(1 + attempt % 7):
                w.stdout.readline()
            deadline = time.time() + 5
            while time.time() < deadline and not any("-mj" in n for n in os.listdir(back)):
                pass
            time.sleep((attempt % 6) * 0.0003)
        finally:
            m.crash()
            w.kill()
            w.wait()
        m.start()
        assert count(a) == count(b), f"attempt {attempt}: the databases disagree"
        assert integrity(a) == "ok" and integrity(b) == "ok"
