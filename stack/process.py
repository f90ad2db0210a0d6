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


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state is [0], pgid [2], start time [19])."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw[raw.rindex(")") + 2 :].split()


def start_time_of(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[19] if fields else None


def _reap(pid: int) -> None:
    """Collect an exited child of ours, so it does not linger as a zombie."""
    with suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def is_alive(record: PidRecord) -> bool:
    """True while the recorded process exists, is not a zombie, and is the same process (start time)."""
    _reap(record.pid)
    fields = _stat_fields(record.pid)
    return bool(fields) and fields[0] != "Z" and fields[19] == record.start_time


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def rss_bytes(pids: Iterable[int]) -> int:
    """Resident memory of the given processes, summed."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def cpu_seconds(pids: Iterable[int]) -> float:
    """CPU time (user + system, including reaped children) of the given processes, summed."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            ticks += sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def spawn(command: list[str], log_file: Path, pid_file: Path, env: dict[str, str], cwd: Path) -> PidRecord:
    """Start a daemon in its own session with output appended to `log_file`; record it in `pid_file`."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(command)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=env, cwd=cwd, start_new_session=True,
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
