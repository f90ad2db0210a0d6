"""Start, find and stop the stack's daemons through pid files, so that a later command can manage them.

A pid file holds the pid and the kernel's start time of the process, so a recycled pid is never mistaken for
ours. Each daemon is started in its own session: its pid is also its process group id, and stopping the
group stops whatever the daemon spawned (spark-submit's JVM, for one).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import psutil

from stack.service_user import ServiceUser


@dataclass(frozen=True)
class PidRecord:
    pid: int
    start_time: str

    def dump(self) -> str:
        return f"{self.pid} {self.start_time}\n"

    @classmethod
    def load(cls, path: Path) -> PidRecord | None:
        try:
            pid, start_time = path.read_text().split()
            return cls(int(pid), start_time)
        except (FileNotFoundError, ValueError):
            return None


# psutil's errors (gone, zombie, not ours to read) and the OSError it passes on when a /proc file vanishes.
_GONE = (psutil.Error, OSError)


def _ticks_since_boot(process: psutil.Process) -> str:
    """Start time as /proc/<pid>/stat has it (clock ticks since boot), the form pid files have always held.

    Boot-relative like psutil's own identity check: `create_time()` adds the boot time, which moves when the
    wall clock is stepped, so a stored epoch time could stop matching a live daemon."""
    return str(round((process.create_time() - psutil.boot_time()) * os.sysconf("SC_CLK_TCK")))


def start_time_of(pid: int) -> str | None:
    try:
        return _ticks_since_boot(psutil.Process(pid))
    except _GONE:
        return None


def _reap(pid: int) -> None:
    """Collect an exited child of ours, so it does not linger as a zombie."""
    with suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def is_alive(record: PidRecord) -> bool:
    """True while the recorded process exists, is not a zombie, and is the same process (start time)."""
    _reap(record.pid)
    try:
        process = psutil.Process(record.pid)
        return process.status() != psutil.STATUS_ZOMBIE and _ticks_since_boot(process) == record.start_time
    except _GONE:
        return False


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    members = []
    for pid in psutil.pids():
        with suppress(*_GONE):
            if os.getpgid(pid) == pgid and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                members.append(pid)
    return members


def rss_bytes(pids: Iterable[int]) -> int:
    """Resident memory of the given processes, summed."""
    total = 0
    for pid in pids:
        with suppress(*_GONE):
            total += psutil.Process(pid).memory_info().rss
    return total


def cpu_seconds(pids: Iterable[int]) -> float:
    """CPU time (user + system, including reaped children) of the given processes, summed."""
    total = 0.0
    for pid in pids:
        with suppress(*_GONE):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


def spawn(command: list[str], log_file: Path, pid_file: Path, env: dict[str, str], cwd: Path,
          user: ServiceUser | None = None) -> PidRecord:
    """Start a daemon in its own session with output appended to `log_file`; record it in `pid_file`.

    With `user`, the daemon runs as that user and its group only (the caller's other groups dropped)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(command)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=env, cwd=cwd, start_new_session=True,
            **({"user": user.uid, "group": user.gid, "extra_groups": []} if user else {}),
        )
    record = PidRecord(proc.pid, start_time_of(proc.pid) or "?")
    pid_file.write_text(record.dump())
    return record


def stop_group(record: PidRecord, grace_s: float = 30.0) -> bool:
    """SIGTERM the daemon's process group, SIGKILL what is left after `grace_s`. True if it had to kill."""
    if not is_alive(record) and not group_members(record.pid):
        return False
    _signal_group(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        _reap(record.pid)
        if not group_members(record.pid):
            return False
        time.sleep(0.2)
    kill_group(record.pid)
    return True


def kill_group(pgid: int, timeout_s: float = 10.0) -> None:
    """SIGKILL a process group and wait (up to `timeout_s`) until none of it is left."""
    if pgid <= 1:
        raise ValueError(f"refusing to signal process group {pgid}")
    _signal_group(pgid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while group_members(pgid) and time.monotonic() < deadline:
        _reap(pgid)
        time.sleep(0.1)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pgid, sig)
