"""The supervisor, on a service of its own that fails on purpose: restarts with growing backoff, becomes
`crash-looping` after five quick exits (showing the last error line of the log), and recovers by itself once
the service can run again. Time is driven by the test (the supervisor takes `now`), the processes are real."""

from __future__ import annotations

import time

import pytest

from runtime.waiting import wait_until
from stack.config import load_config
from stack.launcher import Stack, Supervision, supervision_file
from stack.process import PidRecord, is_alive
from stack.services import Service
from stack.supervisor import CRASH_LOOP_AFTER, STABLE_AFTER_S, ServiceWatch


class Flaky(Service):
    """A service whose command fails while `broken` exists (its last words look like any service's error)."""

    name = "flaky"

    @property
    def address(self) -> str:
        return "-"

    @property
    def listen_port(self) -> int | None:
        return None

    @property
    def broken(self):
        return self.cfg.dir / "broken"

    def command(self) -> list[str]:
        return ["sh", "-c", f'if [ -e {self.broken} ]; then echo "ERROR flaky: cannot start, disk on fire"; exit 1; '
                            f"fi; exec sleep 600"]

    def is_ready(self, secrets: dict[str, str]) -> bool:
        return True


@pytest.fixture()
def flaky(new_stack_dir, stack_environment):
    cfg = load_config(environ=stack_environment(new_stack_dir("flaky")))
    service = Flaky(cfg)
    stack = Stack(cfg, log=lambda *_: None)
    stack.services = [service]
    yield stack, service
    stack.down(["flaky"])


def state_of(stack: Stack) -> tuple[str, str]:
    row = stack.status(["flaky"])[0]
    return row.state, row.detail


def wait_exited(service: Service) -> None:
    record = PidRecord.load(service.pid_file)
    if record:
        wait_until(lambda: not is_alive(record), 10, f"{service.name} to exit")  # the shell's exit, milliseconds away


def test_quick_exits_back_off_then_crash_loop_then_recover(flaky):
    stack, service = flaky
    service.broken.touch()
    service.wanted_file.parent.mkdir(parents=True, exist_ok=True)
    service.wanted_file.touch()
    stack.start_process(service, {})
    watch = ServiceWatch(stack, service, {})
    now = time.time()
    delays = []
    for _ in range(CRASH_LOOP_AFTER):
        wait_exited(service)
        watch.tend(now)  # sees the exit, schedules a restart
        state = Supervision.load(supervision_file(service))
        delays.append(round(state.next_restart_at - now))
        assert state_of(stack)[0] == ("crash-looping" if state.failures >= CRASH_LOOP_AFTER else "crashed")
        now = state.next_restart_at
        watch.tend(now)  # restarts it
    assert delays == [1, 2, 4, 8, 16]
    wait_exited(service)
    watch.tend(now)
    state, detail = state_of(stack)
    assert state == "crash-looping"
    assert "ERROR flaky: cannot start, disk on fire" in detail

    retry_at = Supervision.load(supervision_file(service)).next_restart_at
    assert retry_at - now == 32  # still retried, the backoff doubling up to its cap of 60 s

    service.broken.unlink()  # the cause goes away: the next retry runs it, and it stays up
    now = retry_at
    watch.tend(now)
    watch.tend(now + 1)
    assert state_of(stack)[0] == "up"
    watch.tend(now + STABLE_AFTER_S + 2)
    assert Supervision.load(supervision_file(service)).failures == 0
    assert Supervision.load(supervision_file(service)).restarts == CRASH_LOOP_AFTER + 1


def test_a_service_stopped_with_down_is_not_restarted(flaky):
    stack, service = flaky
    service.wanted_file.parent.mkdir(parents=True, exist_ok=True)
    service.wanted_file.touch()
    stack.start_process(service, {})
    watch = ServiceWatch(stack, service, {})
    stack.down(["flaky"])
    watch.tend(time.time() + 3600)
    assert PidRecord.load(service.pid_file) is None
    assert state_of(stack)[0] == "down"
