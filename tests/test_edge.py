"""Labs 3-6 against the real Mosquitto and Kafka: simulator -> MQTT -> gateway -> Kafka `iot` / `iot.dlq`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from contract import GATEWAY_ID_FIELD, RECEIVED_TS_FIELD
from runtime.kafka import end_offsets, records_since
from runtime.settings import DEAD_LETTER_TOPIC, IOT_TOPIC
from runtime.waiting import wait_until
from simulator.config import load_simulator_config
from simulator.publisher import run
from stack.process import PidRecord, is_alive

pytestmark = pytest.mark.stack


def simulator_config_file(tmp_path, cfg, secrets, first_sensor_id: int, **misc) -> Path:
    """A config file in the workshop's shape pointing at the test stack's broker."""
    config = {
        "mqtt": {"host": cfg.host, "port": cfg.mqtt_port, "username": secrets["MQTT_USERNAME"],
                 "password": secrets["MQTT_PASSWORD"], "topic": "iot", "qos": 1},
        "misc": {"interval_ms": 0, "verbose": False, "seed": 7, **misc},
        "machines": {"count": 20, "degrading_share": 0.3, "first_sensor_id": first_sensor_id},
    }
    path = tmp_path / f"sim-{first_sensor_id}.config"
    path.write_text(json.dumps(config))
    return path


def reading_key(record) -> tuple[int, int]:
    reading = json.loads(record.value)
    return reading["sensor_id"], reading["sensor_ts"]


def readings_since(cfg, start: dict[int, int], low: int, high: int, expected: int) -> list:
    """Records of `iot` after `start` from machines low..high-1, until `expected` distinct readings arrived (3 min
    at most), then a second longer to see duplicates still on their way."""
    return records_since(cfg.kafka_bootstrap, IOT_TOPIC, start, expected, in_range(low, high), timeout_s=180,
                         settle_s=1, identity=reading_key)


def in_range(low: int, high: int):
    def keep(record) -> bool:
        return record.key is not None and low <= int(record.key) < high
    return keep


def test_ten_thousand_readings_reach_kafka_exactly_once_in_order_with_gateway_fields(local_stack, secrets, tmp_path):
    cfg = local_stack.cfg
    start = end_offsets(cfg.kafka_bootstrap, IOT_TOPIC)
    sim = load_simulator_config(simulator_config_file(tmp_path, cfg, secrets, 100_000, messages=10_000, publishers=2))
    summary = run(sim, progress=False)
    assert summary.published == 10_000

    records = readings_since(cfg, start, 100_000, 100_020, expected=10_000)
    readings = [json.loads(r.value) for r in records]
    assert len(readings) == 10_000
    assert len({(r["sensor_id"], r["sensor_ts"]) for r in readings}) == 10_000
    by_sensor: dict[int, list] = defaultdict(list)
    for record, reading in zip(records, readings, strict=True):
        assert record.key == str(reading["sensor_id"]).encode()
        assert reading[GATEWAY_ID_FIELD] == "gw-local"
        assert isinstance(reading[RECEIVED_TS_FIELD], int) and reading[RECEIVED_TS_FIELD] >= reading["sensor_ts"]
        by_sensor[reading["sensor_id"]].append((record.partition, record.offset, reading["sensor_ts"]))
    assert len(by_sensor) == 20
    for sensor, seen in by_sensor.items():
        assert len({partition for partition, _, _ in seen}) == 1, sensor
        timestamps = [ts for _, _, ts in sorted(seen)]
        assert timestamps == sorted(timestamps), f"sensor {sensor} out of order"


EXPECTED_REASONS = {
    "bad_json": r"^not JSON",
    "missing_field": r"^sensor_5: missing$",
    "wrong_type": r"^sensor_3: must be a number, got str 'fast'$",
    "out_of_range": r"^sensor_7: 1000000000000.0 is outside the physical bounds",
    "duplicate_key": r"^sensor_id: duplicate key$",
}


def test_every_malformed_kind_lands_in_the_dead_letter_topic_with_its_reason(local_stack, secrets, tmp_path):
    cfg = local_stack.cfg
    iot_start = end_offsets(cfg.kafka_bootstrap, IOT_TOPIC)
    dlq_start = end_offsets(cfg.kafka_bootstrap, DEAD_LETTER_TOPIC)
    sim = load_simulator_config(simulator_config_file(tmp_path, cfg, secrets, 200_000, messages=2_000,
                                                      fault_share=0.1))
    summary = run(sim, progress=False)
    faults = sum(summary.faults.values())
    assert set(summary.faults) == set(EXPECTED_REASONS) and faults > 100

    def from_this_test(record) -> bool:
        return dict(record.headers).get("mqtt_topic", b"").decode().startswith("iot/2000")

    dead = records_since(cfg.kafka_bootstrap, DEAD_LETTER_TOPIC, dlq_start, faults, from_this_test, timeout_s=180,
                         settle_s=1)
    assert len(dead) == faults
    kinds = Counter()
    for record in dead:
        headers = {k: v.decode() for k, v in record.headers}
        kind = next(k for k, pattern in EXPECTED_REASONS.items() if re.search(pattern, headers["reason"]))
        kinds[kind] += 1
        assert headers["gateway_id"] == "gw-local" and int(headers["received_ts"]) > 0
        assert headers["mqtt_topic"] == record.key.decode()
        if kind != "bad_json":  # the original bytes are kept: they still parse, and show the fault
            json.loads(record.value, object_pairs_hook=lambda pairs: pairs)
    assert kinds == summary.faults
    good = readings_since(cfg, iot_start, 200_000, 200_020, expected=2_000 - faults)
    assert len(good) == 2_000 - faults


def gateway_pid(local_stack) -> PidRecord:
    service = next(s for s in local_stack.services if s.name == "gateway")
    return PidRecord.load(service.pid_file)


def test_kill_9_of_the_gateway_under_full_load_loses_nothing(local_stack, secrets, tmp_path):
    cfg = local_stack.cfg
    start = end_offsets(cfg.kafka_bootstrap, IOT_TOPIC)
    config = simulator_config_file(tmp_path, cfg, secrets, 300_000, messages=30_000, publishers=2)
    simulator = subprocess.Popen([sys.executable, "-m", "simulator", str(config), "--quiet"], stdout=subprocess.PIPE,
                                 text=True)
    time.sleep(1.5)  # let the load build up: the kill must land mid-stream
    killed = gateway_pid(local_stack)
    os.killpg(killed.pid, signal.SIGKILL)
    wait_until(lambda: not is_alive(killed), 30, "the killed gateway to be gone")
    local_stack.up(["gateway"])
    assert gateway_pid(local_stack) != killed
    output, _ = simulator.communicate(timeout=300)
    published = int(re.search(r"published ([\d,]+) messages", output).group(1).replace(",", ""))
    assert published == 30_000

    records = readings_since(cfg, start, 300_000, 300_020, expected=published)
    distinct = {(json.loads(r.value)["sensor_id"], json.loads(r.value)["sensor_ts"]) for r in records}
    duplicates = len(records) - len(distinct)
    print(f"\nkill -9 under load: {published} published, {len(distinct)} distinct in Kafka, {duplicates} duplicates")
    assert len(distinct) == published


def test_a_burst_beyond_mosquittos_default_queue_waits_for_a_stopped_gateway(local_stack, secrets, tmp_path):
    cfg = local_stack.cfg
    start = end_offsets(cfg.kafka_bootstrap, IOT_TOPIC)
    local_stack.down(["gateway"])
    try:
        sim = load_simulator_config(simulator_config_file(tmp_path, cfg, secrets, 400_000, messages=5_000))
        assert run(sim, progress=False).published == 5_000  # five times Mosquitto's default max_queued_messages
    finally:
        local_stack.up(["gateway"])
    records = readings_since(cfg, start, 400_000, 400_020, expected=5_000)
    assert len({(json.loads(r.value)["sensor_ts"], r.key) for r in records}) == 5_000


def test_a_publisher_far_ahead_of_a_stalled_broker_loses_nothing(local_stack, secrets, tmp_path):
    """paho numbers messages 1..65535: with more unacknowledged, ids collide and paho drops messages. The simulator
    must hold back instead. The broker is frozen (SIGSTOP) just after the first message, while 100,000 are sent."""
    cfg = local_stack.cfg
    broker = PidRecord.load(local_stack.select(["mosquitto"])[0].pid_file)
    arrived = threading.Event()
    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="stall-watcher")
    watcher.username_pw_set(secrets["MQTT_USERNAME"], secrets["MQTT_PASSWORD"])
    watcher.on_message = lambda *_args: arrived.set()
    watcher.connect(cfg.host, cfg.mqtt_port)
    watcher.subscribe("stall/#", qos=0)
    watcher.loop_start()

    def stall_the_broker() -> None:
        if arrived.wait(60):  # the publisher is connected and publishing
            watcher.unsubscribe("stall/#")
            os.kill(broker.pid, signal.SIGSTOP)
            try:
                time.sleep(8)  # the stall itself: the publisher runs on while the broker acknowledges nothing
            finally:
                os.kill(broker.pid, signal.SIGCONT)

    staller = threading.Thread(target=stall_the_broker)
    staller.start()
    try:
        config = json.loads(simulator_config_file(tmp_path, cfg, secrets, 900_000, messages=100_000).read_text())
        config["mqtt"]["topic"] = "stall"
        (tmp_path / "stall.config").write_text(json.dumps(config))
        summary = run(load_simulator_config(tmp_path / "stall.config"), progress=False)
    finally:
        staller.join()
        os.kill(broker.pid, signal.SIGCONT)
        watcher.loop_stop()
        watcher.disconnect()
    assert arrived.is_set()
    assert summary.published == 100_000
