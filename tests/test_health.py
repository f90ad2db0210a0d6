"""Health tells the truth: a service is `up` only while it does its work.

A process that is frozen (SIGSTOP: alive, doing nothing) must not be reported up, whichever service it is; the
gateway and the streaming job say which dependency they wait on while it is away, and are up again once it is
back, by themselves."""

from __future__ import annotations

import os
import signal

import pytest

from runtime.health import is_up, read_health
from runtime.settings import IOT_TOPIC
from runtime.waiting import wait_until
from stack.process import PidRecord
from tests.poison import reading

pytestmark = [pytest.mark.stack, pytest.mark.slow]

FROZEN = ["mosquitto", "kafka", "kudu-master", "kudu-tserver", "sql", "model", "gateway", "supervisor"]


def status_of(stack, name: str):
    rows = stack.status(None if name == "supervisor" else [name])
    return next(row for row in rows if row.name == name)


def wait_for_state(stack, name: str, wanted, timeout_s: float = 60, waiting_on: str | None = None):
    def reached():
        row = status_of(stack, name)
        return row if row.state in wanted and (waiting_on is None or row.waiting_on == waiting_on) else None

    return wait_until(reached, timeout_s, f"{name} in state {wanted} (waiting on {waiting_on})",
                      abort=lambda: None)


@pytest.mark.parametrize("name", FROZEN)
def test_a_frozen_service_is_not_reported_up(local_stack, name):
    wait_for_state(local_stack, name, {"up"})
    service = local_stack.supervisor if name == "supervisor" else local_stack.select([name])[0]
    group = PidRecord.load(service.pid_file).pid
    os.killpg(group, signal.SIGSTOP)
    try:
        frozen = wait_for_state(local_stack, name, {"degraded"}, timeout_s=45)
        assert frozen.detail
    finally:
        os.killpg(group, signal.SIGCONT)
    wait_for_state(local_stack, name, {"up"}, timeout_s=90)


def test_the_gateway_waits_on_kafka_and_mqtt_and_resumes_by_itself(local_stack, pipeline):
    machine = 1_200_000
    start = pipeline.end_offsets(IOT_TOPIC)
    local_stack.down(["kafka"])
    try:
        pipeline.publish([(f"iot/{machine}", reading(sensor_id=machine, sensor_ts=1_700_000_000_000_000), False)])
        waiting = wait_for_state(local_stack, "gateway", {"degraded"}, waiting_on="kafka")
        assert "Kafka" in waiting.detail
    finally:
        local_stack.up(["kafka"])
    wait_for_state(local_stack, "gateway", {"up"}, timeout_s=120)
    arrived = pipeline.records_since(IOT_TOPIC, start, lambda r: r.key == str(machine).encode(), expected=1)
    assert len(arrived) == 1

    local_stack.down(["mosquitto"])
    try:
        waiting = wait_for_state(local_stack, "gateway", {"degraded"}, waiting_on="mqtt")
        assert "MQTT" in waiting.detail
    finally:
        local_stack.up(["mosquitto"])
    wait_for_state(local_stack, "gateway", {"up"}, timeout_s=120)


def batches_done(health_file) -> int:
    report = read_health(health_file)
    return int(report.counters.get("batches", 0)) if report else 0


@pytest.mark.parametrize("dependency", ["model", "kudu-tserver"])
def test_the_job_waits_on_the_model_server_and_kudu_and_resumes_by_itself(local_stack, pipeline, dependency):
    machine = 1_200_001 if dependency == "model" else 1_200_002
    job = pipeline.start_job(f"health-job-{dependency}", "--max-backoff-seconds", "5")
    health = pipeline.workdir / f"health-job-{dependency}.health"
    try:
        # The job's own checkpoint makes its first batch the whole topic so far: the fault is meant for a job at
        # work on new readings, not for one that is still replaying what earlier tests wrote.
        wait_until(lambda: batches_done(health) >= 1, 600, "the job's first batch (the topic's backlog)")
        local_stack.down([dependency])
        try:
            pipeline.produce([(str(machine).encode(), reading(sensor_id=machine, sensor_ts=1_700_000_000_000_000))])

            def waits():
                report = read_health(health)
                return report if report and report.state == "degraded" and report.waiting_on == dependency.split(
                    "-")[0] else None

            report = wait_until(waits, 120, f"the job to wait on {dependency}")
            assert report.detail
        finally:
            local_stack.up([dependency])
        assert pipeline.wait_for_rows(f"sensor_id = {machine}", 1, timeout_s=240) == 1
        wait_until(lambda: is_up(health), 120, "the job up again")
    finally:
        pipeline.stop(job)
