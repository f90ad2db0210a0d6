"""gunicorn's settings for the model server: Prometheus metrics summed over the workers (`python -m model serve`
passes them: `gunicorn -c python:model.server.gunicorn_conf ...`).

Each worker is its own process with its own counters, and GET /metrics is answered by whichever worker takes the
request, so the workers write their values to files in one directory (prometheus_client's multiprocess mode) and
/metrics adds the files up (model/server/metrics.py):

- on_starting, in the master before it starts any worker: PROMETHEUS_MULTIPROC_DIR, fresh for this run. An
  operator's directory (the variable already set) is created if missing and emptied of the files a previous run
  left there (its *.db files, nothing else); otherwise a new temporary directory, removed when the server stops.
  The workers inherit the variable, so prometheus_client, which decides at import whether it writes to files,
  writes there.
- child_exit, in the master whenever a worker ends (stopped, crashed, killed or timed out): its live gauges are
  dropped (the served-model gauges count live workers only); its counts stay in the sums.
- on_exit: the temporary directory is removed.

Only these hooks live here; the command line (`python -m model serve`) gives every other setting.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
_TEMPORARY: list[Path] = []  # the directory this server made for itself, removed on exit


def on_starting(server) -> None:
    values = sys.modules.get("prometheus_client.values")
    if values is not None and not getattr(values.ValueClass, "_multiprocess", False):
        raise RuntimeError("prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set (by --preload, "
                           "or an import in the master): the workers' metrics would not be summed")
    given = os.environ.get(MULTIPROC_DIR_ENV)
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink(missing_ok=True)
    else:
        directory = Path(tempfile.mkdtemp(prefix="iot-model-metrics-"))
        _TEMPORARY.append(directory)
        os.environ[MULTIPROC_DIR_ENV] = str(directory)
    server.log.info("Prometheus metrics of all workers in %s", directory)


def child_exit(server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, os.environ[MULTIPROC_DIR_ENV])


def on_exit(server) -> None:
    for directory in _TEMPORARY:
        shutil.rmtree(directory, ignore_errors=True)
