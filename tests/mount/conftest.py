"""Fixtures for the mount tests: a real dbmovefs mount in a temporary
directory, driven by real programs. Every mount is unmounted in teardown,
even when the test fails, and the test fails if the daemon's log shows a
sanitizer report or an error the test did not expect."""
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("DBMOVEFS_BIN", os.path.join(ROOT, "build", "src", "dbmovefs"))
# DBM_TEST_IO_URING=auto runs every mount on FUSE over io_uring (and fails a
# mount that does not get it); off (the default here) runs them on /dev/fuse.
IO_URING = os.environ.get("DBM_TEST_IO_URING", "off")
# DBM_TEST_PASSTHROUGH=off serves WAL and journal files through the daemon in
# every mount (its own commit capture, per write) unless a test says otherwise
PASSTHROUGH = os.environ.get("DBM_TEST_PASSTHROUGH", "auto")
# DBM_TEST_WRITEBACK=off runs every mount without the writeback cache (then
# passthrough, or the daemon, gets every write) unless a test says otherwise
WRITEBACK = os.environ.get("DBM_TEST_WRITEBACK", "auto")
URING_PARAM = "/sys/module/fuse/parameters/enable_uring"


def uring_enabled():
    try:
        with open(URING_PARAM) as f:
            return f.read().strip() == "Y"
    except OSError:
        return False


def run(*args, check=True, **kw):
    """Runs a real program; returns CompletedProcess with text output."""
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 120)
    p = subprocess.run([str(a) for a in args], **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} exited {p.returncode}: {p.stderr}")
    return p


PY = "/usr/bin/python3"  # the python3 that has the sqlite3 module and pytest


def sql(db, script, check=True, timeout=120):
    """Runs an SQL script with the sqlite3 shell, stopping at the first error."""
    return run("sqlite3", "-bail", db, script, check=check, timeout=timeout)


def wait_for(pred, timeout=10.0, what="condition"):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def kv(text):
    """Parses 'key: value' lines."""
    out = {}
    for line in text.splitlines():
        k, sep, v = line.partition(": ")
        assert sep, f"not a key: value line: {line!r}"
        out[k] = v
    return out


class Mount:
    """One daemon serving a state directory on a mountpoint."""

    def __init__(self, base, config=None):
        self.base = base
        self.state = os.path.join(base, "state")
        self.mnt = os.path.join(base, "mnt")
        self.log = os.path.join(base, "daemon.log")
        self.default_transport = False  # True: no -o io_uring=, the daemon's default
        self.wrapper = []  # a command the daemon runs under (setpriv ...)
        self.proc = None
        self.expected_errors = []
        os.makedirs(self.mnt, exist_ok=True)
        if not os.path.exists(os.path.join(self.state, "dbmovefs.conf")):
            run(BIN, "--init", self.state)
        if config is not None:
            with open(os.path.join(self.state, "dbmovefs.conf"), "w") as f:
                f.write(config)

    def p(self, *parts):
        return os.path.join(self.mnt, *parts)

    def start(self, *extra):
        self.logf = open(self.log, "a")
        transport = [] if self.default_transport or any("io_uring=" in str(x) for x in extra) \
            else ["-o", "io_uring=" + IO_URING]
        pt = [] if any("passthrough=" in str(x) for x in extra) else ["-o", "passthrough=" + PASSTHROUGH]
        wb = [] if any("writeback=" in str(x) for x in extra) else ["-o", "writeback=" + WRITEBACK]
        self.proc = subprocess.Popen([*self.wrapper, BIN, "-f", *transport, *pt, *wb, *extra, self.state, self.mnt],
                                     stdout=self.logf, stderr=subprocess.STDOUT)
        wait_for(lambda: os.path.ismount(self.mnt) or self.proc.poll() is not None, what="mount")
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited {self.proc.returncode}: {self.read_log()}")
        # the first request waits for INIT: make sure the mount answers
        os.listdir(self.mnt)
        if transport and IO_URING == "auto":
            assert uring_enabled(), f"DBM_TEST_IO_URING=auto needs {URING_PARAM} = Y"
            wait_for(lambda: self.transport() == "io_uring", what="FUSE over io_uring (root status)")
        return self

    def transport(self):
        """fuse_transport from the root status."""
        return kv(open(self.p("status")).read())["fuse_transport"]

    def writeback(self):
        """Whether the mount runs with the writeback cache (root status)."""
        return kv(open(self.p("status")).read())["fuse_writeback"].startswith("on")

    def stop(self):
        if self.proc is None:
            return
        if os.path.ismount(self.mnt):
            subprocess.run(["fusermount3", "-u", self.mnt], capture_output=True)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            subprocess.run(["fusermount3", "-uz", self.mnt], capture_output=True)
            raise AssertionError("daemon did not exit after unmount")
        finally:
            self.logf.close()
        self.proc = None

    def crash(self):
        """kill -9 the daemon and clean the dead mount up."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)  # a daemon stuck waiting on its own mount never ends
        self.logf.close()
        self.proc = None
        subprocess.run(["fusermount3", "-uz", self.mnt], capture_output=True)
        wait_for(lambda: not os.path.ismount(self.mnt), what="unmount after crash")

    def read_log(self):
        try:
            with open(self.log) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def check_log(self):
        bad = []
        for line in self.read_log().splitlines():
            if re.search(r"(AddressSanitizer|UndefinedBehaviorSanitizer|ThreadSanitizer|LeakSanitizer|runtime error:)",
                         line):
                bad.append(line)
            elif "[error]" in line and not any(re.search(e, line) for e in self.expected_errors):
                bad.append(line)
        if bad and any("Sanitizer" in b or "runtime error" in b for b in bad):
            print(self.read_log())  # the whole report, stacks included
        assert not bad, "unexpected lines in the daemon log:\n" + "\n".join(bad)

    def expect_error(self, pattern):
        self.expected_errors.append(pattern)


@pytest.fixture
def tmpbase():
    d = tempfile.mkdtemp(prefix="dbmtest-")
    os.chmod(d, 0o755)  # other users reach the mountpoint in access tests
    yield d
    subprocess.run(["fusermount3", "-uz", os.path.join(d, "mnt")], capture_output=True)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def mount(tmpbase):
    """A started mount of the default example config (prod, uat, dev)."""
    m = Mount(tmpbase).start()
    try:
        yield m
    finally:
        m.stop()
    m.check_log()


@pytest.fixture
def new_mount(tmpbase):
    """A factory for mounts the test starts (and restarts) itself."""
    made = []

    def make(config=None, start=True, *extra):
        m = Mount(tmpbase, config)
        made.append(m)
        return m.start(*extra) if start else m

    yield make
    for m in made:
        m.stop()
    for m in made:
        m.check_log()


HISTORY = os.environ.get("DBM_HISTORY_BIN", os.path.join(ROOT, "build", "tools", "dbm-history"))


def history_image(state, env, name, out, at=None, check=True):
    """Writes the recorded image of a database (daemon stopped)."""
    args = [HISTORY, state, "image", env, name, out] + ([str(at)] if at is not None else [])
    return run(*args, check=check)


def db_info(m, env, name):
    """The db.<name>.* fields of <env>/info."""
    prefix = f"db.{name}."
    return {k[len(prefix):]: v for k, v in kv(open(m.p(env, "info")).read()).items() if k.startswith(prefix)}
