"""Fault drills: `make drills` runs them all; those marked `quick_drill` also run in `make test`.

Each drill runs a steady stream of readings through the whole supervised pipeline of a stack of its own
(simulator -> Mosquitto -> gateway -> Kafka -> streaming job -> model server -> Kudu), injects one fault at a
random moment, and ends with an exact reconciliation (`stack.audit`, what `python -m stack audit` prints):
rows = distinct keys = good readings published, dead letters = poison sent, nothing duplicated, nothing
unexplained. Time to recover = from the end of the fault (the kill, or the dependency's return) until every
service is `up` again and a probe reading published after that moment is queryable through SQL.
Each drill adds a row to the table printed at the end of the run (and to $DRILL_RESULTS, if set).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from runtime.settings import DEAD_LETTER_TOPIC, SQL_TABLE
from runtime.waiting import wait_until
from sql.client import query
from stack.audit import Scope, audit, format_audit
from stack.config import load_config
from stack.launcher import Stack
from stack.process import PidRecord, is_alive
from tests.poison import CORPUS, reading

pytestmark = [pytest.mark.stack, pytest.mark.slow, pytest.mark.drill]

MACHINES = 20
RATE = 400  # readings per second
READINGS = 12_000  # 30 s of readings
RECOVERY_LIMIT_S = 600


@dataclass
class DrillResult:
    drill: str
    readings: int
    lost: int
    duplicated: int  # duplicate records in Kafka (at least once); never in Kudu, where the drill asserts none
    up_again_s: float  # until `status` shows every service up again
    recovery_s: float  # until, besides, a reading published after the fault is queryable


@dataclass(frozen=True)
class Drill:
    """What a fault needs to know of the drill it is injected into."""

    stack: Stack
    pipeline: Any  # a Pipeline (tests/fixtures/pipeline.py) on the drills' stack
    first_id: int  # the stream's machines are first_id .. first_id + MACHINES - 1


@pytest.fixture(scope="module")
def drill_stack(served_model_file, tmp_path_factory, stack_environment) -> Stack:
    """A whole stack of the drills' own, streaming job and supervisor included."""
    cfg = load_config(environ=stack_environment(tmp_path_factory.mktemp("drill-stack")))
    cfg.model_file.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(served_model_file, cfg.model_file)
    stack = Stack(cfg)
    try:
        stack.up()
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="module")
def run_drill(drill_stack, tmp_path_factory, drill_results, pipeline_for):
    """`run_drill(name, fault, poison=0)`: stream readings, call fault(drill) at a random moment (it returns
    once the fault has ended), measure the recovery, reconcile exactly, and record the result."""
    pipeline = pipeline_for(drill_stack, tmp_path_factory.mktemp("drills"))
    numbers = itertools.count()

    def run(name: str, fault: Callable[[Drill], None], poison: int = 0, tolerated_loss: int = 0) -> None:
        drill = Drill(drill_stack, pipeline, 2_000_000 + next(numbers) * 1_000)
        publisher, record_file, started_us = start_readings(pipeline, drill.first_id)
        time.sleep(random.uniform(0.25, 0.6) * READINGS / RATE)  # a random moment under load
        fault(drill)
        fault_ended = time.monotonic()
        up_again = wait_until(lambda: all(row.state == "up" for row in drill_stack.status()) and time.monotonic(),
                              RECOVERY_LIMIT_S, "every service up") - fault_ended
        recovery = recovery_time(pipeline, drill.first_id + 500, fault_ended)
        assert publisher.wait(timeout=900) == 0, (pipeline.workdir / f"sim-{drill.first_id}.log").read_text()
        published = json.loads(record_file.read_text())
        scope = Scope(started_us, published["ended_us"], drill.first_id, drill.first_id + MACHINES - 1,
                      published["published"], 0, poison)
        # The probe reading is queryable: the backlog has drained, the counts settle within seconds. A drill that
        # may lose readings (tolerated_loss) cannot wait for "nothing unexplained".
        result = audit(pipeline.settings(), drill_stack.cfg.streaming_checkpoint, scope,
                       wait_s=120 if tolerated_loss else 600)
        print(f"\n{name}:\n{format_audit(result)}")
        counts = result.counts
        lost = published["published"] - counts.kudu_distinct
        drill_results.append(DrillResult(name, published["published"], lost,
                                         counts.kafka_records - counts.kafka_distinct, round(up_again, 1),
                                         round(recovery, 1)))
        assert published["published"] == READINGS
        assert counts.job_pending == 0 and counts.kudu_rows == counts.kudu_distinct, format_audit(result)
        if lost:
            assert lost <= tolerated_loss, format_audit(result)
            assert all("lost between MQTT and Kafka" in f.text for f in result.findings if not f.explained)
        else:
            assert result.ok, format_audit(result)
        assert all(row.state == "up" for row in drill_stack.status()), drill_stack.status()

    return run


def start_readings(pipeline, first_id: int) -> tuple[subprocess.Popen, Path, int]:
    """The steady stream: the simulator at RATE readings/s, as its own process, recording what it published."""
    cfg, secrets = pipeline.cfg, pipeline.secrets
    config = pipeline.workdir / f"sim-{first_id}.config"
    config.write_text(json.dumps({
        "mqtt": {"host": cfg.host, "port": cfg.mqtt_port, "username": secrets["MQTT_USERNAME"],
                 "password": secrets["MQTT_PASSWORD"], "topic": "iot", "qos": 1},
        "misc": {"interval_ms": 1000 / RATE, "messages": READINGS, "seed": first_id},
        "machines": {"count": MACHINES, "first_sensor_id": first_id}}))
    record = pipeline.workdir / f"sim-{first_id}.json"
    log = (pipeline.workdir / f"sim-{first_id}.log").open("w")
    started_us = time.time_ns() // 1000
    process = subprocess.Popen([sys.executable, "-m", "simulator", str(config), "--quiet", "--run-record",
                                str(record)], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return process, record, started_us


def recovery_time(pipeline, probe_id: int, since: float) -> float:
    """Seconds from `since` until a reading published after it is queryable and every service is up."""
    probe = reading(sensor_id=probe_id, sensor_ts=time.time_ns() // 1000)

    def published() -> bool:
        pipeline.publish([(f"iot/{probe_id}", probe, False)], timeout_s=10)
        return True

    def queryable() -> bool:
        return query(f"select count(*) from {SQL_TABLE} where sensor_id = {probe_id}", pipeline.cfg.host,
                     pipeline.cfg.sql_port)[0][0] == 1

    wait_until(published, RECOVERY_LIMIT_S, "the probe reading published")
    wait_until(queryable, RECOVERY_LIMIT_S, "the probe reading queryable in Kudu")
    wait_until(lambda: all(row.state == "up" for row in pipeline.stack.status()), RECOVERY_LIMIT_S,
               "every service up")
    return time.monotonic() - since


def kill_9(name: str) -> Callable[[Drill], None]:
    def fault(drill: Drill) -> None:
        victim = PidRecord.load(drill.stack.select([name])[0].pid_file)
        os.kill(victim.pid, signal.SIGKILL)
        wait_until(lambda: not is_alive(victim), 30, f"the killed {name} to be gone")  # the fault has happened

    return fault


def stopped(name: str, seconds: float, service: str, dependency: str) -> Callable[[Drill], None]:
    """`down` the service for `seconds`, then `up`; meanwhile `service` must say it waits on `dependency`."""
    def fault(drill: Drill) -> None:
        drill.stack.down([name])
        ends = time.monotonic() + seconds

        def says_so() -> bool:
            row = drill.stack.status([service])[0]
            return row.state == "degraded" and row.waiting_on == dependency

        wait_until(says_so, seconds, f"{service} to say it waits on {dependency}")
        time.sleep(max(0.0, ends - time.monotonic()))  # the outage itself lasts this long
        drill.stack.up([name])

    return fault


def poison(sent: dict) -> Callable[[Drill], None]:
    """Every poison payload over MQTT (the first retained) and straight into Kafka, mid-stream."""
    def fault(drill: Drill) -> None:
        topic = f"iot/{drill.first_id}"
        sent["dlq"] = drill.pipeline.end_offsets(DEAD_LETTER_TOPIC)
        drill.pipeline.publish([(topic, p.make(), i == 0) for i, p in enumerate(MQTT_POISON)])
        sent["positions"] = drill.pipeline.produce([(b"poison", p.make()) for p in KAFKA_POISON])
        sent["topic"] = topic

    return fault


KILLED = ["mosquitto", "kafka", "kudu-master", "kudu-tserver", "sql", "model", "gateway", "streaming", "edge"]
QUICK = {"gateway", "streaming", "model"}
MQTT_POISON = [p for p in CORPUS if p.mqtt]
KAFKA_POISON = [p for p in CORPUS if p.kafka]


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.quick_drill) if n in QUICK else n
                                  for n in KILLED])
def test_kill_9_under_load(run_drill, name):
    # Mosquitto 2.0 may lose what it acknowledged in the last 2 s before a kill -9 (README, "Durability you can
    # state"; tests/test_durability.py checks the window itself): at most that many seconds of readings.
    run_drill(f"kill -9 {name}", kill_9(name), tolerated_loss=2 * RATE if name == "mosquitto" else 0)


@pytest.mark.parametrize("name, seconds, service, dependency", [
    ("kafka", 30, "gateway", "kafka"),
    ("kafka", 150, "gateway", "kafka"),
    ("kudu-tserver", 60, "streaming", "kudu"),
    ("model", 60, "streaming", "model"),
])
def test_a_dependency_stopped_for_a_while(run_drill, name, seconds, service, dependency):
    run_drill(f"{name} stopped {seconds} s", stopped(name, seconds, service, dependency))


@pytest.mark.quick_drill
def test_the_poison_corpus_interleaved_with_the_stream(run_drill, drill_stack, pipeline_for):
    sent: dict = {}
    run_drill("poison corpus (MQTT, one retained, and Kafka)", poison(sent), poison=len(MQTT_POISON))
    pipeline = pipeline_for(drill_stack, drill_stack.cfg.dir)
    positions = {tuple(map(str, position)) for position in sent["positions"]}

    def from_the_job(record) -> bool:
        headers = {key: value.decode() for key, value in record.headers}
        return (headers.get("kafka_partition"), headers.get("kafka_offset")) in positions

    dead = pipeline.records_since(DEAD_LETTER_TOPIC, sent["dlq"], from_the_job, len(positions))
    assert len(dead) == len(KAFKA_POISON)
    pipeline.publish([(sent["topic"], b"", True)])  # an empty retained message deletes the retained poison
