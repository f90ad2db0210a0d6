"""Benchmark the edge: simulator -> Mosquitto -> gateway -> Kafka, and the gateway's own ceiling.

Usage (the local stack must be up: `make up`):
    python -m bench.edge_bench [--messages 100000] [--workers 1 2] [--publishers 2]

It uses its own MQTT topic (`bench/<sensor_id>`) and Kafka topic (`iot.bench`) and its own gateway processes
(id `gw-bench`), so the stack's gateway and topic `iot` are not touched. For each worker count:
  - end to end: the simulator publishes N readings as fast as it can; msg/s = N / time until all are in Kafka;
  - simulator alone: meanwhile the gateway is stopped and the simulator publishes N readings for its session in
    Mosquitto: the simulator's CPU per reading (its processes' CPU seconds / N);
  - gateway ceiling: then the gateway is started; msg/s = N / time from the last look at Kafka before its first
    record to its last record, and its CPU per message (its process group's CPU seconds over that time / N). It is
    timed from its start, not from its health's `up`: a fast gateway drains much of the backlog before saying so;
and, for scale, the gateway's Kafka producer alone (pre-built records, no MQTT): the Kafka client's ceiling.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import tempfile
import time
from pathlib import Path

from bench.processes import (
    forget_sessions,
    gateway_command,
    group_cpu_seconds,
    own_cpu_seconds,
    start_gateway,
    start_group,
    stop_group,
)
from gateway.bridge import GatewaySettings, kafka_producer
from runtime.kafka import end_offsets, ensure_topic
from runtime.settings import connection_settings, require
from simulator.config import SimulatorConfig, load_simulator_config
from simulator.publisher import run

BENCH_TOPIC = "iot.bench"
MQTT_TOPIC = "bench"


def total_offset(bootstrap: str) -> int:
    """Records ever written to the bench's topic: the sum of its end offsets."""
    return sum(end_offsets(bootstrap, BENCH_TOPIC).values())


def wait_for_records(bootstrap: str, target: int, timeout_s: float = 600, gateway: subprocess.Popen | None = None,
                     start_total: int | None = None) -> tuple[float, float, float]:
    """Poll the topic's end offsets until they reach `target`: (time of the last poll before they grew past
    `start_total` (by default, their total now), time of reaching `target`, CPU seconds the `gateway`'s process
    group used in between, or 0). Fails if the gateway exits first."""
    start_total = total_offset(bootstrap) if start_total is None else start_total
    before, cpu_before, deadline = time.monotonic(), 0.0, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now, cpu, total = time.monotonic(), group_cpu_seconds(gateway.pid) if gateway else 0.0, total_offset(bootstrap)
        if total >= target:
            return before, time.monotonic(), (group_cpu_seconds(gateway.pid) - cpu_before) if gateway else 0.0
        if total <= start_total:
            before, cpu_before = now, cpu
        if gateway and gateway.poll() is not None:
            raise RuntimeError(f"the bench's gateway exited with {gateway.returncode}")
        # The polling interval of a measurement, not synchronisation: runtime.waiting.wait_until backs off to 1 s
        # between probes, which would add up to a second to each figure.
        time.sleep(0.1)
    raise TimeoutError(f"{BENCH_TOPIC} reached {total_offset(bootstrap)} of {target} records in {timeout_s} s")


def producer_ceiling(bootstrap: str, messages: int) -> tuple[float, float]:
    """The gateway's Kafka producer alone (`gateway.bridge.kafka_producer`, pre-built records, a delivery callback
    each as the gateway has): records/s, and this process's CPU µs per record."""
    record = json.dumps({"sensor_id": 1, "sensor_ts": 1, **{f"sensor_{i}": 1.5 for i in range(12)},
                         "gateway_id": "gw", "received_ts": 1}).encode()
    producer = kafka_producer(GatewaySettings("", 0, "", "", bootstrap, "gw-bench-producer"), "gw-bench-producer",
                              lambda _error: None)
    acknowledged = []

    def on_delivery(error, _message) -> None:
        if error is None:
            acknowledged.append(True)

    start, cpu = time.perf_counter(), own_cpu_seconds()
    for i in range(messages):
        while True:
            try:
                producer.produce(BENCH_TOPIC, record, str(i % 100).encode(), on_delivery=on_delivery)
                break
            except BufferError:  # librdkafka's queue is full: let it drain
                producer.poll(0.1)
        producer.poll(0)
    left = producer.flush(60)
    elapsed, cpu = time.perf_counter() - start, own_cpu_seconds() - cpu
    producer.close()
    if left or len(acknowledged) != messages:
        raise RuntimeError(f"the producer alone: {len(acknowledged)} of {messages} records acknowledged")
    return messages / elapsed, cpu / messages * 1e6


def measure(sim: SimulatorConfig, settings: dict[str, str], bootstrap: str, workers: int, health: Path
            ) -> list[str]:
    """One line of the table, for `workers` gateway workers: end to end msg/s, simulator msg/s and µs per message,
    gateway ceiling msg/s and µs per message. The bench's gateway is stopped and its sessions forgotten after,
    whatever happens."""
    messages, gateway_id = sim.messages, f"gw-bench-{workers}"
    gateway = start_gateway(gateway_id, workers, f"{MQTT_TOPIC}/#", BENCH_TOPIC, health)
    try:
        target = total_offset(bootstrap) + messages
        t0 = time.monotonic()
        summary = run(sim, progress=False)
        _, done, _ = wait_for_records(bootstrap, target)
        stop_group(gateway)  # its sessions stay: Mosquitto now queues for them

        target = total_offset(bootstrap) + messages
        before = own_cpu_seconds(resource.RUSAGE_CHILDREN)  # the publishers are reaped children
        alone = run(sim, progress=False)  # with no gateway taking messages: the simulator's own cost
        simulator_us = (own_cpu_seconds(resource.RUSAGE_CHILDREN) - before) / alone.published * 1e6
        # Timed from its start, not from its `up`: it drains the backlog from its first second on.
        gateway = start_group(gateway_command(gateway_id, workers, f"{MQTT_TOPIC}/#", BENCH_TOPIC, health))
        first, last, gateway_cpu = wait_for_records(bootstrap, target, gateway=gateway, start_total=target - messages)
    finally:
        stop_group(gateway)
        forget_sessions(settings, gateway_id, workers)
    return [f"{messages / (done - t0):>16,.0f}", f"{summary.rate:>15,.0f}", f"{simulator_us:>16,.1f}",
            f"{messages / (last - first):>21,.0f}", f"{gateway_cpu / messages * 1e6:>14,.1f}"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.edge_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--publishers", type=int, default=2)
    args = parser.parse_args(argv)
    settings = connection_settings()
    (bootstrap,) = require(settings, "KAFKA_BOOTSTRAP")
    ensure_topic(bootstrap, BENCH_TOPIC, 4)

    config = load_simulator_config(Path(__file__).resolve().parent.parent / "simulator" / "mqtt.iot.config")
    sim = dataclasses.replace(config, topic=MQTT_TOPIC, interval_ms=0, verbose=False, messages=args.messages,
                              publishers=args.publishers, machine_count=100)
    print(f"{args.messages:,} readings per measurement, {args.publishers} publisher processes, 2 cores shared by all")
    print(f"{'workers':>7}  {'end to end msg/s':>16}  {'simulator msg/s':>15}  {'simulator us/msg':>16}  "
          f"{'gateway ceiling msg/s':>21}  {'gateway us/msg':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        health = Path(tmp) / "gateway.health"
        for workers in args.workers:
            print(f"{workers:>7}  " + "  ".join(measure(sim, settings, bootstrap, workers, health)))
    rate, cpu_us = producer_ceiling(bootstrap, args.messages)
    print(f"the gateway's Kafka producer alone (librdkafka; acks=all, idempotent, lz4): {rate:,.0f} records/s, "
          f"{cpu_us:.1f} µs of CPU a record")


if __name__ == "__main__":
    main()
