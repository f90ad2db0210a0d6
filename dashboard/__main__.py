"""The live dashboard: the pipeline's flow, the fleet's verdicts, one machine's sensors and the alerts, in a browser.

Usage:
    python -m dashboard                     # http://127.0.0.1:5006/ (started by `make up` as service `dashboard`)
    python -m dashboard --port 5007

Reads the connection settings (the environment, else .stack/connection.env, as `make up` writes it):
KAFKA_BOOTSTRAP (required: Kafka `iot.scored`, `iot.alerts`, and `iot`'s end offsets), GATEWAY_METRICS_URL,
STREAMING_METRICS_URL, MODEL_METRICS_URL (Prometheus endpoints), MODEL_URL and MODEL_ACCESS_KEY (GET /model).
A source that is missing or does not answer is shown as down. Websocket connections are accepted only from pages
served at http://HOST:PORT itself.
"""

from __future__ import annotations

import argparse
import logging

from dashboard.app import serve
from dashboard.feed import Feed, Sources
from runtime.settings import connection_settings

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 5006


def _port(text: str) -> int:
    """argparse type: a port number 1..65535 (the page's own origin names it, so 0, "any", will not do)."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1..65535)")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dashboard", description="Serve the live dashboard.",
                                     epilog=__doc__.split("\n\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}: this machine only)")
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # kafka-python logs every connection at INFO
    sources = Sources.from_settings(connection_settings())
    serve(Feed(sources), args.host, args.port)


if __name__ == "__main__":
    main()
