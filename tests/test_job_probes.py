"""The streaming job's health while a write goes unanswered (streaming/probes.py): a dead node is waited on, a slow
one is not. The Kudu client's own answer (where the tablets' leaders are) is checked against a real Kudu, through a
real spark-submit; the rest with real sockets and a stand-in clock."""

from __future__ import annotations

import argparse
import json
import subprocess
import threading

import pytest

import streaming.probes
from runtime.retry import Backoff
from runtime.settings import KUDU_TABLE
from runtime.spark import connector_packages, spark_environment, spark_submit_command
from streaming.kafka_to_kudu import JobStatus, probed_problem, until_done
from streaming.probes import SLOW_CALL_S, overdue_problem


class Clock:
    def __init__(self):
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def job_args(kafka: str, kudu: str = "127.0.0.1:1") -> argparse.Namespace:
    return argparse.Namespace(bootstrap_servers=kafka, kudu_master=kudu, kudu_table=KUDU_TABLE,
                              model_url="http://127.0.0.1:1")


@pytest.mark.parametrize("phase, tracked", [("kudu", True), ("kafka", True), ("score", False)])
def test_a_write_unanswered_for_long_is_overdue_until_it_returns(phase, tracked):
    clock, called, answer = Clock(), threading.Event(), threading.Event()
    status = JobStatus(stuck_batch_s=300, clock=clock)
    status.set("up", "batch 3: 10 rows")

    def write() -> str:
        called.set()
        assert answer.wait(10)
        return "written"

    result = []
    caller = threading.Thread(target=lambda: result.append(until_done(status, phase, "batch 4: writing", write,
                                                                      Backoff(1, 30))))
    caller.start()
    assert called.wait(10)
    clock.now += SLOW_CALL_S - 1
    assert status.overdue() is None  # a write may take a while
    clock.now += 2
    late = status.overdue()
    if tracked:
        call, waited_s = late
        assert (call.dependency, call.what, waited_s) == (phase, "batch 4: writing", SLOW_CALL_S + 1)
    else:  # reading and scoring: which dependency is slow cannot be told (the batch's own limit covers it)
        assert late is None
    answer.set()
    caller.join(10)
    assert result == ["written"] and status.overdue() is None


def test_an_overdue_kafka_write_is_waiting_on_kafka_only_while_a_broker_does_not_answer(listening, closed):
    assert overdue_problem(None, job_args(listening), "kafka", "batch 4: publishing", 21) is None  # slow, not dead
    dependency, detail = overdue_problem(None, job_args(f"{listening},{closed}"), "kafka", "batch 4: publishing", 21)
    assert dependency == "kafka"
    assert detail == f"batch 4: publishing: no answer for 21 s; Kafka broker(s) {closed} do not answer"


def test_an_overdue_kudu_write_is_waiting_on_kudu_only_while_a_tablet_leader_does_not_answer(
        listening, closed, monkeypatch):
    leaders = [listening]
    monkeypatch.setattr(streaming.probes, "kudu_tablet_leaders", lambda _spark, _masters, _table: leaders)
    args = job_args(listening)
    assert overdue_problem(None, args, "kudu", "batch 4: writing to Kudu", 25) is None
    leaders.append(closed)
    assert overdue_problem(None, args, "kudu", "batch 4: writing to Kudu", 25) == (
        "kudu", f"batch 4: writing to Kudu: no answer for 25 s; the tablet server(s) at {closed}, leading tablets "
                f"of {KUDU_TABLE}, do not answer")

    def masters_away(_spark, _masters, _table):
        raise TimeoutError("no master answered")

    monkeypatch.setattr(streaming.probes, "kudu_tablet_leaders", masters_away)
    assert overdue_problem(None, args, "kudu", "batch 4: writing to Kudu", 25) == (
        "kudu", "batch 4: writing to Kudu: no answer for 25 s; Kudu's masters at 127.0.0.1:1 cannot say where its "
                "tablets are (TimeoutError)")


def test_a_call_no_probe_checks_is_never_blamed_on_a_dependency(closed):
    assert overdue_problem(None, job_args(closed), "score", "batch 4: reading and scoring", 60) is None


def test_the_health_says_what_an_overdue_write_waits_on_and_is_up_again_when_it_returns(listening, closed):
    clock = Clock()
    status = JobStatus(stuck_batch_s=300, clock=clock)
    status.set("up", "batch 3: 10 rows")
    args = job_args(f"{listening},{closed}")
    with status.calling("kafka", "batch 4: publishing scored readings"):
        clock.now += SLOW_CALL_S + 2
        status.probed(probed_problem(None, args, status))
        health = status.assess()
        assert (health.state, health.waiting_on) == ("degraded", "kafka")
        assert health.detail.startswith("batch 4: publishing scored readings: no answer for 22 s")
    status.batch_done(10, 0, 0, "batch 4: 10 rows")
    status.probed(probed_problem(None, args, status))
    assert status.probed_problem is None and status.assess().state == "up"


LEADERS_APP = """\
import json, sys
from pyspark.sql import SparkSession
from streaming.probes import kudu_tablet_leaders

spark = SparkSession.builder.getOrCreate()
print(json.dumps(kudu_tablet_leaders(spark, sys.argv[1], sys.argv[2])))
"""


@pytest.mark.stack
def test_the_kudu_client_of_the_jobs_jvm_names_the_tablet_server_leading_the_readings_tablets(local_stack, tmp_path):
    cfg = local_stack.cfg
    app = tmp_path / "leaders.py"
    app.write_text(LEADERS_APP)
    command = spark_submit_command(cfg.host, ivy=cfg.ivy_dir, packages=connector_packages(), master="local[1]",
                                   app=[str(app), cfg.kudu_master_address, KUDU_TABLE],
                                   conf={"spark.ui.enabled": "false"})
    result = subprocess.run(command, env=spark_environment(cfg.host), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [f"{cfg.host}:{cfg.kudu_tserver_port}"]
