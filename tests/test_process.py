"""stack/process.py on real, short-lived processes of the test's own: pid files (including ones written before
psutil did the reading), process groups with a zombie in them, memory, CPU time, and stopping a group."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from stack import process
from stack.process import (
    PidRecord,
    cpu_seconds,
    group_members,
    is_alive,
    kill_group,
    rss_bytes,
    spawn,
    start_time_of,
    stop_group,
)


def proc_stat_start_time(pid: int) -> str:
    """The start time as the code before psutil wrote it into pid files: field 22 of /proc/<pid>/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2 :].split()[19]


def wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture()
def daemon(tmp_path):
    """Start a command as the launcher does; stop its group afterwards whatever the test did."""
    started = []

    def start(script: str) -> PidRecord:
        record = spawn(["sh", "-c", script], tmp_path / "log", tmp_path / "pid", dict(os.environ), tmp_path)
        started.append(record)
        return record

    yield start
    for record in started:
        if group_members(record.pid):
            kill_group(record.pid)


def a_gone_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_start_time_is_the_one_old_pid_files_hold():
    child = subprocess.Popen(["sleep", "30"])
    try:
        for pid in (os.getpid(), os.getppid(), child.pid):
            assert start_time_of(pid) == proc_stat_start_time(pid)
    finally:
        child.kill()
        child.wait()


def test_a_pid_file_of_the_old_code_is_still_read(tmp_path):
    child = subprocess.Popen(["sleep", "30"])
    try:
        old = tmp_path / "old.pid"
        old.write_text(f"{child.pid} {proc_stat_start_time(child.pid)}\n")
        record = PidRecord.load(old)
        assert record == PidRecord(child.pid, proc_stat_start_time(child.pid))
        assert is_alive(record)
    finally:
        child.kill()
        child.wait()
    assert not is_alive(record)  # killed and reaped


def test_a_recycled_pid_is_not_ours():
    me = os.getpid()
    assert is_alive(PidRecord(me, start_time_of(me)))
    assert not is_alive(PidRecord(me, str(int(start_time_of(me)) + 1)))
    assert not is_alive(PidRecord(me, "?"))  # what spawn records when the process was gone at once
    assert not is_alive(PidRecord(a_gone_pid(), "1"))


def test_unreadable_pid_files_are_no_record(tmp_path):
    assert PidRecord.load(tmp_path / "missing.pid") is None
    for text in ("", "123", "abc 1", "1 2 3"):
        (tmp_path / "bad.pid").write_text(text)
        assert PidRecord.load(tmp_path / "bad.pid") is None


def test_group_members_rss_and_cpu_of_a_daemon(daemon, tmp_path):
    record = daemon("sleep 60 & exec sleep 61")
    assert PidRecord.load(tmp_path / "pid") == record
    assert record.start_time == proc_stat_start_time(record.pid)
    wait_for(lambda: sorted(psutil.Process(pid).name() for pid in group_members(record.pid)) == ["sleep"] * 2)
    members = group_members(record.pid)  # both sleeping (sh has exec'd), so their memory holds still
    assert record.pid in members
    assert all(os.getpgid(pid) == record.pid for pid in members)
    assert is_alive(record)
    rss = rss_bytes(members)
    assert rss == sum(psutil.Process(pid).memory_info().rss for pid in members) and rss > 0
    assert 0.0 <= cpu_seconds(members) < 5.0


def test_a_zombie_is_not_a_member_and_not_alive(daemon):
    record = daemon("true & exec sleep 60")  # sleep never waits for `true`: it stays a zombie in the group
    zombie = []

    def zombie_seen() -> bool:
        zombie[:] = [p.pid for p in psutil.Process(record.pid).children()
                     if p.status() == psutil.STATUS_ZOMBIE]
        return bool(zombie)

    wait_for(zombie_seen)
    assert group_members(record.pid) == [record.pid]
    assert not is_alive(PidRecord(zombie[0], proc_stat_start_time(zombie[0])))
    assert rss_bytes(zombie) == 0


def test_stop_group_terminates_the_whole_group(daemon):
    record = daemon("sleep 60 & exec sleep 61")
    wait_for(lambda: len(group_members(record.pid)) == 2)
    assert stop_group(record, grace_s=10) is False
    assert group_members(record.pid) == []
    assert not is_alive(record)
    assert stop_group(record) is False  # nothing left: harmless


def test_stop_group_kills_what_ignores_sigterm(daemon):
    record = daemon("trap '' TERM; sleep 60 & exec sleep 61")
    wait_for(lambda: len(group_members(record.pid)) == 2)
    assert stop_group(record, grace_s=0.5) is True
    assert group_members(record.pid) == []


def test_kill_group_refuses_init_and_everything():
    for pgid in (0, 1, -1):
        with pytest.raises(ValueError):
            kill_group(pgid)


def test_gone_processes_count_as_nothing():
    gone = a_gone_pid()
    assert group_members(gone) == []
    assert rss_bytes([gone]) == 0
    assert cpu_seconds([gone]) == 0.0
    assert start_time_of(gone) is None


@pytest.mark.parametrize("error", [psutil.AccessDenied(1), psutil.ZombieProcess(1), psutil.NoSuchProcess(1),
                                   FileNotFoundError("/proc/1/statm")])
def test_psutil_errors_do_not_reach_the_callers(monkeypatch, error):
    def failing(pid):
        raise error

    monkeypatch.setattr(process.psutil, "Process", failing)
    me = os.getpid()
    assert not is_alive(PidRecord(me, proc_stat_start_time(me)))
    assert start_time_of(me) is None
    assert group_members(os.getpgid(me)) == []
    assert rss_bytes([me]) == 0
    assert cpu_seconds([me]) == 0.0


def test_cpu_seconds_counts_user_system_and_reaped_children():
    child = subprocess.Popen([sys.executable, "-c", "import time; t = time.process_time()\n"
                              "while time.process_time() - t < 0.3: pass\nimport time; time.sleep(30)"])
    try:
        wait_for(lambda: cpu_seconds([child.pid]) >= 0.25)
        times = psutil.Process(child.pid).cpu_times()
        assert cpu_seconds([child.pid]) == pytest.approx(
            times.user + times.system + times.children_user + times.children_system, abs=0.05)
    finally:
        child.kill()
        child.wait()
