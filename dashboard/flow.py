"""The flow, as NiFi draws it: Mosquitto -> gateway -> Kafka -> job -> Kudu, each stage with the records per second
through it and its dead letters, each link with the backlog between its stages. Computed from scrapes of the
Prometheus endpoints (parsed as Prometheus does) and Kafka's end offsets of `iot`: rates are counter deltas over
the last few seconds of scrapes. A source that did not answer makes its stage `down`, never an error.

What each stage's numbers are:
    mosquitto  messages it delivered to the gateway (iot_gateway_received_total); its own queue is not exported
    gateway    readings Kafka acknowledged (iot_gateway_produced_total); dead letters by reason, summed
    kafka      records appended to `iot` (the sum of its partitions' end offsets)
    job        records it finished: rows written, replays found stored, dead letters of every kind
               (iot_streaming_rows_total, _replayed_total, _dead_lettered_total{kind})
    kudu       rows the job wrote (iot_streaming_rows_total); seen through the job, not asked directly
Links: gateway -> Kafka: readings waiting for Kafka's acknowledgement (iot_gateway_in_flight); Kafka -> job:
records the job has not read yet and how far behind it is (iot_streaming_kafka_lag_records, _lag_seconds);
job -> Kudu: the rows of its last batch (iot_streaming_batch_rows).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

# Rates are averaged over this much of the latest scrapes, so that the job's micro-batches (1 s apart, several
# seconds on a busy machine) do not make them flicker.
RATE_WINDOW_S = 10.0

UP, DOWN, UNOBSERVED = "up", "down", "unobserved"

Samples = dict[str, float]  # sample name -> its value, summed over its label sets


def parse_samples(text: str) -> Samples:
    """The samples of a Prometheus text exposition, each summed over its labels (a counter by reason -> its
    total); non-finite values are left out. ValueError if the text is not an exposition."""
    totals: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if math.isfinite(sample.value):
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


@dataclass(frozen=True)
class Scrape:
    """What the sources said at one moment; None for a source that did not answer."""

    at: float  # time.monotonic() seconds
    gateway: Samples | None
    streaming: Samples | None
    model: Samples | None
    # (when it was measured, records ever appended to Kafka `iot`: its partitions' end offsets summed); None if
    # Kafka did not answer
    kafka: tuple[float, int] | None


@dataclass(frozen=True)
class Stage:
    name: str
    state: str  # UP, DOWN or UNOBSERVED (known only through a neighbour)
    rate: float | None  # records per second through it; None until two scrapes tell
    unit: str  # what `rate` counts
    dead_letters: float | None = None  # dead letters so far (None: this stage makes none)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Flow:
    stages: tuple[Stage, ...]
    links: tuple[tuple[str, ...], ...]  # the backlog between stage i and i + 1, in short lines (none if unknown)
    model: Stage


class _Window:
    """Scrapes over a rate window, oldest first: rates run from the oldest scrape in which a source answered to the
    latest one."""

    def __init__(self, scrapes: Sequence[Scrape]):
        self.scrapes, self.last = scrapes, scrapes[-1]

    def _first(self, source: str) -> Scrape:
        return next(scrape for scrape in self.scrapes if getattr(scrape, source) is not None or scrape is self.last)

    def rate(self, source: str, *names: str) -> float | None:
        """Per second, of the sum of the counters `names` of `source` (those both ends have); None if the ends
        have none of them. A counter that went down was restarted: its value is then the increase."""
        first = self._first(source)
        before, now, seconds = getattr(first, source), getattr(self.last, source), self.last.at - first.at
        present = [n for n in names if before is not None and now is not None and n in before and n in now]
        if not present or seconds <= 0:
            return None
        return sum(_increase(before[n], now[n]) for n in present) / seconds

    def mean(self, source: str, histogram: str) -> float | None:
        """The mean of the observations a histogram got over the window; None if it got none."""
        count, total = self.rate(source, f"{histogram}_count"), self.rate(source, f"{histogram}_sum")
        return total / count if count and total is not None else None

    def kafka_rate(self) -> float | None:
        before, now = self._first("kafka").kafka, self.last.kafka
        if before is None or now is None or now[0] <= before[0]:
            return None
        return _increase(before[1], now[1]) / (now[0] - before[0])


def _increase(before: float, now: float) -> float:
    return now - before if now >= before else now


def _value(samples: Samples | None, name: str) -> float | None:
    return None if samples is None else samples.get(name)


def _state(samples: Samples | None) -> str:
    return DOWN if samples is None else UP


def _count(value: float | None, what: str, one: str | None = None) -> str:
    """'12 records' ('1 record' with one="record"); "" for no value."""
    if value is None:
        return ""
    return f"{value:,.0f} {one if one is not None and round(value) == 1 else what}"


def _gateway(window: _Window) -> Stage:
    samples = window.last.gateway
    return Stage("gateway", _state(samples), window.rate("gateway", "iot_gateway_produced_total"), "readings/s",
                 _value(samples, "iot_gateway_dead_lettered_total"),
                 _notes(_count(_value(samples, "iot_gateway_received_total"), "received")))


def _kafka(window: _Window) -> Stage:
    size = window.last.kafka
    return Stage("Kafka iot", DOWN if size is None else UP, window.kafka_rate(), "records/s in",
                 notes=_notes(_count(None if size is None else size[1], "records", "record")))


def _job(window: _Window) -> Stage:
    samples = window.last.streaming
    batch_seconds = window.mean("streaming", "iot_streaming_batch_duration_seconds")
    failed = _value(samples, "iot_streaming_batches_failed_total") or None  # shown only when there are some
    return Stage("job", _state(samples),
                 window.rate("streaming", "iot_streaming_rows_total", "iot_streaming_replayed_total",
                             "iot_streaming_dead_lettered_total"), "records/s",
                 _value(samples, "iot_streaming_dead_lettered_total"),
                 _notes(_count(failed, "failed attempts", "failed attempt"),
                        "" if batch_seconds is None else f"{batch_seconds:.2f} s a batch"))


def _kudu(window: _Window) -> Stage:
    samples = window.last.streaming
    return Stage("Kudu sensors", UNOBSERVED, window.rate("streaming", "iot_streaming_rows_total"), "rows/s written",
                 notes=_notes(_count(_value(samples, "iot_streaming_rows_total"), "rows written", "row written"),
                              _count(_value(samples, "iot_streaming_alerts_total"), "alerts", "alert")))


def _links(last: Scrape) -> tuple[tuple[str, ...], ...]:
    lag_seconds = _value(last.streaming, "iot_streaming_lag_seconds")
    return (
        (),  # Mosquitto does not export its queue
        _notes(_count(_value(last.gateway, "iot_gateway_in_flight"), "in flight")),
        _notes(_count(_value(last.streaming, "iot_streaming_kafka_lag_records"), "not read yet"),
               "" if lag_seconds is None else f"{lag_seconds:.1f} s behind"),
        _notes(_count(_value(last.streaming, "iot_streaming_batch_rows"), "rows a batch", "row a batch")),
    )


def _model(window: _Window) -> Stage:
    samples = window.last.model
    served = _value(samples, "iot_model_served_version")
    return Stage("model", _state(samples), window.rate("model", "iot_model_rows_scored_total"), "rows/s scored",
                 notes=_notes("" if served is None else f"serves v{served:.0f}"))


def compute_flow(scrapes: Sequence[Scrape]) -> Flow:
    """The flow at the last of `scrapes` (oldest first), its rates over their time (one scrape: no rates yet)."""
    window = _Window(scrapes)
    mosquitto = Stage("Mosquitto", UNOBSERVED, window.rate("gateway", "iot_gateway_received_total"),
                      "msg/s to the gateway")
    stages = (mosquitto, _gateway(window), _kafka(window), _job(window), _kudu(window))
    return Flow(stages, _links(window.last), _model(window))


def _notes(*notes: str) -> tuple[str, ...]:
    return tuple(note for note in notes if note)


class ScrapeHistory:
    """The scrapes of the last rate window (and the one just before it), to compute the flow from."""

    def __init__(self, window_s: float = RATE_WINDOW_S):
        self.window_s = window_s
        self._scrapes: deque[Scrape] = deque()

    def add(self, scrape: Scrape) -> Flow:
        """Keep `scrape` and return the flow it makes."""
        self._scrapes.append(scrape)
        while len(self._scrapes) > 2 and scrape.at - self._scrapes[1].at >= self.window_s:
            self._scrapes.popleft()
        return compute_flow(self._scrapes)
