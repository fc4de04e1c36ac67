#!/usr/bin/python3
"""smalltx_client.py DB MODE N: N transactions of one row each, synchronous=FULL, journal_mode MODE.
Prints `elapsed_sec rows` on stdout. Run as its own process so each side pays the same costs."""

import sqlite3
import sys
import time

db, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = sqlite3.connect(db, isolation_level=None)
got = c.execute("pragma journal_mode=%s" % mode).fetchone()[0]
if got != mode:
    sys.exit("journal_mode is %s, not %s" % (got, mode))
c.execute("pragma synchronous=FULL")
c.execute("create table if not exists t(id integer primary key, v text, ts real)")
payload = "x" * 100
ins = "insert into t(v, ts) values (?, ?)"
t0 = time.monotonic()
for i in range(n):
    c.execute("begin")
    c.execute(ins, (payload, i))
    c.execute("commit")
dt = time.monotonic() - t0
rows = c.execute("select count(*) from t").fetchone()[0]
c.close()
print("%.6f %d" % (dt, rows))
