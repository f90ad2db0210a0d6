"""MQTT clients with the stack's credentials, and reading the retained messages under a topic filter.

    client = mqtt_client(settings, "my-client")         # settings: MQTT_HOST, MQTT_PORT, MQTT_USERNAME, MQTT_PASSWORD
    retained = retained_messages(settings, "jobs/+/status")   # {topic: payload} of every retained message there
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping

import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions


def mqtt_client(settings: Mapping[str, str], client_id: str, manual_ack: bool = False) -> mqtt.Client:
    """An MQTT v5 client with the stack's credentials (MQTT_USERNAME/MQTT_PASSWORD of `settings`), reconnecting
    with backoff (1 s doubling to 30 s). Not yet connected: `client.connect(settings["MQTT_HOST"], port)`."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                         manual_ack=manual_ack)
    if settings.get("MQTT_USERNAME"):
        client.username_pw_set(settings["MQTT_USERNAME"], settings.get("MQTT_PASSWORD", ""))
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    return client


def connect(client: mqtt.Client, settings: Mapping[str, str], timeout_s: float = 10.0) -> None:
    """Connect and start the network thread; returns once the broker accepted, raises ConnectionError otherwise."""
    accepted = threading.Event()
    refused: list[str] = []

    def on_connect(_client, _userdata, _flags, reason, _properties) -> None:
        if reason.is_failure:
            refused.append(str(reason))
        accepted.set()

    previous = client.on_connect
    client.on_connect = on_connect
    try:
        client.connect(settings["MQTT_HOST"], int(settings["MQTT_PORT"]))
        client.loop_start()
        if not accepted.wait(timeout_s) or refused:
            client.loop_stop()
            why = refused[0] if refused else f"no answer within {timeout_s:g} s"
            raise ConnectionError(f"MQTT broker {settings['MQTT_HOST']}:{settings['MQTT_PORT']} refused: {why}")
    finally:
        client.on_connect = previous


def retained_messages(settings: Mapping[str, str], topic_filter: str, timeout_s: float = 10.0) -> dict[str, bytes]:
    """Every retained message under `topic_filter`, {topic: payload}.

    The broker sends a subscription's retained messages before anything published after it, so after subscribing
    we publish to a topic of our own, also subscribed: once that comes back, every retained message has arrived."""
    fence = f"fence/{uuid.uuid4().hex}"
    found: dict[str, bytes] = {}
    done = threading.Event()

    def on_message(_client, _userdata, message: mqtt.MQTTMessage) -> None:
        if message.topic == fence:
            done.set()
        elif message.retain:
            found[message.topic] = bytes(message.payload)

    def on_subscribe(client, _userdata, _mid, _codes, _properties) -> None:
        client.publish(fence, b"", qos=1)

    client = mqtt_client(settings, f"retained-{uuid.uuid4().hex[:12]}")
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    connect(client, settings, timeout_s)
    try:
        client.subscribe([(topic_filter, SubscribeOptions(qos=1)), (fence, SubscribeOptions(qos=1))])
        if not done.wait(timeout_s):
            raise TimeoutError(f"the retained messages of {topic_filter} did not arrive within {timeout_s:g} s")
    finally:
        client.disconnect()
        client.loop_stop()
    return found
