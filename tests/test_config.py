"""Settings, secrets, pinned versions and the DDL translation: no services needed."""

from __future__ import annotations

import stat
from pathlib import Path

import pyspark
import pytest

from stack.config import REPO_ROOT, load_config
from stack.connection import CONNECTION_VARIABLES
from stack.kudu_table import load_sensors_spec, parse_impala_kudu_ddl
from stack.launcher import Stack
from stack.secrets import ensure_secrets, read_env_file
from stack.spark import connector_packages, jvm_versions


def test_defaults_bind_loopback_and_live_under_dot_stack():
    cfg = load_config(environ={})
    assert cfg.host == "127.0.0.1"
    assert cfg.dir == REPO_ROOT / ".stack"
    assert (cfg.mqtt_port, cfg.kafka_port) == (1883, 9092)


def test_environment_overrides_a_setting():
    cfg = load_config(environ={"STACK_KAFKA_PORT": "19092", "STACK_DIR": "/tmp/somewhere"})
    assert cfg.kafka_port == 19092
    assert cfg.kafka_bootstrap == "127.0.0.1:19092"
    assert cfg.dir == Path("/tmp/somewhere")


def test_bad_value_names_the_setting_and_the_value():
    with pytest.raises(ValueError, match=r"'kafka_port'.*STACK_KAFKA_PORT.*'not-a-port'"):
        load_config(environ={"STACK_KAFKA_PORT": "not-a-port"})


def test_secrets_are_generated_once_private_and_random(tmp_path):
    first = ensure_secrets(tmp_path / "a" / "secrets.env")
    again = ensure_secrets(tmp_path / "a" / "secrets.env")
    other = ensure_secrets(tmp_path / "b" / "secrets.env")
    assert first == again
    assert first["MQTT_PASSWORD"] != other["MQTT_PASSWORD"]
    assert first["MODEL_ACCESS_KEY"] != other["MODEL_ACCESS_KEY"]
    assert len(first["MQTT_PASSWORD"]) >= 24
    assert stat.S_IMODE((tmp_path / "a" / "secrets.env").stat().st_mode) == 0o600


def test_connection_file_has_exactly_the_documented_variables(tmp_path):
    cfg = load_config(environ={"STACK_DIR": str(tmp_path)})
    path = Stack(cfg, log=lambda *_: None).write_connection_file()
    values = read_env_file(path)
    assert tuple(values) == CONNECTION_VARIABLES
    assert values["MQTT_PASSWORD"] == read_env_file(cfg.secrets_file)["MQTT_PASSWORD"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_pyspark_matches_the_spark_line_of_the_kudu_connector():
    versions = jvm_versions()
    assert pyspark.__version__ == versions["spark.version"]
    assert versions["scala.binary.version"] == "2.12"
    assert versions["kafka.version"].startswith("4.")
    assert connector_packages() == [
        f"org.apache.spark:spark-sql-kafka-0-10_2.12:{versions['spark.version']}",
        f"org.apache.kudu:kudu-spark3_2.12:{versions['kudu.version']}",
    ]


def test_lab9_ddl_translates_to_the_kudu_table_impala_would_create():
    spec = load_sensors_spec()
    assert spec.name == "impala::default.sensors"
    assert spec.columns == (
        ("sensor_id", "INT32"), ("sensor_ts", "UNIXTIME_MICROS"),
        *((f"sensor_{i}", "DOUBLE") for i in range(12)),
        ("is_healthy", "INT32"),
    )
    assert spec.primary_key == ("sensor_id", "sensor_ts")
    assert spec.hash_columns == spec.primary_key
    assert (spec.hash_buckets, spec.replicas) == (16, 1)


@pytest.mark.parametrize("ddl, message", ids=["not-kudu", "bad-type", "no-key", "unknown-key", "no-partition"],
                         argvalues=[
    ("CREATE TABLE t (a INT, PRIMARY KEY (a)) PARTITION BY HASH PARTITIONS 2", "STORED AS KUDU"),
    ("CREATE TABLE t (a INT, b DECIMAL, PRIMARY KEY (a)) PARTITION BY HASH PARTITIONS 2 STORED AS KUDU",
     "column 'b': type 'DECIMAL'"),
    ("CREATE TABLE t (a INT) PARTITION BY HASH PARTITIONS 2 STORED AS KUDU", "PRIMARY KEY"),
    ("CREATE TABLE t (a INT, PRIMARY KEY (z)) PARTITION BY HASH PARTITIONS 2 STORED AS KUDU", "'z'"),
    ("CREATE TABLE t (a INT, PRIMARY KEY (a)) STORED AS KUDU", "PARTITION BY HASH"),
])
def test_unsupported_ddl_is_refused_with_the_reason(ddl, message):
    with pytest.raises(ValueError, match=message):
        parse_impala_kudu_ddl(ddl)
