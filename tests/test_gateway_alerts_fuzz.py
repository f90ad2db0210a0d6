"""Whatever a record of `iot.alerts` holds, the forwarder's `route_alert` returns an alert for MQTT or a dead letter
with its reason, and never raises: arbitrary bytes, arbitrary JSON, alerts with any field replaced or missing,
any key (Hypothesis). The examples: tests/test_gateway_alerts.py."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.consumer.fetcher import ConsumerRecord

from contract import ALERT_FIELDS, ID_FIELD, InvalidReading, alert_json, parse_alert
from gateway.alerts import KEY_KEPT_BYTES, DeadLetter, MqttAlert, route_alert
from gateway.bridge import GatewaySettings
from runtime.settings import ALERTS_TOPIC, DEAD_LETTER_TOPIC

SETTINGS = GatewaySettings("127.0.0.1", 1, "user", "secret", "127.0.0.1:1", "gw-fuzz", dead_letter_max_bytes=300)
ALERT = {"sensor_id": 900_100, "sensor_ts": 1_764_150_000_000_000, "is_healthy": 1, "state": "healthy",
         "model_version": None, "readings": [[1_764_150_000_000_000, 1]]}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=25)
keys = st.none() | st.binary(max_size=2000) | st.sampled_from([b"900100", b"0", b" 900100", b"900100\x00"])


def changed(field: str, value: object, drop: bool) -> dict:
    """ALERT with `field` replaced by `value`, or without it."""
    return {k: v for k, v in ALERT.items() if k != field} if drop else {**ALERT, field: value}


alert_like = st.builds(changed, st.sampled_from([*ALERT_FIELDS, "extra"]), json_values, st.booleans())
values = st.one_of(st.none(), st.binary(max_size=600), json_values.map(lambda v: json.dumps(v).encode()),
                   alert_like.map(lambda a: json.dumps(a).encode()), st.just(alert_json(ALERT)))


def check_total(key: bytes | None, value: bytes | None) -> None:
    outgoing = route_alert(ConsumerRecord(ALERTS_TOPIC, 0, -1, 123, 0, 0, key, value, [], None, 0, 0, -1), SETTINGS)
    if isinstance(outgoing, MqttAlert):  # then it is an alert, under its own key
        alert = parse_alert(value)
        assert key == str(alert[ID_FIELD]).encode()
        assert outgoing == MqttAlert(f"alerts/{alert[ID_FIELD]}", alert_json(alert), qos=1, retain=True)
        return
    assert isinstance(outgoing, DeadLetter)
    headers = dict(outgoing.headers)
    assert headers["reason"] and headers["source"] == b"gateway-alerts"
    assert (headers["kafka_topic"], headers["kafka_partition"], headers["kafka_offset"]) == (
        ALERTS_TOPIC.encode(), b"0", b"123")
    assert headers["payload_bytes"] == str(len(value or b"")).encode()
    assert outgoing.topic == DEAD_LETTER_TOPIC
    assert outgoing.value == (value and value[: SETTINGS.dead_letter_max_bytes])
    assert outgoing.key == (key and key[:KEY_KEPT_BYTES])
    try:  # a valid alert is dead-lettered only for its key
        alert = parse_alert(value)
    except InvalidReading:
        return
    assert headers["field"] == b"key" and key != str(alert[ID_FIELD]).encode()


@settings(max_examples=500, deadline=None)
@given(keys, st.binary(max_size=1000))
def test_any_bytes_under_any_key(key, value):
    check_total(key, value)


@settings(max_examples=500, deadline=None)
@given(keys, values)
def test_any_json_and_any_alert_with_a_field_replaced_or_missing(key, value):
    check_total(key, value)


@settings(max_examples=300, deadline=None)
@given(alert_like)
def test_an_alert_with_a_field_replaced_under_its_own_key(alert):
    key = str(alert.get(ID_FIELD)).encode()
    check_total(key, json.dumps(alert).encode())
