"""Bring the local stack up, down, and report on it; write `.stack/connection.env` for every client.

`up` marks each service it starts as wanted and starts the supervisor (stack/supervisor.py), which restarts a
wanted service that exits; `down` unmarks first, then stops, so nothing is restarted behind its back. Starting
and stopping a service hold its lock file, so `up`, `down` and the supervisor never act on one service at once.

States in `status`: `up` (doing its work), `starting`, `degraded` (alive but held up: waiting on a dependency,
or not answering its probe; `detail` says which), `crashed` (exited; the supervisor restarts it after a backoff),
`crash-looping` (exited again and again soon after each start; retried every minute; `detail` has the last
error line of its log), `down` (not started, or stopped).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from runtime.settings import read_env_file, write_env_file
from runtime.waiting import port_open, wait_until
from stack.config import StackConfig
from stack.connection import local_stack_settings
from stack.process import PidRecord, group_members, is_alive, kill_group, rss_bytes, spawn, stop_group
from stack.secrets import ensure_secrets
from stack.service_user import ServiceUser, check_reachable, hand_over, service_user
from stack.services import Service, Supervisor, all_services

STATES = ("up", "starting", "degraded", "crashed", "crash-looping", "down")
# What each profile's processes may use together, stated by `status` beside what is in use: measured 2.7 and 6.2 GiB
# after 40,000 readings at 1,000/s, plus the JVM heaps' headroom (README, "Running as a cluster").
PROFILE_MEMORY_GIB = {"single": 4, "cluster": 8}


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    address: str
    state: str  # one of STATES
    pid: int | None
    rss_bytes: int
    log_file: Path
    detail: str = ""
    waiting_on: str | None = None
    restarts: int = 0
    metrics: str = ""  # the Prometheus endpoint, if the service has one

    def as_dict(self) -> dict:
        return asdict(self) | {"log_file": str(self.log_file)}


@dataclass
class Supervision:
    """What the supervisor knows of one service, kept in `<pids>/<name>.supervision.json`."""

    failures: int = 0  # consecutive exits soon after a start
    restarts: int = 0
    started_at: float = 0.0
    last_error: str = ""
    next_restart_at: float | None = None  # set while the service is down and due to be restarted
    crash_looping: bool = False
    healthy_once: bool = False  # it reported health since its last start (the watchdog applies from then)

    @classmethod
    def load(cls, path: Path) -> Supervision:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return cls()

    def save(self, path: Path) -> None:
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(asdict(self)))
        partial.replace(path)


class StackError(RuntimeError):
    """A service could not be started or stopped; the message says which and where to look."""


def supervision_file(service: Service) -> Path:
    return service.cfg.pids_dir / f"{service.name}.supervision.json"


@contextlib.contextmanager
def service_lock(service: Service) -> Iterator[None]:
    """Exclusive right to start or stop `service` (a lock file; released when the holder exits, even by kill)."""
    service.cfg.pids_dir.mkdir(parents=True, exist_ok=True)
    with (service.cfg.pids_dir / f"{service.name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def last_error_line(log_file: Path, tail_bytes: int = 64 * 1024) -> str:
    """The last line of a log that reads like an error (else its last line), for `status`."""
    try:
        with log_file.open("rb") as log:
            log.seek(max(0, log_file.stat().st_size - tail_bytes))
            lines = [line.strip() for line in log.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    markers = ("error", "exception", "fatal", "refused", "failed")
    errors = [line for line in lines if any(m in line.lower() for m in markers) and not line.startswith("====")]
    return (errors or lines or [""])[-1][:300]


class Stack:
    """The local stack described by a StackConfig."""

    def __init__(self, cfg: StackConfig, log=print):
        self.cfg = cfg
        self.services = all_services(cfg)
        self.supervisor = Supervisor(cfg)
        self.log = log

    def select(self, names: list[str] | None) -> list[Service]:
        if not names:
            return self.services
        known = {s.name: s for s in self.services}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise StackError(f"unknown service(s) {unknown}; known: {', '.join(known)}")
        return [s for s in self.services if s.name in names]

    def write_connection_file(self) -> Path:
        secrets = ensure_secrets(self.cfg.secrets_file)
        write_env_file(self.cfg.connection_file, local_stack_settings(self.cfg, secrets),
                       "Connection settings of the local stack; `source` it, or point these at a real cluster.")
        return self.cfg.connection_file

    @staticmethod
    def running(service: Service) -> PidRecord | None:
        record = PidRecord.load(service.pid_file)
        return record if record and is_alive(record) else None

    def up(self, names: list[str] | None = None) -> list[ServiceStatus]:
        """Start the selected services (all by default), wait until each is ready, and supervise them.

        Services start in parallel, in waves: a service that needs the others (`needs_others_ready`) starts
        only once every service before it is ready. Harmless when up."""
        secrets = ensure_secrets(self.cfg.secrets_file)
        chosen = self.select(names)
        if user := self.service_user():
            check_reachable(self.cfg, user)
        self.cfg.pids_dir.mkdir(parents=True, exist_ok=True)
        for service in chosen:
            service.wanted_file.touch()
        wave: list[Service] = []
        for service in chosen:
            if service.needs_others_ready and wave:
                self._start_and_await(wave, secrets)
                wave = []
            wave.append(service)
        self._start_and_await(wave, secrets)
        self.write_connection_file()
        self.ensure_supervisor(secrets)
        return self.status(names)

    def ensure_supervisor(self, secrets: dict[str, str]) -> None:
        """Start the supervisor unless it runs; it watches every service marked wanted."""
        with service_lock(self.supervisor):
            if self.running(self.supervisor):
                return
            self.start_process(self.supervisor, secrets)
        wait_until(lambda: self.supervisor.is_ready(secrets), 30, "the supervisor",
                          abort=lambda: None if self.running(self.supervisor)
                          else f"the supervisor exited; see {self.supervisor.log_file}")

    @staticmethod
    def clear_leftovers(service: Service) -> None:
        """Kill what is left of a crashed service's process group (spark-submit's children, say)."""
        record = PidRecord.load(service.pid_file)
        if record and record.pid > 1 and group_members(record.pid):
            kill_group(record.pid)

    def start_process(self, service: Service, secrets: dict[str, str]) -> PidRecord:
        """Prepare and spawn one service (the caller holds its lock); does not wait for readiness."""
        service.prepare(secrets)
        env = service.environment(secrets)
        user = None if service.runs_as_launcher else self.service_user()
        if user:
            hand_over(self.cfg, user)
            env["HOME"] = str(self.cfg.data_dir)  # the launcher's home is not the user's to write
        return spawn(service.command(), service.log_file, service.pid_file, env, cwd=self.cfg.dir, user=user)

    def service_user(self) -> ServiceUser | None:
        """Who the services run as (None: the launcher's user); raises, saying what to do, if that user is missing."""
        return service_user(self.cfg)

    def _start_and_await(self, services: list[Service], secrets: dict[str, str]) -> None:
        started: dict[str, PidRecord] = {}
        for service in services:
            with service_lock(service):
                if self.running(service):
                    self.log(f"  {service.name:<14} already running")
                    continue
                self.check_port_free(service)
                self.clear_leftovers(service)
                started[service.name] = self.start_process(service, secrets)
            self.log(f"  {service.name:<14} started (pid {started[service.name].pid})")
        for service in services:
            t0 = time.monotonic()
            wait_until(
                lambda s=service: s.is_ready(secrets), self.cfg.ready_timeout_s, f"{service.name}",
                abort=lambda s=service: None if self.running(s) else f"the process exited; see {s.log_file}",
            )
            note = service.initialise(secrets)
            suffix = f"; {note}" if note else ""
            self.log(f"  {service.name:<14} ready at {service.address} ({time.monotonic() - t0:.1f} s){suffix}")

    def check_port_free(self, service: Service) -> None:
        if service.listen_port is None:
            return
        port = service.listen_port
        if port_open(self.cfg.host, port):
            raise StackError(
                f"{service.name}: port {port} on {self.cfg.host} is already in use by another process "
                f"(not one this stack started). Stop it, or choose another port in stack/stack.toml "
                f"or with STACK_* variables."
            )

    def down(self, names: list[str] | None = None) -> None:
        """Stop the selected services (all by default), in reverse start order; the supervisor first if all."""
        chosen = self.select(names)
        for service in chosen:
            service.wanted_file.unlink(missing_ok=True)
        if not names:
            self._stop(self.supervisor)
        for _, group in itertools.groupby(reversed(chosen), key=lambda service: service.quorum or service.name):
            # A quorum's nodes stop together: the last Kafka node alone, without a controller majority, would
            # wait for one until killed.
            with ThreadPoolExecutor() as pool:
                list(pool.map(self._stop, group))

    def _stop(self, service: Service) -> None:
        with service_lock(service):
            service.wanted_file.unlink(missing_ok=True)
            record = PidRecord.load(service.pid_file)
            if record is None:
                return
            if is_alive(record) or group_members(record.pid):
                killed = stop_group(record)
                self.log(f"  {service.name:<14} " + ("killed (did not stop on SIGTERM)" if killed else "stopped"))
            service.pid_file.unlink(missing_ok=True)
            supervision_file(service).unlink(missing_ok=True)

    def status(self, names: list[str] | None = None, with_supervisor: bool = True) -> list[ServiceStatus]:
        secrets = read_env_file(self.cfg.secrets_file) if self.cfg.secrets_file.exists() else {}
        services = self.select(names) + ([self.supervisor] if with_supervisor and not names else [])
        return [self.service_status(service, secrets) for service in services]

    def service_status(self, service: Service, secrets: dict[str, str]) -> ServiceStatus:
        record = PidRecord.load(service.pid_file)
        alive = bool(record and is_alive(record))
        supervision = Supervision.load(supervision_file(service))
        state, detail, waiting_on = self._state(service, record, alive, supervision, secrets)
        return ServiceStatus(service.name, service.address, state, record.pid if alive else None,
                             rss_bytes(group_members(record.pid)) if alive else 0, service.log_file,
                             detail, waiting_on, supervision.restarts, service.metrics_url)

    def _state(self, service: Service, record: PidRecord | None, alive: bool, supervision: Supervision,
               secrets: dict[str, str]) -> tuple[str, str, str | None]:
        if not alive:
            if record is None or not service.wanted_file.exists():
                return "down", "", None
            error = supervision.last_error or last_error_line(service.log_file)
            if supervision.crash_looping:
                return "crash-looping", f"{supervision.failures} quick exits in a row; last error: {error}", None
            due = supervision.next_restart_at
            when = f"; restarting in {max(0.0, due - time.time()):.0f} s" if due else ""
            return "crashed", f"the process exited{when}; last error: {error}", None
        report = service.health()
        if service.health_file is not None:
            if report is None:
                return "starting", "no health report since this start yet", None
            return report.state, report.detail, report.waiting_on
        try:
            if service.is_ready(secrets):
                return "up", "", None
            problem = "the readiness probe said no"
        except Exception as exc:  # noqa: BLE001 - any probe failure means it does not do its work now
            problem = f"{type(exc).__name__}: {exc}"
        started = service.pid_file.stat().st_mtime if service.pid_file.exists() else 0
        if time.time() - started < self.cfg.ready_timeout_s and not supervision.healthy_once:
            return "starting", problem[:300], None
        return "degraded", f"not answering its probe: {problem[:300]}", None


def format_status(rows: list[ServiceStatus], profile: str = "single") -> str:
    """A plain table: service, address, state, pid, memory, metrics endpoint, log file, and what is wrong; under it,
    the memory the services use together and what the profile needs."""
    header = ("SERVICE", "ADDRESS", "STATE", "PID", "RSS", "RESTARTS", "METRICS", "LOG", "DETAIL")
    lines = [header] + [
        (r.name, r.address, r.state, str(r.pid or "-"),
         f"{r.rss_bytes / 2**20:.0f} MiB" if r.rss_bytes else "-", str(r.restarts), r.metrics or "-", str(r.log_file),
         ("" if r.state == "up" else (f"waiting on {r.waiting_on}: " if r.waiting_on else "") + r.detail))
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    table = "\n".join(("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=False)) + "  " + line[-1])
                      .rstrip() for line in lines)
    total = sum(r.rss_bytes for r in rows)
    return (f"{table}\nMEMORY  {total / 2**30:.1f} GiB in use by these {sum(1 for r in rows if r.pid)} processes "
            f"(the {profile} profile needs up to {PROFILE_MEMORY_GIB[profile]} GiB)")


def status_json(rows: list[ServiceStatus]) -> str:
    """The same as `format_status`, for scripts: a JSON list of objects."""
    return json.dumps([row.as_dict() for row in rows], indent=2)
