"""Impala's Kudu DDL in `sql`: the lab-9 DDL's translation, the stack's other tables and its view, which statements
are Kudu DDL, and what a session runs for them on Impala and on the Spark Thrift Server (a scripted cursor and Kudu:
no services needed; the view on the real Spark Thrift Server: tests/test_edge_verdicts_job.py)."""

from __future__ import annotations

import json
import re

import pytest

import sql.client
import streaming.verdicts
from contract import TABLE_COLUMNS, VERDICT_FIELDS
from runtime.settings import (
    ALERTS_KUDU_TABLE,
    EDGE_AGREEMENT_VIEW,
    EDGE_VERDICTS_KUDU_TABLE,
    KUDU_TABLE,
    SQL_TABLE,
)
from sql.client import Session
from sql.kudu_ddl import (
    CREATED,
    DROPPED,
    EDGE_AGREEMENT_DDL,
    EXISTS,
    CreateKuduTable,
    DropTable,
    KuduDdlError,
    add_missing_columns,
    applies_to,
    load_sensors_spec,
    load_stack_specs,
    parse_create,
    parse_statement,
    replace_view,
    sensors_ddl,
)

LAB = "lab9_sensors"


def test_lab9_ddl_translates_to_the_kudu_table_impala_would_create():
    spec = load_sensors_spec()
    assert spec.name == KUDU_TABLE
    assert spec.columns == (
        ("sensor_id", "INT32"), ("sensor_ts", "UNIXTIME_MICROS"),
        *((f"sensor_{i}", "DOUBLE") for i in range(12)),
        ("is_healthy", "INT32"), ("model_version", "INT32"),
    )
    assert spec.primary_key == ("sensor_id", "sensor_ts")
    assert spec.hash_columns == spec.primary_key
    assert (spec.hash_buckets, spec.replicas) == (16, 1)


def test_the_ddl_has_the_contracts_columns_in_order():
    assert tuple(name for name, _ in load_sensors_spec().columns) == TABLE_COLUMNS


def test_the_stacks_tables_include_the_edge_verdicts_keyed_by_reading_and_agent():
    specs = {spec.name: spec for spec in load_stack_specs()}
    assert set(specs) == {KUDU_TABLE, ALERTS_KUDU_TABLE, EDGE_VERDICTS_KUDU_TABLE}
    spec = specs[EDGE_VERDICTS_KUDU_TABLE]
    assert spec.columns == (("sensor_id", "INT32"), ("sensor_ts", "UNIXTIME_MICROS"), ("agent_id", "STRING"),
                            ("is_healthy", "INT32"), ("model_version", "INT32"), ("scored_ts", "UNIXTIME_MICROS"))
    assert tuple(name for name, _ in spec.columns) == streaming.verdicts.TABLE_COLUMNS  # what the job writes
    assert set(streaming.verdicts.TABLE_COLUMNS) == set(VERDICT_FIELDS)
    assert (spec.primary_key, spec.hash_buckets, spec.replicas) == (("sensor_id", "sensor_ts", "agent_id"), 4, 1)


def test_the_view_replaces_an_older_definition_with_the_files():
    cur = ScriptedCursor("3.5.7")
    assert replace_view(cur, EDGE_AGREEMENT_DDL) == EDGE_AGREEMENT_VIEW
    drop, create = cur.executed
    assert drop == f"DROP VIEW IF EXISTS {EDGE_AGREEMENT_VIEW}"
    assert create.startswith(f"CREATE VIEW IF NOT EXISTS {EDGE_AGREEMENT_VIEW} AS\nSELECT")
    assert "--" not in create and not create.endswith(";")


def test_a_file_that_is_not_one_view_is_refused_naming_it(tmp_path):
    ddl = tmp_path / "table.sql"
    ddl.write_text("-- a table\nCREATE TABLE t AS SELECT 1;")
    with pytest.raises(ValueError, match=rf"{ddl}: not one CREATE VIEW"):
        replace_view(ScriptedCursor("3.5.7"), ddl)


@pytest.mark.parametrize("ddl, message", ids=["not-kudu", "bad-type", "no-key", "unknown-key", "no-partition",
                                              "column-attribute", "unbalanced"], argvalues=[
    ("CREATE TABLE t (a INT, PRIMARY KEY (a)) PARTITION BY HASH PARTITIONS 2", "CREATE TABLE t: .*STORED AS KUDU"),
    ("CREATE TABLE t (a INT, b DECIMAL, PRIMARY KEY (a)) PARTITION BY HASH PARTITIONS 2 STORED AS KUDU",
     "CREATE TABLE t: column 'b': type 'DECIMAL'"),
    ("CREATE TABLE t (a INT) PARTITION BY HASH PARTITIONS 2 STORED AS KUDU", "PRIMARY KEY"),
    ("CREATE TABLE t (a INT, PRIMARY KEY (z)) PARTITION BY HASH PARTITIONS 2 STORED AS KUDU", "'z'"),
    ("CREATE TABLE t (a INT, PRIMARY KEY (a)) STORED AS KUDU", "PARTITION BY HASH"),
    ("CREATE TABLE t (a INT NOT NULL, PRIMARY KEY (a)) PARTITION BY HASH PARTITIONS 2 STORED AS KUDU",
     "column 'a': 'NOT NULL' is not supported"),
    ("CREATE TABLE t (a INT, PRIMARY KEY (a) STORED AS KUDU", "unbalanced parentheses"),
])
def test_unsupported_ddl_is_refused_naming_the_table_and_the_reason(ddl, message):
    with pytest.raises(KuduDdlError, match=message):
        parse_create(ddl)


@pytest.mark.parametrize("statement, kudu_ddl", [
    (sensors_ddl(LAB), True),
    ("create table t (a int, primary key (a)) partition by hash partitions 2 stored as kudu;", True),
    ("-- a comment\nDROP TABLE lab9_sensors", True),
    ("drop table if exists default.lab9_sensors purge", True),
    ("select * from sensors", False),
    ("CREATE TABLE t (a INT) USING parquet", False),
    ("-- STORED AS KUDU in a comment\nCREATE TABLE t (a INT) USING parquet", False),
    ("DROP VIEW v", False),
    ("drop table a, b", False),
    ("INSERT INTO sensors SELECT * FROM lab9_sensors", False),
])
def test_which_statements_are_kudu_ddl(statement, kudu_ddl):
    assert applies_to(statement) is kudu_ddl


def test_a_kudu_create_table_is_read_with_its_names_and_if_not_exists():
    create = parse_statement(sensors_ddl(LAB))
    assert isinstance(create, CreateKuduTable)
    assert (create.sql_name, create.spec.name, create.if_not_exists) == (LAB, f"impala::default.{LAB}", True)
    assert create.spec.columns == load_sensors_spec().columns
    plain = parse_statement("CREATE TABLE Lab.T (a INT, PRIMARY KEY (a)) PARTITION BY HASH (a) PARTITIONS 3 "
                            "STORED AS KUDU")
    assert (plain.sql_name, plain.spec.name, plain.if_not_exists) == ("lab.t", "impala::lab.t", False)


@pytest.mark.parametrize("statement, expected", [
    ("DROP TABLE lab9_sensors", DropTable(LAB, f"impala::default.{LAB}")),
    ("drop table if exists Sensors;", DropTable(SQL_TABLE, KUDU_TABLE)),
    ("DROP TABLE default.sensors PURGE", DropTable("default.sensors", KUDU_TABLE)),
])
def test_a_drop_table_names_the_kudu_table_impala_would_drop(statement, expected):
    assert parse_statement(statement) == expected


class ScriptedCursor:
    """An impyla cursor's part that sql.client uses, answering as Impala or the Spark Thrift Server would."""

    def __init__(self, version: str, registered: set[str] = frozenset()):
        self.version, self.registered, self.executed = version, set(registered), []
        self.rows, self.description = [], None

    def execute(self, statement: str) -> None:
        self.executed.append(statement)
        self.rows, self.description = [], None
        if statement == "select version()":
            self.rows, self.description = [(self.version,)], [("version()",)]
        elif show := re.fullmatch(r"SHOW TABLES IN (\w+) LIKE '(\w+)'", statement):
            self.rows = [(show[1], show[2], False)] if show[2] in self.registered else []
            self.description = [("namespace",), ("tableName",), ("isTemporary",)]
        elif create := re.match(r"CREATE TABLE (\w+) USING kudu", statement):
            self.registered.add(create[1])
        elif drop := re.fullmatch(r"DROP TABLE IF EXISTS (\w+)", statement):
            self.registered.discard(drop[1])

    def fetchall(self) -> list[tuple]:
        return self.rows


class FakeKudu:
    """`runtime.kudu.KuduTables` over a dict: table name -> its (column, type) list."""

    tables: dict[str, list[tuple[str, str]]] = {}

    def __init__(self, master: str):
        self.master = master

    def exists(self, name: str) -> bool:
        return name in self.tables

    def create(self, spec_json: str) -> None:
        spec = json.loads(spec_json)
        self.tables[spec["table_name"]] = [(c["column_name"], c["column_type"]) for c in spec["schema"]["columns"]]

    def delete(self, name: str) -> None:
        del self.tables[name]

    def columns(self, name: str) -> list[tuple[str, str]]:
        return list(self.tables[name])

    def add_column(self, name: str, column: str, kudu_type: str) -> None:
        self.tables[name].append((column, kudu_type))


@pytest.fixture()
def kudu(monkeypatch) -> type[FakeKudu]:
    monkeypatch.setattr(FakeKudu, "tables", {KUDU_TABLE: list(load_sensors_spec().columns)})
    monkeypatch.setattr(sql.client, "KuduTables", FakeKudu)
    return FakeKudu


def spark(registered: set[str] = frozenset({SQL_TABLE})) -> Session:
    return Session(ScriptedCursor("3.5.7 5f63ab4ebd3e6fe3fd3c5a21c40e69f0abf4e0b1", registered), "kudu:7051")


def test_impala_runs_the_ddl_itself_unchanged(kudu):
    impala = Session(ScriptedCursor("impalad version 4.5.0-RELEASE RELEASE (build abc)"), "kudu:7051")
    for statement in (sensors_ddl(LAB), f"DROP TABLE {SQL_TABLE}"):
        assert impala.execute(statement) == sql.client.Result([], [])
    assert impala.cur.executed == ["select version()", sensors_ddl(LAB).strip().rstrip(";"),
                                   f"DROP TABLE {SQL_TABLE}"]
    assert set(kudu.tables) == {KUDU_TABLE}


def test_other_statements_go_through_without_asking_what_the_endpoint_is(kudu):
    session = spark()
    session.execute("insert into sensors select * from lab9_sensors;")
    assert session.cur.executed == ["insert into sensors select * from lab9_sensors"]


def test_on_spark_the_lab_table_is_created_dropped_and_created_again(kudu):
    session, lab_kudu = spark(), f"impala::default.{LAB}"
    assert session.execute(sensors_ddl(LAB)).rows == [(CREATED,)]
    assert kudu.tables[lab_kudu] == list(load_sensors_spec().columns)
    assert LAB in session.cur.registered
    assert session.execute(sensors_ddl(LAB)).rows == [(EXISTS,)]  # IF NOT EXISTS
    with pytest.raises(KuduDdlError, match=f"CREATE TABLE {LAB}: the table already exists "
                                           rf"\(in SQL and in Kudu as {lab_kudu}\).*DROP TABLE {LAB}"):
        session.execute(sensors_ddl(LAB).replace("IF NOT EXISTS ", ""))
    assert session.execute(f"DROP TABLE {LAB}").rows == [(DROPPED,)]
    assert lab_kudu not in kudu.tables and LAB not in session.cur.registered
    assert session.execute(sensors_ddl(LAB).replace("IF NOT EXISTS ", "")).rows == [(CREATED,)]
    assert session.cur.executed.count("select version()") == 1


def test_if_not_exists_registers_a_kudu_table_that_sql_does_not_know(kudu):
    session = spark(registered=set())
    assert session.execute(sensors_ddl(SQL_TABLE)).rows == [(EXISTS,)]
    assert SQL_TABLE in session.cur.registered and set(kudu.tables) == {KUDU_TABLE}


def test_dropping_the_stacks_own_table_is_refused_unless_asked(kudu):
    session = spark()
    with pytest.raises(KuduDdlError, match=rf"DROP TABLE {SQL_TABLE}: refused: it is the stack's own table.*"
                                           "--drop-stack-table"):
        session.execute(f"DROP TABLE IF EXISTS {SQL_TABLE}")
    assert KUDU_TABLE in kudu.tables and SQL_TABLE in session.cur.registered
    assert session.execute(f"DROP TABLE {SQL_TABLE}", drop_stack_table=True).rows == [(DROPPED,)]
    assert kudu.tables == {}


def test_a_drop_of_a_table_kudu_does_not_hold_is_sparks_own(kudu):
    session = spark()
    assert session.execute("DROP TABLE IF EXISTS some_parquet_table") == sql.client.Result([], [])
    assert session.cur.executed[-1] == "DROP TABLE IF EXISTS some_parquet_table"


def test_kudu_ddl_without_a_kudu_master_says_what_is_missing(kudu, monkeypatch):
    monkeypatch.setattr(sql.client, "connection_settings", dict)
    session = Session(ScriptedCursor("3.5.7"), kudu_master=None)
    with pytest.raises(KuduDdlError, match="KUDU_MASTER is not set"):
        session.execute(sensors_ddl(LAB))


def test_an_older_table_gets_the_columns_it_lacks_and_keeps_the_others(kudu):
    spec = load_sensors_spec()
    kudu.tables[KUDU_TABLE] = list(spec.columns[:-1])  # as the workshop's DDL made it
    assert add_missing_columns(kudu("kudu:7051"), spec) == ["model_version"]
    assert kudu.tables[KUDU_TABLE] == list(spec.columns)
    assert add_missing_columns(kudu("kudu:7051"), spec) == []


def test_a_column_of_another_type_is_not_upgraded_silently(kudu):
    spec = load_sensors_spec()
    kudu.tables[KUDU_TABLE] = [*spec.columns[:-2], ("is_healthy", "STRING")]
    with pytest.raises(KuduDdlError, match="column is_healthy is STRING, the DDL says INT32"):
        add_missing_columns(kudu("kudu:7051"), spec)
