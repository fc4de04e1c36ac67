"""The daemon, its layout and its set-up (issue: daemon foundation)."""
import os
import pwd
import re
import signal
import stat
import subprocess
import time

import pytest

from conftest import BIN, ROOT, Mount, kv, run, sql, wait_for


def test_help_and_version():
    p = run(BIN, "--help")
    assert "usage: dbmovefs [options] STATE_DIR MOUNTPOINT" in p.stdout
    assert "--init" in p.stdout
    p = run(BIN, "--version")
    assert re.match(r"dbmovefs \d+\.\d+\.\d+", p.stdout)


def test_init_creates_commented_config_and_refuses_overwrite(tmpbase):
    state = os.path.join(tmpbase, "s")
    p = run(BIN, "--init", state)
    assert "prod" in p.stdout
    conf = open(os.path.join(state, "dbmovefs.conf")).read()
    assert "[env prod]" in conf and "type = production" in conf
    assert "[env uat]" in conf and "type = sandbox" in conf
    assert "[env dev]" in conf and "type = devtest" in conf
    assert conf.count("#") > 10  # commented
    # contrib's sample is what --init writes
    assert open(os.path.join(ROOT, "contrib", "dbmovefs.conf.sample")).read() == conf
    p = run(BIN, "--init", state, check=False)
    assert p.returncode != 0
    assert "refusing to overwrite" in p.stderr
    assert open(os.path.join(state, "dbmovefs.conf")).read() == conf


def test_layout(mount):
    assert sorted(os.listdir(mount.mnt)) == ["README", "dev", "prod", "status", "uat"]
    for env in ("prod", "uat", "dev"):
        assert sorted(os.listdir(mount.p(env))) == ["db", "info", "snapshots", "status"]
        assert os.listdir(mount.p(env, "db")) == []
    out = run("ls", "-l", mount.mnt).stdout
    assert "README" in out


def test_every_text_file_reads_and_has_its_fields(mount):
    readme = open(mount.p("README")).read()
    assert "fs-layout.md" in readme and "<env>/db/<name>.db" in readme
    st = kv(open(mount.p("status")).read())
    for k in ("version", "pid", "state_dir", "started", "uptime_sec", "config", "config_reloads",
              "config_reload_failures", "environments", "operations_running", "operations_queued"):
        assert k in st, k
    assert st["environments"] == "3"
    assert st["env.prod"].startswith("production online")
    assert st["env.uat"].startswith("sandbox online")
    assert st["env.dev"].startswith("devtest online")
    assert int(st["pid"]) == mount.proc.pid
    for env, typ, ret in (("prod", "production", "28d"), ("uat", "sandbox", "7d"), ("dev", "devtest", "7d")):
        info = kv(open(mount.p(env, "info")).read())
        assert info["name"] == env and info["type"] == typ and info["state"] == "online"
        assert info["retention"] == ret
        assert int(info["retention_sec"]) == int(ret[:-1]) * 86400
        for k in ("created", "restore_chain_start", "earliest_restore_point", "owner", "group", "mode", "readers", "writers", "operators",
                  "post_refresh_script", "max_databases", "max_db_size", "ops_limit", "ops_window",
                  "snapshot_cadence", "databases"):
            assert k in info, k
        s = kv(open(mount.p(env, "status")).read())
        assert s["name"] == env and s["state"] == "online" and s["operation"] == "none"


def test_stat_size_matches_content_and_tools_see_all(mount):
    for path in (mount.p("status"), mount.p("README"), mount.p("prod", "info"), mount.p("prod", "status")):
        data = open(path, "rb").read()
        # stat reports the length a fresh read returns (time fields keep their width)
        assert os.stat(path).st_size == len(data), path
        assert run("cat", path).stdout.encode() == data or path.endswith("status")
        lines = data.decode().splitlines()
        assert run("tail", "-n", "2", path).stdout.splitlines() == lines[-2:] or path.endswith("status")
    assert run("grep", "^environments: 3$", mount.p("status")).stdout.strip() == "environments: 3"
    assert run("tail", "-n", "1", mount.p("status")).stdout.startswith("exports_produced: ")
    # while a reader holds it open, and its content grew since (a new
    # database adds lines), stat still gives what a read returns now
    path = mount.p("prod", "status")
    with open(path, "rb") as held:
        before = held.read()
        sql(mount.p("prod", "db", "s.db"), "CREATE TABLE t(x);")
        data = open(path, "rb").read()
        assert len(data) > len(before) and os.stat(path).st_size == len(data)


def test_status_is_fresh_on_every_read(mount):
    a = kv(open(mount.p("prod", "status")).read())["time"]
    time.sleep(0.05)
    b = kv(open(mount.p("prod", "status")).read())["time"]
    assert a != b
    u1 = int(kv(open(mount.p("status")).read())["uptime_sec"])
    time.sleep(1.1)
    u2 = int(kv(open(mount.p("status")).read())["uptime_sec"])
    assert u2 > u1


def test_text_files_are_read_only(mount):
    for path in (mount.p("status"), mount.p("prod", "info")):
        with pytest.raises(PermissionError):
            open(path, "w")
    with pytest.raises(PermissionError):
        os.mkdir(mount.p("prod", "x"))
    with pytest.raises(PermissionError):
        open(mount.p("prod", "newfile"), "w")


CONFIG_MODES = """
[env prod]
type = production
owner = nobody
group = nogroup
mode = 0750

[env uat]
type = sandbox
retention = 14d
mode = 0700
readers = nobody
"""


def test_modes_owners_and_timestamps_follow_config(new_mount):
    m = new_mount(CONFIG_MODES, True, "-o", "allow_other")
    nobody = pwd.getpwnam("nobody")
    st = os.stat(m.p("prod"))
    assert stat.S_IMODE(st.st_mode) == 0o750 and stat.S_ISDIR(st.st_mode)
    assert st.st_uid == nobody.pw_uid
    assert abs(st.st_mtime - time.time()) < 60
    info = os.stat(m.p("prod", "info"))
    assert stat.S_IMODE(info.st_mode) == 0o440
    assert stat.S_IMODE(os.stat(m.p("uat")).st_mode) == 0o700
    assert kv(open(m.p("uat", "info")).read())["retention"] == "14d"
    assert kv(open(m.p("uat", "info")).read())["readers"] == "nobody"
    # access: nobody owns prod (r-x for the owner's group... owner has rwx) and reads uat via readers
    def as_nobody(*cmd):
        return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *cmd],
                              capture_output=True, text=True)
    assert as_nobody("ls", m.p("prod")).returncode == 0
    assert as_nobody("cat", m.p("uat", "info")).returncode == 0
    r = subprocess.run(["setpriv", "--reuid=daemon", "--regid=daemon", "--clear-groups", "ls", m.p("uat")],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "Permission denied" in r.stderr


def test_second_daemon_on_same_state_is_refused(mount, tmpbase):
    other = os.path.join(tmpbase, "mnt2")
    os.mkdir(other)
    p = run(BIN, "-f", mount.state, other, check=False)
    assert p.returncode == 1
    assert "in use by another dbmovefs" in p.stderr
    assert not os.path.ismount(other)


def test_refuses_bad_mountpoints_and_state_dirs(tmpbase):
    m = Mount(tmpbase)
    p = run(BIN, "-f", m.state, os.path.join(tmpbase, "missing"), check=False)
    assert p.returncode == 1 and "No such file or directory" in p.stderr
    open(os.path.join(m.mnt, "x"), "w").close()
    p = run(BIN, "-f", m.state, m.mnt, check=False)
    assert p.returncode == 1 and "is not empty" in p.stderr
    os.unlink(os.path.join(m.mnt, "x"))
    p = run(BIN, "-f", os.path.join(tmpbase, "nostate"), m.mnt, check=False)
    assert p.returncode == 1 and "does not exist" in p.stderr and "--init" in p.stderr
    os.mkdir(os.path.join(tmpbase, "empty"))
    p = run(BIN, "-f", os.path.join(tmpbase, "empty"), m.mnt, check=False)
    assert p.returncode == 1 and "not a dbmovefs state directory" in p.stderr
    p = run(BIN, m.state, check=False)
    assert p.returncode == 2 and "expected STATE_DIR and MOUNTPOINT" in p.stderr
    assert not os.path.ismount(m.mnt)


def test_bad_config_stops_start_with_file_and_line(tmpbase):
    m = Mount(tmpbase, "[env prod]\ntype = production\nretention = forever\n")
    p = run(BIN, "-f", m.state, m.mnt, check=False)
    assert p.returncode == 1
    assert "dbmovefs.conf:3: retention: 'forever' is not a duration" in p.stderr
    assert not os.path.ismount(m.mnt)
    # and without -f: the parent reports it and exits 1
    p = run(BIN, m.state, m.mnt, check=False)
    assert p.returncode == 1 and "dbmovefs.conf:3" in p.stderr


def test_sighup_reloads_and_a_bad_reload_keeps_the_old_config(mount):
    conf = os.path.join(mount.state, "dbmovefs.conf")
    good = open(conf).read()
    with open(conf, "a") as f:
        f.write("\n[env qa]\ntype = sandbox\nretention = 3d\n")
    os.kill(mount.proc.pid, signal.SIGHUP)
    wait_for(lambda: "qa" in os.listdir(mount.mnt), what="qa after reload")
    assert kv(open(mount.p("qa", "info")).read())["retention"] == "3d"
    assert kv(open(mount.p("status")).read())["config_reloads"] == "1"
    mount.expect_error(r"reload refused")
    with open(conf, "w") as f:
        f.write(good + "\n[env broken]\ntipe = sandbox\n")
    os.kill(mount.proc.pid, signal.SIGHUP)
    wait_for(lambda: kv(open(mount.p("status")).read())["config_reload_failures"] == "1", what="failed reload")
    assert "qa" in os.listdir(mount.mnt)  # the old (running) config stays
    assert "unknown key 'tipe'" in mount.read_log()
    # removing an environment hides it
    with open(conf, "w") as f:
        f.write(good)
    os.kill(mount.proc.pid, signal.SIGHUP)
    wait_for(lambda: "qa" not in os.listdir(mount.mnt), what="qa removed")
    assert sorted(os.listdir(mount.mnt)) == ["README", "dev", "prod", "status", "uat"]


def test_unmount_and_signals_shut_down_cleanly(new_mount):
    m = new_mount()
    pid = m.proc.pid
    run("fusermount3", "-u", m.mnt)
    assert m.proc.wait(timeout=10) == 0
    m.proc = None
    for sig in (signal.SIGTERM, signal.SIGINT):
        m.start()
        m.proc.send_signal(sig)
        assert m.proc.wait(timeout=10) == 0
        m.proc = None
        m.logf.close()
        wait_for(lambda: not os.path.ismount(m.mnt), what="unmount on signal")
    assert pid


def test_handles_open_at_shutdown_are_dropped(new_mount):
    """Files still open when the daemon stops never get a RELEASE: the daemon
    drops their handles itself (the ASan build fails this on a leak)."""
    m = new_mount()
    db = m.p("prod", "db", "h.db")
    sql(db, "CREATE TABLE t(x); INSERT INTO t VALUES (1);")
    latest = m.p("prod", "snapshots", "latest")
    files = [open(m.p("status"), "rb"), open(db, "rb"), open(os.path.join(latest, "db", "h.db"), "rb"),
             open(os.path.join(latest, "export.bacpac"), "rb"), open(os.path.join(latest, "export.bacpac.sha256"), "rb")]
    for f in files:
        f.read(16)
    m.proc.send_signal(signal.SIGTERM)
    assert m.proc.wait(timeout=20) == 0
    m.proc = None
    for f in files:
        try:
            f.close()
        except OSError:
            pass  # the connection is gone
    wait_for(lambda: not os.path.ismount(m.mnt), what="unmount on signal")
    assert "unmount: dropped 5 file handle(s) the kernel did not release" in m.read_log()


def test_background_mode_returns_when_ready(tmpbase):
    m = Mount(tmpbase)
    p = run(BIN, m.state, m.mnt)  # returns only once the mount answers
    assert p.returncode == 0
    try:
        assert os.path.ismount(m.mnt)
        assert "prod" in os.listdir(m.mnt)
        pid = int(open(os.path.join(m.state, "lock")).read())
        os.kill(pid, 0)
    finally:
        run("fusermount3", "-u", m.mnt)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z",
             what="daemon exit")


def test_mount_fuse3_helper_as_fstab_uses_it(tmpbase):
    """An fstab line 'STATE MNT fuse.dbmovefs allow_other 0 0' runs this."""
    m = Mount(tmpbase)
    env = dict(os.environ, PATH=os.path.dirname(BIN) + ":" + os.environ["PATH"])
    p = subprocess.run(["mount.fuse3", m.state, m.mnt, "-t", "dbmovefs", "-o", "allow_other"], env=env,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    try:
        assert sorted(os.listdir(m.mnt)) == ["README", "dev", "prod", "status", "uat"]
    finally:
        run("fusermount3", "-u", m.mnt)


def test_systemd_unit_verifies(tmpbase):
    import shutil as sh
    if not sh.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    unit = open(os.path.join(ROOT, "contrib", "dbmovefs.service")).read()
    assert "ExecStart=/usr/local/bin/dbmovefs -f" in unit  # the path meson install uses
    path = os.path.join(tmpbase, "dbmovefs.service")
    open(path, "w").write(unit.replace("/usr/local/bin/dbmovefs", os.path.abspath(BIN)))
    p = subprocess.run(["systemd-analyze", "verify", path], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
