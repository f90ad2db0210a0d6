"""The streaming job's Prometheus metrics, served by its driver (`--metrics-port`; the stack: 9102).

    iot_streaming_batches_total                      micro-batches of readings done
    iot_streaming_rows_total                         readings written to Kudu
    iot_streaming_replayed_total                     readings found already stored (a replayed batch)
    iot_streaming_dead_lettered_total{kind}          records sent to the dead-letter topic: `invalid` (not a
                                                     reading), `conflict`, `unprocessable` (a whole batch)
    iot_streaming_batches_failed_total{dependency}   failed attempts, retried: model, kafka, kudu or spark
    iot_streaming_batch_rows                         readings of the last batch
    iot_streaming_batch_duration_seconds             a batch from start to end (histogram)
    iot_streaming_scoring_seconds                    reading, checking and scoring a batch (histogram)
    iot_streaming_write_seconds                      writing a batch: Kudu, iot.scored, dead letters (histogram)
    iot_streaming_kafka_lag_records                  records in Kafka `iot` the job has not read yet (after its
                                                     last batch: Spark's latest offsets minus its end offsets;
                                                     NaN until the readings query first reports progress)
    iot_streaming_lag_seconds                        age of the oldest reading of the last batch when written
    iot_streaming_alerts_total{state}                alerts published (`likely_to_break`, `healthy`)
    iot_streaming_verdicts_total{outcome}            records of Kafka `iot.verdicts` (the edge agents' verdicts):
                                                     `written` to Kudu `edge_verdicts` (insert-ignore: a repeat is
                                                     counted, not stored twice) or `dead_lettered`

The batch function and the main loop only call the methods below; a scrape never waits on the job.
"""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from contract import STATE_NAMES

DEAD_LETTER_KINDS = ("invalid", "conflict", "unprocessable")
VERDICT_OUTCOMES = ("written", "dead_lettered")
DEPENDENCIES = ("model", "kafka", "kudu", "spark")
SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)


class JobMetrics:
    """The job's metrics in a registry of their own (`registry`, served by runtime.metrics)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.batches = Counter("iot_streaming_batches", "micro-batches of readings done", registry=r)
        self.rows = Counter("iot_streaming_rows", "readings written to Kudu", registry=r)
        self.replayed = Counter("iot_streaming_replayed", "readings found already stored (a replay)", registry=r)
        self.dead = Counter("iot_streaming_dead_lettered", "records sent to the dead-letter topic", ["kind"],
                            registry=r)
        self.failed = Counter("iot_streaming_batches_failed", "failed attempts of a batch, retried",
                              ["dependency"], registry=r)
        self.batch_rows = Gauge("iot_streaming_batch_rows", "readings of the last batch", registry=r)
        self.duration = Histogram("iot_streaming_batch_duration_seconds", "a batch from start to end",
                                  buckets=SECONDS_BUCKETS, registry=r)
        self.scoring = Histogram("iot_streaming_scoring_seconds", "reading, checking and scoring a batch",
                                 buckets=SECONDS_BUCKETS, registry=r)
        self.write = Histogram("iot_streaming_write_seconds", "writing a batch (Kudu, iot.scored, dead letters)",
                               buckets=SECONDS_BUCKETS, registry=r)
        self.kafka_lag = Gauge("iot_streaming_kafka_lag_records", "records in Kafka the job has not read yet",
                               registry=r)
        self.kafka_lag.set(float("nan"))  # unknown, not 0: "caught up" must be something the job saw
        self.lag = Gauge("iot_streaming_lag_seconds", "age of the oldest reading of the last batch when written",
                         registry=r)
        self.alerts = Counter("iot_streaming_alerts", "alerts published", ["state"], registry=r)
        self.verdicts = Counter("iot_streaming_verdicts", "edge verdicts written to Kudu (insert-ignore), or records "
                                "of the verdicts topic dead-lettered", ["outcome"], registry=r)
        for kind in DEAD_LETTER_KINDS:  # every label value present from the start, at 0
            self.dead.labels(kind)
        for dependency in DEPENDENCIES:
            self.failed.labels(dependency)
        for state in STATE_NAMES.values():
            self.alerts.labels(state)
        for outcome in VERDICT_OUTCOMES:
            self.verdicts.labels(outcome)

    def batch_done(self, rows: int, replayed: int, invalid: int, conflicts: int, scoring_s: float, total_s: float,
                   lag_s: float | None) -> None:
        self.batches.inc()
        self.rows.inc(rows)
        self.replayed.inc(replayed)
        self.dead.labels("invalid").inc(invalid)
        self.dead.labels("conflict").inc(conflicts)
        self.batch_rows.set(rows)
        self.duration.observe(total_s)
        self.scoring.observe(scoring_s)
        self.write.observe(max(total_s - scoring_s, 0.0))
        if lag_s is not None:
            self.lag.set(lag_s)

    def verdicts_done(self, written: int, dead_lettered: int) -> None:
        """A batch of the verdicts query: verdicts written to Kudu, records dead-lettered."""
        self.verdicts.labels("written").inc(written)
        self.verdicts.labels("dead_lettered").inc(dead_lettered)

    def progress(self, sources: list[dict]) -> None:
        """From the readings query's last progress (`StreamingQuery.lastProgress["sources"]`: each source's latest
        and end offsets): the records not read yet. No sources (no progress yet): still unknown."""
        if not sources:
            return
        behind = 0
        for source in sources:
            latest, end = _offsets(source.get("latestOffset")), _offsets(source.get("endOffset"))
            behind += sum(max(offset - end.get(key, 0), 0) for key, offset in latest.items())
        self.kafka_lag.set(behind)


def _offsets(offsets: object) -> dict[tuple[str, str], int]:
    """Spark's Kafka offsets ({"topic": {"partition": offset}}, or that as JSON text) flattened; {} for anything
    else."""
    try:
        parsed = json.loads(offsets) if isinstance(offsets, str) else offsets or {}
        return {(topic, partition): int(offset) for topic, partitions in parsed.items()
                for partition, offset in partitions.items()}
    except (ValueError, TypeError, AttributeError):
        return {}
