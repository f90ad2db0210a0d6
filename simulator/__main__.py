"""Lab 3: the sensor simulator. Publishes JSON readings on MQTT `<topic>/<sensor_id>`.

Usage:
    python -m simulator simulator/mqtt.iot.config                  # as the workshop ran it
    python -m simulator simulator/mqtt.iot.config --messages 10000 --interval-ms 0 --publishers 2
    python -m simulator simulator/mqtt.iot.config --fault-share 0.05  # 5% malformed, for the dead-letter path
    python -m simulator simulator/mqtt.iot.config --metrics-port 9101  # Prometheus metrics while it runs

Options given on the command line override the file's `misc` settings.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry

from runtime.metrics import DEFAULT_METRICS_HOST, port_number, start_metrics_server
from simulator.config import ConfigError, load_simulator_config
from simulator.publisher import run

DEFAULT_CONFIG = Path(__file__).resolve().parent / "mqtt.iot.config"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulator", description="Publish simulated machine readings to MQTT (lab 3).",
        epilog=(__import__("simulator.config", fromlist=["x"]).__doc__ or ""),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", type=Path, default=DEFAULT_CONFIG,
                        help=f"JSON config file (default {DEFAULT_CONFIG.name})")
    parser.add_argument("--messages", type=int, help="stop after this many messages (0 = no limit)")
    parser.add_argument("--duration-s", type=float, help="stop after this many seconds (0 = no limit)")
    parser.add_argument("--interval-ms", type=float, help="pause between messages (0 = as fast as possible)")
    parser.add_argument("--publishers", type=int, help="publishing processes (for high rates)")
    parser.add_argument("--fault-share", type=float, help="share of malformed messages, 0..1")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument("--quiet", action="store_true", help="no per-message output and no live counter")
    parser.add_argument("--run-record", type=Path, metavar="FILE",
                        help="write what was published (counts, sensor ids, time span) as JSON, for "
                             "`python -m stack audit --run FILE`")
    parser.add_argument("--metrics-port", type=port_number, metavar="PORT", default=0,
                        help="serve Prometheus metrics at http://HOST:PORT/metrics while publishing (default 0: no "
                             "endpoint): iot_simulator_published_total, iot_simulator_unacknowledged, "
                             "iot_simulator_malformed_total{kind}, summed over the publishers")
    parser.add_argument("--metrics-host", default=DEFAULT_METRICS_HOST, metavar="HOST",
                        help=f"address of the metrics endpoint (default {DEFAULT_METRICS_HOST}: this host only)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {name: getattr(args, name) for name in
                 ("messages", "duration_s", "interval_ms", "publishers", "fault_share", "seed")
                 if getattr(args, name) is not None} | ({"verbose": False} if args.quiet else {})
    try:
        cfg = load_simulator_config(args.config, overrides)
    except ConfigError as exc:
        print(f"error: {args.config}: {exc}", file=sys.stderr)
        return 2
    print(f"simulating {cfg.machine_count} machines ({cfg.degrading_share:.0%} degrading) -> "
          f"mqtt://{cfg.host}:{cfg.port} {cfg.topic}/<sensor_id>, QoS {cfg.qos}, "
          f"{'as fast as possible' if not cfg.interval_ms else f'every {cfg.interval_ms:g} ms'}", file=sys.stderr)
    registry = metrics = None
    if args.metrics_port:
        registry = CollectorRegistry()
        try:
            metrics = start_metrics_server(args.metrics_port, args.metrics_host, registry)
        except OSError as exc:
            print(f"error: cannot serve metrics on {args.metrics_host}:{args.metrics_port}: {exc}", file=sys.stderr)
            return 2
        print(f"Prometheus metrics at {metrics.url}", file=sys.stderr)
    try:
        summary = run(cfg, progress=not args.quiet, registry=registry)
    finally:
        if metrics:
            metrics.close()
    print(summary.line())
    if args.run_record:
        args.run_record.write_text(json.dumps(summary.record(cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
