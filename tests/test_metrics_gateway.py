"""The gateway's Prometheus metrics and the endpoint every part shares (runtime/metrics.py).

Without services: the dead-letter reason categories (bounded whatever arrives), the sum over workers, the endpoint.
Against the real Mosquitto and Kafka (`stack`): a two-worker gateway's /metrics after N readings, V edge verdicts
and M dead letters (both filters in shared subscriptions: each message once).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
import urllib.request

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter
from prometheus_client.parser import text_string_to_metric_families

from contract import MAX_NESTING, MAX_PAYLOAD_BYTES, SENSOR_FIELDS, InvalidReading, parse_reading, verdict_json
from gateway.__main__ import build_parser
from gateway.bridge import ACK_LATENCY_BUCKETS_S, DEAD_LETTER_REASONS, Counters, dead_letter_reason
from gateway.metrics import GatewayMetrics
from runtime.health import is_up
from runtime.kafka import end_offsets, ensure_topic
from runtime.metrics import port_number, start_metrics_server
from runtime.waiting import port_open, wait_until
from simulator.config import load_simulator_config
from simulator.fleet import FAULT_KINDS, Fleet

FIRST_ID = 810_000
READING = {"sensor_id": FIRST_ID, "sensor_ts": 1_795_549_487_083_465, **dict.fromkeys(SENSOR_FIELDS, 1)}


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample at `url`, parsed by prometheus_client: (name, sorted labels) -> value."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def by_label(samples: dict, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: v for (sample, labels), v in samples.items() if sample == name}


def reason_of(payload: bytes, **limits) -> str:
    with pytest.raises(InvalidReading) as invalid:
        parse_reading(payload, **limits)
    return dead_letter_reason(invalid.value)


def variant(**changes) -> bytes:
    return json.dumps({**READING, **changes}).encode()


# -- the dead-letter reason categories --

@pytest.mark.parametrize("payload, reason", [
    (b'{"sensor_id": 1,', "not_json"),
    (b"\xff\xfe\xfd\xfc\xfb", "not_json"),
    (b"", "not_json"),
    (b"x" * (MAX_PAYLOAD_BYTES + 1), "too_large"),
    (b"[" * (MAX_NESTING + 1) + b"]" * (MAX_NESTING + 1), "too_deep"),
    (b"[1, 2]", "not_an_object"),
    (json.dumps({k: v for k, v in READING.items() if k != "sensor_5"}).encode(), "sensor_5"),
    (variant(sensor_3="fast"), "sensor_3"),
    (variant(sensor_7=1e12), "sensor_7"),
    (variant(sensor_ts=5), "sensor_ts"),
    (variant(sensor_id=-1), "sensor_id"),
    (variant()[:-1] + b', "sensor_id": 2}', "sensor_id"),  # a duplicate key
    (variant(**{"'; DROP TABLE sensors; --": float("nan")}), "extra_field"),  # the name is the payload's
    (variant()[:-1] + b', "x": 1, "x": 2}', "extra_field"),
])
def test_a_dead_letter_reason_is_a_contract_field_or_a_fault_category(payload, reason):
    assert reason_of(payload) == reason
    assert reason in DEAD_LETTER_REASONS


def test_the_simulators_malformed_kinds_have_their_own_reasons(tmp_path):
    config = tmp_path / "sim.config"
    config.write_text(json.dumps({"mqtt": {"host": "127.0.0.1", "port": 1883, "username": "u", "password": "p"},
                                  "misc": {"fault_share": 1.0}}))
    fleet = Fleet(load_simulator_config(config), [1, 2], seed=1)
    reasons = [reason_of(payload) for _, payload in fleet.next_messages(len(FAULT_KINDS))]
    assert dict(zip(FAULT_KINDS, reasons, strict=True)) == {
        "bad_json": "not_json", "missing_field": "sensor_5", "wrong_type": "sensor_3", "out_of_range": "sensor_7",
        "duplicate_key": "sensor_id"}


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300),
                 st.dictionaries(st.text(max_size=20), st.one_of(st.floats(), st.text(max_size=5), st.none()),
                                 max_size=6).map(lambda d: json.dumps({**READING, **d}).encode())))
def test_whatever_arrives_its_reason_is_one_of_the_fixed_set(payload):
    try:
        parse_reading(payload, max_bytes=200, max_nesting=4)
    except InvalidReading as exc:
        assert dead_letter_reason(exc) in DEAD_LETTER_REASONS


def test_the_reasons_are_few_and_valid_label_values():
    assert len(DEAD_LETTER_REASONS) == len(set(DEAD_LETTER_REASONS)) < 30
    assert all(reason.isidentifier() for reason in DEAD_LETTER_REASONS)


# -- the sum over workers --

def worker_counters(produced: int, dead: dict[str, int], latency_s: float, received_extra: int = 0) -> Counters:
    counters = Counters()
    for _ in range(produced + sum(dead.values()) + received_extra):
        counters.add("received")
    for _ in range(produced):
        counters.delivered("produced", None, latency_s)
    for reason, count in dead.items():
        for _ in range(count):
            counters.delivered("dead_lettered", reason, latency_s)
    return counters


def test_the_metrics_are_the_sum_over_the_workers():
    workers = [worker_counters(10, {"not_json": 2}, 0.003, received_extra=1),
               worker_counters(5, {"not_json": 1, "sensor_3": 4}, 0.2)]
    registry = CollectorRegistry()
    registry.register(GatewayMetrics(lambda: [w.snapshot() for w in workers]))
    server = start_metrics_server(0, registry=registry)
    try:
        samples = scrape(server.url)
    finally:
        server.close()
    assert value(samples, "iot_gateway_received_total") == 23
    assert value(samples, "iot_gateway_produced_total") == 15
    dead = by_label(samples, "iot_gateway_dead_lettered_total", "reason")
    assert set(dead) == set(DEAD_LETTER_REASONS)  # every category, from the start
    assert {reason: n for reason, n in dead.items() if n} == {"not_json": 3, "sensor_3": 4}
    assert value(samples, "iot_gateway_in_flight") == 1
    histogram = "iot_gateway_kafka_ack_latency_seconds"
    assert value(samples, histogram + "_count", outcome="produced") == 15
    assert value(samples, histogram + "_count", outcome="dead_lettered") == 7
    assert value(samples, histogram + "_sum", outcome="produced") == pytest.approx(10 * 0.003 + 5 * 0.2)
    assert value(samples, histogram + "_bucket", outcome="produced", le="0.005") == 10
    assert value(samples, histogram + "_bucket", outcome="produced", le="0.25") == 15
    assert value(samples, histogram + "_bucket", outcome="produced", le="+Inf") == 15
    assert len(by_label(samples, histogram + "_bucket", "le")) == len(ACK_LATENCY_BUCKETS_S) + 1


def test_no_worker_reported_yet_means_zeros_not_an_error():
    registry = CollectorRegistry()
    registry.register(GatewayMetrics(list))
    server = start_metrics_server(0, registry=registry)
    try:
        samples = scrape(server.url)
    finally:
        server.close()
    assert value(samples, "iot_gateway_received_total") == 0
    assert value(samples, "iot_gateway_kafka_ack_latency_seconds_count", outcome="produced") == 0


# -- the endpoint (runtime/metrics.py) --

def test_port_0_binds_a_free_port_which_close_frees():
    registry = CollectorRegistry()
    PromCounter("iot_test_things", "Things.", registry=registry).inc(3)
    server = start_metrics_server(0, registry=registry)
    assert server.port != 0 and server.url == f"http://127.0.0.1:{server.port}/metrics"
    try:
        assert value(scrape(server.url), "iot_test_things_total") == 3
    finally:
        server.close()
    assert not port_open("127.0.0.1", server.port)
    server.close()  # idempotent


def test_a_forked_child_does_not_keep_the_endpoint_open():
    server = start_metrics_server(0, registry=CollectorRegistry())
    try:
        child = mp.get_context("fork").Process(target=lambda: sys.exit(server._server.socket.fileno() != -1))
        child.start()
        child.join(timeout=30)
        assert child.exitcode == 0
    finally:
        server.close()


def test_a_port_in_use_is_an_error_not_a_silent_failure():
    server = start_metrics_server(0, registry=CollectorRegistry())
    try:
        with pytest.raises(OSError):
            start_metrics_server(server.port, registry=CollectorRegistry())
    finally:
        server.close()


@pytest.mark.parametrize("text, port", [("0", 0), ("9100", 9100), ("65535", 65535)])
def test_metrics_ports(text, port):
    assert port_number(text) == port


@pytest.mark.parametrize("text", ["-1", "65536", "http", ""])
def test_bad_metrics_ports_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="is not a port number"):
        port_number(text)


def test_help_documents_the_metrics_options(monkeypatch):
    monkeypatch.setenv("GATEWAY_METRICS_PORT", "9464")
    parser = build_parser()
    text = parser.format_help()
    for option in ("--metrics-port PORT", "--metrics-host HOST", "GATEWAY_METRICS_PORT",
                   "iot_gateway_dead_lettered_total{reason}", "iot_gateway_kafka_ack_latency_seconds"):
        assert option in text
    assert parser.parse_args([]).metrics_port == 9464
    assert parser.parse_args([]).metrics_host == "127.0.0.1"
    monkeypatch.delenv("GATEWAY_METRICS_PORT")
    assert build_parser().parse_args([]).metrics_port == 0


# -- against Mosquitto and Kafka --

def publish_all(cfg, secrets, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.username_pw_set(secrets["MQTT_USERNAME"], secrets["MQTT_PASSWORD"])
    client.connect(cfg.host, cfg.mqtt_port)
    client.loop_start()
    try:
        for info in [client.publish(topic, payload, qos=1) for topic, payload in messages]:
            info.wait_for_publish(timeout=30)
    finally:
        client.loop_stop()
        client.disconnect()


@pytest.mark.stack
def test_a_two_worker_gateway_reports_what_it_bridged(local_stack, secrets, tmp_path, free_ports):
    cfg = local_stack.cfg
    # Topics of its own: nothing else reads or writes them.
    topic, dead_topic, verdicts_topic = "metrics-test", "metrics-test.dlq", "metrics-test.verdicts"
    for name in (topic, dead_topic, verdicts_topic):
        ensure_topic(cfg.kafka_bootstrap, name, partitions=2)
    starts = {name: sum(end_offsets(cfg.kafka_bootstrap, name).values()) for name in (topic, dead_topic,
                                                                                   verdicts_topic)}
    (port,) = free_ports(1)
    health = tmp_path / "gateway.health"
    env = {**os.environ, "MQTT_HOST": cfg.host, "MQTT_PORT": str(cfg.mqtt_port),
           "MQTT_USERNAME": secrets["MQTT_USERNAME"], "MQTT_PASSWORD": secrets["MQTT_PASSWORD"],
           "KAFKA_BOOTSTRAP": cfg.kafka_bootstrap, "GATEWAY_METRICS_PORT": str(port)}
    log = (tmp_path / "gateway.log").open("w")
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--workers", "2", "--gateway-id", f"gw-metrics-{time.time_ns()}",
         "--topic-filter", "metrics-test/#", "--share-group", "metrics-test", "--kafka-topic", topic,
         "--dead-letter-topic", dead_topic, "--health-file", str(health), "--max-payload-bytes", "1500000",
         "--verdicts-filter", "metrics-verdicts/#", "--verdicts-topic", verdicts_topic, "--no-alerts"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_until(lambda: is_up(health), 90, "the metrics gateway up",
                   abort=lambda: gateway.poll() is not None and f"exited with {gateway.returncode}")
        readings = [(f"metrics-test/{FIRST_ID + i % 10}",
                     variant(sensor_id=FIRST_ID + i % 10, sensor_ts=READING["sensor_ts"] + i)) for i in range(300)]
        dead = {
            "not_json": [b"{", b"\xff\xfe", b"hello"],
            "sensor_5": [json.dumps({k: v for k, v in READING.items() if k != "sensor_5"}).encode()] * 2,
            "sensor_3": [variant(sensor_3="fast"), variant(sensor_3=[1])],
            "sensor_7": [variant(sensor_7=1e12)],
            "sensor_id": [variant()[:-1] + b', "sensor_id": 2}'],
            "extra_field": [variant()[:-1] + b', "x": 1, "x": 2}'],
            "not_an_object": [b"[1, 2, 3]"],
            "too_deep": [b"[" * 40 + b"]" * 40],
            "too_large": [b"x" * 1_600_000],
            # Within --max-payload-bytes and a valid reading, but over Kafka's 1 MiB record limit.
            "kafka_refused": [variant(blob="x" * 1_200_000)],
        }
        invalid = [(f"metrics-test/{FIRST_ID}", payload) for payloads in dead.values() for payload in payloads]
        verdicts = [(f"metrics-verdicts/{FIRST_ID + i}", verdict_json(
            {"sensor_id": FIRST_ID + i, "sensor_ts": READING["sensor_ts"], "is_healthy": 1, "model_version": 2,
             "agent_id": "edge-m", "scored_ts": READING["sensor_ts"]})) for i in range(40)]
        bad_verdicts = {"not_json": b"{", "sensor_ts": b'{"sensor_id": 1}'}  # reason -> payload
        publish_all(cfg, secrets, readings + invalid + verdicts
                    + [(f"metrics-verdicts/{FIRST_ID}", payload) for payload in bad_verdicts.values()])
        n, v, m = len(readings), len(verdicts), len(invalid) + len(bad_verdicts)

        def settled() -> dict | None:
            samples = scrape(url)
            done = value(samples, "iot_gateway_produced_total") + value(
                samples, "iot_gateway_verdicts_total", outcome="produced") + sum(
                by_label(samples, "iot_gateway_dead_lettered_total", "reason").values())
            return samples if done >= n + v + m and value(samples, "iot_gateway_in_flight") == 0 else None

        samples = wait_until(settled, 120, f"{n + v + m} messages bridged, as the metrics say")
        assert value(samples, "iot_gateway_received_total") == n + v + m
        assert value(samples, "iot_gateway_produced_total") == n
        assert by_label(samples, "iot_gateway_verdicts_total", "outcome") == {"produced": v, "dead_lettered": 2}
        reasons = by_label(samples, "iot_gateway_dead_lettered_total", "reason")
        assert sum(reasons.values()) == m
        assert {reason: count for reason, count in reasons.items() if count} == {
            reason: len(dead.get(reason, [])) + (reason in bad_verdicts) for reason in {*dead, *bad_verdicts}}
        histogram = "iot_gateway_kafka_ack_latency_seconds"
        assert value(samples, histogram + "_count", outcome="produced") == n + v
        assert value(samples, histogram + "_count", outcome="dead_lettered") == m
        assert 0 < value(samples, histogram + "_sum", outcome="produced") < n * 10
        # What Kafka holds agrees.
        assert sum(end_offsets(cfg.kafka_bootstrap, topic).values()) - starts[topic] == n
        assert sum(end_offsets(cfg.kafka_bootstrap, dead_topic).values()) - starts[dead_topic] == m
        assert sum(end_offsets(cfg.kafka_bootstrap, verdicts_topic).values()) - starts[verdicts_topic] == v
    finally:
        os.killpg(gateway.pid, signal.SIGTERM)
        returncode = gateway.wait(timeout=120)
        log.close()
    assert returncode == 0, (tmp_path / "gateway.log").read_text()[-3000:]
    assert not port_open("127.0.0.1", port)  # the endpoint went with the gateway
    assert f"Prometheus metrics at {url}" in (tmp_path / "gateway.log").read_text()
