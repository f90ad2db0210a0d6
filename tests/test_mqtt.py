"""Mosquitto of the local stack: password login works on iot/#, anonymous and wrong passwords are refused."""

from __future__ import annotations

import json

import paho.mqtt.client as mqtt
import pytest

from runtime.waiting import wait_until
from stack.probes import mqtt_connack

pytestmark = pytest.mark.stack


def connected_client(cfg, username, password, on_message=None) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.username_pw_set(username, password)
    if on_message:
        client.on_message = on_message
    client.connect(cfg.host, cfg.mqtt_port)
    client.loop_start()
    return client


def test_publish_and_receive_on_iot_wildcard_with_generated_credentials(local_stack, secrets):
    cfg = local_stack.cfg
    received: list[tuple[str, dict]] = []
    subscribed = []
    sub = connected_client(cfg, secrets["MQTT_USERNAME"], secrets["MQTT_PASSWORD"],
                           lambda _c, _u, msg: received.append((msg.topic, json.loads(msg.payload))))
    sub.on_subscribe = lambda *_args: subscribed.append(True)
    sub.subscribe("iot/#", qos=1)
    wait_until(lambda: subscribed, 10, "the SUBACK")

    pub = connected_client(cfg, secrets["MQTT_USERNAME"], secrets["MQTT_PASSWORD"])
    readings = {"iot/48": {"sensor_id": 48, "sensor_ts": 1556758787735011, "sensor_0": 2},
                "iot": {"sensor_id": 7, "sensor_ts": 1556758787735012, "sensor_0": 3}}
    for topic, payload in readings.items():
        pub.publish(topic, json.dumps(payload), qos=1).wait_for_publish(timeout=10)

    try:
        wait_until(lambda: len(received) >= len(readings), 10, "both readings received")
    finally:
        for client in (sub, pub):
            client.loop_stop()
            client.disconnect()
    # `iot/#` also matches the bare parent topic `iot`, as the workshop relied on.
    assert sorted(received, key=lambda r: r[0]) == sorted(readings.items())


def test_anonymous_client_is_refused(local_stack):
    cfg = local_stack.cfg
    reason = mqtt_connack(cfg.host, cfg.mqtt_port, username=None, password=None)
    assert reason.is_failure
    assert str(reason) == "Not authorized"  # CONNACK code 5 of MQTT 3.1.1


def test_wrong_password_is_refused(local_stack, secrets):
    cfg = local_stack.cfg
    reason = mqtt_connack(cfg.host, cfg.mqtt_port, secrets["MQTT_USERNAME"], "wrong-" + secrets["MQTT_PASSWORD"])
    assert reason.is_failure
    assert str(reason) in ("Not authorized", "Bad user name or password")  # CONNACK 5 or 4


def test_right_password_is_accepted(local_stack, secrets):
    cfg = local_stack.cfg
    assert not mqtt_connack(cfg.host, cfg.mqtt_port, secrets["MQTT_USERNAME"], secrets["MQTT_PASSWORD"]).is_failure
