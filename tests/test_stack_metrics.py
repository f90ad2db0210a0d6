"""The local stack lists its services' Prometheus endpoints (connection.env, `make status`), they answer, and after
a run their counts agree with what was published."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from runtime.settings import read_env_file
from runtime.waiting import wait_until
from stack.launcher import format_status

pytestmark = pytest.mark.stack


def families(url: str) -> dict[str, list]:
    """The metric families an endpoint serves, parsed as Prometheus does: name -> samples."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return {family.name: family.samples for family in text_string_to_metric_families(response.read().decode())}


def total(url: str, name: str) -> float:
    """The sum of a counter's samples (`<name>_total`) at `url`."""
    return sum(sample.value for sample in families(url)[name] if sample.name == f"{name}_total")


def taken(url: str) -> float:
    """Readings the job took: written to Kudu, or found there already (written by another job on the same table)."""
    return total(url, "iot_streaming_rows") + total(url, "iot_streaming_replayed")


def caught_up(url: str):
    """A probe: true once the job has done a batch, nothing is left in Kafka for it, and its row count has not moved
    since the probe's previous call."""
    seen: list[float] = []

    def probe() -> bool:
        seen.append(total(url, "iot_streaming_rows"))
        return (len(seen) > 1 and seen[-1] == seen[-2] and total(url, "iot_streaming_batches") > 0
                and families(url)["iot_streaming_kafka_lag_records"][0].value == 0)

    return probe


def test_connection_settings_and_status_name_the_metrics_endpoints_and_they_answer(local_stack):
    settings = read_env_file(local_stack.cfg.connection_file)
    assert "iot_gateway_received" in families(settings["GATEWAY_METRICS_URL"])
    assert "iot_model_requests" in families(settings["MODEL_METRICS_URL"])
    rows = {row.name: row for row in local_stack.status()}
    for service, variable in (("gateway", "GATEWAY_METRICS_URL"), ("model", "MODEL_METRICS_URL"),
                              ("streaming", "STREAMING_METRICS_URL")):
        assert rows[service].metrics == settings[variable]
        assert settings[variable] in format_status(list(rows.values()))


def test_after_a_run_the_gateways_received_and_the_jobs_rows_are_what_was_published(pipeline, stack_job):
    gateway, job = pipeline.settings()["GATEWAY_METRICS_URL"], stack_job
    machine, count, start = 940_001, 50, time.time_ns() // 1000
    # A new job reads `iot` from its start: what earlier tests published first. Count from when it has caught up.
    wait_until(caught_up(job), 600, "the job to catch up with Kafka `iot`")
    before = total(gateway, "iot_gateway_received"), taken(job)
    pipeline.publish([(f"iot/{machine}", json.dumps({"sensor_id": machine, "sensor_ts": start + i,
                                                    **{f"sensor_{s}": 1.0 for s in range(12)}}).encode(), False)
                      for i in range(count)])
    assert pipeline.wait_for_rows(f"sensor_id = {machine}", count) == count
    # The job counts a batch once it is done (its scored readings and dead letters written too), a little after SQL
    # sees its rows.
    wait_until(lambda: taken(job) >= before[1] + count, 120, "the job's metrics")
    after = total(gateway, "iot_gateway_received"), taken(job)
    assert (after[0] - before[0], after[1] - before[1]) == (count, count)
    assert families(job)["iot_streaming_kafka_lag_records"][0].value >= 0
