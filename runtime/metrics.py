"""Prometheus metrics endpoints: the one way a runtime part (gateway, simulator, model server, job) serves its metrics.

    server = start_metrics_server(port, host="127.0.0.1", registry=registry)   # port 0: any free port
    print(server.url)                                                         # http://127.0.0.1:<bound port>/metrics
    ...
    server.close()

The endpoint is `prometheus_client`'s own HTTP server (a daemon thread per scrape; it never touches the part's
message path) on loopback by default: metrics say how much flows, nothing more, but they are no one else's business
unless asked (`--metrics-host 0.0.0.0` in a container). Port 0 binds a free port, and `server.port` says which, so
tests need not guess one. Names follow Prometheus' conventions: `iot_<part>_<what>`, counters end in `_total`,
durations are in seconds (`_seconds`), labels take a small fixed set of values.

A process that forks after starting an endpoint (the gateway's and the simulator's workers) keeps it to itself:
the children close their copy of the listening socket, so that a parent gone leaves no child holding the port.
"""

from __future__ import annotations

import argparse
import os
import threading
import weakref
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

DEFAULT_METRICS_HOST = "127.0.0.1"


@dataclass(frozen=True)
class MetricsServer:
    """A running metrics endpoint: `host` and the bound `port` (never 0), `url` to scrape, `close()` to stop."""

    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and free the port (idempotent)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_metrics_server(port: int, host: str = DEFAULT_METRICS_HOST,
                         registry: CollectorRegistry = REGISTRY) -> MetricsServer:
    """Serve `registry` at http://host:port/metrics from a daemon thread; port 0 binds a free port.

    Raises OSError if the address cannot be bound (in use, not local): callers report it and stop, rather than
    run unobserved."""
    server, thread = start_http_server(port, addr=host, registry=registry)
    _close_in_forked_children(server)
    return MetricsServer(host, server.server_address[1], server, thread)


def _close_in_forked_children(server: WSGIServer) -> None:
    reference = weakref.ref(server)

    def close_copy() -> None:
        if (alive := reference()) is not None:
            alive.socket.close()

    os.register_at_fork(after_in_child=close_copy)


def port_number(text: str) -> int:
    """argparse type of a metrics port: 0 (no endpoint) or 1..65535."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0..65535)")
    return port
