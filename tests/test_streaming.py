"""Lab 9 end to end against the real stack: MQTT -> gateway -> Kafka -> spark-submit job -> Kudu -> SQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from kafka import KafkaProducer

from model.registry import load_served_model
from runtime.kafka import end_offsets, records_since
from runtime.settings import DEAD_LETTER_TOPIC, IOT_TOPIC, SQL_TABLE
from runtime.waiting import NotReady, wait_until
from simulator.config import load_simulator_config
from simulator.fleet import Fleet
from simulator.publisher import run
from sql.client import query
from stack.connection import local_stack_settings

pytestmark = [pytest.mark.stack, pytest.mark.slow]

FIRST_ID, MACHINES, READINGS = 500_000, 20, 5_000


def start_job(local_stack, secrets, checkpoint, log):
    """The job started as a user starts it (`python -m streaming`, which runs spark-submit)."""
    env = {**os.environ, **local_stack_settings(local_stack.cfg, secrets)}
    with log.open("a") as out:
        return subprocess.Popen([sys.executable, "-m", "streaming", "--checkpoint", str(checkpoint),
                                 "--trigger-seconds", "1", "--restart-delay-seconds", "2"],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture()
def streaming_job(local_stack, secrets, tmp_path):
    log = tmp_path / "job.log"
    job = start_job(local_stack, secrets, tmp_path / "checkpoint", log)
    yield job, log
    os.killpg(job.pid, signal.SIGTERM)
    job.wait(timeout=60)


def publish(tmp_path, cfg, secrets, first_id: int, messages: int, **machines) -> tuple[object, int]:
    config = {
        "mqtt": {"host": cfg.host, "port": cfg.mqtt_port, "username": secrets["MQTT_USERNAME"],
                 "password": secrets["MQTT_PASSWORD"], "topic": "iot", "qos": 1},
        "misc": {"interval_ms": 0, "seed": 11, "messages": messages, "publishers": 1},
        "machines": {"count": MACHINES, "first_sensor_id": first_id, **machines},
    }
    path = tmp_path / f"sim-{first_id}-{messages}.config"
    path.write_text(json.dumps(config))
    sim = load_simulator_config(path)
    return sim, run(sim, progress=False).published


def wait_for_count(cfg, where: str, expected: int, timeout_s: float, log) -> int:
    """Poll SQL until `expected` rows match `where`: the count then; on time out, fail with the job's log."""
    def count() -> int:
        return query(f"select count(*) from {SQL_TABLE} where {where}", cfg.host, cfg.sql_port)[0][0]

    try:
        wait_until(lambda: count() >= expected, timeout_s, f"{expected} rows where {where}")
    except NotReady as exc:
        raise AssertionError(f"{exc}; job log:\n{log.read_text()[-3000:]}") from exc
    return count()


def test_readings_published_on_mqtt_are_scored_into_kudu_exactly_once(local_stack, secrets, tmp_path,
                                                                     streaming_job):
    cfg = local_stack.cfg
    dlq_start = end_offsets(cfg.kafka_bootstrap, DEAD_LETTER_TOPIC)
    straight_to_kafka = KafkaProducer(bootstrap_servers=cfg.kafka_bootstrap)  # bypassing the gateway
    not_a_reading = {"sensor_id": 999, "sensor_ts": "yesterday", **{f"sensor_{i}": 1 for i in range(12)}}
    straight_to_kafka.send(IOT_TOPIC, key=b"999", value=json.dumps(not_a_reading).encode()).get(30)
    straight_to_kafka.close()
    sim, published = publish(tmp_path, cfg, secrets, FIRST_ID, READINGS, degrading_share=0.4,
                             readings_to_failure=60)
    assert published == READINGS
    fleet = Fleet(sim, [FIRST_ID + i for i in range(MACHINES)], seed=sim.seed * 1000)  # as the one publisher does
    degrading = {int(sensor) for sensor, d in zip(fleet.sensor_ids, fleet.degrading, strict=True) if d}

    mine = f"sensor_id >= {FIRST_ID} and sensor_id < {FIRST_ID + MACHINES}"
    assert wait_for_count(cfg, mine, READINGS, 300, streaming_job[1]) == READINGS
    assert distinct_keys(cfg, mine) == READINGS
    verdicts = query(f"select distinct is_healthy from sensors where {mine}", cfg.host, cfg.sql_port)
    assert {v for (v,) in verdicts} <= {0, 1}
    served = load_served_model(cfg.model_file)[1].version
    assert query(f"select distinct model_version from sensors where {mine}", cfg.host, cfg.sql_port) == [(served,)]
    # The lab-10 query's machines: those whose readings it mostly returns are the degrading ones.
    lab10 = f"select sensor_id, count(*) from sensors where is_healthy = 0 and {mine} group by sensor_id"
    flagged = dict(query(lab10, cfg.host, cfg.sql_port))
    mostly_flagged = {sensor for sensor, count in flagged.items() if count > READINGS / MACHINES / 2}
    assert degrading and mostly_flagged == degrading

    def from_the_job(record) -> bool:
        return record.value is not None and b"yesterday" in record.value

    dead = records_since(cfg.kafka_bootstrap, DEAD_LETTER_TOPIC, dlq_start, 1, from_the_job, timeout_s=60,
                         settle_s=1)
    assert dead and dict(dead[0].headers)["reason"] == b"sensor_ts: must be an integer, got str 'yesterday'"


def distinct_keys(cfg, where: str) -> int:
    return query(f"select count(*) from (select distinct sensor_id, sensor_ts from sensors where {where}) d",
                 cfg.host, cfg.sql_port)[0][0]


def test_kill_9_of_the_job_and_a_model_outage_lose_and_duplicate_nothing(local_stack, secrets, tmp_path):
    cfg = local_stack.cfg
    first_id = 600_000
    mine = f"sensor_id >= {first_id} and sensor_id < {first_id + MACHINES}"
    log = tmp_path / "job.log"
    job = start_job(local_stack, secrets, tmp_path / "checkpoint", log)
    try:
        _, first = publish(tmp_path, cfg, secrets, first_id, 20_000)
        wait_for_count(cfg, mine, 1, 300, log)  # the job is writing
        os.killpg(job.pid, signal.SIGKILL)  # mid-stream
        job.wait(timeout=30)
        job = start_job(local_stack, secrets, tmp_path / "checkpoint", log)
        assert wait_for_count(cfg, mine, first, 300, log) == first

        local_stack.down(["model"])
        _, second = publish(tmp_path, cfg, secrets, first_id, 3_000)  # scored only once the model is back
        time.sleep(8)  # a real outage: several 1 s triggers fail against the stopped model server
        assert query(f"select count(*) from sensors where {mine}", cfg.host, cfg.sql_port)[0][0] == first
        local_stack.up(["model"])
        total = wait_for_count(cfg, mine, first + second, 300, log)
    finally:
        os.killpg(job.pid, signal.SIGTERM)
        job.wait(timeout=60)
    assert total == first + second
    assert distinct_keys(cfg, mine) == first + second
