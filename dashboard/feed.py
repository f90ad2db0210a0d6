"""The dashboard's one background feed per server process: what every open browser shows, kept in plain Python.

Two threads, started by the first session that opens and told to stop when the last one closes (a closed browser
costs nothing):
- Kafka: one consumer reads `iot.scored` and `iot.alerts` (read_committed) in batched polls into the `Fleet`,
  from a little before their end (the history a new browser starts with), and once a second notes the end
  offsets of `iot` (Kafka's intake). It waits out Kafka's absence with backoff.
- Metrics: once a second, scrapes the gateway's, the job's and the model server's Prometheus endpoints into the
  `Flow`, and every few seconds asks the model server which model it serves (GET /model). A source that does not
  answer is `down` in the flow.
Nothing either thread reads can stop it: a bad record is counted and skipped (fleet.py), any other failure is
logged and retried.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from dashboard.fleet import ALERTS_KEPT, Fleet
from dashboard.flow import Flow, Samples, Scrape, ScrapeHistory, parse_samples
from runtime.retry import Backoff
from runtime.settings import ALERTS_TOPIC, IOT_TOPIC, SCORED_TOPIC, require

log = logging.getLogger(__name__)

SCRAPE_EVERY_S = 1.0
MODEL_EVERY_S = 10.0
HTTP_TIMEOUT_S = 0.8
POLL_TIMEOUT_MS = 500
MAX_POLL_RECORDS = 5_000
# kafka-python's 30 s would leave the page saying "connecting" that long while Kafka is away.
KAFKA_TIMEOUT_MS = 10_000
# Where a new feed starts reading: this many records before the end of each partition (a few minutes of history
# at the workshop's rate, parsed in well under a second).
BACKFILL = {SCORED_TOPIC: 2_000, ALERTS_TOPIC: ALERTS_KEPT}


@dataclass(frozen=True)
class Sources:
    """Where the feed reads from (the connection settings, runtime/settings.py); an empty URL: not scraped."""

    kafka_bootstrap: str
    gateway_metrics_url: str = ""
    streaming_metrics_url: str = ""
    model_metrics_url: str = ""
    model_url: str = ""
    model_access_key: str = ""

    @classmethod
    def from_settings(cls, settings: dict[str, str]) -> Sources:
        """From `connection_settings()`; KAFKA_BOOTSTRAP is required (SystemExit naming it if missing)."""
        (bootstrap,) = require(settings, "KAFKA_BOOTSTRAP")
        return cls(bootstrap, settings.get("GATEWAY_METRICS_URL", ""), settings.get("STREAMING_METRICS_URL", ""),
                   settings.get("MODEL_METRICS_URL", ""), settings.get("MODEL_URL", ""),
                   settings.get("MODEL_ACCESS_KEY", ""))


@dataclass(frozen=True)
class ModelCard:
    """The served model, as GET /model tells it."""

    version: int
    auroc: float | None
    promoted_at: str


def model_card(payload: object) -> ModelCard | None:
    """The card in a GET /model answer (a JSON object), or None if it does not say which version it serves."""
    if not isinstance(payload, dict) or not isinstance(payload.get("version"), int):
        return None
    metrics = payload.get("metrics")
    auroc = metrics.get("auroc") if isinstance(metrics, dict) else None
    promoted_at = payload.get("promoted_at")
    return ModelCard(payload["version"], float(auroc) if isinstance(auroc, int | float) else None,
                     promoted_at if isinstance(promoted_at, str) else "")


def _get(url: str, headers: dict[str, str] | None = None) -> bytes | None:
    """The body of GET `url`, or None if it does not answer 200 in time."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}),
                                    timeout=HTTP_TIMEOUT_S) as response:
            return response.read() if response.status == 200 else None
    except (OSError, ValueError):  # refused, timed out, an HTTP error status, a malformed URL
        return None


def scrape_samples(url: str) -> Samples | None:
    """The samples of a Prometheus endpoint, or None if it does not answer (or answers no exposition)."""
    body = _get(url) if url else None
    if body is None:
        return None
    try:
        return parse_samples(body.decode("utf-8", "replace"))
    except ValueError as error:
        log.warning("%s answered no Prometheus exposition: %s", url, error)
        return None


def fetch_model_card(model_url: str, access_key: str) -> ModelCard | None:
    """The served model (GET /model, with the access key as model/client.py sends it), None if no answer."""
    body = _get(f"{model_url.rstrip('/')}/model", {"Authorization": f"Bearer {access_key}"}) if model_url else None
    try:
        return model_card(json.loads(body)) if body else None
    except ValueError:
        return None


class FeedRun:
    """One run of the feed: its state (fleet, flow, model card, Kafka's status) and its two threads."""

    def __init__(self, sources: Sources):
        self.sources = sources
        self.fleet = Fleet()
        self.flow: Flow | None = None
        self.model: ModelCard | None = None
        self.kafka_status = "connecting to Kafka ..."
        self._kafka_end: tuple[float, int] | None = None  # (when, records in `iot`), noted by the Kafka thread
        self._positions: dict[TopicPartition, int] = {}  # where the Kafka thread goes on after a reconnect
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._guarded, args=(self._read_kafka,), name="dashboard-kafka",
                                          daemon=True),
                         threading.Thread(target=self._guarded, args=(self._scrape_metrics,),
                                          name="dashboard-metrics", daemon=True)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Ask the threads to stop; they do within a poll's or a scrape's time (not waited for here: this is called
        on the server's event loop)."""
        self._stop.set()

    def join(self, timeout_s: float = 5) -> None:
        for thread in self._threads:
            thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        """True while either thread runs."""
        return any(thread.is_alive() for thread in self._threads)

    def _guarded(self, loop: Callable[[], None]) -> None:
        """Run `loop` until stopped; an unexpected failure is logged and the loop started again after a pause."""
        backoff = Backoff(first_s=1.0, cap_s=30.0)
        while not self._stop.is_set():
            try:
                loop()
            except Exception:  # noqa: BLE001 - the feed outlives anything it meets
                log.exception("%s failed; starting it again", threading.current_thread().name)
                self._stop.wait(backoff.next_delay())

    # ---- Kafka

    def _read_kafka(self) -> None:
        """Read both topics until stopped; reconnect with backoff while Kafka is away, resuming where it was."""
        backoff = Backoff(first_s=1.0, cap_s=30.0)
        while not self._stop.is_set():
            consumer = None
            try:
                consumer = self._open_consumer()
                self.kafka_status = f"reading Kafka {SCORED_TOPIC}, {ALERTS_TOPIC}"
                backoff.reset()
                self._poll_until_stopped(consumer)
            except (KafkaError, LookupError, OSError) as error:  # Kafka away, a topic not made yet
                self.kafka_status = f"waiting on Kafka: {error}"
                self._kafka_end = None
                log.warning("%s", self.kafka_status)
                self._stop.wait(backoff.next_delay())
            finally:
                if consumer is not None:
                    consumer.close()

    def _open_consumer(self) -> KafkaConsumer:
        consumer = KafkaConsumer(bootstrap_servers=self.sources.kafka_bootstrap, client_id="dashboard",
                                 group_id=None, enable_auto_commit=False, isolation_level="read_committed",
                                 max_poll_records=MAX_POLL_RECORDS, bootstrap_timeout_ms=KAFKA_TIMEOUT_MS,
                                 request_timeout_ms=KAFKA_TIMEOUT_MS)
        try:
            partitions = [tp for topic in BACKFILL for tp in _partitions(consumer, topic)]
            consumer.assign(partitions)
            ends, begins = consumer.end_offsets(partitions), consumer.beginning_offsets(partitions)
            for tp in partitions:
                start = self._positions.get(tp, ends[tp] - BACKFILL[tp.topic])
                consumer.seek(tp, min(max(start, begins[tp]), ends[tp]))
            return consumer
        except Exception:
            consumer.close()
            raise

    def _poll_until_stopped(self, consumer: KafkaConsumer) -> None:
        iot = _partitions(consumer, IOT_TOPIC)
        noted = 0.0
        while not self._stop.is_set():
            batches = consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
            self.fleet.add_all((record.topic, record.value) for batch in batches.values() for record in batch)
            for tp, batch in batches.items():
                self._positions[tp] = batch[-1].offset + 1
            if time.monotonic() - noted >= SCRAPE_EVERY_S:
                noted = time.monotonic()
                self._kafka_end = (noted, sum(consumer.end_offsets(iot).values()))

    # ---- metrics

    def _scrape_metrics(self) -> None:
        history = ScrapeHistory()
        model_due = 0.0
        while not self._stop.is_set():
            started = time.monotonic()
            sources = self.sources
            self.flow = history.add(Scrape(started, scrape_samples(sources.gateway_metrics_url),
                                           scrape_samples(sources.streaming_metrics_url),
                                           scrape_samples(sources.model_metrics_url), self._fresh_kafka_end()))
            if started >= model_due:
                self.model = fetch_model_card(sources.model_url, sources.model_access_key) or self.model
                model_due = started + MODEL_EVERY_S
            self._stop.wait(max(0.0, SCRAPE_EVERY_S - (time.monotonic() - started)))

    def _fresh_kafka_end(self) -> tuple[float, int] | None:
        """Kafka's intake as last noted, unless the Kafka thread has not noted it for a while (Kafka is away)."""
        noted = self._kafka_end
        return noted if noted and time.monotonic() - noted[0] < 3 * SCRAPE_EVERY_S else None


def _partitions(consumer: KafkaConsumer, topic: str) -> list[TopicPartition]:
    found = consumer.partitions_for_topic(topic)
    if not found:
        raise LookupError(f"Kafka has no topic {topic!r} (yet)")
    return [TopicPartition(topic, partition) for partition in sorted(found)]


class Feed:
    """The server's one feed: the first session that opens starts a run, the last one that closes stops it."""

    def __init__(self, sources: Sources, run_factory: Callable[[Sources], FeedRun] = FeedRun):
        self.sources = sources
        self._run_factory = run_factory
        self._sessions = 0
        self._run: FeedRun | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._run is not None

    def session_opened(self) -> FeedRun:
        """Count a session in; the run it reads (started now if it is the only session)."""
        with self._lock:
            self._sessions += 1
            if self._run is None:
                self._run = self._run_factory(self.sources)
                self._run.start()
                log.info("feed started (first session opened)")
            return self._run

    def session_closed(self) -> None:
        """Count a session out; the last one out stops the run."""
        with self._lock:
            self._sessions -= 1
            if self._sessions == 0 and self._run is not None:
                self._run.stop()
                self._run = None
                log.info("feed stopped (last session closed)")
