"""Durability we can state: a different reading under a stored key is kept aside, never written over, while an
identical replay is harmless, also when a newer model scores it; offsets deleted by Kafka's retention stop the job
loudly, by default; and what Mosquitto acknowledged survives its kill -9 but for the last 2 s."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import paho.mqtt.client as mqtt
import pytest
from kafka import TopicPartition
from kafka.admin import KafkaAdminClient

from model.approval import approve_and_promote
from model.registry import register
from runtime.kafka import ensure_topic
from runtime.settings import DEAD_LETTER_TOPIC, IOT_TOPIC, SQL_TABLE
from runtime.waiting import http_ok, wait_until
from sql.client import query
from stack.process import PidRecord
from tests.poison import reading

pytestmark = [pytest.mark.stack, pytest.mark.slow]


def header(record, name: str) -> str:
    return dict(record.headers).get(name, b"").decode()


def test_a_different_reading_under_a_stored_key_is_dead_lettered_and_a_replay_is_harmless(pipeline):
    machine, ts = 1_300_000, 1_700_000_000_000_000
    stored, different = reading(sensor_id=machine, sensor_ts=ts), reading(sensor_id=machine, sensor_ts=ts, sensor_3=7.5)
    key = str(machine).encode()
    job = pipeline.start_job("conflict-job")
    try:
        pipeline.produce([(key, stored)])
        assert pipeline.wait_for_rows(f"sensor_id = {machine}", 1) == 1
        dlq = pipeline.end_offsets(DEAD_LETTER_TOPIC)
        pipeline.produce([(key, different), (key, stored), (key, stored)])
        pipeline.produce([(key, reading(sensor_id=machine, sensor_ts=ts + 1))])  # a later reading: the batch is done
        assert pipeline.wait_for_rows(f"sensor_id = {machine}", 2) == 2
        dead = pipeline.records_since(DEAD_LETTER_TOPIC, dlq, lambda r: r.value in (different, stored), expected=1)
    finally:
        pipeline.stop(job)
    assert [r.value for r in dead] == [different]
    assert header(dead[0], "kind") == "conflict"
    assert header(dead[0], "reason") == (
        f"conflict: a different reading under this key (sensor_id={machine}, sensor_ts={ts}) is stored in Kudu and "
        "is kept; sensor_3: 2.0 kept, 7.5 here")
    assert query(f"select sensor_3 from {SQL_TABLE} where sensor_id = {machine} and sensor_ts = "
                 f"cast('2023-11-14 22:13:20' as timestamp)", pipeline.cfg.host, pipeline.cfg.sql_port) == [(2.0,)]


def model_server_of_a_newer_version(pipeline, workshop_run, free_ports) -> tuple[subprocess.Popen, str, int]:
    """A model server of its own serving the session's model registered, approved and promoted once more (a newer
    version than the stack's), its URL and that version."""
    model_file = pipeline.workdir / "newer" / "iot_model.joblib"
    model_file.parent.mkdir(exist_ok=True)
    version = register(f"runs:/{workshop_run.run_id}/model")
    assert approve_and_promote(version, path=model_file)[1].version == version > workshop_run.version
    port = free_ports(1)[0]
    env = {**os.environ, "MODEL_ACCESS_KEY": pipeline.secrets["MODEL_ACCESS_KEY"], "MODEL_PATH": str(model_file)}
    server = subprocess.Popen([sys.executable, "-m", "model", "serve", "--host", pipeline.cfg.host, "--port",
                               str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://{pipeline.cfg.host}:{port}"
    wait_until(lambda: http_ok(f"{url}/health"), 60, f"model server of version {version}",
               abort=lambda: "exited" if server.poll() is not None else None)
    return server, url, version


def test_a_replay_scored_by_a_newer_model_is_a_replay_and_keeps_the_stored_verdicts_version(pipeline, workshop_run,
                                                                                              free_ports):
    topic, machine, ts = "iot.replay-test", 1_300_003, 1_700_000_000_000_000
    key, replayed = str(machine).encode(), reading(sensor_id=machine, sensor_ts=ts)
    later = reading(sensor_id=machine, sensor_ts=ts + 1)
    ensure_topic(pipeline.cfg.kafka_bootstrap, topic, 1)
    admin = KafkaAdminClient(bootstrap_servers=pipeline.cfg.kafka_bootstrap)
    try:
        pipeline.produce([(key, replayed)], topic)
        job = pipeline.start_job("replay-v1", "--topic", topic)
        try:
            assert pipeline.wait_for_rows(f"sensor_id = {machine}", 1) == 1
        finally:
            pipeline.stop(job)
        server, url, newer = model_server_of_a_newer_version(pipeline, workshop_run, free_ports)
        dlq = pipeline.end_offsets(DEAD_LETTER_TOPIC)
        job = pipeline.start_job("replay-v2", "--topic", topic, "--model-url", url)  # from the topic's start
        try:
            pipeline.produce([(key, later)], topic)
            assert pipeline.wait_for_rows(f"sensor_id = {machine}", 2) == 2
        finally:
            pipeline.stop(job)
            server.terminate()
            server.wait(timeout=30)
    finally:
        admin.delete_topics([topic])
        admin.close()
    rows = query(f"select model_version from {SQL_TABLE} where sensor_id = {machine} order by sensor_ts",
                 pipeline.cfg.host, pipeline.cfg.sql_port)
    assert rows == [(workshop_run.version,), (newer,)]
    assert pipeline.records_since(DEAD_LETTER_TOPIC, dlq, lambda r: r.value == replayed, 1, timeout_s=5) == []
    assert "1 already stored" in (pipeline.workdir / "replay-v2.log").read_text()


def test_offsets_deleted_by_retention_stop_the_job_unless_told_to_go_on(pipeline):
    topic, machine = "iot.retention-test", 1_300_001
    ensure_topic(pipeline.cfg.kafka_bootstrap, topic, 1)
    admin = KafkaAdminClient(bootstrap_servers=pipeline.cfg.kafka_bootstrap)
    key = str(machine).encode()
    options = ("--topic", topic)
    try:
        pipeline.produce([(key, reading(sensor_id=machine, sensor_ts=1_700_000_000_000_000 + i)) for i in range(10)],
                         topic)
        job = pipeline.start_job("retention-job", *options)
        assert pipeline.wait_for_rows(f"sensor_id = {machine}", 10) == 10
        pipeline.stop(job)
        pipeline.produce([(key, reading(sensor_id=machine, sensor_ts=1_700_000_000_000_010 + i)) for i in range(10)],
                         topic)
        admin.delete_records({TopicPartition(topic, 0): 15})  # what retention does to unread offsets 10..14

        job = pipeline.start_job("retention-job", *options, wait_up=False)
        assert job.wait(timeout=600) == 3
        log = (pipeline.workdir / "retention-job.log").read_text()
        assert "Stopping rather than skipping data" in log and "--no-fail-on-data-loss" in log

        job = pipeline.start_job("retention-job", *options, "--no-fail-on-data-loss")
        try:
            wait_until(lambda: pipeline.rows(f"sensor_id = {machine}") == 15, 300, "the 5 readings left")
        finally:
            pipeline.stop(job)
    finally:
        admin.delete_topics([topic])
        admin.close()


def test_what_mosquitto_acknowledged_survives_its_kill_9_unless_acknowledged_in_the_last_2_s(pipeline):
    """The README's statement of Mosquitto's durability (autosave every 1 + 1 s), with the gateway away so that
    every message waits in the broker: the worst case."""
    stack, machine = pipeline.stack, 1_300_002
    start = pipeline.end_offsets(IOT_TOPIC)
    broker = PidRecord.load(stack.select(["mosquitto"])[0].pid_file)
    stack.down(["gateway"])
    sequence_of, acknowledged_at = {}, {}  # mid -> sequence; mid -> when the broker acknowledged it
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="durability-publisher")
    client.username_pw_set(pipeline.secrets["MQTT_USERNAME"], pipeline.secrets["MQTT_PASSWORD"])
    client.on_publish = lambda _c, _u, mid, _rc, _p: acknowledged_at.setdefault(mid, time.time())
    client.connect(pipeline.cfg.host, pipeline.cfg.mqtt_port)
    client.loop_start()
    try:
        for sequence in range(3_000):  # 6 s at 500 messages/s
            payload = reading(sensor_id=machine, sensor_ts=1_700_000_000_000_000 + sequence)
            info = client.publish(f"iot/{machine}", payload, qos=1)
            sequence_of[info.mid] = sequence
            time.sleep(0.002)  # pacing, as a sensor would publish
        wait_until(lambda: len(acknowledged_at) == 3_000, 30, "every message acknowledged")
        killed_at = time.time()
        os.kill(broker.pid, signal.SIGKILL)
    finally:
        client.loop_stop()
    wait_until(lambda: stack.status(["mosquitto"])[0].state == "up", 60, "the supervisor to restart Mosquitto")
    stack.up(["gateway"])
    arrived = {json.loads(r.value)["sensor_ts"] - 1_700_000_000_000_000
               for r in pipeline.records_since(IOT_TOPIC, start, lambda r: r.key == str(machine).encode(), 3_000,
                                               timeout_s=60)}
    lost = {sequence_of[mid]: killed_at - at for mid, at in acknowledged_at.items() if sequence_of[mid] not in arrived}
    print(f"\nMosquitto kill -9: {len(lost)} of 3,000 acknowledged messages lost, the oldest acknowledged "
          f"{max(lost.values(), default=0):.2f} s before the kill")
    assert all(age <= 2.0 for age in lost.values())
