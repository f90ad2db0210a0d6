"""The CLI behind `make up / status / down`: idempotent up, crash detection, and nothing left after down.

This test runs its own stack through `python -m stack`, exactly as the Makefile does, in a temp directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from stack.config import load_config
from stack.process import PidRecord, group_members, is_alive
from stack.services import service_names

pytestmark = [pytest.mark.stack, pytest.mark.slow]
SERVICES = service_names(load_config(environ={}))  # the single-node profile's


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stack", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def pid_records(stack_dir: Path) -> dict[str, PidRecord]:
    return {name: PidRecord.load(stack_dir / "pids" / f"{name}.pid") for name in SERVICES}


def state_of(status_output: str, service: str) -> str:
    """The STATE cell of `service` in the status table that ends the output."""
    lines = status_output.splitlines()
    table = lines[max(i for i, line in enumerate(lines) if line.startswith("SERVICE")) + 1 :]
    for line in table:
        cells = line.split()
        if cells and cells[0] == service:
            return cells[2]
    raise AssertionError(f"{service} missing from status:\n{status_output}")


def processes_mentioning(path: Path) -> list[int]:
    """Processes whose command line names `path` (what a leaked daemon of this stack would show)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if str(path).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_up_twice_crash_shows_down_and_down_leaves_nothing(new_stack_dir, stack_environment):
    stack_dir = new_stack_dir("lifecycle")
    env = stack_environment(stack_dir)
    try:
        first = cli(env, "up")
        assert first.returncode == 0, first.stdout + first.stderr
        assert all(state_of(first.stdout, s) == "up" for s in SERVICES), first.stdout
        started = pid_records(stack_dir)
        assert all(record and is_alive(record) for record in started.values())

        second = cli(env, "up")
        assert second.returncode == 0, second.stderr
        assert second.stdout.count("already running") == len(SERVICES)
        assert pid_records(stack_dir) == started

        os.kill(started["kafka"].pid, signal.SIGKILL)
        crashed = cli(env, "status")
        assert crashed.returncode == 3
        assert state_of(crashed.stdout, "kafka") == "crashed"
        assert state_of(crashed.stdout, "kudu-master") == "up"

        restarted = cli(env, "up", "kafka")
        assert restarted.returncode == 0, restarted.stderr
        assert state_of(restarted.stdout, "kafka") == "up"
        everything = [*started.values(), pid_records(stack_dir)["kafka"]]
    finally:
        down = cli(env, "down")
    assert down.returncode == 0, down.stderr
    assert all(state_of(down.stdout, s) == "down" for s in SERVICES)
    for record in everything:
        assert not is_alive(record)
        assert group_members(record.pid) == []
    assert processes_mentioning(stack_dir) == []
