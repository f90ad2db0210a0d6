"""The job's verdicts query: Kafka `iot.verdicts` -> Kudu `edge_verdicts`, once each, and the view `edge_agreement`.

Without Spark running: what each record becomes (`streaming/verdicts.py`, Hypothesis over any values: one row
each, which Spark's Arrow conversion takes, the verdicts exact to the µs), the options, the counts.
Against the session's stack and one job as the stack runs it (`stack_job`): edge verdicts published on MQTT (each
twice) and produced straight into Kafka (repeated, and once with a different verdict under a stored key) are stored
once each, the first one standing; records that are not verdicts reach `iot.dlq`; `edge_agreement` counts the
agreement with central rows inserted into `sensors`, in SQL and through `python -m sql`; the job's metrics count
them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from dataclasses import dataclass

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pyspark.sql.pandas.serializers import ArrowStreamPandasSerializer
from pyspark.sql.pandas.types import to_arrow_type

from contract import VERDICT_FIELDS, InvalidReading, parse_verdict, verdict_json
from runtime.settings import DEAD_LETTER_TOPIC, EDGE_AGREEMENT_VIEW, EDGE_VERDICTS_KUDU_TABLE, VERDICTS_TOPIC
from runtime.waiting import wait_until
from sql.client import query
from streaming.kafka_to_kudu import JobStatus
from streaming.metrics import JobMetrics
from streaming.options import parse_args
from streaming.verdicts import CHECKED_COLUMNS, CHECKED_SCHEMA, DEAD, VERDICT, checked_frame
from tests.poison import CORPUS

SETTINGS = {"KAFKA_BOOTSTRAP": "127.0.0.1:9092", "KUDU_MASTER": "127.0.0.1:7051", "MODEL_URL": "http://127.0.0.1:8000"}
VERDICT_ = {"sensor_id": 941_000, "sensor_ts": 1_764_150_000_000_001, "is_healthy": 0, "model_version": 7,
            "agent_id": "edge-a", "scored_ts": 4_102_444_799_999_999}


def batch(values: list) -> pd.DataFrame:
    return pd.DataFrame({"value": values, "partition": [3] * len(values), "offset": range(10, 10 + len(values))})


def arrow_columns(frame: pd.DataFrame) -> None:
    """Convert each column as Spark's mapInPandas does for CHECKED_SCHEMA (raises if it cannot)."""
    serializer = ArrowStreamPandasSerializer("UTC", True)
    for field in CHECKED_SCHEMA.fields:
        serializer._create_array(frame[field.name], to_arrow_type(field.dataType), field.dataType, arrow_cast=True)


# -- each record: a verdict row or a dead letter --

def test_a_verdict_becomes_a_row_and_the_rest_dead_letters_with_their_reasons():
    rows = checked_frame(batch([verdict_json(VERDICT_), None, b"\xff", json.dumps({**VERDICT_, "agent_id": ""})
                                .encode()])).to_dict("records")
    assert {name: rows[0][name] for name in (*VERDICT_FIELDS, "kind", "partition", "offset")} == {
        **VERDICT_, "kind": VERDICT, "partition": 3, "offset": 10}
    assert [(row["kind"], row["field"], row["offset"]) for row in rows[1:]] == [
        (DEAD, "", 11), (DEAD, "", 12), (DEAD, "agent_id", 13)]
    assert rows[1]["reason"].startswith("no payload") and rows[2]["reason"].startswith("not JSON")
    assert rows[3]["reason"] == "agent_id: '' must match [A-Za-z0-9][A-Za-z0-9._-]{0,63}"
    assert rows[2]["value"] == b"\xff" and pd.isna(rows[0]["value"])


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
values = st.one_of(
    st.none(), st.binary(max_size=300), st.sampled_from([p.make() for p in CORPUS]), st.just(verdict_json(VERDICT_)),
    st.builds(lambda ts, sid, ok: verdict_json({**VERDICT_, "sensor_ts": ts, "sensor_id": sid, "is_healthy": ok}),
              st.integers(946_684_800_000_000, 4_102_444_800_000_000), st.integers(0, 2**31 - 1), st.integers(0, 1)),
    st.dictionaries(st.sampled_from([*VERDICT_FIELDS, "x"]), json_scalars, max_size=3)
    .map(lambda change: json.dumps({**VERDICT_, **change}).encode()))


@settings(max_examples=200, deadline=None)
@given(st.lists(values, max_size=20))
def test_any_records_become_one_row_each_that_spark_takes(records):
    frame = checked_frame(batch(records))
    assert list(frame.columns) == CHECKED_COLUMNS and len(frame) == len(records)
    for record, row in zip(records, frame.to_dict("records"), strict=True):
        try:
            verdict = parse_verdict(record)
        except InvalidReading as exc:
            assert (row["kind"], row["value"], row["reason"]) == (DEAD, record, str(exc))
            continue
        assert row["kind"] == VERDICT and {name: row[name] for name in VERDICT_FIELDS} == verdict
    arrow_columns(frame)


# -- options and counts --

def test_the_verdicts_query_is_on_by_default_with_its_own_checkpoint():
    args = parse_args(["--checkpoint", "/tmp/job/"], env=SETTINGS)
    assert (args.verdicts, args.verdicts_topic, args.edge_verdicts_kudu_table, args.verdicts_checkpoint) == (
        True, VERDICTS_TOPIC, EDGE_VERDICTS_KUDU_TABLE, "/tmp/job-verdicts")
    args = parse_args(["--no-verdicts", "--verdicts-topic", "v", "--edge-verdicts-kudu-table", "impala::x.v",
                       "--verdicts-checkpoint", "/c/v"], env=SETTINGS)
    assert (args.verdicts, args.verdicts_topic, args.edge_verdicts_kudu_table, args.verdicts_checkpoint) == (
        False, "v", "impala::x.v", "/c/v")


def samples(metrics: JobMetrics) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())
            for s in family.samples}


def test_verdicts_written_and_dead_lettered_are_counted_in_the_health_and_the_metrics():
    status = JobStatus(300)
    assert samples(status.metrics)[("iot_streaming_verdicts_total", (("outcome", "dead_lettered"),))] == 0
    status.verdicts_done(5, 2)
    status.verdicts_done(1, 0)
    seen = samples(status.metrics)
    assert seen[("iot_streaming_verdicts_total", (("outcome", "written"),))] == 6
    assert seen[("iot_streaming_verdicts_total", (("outcome", "dead_lettered"),))] == 2
    counters = status.assess().counters
    assert (counters["verdicts"], counters["verdicts_dead_lettered"]) == (6, 2)


# -- against the stack: one job, as the stack runs it --

MACHINES = range(941_000, 941_008)
CENTRAL = (1, 1, 1, 1, 0, 0, 0, 0)  # the central verdicts of MACHINES, model version 900_002
EDGE_A = (1, 1, 1, 0, 0, 0, 1, 1)  # agent edge-a, model version 900_001: agrees on 5 of 8
EDGE_B = (1, 1, 1, 1)  # agent edge-b, model version 900_003, the first four machines: agrees on all
UNMATCHED = 941_009  # a verdict on a reading the central side never scored: not compared


@dataclass
class Run:
    """What the module's run published, and where."""

    keys: dict[int, int]  # machine -> its reading's sensor_ts (µs), as Kudu stores it
    dead: list[tuple[int, int]]  # (partition, offset) of the records that are not verdicts, in iot.verdicts
    dlq_offsets: dict[int, int]  # the dead-letter topic's end offsets before


def edge(machine: int, sensor_ts: int, agent: str, version: int, is_healthy: int) -> dict:
    return {"sensor_id": machine, "sensor_ts": sensor_ts, "is_healthy": is_healthy, "model_version": version,
            "agent_id": agent, "scored_ts": sensor_ts + 4000}


def edge_rows(pipeline, where: str = "true") -> list[tuple]:
    return query(f"select sensor_id, unix_micros(sensor_ts), agent_id, is_healthy, model_version, "
                 f"unix_micros(scored_ts) from edge_verdicts where sensor_id between {MACHINES[0]} and {UNMATCHED} "
                 f"and {where} order by sensor_id, agent_id", pipeline.cfg.host, pipeline.cfg.sql_port)


@pytest.fixture(scope="module")
def run(pipeline, stack_job, insert_reading) -> Run:
    """Central rows inserted into `sensors` through SQL; edge verdicts on MQTT, each twice; then, once they are
    stored, a repeat and a different verdict under a stored key, and records that are not verdicts, straight into
    Kafka; a marker verdict behind them says the job took them all."""
    cfg = pipeline.cfg
    for machine, verdict in zip(MACHINES, CENTRAL, strict=True):
        insert_reading(cfg, machine, f"2025-11-26 09:40:00.{machine % 1000:06d}", 1.0, verdict, 900_002)
    keys = dict(query(f"select sensor_id, unix_micros(sensor_ts) from sensors where sensor_id between "
                      f"{MACHINES[0]} and {MACHINES[-1]}", cfg.host, cfg.sql_port))
    verdicts = [*(edge(m, keys[m], "edge-a", 900_001, v) for m, v in zip(MACHINES, EDGE_A, strict=True)),
                *(edge(m, keys[m], "edge-b", 900_003, v) for m, v in zip(MACHINES, EDGE_B, strict=False)),
                edge(UNMATCHED, 1_764_150_000_000_000, "edge-a", 900_001, 1)]
    messages = [(f"verdicts/{v['sensor_id']}", verdict_json(v), False) for v in verdicts]
    pipeline.publish(messages + messages)
    wait_until(lambda: len(edge_rows(pipeline)) >= len(verdicts), 300, f"{len(verdicts)} edge verdicts in SQL")
    first = verdicts[0]
    marker = {**first, "agent_id": "edge-marker", "model_version": 900_004}
    dlq_offsets = pipeline.end_offsets(DEAD_LETTER_TOPIC)
    key = str(first["sensor_id"]).encode()  # one key, one partition: the marker comes last
    positions = pipeline.produce([(key, verdict_json(first)), (key, verdict_json({**first, "is_healthy": 0})),
                                  (key, None), (key, b"not a verdict"), (key, b'{"sensor_id": 941000}'),
                                  (key, verdict_json(marker))], topic=VERDICTS_TOPIC)
    wait_until(lambda: edge_rows(pipeline, "agent_id = 'edge-marker'"), 300, "the marker verdict in SQL")
    return Run(keys, positions[2:5], dlq_offsets)


@pytest.mark.stack
def test_each_verdict_is_stored_once_and_the_first_one_stands(pipeline, run):
    expected = sorted([*((m, run.keys[m], "edge-a", v, 900_001, run.keys[m] + 4000)
                         for m, v in zip(MACHINES, EDGE_A, strict=True)),
                       *((m, run.keys[m], "edge-b", v, 900_003, run.keys[m] + 4000)
                         for m, v in zip(MACHINES, EDGE_B, strict=False)),
                       (MACHINES[0], run.keys[MACHINES[0]], "edge-marker", EDGE_A[0], 900_004,
                        run.keys[MACHINES[0]] + 4000),
                       (UNMATCHED, 1_764_150_000_000_000, "edge-a", 1, 900_001, 1_764_150_000_004_000)])
    assert sorted(edge_rows(pipeline)) == expected


@pytest.mark.stack
def test_what_is_not_a_verdict_is_dead_lettered_with_its_reason(pipeline, run):
    letters = pipeline.records_since(
        DEAD_LETTER_TOPIC, run.dlq_offsets,
        lambda r: dict(r.headers).get("kafka_topic") == VERDICTS_TOPIC.encode()
        and (int(dict(r.headers)["kafka_partition"]), int(dict(r.headers)["kafka_offset"])) in run.dead,
        expected=len(run.dead))
    letters.sort(key=lambda r: int(dict(r.headers)["kafka_offset"]))
    assert [(r.value, dict(r.headers)["reason"], dict(r.headers)["kind"]) for r in letters] == [
        (None, b"no payload (a null value: a Kafka tombstone or an empty record)", b"invalid"),
        (b"not a verdict", b"not JSON: Expecting value: line 1 column 1 (char 0)", b"invalid"),
        (b'{"sensor_id": 941000}', b"sensor_ts: missing", b"invalid")]


AGREEMENT = [(900_001, 900_002, len(MACHINES), 5, 5 / len(MACHINES)), (900_003, 900_002, 4, 4, 1.0),
             (900_004, 900_002, 1, 1, 1.0)]


@pytest.mark.stack
def test_edge_agreement_compares_each_edge_version_with_the_central_one(pipeline, run):
    rows = query(f"select * from {EDGE_AGREEMENT_VIEW} where edge_model_version between 900001 and 900004 "
                 "order by edge_model_version", pipeline.cfg.host, pipeline.cfg.sql_port)
    assert rows == AGREEMENT


@pytest.mark.stack
def test_python_m_sql_shows_the_view(pipeline, run):
    result = subprocess.run([sys.executable, "-m", "sql", f"SELECT * FROM {EDGE_AGREEMENT_VIEW} WHERE "
                             "edge_model_version = 900003"], env={**os.environ, **pipeline.settings()},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    header, _rule, row, count = result.stdout.splitlines()
    assert header.split() == ["edge_model_version", "|", "central_model_version", "|", "compared", "|", "agreeing",
                              "|", "agreement"]
    assert [cell.strip() for cell in row.split("|")] == ["900003", "900002", "4", "4", "1.0"]
    assert count == "(1 row)"


def verdict_counts(metrics_url: str) -> dict[str, float]:
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    return {s.labels["outcome"]: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "iot_streaming_verdicts_total"}


@pytest.mark.stack
def test_the_jobs_metrics_count_the_verdicts(run, stack_job):
    # At least what this module sent (the job read iot.verdicts from its start: earlier tests' verdicts count
    # too); the batch that stored the marker counts it once its dead letters are written too.
    written, dead = 2 * (len(MACHINES) + len(EDGE_B) + 1) + 3, len(run.dead)

    def counted() -> bool:
        counts = verdict_counts(stack_job)
        return counts["written"] >= written and counts["dead_lettered"] >= dead

    wait_until(counted, 60, f"at least {written} verdicts written and {dead} dead-lettered, as the metrics say")
