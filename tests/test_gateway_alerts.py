"""The gateway's alerts forwarder (gateway/alerts.py): Kafka `iot.alerts` -> MQTT `alerts/<sensor_id>`, retained.

Without services: what a record becomes (an alert for MQTT, or a dead letter with its reason), the gateway's
health over both directions, the metrics, the options, and a forwarder that finds no Kafka. Hypothesis over any
input: tests/test_gateway_alerts_fuzz.py.
Against the session's stack (`stack`), whose gateway runs the forwarder: a committed alert arrives retained, an
aborted one never does, bad records end in `iot.dlq` and the next good one still arrives, an MQTT outage is
waited out.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.request
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from kafka import KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from contract import STATE_NAMES, alert_json
from gateway.__main__ import build_parser, gateway_health
from gateway.alerts import DEFAULT_GROUP, KEY_KEPT_BYTES, AlertForwarder, DeadLetter, MqttAlert, route_alert
from gateway.bridge import GatewaySettings
from gateway.metrics import AlertMetrics
from runtime.health import Health
from runtime.kafka import committed_offsets, end_offsets, ensure_topic
from runtime.metrics import start_metrics_server
from runtime.settings import ALERTS_TOPIC, DEAD_LETTER_TOPIC
from runtime.waiting import wait_until

SETTINGS = GatewaySettings("127.0.0.1", 1, "user", "secret", "127.0.0.1:1", "gw-test")
FIRST_TS = 1_764_150_000_000_000


def alert(sensor_id: int = 900_000, is_healthy: int = 0, step: int = 0, **changes) -> dict:
    ts = FIRST_TS + step * 1_000_000
    return {"sensor_id": sensor_id, "sensor_ts": ts, "is_healthy": is_healthy, "state": STATE_NAMES[is_healthy],
            "model_version": 3, "readings": [[ts - 1_000_000, 1 - is_healthy], [ts, is_healthy]], **changes}


def record(value: bytes | None, key: bytes | None = b"900000", offset: int = 7) -> ConsumerRecord:
    return ConsumerRecord(ALERTS_TOPIC, 2, -1, offset, 0, 0, key, value, [], None, len(key or b""),
                          len(value or b""), -1)


def headers(letter: DeadLetter) -> dict[str, str]:
    return {name: value.decode() for name, value in letter.headers}


# -- what a record becomes --

def test_an_alert_becomes_a_retained_qos1_message_on_its_machines_topic():
    value = alert_json(alert())
    assert route_alert(record(value), SETTINGS) == MqttAlert("alerts/900000", value, qos=1, retain=True)


def test_the_message_is_the_alert_as_the_contract_writes_it():
    value = json.dumps({**alert(sensor_id=42), "extra": "dropped"}, indent=2).encode()
    assert route_alert(record(value, key=b"42"), SETTINGS) == MqttAlert("alerts/42", alert_json(alert(sensor_id=42)))


def without(name: str) -> bytes:
    return json.dumps({k: v for k, v in alert().items() if k != name}).encode()


def variant(**changes) -> bytes:
    return json.dumps({**alert(), **changes}).encode()


@pytest.mark.parametrize("key, value, field, reason", [
    (b"900000", None, "", "no payload (a null value: a Kafka tombstone or an empty record)"),
    (b"900000", b"", "", "not JSON"),
    (b"900000", b"\xff\xfe{", "", "not JSON"),
    (b"900000", b'{"sensor_id": 900000,', "", "not JSON"),
    (b"900000", b"[1, 2]", "", "not a JSON object but list"),
    (b"900000", b"[[[[[[1]]]]]]", "", "nested deeper than 4 levels"),
    (b"900000", without("state"), "state", "state: missing"),
    (b"900000", without("readings"), "readings", "readings: missing"),
    (b"900000", variant(sensor_id="900000"), "sensor_id", "sensor_id: must be an integer, got str '900000'"),
    (b"900000", variant(sensor_ts=5), "sensor_ts", "sensor_ts: 5 is outside"),
    (b"900000", variant(is_healthy=2), "is_healthy", "is_healthy: must be 1 or 0, got 2"),
    (b"900000", variant(state="healthy"), "state", "state: 'healthy' does not match is_healthy=0"),
    (b"900000", variant(model_version="v3"), "model_version", "model_version: must be an integer, got str 'v3'"),
    (b"900000", variant(readings="all good"), "readings", "readings: must be a list, got str"),
    (b"900000", variant()[:-1] + b', "state": "healthy"}', "state", "state: duplicate key"),
    (b"900000", variant(extra=float("nan")), "extra", "extra: nan is not a finite number"),
    (None, variant(), "key", "key: missing, must be the sensor_id b'900000'"),
    (b"900001", variant(), "key", "key: b'900001' is not the sensor_id b'900000'"),
    (b"0900000", variant(), "key", "key: b'0900000' is not the sensor_id b'900000'"),
    (b"", variant(), "key", "key: b'' is not the sensor_id b'900000'"),
])
def test_what_is_not_an_alert_is_a_dead_letter_naming_the_field_and_the_value(key, value, field, reason):
    letter = route_alert(record(value, key=key, offset=41), SETTINGS)
    assert isinstance(letter, DeadLetter)
    assert headers(letter)["reason"].startswith(reason)
    assert headers(letter) == {"reason": headers(letter)["reason"], "field": field, "source": "gateway-alerts",
                               "kafka_topic": ALERTS_TOPIC, "kafka_partition": "2", "kafka_offset": "41",
                               "gateway_id": "gw-test", "payload_bytes": str(len(value or b""))}
    assert (letter.topic, letter.key, letter.value) == (DEAD_LETTER_TOPIC, key, value)


def test_a_dead_letter_keeps_a_bounded_part_of_a_huge_key_and_value():
    key, value = b"k" * 5000, b"x" * (SETTINGS.dead_letter_max_bytes + 10)
    letter = route_alert(record(value, key=key), SETTINGS)
    assert (letter.key, letter.value) == (key[:KEY_KEPT_BYTES], value[: SETTINGS.dead_letter_max_bytes])
    assert headers(letter)["payload_bytes"] == str(len(value))
    assert headers(letter)["reason"].startswith("payload of ")


def test_a_dead_letter_kafka_refuses_as_too_large_shrinks_to_nothing():
    letter = route_alert(record(b"x" * 1000, key=b"k"), SETTINGS)
    sizes = []
    while letter.key or letter.value:
        letter = letter.shrunk()
        sizes.append(len(letter.value))
    assert letter.key is None and sizes[0] == 500 and sizes[-1] == 0 and len(sizes) == 10


# -- the gateway's health: both directions --

UP = Health("up", "1 worker(s) bridging MQTT to Kafka", counters={"received": 3})
ALERTS_UP = Health("up", "forwarding Kafka iot.alerts to MQTT alerts/<sensor_id>", counters={"alerts_forwarded": 2})


def test_the_gateway_is_up_only_while_both_directions_are():
    both = gateway_health(UP, ALERTS_UP)
    assert (both.state, both.waiting_on) == ("up", None)
    assert both.detail == f"{UP.detail}; {ALERTS_UP.detail}"
    assert both.counters == {"received": 3, "alerts_forwarded": 2}


@pytest.mark.parametrize("bridge, alerts, state, waiting_on", [
    (UP, Health("degraded", "alerts: disconnected from MQTT", "mqtt"), "degraded", "mqtt"),
    (Health("degraded", "Kafka away", "kafka"), ALERTS_UP, "degraded", "kafka"),
    (Health("degraded", "a", "kafka,mqtt"), Health("degraded", "b", "kafka"), "degraded", "kafka,mqtt"),
    (Health("degraded", "stalled"), Health("starting", "alerts: connecting to MQTT"), "degraded", None),
    (UP, Health("starting", "alerts: connecting to Kafka"), "starting", None),
    (Health("starting", "subscribing"), ALERTS_UP, "starting", None),
])
def test_either_direction_held_up_holds_the_gateway(bridge, alerts, state, waiting_on):
    combined = gateway_health(bridge, alerts)
    assert (combined.state, combined.waiting_on) == (state, waiting_on)
    held = [report.detail for report in (bridge, alerts) if report.state == state]
    assert combined.detail == "; ".join(held)


def test_without_a_forwarder_the_gateway_is_its_bridge():
    assert gateway_health(UP, None) is UP


# -- metrics and options --

def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {sample.name: sample.value for family in text_string_to_metric_families(text) for sample in family.samples}


def test_the_forwarders_counts_are_prometheus_counters():
    registry = CollectorRegistry()
    registry.register(AlertMetrics(lambda: {"forwarded": 5, "dead_lettered": 2}))
    server = start_metrics_server(0, registry=registry)
    try:
        samples = scrape(server.url)
    finally:
        server.close()
    assert samples["iot_gateway_alerts_forwarded_total"] == 5
    assert samples["iot_gateway_alerts_dead_lettered_total"] == 2


def test_the_alerts_options_and_their_defaults():
    parser = build_parser()
    text = parser.format_help()
    for option in ("--alerts-topic", "--alerts-group", "--no-alerts", "alerts/<sensor_id>",
                   "iot_gateway_alerts_forwarded_total", "iot_gateway_alerts_dead_lettered_total"):
        assert option in text
    args = parser.parse_args([])
    assert (args.alerts_topic, args.alerts_group, args.no_alerts) == (ALERTS_TOPIC, DEFAULT_GROUP, False)
    args = parser.parse_args(["--alerts-topic", "t", "--alerts-group", "g", "--no-alerts"])
    assert (args.alerts_topic, args.alerts_group, args.no_alerts) == ("t", "g", True)


def test_a_forwarder_without_kafka_says_it_waits_on_kafka_and_stops_when_told(free_ports):
    mqtt_port, kafka_port = free_ports(2)  # nothing listens on either
    settings = GatewaySettings("127.0.0.1", mqtt_port, "user", "secret", f"127.0.0.1:{kafka_port}", "gw-test")
    forwarder = AlertForwarder(settings)
    assert forwarder.health().state == "starting"
    stop = threading.Event()
    forwarder.start(stop)
    try:
        waiting = wait_until(lambda: forwarder.health().waiting_on == "kafka" and forwarder.health(), 30,
                             "the forwarder waiting on Kafka")
        assert waiting.state == "degraded"
        assert f"no Kafka bootstrap server answers at 127.0.0.1:{kafka_port}" in waiting.detail
    finally:
        stop.set()
        forwarder.join(timeout_s=30)
    assert not forwarder.is_alive() and forwarder.failed is None
    assert forwarder.counts() == {"forwarded": 0, "dead_lettered": 0}


# -- against the session's stack, whose gateway forwards alerts --

@pytest.fixture(scope="module")
def alerts_stack(pipeline):
    ensure_topic(pipeline.cfg.kafka_bootstrap, ALERTS_TOPIC)  # the stack makes it; a no-op then
    wait_until(lambda: pipeline.stack.status(["gateway"])[0].state == "up", 120, "the gateway up")
    return pipeline


def produce_in_transactions(pipeline, transactions: list[tuple[list[tuple[bytes, bytes]], bool]]) -> None:
    """Each (records, commit) as one Kafka transaction, committed or aborted, as the streaming job writes."""
    producer = KafkaProducer(bootstrap_servers=pipeline.cfg.kafka_bootstrap,
                             transactional_id=f"test-alerts-{time.time_ns()}")
    try:
        producer.init_transactions()
        for records, commit in transactions:
            producer.begin_transaction()
            for key, value in records:
                producer.send(ALERTS_TOPIC, key=key, value=value)
            producer.flush()  # written to the log before the end: an aborted one must be there to be skipped
            (producer.commit_transaction if commit else producer.abort_transaction)()
    finally:
        producer.close()


@contextlib.contextmanager
def subscribed(pipeline, topic: str) -> Iterator[list[mqtt.MQTTMessage]]:
    """A fresh MQTT client subscribed to `topic` (SUBACK received): the messages it gets, as they arrive."""
    messages: list[mqtt.MQTTMessage] = []
    acknowledged = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-alerts-{time.time_ns()}",
                         protocol=mqtt.MQTTv311)
    client.username_pw_set(pipeline.secrets["MQTT_USERNAME"], pipeline.secrets["MQTT_PASSWORD"])
    client.on_message = lambda _client, _userdata, message: messages.append(message)
    client.on_subscribe = lambda *_args: acknowledged.set()
    client.connect(pipeline.cfg.host, pipeline.cfg.mqtt_port)
    client.loop_start()
    try:
        client.subscribe(topic, qos=1)
        wait_until(acknowledged.is_set, 10, f"the SUBACK for {topic}")
        yield messages
    finally:
        client.disconnect()
        client.loop_stop()


def retained(pipeline, topic: str) -> mqtt.MQTTMessage:
    """What a new subscriber to `topic` gets first: the retained message."""
    with subscribed(pipeline, topic) as messages:
        return wait_until(lambda: messages and messages[0], 10, f"the retained message on {topic}")


def arrived(messages: list[mqtt.MQTTMessage], payload: bytes, what: str) -> None:
    wait_until(lambda: any(message.payload == payload for message in messages), 60, what)


def gateway_metric(pipeline, name: str) -> float:
    return scrape(pipeline.settings()["GATEWAY_METRICS_URL"])[name]


@pytest.mark.stack
def test_a_committed_alert_is_retained_on_its_machines_topic(alerts_stack):
    machine, pipeline = 900_001, alerts_stack
    value = alert_json(alert(machine))
    forwarded = gateway_metric(pipeline, "iot_gateway_alerts_forwarded_total")
    with subscribed(pipeline, f"alerts/{machine}") as live:
        produce_in_transactions(pipeline, [([(str(machine).encode(), value)], True)])
        arrived(live, value, "the alert on MQTT")
    message = retained(pipeline, f"alerts/{machine}")
    assert (message.payload, message.retain, message.qos) == (value, True, 1)
    assert gateway_metric(pipeline, "iot_gateway_alerts_forwarded_total") >= forwarded + 1
    status = pipeline.stack.status(["gateway"])[0]
    assert status.state == "up"


@pytest.mark.stack
def test_an_aborted_transactions_alert_is_never_forwarded(alerts_stack):
    machine, pipeline = 900_002, alerts_stack
    key = str(machine).encode()
    aborted, committed = alert_json(alert(machine, 0, step=1)), alert_json(alert(machine, 1, step=2))
    start = sum(end_offsets(pipeline.cfg.kafka_bootstrap, ALERTS_TOPIC).values())
    with subscribed(pipeline, f"alerts/{machine}") as live:
        produce_in_transactions(pipeline, [([(key, aborted)], False), ([(key, committed)], True)])
        arrived(live, committed, "the committed alert on MQTT")
        # In Kafka order, one at a time: had the aborted alert (the earlier offset) been forwarded, it would be here.
        assert [message.payload for message in live] == [committed]
    assert sum(end_offsets(pipeline.cfg.kafka_bootstrap, ALERTS_TOPIC).values()) - start >= 2  # it was written
    assert retained(pipeline, f"alerts/{machine}").payload == committed


def header(record: ConsumerRecord, name: str) -> str:
    return dict(record.headers).get(name, b"").decode(errors="replace")


@pytest.mark.stack
def test_bad_records_are_dead_lettered_with_their_reason_and_the_next_alert_still_arrives(alerts_stack):
    machine, pipeline = 900_003, alerts_stack
    key, good = str(machine).encode(), alert_json(alert(machine, 1))
    bad = {None: "no payload (a null value",
           b"not json": "not JSON",
           alert_json(alert(900_004)): "key: b'900003' is not the sensor_id b'900004'",
           json.dumps(alert(machine, state="healthy")).encode(): "state: 'healthy' does not match is_healthy=0"}
    dlq = pipeline.end_offsets(DEAD_LETTER_TOPIC)
    dead_lettered = gateway_metric(pipeline, "iot_gateway_alerts_dead_lettered_total")
    with subscribed(pipeline, f"alerts/{machine}") as live:
        positions = pipeline.produce([(key, value) for value in bad] + [(key, good)], topic=ALERTS_TOPIC)
        arrived(live, good, "the good alert after the bad records")
    reason_at = dict(zip(positions[:-1], bad.values(), strict=True))
    dead = pipeline.records_since(
        DEAD_LETTER_TOPIC, dlq, lambda r: header(r, "source") == "gateway-alerts" and (
            int(header(r, "kafka_partition")), int(header(r, "kafka_offset"))) in reason_at, expected=len(bad))
    assert len(dead) == len(bad)
    for letter in dead:
        position = (int(header(letter, "kafka_partition")), int(header(letter, "kafka_offset")))
        assert header(letter, "reason").startswith(reason_at[position])
        assert header(letter, "kafka_topic") == ALERTS_TOPIC
        assert letter.value == list(bad)[positions.index(position)]
    assert gateway_metric(pipeline, "iot_gateway_alerts_dead_lettered_total") >= dead_lettered + len(bad)
    last_partition, last_offset = positions[-1]
    wait_until(lambda: (committed_offsets(pipeline.cfg.kafka_bootstrap, ALERTS_TOPIC, DEFAULT_GROUP)
                        .get(last_partition) or 0) > last_offset, 30, "the forwarder's offsets committed")


@pytest.mark.stack
@pytest.mark.slow
def test_an_alert_waits_out_an_mqtt_outage(alerts_stack, local_stack):
    machine, pipeline = 900_005, alerts_stack
    value = alert_json(alert(machine))

    def gateway_waits_on(dependency: str) -> bool:
        row = local_stack.status(["gateway"])[0]
        return row.state == "degraded" and row.waiting_on == dependency

    local_stack.down(["mosquitto"])
    try:
        wait_until(lambda: gateway_waits_on("mqtt"), 60, "the gateway waiting on MQTT")
        produce_in_transactions(pipeline, [([(str(machine).encode(), value)], True)])
    finally:
        local_stack.up(["mosquitto"])
    wait_until(lambda: local_stack.status(["gateway"])[0].state == "up", 120, "the gateway up again")
    message = wait_until(lambda: retained(pipeline, f"alerts/{machine}"), 60, "the alert retained after the outage")
    assert (message.payload, message.retain) == (value, True)
