"""Alerts end to end: readings of a machine that degrades, published on MQTT, raise exactly one "likely to break"
alert in Kafka `iot.alerts`, one row in SQL table `alerts` and a retained message on MQTT `alerts/<id>`; also when
the job is killed with SIGKILL while the readings stream in."""

from __future__ import annotations

import json
import os
import queue
import signal
import time

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from contract import ID_FIELD, LABEL, SENSOR_FIELDS, TS_FIELD, alert_json, parse_alert
from model.client import score_batch
from model.data import load_history
from runtime.kafka import ensure_topic, records_since
from runtime.settings import ALERTS_TOPIC, MQTT_ALERTS_PREFIX
from runtime.waiting import wait_until
from sql.client import execute, query
from sql.kudu_ddl import alerts_ddl, sensors_ddl
from streaming.alerts_query import AlertPublisher

pytestmark = [pytest.mark.stack]


@pytest.fixture(scope="module")
def verdict_rows(pipeline) -> dict[int, np.ndarray]:
    """Rows of the workshop's history the served model judges healthy (1) and likely to break (0), 20 each."""
    history = load_history()
    settings = pipeline.settings()
    rows = {}
    for label in (1, 0):
        candidates = history[history[LABEL] == label][list(SENSOR_FIELDS)].to_numpy()[:400]
        verdicts = np.array(score_batch(candidates, settings["MODEL_URL"], settings["MODEL_ACCESS_KEY"]).verdicts)
        rows[label] = candidates[verdicts == label][:20]
        assert len(rows[label]) == 20, f"the served model judges too few history rows {label}"
    return rows


def degrading(machine: int, verdict_rows: dict[int, np.ndarray], start_us: int, healthy: int = 8,
              broken: int = 12) -> list[tuple[str, bytes, bool]]:
    """MQTT messages of a machine: `healthy` readings the model judges healthy, then `broken` it does not."""
    values = [*verdict_rows[1][:healthy], *verdict_rows[0][:broken]]
    return [(f"iot/{machine}", json.dumps({ID_FIELD: machine, TS_FIELD: start_us + i * 1000,
                                          **dict(zip(SENSOR_FIELDS, map(float, row), strict=True))}).encode(), False)
            for i, row in enumerate(values)]


def alerts_of(pipeline, machines: set[int], offsets: dict[int, int], topic: str = ALERTS_TOPIC,
              expected: int | None = None) -> list[dict]:
    """The committed alerts of `machines` in `topic` after `offsets`, read until one per machine arrived, then 5 s
    more to see a duplicate."""
    records = records_since(pipeline.cfg.kafka_bootstrap, topic, offsets, expected or len(machines),
                            lambda r: int(r.key) in machines, timeout_s=300, settle_s=5)
    return [parse_alert(record.value) for record in records]


def retained_alert(pipeline, machine: int, timeout_s: float = 120) -> tuple[dict, bool]:
    """The message a new MQTT subscriber to alerts/<machine> gets, and whether it came as retained."""
    received: queue.Queue = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-alerts-{time.time_ns()}")
    client.username_pw_set(pipeline.secrets["MQTT_USERNAME"], pipeline.secrets["MQTT_PASSWORD"])
    client.on_message = lambda _c, _u, message: received.put(message)
    client.connect(pipeline.cfg.host, pipeline.cfg.mqtt_port)
    client.subscribe(f"{MQTT_ALERTS_PREFIX}/{machine}", qos=1)
    client.loop_start()
    try:
        message = received.get(timeout=timeout_s)
        return parse_alert(message.payload), bool(message.retain)
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.slow
def test_a_kill_9_of_the_job_mid_stream_neither_loses_nor_repeats_an_alert(pipeline, verdict_rows, tmp_path):
    """A job of the test's own (own tables and topics: the stack's job sees the same readings), killed with
    SIGKILL while twenty machines' readings stream in, then started again with the same checkpoints."""
    name = f"alerts_drill_{os.getpid()}"
    cfg = pipeline.cfg
    for ddl in (sensors_ddl(f"{name}_sensors"), alerts_ddl(name)):
        execute(ddl, cfg.host, cfg.sql_port, cfg.kudu_master_address)
    scored, alerts_topic = f"{name}.scored", f"{name}.alerts"
    for topic in (scored, alerts_topic):
        ensure_topic(cfg.kafka_bootstrap, topic, 1)
    options = ("--kudu-table", f"impala::default.{name}_sensors", "--scored-topic", scored,
               "--alerts-topic", alerts_topic, "--alerts-kudu-table", f"impala::default.{name}",
               "--trigger-seconds", "0.5")
    alert_offsets = pipeline.end_offsets(alerts_topic)
    machines = set(range(930_100, 930_120))
    start = time.time_ns() // 1000 - 600_000_000
    messages = [m for machine in sorted(machines) for m in degrading(machine, verdict_rows, start)]
    job = pipeline.start_job(name, *options)
    try:
        pipeline.publish(messages[: len(messages) // 2])
        pipeline.records_since(alerts_topic, alert_offsets, lambda r: True, expected=1, timeout_s=300)
        os.killpg(job.pid, signal.SIGKILL)  # mid-stream: alerts published, more readings on their way
        job.wait(timeout=60)
        pipeline.publish(messages[len(messages) // 2:])
        job = pipeline.start_job(name, *options)
        alerts = alerts_of(pipeline, machines, alert_offsets, alerts_topic)
    finally:
        pipeline.stop(job)
    assert sorted(a[ID_FIELD] for a in alerts) == sorted(machines)
    assert {a["state"] for a in alerts} == {"likely_to_break"}
    rows = query(f"select sensor_id, count(*) from {name} group by sensor_id", cfg.host, cfg.sql_port)
    assert dict(rows) == dict.fromkeys(machines, 1)
    readings = query(f"select count(*) from {name}_sensors where sensor_id between 930100 and 930119", cfg.host,
                     cfg.sql_port)
    assert readings == [(len(messages),)]


def test_a_batch_is_published_once_even_when_replayed_or_cut_short(pipeline):
    """The alerts' Kafka publisher against the real broker: a replayed batch id publishes nothing; a transaction
    left open by a killed job (its producer gone without committing) is aborted by the next start, whose replay of
    that batch then publishes it once."""
    topic, query_id = f"alerts_once_{time.time_ns()}", f"test-{time.time_ns()}"
    ensure_topic(pipeline.cfg.kafka_bootstrap, topic, 1)
    start = pipeline.end_offsets(topic)
    first = [{"sensor_id": 1, "sensor_ts": 1_764_150_000_000_000, "is_healthy": 0, "state": "likely_to_break",
              "model_version": 1, "readings": []}]
    second = [{**first[0], "sensor_id": 2}]
    publisher = AlertPublisher(pipeline.cfg.kafka_bootstrap, topic, query_id, {})
    assert publisher.publish(0, first)
    assert not publisher.publish(0, first)  # the replay of batch 0
    publisher.producer.begin_transaction()  # batch 1 cut short: sent, never committed
    publisher.producer.send(topic, key=b"2", value=alert_json(second[0])).get(timeout=30)
    publisher.producer.close(timeout=0)
    restarted = AlertPublisher(pipeline.cfg.kafka_bootstrap, topic, query_id, {})
    try:
        assert restarted.published(0) and not restarted.published(1)
        assert restarted.publish(1, second)
    finally:
        restarted.close()
    records = records_since(pipeline.cfg.kafka_bootstrap, topic, start, 2, timeout_s=60, settle_s=2)
    assert [parse_alert(r.value)["sensor_id"] for r in records] == [1, 2]


# Last in the module: the `stack_job` it uses runs until the module ends, and would compete with the drill above.
def test_a_machine_that_degrades_raises_one_alert_in_kafka_sql_and_mqtt(pipeline, stack_job, verdict_rows):
    machine = 930_001
    offsets = pipeline.end_offsets(ALERTS_TOPIC)
    pipeline.publish(degrading(machine, verdict_rows, time.time_ns() // 1000 - 60_000_000))
    [alert] = alerts_of(pipeline, {machine}, offsets)
    assert (alert[ID_FIELD], alert["state"], alert[LABEL]) == (machine, "likely_to_break", 0)
    assert alert["model_version"] is not None and len(alert["readings"]) == 5
    count = f"select count(*) from alerts where sensor_id = {machine}"
    wait_until(lambda: query(count, pipeline.cfg.host, pipeline.cfg.sql_port)[0][0] >= 1, 60, "the alert in SQL")
    assert query(count, pipeline.cfg.host, pipeline.cfg.sql_port)[0][0] == 1
    # Retained: the gateway has carried the alert back before this subscriber existed.
    wait_until(lambda: retained_alert(pipeline, machine, timeout_s=5)[0] == alert, 120, "the alert on MQTT")
    assert retained_alert(pipeline, machine) == (alert, True)
