"""Lab 9 end to end against the real stack: MQTT -> gateway -> Kafka -> spark-submit job -> Kudu -> SQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from simulator.config import load_simulator_config
from simulator.fleet import Fleet
from simulator.publisher import run
from sql.client import query
from stack.connection import local_stack_settings

pytestmark = [pytest.mark.stack, pytest.mark.slow]

FIRST_ID, MACHINES, READINGS = 500_000, 20, 5_000


@pytest.fixture()
def streaming_job(local_stack, secrets, tmp_path):
    """The job started as a user starts it (`python -m streaming`, which runs spark-submit)."""
    env = {**os.environ, **local_stack_settings(local_stack.cfg, secrets)}
    log = tmp_path / "job.log"
    with log.open("w") as out:
        job = subprocess.Popen([sys.executable, "-m", "streaming", "--checkpoint", str(tmp_path / "checkpoint"),
                                "--trigger-seconds", "1"], env=env, stdout=out, stderr=subprocess.STDOUT,
                               start_new_session=True)
        yield job, log
        os.killpg(job.pid, signal.SIGTERM)
        job.wait(timeout=60)


def wait_for_count(cfg, where: str, expected: int, timeout_s: float, log) -> int:
    deadline, count = time.monotonic() + timeout_s, -1
    while time.monotonic() < deadline:
        count = query(f"select count(*) from sensors where {where}", cfg.host, cfg.sql_port)[0][0]
        if count >= expected:
            return count
        time.sleep(1)  # polling SQL for rows to arrive
    raise AssertionError(f"{count} of {expected} rows after {timeout_s} s; job log:\n{log.read_text()[-3000:]}")


def test_readings_published_on_mqtt_are_scored_into_kudu_exactly_once(local_stack, secrets, tmp_path,
                                                                     streaming_job):
    cfg = local_stack.cfg
    config = {
        "mqtt": {"host": cfg.host, "port": cfg.mqtt_port, "username": secrets["MQTT_USERNAME"],
                 "password": secrets["MQTT_PASSWORD"], "topic": "iot", "qos": 1},
        "misc": {"interval_ms": 0, "seed": 11, "messages": READINGS, "publishers": 1},
        "machines": {"count": MACHINES, "degrading_share": 0.4, "first_sensor_id": FIRST_ID,
                     "readings_to_failure": 60},
    }
    path = tmp_path / "sim.config"
    path.write_text(json.dumps(config))
    sim = load_simulator_config(path)
    fleet = Fleet(sim, [FIRST_ID + i for i in range(MACHINES)], seed=sim.seed * 1000)  # as the one publisher does
    degrading = {int(sensor) for sensor, d in zip(fleet.sensor_ids, fleet.degrading, strict=True) if d}
    assert run(sim, progress=False).published == READINGS

    mine = f"sensor_id >= {FIRST_ID} and sensor_id < {FIRST_ID + MACHINES}"
    assert wait_for_count(cfg, mine, READINGS, 300, streaming_job[1]) == READINGS
    distinct = query(f"select count(*) from (select distinct sensor_id, sensor_ts from sensors where {mine}) d",
                     cfg.host, cfg.sql_port)[0][0]
    assert distinct == READINGS
    verdicts = query(f"select distinct is_healthy from sensors where {mine}", cfg.host, cfg.sql_port)
    assert {v for (v,) in verdicts} <= {0, 1}
    # The lab-10 query's machines: those whose readings it mostly returns are the degrading ones.
    lab10 = f"select sensor_id, count(*) from sensors where is_healthy = 0 and {mine} group by sensor_id"
    flagged = dict(query(lab10, cfg.host, cfg.sql_port))
    mostly_flagged = {sensor for sensor, count in flagged.items() if count > READINGS / MACHINES / 2}
    assert degrading and mostly_flagged == degrading
