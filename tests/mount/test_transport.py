"""How requests reach the daemon: /dev/fuse or FUSE over io_uring (issue: backup engine, speed)."""
import os
import shutil
import subprocess
import time

import pytest

from conftest import BIN, PY, URING_PARAM, kv, run, sql, wait_for


@pytest.fixture
def uring_switch():
    """Sets the kernel's FUSE-over-io_uring switch for one test, then puts it back."""
    if not os.access(URING_PARAM, os.W_OK):
        pytest.skip(f"{URING_PARAM} is not writable here (needs root and Linux 6.14+)")
    was = open(URING_PARAM).read().strip()

    def set_to(value):
        with open(URING_PARAM, "w") as f:
            f.write(value)

    yield set_to
    set_to(was)


@pytest.mark.parametrize("opt, expected", [("io_uring=yes", "expected io_uring=auto or io_uring=off"),
                                           ("wakeup=near", "expected wakeup=local or wakeup=any"),
                                           ("passthrough=on", "expected passthrough=auto or passthrough=off"),
                                           ("writeback=on", "expected writeback=auto or writeback=off")])
def test_transport_options_are_checked(tmpbase, opt, expected):
    state, mnt = os.path.join(tmpbase, "s"), os.path.join(tmpbase, "m")
    os.makedirs(mnt)
    run(BIN, "--init", state)
    p = run(BIN, "-f", "-o", opt, state, mnt, check=False)
    assert p.returncode == 2
    assert opt in p.stderr and expected in p.stderr
    assert not os.path.ismount(mnt)


def wakeup(m):
    return kv(open(m.p("status")).read())["fuse_wakeup"]


def status(m, key):
    return kv(open(m.p("status")).read())[key]


def children(pid):
    """Pids of pid's child processes."""
    out = []
    for p in os.listdir("/proc"):
        try:
            if p.isdigit() and open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1] == str(pid):
                out.append(int(p))
        except (OSError, IndexError):
            pass
    return out


def test_writeback_is_the_default_for_root_and_says_why_not(new_mount):
    if os.geteuid() != 0:
        pytest.skip("opening files by handle needs CAP_DAC_READ_SEARCH")
    m = new_mount(None, True, "-o", "writeback=auto")
    assert status(m, "fuse_writeback").startswith("on (the kernel caches writes")
    assert status(m, "fuse_passthrough").startswith("off (the writeback cache is on")
    helper = children(m.proc.pid)
    assert len(helper) == 1, "the writeback cache's helper process runs beside the daemon"
    db = m.p("prod", "db", "w.db")
    sql(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; CREATE TABLE t(x); INSERT INTO t VALUES (1);")
    assert sql(db, "SELECT count(*) FROM t; PRAGMA integrity_check;").stdout.split() == ["1", "ok"]
    m.stop()
    wait_for(lambda: not os.path.exists(f"/proc/{helper[0]}"), what="the helper to end with the daemon")
    m = new_mount(None, True, "-o", "writeback=off")
    assert status(m, "fuse_writeback") == "off (-o writeback=off)"
    assert children(m.proc.pid) == []
    m.stop()
    m = new_mount(None, True, "-s", "-o", "writeback=auto")
    assert status(m, "fuse_writeback") == "off (-s: a commit point waits for writes that another thread must serve)"
    assert children(m.proc.pid) == []
    m.stop()
    m = new_mount(None, True, "-o", "writeback=auto,max_threads=1")
    assert status(m, "fuse_writeback") == \
        "off (-o max_threads=1, below 8: a commit point waits for writes that other threads must serve)"
    assert children(m.proc.pid) == []
    serves(m)


def test_writeback_without_cap_dac_read_search_falls_back_and_says_why(new_mount):
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv (util-linux) to start a daemon without CAP_DAC_READ_SEARCH")
    m = new_mount(None, False)
    m.wrapper = ["setpriv", "--bounding-set=-dac_read_search", "--inh-caps=-dac_read_search"]
    m.start("-o", "writeback=auto,passthrough=auto")
    assert status(m, "fuse_writeback") == \
        "off (reaching the kernel's copy of a file by handle needs CAP_DAC_READ_SEARCH)"
    assert status(m, "fuse_passthrough").startswith("on (")  # what serves instead
    serves(m)


def idle_threads(m):
    """The daemon's threads at SCHED_IDLE now."""
    tids = os.listdir(f"/proc/{m.proc.pid}/task")
    out = []
    for t in tids:
        try:
            if os.sched_getscheduler(int(t)) == os.SCHED_IDLE:
                out.append(t)
        except ProcessLookupError:
            pass
    return out


def queue_threads(m):
    """{tid: policy} of the daemon's FUSE queue threads."""
    out = {}
    for t in os.listdir(f"/proc/{m.proc.pid}/task"):
        try:
            if open(f"/proc/{m.proc.pid}/task/{t}/comm").read().startswith("dbm-uring-q"):
                out[int(t)] = os.sched_getscheduler(int(t))
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out


LOCAL = "local ("
CONTENDED = "any (tasks are waiting for CPUs; local again once they are not)"


def settled(m, state, policy, count=None):
    """True if fuse_wakeup starts with state both before and after every
    queue thread (count of them, if given) is seen at policy. The guard
    follows the machine's CPU pressure, which other work changes at any
    time: a test waits for this rather than asserting it once."""
    if not wakeup(m).startswith(state):
        return False
    q = queue_threads(m)
    ok = set(q.values()) == {policy} and (count is None or len(q) == count)
    return ok and wakeup(m).startswith(state)


def other_threads(m):
    """{tid: name} of the daemon's threads other than queue threads (and the
    kernel's io-wq threads of their rings)."""
    out = {}
    for t in os.listdir(f"/proc/{m.proc.pid}/task"):
        try:
            comm = open(f"/proc/{m.proc.pid}/task/{t}/comm").read().strip()
        except FileNotFoundError:
            continue
        if not comm.startswith(("dbm-uring-q", "iou-wrk")):
            out[t] = comm
    return out


def others_idle(m):
    """Those of other_threads at SCHED_IDLE now."""
    idle = set(idle_threads(m))
    return [(t, comm) for t, comm in other_threads(m).items() if t in idle]


def pinned_others(m):
    """Those of other_threads whose CPUs differ from the main thread's."""
    def cpus(t):
        try:
            for line in open(f"/proc/{m.proc.pid}/task/{t}/status"):
                if line.startswith("Cpus_allowed_list:"):
                    return line.split(":", 1)[1].strip()
        except FileNotFoundError:
            return None  # ended meanwhile

    want = cpus(m.proc.pid)
    return [(t, comm, c) for t, comm in other_threads(m).items() if (c := cpus(t)) not in (want, None)]


def serves(m):
    """A database works through mount m."""
    db = m.p("prod", "db", "t.db")
    sql(db, "CREATE TABLE t(x); INSERT INTO t VALUES (1);")
    assert sql(db, "SELECT count(*) FROM t; PRAGMA integrity_check;").stdout.split() == ["1", "ok"]


def default_mount(new_mount):
    """A mount started without -o io_uring=: the daemon's default (auto)."""
    m = new_mount(None, False)
    m.default_transport = True
    return m.start()


def test_off_is_reported_and_serves(new_mount):
    m = new_mount(None, True, "-o", "io_uring=off")
    st = kv(open(m.p("status")).read())
    assert st["fuse_transport"] == "/dev/fuse"
    assert st["fuse_transport_detail"] == "io_uring off (-o io_uring=auto turns it on)"
    serves(m)


def test_default_is_io_uring_when_the_kernel_allows_it(new_mount, uring_switch):
    uring_switch("Y")
    m = default_mount(new_mount)
    wait_for(lambda: m.transport() == "io_uring", what="io_uring transport by default")
    serves(m)


def test_disabled_in_the_kernel_falls_back_and_says_how_to_enable(new_mount, uring_switch):
    uring_switch("N")
    m = default_mount(new_mount)
    st = kv(open(m.p("status")).read())
    assert st["fuse_transport"] == "/dev/fuse"
    assert f"echo Y > {URING_PARAM}" in st["fuse_transport_detail"]
    assert "FUSE over io_uring not used" in m.read_log()
    serves(m)


WORKLOAD = """
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], timeout=20, isolation_level=None)
for i in range(200):
    c.execute("BEGIN IMMEDIATE")
    c.execute("INSERT INTO t(who, pad) VALUES (?, randomblob(300))", (sys.argv[2],))
    c.execute("COMMIT")
    c.execute("SELECT count(*) FROM t").fetchone()
"""


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_io_uring_serves_writers_on_every_cpu(new_mount, uring_switch, mode):
    uring_switch("Y")
    m = new_mount(None, True, "-o", "io_uring=auto")
    wait_for(lambda: m.transport() == "io_uring", what="io_uring transport")
    detail = kv(open(m.p("status")).read())["fuse_transport_detail"]
    assert "queues (one per CPU)" in detail
    # as root, by default, replies wake their callers where they were served
    # (once the start-up's own CPU pressure, under a sanitizer, has passed)
    wait_for(lambda: wakeup(m).startswith(LOCAL), timeout=30, what="no CPU contention")
    ncpu = os.cpu_count()
    db = m.p("prod", "db", f"u{mode}.db")
    # the journal mode is set once, before the writers: SQLite does not wait
    # (busy timeout or not) when two connections switch it at the same time
    sql(db, f"PRAGMA journal_mode={mode}; CREATE TABLE t(id INTEGER PRIMARY KEY, who, pad);")
    # one writer per CPU, pinned, so that every queue serves requests
    ws = [subprocess.Popen(["taskset", "-c", str(cpu), PY, "-c", WORKLOAD, db, f"cpu{cpu}"])
          for cpu in range(ncpu)]
    assert all(w.wait(timeout=120) == 0 for w in ws)
    assert sql(db, "SELECT count(*) FROM t;").stdout.strip() == str(200 * ncpu)
    assert sql(db, "PRAGMA integrity_check;").stdout.strip() == "ok"
    commits = int(kv(open(m.p("prod", "info")).read())[f"db.u{mode}.db.commits"])
    assert commits >= 200 * ncpu
    # queue threads wait at SCHED_IDLE (while no task waits for a CPU: the
    # writers may have made some); the threads handlers started (the
    # syncer, here) run at the daemon's policy, not the idle one they would
    # have inherited, and on all its CPUs, not the one queue thread's
    nq, per = (int(w) for w in detail.replace(",", " ").split() if w.isdigit())
    wait_for(lambda: settled(m, LOCAL, os.SCHED_IDLE, nq * per), timeout=30,
             what=f"all {nq * per} queue threads at SCHED_IDLE without CPU contention")
    assert not others_idle(m)
    assert not pinned_others(m)
    # a clean unmount with the queue threads running
    m.stop()
    assert "queue thread did not stop" not in m.read_log()


def test_wakeup_any_is_reported_and_serves(new_mount, uring_switch):
    uring_switch("Y")
    m = new_mount(None, True, "-o", "io_uring=auto,wakeup=any")
    wait_for(lambda: m.transport() == "io_uring", what="io_uring transport")
    assert wakeup(m) == "any (-o wakeup=any)"
    serves(m)
    assert not idle_threads(m)


def test_wakeup_local_without_cap_sys_nice_falls_back_and_says_why(new_mount, uring_switch):
    """A daemon that could not leave SCHED_IDLE again never enters it."""
    uring_switch("Y")
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv (util-linux) to start a daemon without CAP_SYS_NICE")
    m = new_mount(None, False)
    m.wrapper = ["prlimit", "--nice=0:0", "setpriv", "--bounding-set=-sys_nice", "--inh-caps=-sys_nice"]
    m.start("-o", "io_uring=auto")
    wait_for(lambda: m.transport() == "io_uring", what="io_uring transport")
    assert wakeup(m) == "any (leaving SCHED_IDLE needs CAP_SYS_NICE or RLIMIT_NICE >= 20)"
    serves(m)
    assert not idle_threads(m)


def test_wakeup_local_yields_to_cpu_contention(new_mount, uring_switch):
    """Queue threads at SCHED_IDLE would wait behind any task that wants
    their CPU, and the requests with them: while tasks wait for CPUs they
    run at the daemon's policy, and go back once the waiting stops."""
    uring_switch("Y")
    if not os.access("/proc/pressure/cpu", os.R_OK):
        pytest.skip("no CPU pressure information (PSI) in this kernel")
    m = new_mount(None, True, "-o", "io_uring=auto")
    wait_for(lambda: m.transport() == "io_uring", what="io_uring transport")
    wait_for(lambda: settled(m, LOCAL, os.SCHED_IDLE), timeout=30, what="queue threads idle, no CPU contention")
    # two CPU-bound processes per CPU: some always wait
    hogs = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(2 * os.cpu_count())]
    try:
        wait_for(lambda: settled(m, CONTENDED, os.SCHED_OTHER), timeout=20,
                 what="the daemon to see the contention and move its queue threads")
        serves(m)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    wait_for(lambda: settled(m, LOCAL, os.SCHED_IDLE), timeout=30,
             what="the contention to be over and the queue threads idle again")
    assert sql(m.p("prod", "db", "t.db"), "INSERT INTO t VALUES (2); SELECT count(*) FROM t;").stdout.strip() == "2"
    log = m.read_log()
    assert "CPU contention (spell 1): queue threads at the daemon's policy" in log
    assert "CPU contention over: queue threads at SCHED_IDLE" in log


def test_wakeup_local_without_cpu_pressure_falls_back_and_says_why(new_mount, uring_switch):
    """Without CPU pressure information nothing would tell an idle-class
    queue thread it is starving: the daemon never uses it."""
    uring_switch("Y")
    m = new_mount(None, False)
    m.wrapper = ["env", "DBMOVEFS_PSI_CPU=/nonexistent/pressure"]
    m.start("-o", "io_uring=auto")
    wait_for(lambda: m.transport() == "io_uring", what="io_uring transport")
    assert wakeup(m) == "any (cannot read CPU pressure from /nonexistent/pressure: No such file or directory)"
    serves(m)
    assert not idle_threads(m)


HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 100, 4096)
print("held", flush=True)
sys.stdin.readline()
fcntl.lockf(fd, fcntl.LOCK_UN, 100, 4096)
"""

WAITER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
print("waiting", flush=True)
fcntl.lockf(fd, fcntl.LOCK_EX, 100, 4096)
fcntl.lockf(fd, fcntl.LOCK_UN, 100, 4096)
print("got", flush=True)
"""


def test_blocked_lock_waiters_do_not_starve_a_cpu(mount):
    """Twelve F_SETLKW waiters on one CPU each hold a daemon thread; requests
    from that CPU (a status read, the holder's unlock) are still served."""
    db = mount.p("prod", "db", "lk.db")
    sql(db, "CREATE TABLE t(x);")
    pin = ["taskset", "-c", "0"]
    holder = subprocess.Popen(pin + [PY, "-c", HOLDER, db], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    waiters = [subprocess.Popen(pin + [PY, "-c", WAITER, db], stdout=subprocess.PIPE, text=True) for _ in range(12)]
    try:
        for w in waiters:
            assert w.stdout.readline().strip() == "waiting"
        time.sleep(0.5)  # let every F_SETLKW reach the daemon and block there
        assert all(w.poll() is None for w in waiters), "a waiter got a lock that is held"
        st = run(*pin, "cat", mount.p("status"), timeout=20)
        assert "fuse_transport" in st.stdout
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(timeout=30) == 0
        for w in waiters:
            out, _ = w.communicate(timeout=60)
            assert out.strip() == "got" and w.returncode == 0
    finally:
        for p in waiters + [holder]:
            if p.poll() is None:
                p.kill()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    # its request is stuck in a starved daemon: only ending the daemon frees it
                    mount.crash()
                    p.wait()
