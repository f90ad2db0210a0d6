"""Publish the fleet's readings to MQTT from one or several processes, with a live counter and a summary.

The publisher processes count into shared memory (what they published, sent, malformed on purpose: a slot per
publisher, one writer each, no lock); the parent reads it for the live counter, the summary and, given a registry
(`--metrics-port`), Prometheus metrics:

    iot_simulator_published_total          messages the broker acknowledged (QoS 1/2; QoS 0: taken by the socket)
    iot_simulator_unacknowledged           messages sent and not yet acknowledged by the broker
    iot_simulator_malformed_total{kind}    messages malformed on purpose (`--fault-share`), kind one of FAULT_KINDS
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from runtime.mqtt import BufferedClient
from simulator.config import SimulatorConfig
from simulator.fleet import FAULT_KINDS, Fleet

BATCH = 200  # readings generated at once (vectorised); published one by one
# paho numbers outgoing messages 1..65535; with more than that unacknowledged, ids collide and paho silently
# loses messages. Flat out, the publisher waits for acknowledgements beyond this many.
MAX_UNACKED = 20_000
PACED_BATCH_S = 0.01


@dataclass
class Summary:
    published: int = 0  # acknowledged by the broker (QoS 1/2) or handed to the socket (QoS 0)
    elapsed_s: float = 0.0
    faults: Counter = field(default_factory=Counter)
    started_us: int = 0  # wall clock: every reading's sensor_ts lies between these two
    ended_us: int = 0

    def record(self, cfg: SimulatorConfig) -> dict:
        """What this run published, for `python -m stack audit --run FILE`."""
        return {"published": self.published, "faults": dict(self.faults), "started_us": self.started_us,
                "ended_us": self.ended_us, "first_sensor_id": cfg.first_sensor_id,
                "last_sensor_id": cfg.first_sensor_id + cfg.machine_count - 1, "topic": cfg.topic}

    @property
    def rate(self) -> float:
        return self.published / self.elapsed_s if self.elapsed_s else 0.0

    def line(self) -> str:
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"
        return (f"published {self.published:,} messages in {self.elapsed_s:.1f} s ({self.rate:,.0f} msg/s); "
                f"malformed on purpose: {faults}")


def _connect(cfg: SimulatorConfig, client_id: str) -> mqtt.Client:
    # paho's client publishing in bulk: a wakeup of its network thread and a send() per burst, not per message.
    client = BufferedClient(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    client.username_pw_set(cfg.username, cfg.password)
    # No limit of paho's on messages in flight (MAX_UNACKED is ours): with one, paho scans every message in flight
    # at each acknowledgement to find the next one to send (a third of the simulator's CPU at 1,000).
    client.max_inflight_messages_set(0)
    client.max_queued_messages_set(0)
    connected = []
    client.on_connect = lambda _c, _u, _f, reason, _p: connected.append(reason)
    client.connect(cfg.host, cfg.port, keepalive=30)
    client.loop_start()
    deadline = time.monotonic() + 10
    while not connected and time.monotonic() < deadline:
        time.sleep(0.01)
    if not connected or connected[0].is_failure:
        client.loop_stop()
        raise ConnectionError(f"MQTT broker {cfg.host}:{cfg.port} refused the simulator: "
                              f"{connected[0] if connected else 'no answer'}")
    return client


def publisher_fleet(cfg: SimulatorConfig, index: int) -> Fleet | None:
    """The machines publisher `index` simulates (those whose position modulo `publishers` is `index`), or None."""
    ids = [cfg.first_sensor_id + i for i in range(cfg.machine_count) if i % cfg.publishers == index]
    return Fleet(cfg, ids, seed=cfg.seed * 1000 + index) if ids else None


def degrading_machines(cfg: SimulatorConfig) -> list[int]:
    """The sensor ids of the machines that wear out in a run with `cfg` (the same in every run: seeded)."""
    fleets = [publisher_fleet(cfg, index) for index in range(cfg.publishers)]
    return sorted(int(sensor_id) for fleet in fleets if fleet for sensor_id in fleet.sensor_ids[fleet.degrading])


class PublisherMetrics(Collector):
    """The simulator's Prometheus metrics (see the module's doc), summed over its publisher processes: read from the
    counters they share with the parent (a slot per publisher), when scraped."""

    def __init__(self, published, sent, faults):
        self.published, self.sent, self.faults = published, sent, faults

    def collect(self) -> Iterator[Metric]:
        published = sum(self.published)
        sent = sum(self.sent)  # read after `published`, which never overtakes it: the difference is never < 0
        yield CounterMetricFamily("iot_simulator_published", "Messages the MQTT broker acknowledged (QoS 0: sent).",
                                  value=published)
        yield GaugeMetricFamily("iot_simulator_unacknowledged",
                                "Messages sent and not yet acknowledged by the MQTT broker.", value=sent - published)
        family = CounterMetricFamily("iot_simulator_malformed", "Messages malformed on purpose (fault_share), by kind.",
                                     labels=["kind"])
        for i, kind in enumerate(FAULT_KINDS):
            family.add_metric([kind], self.faults[i])
        yield family


def publish_share(cfg: SimulatorConfig, index: int, published, faults, stop, sent_counts=None) -> None:
    """One publisher: the machines whose position modulo `publishers` is `index`, its share of the messages.

    Counts into shared memory: its own slots of `published` (acknowledged: a plain store per acknowledgement) and
    of `sent_counts` (a plain store per message), and `faults` (per FAULT_KINDS, after each batch)."""
    fleet = publisher_fleet(cfg, index)
    if fleet is None:
        return
    counted_faults: Counter[str] = Counter()

    def count_faults() -> None:
        new = fleet.faults - counted_faults
        if new:
            with faults.get_lock():
                for i, kind in enumerate(FAULT_KINDS):
                    faults[i] += new[kind]
            counted_faults.update(new)

    quota = cfg.messages // cfg.publishers + (1 if index < cfg.messages % cfg.publishers else 0)
    deadline = time.monotonic() + cfg.duration_s if cfg.duration_s else None
    interval = cfg.interval_ms / 1000 * cfg.publishers
    acked = [0]

    def on_publish(_client, _userdata, _mid, _reason, _properties):
        acked[0] += 1
        published[index] = acked[0]

    client = _connect(cfg, f"iot-simulator-{index}-{time.time_ns()}")
    client.on_publish = on_publish
    sent, next_at = 0, time.monotonic()
    # Paced, generate only what is due within PACED_BATCH_S: sensor_ts stays that close to the publish time.
    per_batch = max(1, min(BATCH, int(PACED_BATCH_S / interval))) if interval else BATCH

    def more() -> bool:
        within_quota = not cfg.messages or sent < quota
        return not stop.is_set() and within_quota and (not deadline or time.monotonic() < deadline)

    try:
        while more():
            batch = per_batch if not cfg.messages else min(per_batch, quota - sent)
            messages = fleet.next_messages(batch)
            count_faults()
            for topic, payload in messages:
                if interval:
                    time.sleep(max(0.0, next_at - time.monotonic()))  # pacing, not synchronisation
                    next_at += interval
                while sent - acked[0] >= MAX_UNACKED:
                    time.sleep(0.001)  # back-pressure: let the broker's acknowledgements catch up
                sent += 1
                if sent_counts is not None:
                    sent_counts[index] = sent  # before the publish: its acknowledgement can never be counted first
                client.publish(topic, payload, qos=cfg.qos)
                if cfg.verbose and interval:
                    print(f"{topic} {payload.decode(errors='replace')}", flush=True)
        # Wait for the broker's acknowledgements of what was sent (paho may still hold a long queue of it), as
        # long as they keep coming: give up only after 60 s without progress.
        last_acked, deadline_ack = -1, 0.0
        while acked[0] < sent:
            if acked[0] != last_acked:
                last_acked, deadline_ack = acked[0], time.monotonic() + 60
            elif time.monotonic() > deadline_ack:
                break
            time.sleep(0.01)
    finally:
        client.disconnect()
        client.loop_stop()
        count_faults()


def run(cfg: SimulatorConfig, progress: bool = True, registry: CollectorRegistry | None = None) -> Summary:
    """Publish until the message count or duration is reached (or Ctrl-C); return the summary.

    With a `registry`, the run's PublisherMetrics are registered there (served by whoever serves the registry, see
    runtime.metrics); they keep the final counts after the run."""
    context = mp.get_context("fork")
    published = context.RawArray("q", cfg.publishers)
    faults = context.Array("q", len(FAULT_KINDS))
    sent = context.RawArray("q", cfg.publishers)
    if registry is not None:
        registry.register(PublisherMetrics(published, sent, faults))
    stop = context.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    started, started_us = time.monotonic(), time.time_ns() // 1000
    workers = [context.Process(target=publish_share, args=(cfg, i, published, faults, stop, sent), daemon=True)
               for i in range(cfg.publishers)]
    for worker in workers:
        worker.start()
    last_report, last_count = started, 0
    try:
        while any(worker.is_alive() for worker in workers):
            for worker in workers:
                worker.join(timeout=0.2)
            now = time.monotonic()
            if progress and now - last_report >= 1.0:
                count = sum(published)
                rate = (count - last_count) / (now - last_report)
                print(f"\rpublished {count:,} messages, {rate:,.0f} msg/s   ", end="", file=sys.stderr, flush=True)
                last_report, last_count = now, count
    finally:
        signal.signal(signal.SIGINT, previous)
        if progress:
            print(file=sys.stderr)
    failed = [w.exitcode for w in workers if w.exitcode]
    if failed:
        raise RuntimeError(f"{len(failed)} publisher process(es) failed (exit codes {failed}); see the errors above")
    return Summary(sum(published), time.monotonic() - started,
                   Counter({kind: faults[i] for i, kind in enumerate(FAULT_KINDS) if faults[i]}),
                   started_us, time.time_ns() // 1000)
