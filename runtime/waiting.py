"""Waiting for something to become true, and the cheapest checks that a service answers (a TCP port, an HTTP
200). Used by the runtime parts to watch their dependencies and by the launcher, benches and tests."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Callable


class NotReady(Exception):
    """A service did not become ready in time; the message says what was last seen."""


def wait_until(probe: Callable[[], object], timeout_s: float, what: str,
               abort: Callable[[], str | None] = lambda: None) -> object:
    """Call `probe` until it returns a truthy value without raising; `abort` may end the wait early."""
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    delay = 0.1
    while True:
        try:
            result = probe()
            if result:
                return result
            last = f"probe returned {result!r}"
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
            last = f"{type(exc).__name__}: {exc}"
        reason = abort()
        if reason:
            raise NotReady(f"{what}: {reason}")
        if time.monotonic() >= deadline:
            raise NotReady(f"{what}: not ready after {timeout_s:.0f} s (last: {last})")
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)


def port_open(host: str, port: int | str, timeout_s: float = 1.0) -> bool:
    port = int(port)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        return sock.connect_ex((host, port)) == 0


def _addresses(servers: str | list[str]) -> list[str]:
    """The `host:port` entries of a list, or of a comma-separated text (Kafka's bootstrap servers, Kudu's masters)."""
    found = servers.split(",") if isinstance(servers, str) else servers
    return [server.strip() for server in found if server.strip()]


def _answers(server: str, timeout_s: float) -> bool:
    return port_open(*server.rsplit(":", 1), timeout_s=timeout_s)


def unanswered(servers: str | list[str], timeout_s: float = 2.0) -> list[str]:
    """The `host:port` addresses of `servers` (a list, or comma-separated) where nothing accepts a TCP connection."""
    return [server for server in _addresses(servers) if not _answers(server, timeout_s)]


def any_answers(servers: str, timeout_s: float = 2.0) -> bool:
    """Whether any `host:port` of the comma-separated `servers` accepts a TCP connection (the first that does ends
    the search)."""
    return any(_answers(server, timeout_s) for server in _addresses(servers))


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200
