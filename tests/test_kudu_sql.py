"""Kudu and SQL of the local stack: the lab-9 table (and its upgrade), upserts, impyla queries through the SQL
endpoint, and the lab-9 DDL run through `sql` as Impala would run it."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial

import pytest
from impala.error import Error as ImpylaError

from contract import TABLE_COLUMNS
from runtime.kudu import KuduTables, kudu_cli
from runtime.settings import KUDU_TABLE, REPO_ROOT, SQL_TABLE
from sql.client import execute, query
from sql.kudu_ddl import CREATED, DROPPED, EXISTS, KuduDdlError, impala_kudu_table_name, load_sensors_spec, sensors_ddl

pytestmark = pytest.mark.stack

# The columns as Spark's `describe` shows them.
SQL_TYPES = {"sensor_id": "int", "sensor_ts": "timestamp", "is_healthy": "int", "model_version": "int"}


def sql(cfg, statement: str) -> list[tuple]:
    """Run one statement through impyla against SQL_HOST:SQL_PORT, as a user (or Impala) would."""
    return query(statement, cfg.host, cfg.sql_port)


def kudu_tables(cfg) -> KuduTables:
    return KuduTables(cfg.kudu_master_address, cfg.kudu_home)


def test_sensors_table_has_the_lab9_schema_and_the_model_version(local_stack):
    cfg = local_stack.cfg
    assert kudu_tables(cfg).columns(KUDU_TABLE) == list(load_sensors_spec().columns)
    described = kudu_cli(cfg.kudu_home, "table", "describe", cfg.kudu_master_address, KUDU_TABLE)
    assert "model_version INT32 NULLABLE" in described
    assert "PRIMARY KEY (sensor_id, sensor_ts)" in described
    assert "HASH (sensor_id, sensor_ts) PARTITIONS 16" in described
    assert "REPLICAS 1" in described


def test_sql_endpoint_answers_count(local_stack):
    assert sql(local_stack.cfg, "select count(*) from sensors")[0][0] >= 0


def test_upsert_of_the_same_key_twice_leaves_one_row_seen_by_kudu_and_sql(local_stack, insert_reading,
                                                                           kudu_row_count):
    cfg = local_stack.cfg
    insert_reading(cfg, 9001, "2019-05-02 00:59:47.735011", 1.5, is_healthy=1)
    insert_reading(cfg, 9001, "2019-05-02 00:59:47.735011", 2.5, is_healthy=0, model_version=3)

    assert kudu_row_count(cfg, where='["AND", ["=", "sensor_id", 9001]]') == 1
    rows = sql(cfg, "select sensor_id, sensor_ts, sensor_0, sensor_11, is_healthy, model_version from sensors "
                    "where sensor_id = 9001")
    assert len(rows) == 1
    sensor_id, sensor_ts, sensor_0, sensor_11, is_healthy, model_version = rows[0]
    assert (sensor_id, sensor_0, sensor_11, is_healthy, model_version) == (9001, 2.5, 2.5, 0, 3)
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


def test_stack_up_adds_the_model_version_to_a_table_an_older_version_made_and_keeps_its_rows(local_stack,
                                                                                           insert_reading):
    cfg = local_stack.cfg
    insert_reading(cfg, 9004, "2019-05-02 02:00:00", 4.5, is_healthy=1, model_version=2)
    kudu_cli(cfg.kudu_home, "table", "delete_column", cfg.kudu_master_address, KUDU_TABLE, "model_version")
    assert "model_version" not in dict(kudu_tables(cfg).columns(KUDU_TABLE))  # the workshop's table, as before

    local_stack.up(["kudu-tserver", "sql"])  # running already: `up` initialises them again

    assert kudu_tables(cfg).columns(KUDU_TABLE) == list(load_sensors_spec().columns)
    assert sql(cfg, "select sensor_0, is_healthy, model_version from sensors where sensor_id = 9004") == [
        (4.5, 1, None)]
    insert_reading(cfg, 9005, "2019-05-02 02:00:00", 5.5, is_healthy=0, model_version=2)
    assert sql(cfg, "select model_version from sensors where sensor_id = 9005") == [(2,)]


def test_the_lab9_ddl_runs_through_sql_as_impala_would_drop_and_create_again(local_stack):
    cfg = local_stack.cfg
    lab = "lab9_sensors"
    run = partial(execute, host=cfg.host, port=cfg.sql_port, kudu_master=cfg.kudu_master_address)
    ddl = sensors_ddl(lab)  # the text of sql/create_sensors.sql, another table name
    kudu = kudu_tables(cfg)

    assert run(ddl).rows == [(CREATED,)]
    assert kudu.columns(impala_kudu_table_name(lab)) == list(load_sensors_spec().columns)
    assert run(f"describe {lab}").rows == [(name, SQL_TYPES.get(name, "double"), None) for name in TABLE_COLUMNS]
    assert run(f"select * from {lab} limit 0").columns == list(TABLE_COLUMNS)
    assert run(ddl).rows == [(EXISTS,)]
    with pytest.raises(KuduDdlError, match=f"CREATE TABLE {lab}: the table already exists"):
        run(ddl.replace("IF NOT EXISTS ", ""))

    assert run(f"DROP TABLE {lab}").rows == [(DROPPED,)]
    assert not kudu.exists(impala_kudu_table_name(lab))
    with pytest.raises(ImpylaError, match=f"`{lab}` cannot be found"):
        run(f"select * from {lab}")

    assert run(ddl.replace("IF NOT EXISTS ", "")).rows == [(CREATED,)]
    assert run(f"select count(*) from {lab}").rows == [(0,)]
    assert run(f"DROP TABLE IF EXISTS {lab}").rows == [(DROPPED,)]


def python_m_sql(cfg, *argv: str) -> subprocess.CompletedProcess:
    """`python -m sql ARGV` against the test stack's endpoints."""
    env = {**os.environ, "STACK_DIR": str(cfg.dir), "SQL_HOST": cfg.host, "SQL_PORT": str(cfg.sql_port),
           "KUDU_MASTER": cfg.kudu_master_address}
    return subprocess.run([sys.executable, "-m", "sql", *argv], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_python_m_sql_runs_the_ddl_file_and_will_not_drop_the_stacks_table_unasked(local_stack, tmp_path):
    cfg = local_stack.cfg
    ddl_file = tmp_path / "create_lab.sql"
    ddl_file.write_text(sensors_ddl("lab9_cli"))

    created = python_m_sql(cfg, "-f", str(ddl_file))
    assert created.returncode == 0 and CREATED in created.stdout, created.stderr

    refused = python_m_sql(cfg, f"DROP TABLE {SQL_TABLE}")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith(f"error: DROP TABLE {SQL_TABLE}: refused: it is the stack's own table")
    assert kudu_tables(cfg).exists(KUDU_TABLE)

    dropped = python_m_sql(cfg, "DROP TABLE lab9_cli")
    assert dropped.returncode == 0 and DROPPED in dropped.stdout, dropped.stderr


@pytest.mark.parametrize(("name", "columns"), [
    ("counts.sql", ["readings", "unhealthy"]),
    ("unhealthy_readings.sql", ["sensor_id", "sensor_ts"]),
    ("latest_per_machine.sql", ["sensor_id", "sensor_ts", "is_healthy"]),
    ("rising_unhealthy.sql", ["sensor_id", "recent_share", "earlier_share"]),
])
def test_the_lab10_query_files_answer_with_their_columns_whatever_comments_lead(local_stack, name, columns):
    """Each file starts with a comment: the statement is still known to return rows."""
    cfg = local_stack.cfg
    result = execute((REPO_ROOT / "sql" / name).read_text(), cfg.host, cfg.sql_port)
    assert result.columns == columns
    assert len(result.rows) >= (1 if name == "counts.sql" else 0)
