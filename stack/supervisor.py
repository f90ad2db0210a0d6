"""The supervisor: keeps every service that `up` started running, as systemd's `Restart=on-failure` would.

`python -m stack supervise` is started by `make up` (it is the `supervisor` row of `make status`) and watches each
service marked wanted (`up` marks, `down` unmarks), one thread per service, once a second:

- A service whose process exited is restarted after a backoff (1 s, doubling, at most 60 s), what was left of
  its process group killed first. Five exits in a row, each within 60 s of its start, make it `crash-looping`:
  it is still retried every 60 s (a dependency may come back), never in a busy loop, and `make status` shows
  the last error line of its log. A run of 60 s resets the count.
- A service that reports its own health (gateway, streaming job) and stops reporting for 60 s is wedged: its
  process group is killed, then restarted as above. Services probed from outside (brokers, Kudu, SQL, the model
  server) are restarted when their process exits; a probe failure alone only shows as `degraded`.
- Killing the supervisor stops nothing: the services run on, and the next `make up` starts it again; it picks
  up the running services from their pid files.

Why not supervisord: see the README's "Self-healing" section. In short, it would have to be the parent of every
service (it cannot adopt running processes after its own restart), and it knows exit codes but not health:
it has no notion of a wedged process that is alive, nor of `degraded`, which is what `make status` must show.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from runtime.health import Health, HealthReporter, read_health
from runtime.retry import Backoff
from stack.config import load_config
from stack.launcher import Stack, Supervision, last_error_line, service_lock, supervision_file
from stack.process import PidRecord, group_members, is_alive, kill_group
from stack.secrets import ensure_secrets
from stack.services import Service

TICK_S = 1.0
STABLE_AFTER_S = 60.0  # a run this long resets the count of quick exits
CRASH_LOOP_AFTER = 5  # quick exits in a row that make a service crash-looping
WATCHDOG_S = 60.0  # a self-reporting service silent this long is killed and restarted
log = logging.getLogger("supervisor")


class ServiceWatch:
    """One service's supervision: a thread that checks it every TICK_S seconds."""

    def __init__(self, stack: Stack, service: Service, secrets: dict[str, str]):
        self.stack, self.service, self.secrets = stack, service, secrets
        self.thread = threading.Thread(target=self.run, name=f"watch-{service.name}", daemon=True)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(TICK_S):
            try:
                self.tend(time.time())
            except Exception:  # noqa: BLE001 - one bad tick must not end the supervision of this service
                log.exception("%s: supervision tick failed", self.service.name)

    def tend(self, now: float) -> None:
        service = self.service
        if not service.wanted_file.exists():
            return
        with service_lock(service):
            if not service.wanted_file.exists():  # `down` got there first
                return
            path = supervision_file(service)
            state = Supervision.load(path)
            record = PidRecord.load(service.pid_file)
            if record and is_alive(record):
                self.watch_running(record, state, now)
            else:
                self.handle_exit(record, state, now)
            state.save(path)

    def started_at(self, state: Supervision) -> float:
        try:
            return state.started_at or self.service.pid_file.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def watch_running(self, record: PidRecord, state: Supervision, now: float) -> None:
        state.next_restart_at = None  # running (perhaps started by `up` meanwhile)
        started = self.started_at(state)
        if not state.healthy_once and self.is_ready():
            state.healthy_once = True
        if state.healthy_once and state.failures and now - started > STABLE_AFTER_S:
            state.failures, state.crash_looping = 0, False
        wedged = self.wedged(started, now)
        if wedged:
            state.last_error = f"{wedged}: killed by the supervisor's watchdog"
            log.warning("%s (pid %d): %s", self.service.name, record.pid, state.last_error)
            kill_group(record.pid)

    def is_ready(self) -> bool:
        try:
            return bool(self.service.is_ready(self.secrets))
        except Exception:  # noqa: BLE001 - not ready yet
            return False

    def wedged(self, started: float, now: float) -> str | None:
        """Why a self-reporting service counts as wedged (silent too long), or None."""
        if self.service.health_file is None:
            return None
        report = read_health(self.service.health_file)
        if report and report.updated >= started:
            silent = now - report.updated
            return f"no health report for {silent:.0f} s" if silent > WATCHDOG_S else None
        first_report_within = max(self.stack.cfg.ready_timeout_s, WATCHDOG_S)
        if now - started > first_report_within:
            return f"no health report in the {first_report_within:.0f} s after its start"
        return None

    def handle_exit(self, record: PidRecord | None, state: Supervision, now: float) -> None:
        service = self.service
        if state.next_restart_at is None:
            if record and record.pid > 1 and group_members(record.pid):
                kill_group(record.pid)  # what the dead process left behind (spark-submit's children, say)
            quick = now - self.started_at(state) < STABLE_AFTER_S
            state.failures = state.failures + 1 if quick else 1
            state.crash_looping = state.failures >= CRASH_LOOP_AFTER
            state.last_error = state.last_error if "watchdog" in state.last_error else last_error_line(
                service.log_file)
            backoff = Backoff(1.0, STABLE_AFTER_S)
            backoff.failures = state.failures - 1
            delay = backoff.next_delay()
            state.next_restart_at = now + delay
            log.warning("%s exited%s; restart in %.0f s; last error: %s", service.name,
                        " (crash-looping)" if state.crash_looping else "", delay, state.last_error)
        elif now >= state.next_restart_at:
            try:
                self.stack.check_port_free(service)
                new = self.stack.start_process(service, self.secrets)
            except Exception as exc:  # noqa: BLE001 - say why, and try again after the next backoff
                state.last_error = f"restart failed: {exc}"
                state.next_restart_at = None
                state.started_at = now
                log.error("%s: %s", service.name, state.last_error)
                return
            state.restarts += 1
            state.started_at, state.next_restart_at, state.healthy_once = now, None, False
            state.last_error = ""
            log.info("%s restarted (pid %d, restart %d)", service.name, new.pid, state.restarts)


class StackSupervisor:
    """Every service's watch, and the supervisor's own health."""

    def __init__(self, stack: Stack):
        secrets = ensure_secrets(stack.cfg.secrets_file)
        self.watches = [ServiceWatch(stack, service, secrets) for service in stack.services]

    def run(self, stop: threading.Event) -> None:
        for watch in self.watches:
            watch.thread.start()
        stop.wait()
        for watch in self.watches:
            watch.stop.set()

    def health(self) -> Health:
        dead = [w.service.name for w in self.watches if not w.thread.is_alive()]
        if dead:
            return Health("degraded", f"not watching {', '.join(dead)}")
        wanted = [w.service.name for w in self.watches if w.service.wanted_file.exists()]
        return Health("up", f"watching {', '.join(wanted) or 'nothing'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack supervise", description=__doc__.split("\n\n")[0])
    parser.add_argument("--health-file", type=Path, help="where to write the supervisor's own state")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # the readiness probes' Kafka client is chatty
    try:
        cfg = load_config()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    supervisor = StackSupervisor(Stack(cfg, log=log.info))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    reporter = HealthReporter(args.health_file, supervisor.health).start()
    log.info("supervising the services marked wanted")
    try:
        supervisor.run(stop)
    finally:
        reporter.stop()
    return 0
