"""Kudu and SQL of the local stack: the lab-9 table, upserts, and impyla queries through the SQL endpoint."""

from __future__ import annotations

import re

import pytest

from sql.client import query
from stack.kudu_table import kudu_cli, load_sensors_spec

pytestmark = pytest.mark.stack

SENSORS = load_sensors_spec().name


def sql(cfg, statement: str) -> list[tuple]:
    """Run one statement through impyla against SQL_HOST:SQL_PORT, as a user (or Impala) would."""
    return query(statement, cfg.host, cfg.sql_port)


def test_sensors_table_has_the_lab9_schema(local_stack):
    described = kudu_cli(local_stack.cfg.kudu_home, "table", "describe", local_stack.cfg.kudu_master_address,
                         SENSORS)
    columns = re.findall(r"^\s+(\w+) (\w+) (?:NOT NULL|NULLABLE),$", described, re.M)
    assert columns == [
        ("sensor_id", "INT32"), ("sensor_ts", "UNIXTIME_MICROS"),
        *((f"sensor_{i}", "DOUBLE") for i in range(12)), ("is_healthy", "INT32"),
    ]
    assert "PRIMARY KEY (sensor_id, sensor_ts)" in described
    assert "HASH (sensor_id, sensor_ts) PARTITIONS 16" in described
    assert "REPLICAS 1" in described


def test_sql_endpoint_answers_count(local_stack):
    assert sql(local_stack.cfg, "select count(*) from sensors")[0][0] >= 0


def test_upsert_of_the_same_key_twice_leaves_one_row_seen_by_kudu_and_sql(local_stack, insert_reading,
                                                                           kudu_row_count):
    cfg = local_stack.cfg
    insert_reading(cfg, 9001, "2019-05-02 00:59:47.735011", 1.5, is_healthy=1)
    insert_reading(cfg, 9001, "2019-05-02 00:59:47.735011", 2.5, is_healthy=0)

    assert kudu_row_count(cfg, where='["AND", ["=", "sensor_id", 9001]]') == 1
    rows = sql(cfg, "select sensor_id, sensor_ts, sensor_0, sensor_11, is_healthy from sensors "
                    "where sensor_id = 9001")
    assert len(rows) == 1
    sensor_id, sensor_ts, sensor_0, sensor_11, is_healthy = rows[0]
    assert (sensor_id, sensor_0, sensor_11, is_healthy) == (9001, 2.5, 2.5, 0)
    assert str(sensor_ts).startswith("2019-05-02 00:59:47.735011")


def test_lab10_query_finds_rows_written_to_kudu(local_stack, insert_reading):
    cfg = local_stack.cfg
    before = sql(cfg, "select count(*) from sensors")[0][0]
    insert_reading(cfg, 9002, "2019-05-02 01:00:00", 99.0, is_healthy=0)
    insert_reading(cfg, 9003, "2019-05-02 01:00:00", 1.0, is_healthy=1)
    assert sql(cfg, "select count(*) from sensors")[0][0] == before + 2
    unhealthy = sql(cfg, "select sensor_id, sensor_ts from sensors where is_healthy = 0;".rstrip(";"))
    assert 9002 in {row[0] for row in unhealthy}
    assert 9003 not in {row[0] for row in unhealthy}
