"""Small helpers the lab notebooks share, so each notebook stays a short story around real calls.

Everything here talks to the real local stack through the connection settings (`.stack/connection.env`, or the
environment), the same way the project's own modules do.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pandas as pd

from runtime import kafka as kafka_tools
from runtime.settings import CONNECTION_VARIABLES, REPO_ROOT, connection_settings
from runtime.waiting import wait_until
from sql.client import cursor, query
from stack.config import load_config

SECRET_VARIABLES = {"MQTT_PASSWORD", "MODEL_ACCESS_KEY"}


def sh(command: str, check: bool = True) -> None:
    """Run a shell-style command from the repository root, with this kernel's Python for `python`, and print
    its output. A failure raises (so a notebook run stops there), unless check=False."""
    args = shlex.split(command)
    if args[0] == "python":
        args[0] = sys.executable
    print(f"$ {command}", flush=True)
    result = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True)
    output = (result.stdout + result.stderr).rstrip()
    print(output, flush=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"`{command}` exited with {result.returncode}")


def settings() -> dict[str, str]:
    """The connection settings every part of the project reads."""
    return connection_settings()


def show_settings() -> None:
    """Print the connection settings, secrets masked."""
    values = settings()
    for name in CONNECTION_VARIABLES:
        value = values.get(name, "(not set)")
        print(f"{name:<17} {'********' if name in SECRET_VARIABLES and name in values else value}")


def tail_log(service: str, lines: int = 5, contains: str = "") -> None:
    """The last lines of a stack service's log (only lines containing `contains`, if given)."""
    log = load_config().logs_dir / f"{service}.log"
    kept = [line for line in log.read_text(errors="replace").splitlines() if contains in line]
    print(f"{log} (last {lines}{f' lines with {contains!r}' if contains else ''}):")
    print("\n".join(kept[-lines:]))


def mqtt_client(client_id: str) -> mqtt.Client:
    values = settings()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    client.username_pw_set(values["MQTT_USERNAME"], values["MQTT_PASSWORD"])
    client.connect(values["MQTT_HOST"], int(values["MQTT_PORT"]))
    client.loop_start()
    return client


class MqttWatcher:
    """Subscribe to a topic filter in the background and keep what arrives: `with MqttWatcher("iot/#") as w:`."""

    def __init__(self, topic_filter: str):
        self.topic_filter, self.messages = topic_filter, []
        self.subscribed = threading.Event()

    def __enter__(self) -> MqttWatcher:
        self.client = mqtt_client(f"lab-watcher-{time.time_ns()}")
        self.client.on_message = lambda _c, _u, message: self.messages.append((message.topic, message.payload))
        self.client.on_subscribe = lambda *_args: self.subscribed.set()
        self.client.subscribe(self.topic_filter, qos=1)
        if not self.subscribed.wait(10):
            raise TimeoutError(f"the broker did not confirm the subscription to {self.topic_filter}")
        return self

    def __exit__(self, *_exc) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def publish(topic: str, payload: bytes | str) -> None:
    """Publish one message (QoS 1) and wait for the broker's acknowledgement."""
    client = mqtt_client(f"lab-publisher-{time.time_ns()}")
    try:
        client.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def end_offsets(topic: str) -> dict[int, int]:
    """Partition -> end offset (the offset the next record will get)."""
    return kafka_tools.end_offsets(settings()["KAFKA_BOOTSTRAP"], topic)


def read_records(topic: str, since: dict[int, int], wanted: int, keep: Callable = lambda _r: True,
                 timeout_s: float = 60) -> list:
    """Records of `topic` after the offsets `since`, until `wanted` kept ones arrived (or the time is up)."""
    return kafka_tools.records_since(settings()["KAFKA_BOOTSTRAP"], topic, since, wanted, keep, timeout_s)


def records_table(records: list) -> pd.DataFrame:
    """Kafka records as a table: partition, offset, key, headers and the JSON value's fields."""
    rows = []
    for record in records:
        try:
            value = json.loads(record.value)
        except ValueError:
            value = {"raw value": record.value}
        rows.append({"partition": record.partition, "offset": record.offset,
                     "key": record.key.decode() if record.key else None,
                     **{f"header {k}": v.decode(errors="replace") for k, v in record.headers},
                     **(value if isinstance(value, dict) else {"value": value})})
    return pd.DataFrame(rows)


def sql(statement: str) -> pd.DataFrame:
    """A SQL statement through impyla (the local Spark Thrift Server, or Impala), as a table."""
    values = settings()
    with cursor(values.get("SQL_HOST"), values.get("SQL_PORT")) as cur:
        cur.execute(statement.strip().rstrip(";"))
        return pd.DataFrame(cur.fetchall(), columns=[column[0] for column in cur.description])


def wait_for(what: str, done: Callable[[], object], timeout_s: float = 180) -> None:
    """Poll `done()` until it returns something true (`runtime.waiting.wait_until`); say how long it took."""
    started = time.monotonic()
    wait_until(done, timeout_s, what)
    print(f"{what}: after {time.monotonic() - started:.1f} s")


def rows_in_kudu() -> int:
    values = settings()
    return query("select count(*) from sensors", values.get("SQL_HOST"), values.get("SQL_PORT"))[0][0]


def sql_file(name: str) -> str:
    """The text of one of the project's `.sql` files (`sql/<name>`)."""
    return (Path(REPO_ROOT) / "sql" / name).read_text()
