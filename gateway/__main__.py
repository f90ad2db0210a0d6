"""Labs 4-6: the gateway. Bridges MQTT `iot/#` into Kafka topic `iot`, and the edge agents' verdicts of MQTT
`verdicts/#` into `iot.verdicts`; bad payloads go to `iot.dlq`. And back: forwards the alerts of Kafka `iot.alerts`
to MQTT `alerts/<sensor_id>`, retained.

Usage:
    python -m gateway                       # settings from the environment or .stack/connection.env
    python -m gateway --workers 2 --gateway-id edge-1   # faster; see the note on order
    python -m gateway --no-alerts --no-verdicts         # readings only

Each worker is a process with its own MQTT v5 persistent session (client id `<gateway-id>-<n>`), so the broker
keeps its messages while it is down. A message is acknowledged over MQTT only after Kafka acknowledged it.

Workers: one (the default) holds plain subscriptions and keeps each machine's readings in order into Kafka.
Several share them (`$share/<group>/iot/#`, `$share/<group>/verdicts/#`): faster, but the broker hands
consecutive readings of one machine to different workers, so their order in Kafka may differ from the order sent
(nothing is lost or duplicated by that; the Kudu keys make order moot there). The broker also keeps handing
messages to a departed worker's session until it expires (7 days): run the same number of workers after a restart.

Every payload becomes a reading (Kafka `iot`), an edge verdict (a message on a topic of `--verdicts-filter`:
`contract.parse_verdict`, to `--verdicts-topic`, key = sensor_id) or a dead letter (`iot.dlq`, with the reason):
payloads larger than `--max-payload-bytes` or nested deeper than `--max-nesting` included. `--no-verdicts` drops
the verdicts subscription. While Kafka is away the gateway acknowledges nothing and waits; it resumes by itself.
`--health-file` gets the gateway's state every 2 s (up, starting, or degraded with what it waits on), which
`make status` shows.

Alerts, the other direction: one forwarder per gateway, whatever the number of workers, reads Kafka
`--alerts-topic` as consumer group `--alerts-group` (isolation read_committed: an aborted transaction's alerts
never arrive) and publishes each alert on MQTT `alerts/<sensor_id>`, QoS 1, retained (the machine's latest state),
committing its offset only once the broker acknowledged it; a record that is not an alert goes to the dead-letter
topic with the reason. The gateway is up only while both directions work. `--no-alerts` turns the forwarder off.

Metrics every `--metrics-interval` seconds and at exit: received, produced, verdicts, dead-lettered, in flight, rate.
With `--metrics-port PORT` (or GATEWAY_METRICS_PORT) the gateway also serves them to Prometheus at
http://127.0.0.1:PORT/metrics (`--metrics-host` to listen elsewhere), summed over its workers:
iot_gateway_received_total, iot_gateway_produced_total, iot_gateway_verdicts_total{outcome},
iot_gateway_dead_lettered_total{reason}, iot_gateway_in_flight, iot_gateway_kafka_ack_latency_seconds{outcome},
iot_gateway_alerts_forwarded_total, iot_gateway_alerts_dead_lettered_total (see gateway/metrics.py).
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

from prometheus_client import CollectorRegistry

from contract import MAX_NESTING, MAX_PAYLOAD_BYTES
from gateway.alerts import DEFAULT_GROUP, AlertForwarder
from gateway.bridge import GatewaySettings, GatewayWorker
from gateway.metrics import AlertMetrics, GatewayMetrics
from runtime.health import STALE_AFTER_S, Health, HealthReporter
from runtime.metrics import DEFAULT_METRICS_HOST, port_number, start_metrics_server
from runtime.settings import (
    ALERTS_TOPIC,
    DEAD_LETTER_TOPIC,
    IOT_TOPIC,
    MQTT_ALERTS_PREFIX,
    MQTT_TOPIC_FILTER,
    MQTT_VERDICTS_FILTER,
    VERDICTS_TOPIC,
    connection_settings,
    require,
)

SETTINGS = ("MQTT_HOST", "MQTT_PORT", "MQTT_USERNAME", "MQTT_PASSWORD", "KAFKA_BOOTSTRAP")  # what it reads


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gateway",
                                     description="Bridge MQTT readings and edge verdicts into Kafka, and Kafka "
                                                 "alerts back to MQTT.",
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
    parser.add_argument("--metrics-port", type=port_number, metavar="PORT",
                        default=os.environ.get("GATEWAY_METRICS_PORT") or "0",
                        help="serve Prometheus metrics at http://HOST:PORT/metrics, summed over the workers "
                             "(default $GATEWAY_METRICS_PORT, else 0: no endpoint)")
    parser.add_argument("--metrics-host", default=DEFAULT_METRICS_HOST, metavar="HOST",
                        help=f"address of the metrics endpoint (default {DEFAULT_METRICS_HOST}: this host only)")
    parser.add_argument("--alerts-topic", default=ALERTS_TOPIC,
                        help=f"Kafka topic of alerts to forward to MQTT {MQTT_ALERTS_PREFIX}/<sensor_id> "
                             f"(default {ALERTS_TOPIC})")
    parser.add_argument("--alerts-group", default=DEFAULT_GROUP,
                        help=f"Kafka consumer group of the alerts forwarder (default {DEFAULT_GROUP})")
    parser.add_argument("--no-alerts", action="store_true",
                        help="do not forward alerts (then the gateway is up while it bridges readings alone)")
    parser.add_argument("--verdicts-filter", default=MQTT_VERDICTS_FILTER,
                        help=f"MQTT topics of the edge agents' verdicts (default {MQTT_VERDICTS_FILTER})")
    parser.add_argument("--verdicts-topic", default=VERDICTS_TOPIC,
                        help=f"Kafka topic of the verdicts (default {VERDICTS_TOPIC})")
    parser.add_argument("--no-verdicts", action="store_true",
                        help="do not bridge verdicts (no subscription to --verdicts-filter)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options; an argparse error (exit 2) if verdicts would meet readings or dead letters on the way."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.no_verdicts and args.verdicts_filter == args.topic_filter:
        parser.error(f"argument --verdicts-filter: {args.verdicts_filter!r} is the readings' --topic-filter")
    if not args.no_verdicts and args.verdicts_topic in (args.kafka_topic, args.dead_letter_topic):
        parser.error(f"argument --verdicts-topic: {args.verdicts_topic!r} is the --kafka-topic or the "
                     "--dead-letter-topic")
    return args


def run_worker(settings: GatewaySettings, index: int, ready, reports) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    worker = GatewayWorker(settings, index, on_ready=lambda: ready.release())
    if reports is None:
        worker.run(stop)
    else:  # once a second: the health report and everything counted so far (the parent's metrics)
        worker.run(stop, report=lambda health: reports.put((index, health, worker.counters.snapshot())))
    sys.exit(1 if worker.failed else 0)


class WorkerReports:
    """The latest health report and counters of each worker: combined into the gateway's health, summed into its
    metrics. `collect()` takes what the workers sent; the main loop calls it every half second or so (a queue left
    unread would fill its pipe, and a worker cannot exit before its queue is flushed into the pipe), the health
    reporter and the metrics endpoint before they read."""

    def __init__(self, reports, workers: int):
        self.reports = reports
        self.latest: dict[int, tuple[float, Health]] = {}
        self.counters: dict[int, dict] = {}  # each worker's latest Counters.snapshot()
        self.workers = workers
        self._lock = threading.Lock()  # the main loop, the health reporter and the scrapes all collect

    def collect(self) -> None:
        if self.reports is None:
            return
        with self._lock:
            while True:
                try:
                    index, health, counters = self.reports.get_nowait()
                except queue.Empty:
                    return
                self.latest[index] = (time.monotonic(), health)
                self.counters[index] = counters

    def snapshots(self) -> list[dict]:
        """Each worker's latest counters (what gateway.metrics.GatewayMetrics sums)."""
        self.collect()
        return list(self.counters.values())

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


def gateway_health(bridge: Health, alerts: Health | None) -> Health:
    """Both directions in one report: up only while both are up; else degraded, naming all it waits on, or
    starting. `alerts` None: no forwarder, the bridge's report as it is."""
    if alerts is None:
        return bridge
    counters = bridge.counters | alerts.counters
    for state in ("degraded", "starting"):
        held = [report for report in (bridge, alerts) if report.state == state]
        if held:
            waiting_on = {name for report in held if report.waiting_on for name in report.waiting_on.split(",")}
            return Health(state, "; ".join(report.detail for report in held), ",".join(sorted(waiting_on)) or None,
                          counters=counters)
    return Health("up", f"{bridge.detail}; {alerts.detail}", counters=counters)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    host, port, username, password, bootstrap = require(connection_settings(), *SETTINGS)
    settings = GatewaySettings(host, int(port), username, password, bootstrap, args.gateway_id,
                               args.topic_filter, args.share_group, args.kafka_topic, args.dead_letter_topic,
                               args.metrics_interval, args.workers, max_payload_bytes=args.max_payload_bytes,
                               max_nesting=args.max_nesting, verdicts_filter=args.verdicts_filter,
                               verdicts_topic=args.verdicts_topic, verdicts=not args.no_verdicts)
    context = mp.get_context("fork")
    # Workers report only when someone wants the reports (a health file, a metrics endpoint), and the parent then
    # reads them all the time (`worker_reports.collect()` below): unread, they would fill the pipe, and a process
    # cannot exit until its queue is flushed into the pipe, so stopping would hang (Python's multiprocessing
    # "joining processes that use queues").
    wanted = args.health_file or args.metrics_port
    ready, reports = context.Semaphore(0), context.Queue() if wanted else None
    workers = [context.Process(target=run_worker, args=(settings, i, ready, reports), name=f"gateway-{i}")
               for i in range(args.workers)]
    worker_reports = WorkerReports(reports, args.workers)
    forwarder = None if args.no_alerts else AlertForwarder(settings, args.alerts_topic, args.alerts_group)
    metrics = None
    if args.metrics_port:  # before the workers start: a port in use stops the gateway before it takes any message
        registry = CollectorRegistry()
        registry.register(GatewayMetrics(worker_reports.snapshots))
        if forwarder:
            registry.register(AlertMetrics(forwarder.counts))
        try:
            metrics = start_metrics_server(args.metrics_port, args.metrics_host, registry)
        except OSError as exc:
            raise SystemExit(f"error: cannot serve metrics on {args.metrics_host}:{args.metrics_port}: {exc}") from None
        logging.getLogger("gateway").info("Prometheus metrics at %s", metrics.url)
    health = HealthReporter(args.health_file, lambda: gateway_health(worker_reports.combined(),
                                                                     forwarder and forwarder.health())).start()
    for worker in workers:
        worker.start()
    stopping = threading.Event()
    if forwarder:  # once the workers are forked: a child gets no copy of its threads, or of the locks they hold
        forwarder.start(stopping)

    def all_alive() -> bool:
        return all(w.is_alive() for w in workers) and (forwarder is None or forwarder.is_alive())

    def stop_workers(*_):
        stopping.set()
        for worker in workers:
            if worker.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop_workers)
    signal.signal(signal.SIGINT, stop_workers)
    subscribed = 0
    while subscribed < args.workers and all_alive():
        subscribed += ready.acquire(timeout=0.5)
        worker_reports.collect()
    logging.getLogger("gateway").info("%d worker(s) subscribed to %s", subscribed,
                                      " and ".join(settings.subscriptions()[0]))
    try:
        # One worker failing stops the gateway: its unacknowledged messages go back to the broker's queue. So does
        # the alerts forwarder failing: its uncommitted alerts are read again when the supervisor restarts it.
        while all_alive() and not stopping.is_set():
            for worker in workers:
                worker.join(timeout=0.5)
            worker_reports.collect()
    finally:
        stop_workers()
        for worker in workers:
            deadline = time.monotonic() + 90
            while worker.is_alive() and time.monotonic() < deadline:
                worker.join(timeout=0.5)
                worker_reports.collect()  # a worker exits only once its last reports are in the pipe
        if forwarder:
            forwarder.join(timeout_s=30)
        health.stop()
        if metrics:
            metrics.close()
    forwarder_ok = forwarder is None or not (forwarder.failed or forwarder.is_alive())
    return 0 if all(w.exitcode == 0 for w in workers) and forwarder_ok and stopping.is_set() else 1


if __name__ == "__main__":
    sys.exit(main())
