"""`python -m edge`: one edge agent, for one edge site. See edge/__init__.py (or edge/README.md) for what it does.

Usage:
    python -m edge                                   # agent edge-1 ($EDGE_AGENT_ID), readings iot/#
    python -m edge --agent-id plant-7 --readings-filter 'iot/7/#' --health-file /run/edge.health
    python -m edge --max-download-rate 500000        # a metered link: model downloads at most 500 kB/s

Settings from the environment or .stack/connection.env: MQTT_HOST, MQTT_PORT, MQTT_USERNAME, MQTT_PASSWORD,
MODEL_ACCESS_KEY (the model server's key, to download models; without it jobs fail and the current model keeps
scoring), MODEL_URL (the model server: the key is sent there only; a job whose artifact_url is elsewhere fails).
Stop it with SIGTERM or Ctrl-C: a download in progress resumes at the next start.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from prometheus_client import CollectorRegistry

from contract import AGENT_ID_PATTERN
from edge.agent import AgentConfig, EdgeAgent, MqttLogHandler, Redacting
from runtime.health import HealthReporter
from runtime.metrics import DEFAULT_METRICS_HOST, port_number, start_metrics_server
from runtime.settings import MQTT_TOPIC_FILTER, connection_settings, require, stack_dir

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"
log = logging.getLogger("edge")


def agent_id(text: str) -> str:
    """argparse type: an agent id names MQTT topic levels (contract.AGENT_ID_PATTERN)."""
    if not AGENT_ID_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(f"agent id {text!r} must match {AGENT_ID_PATTERN.pattern} "
                                         "(letters, digits, '.', '_', '-'; 1 to 64 characters)")
    return text


def topic_filter(text: str) -> str:
    """argparse type: an MQTT topic filter ('+' a whole level, '#' only as the last level)."""
    levels = text.split("/")
    bad = (not text or "\0" in text or len(text.encode()) > 65535
           or any(("+" in level and level != "+") or ("#" in level and level != "#") for level in levels)
           or "#" in levels[:-1])
    if bad:
        raise argparse.ArgumentTypeError(f"{text!r} is not an MQTT topic filter ('+' stands for a whole level, "
                                         "'#' only for the last one, e.g. iot/# or iot/+)")
    return text


def download_rate(text: str) -> int:
    """argparse type: bytes per second, > 0."""
    if not text.isascii() or not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate in bytes per second (a whole number > 0)")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m edge", description="An edge agent: installs the model jobs "
                                     "sent to it and scores its site's readings with ONNX Runtime.",
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agent-id", type=agent_id, default=os.environ.get("EDGE_AGENT_ID") or "edge-1",
                        help="this agent's id: its topics are jobs/<id>/model, jobs/<id>/status, logs/<id> "
                             "(default $EDGE_AGENT_ID, else edge-1)")
    parser.add_argument("--state-dir", type=Path,
                        help="where it keeps state.json, its model and partial downloads "
                             "(default <stack dir>/edge/<agent id>)")
    parser.add_argument("--readings-filter", type=topic_filter, default=MQTT_TOPIC_FILTER,
                        help=f"the MQTT topics of this site's readings (default {MQTT_TOPIC_FILTER})")
    parser.add_argument("--health-file", type=Path, help="where to write the agent's state every 2 s")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--max-download-rate", type=download_rate, metavar="BYTES_PER_S",
                        help="cap model downloads at this many bytes per second (default: no cap)")
    parser.add_argument("--metrics-port", type=port_number, metavar="PORT",
                        default=os.environ.get("EDGE_METRICS_PORT") or "0",
                        help="serve Prometheus metrics at http://HOST:PORT/metrics (default $EDGE_METRICS_PORT, "
                             "else 0: no endpoint)")
    parser.add_argument("--metrics-host", default=DEFAULT_METRICS_HOST, metavar="HOST",
                        help=f"address of the metrics endpoint (default {DEFAULT_METRICS_HOST})")
    return parser


def setup_logging(level: str, agent: EdgeAgent, secrets: tuple[str, ...]) -> None:
    """Log lines to stderr and to MQTT logs/<agent_id>, with the secrets redacted from both."""
    formatter = Redacting(LOG_FORMAT, secrets)
    root = logging.getLogger()
    root.setLevel(level)
    for handler in (logging.StreamHandler(sys.stderr), MqttLogHandler(agent.client, agent.agent_id)):
        handler.setFormatter(formatter)
        root.addHandler(handler)
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = connection_settings()
    require(settings, "MQTT_HOST", "MQTT_PORT")
    state_dir = args.state_dir or stack_dir() / "edge" / args.agent_id
    config = AgentConfig(args.agent_id, state_dir, args.readings_filter, settings.get("MODEL_ACCESS_KEY"),
                         settings.get("MODEL_URL"), args.max_download_rate)
    agent = EdgeAgent(settings, config)
    setup_logging(args.log_level, agent, (settings.get("MODEL_ACCESS_KEY", ""), settings.get("MQTT_PASSWORD", "")))
    if not config.access_key:
        log.warning("MODEL_ACCESS_KEY is not set: this agent cannot download models (its jobs will fail)")
    elif not config.model_url:
        log.warning("MODEL_URL is not set: the access key goes to whichever server a job's artifact_url names")
    metrics = None
    if args.metrics_port:
        from edge.metrics import EdgeMetrics

        registry = CollectorRegistry()
        registry.register(EdgeMetrics(agent))
        try:
            metrics = start_metrics_server(args.metrics_port, args.metrics_host, registry)
        except OSError as exc:
            raise SystemExit(f"error: cannot serve metrics on {args.metrics_host}:{args.metrics_port}: {exc}") from None
        log.info("Prometheus metrics at %s", metrics.url)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    log.info("agent %s: state in %s, readings %s", args.agent_id, state_dir, args.readings_filter)
    agent.start()
    health = HealthReporter(args.health_file, agent.health).start()
    try:
        while not stop.wait(1.0):  # a timeout, so that the signal handlers get their turn promptly
            pass
    finally:
        log.info("stopping")
        agent.stop()
        health.stop()
        if metrics:
            metrics.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
