"""Bring the local stack up, down, and report on it; write `.stack/connection.env` for every client."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from stack import probes
from stack.config import StackConfig
from stack.connection import local_stack_settings
from stack.process import PidRecord, group_members, is_alive, rss_bytes, spawn, stop_group
from stack.secrets import ensure_secrets, read_env_file, write_env_file
from stack.services import Service, all_services


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    address: str
    state: str  # "up", "not ready", "down", "crashed"
    pid: int | None
    rss_bytes: int
    log_file: Path


class StackError(RuntimeError):
    """A service could not be started or stopped; the message says which and where to look."""


class Stack:
    """The local stack described by a StackConfig."""

    def __init__(self, cfg: StackConfig, log=print):
        self.cfg = cfg
        self.services = all_services(cfg)
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

    def _running(self, service: Service) -> PidRecord | None:
        record = PidRecord.load(service.pid_file)
        return record if record and is_alive(record) else None

    def up(self, names: list[str] | None = None) -> list[ServiceStatus]:
        """Start the selected services (all by default) and wait until each is ready. Harmless when up.

        Services start in parallel, in waves: a service that needs the others (`needs_others_ready`) starts
        only once every service before it is ready."""
        secrets = ensure_secrets(self.cfg.secrets_file)
        chosen = self.select(names)
        wave: list[Service] = []
        for service in chosen:
            if service.needs_others_ready and wave:
                self._start_and_await(wave, secrets)
                wave = []
            wave.append(service)
        self._start_and_await(wave, secrets)
        self.write_connection_file()
        return self.status(names)

    def _start_and_await(self, services: list[Service], secrets: dict[str, str]) -> None:
        started: dict[str, PidRecord] = {}
        for service in services:
            if self._running(service):
                self.log(f"  {service.name:<13} already running")
                continue
            self._check_port_free(service)
            service.prepare(secrets)
            started[service.name] = spawn(service.command(), service.log_file, service.pid_file,
                                          service.environment(secrets), cwd=self.cfg.dir)
            self.log(f"  {service.name:<13} started (pid {started[service.name].pid})")
        for service in services:
            t0 = time.monotonic()
            record = self._running(service) or started.get(service.name)
            probes.wait_until(
                lambda s=service: s.is_ready(secrets), self.cfg.ready_timeout_s, f"{service.name}",
                abort=lambda s=service, r=record: None if r and is_alive(r)
                else f"the process exited; see {s.log_file}",
            )
            note = service.initialise(secrets)
            suffix = f"; {note}" if note else ""
            self.log(f"  {service.name:<13} ready at {service.address} ({time.monotonic() - t0:.1f} s){suffix}")

    def _check_port_free(self, service: Service) -> None:
        if service.listen_port is None:
            return
        port = service.listen_port
        if probes.port_open(self.cfg.host, port):
            raise StackError(
                f"{service.name}: port {port} on {self.cfg.host} is already in use by another process "
                f"(not one this stack started). Stop it, or choose another port in stack/stack.toml "
                f"or with STACK_* variables."
            )

    def down(self, names: list[str] | None = None) -> None:
        """Stop the selected services (all by default), in reverse start order."""
        for service in reversed(self.select(names)):
            record = PidRecord.load(service.pid_file)
            if record is None:
                continue
            if is_alive(record) or group_members(record.pid):
                killed = stop_group(record)
                self.log(f"  {service.name:<13} " + ("killed (did not stop on SIGTERM)" if killed else "stopped"))
            service.pid_file.unlink(missing_ok=True)

    def status(self, names: list[str] | None = None) -> list[ServiceStatus]:
        secrets = read_env_file(self.cfg.secrets_file) if self.cfg.secrets_file.exists() else {}
        rows = []
        for service in self.select(names):
            record = PidRecord.load(service.pid_file)
            alive = bool(record and is_alive(record))
            if record is None:
                state = "down"
            elif not alive:
                state = "crashed"
            else:
                try:
                    state = "up" if service.is_ready(secrets) else "not ready"
                except Exception:  # noqa: BLE001 - any probe failure means not ready
                    state = "not ready"
            rows.append(ServiceStatus(
                service.name, service.address, state, record.pid if alive else None,
                rss_bytes(group_members(record.pid)) if alive else 0, service.log_file,
            ))
        return rows


def format_status(rows: list[ServiceStatus]) -> str:
    """A plain table: service, address, state, pid, memory, log file."""
    header = ("SERVICE", "ADDRESS", "STATE", "PID", "RSS", "LOG")
    lines = [header] + [
        (r.name, r.address, r.state, str(r.pid or "-"),
         f"{r.rss_bytes / 2**20:.0f} MiB" if r.rss_bytes else "-", str(r.log_file))
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)
