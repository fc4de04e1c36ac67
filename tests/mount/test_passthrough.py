"""Passthrough: SQLite's WAL and journal writes go from the kernel straight to
the backing files, and commit capture reads them at each sync point (issue:
backup engine, speed)."""
import os
import sqlite3

import pytest

from conftest import kv, sql, wait_for


def passthrough(m):
    return kv(open(m.p("status")).read())["fuse_passthrough"]


def commits(m, name):
    return int(kv(open(m.p("prod", "status")).read()).get(f"db.{name}.commits", "0"))


def test_passthrough_is_on_by_default_for_root_without_the_writeback_cache(new_mount):
    if os.geteuid() != 0:
        pytest.skip("registering backing files needs CAP_SYS_ADMIN")
    m = new_mount(None, True, "-o", "passthrough=auto,writeback=off")
    assert passthrough(m).startswith("on (")
    m.stop()
    m = new_mount(None, True, "-o", "passthrough=auto,writeback=auto")
    assert passthrough(m) == ("off (the writeback cache is on, and the kernel does not combine the two; "
                              "-o writeback=off gives passthrough)")


def test_passthrough_off_is_reported_and_serves(new_mount):
    m = new_mount(None, True, "-o", "passthrough=off,writeback=off")
    assert passthrough(m) == "off (-o passthrough=off)"
    db = m.p("prod", "db", "w.db")
    sql(db, "PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1);")
    assert sql(db, "SELECT count(*) FROM t; PRAGMA integrity_check;").stdout.split() == ["1", "ok"]


def open_db(m, name, journal, sync, locking):
    path = m.p("prod", "db", name)
    c = sqlite3.connect(path, isolation_level=None)
    assert c.execute(f"PRAGMA journal_mode={journal}").fetchone()[0] == journal
    c.execute(f"PRAGMA synchronous={sync}")
    c.execute(f"PRAGMA locking_mode={locking}")
    return c


# exclusive locking mode with synchronous=OFF sends nothing at a rollback
# journal's commit in passthrough (the header is zeroed in place, no sync, no
# unlock): that commit is recorded at the next transaction's first page write
# at the latest. With the writeback cache journals use direct I/O: the
# zeroing is a request, and the commit is recorded at once.
LAGS = {("delete", "OFF", "EXCLUSIVE"), ("persist", "OFF", "EXCLUSIVE")}


@pytest.mark.parametrize("locking", ["NORMAL", "EXCLUSIVE"])
@pytest.mark.parametrize("sync", ["FULL", "NORMAL", "OFF"])
@pytest.mark.parametrize("journal", ["wal", "delete", "truncate", "persist"])
def test_each_commit_is_recorded_before_it_returns(new_mount, journal, sync, locking):
    m = new_mount(None, True, "-o", "passthrough=auto")
    name = f"c_{journal}_{sync}_{locking}.db".lower()
    c = open_db(m, name, journal, sync, locking)
    try:
        c.execute("CREATE TABLE t(x)")
        lag = 1 if (journal, sync, locking) in LAGS and not m.writeback() else 0
        first = commits(m, name)  # the switch to WAL is a commit of its own
        assert first == (2 if journal == "wal" else 1) - lag
        for i in range(1, 9):
            c.execute("INSERT INTO t VALUES (?)", (i,))
            assert commits(m, name) == first + i, f"after commit {i}"
        c.execute("BEGIN")
        c.execute("INSERT INTO t VALUES (-1)")
        c.execute("ROLLBACK")
    finally:
        c.close()
    assert commits(m, name) == first + 8 + lag  # the rollback is not a commit
    live = sqlite3.connect(m.p("prod", "db", name))
    assert live.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = live.execute("SELECT x FROM t ORDER BY x").fetchall()
    live.close()
    snap = sqlite3.connect(f"file:{m.p('prod', 'snapshots', 'latest', 'db', name)}?mode=ro", uri=True)
    assert snap.execute("SELECT x FROM t ORDER BY x").fetchall() == rows == [(i,) for i in range(1, 9)]
    snap.close()


def test_wal_switched_to_exclusive_after_opening_is_recorded_by_the_background_sync(new_mount):
    """A connection whose WAL opened in passthrough, then switched to
    locking_mode=EXCLUSIVE, takes no lock per transaction: with synchronous
    NORMAL its commits are recorded by the background sync (every second)."""
    m = new_mount(None, True, "-o", "passthrough=auto")
    c = open_db(m, "late.db", "wal", "NORMAL", "NORMAL")
    try:
        c.execute("CREATE TABLE t(x)")
        c.execute("INSERT INTO t VALUES (0)")
        c.execute("PRAGMA locking_mode=EXCLUSIVE")
        base = commits(m, "late.db")
        for i in range(5):
            c.execute("INSERT INTO t VALUES (?)", (i,))
        wait_for(lambda: commits(m, "late.db") == base + 5, timeout=10, what="the background sync's capture")
    finally:
        c.close()
