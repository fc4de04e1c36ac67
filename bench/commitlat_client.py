#!/usr/bin/python3
"""commitlat_client.py DB MB TX ROWS: builds a WAL database of about MB MiB (rows of 1000 bytes),
then runs TX transactions that each update ROWS random rows (synchronous=FULL), timing each
COMMIT. Prints `build_sec`, then one commit latency in seconds per line. Run as its own process so
each side pays the same costs."""

import random
import sqlite3
import sys
import time

db, mb, tx, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
c = sqlite3.connect(db, isolation_level=None)
if c.execute("pragma journal_mode=wal").fetchone()[0] != "wal":
    sys.exit("journal_mode=wal refused")
c.execute("pragma synchronous=FULL")
c.execute("create table t(id integer primary key, v blob)")
n = mb * 1024 * 1024 // 1100  # a 1000-byte row takes about 1100 bytes of a page
t0 = time.monotonic()
c.execute("begin")
c.executemany("insert into t(id, v) values (?, randomblob(1000))", ((i,) for i in range(1, n + 1)))
c.execute("commit")
print("%.6f" % (time.monotonic() - t0))
rng = random.Random(1)
upd = "update t set v = randomblob(1000) where id = ?"
for _ in range(tx):
    c.execute("begin")
    for _ in range(rows):
        c.execute(upd, (rng.randint(1, n),))
    t1 = time.monotonic()
    c.execute("commit")
    print("%.6f" % (time.monotonic() - t1))
if c.execute("pragma integrity_check").fetchone()[0] != "ok":
    sys.exit("integrity_check failed")
c.close()
