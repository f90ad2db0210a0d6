"""One gateway worker: MQTT (persistent session, shared subscription, manual acks) -> Kafka.

A message is acknowledged to the MQTT broker only after Kafka has acknowledged the record made from it, so a
crash anywhere in between leaves it with the broker, which delivers it again: at least once, never lost.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from kafka import KafkaProducer
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from contract import GATEWAY_ID_FIELD, ID_FIELD, RECEIVED_TS_FIELD, InvalidReading, parse_reading

log = logging.getLogger("gateway")
SESSION_EXPIRY_S = 7 * 24 * 3600  # the broker keeps our subscription and queued messages this long while we are away


@dataclass(frozen=True)
class GatewaySettings:
    mqtt_host: str
    mqtt_port: int
    mqtt_username: str
    mqtt_password: str
    kafka_bootstrap: str
    gateway_id: str
    topic_filter: str = "iot/#"
    share_group: str = "iot-gateway"
    kafka_topic: str = "iot"
    dead_letter_topic: str = "iot.dlq"
    metrics_interval_s: float = 10.0
    workers: int = 1
    # The bound of what one worker holds: the broker sends at most this many unacknowledged messages, and we
    # acknowledge only after Kafka did, so at most this many records wait for Kafka. The rest waits in the
    # broker's queue for our session (up to its max_queued_messages).
    receive_maximum: int = 1000


class Counters:
    """What a worker has done, for the metrics line."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received = self.produced = self.dead_lettered = 0

    def add(self, name: str) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + 1)

    def line(self, since: tuple[int, float] | None = None) -> tuple[str, tuple[int, float]]:
        now = time.monotonic()
        done = self.produced + self.dead_lettered
        rate = (done - since[0]) / (now - since[1]) if since and now > since[1] else 0.0
        text = (f"received {self.received:,}, produced {self.produced:,}, dead-lettered {self.dead_lettered:,}, "
                f"in flight {self.received - done:,}, {rate:,.0f} msg/s")
        return text, (done, now)


class GatewayWorker:
    def __init__(self, settings: GatewaySettings, index: int, on_ready=lambda: None):
        self.settings = settings
        self.client_id = f"{settings.gateway_id}-{index}"
        self.counters = Counters()
        self.on_ready = on_ready
        self.failed: str | None = None
        self._connected: bool | None = None
        self._stop = threading.Event()
        self.producer = KafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            client_id=self.client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            batch_size=256 * 1024,
            compression_type="lz4",
            max_block_ms=300_000,
            reconnect_backoff_max_ms=10_000,
        )
        self.mqtt = self._mqtt_client()

    def _mqtt_client(self) -> mqtt.Client:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=mqtt.MQTTv5, manual_ack=True)
        client.username_pw_set(self.settings.mqtt_username, self.settings.mqtt_password)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    # -- MQTT callbacks (paho's network thread) --

    def _on_connect(self, client, _userdata, _flags, reason, _properties) -> None:
        if reason.is_failure:
            self._state_change(False, f"MQTT broker refused the connection: {reason}")
            return
        self._state_change(True, f"connected to MQTT {self.settings.mqtt_host}:{self.settings.mqtt_port}")
        # One worker holds a plain subscription: Mosquitto queues for it while it is away. Several share one
        # subscription. The session keeps whichever it had before, so the other form is dropped first (else a
        # change of worker count would deliver everything twice).
        plain = self.settings.topic_filter
        shared = f"$share/{self.settings.share_group}/{plain}"
        wanted, other = (plain, shared) if self.settings.workers == 1 else (shared, plain)
        client.unsubscribe(other)
        client.subscribe(wanted, options=SubscribeOptions(qos=1))

    def _on_disconnect(self, _client, _userdata, _flags, reason, _properties) -> None:
        self._state_change(False, f"disconnected from MQTT ({reason}); reconnecting with backoff")

    def _state_change(self, connected: bool, message: str) -> None:
        if self._connected is not connected:  # log each change once, not every retry
            (log.info if connected else log.warning)("%s: %s", self.client_id, message)
            self._connected = connected

    def _on_subscribe(self, _client, _userdata, _mid, reason_codes, _properties) -> None:
        if any(code.is_failure for code in reason_codes):
            self._fail(f"subscription refused: {reason_codes}")
        else:
            self.on_ready()

    def _on_message(self, client, _userdata, message: mqtt.MQTTMessage) -> None:
        self.counters.add("received")
        received_ts = time.time_ns() // 1000
        mid, qos = message.mid, message.qos
        try:
            reading = parse_reading(message.payload)
        except InvalidReading as exc:
            future = self.producer.send(
                self.settings.dead_letter_topic, key=message.topic.encode(), value=message.payload,
                headers=[("reason", str(exc).encode()), ("field", (exc.field or "").encode()),
                         ("mqtt_topic", message.topic.encode()),
                         ("gateway_id", self.settings.gateway_id.encode()),
                         ("received_ts", str(received_ts).encode())])
            outcome = "dead_lettered"
        else:
            reading[GATEWAY_ID_FIELD] = self.settings.gateway_id
            reading[RECEIVED_TS_FIELD] = received_ts
            future = self.producer.send(self.settings.kafka_topic, key=str(reading[ID_FIELD]).encode(),
                                        value=json.dumps(reading).encode())
            outcome = "produced"
        future.add_callback(lambda _meta: self._acknowledge(client, mid, qos, outcome))
        future.add_errback(lambda exc: self._fail(f"Kafka did not take a record: {exc!r}"))

    def _acknowledge(self, client: mqtt.Client, mid: int, qos: int, outcome: str) -> None:
        self.counters.add(outcome)
        if qos:
            client.ack(mid, qos)

    def _fail(self, reason: str) -> None:
        log.error("%s: %s; stopping so that unacknowledged messages are delivered again", self.client_id, reason)
        self.failed = reason
        self._stop.set()

    # -- lifecycle --

    def run(self, stop: threading.Event) -> None:
        """Run until `stop` is set (or a fatal error); flush Kafka, then acknowledge, then disconnect."""
        self._stop = stop
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = SESSION_EXPIRY_S
        properties.ReceiveMaximum = self.settings.receive_maximum
        self.mqtt.connect_async(self.settings.mqtt_host, self.settings.mqtt_port, keepalive=30,
                                clean_start=False, properties=properties)
        self.mqtt.loop_start()
        since = None
        try:
            while not stop.wait(self.settings.metrics_interval_s):
                text, since = self.counters.line(since)
                log.info("%s: %s", self.client_id, text)
        finally:
            self.producer.flush(timeout=60)  # every record acknowledged by Kafka is acknowledged over MQTT ...
            self.mqtt.disconnect()  # ... before the DISCONNECT, which paho sends after them
            self.mqtt.loop_stop()
            self.producer.close(timeout=10)
            log.info("%s: stopped: %s", self.client_id, self.counters.line()[0])
