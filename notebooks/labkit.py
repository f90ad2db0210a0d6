"""Small helpers the lab notebooks share, so each notebook stays a short story around real calls.

Everything here talks to the real local stack through the connection settings (`.stack/connection.env`, or the
environment), the same way the project's own modules do. From a terminal:

    python notebooks/labkit.py ready 9     # does the stack have what lab 9 needs? says what to run if not
    python notebooks/labkit.py reset 9     # put the stack in the state lab 9 expects (make lab-reset 9)
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pandas as pd
from prometheus_client.parser import text_string_to_metric_families

from runtime import kafka as kafka_tools
from runtime.settings import (
    CONNECTION_VARIABLES,
    IOT_TOPIC,
    REPO_ROOT,
    SQL_TABLE,
    connection_settings,
    stack_dir,
)
from runtime.waiting import NotReady, wait_until
from simulator.config import SimulatorConfig, load_simulator_config
from simulator.publisher import degrading_machines, publisher_fleet
from simulator.publisher import run as run_simulator
from sql.client import execute
from stack.config import load_config
from stack.launcher import ServiceStatus, Stack
from stack.process import PidRecord, is_alive, start_time_of, stop_group

SECRET_VARIABLES = {"MQTT_PASSWORD", "MODEL_ACCESS_KEY"}
SIMULATOR_CONFIG = REPO_ROOT / "simulator" / "mqtt.iot.config"
LAB9_TABLE = "lab9_sensors"
STRICT = os.environ.get("LABKIT_STRICT") == "1"  # the notebook tests: an exercise not solved fails the lab


class LabNotReady(RuntimeError):
    """What a lab needs is missing; the message says what to run."""


class PromiseBroken(AssertionError):
    """A lab's "you should see" did not happen."""


# ---- running things


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
    """Print the last lines of a stack service's log (only lines containing `contains`, if given)."""
    log = load_config().logs_dir / f"{service}.log"
    kept = [line for line in log.read_text(errors="replace").splitlines() if contains in line][-lines:]
    print(f"{log} (last {lines}{f' lines with {contains!r}' if contains else ''}):")
    print("\n".join(kept))


def wait_for(what: str, done: Callable[[], object], timeout_s: float = 180, required: bool = True) -> None:
    """Poll `done()` until it returns something true (`runtime.waiting.wait_until`); say how long it took.
    When the time is up, raise; or, with required=False, only say so (the cells after look at what happened)."""
    started = time.monotonic()
    try:
        wait_until(done, timeout_s, what)
    except NotReady:
        if required:
            raise
        print(f"{what}: not after {timeout_s:g} s")
        return
    print(f"{what}: after {time.monotonic() - started:.1f} s")


def stack() -> Stack:
    return Stack(load_config(), log=lambda *_args: None)


def stack_services() -> list[str]:
    """The services of the stack's profile (single node or cluster), the supervisor aside."""
    return [service.name for service in stack().services]


def service_states() -> dict[str, str]:
    """Service name -> state (up, starting, degraded, crashed, crash-looping, down)."""
    return {row.name: row.state for row in stack().status(with_supervisor=False)}


def service_status(name: str) -> ServiceStatus:
    """One service's row of the status table: state, pid, restarts, address, log."""
    (row,) = stack().status([name], with_supervisor=False)
    return row


@contextmanager
def service_stopped(name: str) -> Iterator[None]:
    """Stop one stack service for the `with` block; start it again afterwards, whatever happens inside."""
    sh(f"python -m stack down {name}")
    try:
        yield
    finally:
        sh(f"python -m stack up {name}")


def show_source(function: Callable) -> None:
    """Show a function's source, from the module itself, with the file it lives in."""
    from IPython.display import Code, display

    path = Path(inspect.getsourcefile(function)).relative_to(REPO_ROOT)
    _, line = inspect.getsourcelines(function)
    print(f"{path}, line {line}:")
    display(Code(inspect.getsource(function), language="python"))


# ---- the simulator, MQTT, Kafka, SQL


def simulator_config(**changes: object) -> SimulatorConfig:
    """The workshop's simulator config (`simulator/mqtt.iot.config`), with `changes` (quiet by default)."""
    config = load_simulator_config(SIMULATOR_CONFIG)
    return dataclasses.replace(config, **{"verbose": False, **changes})


def simulate_offline(config: SimulatorConfig, readings_per_machine: int) -> pd.DataFrame:
    """The readings a run with `config` would publish (the same fleets, the same seeds), without publishing them:
    one row per reading, with `reading` = its number in its machine's life and `degrading`."""
    fleets = [fleet for index in range(config.publishers) if (fleet := publisher_fleet(config, index))]
    life = pd.DataFrame([json.loads(payload) for fleet in fleets for _ in range(readings_per_machine)
                         for _, payload in fleet.next_messages(len(fleet.sensor_ids))])
    life["reading"] = life.groupby("sensor_id").cumcount()
    life["degrading"] = life.sensor_id.isin(degrading_machines(config))
    return life


def publish_readings(messages: int, **changes: object):
    """Publish `messages` readings (as fast as the broker takes them, unless `interval_ms` is given) with the
    workshop's simulator config and `changes`; returns the simulator's summary."""
    summary = run_simulator(simulator_config(**{"interval_ms": 0, "messages": messages, **changes}), progress=False)
    print(summary.line())
    return summary


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


def records_in(topic: str) -> int:
    """How many records `topic` holds (the sum of its end offsets: nothing is deleted in the workshop)."""
    return sum(end_offsets(topic).values())


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
        except (TypeError, ValueError):  # a tombstone (no value), or bytes that are not JSON
            value = {"raw value": record.value}
        rows.append({"partition": record.partition, "offset": record.offset,
                     "key": record.key.decode() if record.key else None,
                     **{f"header {k}": v.decode(errors="replace") for k, v in record.headers},
                     **(value if isinstance(value, dict) else {"value": value})})
    return pd.DataFrame(rows)


def metrics(url: str) -> dict[str, float]:
    """A Prometheus endpoint's samples, parsed as Prometheus does: name (with its labels, if any) -> value."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {sample.name + (json.dumps(sample.labels, sort_keys=True) if sample.labels else ""): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def sql(statement: str) -> pd.DataFrame:
    """A SQL statement through impyla (the local Spark Thrift Server, or Impala), as a table; Impala's Kudu DDL
    (lab 9's `CREATE TABLE ... STORED AS KUDU`) included (`sql.client.execute`)."""
    result = execute(statement.strip().rstrip(";"))
    return pd.DataFrame(result.rows, columns=result.columns)


def sql_file(name: str) -> str:
    """The text of one of the project's `.sql` files (`sql/<name>`)."""
    return (Path(REPO_ROOT) / "sql" / name).read_text()


def taken_since(started: float) -> str:
    """A SQL condition: readings taken from `started` (seconds since the epoch) until now."""
    return (f"sensor_ts >= timestamp_seconds({started:.0f}) "
            f"and sensor_ts < timestamp_seconds({time.time() + 60:.0f})")


def rows_in_kudu(table: str = SQL_TABLE) -> int:
    return int(sql(f"select count(*) as n from {table}").n[0])


# ---- checks: the labs' promises and the exercises


def expect(holds: bool, promise: str, seen: object = "") -> None:
    """A lab's "you should see": print it when it holds; raise PromiseBroken, with what was seen, when not."""
    if not holds:
        raise PromiseBroken(f"expected: {promise}; seen: {seen}")
    print(f"as promised: {promise}" + (f" ({seen})" if seen != "" else ""))


def check(solved: bool, well_done: str, not_yet: str) -> None:
    """An exercise's check: tell the learner whether they got it (and, in the notebook tests, fail if not)."""
    if solved:
        print(f"Well done: {well_done}")
    elif STRICT:
        raise PromiseBroken(f"the exercise's solution did not pass its check: {not_yet}")
    else:
        print(f"Not yet: {not_yet} (the solution is in the collapsed cell below)")


# ---- what each lab needs, and putting it there


@dataclass(frozen=True)
class Needs:
    services: tuple[str, ...] = ()
    records_in_iot: int = 0  # readings published by earlier labs
    rows_in_kudu: int = 0  # scored rows written by earlier labs
    no_lab_job: bool = False  # no lab-9 job left running


ALL_SERVICES = ("mosquitto", "kafka", "kudu-master", "kudu-tserver", "spark-master", "spark-worker", "sql", "model",
                "gateway", "streaming", "edge", "dashboard")  # roles: in the cluster profile, each of their nodes
PIPELINE_SERVICES = ("mosquitto", "kafka", "gateway")
NEEDS: dict[int, Needs] = {
    1: Needs(ALL_SERVICES),
    2: Needs(),
    3: Needs(("mosquitto",)),
    4: Needs(PIPELINE_SERVICES),
    5: Needs(PIPELINE_SERVICES),
    6: Needs(("kafka",), records_in_iot=400),
    7: Needs(ALL_SERVICES),
    8: Needs(("model",)),
    9: Needs(ALL_SERVICES, no_lab_job=True),
    10: Needs(ALL_SERVICES, rows_in_kudu=1000, no_lab_job=True),
    11: Needs(ALL_SERVICES, no_lab_job=True),
    12: Needs(ALL_SERVICES, no_lab_job=True),
}


def nodes_of(role: str, services: Iterable[str]) -> list[str]:
    """The services of the running profile that play `role`: itself (single-node profile), its nodes `role-1`,
    `role-2`, ... (cluster profile), or none where the profile has no such role (the Spark daemons of the cluster)."""
    return [name for name in services if name == role or re.fullmatch(rf"{re.escape(role)}-[0-9]+", name)]


def missing_for(lab: int) -> list[str]:
    """What lab `lab` needs and does not find, each with what to run."""
    needs, problems = NEEDS[lab], []
    states = service_states() if needs.services else {}
    for name in (node for role in needs.services for node in nodes_of(role, states)):
        if states.get(name) != "up":
            problems.append(f"service {name} is {states.get(name, 'unknown')}: run `make lab-reset {lab}` in a "
                            f"terminal (it starts what is down; `make status` shows why a service is not up)")
    if problems:
        return problems
    if needs.no_lab_job and lab9_job() is not None:
        problems.append(f"lab 9's own streaming job is still running (pid {lab9_job().pid}): "
                        f"run `make lab-reset {lab}` to stop it")
    if needs.records_in_iot and (held := records_in(IOT_TOPIC)) < needs.records_in_iot:
        problems.append(f"topic {IOT_TOPIC} holds {held} records, this lab reads {needs.records_in_iot}: run labs "
                        f"3-5 first, or `make lab-reset {lab}` (publishes readings)")
    if needs.rows_in_kudu and (rows := rows_in_kudu()) < needs.rows_in_kudu:
        problems.append(f"table {SQL_TABLE} holds {rows} rows, this lab asks SQL about at least "
                        f"{needs.rows_in_kudu}: run lab 9 first, or `make lab-reset {lab}` (publishes readings)")
    return problems


def ready(lab: int) -> None:
    """Check what lab `lab` needs (services up, data from earlier labs); raise LabNotReady saying what to run."""
    problems = missing_for(lab)
    if problems:
        raise LabNotReady(f"lab {lab} cannot start yet:\n  - " + "\n  - ".join(problems))
    print(f"Lab {lab}: everything it needs is here.")


def reset(lab: int) -> None:
    """Put the stack in the state lab `lab` expects, as the workshop's reset-to-lab script did."""
    stop_lab9_job()
    print("starting every service (what is up stays up) ...", flush=True)
    stack().up()
    if lab >= 6 and (held := records_in(IOT_TOPIC)) < NEEDS[6].records_in_iot:
        print(f"{IOT_TOPIC} holds {held} records; publishing 500 readings ...", flush=True)
        before = held
        publish_readings(500)
        wait_for("500 readings in Kafka", lambda: records_in(IOT_TOPIC) >= before + 500, 120)
    if lab == 9:
        drop_lab9_table()
    if lab >= 10 and (rows := rows_in_kudu()) < NEEDS[10].rows_in_kudu:
        print(f"{SQL_TABLE} holds {rows} rows; publishing 1,000 readings ...", flush=True)
        publish_readings(1000)
        wait_for("1,000 more rows in Kudu", lambda: rows_in_kudu() >= rows + 1000, 300)
    ready(lab)


# ---- lab 9: the learner's own streaming job


def lab_dir() -> Path:
    """Where the labs keep their own files (the lab-9 job's checkpoint, log and pid): `<STACK_DIR>/lab`."""
    path = stack_dir() / "lab"
    path.mkdir(parents=True, exist_ok=True)
    return path


LAB9_CHECKPOINT, LAB9_LOG, LAB9_PID = "lab9-checkpoint", "lab9-job.log", "lab9-job.pid"


def lab9_job() -> PidRecord | None:
    """The lab-9 job started from the notebook, if it still runs."""
    pid_file = lab_dir() / LAB9_PID
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text().split()[0])
    record = PidRecord(pid, start_time_of(pid) or "?")
    return record if is_alive(record) else None


def stop_lab9_job() -> None:
    """Stop the lab-9 job (its whole process group: spark-submit's JVM and its Python workers)."""
    record = lab9_job()
    if record is not None:
        print(f"stopping lab 9's job (pid {record.pid}) ...", flush=True)
        stop_group(record)
    (lab_dir() / LAB9_PID).unlink(missing_ok=True)


def drop_lab9_table() -> None:
    """Drop lab 9's table (its SQL name and its Kudu table) and the lab job's checkpoint."""
    sql(f"DROP TABLE IF EXISTS {LAB9_TABLE}")
    shutil.rmtree(lab_dir() / LAB9_CHECKPOINT, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python notebooks/labkit.py",
                                     description="The workshop's labs: check or prepare what a lab needs.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("ready", "say whether lab N has what it needs, and what to run if not"),
                       ("reset", "put the stack in the state lab N expects (starts services, publishes data)")):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("lab", type=int, choices=range(1, 11), metavar="N", help="the lab, 1 to 10")
    args = parser.parse_args(argv)
    try:
        (ready if args.command == "ready" else reset)(args.lab)
    except LabNotReady as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
