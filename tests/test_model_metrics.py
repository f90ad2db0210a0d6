"""Issue 15: the model server's Prometheus metrics at GET /metrics, through Flask's test client (one process, the
default registry) and through gunicorn with two workers (multiprocess mode, model/server/gunicorn_conf.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from model.approval import approve_and_promote
from model.server import create_app
from model.train import train
from runtime.waiting import http_ok, wait_until
from tests.fixtures.model_server import AUTH, CDSW, FAILING_EXAMPLE, HEALTHY_EXAMPLE, KEY

REQUESTS = "iot_model_requests_total"
BATCH_ROWS = 2000
Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text page, by name and labels (sorted)."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def of(samples: Samples, name: str) -> dict[Labels, float]:
    return {labels: value for (sample, labels), value in samples.items() if sample == name}


def grown(before: Samples, after: Samples, name: str) -> dict[Labels, float]:
    """How much each series of `name` grew between two scrapes (series that did not change left out)."""
    old = of(before, name)
    return {labels: value - old.get(labels, 0) for labels, value in of(after, name).items()
            if value != old.get(labels, 0)}


def requests(route: str, method: str, status: int) -> Labels:
    return (("method", method), ("route", route), ("status", str(status)))


def served(samples: Samples) -> tuple[float, list[dict[str, str]]]:
    """The served version gauge and the labels of the info series that are 1."""
    info = [dict(labels) for labels, value in of(samples, "iot_model_served_info").items() if value == 1]
    return samples[("iot_model_served_version", ())], info


@pytest.fixture()
def model_file(served_model_file, tmp_path):
    path = tmp_path / "iot_model.joblib"
    shutil.copy(served_model_file, path)
    return path


@pytest.fixture()
def client(model_file):
    return create_app({"MODEL_ACCESS_KEY": KEY, "MODEL_PATH": str(model_file)}).test_client()


def scrape(client) -> Samples:
    """The metrics the app shows now (the default registry: the counts of every app of this test process, so the
    tests compare two scrapes)."""
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    return parse(response.get_data(as_text=True))


def test_requests_rows_and_timings_are_counted_by_route_and_status(client, workshop_run):
    before = scrape(client)
    singles, batches = 3, [4, 7]
    for _ in range(singles):
        assert client.post("/predict", json={"feature": HEALTHY_EXAMPLE}, headers=AUTH).status_code == 200
    for rows in batches:
        assert client.post("/predict/batch", json={"rows": [[1] * 12] * rows}, headers=AUTH).status_code == 200
    assert client.post("/predict", json={"feature": HEALTHY_EXAMPLE}).status_code == 401
    assert client.post("/predict/batch", json={"rows": []}, headers=AUTH).status_code == 400
    after = scrape(client)

    assert grown(before, after, REQUESTS) == {  # exactly these: the scrapes themselves are not counted
        requests("/predict", "POST", 200): singles, requests("/predict/batch", "POST", 200): len(batches),
        requests("/predict", "POST", 401): 1, requests("/predict/batch", "POST", 400): 1}
    assert grown(before, after, "iot_model_rows_scored_total") == {(): singles + sum(batches)}
    assert grown(before, after, "iot_model_scoring_duration_seconds_count") == {(): singles + len(batches)}
    assert grown(before, after, "iot_model_scoring_duration_seconds_sum")[()] > 0
    assert grown(before, after, "iot_model_request_duration_seconds_count") == {
        (("route", "/predict"),): singles + 1, (("route", "/predict/batch"),): len(batches) + 1}
    inf = grown(before, after, "iot_model_request_duration_seconds_bucket")
    assert inf[(("le", "+Inf"), ("route", "/predict"))] == singles + 1

    version, info = served(after)
    assert version == workshop_run.version
    assert info == [{"version": str(workshop_run.version), "run_id": workshop_run.run_id,
                     "promoted_at": client.get("/model").json["promoted_at"]}]


def test_routes_are_url_rules_and_labels_stay_bounded(client):
    before = scrape(client)
    assert client.get("/predict").status_code == 405
    assert client.get("/predict/no/such/path").status_code == 404
    assert client.get("/sensor/12345").status_code == 404
    assert client.open("/health", method="BREW").status_code == 405
    assert client.get("/health").status_code == 200  # scores its probe row: not a row scored
    response = client.post(CDSW, json={"accessKey": KEY, "request": {"feature": FAILING_EXAMPLE}})
    assert response.status_code == 200
    after = scrape(client)
    assert grown(before, after, REQUESTS) == {
        requests("/predict", "GET", 405): 1, requests("unmatched", "GET", 404): 2,
        requests("/health", "other", 405): 1, requests("/health", "GET", 200): 1, requests(CDSW, "POST", 200): 1}
    assert grown(before, after, "iot_model_rows_scored_total") == {(): 1}


def test_metrics_need_no_key_and_speak_openmetrics_when_asked(client):
    plain = client.get("/metrics", headers={"Authorization": "Bearer wrong"})
    assert plain.status_code == 200 and "# TYPE iot_model_requests_total counter" in plain.get_data(as_text=True)
    open_metrics = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert open_metrics.mimetype == "application/openmetrics-text"
    assert open_metrics.get_data(as_text=True).endswith("# EOF\n")


def test_a_reload_changes_the_served_version(client, model_file, workshop_run):
    assert served(scrape(client))[0] == workshop_run.version
    other = train(5, 4)
    approve_and_promote(other.version, path=model_file)
    assert client.post("/model/reload", headers=AUTH).status_code == 200
    version, info = served(scrape(client))
    assert version == other.version
    # the new version alone, not the workshop's too
    assert [(labels["version"], labels["run_id"]) for labels in info] == [(str(other.version), other.run_id)]


# ---- gunicorn


def start_server(model_file: Path, port: int, log: Path, workers: int, env: dict | None = None) -> subprocess.Popen:
    """`python -m model serve`, the stack's own command, on `port`; ready when /health answers."""
    env = {**{key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"},
           "MODEL_ACCESS_KEY": KEY, "MODEL_PATH": str(model_file), **(env or {})}
    with log.open("wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "model", "serve", "--port", str(port), "--workers",
                                   str(workers), "--threads", "2"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/health"), 60, "model server",
                   abort=lambda: f"exited: {log.read_text()[-2000:]}" if server.poll() is not None else None)
    except BaseException:
        stop(server)
        raise
    return server


def stop(server: subprocess.Popen) -> None:
    server.terminate()
    server.wait(timeout=30)


def post(port: int, path: str, body: dict) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                     headers={**AUTH, "Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:  # a new connection each: any worker may take it
        return response.status


def http_scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return parse(response.read().decode())


def batches_by_worker(directory: Path) -> dict[int, float]:
    """The 200s on /predict/batch each worker's own file counts, by pid."""
    counts = {}
    for path in directory.glob("counter_*.db"):
        for family in MultiProcessCollector.merge([str(path)]):
            for sample in family.samples:
                if sample.name == REQUESTS and sample.labels == dict(requests("/predict/batch", "POST", 200)):
                    counts[int(path.stem.split("_")[1])] = sample.value
    return counts


def stale_counts(directory: Path) -> None:
    """A previous run's file: a thousand /predict/batch calls that the new run must not count."""
    stale = MmapedDict(str(directory / "counter_1.db"))
    key = mmap_key("iot_model_requests", REQUESTS, ["route", "method", "status"], ["/predict/batch", "POST", "200"],
                   "old run")
    stale.write_value(key, 1000.0, 0.0)
    stale.close()


def until(condition: Callable[[], object], what: str) -> object:
    return wait_until(condition, 60, what)


def test_gunicorn_workers_add_up_in_one_metrics_page(model_file, free_ports, tmp_path, workshop_run):
    version = workshop_run.version
    directory = tmp_path / "metrics"
    directory.mkdir()
    stale_counts(directory)
    port = free_ports(1)[0]
    server = start_server(model_file, port, tmp_path / "server.log", workers=2,
                          env={"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    try:
        assert not (directory / "counter_1.db").exists()
        batch = [[1] * 12] * BATCH_ROWS  # a few milliseconds of JSON for the worker that takes it
        sent, deadline = 0, time.monotonic() + 60
        with ThreadPoolExecutor(8) as pool:
            while time.monotonic() < deadline:  # until both workers have answered some: the kernel picks which accepts
                assert set(pool.map(lambda _: post(port, "/predict/batch", {"rows": batch}), range(16))) == {200}
                sent += 16
                if len([count for count in batches_by_worker(directory).values() if count]) == 2:
                    break
        by_worker = batches_by_worker(directory)
        assert len(by_worker) == 2 and all(by_worker.values()), f"one worker took every request: {by_worker}"
        assert post(port, "/predict", {"feature": HEALTHY_EXAMPLE}) == 200
        for _ in range(4):  # whichever worker answers /metrics shows the sum over both
            samples = http_scrape(port)
            assert of(samples, REQUESTS)[requests("/predict/batch", "POST", 200)] == sent
            assert of(samples, REQUESTS)[requests("/predict", "POST", 200)] == 1
            assert samples[("iot_model_rows_scored_total", ())] == sent * BATCH_ROWS + 1
            assert samples[("iot_model_scoring_duration_seconds_count", ())] == sent + 1
            assert served(samples)[0] == version and [info["version"] for info in served(samples)[1]] == [str(version)]

        # A worker killed: gunicorn starts another, its counts stay in the sums, its live gauges go.
        workers = {child.pid for child in psutil.Process(server.pid).children()}
        victim = next(pid for pid, count in by_worker.items() if count)
        assert victim in workers and (directory / f"gauge_livemax_{victim}.db").exists()
        os.kill(victim, signal.SIGKILL)
        until(lambda: not (directory / f"gauge_livemax_{victim}.db").exists(), "the dead worker's gauges dropped")
        until(lambda: len({child.pid for child in psutil.Process(server.pid).children()} - {victim}) == 2,
              "a new worker")
        until(lambda: http_ok(f"http://127.0.0.1:{port}/health"), "the server answers")
        assert post(port, "/predict", {"feature": HEALTHY_EXAMPLE}) == 200
        samples = http_scrape(port)
        assert of(samples, REQUESTS)[requests("/predict/batch", "POST", 200)] == sent
        assert of(samples, REQUESTS)[requests("/predict", "POST", 200)] == 2
        assert samples[("iot_model_rows_scored_total", ())] == sent * BATCH_ROWS + 2
        assert served(samples)[0] == version
    finally:
        stop(server)
    assert directory.is_dir()  # the operator's directory stays


def test_gunicorn_makes_a_fresh_metrics_directory_and_removes_it(model_file, free_ports, tmp_path):
    port = free_ports(1)[0]
    log = tmp_path / "server.log"
    server = start_server(model_file, port, log, workers=1)  # no PROMETHEUS_MULTIPROC_DIR
    try:
        directory = Path(re.search(r"Prometheus metrics of all workers in (\S+)", log.read_text()).group(1))
        assert directory.is_dir() and list(directory.glob("counter_*.db"))
        assert post(port, "/predict", {"feature": HEALTHY_EXAMPLE}) == 200
        assert of(http_scrape(port), REQUESTS)[requests("/predict", "POST", 200)] == 1
    finally:
        stop(server)
    assert not directory.exists()
