"""One gateway worker: MQTT (persistent session, manual acks) -> Kafka, built so that no message can stop it.

- A message is acknowledged to the MQTT broker only after Kafka has acknowledged the record made from it, so a
  crash anywhere in between leaves it with the broker, which delivers it again: at least once, never lost.
- Every payload becomes a record: a reading for `iot`, an edge verdict for `iot.verdicts` (a message on a topic of
  the verdicts filter, `verdicts/#`), or a dead letter for `iot.dlq` with the reason (`contract.parse_reading` and
  `parse_verdict` are total). Nothing raises out of paho's callbacks: its network thread never dies.
- paho's network thread only checks and hands records over; a sender thread hands them to librdkafka's producer
  (confluent-kafka: no per-record Python once handed over), and a poller thread takes Kafka's acknowledgements.
  While Kafka is away the producer keeps retrying (no delivery timeout), nothing is acknowledged, and the broker
  stops sending once `receive_maximum` messages are unacknowledged: the backlog waits in Mosquitto's queue for
  our session. When Kafka is back, everything resumes by itself.
- Health (`health()`): up only while connected, Kafka taking records, and messages (or our own ping, published
  to ourselves through the broker every few seconds) flowing; otherwise degraded, naming what it waits on.
- Counters (`Counters.snapshot()`, sent to the parent with each health report, served as Prometheus metrics
  there): received, produced, verdicts, dead-lettered by reason category, and Kafka's acknowledgement latency.
"""

from __future__ import annotations

import bisect
import json
import logging
import queue
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property, partial

import paho.mqtt.client as mqtt
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from contract import (
    GATEWAY_ID_FIELD,
    ID_FIELD,
    MAX_NESTING,
    MAX_PAYLOAD_BYTES,
    RECEIVED_TS_FIELD,
    SENSOR_FIELDS,
    TS_FIELD,
    VERDICT_FIELDS,
    InvalidReading,
    clip,
    parse_reading,
    parse_verdict,
    verdict_json,
)
from runtime.health import Health
from runtime.mqtt import BufferedClient
from runtime.retry import Backoff
from runtime.settings import DEAD_LETTER_TOPIC, IOT_TOPIC, MQTT_TOPIC_FILTER, MQTT_VERDICTS_FILTER, VERDICTS_TOPIC
from runtime.waiting import any_answers

log = logging.getLogger("gateway")
SESSION_EXPIRY_S = 7 * 24 * 3600  # the broker keeps our subscription and queued messages this long while we are away
# Errors that are about the record itself: retrying cannot help, so it becomes a dead letter instead.
RECORD_ERRORS = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_MSG,
                           KafkaError.INVALID_RECORD})
POLL_S = 0.2  # the poller's longest wait for an acknowledgement: how soon it sees a stop
KAFKA_WAIT_S = 10.0  # a record unacknowledged by Kafka this long: the worker is waiting on Kafka
PING_INTERVAL_S = 5.0
STALL_S = 30.0  # no progress and no ping back for this long: degraded; for STALL_FAIL_S: the worker exits
STALL_FAIL_S = 120.0

# The `reason` of a dead letter as a metrics label: one of a small fixed set, so that the label's values stay
# bounded whatever arrives (the full reason, with the offending value, is in the dead letter's `reason` header, never
# in a label). A contract field of a reading or of a verdict names its own category (`sensor_5`, `agent_id`:
# missing, wrong type, out of range, ...); any other field (an extra one, whose name comes from the payload) is
# `extra_field`; a payload that is not a reading (or verdict) as a whole is `not_json`, `too_large`, `too_deep`,
# `not_an_object` or `unreadable`; a record Kafka refuses is `kafka_refused`; a message the gateway failed on is
# `gateway_error`.
CONTRACT_FIELDS = (ID_FIELD, TS_FIELD, *SENSOR_FIELDS)
PAYLOAD_FAULTS = (("not JSON", "not_json"), ("payload of ", "too_large"), ("nested deeper than", "too_deep"),
                  ("not a JSON object", "not_an_object"))  # InvalidReading.problem's beginning -> category
DEAD_LETTER_REASONS = (*CONTRACT_FIELDS, *(name for name in VERDICT_FIELDS if name not in CONTRACT_FIELDS),
                       "extra_field", *(category for _, category in PAYLOAD_FAULTS), "unreadable", "kafka_refused",
                       "gateway_error")
OUTCOMES = ("produced", "dead_lettered")
READING, VERDICT = "reading", "verdict"  # what a message is meant to be: by its topic (`GatewaySettings.is_verdict`)
# Upper bounds of the Kafka acknowledgement latency histogram, in seconds: a few ms when all is well (5 ms linger,
# acks=all), up to minutes while Kafka is away (records wait, they are never dropped).
ACK_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def dead_letter_reason(exc: InvalidReading, fields: tuple[str, ...] = CONTRACT_FIELDS) -> str:
    """The category of a contract violation, one of DEAD_LETTER_REASONS (a bounded metrics label); `fields`: those
    of what the payload was meant to be (a reading's, or VERDICT_FIELDS)."""
    if exc.field is not None:
        return exc.field if exc.field in fields else "extra_field"
    return next((category for start, category in PAYLOAD_FAULTS if exc.problem.startswith(start)), "unreadable")


@dataclass(frozen=True)
class GatewaySettings:
    mqtt_host: str
    mqtt_port: int
    mqtt_username: str
    mqtt_password: str
    kafka_bootstrap: str
    gateway_id: str
    topic_filter: str = MQTT_TOPIC_FILTER
    share_group: str = "iot-gateway"
    kafka_topic: str = IOT_TOPIC
    dead_letter_topic: str = DEAD_LETTER_TOPIC
    metrics_interval_s: float = 10.0
    workers: int = 1
    # The bound of what one worker holds: the broker sends at most this many unacknowledged messages, and we
    # acknowledge only after Kafka did, so at most this many records wait for Kafka. The rest waits in the
    # broker's queue for our session (up to its max_queued_messages).
    receive_maximum: int = 1000
    max_payload_bytes: int = MAX_PAYLOAD_BYTES
    max_nesting: int = MAX_NESTING
    # A dead letter keeps the original payload up to this size (Kafka refuses records over 1 MiB by default);
    # its `payload_bytes` header gives the full size.
    dead_letter_max_bytes: int = 512 * 1024
    # Edge verdicts: messages on topics of `verdicts_filter` are verdicts for Kafka `verdicts_topic`; `verdicts`
    # False: no subscription to that filter (and any left in the session is dropped).
    verdicts_filter: str = MQTT_VERDICTS_FILTER
    verdicts_topic: str = VERDICTS_TOPIC
    verdicts: bool = True

    @cached_property
    def fields_prefix(self) -> bytes:
        """What the gateway appends to a reading's JSON object, but for the `received_ts` value and the `}`."""
        return f',"{GATEWAY_ID_FIELD}":{json.dumps(self.gateway_id)},"{RECEIVED_TS_FIELD}":'.encode()

    @cached_property
    def is_verdict(self) -> Callable[[bytes], object]:
        """Whether (truthy) a raw MQTT topic is one of the verdicts filter's (never with verdicts off)."""
        return topic_matcher(self.verdicts_filter) if self.verdicts else _never

    def subscriptions(self) -> tuple[list[str], list[str]]:
        """The filters a worker subscribes to, and those it drops. One worker holds plain subscriptions (Mosquitto
        queues for it while it is away); several share them (`$share/<group>/<filter>`). A session keeps what it
        had before, so the other form is dropped (else a change of worker count would deliver everything twice),
        and so is the verdicts filter when verdicts are off."""
        wanted, dropped = [], []
        for topic_filter, on in ((self.topic_filter, True), (self.verdicts_filter, self.verdicts)):
            shared = f"$share/{self.share_group}/{topic_filter}"
            form, other = (topic_filter, shared) if self.workers == 1 else (shared, topic_filter)
            wanted += [form] if on else []
            dropped += [other] if on else [form, other]
        return wanted, dropped


def _never(_topic: bytes) -> None:
    return None


def topic_matcher(topic_filter: str) -> Callable[[bytes], object]:
    """Whether (a match, or None) a raw topic (bytes: a topic may be invalid UTF-8) matches the MQTT filter
    `topic_filter`: `+` one level, a trailing `#` any number of them (none included). For `verdicts/#`, in effect a
    bytes prefix check (a compiled regular expression: about 0.1 µs)."""
    levels = topic_filter.encode().split(b"/")
    multi = levels[-1] == b"#"
    exact = [rb"[^/]*" if level == b"+" else re.escape(level) for level in (levels[:-1] if multi else levels)]
    pattern = rb"/".join(exact)
    if multi:
        pattern = rb"(?:" + pattern + rb"(?:/.*)?)" if exact else rb".*"
    return re.compile(pattern, re.S).fullmatch


@dataclass(slots=True)
class Outgoing:
    """A record on its way to Kafka, and the MQTT message to acknowledge once Kafka has it."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] | None
    outcome: str  # the counter it adds to: "produced" or "dead_lettered"
    mid: int
    qos: int
    connection: int  # which MQTT connection delivered it: an ack is only valid on that one
    not_before: float = 0.0  # monotonic time before which it must not be resent
    reason: str | None = None  # a dead letter's category, one of DEAD_LETTER_REASONS
    kind: str = READING  # what the message was meant to be: READING or VERDICT


class Counters:
    """What a worker has done, for the metrics line, the health report and the parent's Prometheus metrics.

    Increments only, under a lock held for a few additions (never across I/O): the message path never waits on
    metrics. `snapshot()` is a plain, picklable dict the worker sends to the parent (gateway/metrics.py sums them).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received = self.produced = self.dead_lettered = 0
        self.verdicts: Counter[str] = Counter()  # messages on verdicts topics, by outcome (dead letters included)
        self.dead_letter_reasons: Counter[str] = Counter()
        # Per outcome: how many acknowledgements fell in each ACK_LATENCY_BUCKETS_S bucket (the last one: beyond
        # all of them), and the latencies' sum.
        self.ack_latency_counts = {outcome: [0] * (len(ACK_LATENCY_BUCKETS_S) + 1) for outcome in OUTCOMES}
        self.ack_latency_sum = dict.fromkeys(OUTCOMES, 0.0)

    def add(self, name: str) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + 1)

    def delivered(self, outcome: str, reason: str | None, latency_s: float | None, kind: str = READING) -> None:
        """Kafka acknowledged a record: a reading or a verdict (`produced`), or a dead letter with its reason
        category; `kind` says which the message was meant to be."""
        bucket = bisect.bisect_left(ACK_LATENCY_BUCKETS_S, latency_s) if latency_s is not None else None
        with self.lock:
            if kind == VERDICT:
                self.verdicts[outcome] += 1
            elif outcome == "produced":
                self.produced += 1
            if outcome != "produced":
                self.dead_lettered += 1
                self.dead_letter_reasons[reason or "unreadable"] += 1
            if bucket is not None:
                self.ack_latency_counts[outcome][bucket] += 1
                self.ack_latency_sum[outcome] += latency_s

    def snapshot(self) -> dict:
        """Everything counted so far, as plain data: {received, produced (readings), verdicts: {outcome: n},
        dead_lettered: {reason: n}, ack_latency: {outcome: {counts: [per bucket, the last beyond
        ACK_LATENCY_BUCKETS_S], sum}}}."""
        with self.lock:
            return {"received": self.received, "produced": self.produced, "verdicts": dict(self.verdicts),
                    "dead_lettered": dict(self.dead_letter_reasons),
                    "ack_latency": {outcome: {"counts": list(self.ack_latency_counts[outcome]),
                                              "sum": self.ack_latency_sum[outcome]} for outcome in OUTCOMES}}

    def as_dict(self) -> dict[str, int]:
        return {"received": self.received, "produced": self.produced, "verdicts": self.verdicts["produced"],
                "dead_lettered": self.dead_lettered}

    def line(self, since: tuple[int, float] | None = None) -> tuple[str, tuple[int, float]]:
        now = time.monotonic()
        done = self.produced + self.verdicts["produced"] + self.dead_lettered
        rate = (done - since[0]) / (now - since[1]) if since and now > since[1] else 0.0
        text = (f"received {self.received:,}, produced {self.produced:,}, verdicts {self.verdicts['produced']:,}, "
                f"dead-lettered {self.dead_lettered:,}, in flight {self.received - done:,}, {rate:,.0f} msg/s")
        return text, (done, now)


def as_header(text: str) -> bytes:
    """A dead letter's header value: `text` as UTF-8, any lone surrogate escaped (never raises)."""
    return text.encode("utf-8", "backslashreplace")


def route(message: mqtt.MQTTMessage, settings: GatewaySettings, connection: int) -> Outgoing:
    """The record a message becomes: a reading for Kafka `iot`, an edge verdict for `iot.verdicts` (a message on a
    topic of the verdicts filter, told by its raw bytes: `route_verdict`), or a dead letter with the reason. Total."""
    if settings.is_verdict(message._topic):
        return route_verdict(message, settings, connection)
    received_ts = time.time_ns() // 1000
    try:
        reading = parse_reading(message.payload, settings.max_payload_bytes, settings.max_nesting)
    except InvalidReading as exc:
        return dead_letter(message, settings, connection, exc.field, str(exc), received_ts, dead_letter_reason(exc))
    return Outgoing(settings.kafka_topic, str(reading[ID_FIELD]).encode(),
                    with_gateway_fields(message.payload, reading, settings, received_ts), None,
                    "produced", message.mid, message.qos, connection)


def with_gateway_fields(payload: bytes, reading: dict, settings: GatewaySettings, received_ts: int) -> bytes:
    """The Kafka record of a valid reading: the reading and the gateway's fields. A reading of the contract's fields
    alone in UTF-8 (the usual one) keeps its bytes, ours appended before the closing brace: no re-encoding. Any
    other is encoded again, ours replacing fields of the same name."""
    if len(reading) == len(CONTRACT_FIELDS) and payload[:1] == b"{" and payload[1:2] != b"\x00":  # not UTF-16/32
        return b"".join((payload.rstrip()[:-1], settings.fields_prefix, str(received_ts).encode(), b"}"))
    return json.dumps({**reading, GATEWAY_ID_FIELD: settings.gateway_id, RECEIVED_TS_FIELD: received_ts}).encode()


def route_verdict(message: mqtt.MQTTMessage, settings: GatewaySettings, connection: int) -> Outgoing:
    """The record a message on a verdicts topic becomes: the edge verdict as the contract writes it, for Kafka
    `iot.verdicts` (key sensor_id), or a dead letter with the reason. Total."""
    try:
        verdict = parse_verdict(message.payload)
    except InvalidReading as exc:
        return dead_letter(message, settings, connection, exc.field, str(exc),
                           category=dead_letter_reason(exc, VERDICT_FIELDS), kind=VERDICT)
    return Outgoing(settings.verdicts_topic, str(verdict[ID_FIELD]).encode(), verdict_json(verdict), None,
                    "produced", message.mid, message.qos, connection, kind=VERDICT)


def dead_letter(message: mqtt.MQTTMessage, settings: GatewaySettings, connection: int, field: str | None,
                reason: str, received_ts: int | None = None, category: str = "gateway_error",
                kind: str = READING) -> Outgoing:
    """A dead letter: the original payload (up to dead_letter_max_bytes), the reason and the origin in headers;
    `category` (one of DEAD_LETTER_REASONS) and `kind` (READING or VERDICT) for the metrics."""
    topic = message._topic.decode("utf-8", "backslashreplace")  # never raises, unlike message.topic
    payload = bytes(message.payload or b"")
    headers = [("reason", as_header(reason)), ("field", as_header(field or "")), ("mqtt_topic", as_header(topic)),
               ("gateway_id", as_header(settings.gateway_id)),
               ("received_ts", str(received_ts or time.time_ns() // 1000).encode()),
               ("payload_bytes", str(len(payload)).encode())]
    return Outgoing(settings.dead_letter_topic, as_header(topic), payload[: settings.dead_letter_max_bytes], headers,
                    "dead_lettered", message.mid, message.qos, connection, reason=category, kind=kind)


def kafka_producer(settings: GatewaySettings, client_id: str, on_error: Callable[[KafkaError], None]) -> Producer:
    """librdkafka's idempotent producer (acks=all, lz4, 5 ms linger), with no delivery timeout: librdkafka would
    give up on a record after 300 s (its default) and the worker would have to fail. We wait out any outage
    instead: the records stay queued (at most receive_maximum of them) and are retried until Kafka takes them."""
    return Producer({
        "bootstrap.servers": settings.kafka_bootstrap,
        "client.id": client_id,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.timeout.ms": 0,  # 0: no delivery timeout
        # Java's partitioner (and kafka-python's, which the gateway used before): a machine's key keeps its partition.
        "partitioner": "murmur2_random",
        "reconnect.backoff.max.ms": 10_000,
        "logger": logging.getLogger("gateway.kafka"),
        "error_cb": on_error,
    })


def mqtt_client(settings: GatewaySettings, client_id: str, manual_ack: bool = False) -> mqtt.Client:
    """An MQTT v5 client with the gateway's credentials, reconnecting with backoff (1 s doubling to 30 s); paho's,
    reading and acknowledging in bulk (runtime.mqtt.BufferedClient)."""
    client = BufferedClient(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                            manual_ack=manual_ack)
    client.username_pw_set(settings.mqtt_username, settings.mqtt_password)
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    return client


class GatewayWorker:
    def __init__(self, settings: GatewaySettings, index: int, on_ready: Callable[[], None] = lambda: None):
        self.settings = settings
        self.client_id = f"{settings.gateway_id}-{index}"
        self.ping_topic = f"gateway-health/{self.client_id}"
        self._ping_topic_bytes = self.ping_topic.encode()
        self.counters = Counters()
        self.on_ready = on_ready
        self.failed: str | None = None
        self.outbox: queue.SimpleQueue[Outgoing] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._connection = 0  # incremented on every CONNACK
        self._connected = False
        self._mqtt_problem = "connecting"
        self._subscribed = False
        self._pending: dict[int, float] = {}  # id(record) -> when it was handed to Kafka
        self._pending_lock = threading.Lock()
        self._kafka_problem: tuple[float, str] | None = None  # since when, and why, the sender waits
        self._kafka_unreachable: str | None = None  # set by the idle check of the bootstrap servers
        self._kafka_error = ""  # the producer's last error report (error_cb), for the health detail
        self._last_progress = time.monotonic()
        self._ping_sent: float | None = None
        self._last_pong = time.monotonic()
        self.producer = kafka_producer(settings, self.client_id, self._on_kafka_error)
        self.mqtt = self._mqtt_client()
        self._sender = threading.Thread(target=self._send_loop, name=f"{self.client_id}-sender", daemon=True)
        self._poller = threading.Thread(target=self._poll_loop, name=f"{self.client_id}-poller", daemon=True)

    def _mqtt_client(self) -> mqtt.Client:
        client = mqtt_client(self.settings, self.client_id, manual_ack=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    # -- MQTT callbacks (paho's network thread): none of them may raise --

    def _on_connect(self, client, _userdata, _flags, reason, _properties) -> None:
        if reason.is_failure:
            self._mqtt_state(False, f"MQTT broker refused the connection: {reason}")
            return
        self._connection += 1
        self._ping_sent = None  # a ping in flight on the old connection may never come back
        self._mqtt_state(True, f"connected to MQTT {self.settings.mqtt_host}:{self.settings.mqtt_port}")
        # Plain or shared subscriptions to the readings' and the verdicts' filters, the other forms dropped first
        # (GatewaySettings.subscriptions). Retained messages are sent only when a subscription is new, not again on
        # every reconnect (a retained poison message would return each time).
        wanted, dropped = self.settings.subscriptions()
        options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
        client.unsubscribe(dropped)
        client.subscribe([*((topic_filter, options) for topic_filter in wanted),
                          (self.ping_topic, SubscribeOptions(qos=1))])

    def _on_disconnect(self, _client, _userdata, _flags, reason, _properties) -> None:
        self._mqtt_state(False, f"disconnected from MQTT ({reason}); reconnecting with backoff")

    def _mqtt_state(self, connected: bool, message: str) -> None:
        if self._connected is not connected:  # log each change once, not every retry
            (log.info if connected else log.warning)("%s: %s", self.client_id, message)
        self._connected = connected
        self._mqtt_problem = "" if connected else message

    def _on_subscribe(self, _client, _userdata, _mid, reason_codes, _properties) -> None:
        if any(code.is_failure for code in reason_codes):
            self._fail(f"subscription refused: {reason_codes}")
        elif not self._subscribed:
            self._subscribed = True
            self.on_ready()

    def _on_message(self, _client, _userdata, message: mqtt.MQTTMessage) -> None:
        try:
            if message._topic == self._ping_topic_bytes:  # raw bytes: .topic raises on invalid UTF-8
                self._on_pong(message)
                return
            self.counters.add("received")
            self.outbox.put(route(message, self.settings, self._connection))
        except Exception as exc:  # noqa: BLE001 - a bug must not kill paho's thread; keep the message instead
            log.exception("%s: unexpected error on a message; dead-lettering it", self.client_id)
            try:
                self.outbox.put(dead_letter(message, self.settings, self._connection, None,
                                            f"gateway error: {clip(repr(exc), 300)}"))
            except Exception:  # noqa: BLE001 - not even that: leave it unacknowledged, the broker keeps it
                self._fail("cannot route a message; restarting so that the broker delivers it again")

    def _on_pong(self, message: mqtt.MQTTMessage) -> None:
        self._ping_sent = None
        self._last_pong = time.monotonic()
        if message.qos:
            self.mqtt.ack(message.mid, message.qos)

    # -- the sender and poller threads: Kafka --

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            try:
                record = self.outbox.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self._send(record)
            except Exception as exc:  # noqa: BLE001 - the sender must outlive any single record
                log.exception("%s: unexpected error sending a record", self.client_id)
                self._fail(f"sender failed: {exc!r}")

    def _send(self, record: Outgoing) -> None:
        """Hand one record to the producer, waiting out a full queue or Kafka's absence; never drop it."""
        backoff = None
        while not self._stop.is_set():
            delay = record.not_before - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            try:
                self._produce(record)
                return
            except BufferError:  # librdkafka's queue is full: Kafka takes records slower than they come, or not
                self._kafka_waits("the Kafka producer's queue is full")
            except KafkaException as exc:
                error = exc.args[0]
                if error.code() in RECORD_ERRORS:
                    record = self._shrunk_dead_letter(record, error)
                    continue
                self._kafka_waits(f"cannot hand records to Kafka: {error.str()}")
            backoff = backoff or Backoff(0.5, 10.0)
            self._stop.wait(backoff.next_delay())

    def _produce(self, record: Outgoing) -> None:
        with self._pending_lock:  # before produce(): the poller may see its acknowledgement at once
            self._pending[id(record)] = time.monotonic()
        try:
            self.producer.produce(record.topic, record.value, record.key, headers=record.headers,
                                  on_delivery=partial(self._on_delivery, record))
        except BaseException:
            with self._pending_lock:
                self._pending.pop(id(record), None)
            raise

    def _poll_loop(self) -> None:
        """Kafka's acknowledgements: librdkafka runs the delivery callbacks only inside poll()."""
        while not self._stop.is_set():
            try:
                self.producer.poll(POLL_S)
            except Exception as exc:  # noqa: BLE001 - a callback's bug surfaces here; the worker restarts
                log.exception("%s: unexpected error taking Kafka's acknowledgements", self.client_id)
                self._fail(f"poller failed: {exc!r}")

    def _on_delivery(self, record: Outgoing, error: KafkaError | None, _message: Message) -> None:
        if error is None:
            self._delivered(record)
        elif not self._stop.is_set():  # when stopping, what Kafka did not take stays with the broker, unacknowledged
            self._not_delivered(record, error)

    def _on_kafka_error(self, error: KafkaError) -> None:
        """librdkafka's error reports (error_cb): most are transient (a broker away) and it retries by itself; a
        fatal one (the idempotent producer cannot go on) restarts the worker, and the broker delivers again."""
        self._kafka_error = error.str()
        if error.fatal():
            self._fail(f"the Kafka producer failed: {error.str()}")

    def _shrunk_dead_letter(self, record: Outgoing, error: KafkaError) -> Outgoing:
        """A record Kafka refuses as such: a reading becomes a dead letter; a dead letter keeps less of its value."""
        reason = f"Kafka refused the record: {error.name()}: {clip(error.str(), 200)}"
        if record.outcome == "produced":
            headers = [("reason", as_header(reason)), ("field", b""),
                       ("gateway_id", as_header(self.settings.gateway_id)),
                       ("payload_bytes", str(len(record.value)).encode())]
            return replace(record, topic=self.settings.dead_letter_topic, headers=headers, outcome="dead_lettered",
                           value=record.value[: self.settings.dead_letter_max_bytes], reason="kafka_refused")
        log.warning("%s: %s; keeping %d of %d bytes of the dead letter", self.client_id, reason,
                    len(record.value) // 2, len(record.value))
        return replace(record, value=record.value[: len(record.value) // 2])

    def _delivered(self, record: Outgoing) -> None:
        with self._pending_lock:
            handed_over = self._pending.pop(id(record), None)
        self._kafka_problem = None
        self._kafka_error = ""
        self._last_progress = now = time.monotonic()
        self.counters.delivered(record.outcome, record.reason, None if handed_over is None else now - handed_over,
                                record.kind)
        # An ack is only meaningful on the connection that delivered the message: after a reconnect the broker
        # delivers it again (same session), and that delivery is acknowledged instead.
        if record.qos and record.connection == self._connection and self._connected:
            self.mqtt.ack(record.mid, record.qos)

    def _not_delivered(self, record: Outgoing, error: KafkaError) -> None:
        with self._pending_lock:
            self._pending.pop(id(record), None)
        if error.code() in RECORD_ERRORS:
            self.outbox.put(self._shrunk_dead_letter(record, error))
            return
        # Not about the record (authorisation, a deleted topic, ...): keep it, retry later, say what we wait for.
        self._kafka_waits(f"Kafka did not take a record: {error.name()}: {clip(error.str(), 200)}")
        self.outbox.put(replace(record, not_before=time.monotonic() + 5.0))

    def _kafka_waits(self, problem: str) -> None:
        if self._kafka_problem is None:
            log.warning("%s: %s; waiting for Kafka (nothing is acknowledged meanwhile)", self.client_id, problem)
            self._kafka_problem = (time.monotonic(), problem)

    def _fail(self, reason: str) -> None:
        log.error("%s: %s; stopping so that unacknowledged messages are delivered again", self.client_id, reason)
        self.failed = reason
        self._stop.set()

    # -- health --

    def health(self) -> Health:
        """Up only while connected, Kafka taking records, and messages or our ping flowing."""
        now = time.monotonic()
        counters = self.counters.as_dict()
        if not self._mqtt_thread_alive():
            return Health("degraded", "the MQTT network thread is not running", "mqtt", counters=counters)
        if not self._subscribed:
            return Health("starting", self._mqtt_problem or "subscribing", counters=counters)
        if not self._connected:
            return Health("degraded", self._mqtt_problem, "mqtt", counters=counters)
        kafka_problem = self._waiting_on_kafka(now)
        if kafka_problem:
            return Health("degraded", kafka_problem, "kafka", counters=counters)
        stalled = self._stalled_for(now)
        if stalled > STALL_S:
            return Health("degraded", f"no message processed and no ping back through MQTT for {stalled:.0f} s",
                          counters=counters)
        return Health("up", "bridging MQTT to Kafka", counters=counters)

    def _waiting_on_kafka(self, now: float) -> str | None:
        """Why the worker waits on Kafka, or None if it does not."""
        with self._pending_lock:
            oldest = min(self._pending.values(), default=now)
        if self._kafka_problem or now - oldest > KAFKA_WAIT_S:
            last_error = f"; last error: {clip(self._kafka_error, 200)}" if self._kafka_error else ""
            since, problem = self._kafka_problem or (oldest, f"Kafka has not acknowledged records{last_error}")
            return f"{problem} (for {now - since:.0f} s)"
        return self._kafka_unreachable

    def _check_kafka_when_idle(self, now: float) -> None:
        """With nothing delivered lately, make sure Kafka still listens: an idle gateway must not claim `up`."""
        if now - self._last_progress < PING_INTERVAL_S:
            self._kafka_unreachable = None
            return
        if any_answers(self.settings.kafka_bootstrap):
            self._kafka_unreachable = None
        else:
            self._kafka_unreachable = f"no Kafka bootstrap server answers at {self.settings.kafka_bootstrap}"

    def _stalled_for(self, now: float) -> float:
        """Seconds without progress while a ping is outstanding (0 when things flow)."""
        if self._ping_sent is None:
            return 0.0
        return now - max(self._ping_sent, self._last_progress)

    def _mqtt_thread_alive(self) -> bool:
        thread = self.mqtt._thread  # paho has no public accessor for the thread loop_start() runs
        return thread is not None and thread.is_alive()

    def _ping(self) -> None:
        if self._connected and self._subscribed and self._ping_sent is None:
            self._ping_sent = time.monotonic()
            self.mqtt.publish(self.ping_topic, str(time.time()).encode(), qos=1)

    # -- lifecycle --

    def run(self, stop: threading.Event, report: Callable[[Health], None] = lambda _h: None) -> None:
        """Run until `stop` is set (or a fatal error); flush Kafka, then acknowledge, then disconnect."""
        self._stop = stop
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = SESSION_EXPIRY_S
        properties.ReceiveMaximum = self.settings.receive_maximum
        self.mqtt.connect_async(self.settings.mqtt_host, self.settings.mqtt_port, keepalive=30,
                                clean_start=False, properties=properties)
        self._sender.start()
        self._poller.start()
        self.mqtt.loop_start()
        since, next_metrics, next_ping = None, time.monotonic() + self.settings.metrics_interval_s, 0.0
        try:
            while not stop.wait(1.0):
                now = time.monotonic()
                if now >= next_ping:
                    self._ping()
                    self._check_kafka_when_idle(now)
                    next_ping = now + PING_INTERVAL_S
                report(self.health())
                if now >= next_metrics:
                    text, since = self.counters.line(since)
                    log.info("%s: %s", self.client_id, text)
                    next_metrics = now + self.settings.metrics_interval_s
                self._check_liveness(now)
        finally:
            # Every record Kafka takes in time is acknowledged over MQTT before the DISCONNECT, which paho sends
            # after them; what Kafka has not taken (it may be away) stays with the broker for our next session.
            self._sender.join(timeout=5)
            self._poller.join(timeout=5)
            left = self.producer.flush(timeout=20)
            if left:
                log.warning("%s: Kafka did not take %d records in 20 s; the MQTT broker keeps them for our next "
                            "session", self.client_id, left)
                self.producer.purge()  # else close() would wait for them
            self.mqtt.disconnect()
            self.mqtt.loop_stop()
            self.producer.close()
            log.info("%s: stopped: %s", self.client_id, self.counters.line()[0])

    def _check_liveness(self, now: float) -> None:
        """Exit (the supervisor restarts us, the broker re-delivers) if a thread died or nothing moves for long."""
        if not self._sender.is_alive():
            self._fail("the Kafka sender thread is not running")
        elif not self._poller.is_alive():
            self._fail("the Kafka poller thread is not running")
        elif not self._mqtt_thread_alive():
            self._fail("the MQTT network thread is not running")
        elif self._connected and not self._waiting_on_kafka(now) and self._stalled_for(now) > STALL_FAIL_S:
            self._fail(f"no progress for {self._stalled_for(now):.0f} s with MQTT and Kafka reachable")
