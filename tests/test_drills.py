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

from collections.abc import Callable

import pytest

from runtime.settings import DEAD_LETTER_TOPIC
from stack.config import load_config
from stack.launcher import Stack
from tests.fixtures.drills import Drill, Load, kill_9, stopped
from tests.fixtures.local_stack import running_stack
from tests.poison import CORPUS

pytestmark = [pytest.mark.stack, pytest.mark.slow, pytest.mark.drill]

LOAD = Load(machines=20, rate=400, readings=12_000)  # 30 s of readings


@pytest.fixture(scope="module")
def drill_stack(served_model_file, new_stack_dir, stack_environment) -> Stack:
    """A whole stack of the drills' own, streaming job and supervisor included."""
    cfg = load_config(environ=stack_environment(new_stack_dir("drill-stack")))
    with running_stack(cfg, served_model_file) as stack:
        yield stack


@pytest.fixture(scope="module")
def run_drill(drill_stack, drill_runner):
    """`run_drill(name, fault, poison=0, tolerated_loss=0)` on the drills' stack (tests/fixtures/drills.py)."""
    return drill_runner(drill_stack, LOAD)


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
    run_drill(f"kill -9 {name}", kill_9(name), tolerated_loss=2 * LOAD.rate if name == "mosquitto" else 0)


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
