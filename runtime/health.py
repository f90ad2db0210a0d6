"""Health files: how a pipeline process (the gateway, the streaming job) tells anyone watching what it is doing.

The process rewrites a small JSON file every `WRITE_INTERVAL_S` seconds with its state:

- `starting`: not yet doing its work (connecting, subscribing, starting the query);
- `up`: doing its work: the gateway's MQTT loop and producer alive and making progress, the job's query
  running and its last batch written;
- `degraded`: alive but held up, `waiting_on` names what it waits for (`mqtt`, `kafka`, `model`, `kudu`) and
  `detail` says why in one line.

A file older than `STALE_AFTER_S` means the process stopped reporting: it is wedged or gone, whatever the file
says. The launcher (`make status`), the supervisor and the Compose healthchecks all read it the same way,
through `read_health` and `Health.effective`.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

WRITE_INTERVAL_S = 2.0
STALE_AFTER_S = 15.0
STATES = ("starting", "up", "degraded")


@dataclass(frozen=True)
class Health:
    """One report of a process about itself."""

    state: str
    detail: str = ""
    waiting_on: str | None = None
    updated: float = 0.0  # time.time() when written
    counters: dict[str, float] = field(default_factory=dict)

    def effective(self, now: float | None = None) -> Health:
        """This report as it stands now: a report older than STALE_AFTER_S is `degraded`, whatever it said."""
        age = (time.time() if now is None else now) - self.updated
        if age <= STALE_AFTER_S:
            return self
        return Health("degraded", f"no health report for {age:.0f} s: the process is not doing its work",
                      None, self.updated, self.counters)


def write_health(path: Path, health: Health) -> None:
    """Replace the health file atomically (a reader never sees half a file)."""
    report = asdict(health) | {"updated": health.updated or time.time()}
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(report))
    os.replace(partial, path)


def is_up(path: Path) -> bool:
    """True while the process writing `path` says it is up, in a report that is not stale."""
    report = read_health(path)
    return bool(report and report.effective().state == "up")


def read_health(path: Path) -> Health | None:
    """The last report in `path`, or None if there is none (or it cannot be read)."""
    try:
        raw = json.loads(path.read_text())
        return Health(str(raw["state"]), str(raw.get("detail", "")), raw.get("waiting_on"),
                      float(raw["updated"]), dict(raw.get("counters") or {}))
    except (OSError, ValueError, KeyError, TypeError):
        return None


class HealthReporter:
    """A daemon thread that writes `assess()` to `path` every WRITE_INTERVAL_S seconds until stopped."""

    def __init__(self, path: Path | None, assess: Callable[[], Health]):
        self.path = path
        self.assess = assess
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)

    def start(self) -> HealthReporter:
        if self.path:
            self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            self.write_now()
            if self._stop.wait(WRITE_INTERVAL_S):
                return

    def write_now(self) -> None:
        if not self.path:
            return
        try:
            write_health(self.path, self.assess())
        except Exception as exc:  # noqa: BLE001 - a failed report must not stop the reporter; staleness shows it
            print(f"health report to {self.path} failed: {exc!r}", flush=True)

    def stop(self, remove: bool = True) -> None:
        """Stop reporting; remove the file (a stopped process has no health to report)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if remove and self.path:
            self.path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m stack.health FILE`: exit 0 while the report in FILE is fresh and `up` (Compose healthchecks)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m stack.health", description=main.__doc__)
    parser.add_argument("file", type=Path, help="a health file (--health-file of the gateway or the job)")
    report = read_health(parser.parse_args(argv).file)
    if report is None:
        print("no health report yet")
        return 1
    current = report.effective()
    waiting = f" (waiting on {current.waiting_on})" if current.waiting_on else ""
    print(f"{current.state}{waiting}: {current.detail}")
    return 0 if current.state == "up" else 1


if __name__ == "__main__":
    raise SystemExit(main())
