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

Metrics every `--metrics-interval` seconds and at exit: received, produced, dead-lettered, in flight, rate.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing as mp
import os
import signal
import socket
import sys
import threading
from pathlib import Path

from gateway.bridge import GatewaySettings, GatewayWorker
from stack.connection import connection_settings, require

SETTINGS = ("MQTT_HOST", "MQTT_PORT", "MQTT_USERNAME", "MQTT_PASSWORD", "KAFKA_BOOTSTRAP")  # what it reads


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gateway", description="Bridge MQTT readings into Kafka.",
                                     epilog=__doc__.split("\n\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes (default 1: keeps per-machine order; more: faster, see below)")
    parser.add_argument("--gateway-id", default=f"gw-{socket.gethostname()}",
                        help="this gateway's id, added to each record and used in MQTT client ids")
    parser.add_argument("--topic-filter", default="iot/#", help="MQTT topics to bridge (default iot/#)")
    parser.add_argument("--share-group", default="iot-gateway", help="MQTT shared-subscription group")
    parser.add_argument("--kafka-topic", default="iot")
    parser.add_argument("--dead-letter-topic", default="iot.dlq")
    parser.add_argument("--metrics-interval", type=float, default=10.0, help="seconds between metrics lines")
    parser.add_argument("--ready-file", type=Path, help="created once every worker has subscribed")
    return parser


def run_worker(settings: GatewaySettings, index: int, ready) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    worker = GatewayWorker(settings, index, on_ready=lambda: ready.release())
    worker.run(stop)
    sys.exit(1 if worker.failed else 0)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    host, port, username, password, bootstrap = require(connection_settings(), *SETTINGS)
    settings = GatewaySettings(host, int(port), username, password, bootstrap, args.gateway_id,
                               args.topic_filter, args.share_group, args.kafka_topic, args.dead_letter_topic,
                               args.metrics_interval, args.workers)
    context = mp.get_context("fork")
    ready = context.Semaphore(0)
    workers = [context.Process(target=run_worker, args=(settings, i, ready), name=f"gateway-{i}")
               for i in range(args.workers)]
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
    if subscribed == args.workers and args.ready_file:
        args.ready_file.write_text(f"{os.getpid()}\n")
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
        if args.ready_file:
            args.ready_file.unlink(missing_ok=True)
    return 0 if all(w.exitcode == 0 for w in workers) and stopping.is_set() else 1


if __name__ == "__main__":
    sys.exit(main())
