"""The model server's Prometheus metrics, served at GET /metrics (no key: see model/README.md, "Metrics").

    iot_model_requests_total{route, method, status}    requests answered; `route` is the URL rule (`/predict/batch`),
                                                       `unmatched` for a path no route has; /metrics is not counted
    iot_model_request_duration_seconds{route}          histogram: from the request's start to its answer
    iot_model_rows_scored_total                        rows given a verdict by the scoring routes (not /health's probe)
    iot_model_scoring_duration_seconds                 histogram: the model's time for one request's rows
    iot_model_served_version                           the served model's version
    iot_model_served_info{version, run_id, promoted_at}  1 for the served model (an info metric)

One process (Flask's test client, a single `flask run`): the values live in prometheus_client's default registry.
Under gunicorn (`python -m model serve`, with model/server/gunicorn_conf.py) PROMETHEUS_MULTIPROC_DIR is set before
any worker starts: each worker writes its values to its own files there and /metrics, whichever worker answers it,
adds them up. Counters and histograms sum over every worker that ever ran in this server (a worker that died still
counts), the two served-model gauges take the highest value among the live workers (`livemax`): the version is the
newest any live worker serves, and `iot_model_served_info` is 1 for every model some live worker serves, so workers
that disagree after a reload show as two series.

Recording costs a few increments per request, none per row, and every label has a bounded set of values.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable

from flask import Flask, Response, current_app, g, request
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from model.registry import ModelInfo

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_ROUTE = "/metrics"
UNMATCHED = "unmatched"  # the route of a request whose path matches no route (a 404)
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))  # any other method: "other"
# Seconds: a single row scores in about a millisecond, a 5,000-row batch in tens, a million rows in seconds;
# gunicorn gives up on a request after 60.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

REQUESTS = Counter("iot_model_requests_total", "HTTP requests answered by the model server, by route (the URL "
                   "rule), method and status", ["route", "method", "status"])
REQUEST_SECONDS = Histogram("iot_model_request_duration_seconds", "Time from a request's start to its answer, "
                            "by route (the URL rule)", ["route"], buckets=BUCKETS)
ROWS_SCORED = Counter("iot_model_rows_scored_total", "Rows given a verdict by the scoring routes")
SCORING_SECONDS = Histogram("iot_model_scoring_duration_seconds", "Time the model took to score the rows of one "
                            "request", buckets=BUCKETS)
SERVED_VERSION = Gauge("iot_model_served_version", "Version of the served model (the newest any live worker "
                       "serves)", multiprocess_mode="livemax")
# An info metric as a gauge: prometheus_client's Info does not work in multiprocess mode. A model no longer served
# keeps its series at 0 (multiprocess files cannot drop one), and /metrics leaves such series out.
SERVED_INFO_NAME = "iot_model_served_info"
SERVED_INFO = Gauge(SERVED_INFO_NAME, "The served model: 1 for each model a live worker serves",
                    ["version", "run_id", "promoted_at"], multiprocess_mode="livemax")

_published_lock = threading.Lock()
_published: tuple[str, str, str] | None = None  # the labels this process last set to 1 in SERVED_INFO


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_DIR_ENV) or None


def model_loaded(info: ModelInfo) -> None:
    """Publish the model this process now serves (ModelHolder calls it on load and on every reload)."""
    global _published
    labels = (str(info.version), info.run_id, info.promoted_at)
    with _published_lock:
        if _published is not None and _published != labels:
            SERVED_INFO.labels(*_published).set(0)
        SERVED_INFO.labels(*labels).set(1)
        SERVED_VERSION.set(info.version)
        _published = labels


def scored(rows: int, seconds: float) -> None:
    """Count a request's rows scored and the model's time for them."""
    ROWS_SCORED.inc(rows)
    SCORING_SECONDS.observe(seconds)


def instrument(app: Flask) -> None:
    """Count and time every request the app answers, but those to /metrics."""
    app.before_request(_start_clock)
    app.after_request(_count_request)


def _start_clock() -> None:
    g.metrics_started = time.perf_counter()


def _count_request(response: Response) -> Response:
    route = _route()
    if route != METRICS_ROUTE:
        method = request.method if request.method in METHODS else "other"
        REQUESTS.labels(route, method, str(response.status_code)).inc()
        started = g.pop("metrics_started", None)
        if started is not None:
            REQUEST_SECONDS.labels(route).observe(time.perf_counter() - started)
    return response


def _route() -> str:
    """The URL rule the request matched; for a 405, the rule its path matches with another method."""
    if request.url_rule is not None:
        return request.url_rule.rule
    error = request.routing_exception
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        try:
            adapter = current_app.url_map.bind_to_environ(request.environ)
            rule, _ = adapter.match(method=next(iter(error.valid_methods)), return_rule=True)
            return rule.rule
        except HTTPException:
            pass
    return UNMATCHED


def exposition(accept: str | None) -> tuple[bytes, str]:
    """The metrics in the format `accept` asks for (Prometheus text, or OpenMetrics), and its content type: summed
    over gunicorn's workers when PROMETHEUS_MULTIPROC_DIR is set, from the default registry otherwise."""
    directory = multiprocess_dir()
    if directory:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, directory)
    else:
        registry = REGISTRY
    encoder, content_type = choose_encoder(accept or "")
    return encoder(_Served(registry)), content_type


class _Served:
    """A registry's metrics without the info series of models no longer served (value 0)."""

    def __init__(self, registry: CollectorRegistry):
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        for family in self._registry.collect():
            if family.name == SERVED_INFO_NAME:
                family.samples = [sample for sample in family.samples if sample.value]
            yield family
