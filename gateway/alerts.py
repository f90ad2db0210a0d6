"""The gateway's other direction: Kafka `iot.alerts` -> MQTT `alerts/<sensor_id>`, retained, so that each machine
(and anyone watching it) finds its latest state on the broker.

- The streaming job writes an alert to `iot.alerts` (key = sensor_id) whenever a machine's verdict changes, in
  Kafka transactions. This reads them as consumer group `iot-gateway-alerts` with isolation_level read_committed
  (an aborted transaction's alerts are never forwarded) and publishes each on `alerts/<sensor_id>`, QoS 1,
  retained, as `contract.alert_json`.
- One record at a time, in Kafka order (one machine, one partition: its alerts stay in order), and its offset is
  committed only after Mosquitto acknowledged the publication (PUBACK). A kill -9 re-publishes at most the record
  in hand, which is harmless: a retained latest state published twice is the same state.
- Total (`route_alert`, pure): a record that is not an alert (any bytes, a null value, a key other than its
  sensor_id) becomes a dead letter in `iot.dlq` with the reason, then its offset is committed: never dropped,
  never in the way of the next record.
- MQTT or Kafka away: it waits with capped backoff and retries the same record, never skipping one; `health()` is
  degraded meanwhile and names what it waits on (`mqtt`, `kafka`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

import paho.mqtt.client as mqtt
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import (
    CommitFailedError,
    CorruptRecordError,
    InvalidRecordError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)
from kafka.structs import OffsetAndMetadata

from contract import ID_FIELD, InvalidReading, alert_json, clip, parse_alert, show
from gateway.bridge import KAFKA_WAIT_S, PING_INTERVAL_S, GatewaySettings, as_header, mqtt_client
from runtime.health import Health
from runtime.retry import Backoff
from runtime.settings import ALERTS_TOPIC, MQTT_ALERTS_PREFIX
from runtime.waiting import any_answers

log = logging.getLogger("gateway.alerts")
T = TypeVar("T")

DEFAULT_GROUP = "iot-gateway-alerts"
SOURCE = "gateway-alerts"  # the `source` header of its dead letters (the job's say `streaming`)
KEY_KEPT_BYTES = 1024  # a dead letter keeps this much of the key; its kafka_* headers point at the original
MAX_BACKOFF_S = 10.0
MQTT_WAIT_S = 10.0  # a publication unacknowledged this long: the forwarder is waiting on MQTT
COMMIT_TIMEOUT_MS = 5_000
# kafka-python gives up on a record after delivery_timeout_ms (120 s by default) and the forwarder would have to
# fail. It waits out any outage instead: 2**31-1 ms is about 24.8 days.
DELIVERY_TIMEOUT_MS = 2**31 - 1
# How long send() may block for metadata or buffer space before the forwarder says it waits on Kafka and retries.
MAX_BLOCK_MS = 5_000
# Errors that are about the record itself: retrying cannot help, so the dead letter keeps less of it instead.
RECORD_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError, CorruptRecordError, InvalidRecordError)


@dataclass(frozen=True)
class MqttAlert:
    """An alert on its way to the MQTT broker."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True  # the broker keeps it: the machine's latest state


@dataclass(frozen=True)
class DeadLetter:
    """A record of `iot.alerts` that is not an alert, on its way to the dead-letter topic."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    def shrunk(self) -> DeadLetter:
        """The same dead letter with half its value and no key, for a Kafka that refuses it as too large."""
        return replace(self, key=None, value=self.value and self.value[: len(self.value) // 2])


def route_alert(record: ConsumerRecord, settings: GatewaySettings) -> MqttAlert | DeadLetter:
    """What a record of `iot.alerts` becomes: an alert for MQTT `alerts/<sensor_id>`, or a dead letter with the
    reason. Pure and total: whatever its key and value, it returns one of the two and never raises."""
    try:
        alert = parse_alert(record.value)
        _check_key(record.key, alert[ID_FIELD])
    except InvalidReading as exc:
        return _dead_letter(record, settings, exc)
    return MqttAlert(f"{MQTT_ALERTS_PREFIX}/{alert[ID_FIELD]}", alert_json(alert))


def _check_key(key: bytes | None, sensor_id: int) -> None:
    """The key must be the alert's sensor_id in ASCII digits: what keeps one machine's alerts in one partition."""
    expected = str(sensor_id).encode()
    if key is None:
        raise InvalidReading("key", f"missing, must be the {ID_FIELD} {expected!r}")
    if key != expected:
        raise InvalidReading("key", f"{show(key)} is not the {ID_FIELD} {expected!r}")


def _dead_letter(record: ConsumerRecord, settings: GatewaySettings, exc: InvalidReading) -> DeadLetter:
    """The record as a dead letter: its value (up to dead_letter_max_bytes, a null one stays null), the reason,
    and where it came from, in the headers the gateway's dead letters have."""
    headers = [("reason", as_header(str(exc))), ("field", as_header(exc.field or "")),
               ("source", as_header(SOURCE)), ("kafka_topic", as_header(record.topic)),
               ("kafka_partition", str(record.partition).encode()), ("kafka_offset", str(record.offset).encode()),
               ("gateway_id", as_header(settings.gateway_id)),
               ("payload_bytes", str(len(record.value or b"")).encode())]
    return DeadLetter(settings.dead_letter_topic, record.key and record.key[:KEY_KEPT_BYTES],
                      record.value and record.value[: settings.dead_letter_max_bytes], headers)


class AlertForwarder:
    """Forwards alerts from Kafka to MQTT in a thread of the gateway's main process (one per gateway, whatever
    its number of workers): `start(stop)`, then `health()` and `counts()` at any time, `join()` after `stop`."""

    def __init__(self, settings: GatewaySettings, topic: str = ALERTS_TOPIC, group: str = DEFAULT_GROUP):
        self.settings, self.topic, self.group = settings, topic, group
        self.client_id = f"{settings.gateway_id}-alerts"
        self.forwarded = self.dead_lettered = 0
        self.failed: str | None = None
        self.consumer: KafkaConsumer | None = None
        self.producer: KafkaProducer | None = None
        self.mqtt = self._mqtt_client()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alerts", daemon=True)
        self._connected = False
        self._mqtt_problem: str | None = None  # why MQTT is not connected, once an attempt failed
        self._refused: dict[int, str] = {}  # message id -> the reason of a PUBACK that refused it
        self._held: tuple[float, str] | None = None  # since when, and why, an alert awaits the broker's PUBACK
        self._kafka_problem: tuple[float, str] | None = None  # since when, and why, it waits on Kafka
        self._kafka_unreachable: str | None = None

    def start(self, stop: threading.Event) -> AlertForwarder:
        self._stop = stop
        self._thread.start()
        return self

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout_s: float) -> None:
        if self._thread.ident is not None:
            self._thread.join(timeout_s)

    def counts(self) -> dict[str, int]:
        return {"forwarded": self.forwarded, "dead_lettered": self.dead_lettered}

    # -- MQTT (paho's network thread runs the callbacks: none of them may raise) --

    def _mqtt_client(self) -> mqtt.Client:
        client = mqtt_client(self.settings, self.client_id)
        client.on_connect = self._on_connect
        client.on_connect_fail = lambda _client, _userdata: self._mqtt_state(False, "cannot reach the MQTT broker")
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    def _on_connect(self, _client, _userdata, _flags, reason, _properties) -> None:
        if reason.is_failure:
            self._mqtt_state(False, f"the MQTT broker refused the connection: {reason}")
        else:
            self._mqtt_state(True, f"connected to MQTT {self.settings.mqtt_host}:{self.settings.mqtt_port}")

    def _on_disconnect(self, _client, _userdata, _flags, reason, _properties) -> None:
        self._mqtt_state(False, f"disconnected from MQTT ({reason}); reconnecting with backoff")

    def _mqtt_state(self, connected: bool, message: str) -> None:
        if self._connected is not connected:  # log each change once, not every retry
            (log.info if connected else log.warning)("%s: %s", self.client_id, message)
        self._connected = connected
        self._mqtt_problem = None if connected else message

    def _on_publish(self, _client, _userdata, mid: int, reason, _properties) -> None:
        if reason.is_failure:
            self._refused[mid] = str(reason)

    def _publish(self, message: MqttAlert) -> bool:
        """Publish until the broker acknowledges it (PUBACK); False if told to stop first."""
        backoff = Backoff(0.5, MAX_BACKOFF_S)
        self._held = (time.monotonic(), f"the MQTT broker has not acknowledged the alert on {message.topic}")
        while not self._stop.is_set():
            if not self._connected:  # paho reconnects by itself; publishing meanwhile would queue a copy each time
                self._stop.wait(0.5)
                continue
            info = self.mqtt.publish(message.topic, message.payload, qos=message.qos, retain=message.retain)
            problem = self._await_puback(info, message.topic)
            if self._stop.is_set():
                break
            if problem is None:
                self._held = None
                self.forwarded += 1
                return True
            log.warning("%s: %s; publishing it again", self.client_id, problem)
            self._held = (self._held[0], problem)
            self._stop.wait(backoff.next_delay())
        return False

    def _await_puback(self, info: mqtt.MQTTMessageInfo, topic: str) -> str | None:
        """None once the broker acknowledged the publication, else why not (or told to stop). A connection lost
        meanwhile is no reason: paho publishes the message again on the next connection."""
        while not self._stop.is_set():
            try:
                info.wait_for_publish(timeout=1.0)
            except (RuntimeError, ValueError) as exc:  # not sent at all (the connection was just lost)
                return f"publishing on {topic} failed: {exc}"
            if info.is_published():
                refusal = self._refused.pop(info.mid, None)
                return f"the MQTT broker refused the alert on {topic}: {refusal}" if refusal else None
        return "stopping"

    # -- Kafka --

    def _kafka_consumer(self) -> KafkaConsumer:
        self._require_kafka()
        return KafkaConsumer(self.topic, bootstrap_servers=self.settings.kafka_bootstrap, group_id=self.group,
                             client_id=self.client_id, enable_auto_commit=False, isolation_level="read_committed",
                             auto_offset_reset="earliest", allow_auto_create_topics=False,
                             reconnect_backoff_max_ms=10_000)

    def _kafka_producer(self) -> KafkaProducer:
        self._require_kafka()
        return KafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap, client_id=self.client_id, acks="all",
                             enable_idempotence=True, max_block_ms=MAX_BLOCK_MS,
                             delivery_timeout_ms=DELIVERY_TIMEOUT_MS, reconnect_backoff_max_ms=10_000)

    def _require_kafka(self) -> None:
        # kafka-python's clients connect in their constructor and, when that fails, leave their I/O thread
        # running: one more thread per attempt. Try only once a bootstrap server listens.
        absence = self._kafka_absence()
        if absence:
            raise KafkaConnectionError(absence)

    def _kafka_absence(self) -> str | None:
        """Why Kafka is not there, or None if a bootstrap server answers."""
        bootstrap = self.settings.kafka_bootstrap
        return None if any_answers(bootstrap) else f"no Kafka bootstrap server answers at {bootstrap}"

    def _until_done(self, what: str, action: Callable[[], T]) -> T | None:
        """`action()` until it succeeds, waiting out Kafka's absence with capped backoff; None if told to stop."""
        backoff = Backoff(0.5, MAX_BACKOFF_S)
        while True:
            try:
                result = action()
            except KafkaError as exc:
                self._kafka_waits(f"{what}: {type(exc).__name__}: {clip(str(exc), 200)}")
            else:
                self._kafka_problem = None
                return result
            if self._stop.wait(backoff.next_delay()):
                return None

    def _kafka_waits(self, problem: str) -> None:
        if self._kafka_problem is None:
            log.warning("%s: %s; waiting for Kafka", self.client_id, problem)
            self._kafka_problem = (time.monotonic(), problem)

    def _commit(self, record: ConsumerRecord) -> None:
        """Commit the offset after `record`. A group rebalanced meanwhile refuses it; then the record is read, and
        forwarded, again (harmless, see the module's docstring), never skipped."""
        offsets = {TopicPartition(record.topic, record.partition): OffsetAndMetadata(record.offset + 1)}
        try:
            self.consumer.commit(offsets, timeout_ms=COMMIT_TIMEOUT_MS)
        except CommitFailedError as exc:
            log.warning("%s: offset %d of %s-%d not committed (%s); it will be forwarded again", self.client_id,
                        record.offset + 1, record.topic, record.partition, exc)

    def _send_dead_letter(self, letter: DeadLetter) -> bool:
        """Produce `letter` until Kafka acknowledges it; False if told to stop first."""
        backoff = Backoff(0.5, MAX_BACKOFF_S)
        while not self._stop.is_set():
            try:
                future = self.producer.send(letter.topic, key=letter.key, value=letter.value, headers=letter.headers)
                if self._await_ack(future):
                    self._kafka_problem = None
                    self.dead_lettered += 1
                    return True
            except KafkaError as exc:
                if isinstance(exc, RECORD_ERRORS) and (letter.key or letter.value):
                    letter = letter.shrunk()  # refused as such: retrying cannot help, keeping less of it can
                    continue
                self._kafka_waits(f"dead-lettering a record: {type(exc).__name__}: {clip(str(exc), 200)}")
                self._stop.wait(backoff.next_delay())
        return False

    def _await_ack(self, future) -> bool:
        """Wait for Kafka's acknowledgement of a sent record (raising its failure); False if told to stop first."""
        handed_over = time.monotonic()
        while not self._stop.is_set():
            try:
                future.get(timeout=1.0)
                return True
            except KafkaTimeoutError:
                if future.is_done:  # the record failed, as opposed to not being acknowledged yet
                    raise
            if time.monotonic() - handed_over > KAFKA_WAIT_S:
                self._kafka_waits("Kafka has not acknowledged a dead letter")
        return False

    # -- the forwarding loop --

    def _run(self) -> None:
        try:
            self.mqtt.connect_async(self.settings.mqtt_host, self.settings.mqtt_port, keepalive=30)
            self.mqtt.loop_start()
            self.consumer = self._until_done("connecting to Kafka", self._kafka_consumer)
            if self.consumer:
                self.producer = self._until_done("connecting to Kafka", self._kafka_producer)
            if self.producer:
                self._forward_until_stopped()
        except Exception as exc:  # noqa: BLE001 - a bug: the gateway stops, its supervisor restarts it
            log.exception("%s: the alerts forwarder failed", self.client_id)
            self.failed = f"the alerts forwarder failed: {exc!r}"
        finally:
            self._close()

    def _forward_until_stopped(self) -> None:
        next_check, next_line = time.monotonic(), time.monotonic() + self.settings.metrics_interval_s
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_check:  # an idle consumer does not notice Kafka's absence: an idle forwarder must not be up
                self._kafka_unreachable = self._kafka_absence()
                next_check = now + PING_INTERVAL_S
            if now >= next_line:
                log.info("%s: forwarded %d alerts, dead-lettered %d records", self.client_id, self.forwarded,
                         self.dead_lettered)
                next_line = now + self.settings.metrics_interval_s
            batches = self._until_done(f"reading {self.topic}", lambda: self.consumer.poll(timeout_ms=1000))
            for records in (batches or {}).values():
                if not self._forward(records):
                    return

    def _forward(self, records: list[ConsumerRecord]) -> bool:
        """Forward one partition's records in order, committing each; False if told to stop first."""
        for record in records:
            outgoing = route_alert(record, self.settings)
            done = self._publish(outgoing) if isinstance(outgoing, MqttAlert) else self._send_dead_letter(outgoing)
            if not done:
                return False  # this record and the rest stay uncommitted: read again on the next start
            self._until_done("committing an offset", lambda record=record: self._commit(record))
        return True

    def _close(self) -> None:
        self.mqtt.disconnect()
        self.mqtt.loop_stop()
        if self.consumer:
            self.consumer.close(autocommit=False, timeout_ms=5_000)
        if self.producer:
            self.producer.close(timeout=5)
        log.info("%s: stopped: forwarded %d alerts, dead-lettered %d records", self.client_id, self.forwarded,
                 self.dead_lettered)

    # -- health --

    def health(self) -> Health:
        """Up while MQTT is connected, Kafka answers and nothing is held up; otherwise what it waits on."""
        now = time.monotonic()
        counters = {"alerts_forwarded": self.forwarded, "alerts_dead_lettered": self.dead_lettered}
        if self.failed:
            return Health("degraded", self.failed, counters=counters)
        if self._kafka_problem:
            since, problem = self._kafka_problem
            return Health("degraded", f"alerts: {problem} (for {now - since:.0f} s)", "kafka", counters=counters)
        if self._kafka_unreachable:
            return Health("degraded", f"alerts: {self._kafka_unreachable}", "kafka", counters=counters)
        if not self._connected:
            if self._mqtt_problem:
                return Health("degraded", f"alerts: {self._mqtt_problem}", "mqtt", counters=counters)
            return Health("starting", "alerts: connecting to MQTT", counters=counters)
        held = self._held
        if held and now - held[0] > MQTT_WAIT_S:
            return Health("degraded", f"alerts: {held[1]} (for {now - held[0]:.0f} s)", "mqtt", counters=counters)
        if self.producer is None:
            return Health("starting", "alerts: connecting to Kafka", counters=counters)
        return Health("up", f"forwarding Kafka {self.topic} to MQTT {MQTT_ALERTS_PREFIX}/<sensor_id>",
                      counters=counters)
