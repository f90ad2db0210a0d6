"""The streaming job's metrics (streaming/metrics.py), without Spark: what a batch and a query's progress set, as
Prometheus parses them."""

from __future__ import annotations

import math

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streaming.metrics import DEAD_LETTER_KINDS, DEPENDENCIES, VERDICT_OUTCOMES, JobMetrics


def samples(metrics: JobMetrics) -> dict[tuple[str, tuple], float]:
    text = generate_latest(metrics.registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_every_label_value_is_there_from_the_start_at_zero():
    seen = samples(JobMetrics())
    assert all(seen[("iot_streaming_dead_lettered_total", (("kind", kind),))] == 0 for kind in DEAD_LETTER_KINDS)
    assert all(seen[("iot_streaming_batches_failed_total", (("dependency", d),))] == 0 for d in DEPENDENCIES)
    assert seen[("iot_streaming_alerts_total", (("state", "likely_to_break"),))] == 0
    assert all(seen[("iot_streaming_verdicts_total", (("outcome", o),))] == 0 for o in VERDICT_OUTCOMES)


def test_a_batch_counts_rows_dead_letters_and_times():
    metrics = JobMetrics()
    metrics.batch_done(rows=90, replayed=4, invalid=3, conflicts=2, scoring_s=0.3, total_s=0.5, lag_s=1.5)
    metrics.batch_done(rows=10, replayed=0, invalid=0, conflicts=0, scoring_s=0.1, total_s=0.2, lag_s=None)
    seen = samples(metrics)
    assert seen[("iot_streaming_batches_total", ())] == 2
    assert seen[("iot_streaming_rows_total", ())] == 100
    assert seen[("iot_streaming_replayed_total", ())] == 4
    assert seen[("iot_streaming_dead_lettered_total", (("kind", "invalid"),))] == 3
    assert seen[("iot_streaming_dead_lettered_total", (("kind", "conflict"),))] == 2
    assert seen[("iot_streaming_batch_rows", ())] == 10
    assert seen[("iot_streaming_lag_seconds", ())] == 1.5  # a batch without readings leaves it as it was
    assert seen[("iot_streaming_batch_duration_seconds_count", ())] == 2
    assert abs(seen[("iot_streaming_write_seconds_sum", ())] - 0.3) < 1e-9


def source(latest: object, end: object) -> dict:
    """A source of a query's `lastProgress` (Spark writes the offsets as JSON objects)."""
    return {"description": "KafkaV2[Subscribe[iot]]", "latestOffset": latest, "endOffset": end}


def test_kafka_lag_is_what_spark_saw_beyond_what_it_read():
    metrics = JobMetrics()
    metrics.progress([])  # no progress reported yet
    assert math.isnan(samples(metrics)[("iot_streaming_kafka_lag_records", ())])  # unknown, not "caught up"
    metrics.progress([source({"iot": {"0": 120, "1": 50}}, {"iot": {"0": 100, "1": 50}})])
    assert samples(metrics)[("iot_streaming_kafka_lag_records", ())] == 20
    metrics.progress([source('{"iot": {"0": 130}}', '{"iot": {"0": 100}}')])  # or as JSON text
    assert samples(metrics)[("iot_streaming_kafka_lag_records", ())] == 30
    metrics.progress([source("not json", None)])  # nothing readable: no lag claimed
    assert samples(metrics)[("iot_streaming_kafka_lag_records", ())] == 0
