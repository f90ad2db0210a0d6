"""Labs 4-6: the gateway. Bridges MQTT `iot/#` into Kafka topic `iot`; bad payloads go to `iot.dlq`.

Usage:
    python -m gateway                       # settings from the environment or .stack/connection.env
    python -m gateway --workers 2 --gateway-id edge-1   # faster; see the note on order

Each worker is a process with its own MQTT v5 persistent session (client id `<gateway-id>-<n>`), so the broker
keeps its messages while it is down. A message is acknowledged over MQTT only after Kafka acknowledged it.

Workers: one (the default) holds a plain subscription and keeps each machine's readings in order into Kafka.
Several share one subscription `$share/<group>/iot/#`: faster, but the broker hands consecutive readings of one
machine to different workers, so their order in Kafka may differ from the order sent (nothing is lost or
duplicated by that; the Kudu key sensor_id + sensor_ts makes order moot there). The broker also keeps handing
messages to a departed worker's session until it expires (7 days): run the same number of workers after a restart.

Every payload becomes a reading (Kafka `iot`) or a dead letter (`iot.dlq`, with the reason): payloads larger
than `--max-payload-bytes` or nested deeper than `--max-nesting` included. While Kafka is away the gateway
acknowledges nothing and waits; it resumes by itself. `--health-file` gets the gateway's state every 2 s (up,
starting, or degraded with what it waits on), which `make status` shows.

Metrics every `--metrics-interval` seconds and at exit: received, produced, dead-lettered, in flight, rate.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing as mp
import os
import queue
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from contract import MAX_NESTING, MAX_PAYLOAD_BYTES
from gateway.bridge import GatewaySettings, GatewayWorker
from runtime.health import STALE_AFTER_S, Health, HealthReporter
from runtime.settings import DEAD_LETTER_TOPIC, IOT_TOPIC, MQTT_TOPIC_FILTER, connection_settings, require

SETTINGS = ("MQTT_HOST", "MQTT_PORT", "MQTT_USERNAME", "MQTT_PASSWORD", "KAFKA_BOOTSTRAP")  # what it reads


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gateway", description="Bridge MQTT readings into Kafka.",
                                     epilog=__doc__.split("\n\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes (default 1: keeps per-machine order; more: faster, see below)")
    parser.add_argument("--gateway-id", default=f"gw-{socket.gethostname()}",
                        help="this gateway's id, added to each record and used in MQTT client ids")
    parser.add_argument("--topic-filter", default=MQTT_TOPIC_FILTER,
                        help=f"MQTT topics to bridge (default {MQTT_TOPIC_FILTER})")
    parser.add_argument("--share-group", default="iot-gateway", help="MQTT shared-subscription group")
    parser.add_argument("--kafka-topic", default=IOT_TOPIC)
    parser.add_argument("--dead-letter-topic", default=DEAD_LETTER_TOPIC)
    parser.add_argument("--metrics-interval", type=float, default=10.0, help="seconds between metrics lines")
    parser.add_argument("--max-payload-bytes", type=int, default=MAX_PAYLOAD_BYTES,
                        help=f"larger payloads are dead-lettered (default {MAX_PAYLOAD_BYTES:,})")
    parser.add_argument("--max-nesting", type=int, default=MAX_NESTING,
                        help=f"payloads nested deeper are dead-lettered (default {MAX_NESTING})")
    parser.add_argument("--health-file", type=Path, help="where to write the gateway's state every 2 s")
    return parser


def run_worker(settings: GatewaySettings, index: int, ready, reports) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    worker = GatewayWorker(settings, index, on_ready=lambda: ready.release())
    worker.run(stop, report=(lambda health: reports.put((index, health))) if reports is not None else lambda _h: None)
    sys.exit(1 if worker.failed else 0)


class WorkerReports:
    """The latest health report of each worker, combined into the gateway's."""

    def __init__(self, reports, workers: int):
        self.reports = reports
        self.latest: dict[int, tuple[float, Health]] = {}
        self.workers = workers

    def collect(self) -> None:
        while True:
            try:
                index, health = self.reports.get_nowait()
            except queue.Empty:
                return
            self.latest[index] = (time.monotonic(), health)

    def combined(self) -> Health:
        self.collect()
        now = time.monotonic()
        counters: dict[str, float] = {}
        problems, waiting_on, starting = [], [], False
        for index in range(self.workers):
            seen, health = self.latest.get(index, (None, None))
            if health is None:
                starting = True
                continue
            for name, value in health.counters.items():
                counters[name] = counters.get(name, 0) + value
            if now - seen > STALE_AFTER_S:
                problems.append(f"worker {index} has not reported for {now - seen:.0f} s")
            elif health.state == "starting":
                starting = True
            elif health.state != "up":
                problems.append(f"worker {index}: {health.detail}")
                waiting_on += [health.waiting_on] if health.waiting_on else []
        if problems:
            return Health("degraded", "; ".join(problems), ",".join(sorted(set(waiting_on))) or None,
                          counters=counters)
        if starting:
            return Health("starting", "connecting and subscribing", counters=counters)
        return Health("up", f"{self.workers} worker(s) bridging MQTT to Kafka", counters=counters)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    host, port, username, password, bootstrap = require(connection_settings(), *SETTINGS)
    settings = GatewaySettings(host, int(port), username, password, bootstrap, args.gateway_id,
                               args.topic_filter, args.share_group, args.kafka_topic, args.dead_letter_topic,
                               args.metrics_interval, args.workers, max_payload_bytes=args.max_payload_bytes,
                               max_nesting=args.max_nesting)
    context = mp.get_context("fork")
    # Workers report only when the parent reads the reports (a health file): unread, they would fill the pipe, and
    # a process cannot exit until its queue is flushed into the pipe, so stopping would hang (Python's
    # multiprocessing "joining processes that use queues").
    ready, reports = context.Semaphore(0), context.Queue() if args.health_file else None
    workers = [context.Process(target=run_worker, args=(settings, i, ready, reports), name=f"gateway-{i}")
               for i in range(args.workers)]
    health = HealthReporter(args.health_file, WorkerReports(reports, args.workers).combined).start()
    for worker in workers:
        worker.start()
    stopping = threading.Event()

    def stop_workers(*_):
        stopping.set()
        for worker in workers:
            if worker.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop_workers)
    signal.signal(signal.SIGINT, stop_workers)
    subscribed = 0
    while subscribed < args.workers and all(w.is_alive() for w in workers):
        subscribed += ready.acquire(timeout=0.5)
    logging.getLogger("gateway").info("%d worker(s) subscribed to %s", subscribed, args.topic_filter)
    try:
        # One worker failing stops the gateway: its unacknowledged messages go back to the broker's queue.
        while all(w.is_alive() for w in workers) and not stopping.is_set():
            for worker in workers:
                worker.join(timeout=0.5)
    finally:
        stop_workers()
        for worker in workers:
            worker.join(timeout=90)
        health.stop()
    return 0 if all(w.exitcode == 0 for w in workers) and stopping.is_set() else 1


if __name__ == "__main__":
    sys.exit(main())
