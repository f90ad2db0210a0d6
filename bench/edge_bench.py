"""Benchmark the edge: simulator -> Mosquitto -> gateway -> Kafka, and the gateway's own ceiling.

Usage (the local stack must be up: `make up`):
    python -m bench.edge_bench [--messages 100000] [--workers 1 2] [--publishers 2]

It uses its own MQTT topic (`bench/<sensor_id>`) and Kafka topic (`iot.bench`) and its own gateway processes
(id `gw-bench`), so the stack's gateway and topic `iot` are not touched. For each worker count:
  - end to end: the simulator publishes N readings as fast as it can; msg/s = N / time until all are in Kafka;
  - simulator alone: meanwhile the gateway is stopped and the simulator publishes N readings for its session in
    Mosquitto: the simulator's CPU per reading (its processes' CPU seconds / N);
  - gateway ceiling: then the gateway is started; msg/s = N / time from its first record in Kafka to its last,
    and its CPU per message (its process group's CPU seconds over that time / N);
and, for scale, kafka-python's producer alone (pre-built records, no MQTT): the Kafka client's ceiling.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import tempfile
import time
from pathlib import Path

from kafka import KafkaProducer

from bench.processes import forget_sessions, group_cpu_seconds, own_cpu_seconds, start_gateway, stop_group
from runtime.kafka import end_offsets, ensure_topic
from runtime.settings import connection_settings, require
from simulator.config import load_simulator_config
from simulator.publisher import run

BENCH_TOPIC = "iot.bench"
MQTT_TOPIC = "bench"


def total_offset(bootstrap: str) -> int:
    """Records ever written to the bench's topic: the sum of its end offsets."""
    return sum(end_offsets(bootstrap, BENCH_TOPIC).values())


def wait_for_records(bootstrap: str, target: int, timeout_s: float = 600, pgid: int | None = None
                     ) -> tuple[float, float, float]:
    """Poll the topic's end offsets until they reach `target`: (time of first growth, time of reaching it, CPU
    seconds process group `pgid` used in between, or 0)."""
    start_total, first, cpu_first, deadline = total_offset(bootstrap), None, 0.0, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        total = total_offset(bootstrap)
        if first is None and total > start_total:
            first, cpu_first = time.monotonic(), group_cpu_seconds(pgid) if pgid else 0.0
        if total >= target:
            cpu = group_cpu_seconds(pgid) - cpu_first if pgid else 0.0
            return first or time.monotonic(), time.monotonic(), cpu
        # The polling interval of a measurement, not synchronisation: runtime.waiting.wait_until backs off to 1 s
        # between probes, which would add up to a second to each figure.
        time.sleep(0.1)
    raise TimeoutError(f"{BENCH_TOPIC} reached {total_offset(bootstrap)} of {target} records in {timeout_s} s")


def producer_ceiling(bootstrap: str, messages: int) -> float:
    record = json.dumps({"sensor_id": 1, "sensor_ts": 1, **{f"sensor_{i}": 1.5 for i in range(12)},
                         "gateway_id": "gw", "received_ts": 1}).encode()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5,
                             batch_size=256 * 1024, compression_type="lz4")
    start = time.perf_counter()
    for i in range(messages):
        producer.send(BENCH_TOPIC, key=str(i % 100).encode(), value=record)
    producer.flush()
    elapsed = time.perf_counter() - start
    producer.close()
    return messages / elapsed


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
            gateway_id = f"gw-bench-{workers}"
            gateway = start_gateway(gateway_id, workers, f"{MQTT_TOPIC}/#", BENCH_TOPIC, health)
            target = total_offset(bootstrap) + args.messages
            t0 = time.monotonic()
            summary = run(sim, progress=False)
            _, done, _ = wait_for_records(bootstrap, target)
            end_to_end = args.messages / (done - t0)
            stop_group(gateway)  # its sessions stay: Mosquitto now queues for them

            target = total_offset(bootstrap) + args.messages
            before = own_cpu_seconds(resource.RUSAGE_CHILDREN)  # the publishers are reaped children
            alone = run(sim, progress=False)  # with no gateway taking messages: the simulator's own cost
            simulator_us = (own_cpu_seconds(resource.RUSAGE_CHILDREN) - before) / alone.published * 1e6
            gateway = start_gateway(gateway_id, workers, f"{MQTT_TOPIC}/#", BENCH_TOPIC, health)
            first, last, gateway_cpu = wait_for_records(bootstrap, target, pgid=gateway.pid)
            stop_group(gateway)
            forget_sessions(settings, gateway_id, workers)
            print(f"{workers:>7}  {end_to_end:>16,.0f}  {summary.rate:>15,.0f}  {simulator_us:>16,.1f}  "
                  f"{args.messages / (last - first):>21,.0f}  {gateway_cpu / args.messages * 1e6:>14,.1f}")
    print(f"kafka-python producer alone (acks=all, idempotent, lz4): {producer_ceiling(bootstrap, args.messages):,.0f}"
          " records/s")


if __name__ == "__main__":
    main()
