"""The streaming job's options, every one checked before Spark starts.

Both the job (streaming/kafka_to_kudu.py) and its launcher (`python -m streaming`, before it starts spark-submit)
parse them here, so a typo fails in a second, not after the JVM is up: this module does not import pyspark. A bad
value exits with status 2 and an argparse error naming the option and the value, e.g.
`kafka_to_kudu.py: error: argument --trigger-seconds: '0' is out of range: between 0.001 and 86400`.
Defaults taken from the environment (KAFKA_BOOTSTRAP, KUDU_MASTER, MODEL_URL, STREAMING_CHECKPOINT) are checked
the same way.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from contract import MAX_NESTING, MAX_PAYLOAD_BYTES
from model.client import SCORERS
from runtime.metrics import DEFAULT_METRICS_HOST, port_number
from runtime.settings import (
    ALERTS_KUDU_TABLE,
    ALERTS_TOPIC,
    DEAD_LETTER_TOPIC,
    EDGE_VERDICTS_KUDU_TABLE,
    IOT_TOPIC,
    KUDU_TABLE,
    SCORED_TOPIC,
    VERDICTS_TOPIC,
    connection_settings,
)
from streaming.alerts import DEFAULT_NEEDED, DEFAULT_WINDOW

# The first line of the job's docstring (tests/test_streaming_job.py keeps them equal).
DESCRIPTION = ("Lab 9: score every reading of Kafka topic `iot` with the model server and write it into Kudu "
               "`sensors`.")
DEFAULT_CHECKPOINT = ".stack/data/checkpoints/kafka_to_kudu"
MAX_OFFSETS_PER_TRIGGER = 50_000  # records a micro-batch at most, by default: bench/README.md says why

# Kafka's rule for topic names (kafka.common.internals.Topic): at most 249 of these characters, not "." or "..".
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_KAFKA_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Kafka client settings a --kafka-option must not set: the job sets them itself, or Spark's Kafka source and sink
# refuse them (KafkaSourceProvider), which would fail only once the query starts.
_KAFKA_KEYS_REFUSED = {
    "bootstrap.servers": "use --bootstrap-servers",
    "acks": "the job's dead letters are always written with acks=all",
    "enable.idempotence": "the job's dead letters are always written with enable.idempotence=true",
    "auto.offset.reset": "the job reads from the earliest offset on its first run, then from its checkpoint",
    "enable.auto.commit": "Spark keeps the offsets in the checkpoint, it commits none to Kafka",
    "key.deserializer": "Spark reads keys and values as bytes",
    "value.deserializer": "Spark reads keys and values as bytes",
    "key.serializer": "Spark writes keys and values as bytes",
    "value.serializer": "Spark writes keys and values as bytes",
    "interceptor.classes": "Spark's Kafka source does not support interceptors",
}


def _number(kind: type, low: float, high: float = math.inf) -> Callable[[str], float]:
    """An argparse type: an int or a float within [low, high]."""
    noun = "an integer" if kind is int else "a number"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not (math.isfinite(value) and low <= value <= high):
            bounds = f"at least {low:g}" if high == math.inf else f"between {low:g} and {high:g}"
            raise argparse.ArgumentTypeError(f"{text!r} is out of range: {bounds}")
        return value

    return parse


def _text(what: str) -> Callable[[str], str]:
    """An argparse type: a non-empty string without surrounding whitespace."""
    def parse(text: str) -> str:
        if not text or text != text.strip():
            raise argparse.ArgumentTypeError(f"{text!r}: {what} must be non-empty, without surrounding spaces")
        return text

    return parse


def topic(text: str) -> str:
    """A Kafka topic name, as Kafka allows them."""
    if not _TOPIC.fullmatch(text) or text in (".", ".."):
        raise argparse.ArgumentTypeError(f"{text!r} is not a Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -, "
                                         "not '.' or '..')")
    return text


def host_ports(text: str) -> str:
    """A comma-separated list of host:port (the form of Kafka's bootstrap servers and Kudu's masters)."""
    addresses = text.split(",")
    for address in addresses:
        host, sep, port = address.strip().rpartition(":")
        if not sep or not host or any(c.isspace() for c in host) or not port.isdigit() \
                or not 1 <= int(port) <= 65535:
            raise argparse.ArgumentTypeError(f"{text!r}: {address.strip()!r} is not host:port (port 1 to 65535); "
                                             "give one or more, comma-separated")
    return text


def model_url(text: str) -> str:
    """The model server's base URL: http(s)://host[:port][/path], without a trailing slash."""
    try:
        parts = urlsplit(text)
        port_ok = parts.port is None or parts.port > 0  # .port raises ValueError beyond 65535
    except ValueError:
        parts, port_ok = None, False
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or not port_ok \
            or parts.query or parts.fragment:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http(s)://host[:port] URL")
    return text.rstrip("/")


def kafka_option(text: str) -> tuple[str, str]:
    """A Kafka client setting KEY=VALUE (the value may be empty, or hold more `=`)."""
    key, sep, value = text.partition("=")
    if not sep or not _KAFKA_KEY.fullmatch(key):
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (a Kafka client setting such as "
                                         "security.protocol=SASL_SSL)")
    refused = _KAFKA_KEYS_REFUSED.get(key.lower())
    if refused:
        raise argparse.ArgumentTypeError(f"{text!r}: {key} cannot be set: {refused}")
    return key, value


# Where the job's services are: no built-in address, the connection settings say (or the command line).
REQUIRED_SETTINGS = (("--bootstrap-servers", "KAFKA_BOOTSTRAP"), ("--kudu-master", "KUDU_MASTER"),
                     ("--model-url", "MODEL_URL"))


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kafka_to_kudu.py", description=DESCRIPTION)
    add = parser.add_argument
    add("--bootstrap-servers", type=host_ports, default=env.get("KAFKA_BOOTSTRAP"),
        help="Kafka's bootstrap servers, host:port[,host:port...] (default: KAFKA_BOOTSTRAP)")
    add("--topic", type=topic, default=IOT_TOPIC, help=f"the Kafka topic of readings (default {IOT_TOPIC})")
    add("--dead-letter-topic", type=topic, default=DEAD_LETTER_TOPIC,
        help=f"where records that are not readings, and conflicts, go (default {DEAD_LETTER_TOPIC})")
    add("--kudu-master", type=host_ports, default=env.get("KUDU_MASTER"),
        help="Kudu's masters, host:port[,host:port...] (default: KUDU_MASTER)")
    add("--kudu-table", type=_text("the Kudu table"), default=KUDU_TABLE, help=f"(default {KUDU_TABLE})")
    add("--model-url", type=model_url, default=env.get("MODEL_URL"),
        help="the model server (default: MODEL_URL)")
    add("--scoring", choices=sorted(SCORERS), default="batch",
        help="batch: one model call per partition batch (default); per-record: the workshop's one call per "
             "reading, kept as the benchmark's baseline")
    add("--trigger-seconds", type=_number(float, 0.001, 86_400), default=1.0,
        help="micro-batch interval (default 1 s)")
    add("--max-offsets-per-trigger", type=_number(int, 1), default=MAX_OFFSETS_PER_TRIGGER,
        help=f"upper bound of records per micro-batch (default {MAX_OFFSETS_PER_TRIGGER:,}: as cheap per record as "
             "larger batches, measured in bench/README.md, and a quarter of the memory and replay)")
    add("--checkpoint", type=_text("the checkpoint"), default=env.get("STREAMING_CHECKPOINT", DEFAULT_CHECKPOINT))
    add("--kafka-option", type=kafka_option, action="append", default=[], metavar="KEY=VALUE",
        help="a Kafka client setting for the source and the dead-letter sink, repeatable: e.g. "
             "security.protocol=SASL_SSL (see docs/cluster.md)")
    add("--fail-on-data-loss", action=argparse.BooleanOptionalAction, default=True,
        help="stop (exit 3) if Kafka deleted offsets the checkpoint wants (default); "
             "--no-fail-on-data-loss logs it and goes on from what is left")
    add("--max-payload-bytes", type=_number(int, 1), default=MAX_PAYLOAD_BYTES,
        help=f"larger records are dead-lettered (default {MAX_PAYLOAD_BYTES:,})")
    add("--max-nesting", type=_number(int, 1), default=MAX_NESTING,
        help=f"records nested deeper are dead-lettered (default {MAX_NESTING})")
    add("--restart-delay-seconds", type=_number(float, 0.001, 3600), default=1.0,
        help="first pause before retrying after a failure; it doubles up to --max-backoff-seconds")
    add("--max-backoff-seconds", type=_number(float, 0.001, 3600), default=30.0,
        help="longest pause between retries while a dependency is away (default 30 s)")
    add("--stuck-batch-seconds", type=_number(float, 1, 7 * 86_400), default=300.0,
        help="a batch running this long without waiting on anything makes the job degraded; "
             "twice as long, the job exits (exit 4) to be restarted from its checkpoint")
    add("--health-file", type=lambda text: Path(_text("the health file")(text)),
        help="where to write the job's state every 2 s")
    add("--scored-topic", type=topic, default=SCORED_TOPIC,
        help=f"where each scored reading goes once Kudu has it, for the alerts and the dashboard (default "
             f"{SCORED_TOPIC})")
    add("--alerts", action=argparse.BooleanOptionalAction, default=True,
        help="run the alerts query: iot.scored -> per-machine state -> Kafka --alerts-topic and Kudu "
             "--alerts-kudu-table (default); --no-alerts for a job that only scores")
    add("--alerts-topic", type=topic, default=ALERTS_TOPIC, help=f"(default {ALERTS_TOPIC})")
    add("--alerts-kudu-table", type=_text("the alerts' Kudu table"), default=ALERTS_KUDU_TABLE,
        help=f"(default {ALERTS_KUDU_TABLE})")
    add("--alerts-checkpoint", type=_text("the alerts' checkpoint"),
        help="the alerts query's checkpoint, with the machines' state (default: the checkpoint's path + -alerts)")
    add("--alert-window", type=_number(int, 1, 1000), default=DEFAULT_WINDOW,
        help=f"n: a machine's state changes when k of its last n verdicts disagree with it (default {DEFAULT_WINDOW})")
    add("--alert-needed", type=_number(int, 1, 1000), default=DEFAULT_NEEDED,
        help=f"k, more than half of n (default {DEFAULT_NEEDED})")
    add("--verdicts", action=argparse.BooleanOptionalAction, default=True,
        help="run the verdicts query: the edge agents' verdicts of --verdicts-topic into Kudu "
             "--edge-verdicts-kudu-table (default); --no-verdicts to leave it out")
    add("--verdicts-topic", type=topic, default=VERDICTS_TOPIC, help=f"(default {VERDICTS_TOPIC})")
    add("--edge-verdicts-kudu-table", type=_text("the edge verdicts' Kudu table"), default=EDGE_VERDICTS_KUDU_TABLE,
        help=f"(default {EDGE_VERDICTS_KUDU_TABLE})")
    add("--verdicts-checkpoint", type=_text("the verdicts' checkpoint"),
        help="the verdicts query's checkpoint (default: the checkpoint's path + -verdicts)")
    add("--metrics-host", type=_text("the metrics host"), default=DEFAULT_METRICS_HOST,
        help=f"address of the Prometheus endpoint (default {DEFAULT_METRICS_HOST})")
    add("--metrics-port", type=port_number, default=env.get("STREAMING_METRICS_PORT") or "0",
        help="serve Prometheus metrics at http://<metrics-host>:<port>/metrics (default: STREAMING_METRICS_PORT, "
             "else none)")
    return parser


def parse_args(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> argparse.Namespace:
    """The job's options from `argv` (default: the command line), defaults from `env` (default: the environment
    and the connection settings, `runtime.settings.connection_settings`); SystemExit(2) with an error naming the
    option and the value if any is wrong or missing."""
    parser = build_parser({**os.environ, **connection_settings()} if env is None else env)
    args = parser.parse_args(argv)
    for option, variable in REQUIRED_SETTINGS:
        if getattr(args, option.lstrip("-").replace("-", "_")) is None:
            parser.error(f"argument {option}: not given, and {variable} is not set: run `make up` (writes "
                         f".stack/connection.env), export {variable} or pass {option}")
    if args.topic == args.dead_letter_topic:
        parser.error(f"argument --dead-letter-topic: {args.dead_letter_topic!r} is the topic the job reads "
                     "(--topic): its dead letters would come back to it")
    if args.max_backoff_seconds < args.restart_delay_seconds:
        parser.error(f"argument --max-backoff-seconds: {args.max_backoff_seconds:g} is less than "
                     f"--restart-delay-seconds {args.restart_delay_seconds:g}")
    if 2 * args.alert_needed <= args.alert_window or args.alert_needed > args.alert_window:
        parser.error(f"argument --alert-needed: {args.alert_needed} of --alert-window {args.alert_window}: k must "
                     "be more than half of n, and at most n")
    topics = [args.topic, args.dead_letter_topic, args.scored_topic, args.alerts_topic, args.verdicts_topic]
    if len(set(topics)) < len(topics):
        parser.error(f"the topics must differ: --topic {args.topic}, --dead-letter-topic {args.dead_letter_topic}, "
                     f"--scored-topic {args.scored_topic}, --alerts-topic {args.alerts_topic}, "
                     f"--verdicts-topic {args.verdicts_topic}")
    args.alerts_checkpoint = args.alerts_checkpoint or args.checkpoint.rstrip("/") + "-alerts"
    args.verdicts_checkpoint = args.verdicts_checkpoint or args.checkpoint.rstrip("/") + "-verdicts"
    keys = [key.lower() for key, _ in args.kafka_option]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        parser.error(f"argument --kafka-option: {', '.join(repeated)} given more than once")
    return args


def kafka_options(args: argparse.Namespace) -> dict[str, str]:
    """The Kafka client settings: the bootstrap servers and every --kafka-option, prefixed `kafka.` for Spark."""
    return {"kafka.bootstrap.servers": args.bootstrap_servers,
            **{f"kafka.{key}": value for key, value in args.kafka_option}}
