"""Settings, secrets and pinned versions: no services needed."""

from __future__ import annotations

import dataclasses
import math
import re
import stat
import string
import unicodedata
from pathlib import Path

import pyspark
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import runtime.settings as runtime_settings
import runtime.spark as runtime_spark
import stack.config
from runtime.settings import CONNECTION_VARIABLES, REPO_ROOT, read_env_file
from runtime.spark import connector_packages, jvm_versions
from stack.cli import main as stack_cli
from stack.config import DEFAULTS_FILE, StackConfig, load_config
from stack.launcher import Stack
from stack.secrets import ensure_secrets


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


def _is_memory(value: str) -> bool:
    return re.fullmatch(r"[1-9][0-9]*[kmgKMG]?", value) is not None


def _is_host(value: str) -> bool:
    return bool(value) and all(c.isascii() and c.isprintable() and not c.isspace() for c in value)


def _is_path(value: Path) -> bool:
    return value.is_absolute() and not any(unicodedata.category(c) in ("Cc", "Cs") for c in str(value))


# The rules, written out independently of stack/config.py: what a loaded config's values must satisfy.
PORTS = ("mqtt_port", "kafka_port", "kafka_controller_port", "kudu_master_port", "kudu_master_web_port",
         "kudu_tserver_port", "kudu_tserver_web_port", "sql_port", "model_port", "gateway_metrics_port",
         "streaming_metrics_port", "edge_metrics_port", "dashboard_port", "lab_port")
SPARK_PORTS = ("spark_master_port", "spark_master_web_port", "spark_worker_port", "spark_worker_web_port")
RULES = {
    **dict.fromkeys(PORTS + SPARK_PORTS, lambda v: 1 <= v <= 65535),
    **dict.fromkeys(("kafka_iot_partitions", "kudu_tserver_memory_mb", "spark_worker_cores"), lambda v: v >= 1),
    "profile": lambda v: v in ("single", "cluster"),
    "cluster_port_step": lambda v: 1 <= v <= 1000,
    "mqtt_max_queued_messages": lambda v: 1 <= v <= 10_000_000,
    "mqtt_max_inflight_messages": lambda v: 1 <= v <= 65535,
    "ready_timeout_s": lambda v: math.isfinite(v) and v > 0,
    **dict.fromkeys(("kafka_heap", "sql_driver_memory", "spark_worker_memory", "spark_daemon_memory"), _is_memory),
    "host": _is_host,
    "run_as": lambda v: v == "" or (len(v) <= 32 and v[0] in string.ascii_lowercase + "_"
                                    and set(v) <= set(string.ascii_lowercase + string.digits + "_-")),
    **dict.fromkeys(("install_dir", "dir"), _is_path),
}
SETTINGS = [f.name for f in dataclasses.fields(StackConfig)]


def assert_within_rules(cfg: StackConfig) -> None:
    broken = [name for name in SETTINGS if not RULES[name](getattr(cfg, name))]
    assert not broken, {name: getattr(cfg, name) for name in broken}
    assert len({getattr(cfg, name) for name in PORTS}) == len(PORTS)


def test_the_defaults_load_and_keep_the_rules():
    assert set(RULES) == set(SETTINGS)
    assert_within_rules(load_config(environ={}))


@pytest.mark.parametrize("setting, value, allowed", [
    ("kafka_port", "-1", "1..65535"),
    ("kafka_port", "0", "1..65535"),
    ("model_port", "65536", "1..65535"),
    ("sql_port", "10000.5", "1..65535"),
    ("kafka_iot_partitions", "0", ">= 1"),
    ("kudu_tserver_memory_mb", "-5", ">= 1"),
    ("mqtt_max_queued_messages", "0", "1..10000000"),  # 0 is "unlimited" to Mosquitto
    ("mqtt_max_queued_messages", "10000001", "1..10000000"),
    ("mqtt_max_inflight_messages", "65536", "1..65535"),
    ("run_as", "Iot", "a user name"),
    ("run_as", "iot user", "a user name"),
    ("run_as", "-iot", "a user name"),
    ("ready_timeout_s", "nan", "finite number of seconds > 0"),
    ("ready_timeout_s", "inf", "finite number of seconds > 0"),
    ("ready_timeout_s", "0", "finite number of seconds > 0"),
    ("ready_timeout_s", "-3", "finite number of seconds > 0"),
    ("kafka_heap", "512mb", "512m or 1g"),
    ("kafka_heap", "0m", "512m or 1g"),
    ("sql_driver_memory", "1.5g", "512m or 1g"),
    ("sql_driver_memory", "1g\n", "512m or 1g"),
    ("host", "127.0.0.1\nlistener 1883 0.0.0.0", "address or a hostname"),  # would add a listener
    ("host", "my host", "address or a hostname"),
    ("host", "", "address or a hostname"),
    ("host", "-dash.example", "address or a hostname"),
    ("host", "under_score", "address or a hostname"),
    ("host", "999.1.1.1", "address or a hostname"),
    ("host", "fe80::1%eth0\nx", "address or a hostname"),
    ("dir", "/tmp/a\nb", "path without control characters"),
    ("install_dir", "", "non-empty path"),
])
def test_a_value_out_of_range_names_setting_source_value_and_range(setting, value, allowed):
    variable = "STACK_" + setting.upper()
    expected = re.escape(f"setting {setting!r} (from {variable}) = {value!r}: must be ") + ".*" + re.escape(allowed)
    with pytest.raises(ValueError, match=expected):
        load_config(environ={variable: value})


@pytest.mark.parametrize("setting, value", [
    ("host", "::1"), ("host", "localhost"), ("host", "streaming"), ("host", "kafka-1.example.com"),
    ("host", "10.0.0.7"), ("kafka_heap", "2048M"), ("sql_driver_memory", "1024k"), ("kafka_heap", "1"),
    ("ready_timeout_s", "0.5"), ("mqtt_max_queued_messages", "10000000"), ("mqtt_max_inflight_messages", "65535"),
    ("kafka_port", "65535"),
])
def test_a_value_within_range_is_taken(setting, value):
    taken = getattr(load_config(environ={"STACK_" + setting.upper(): value}), setting)
    assert taken == type(taken)(value)


def test_paths_are_absolute_relative_ones_under_the_repository():
    cfg = load_config(environ={"STACK_DIR": "var/stack", "STACK_INSTALL_DIR": "~/parts"})
    assert cfg.dir == REPO_ROOT / "var" / "stack"
    assert cfg.install_dir == Path.home() / "parts"
    with pytest.raises(ValueError, match=r"'dir' \(from STACK_DIR\).*cannot expand ~no-such-user-here"):
        load_config(environ={"STACK_DIR": "~no-such-user-here/stack"})


def test_two_settings_on_one_port_are_refused():
    with pytest.raises(ValueError, match=r"'kafka_port' \(from .*stack.toml\) and 'sql_port' \(from STACK_SQL_PORT\) "
                                         r"are both port 9092"):
        load_config(environ={"STACK_SQL_PORT": "9092"})


def test_the_cluster_profile_lists_every_node_and_refuses_a_node_port_another_setting_has():
    cfg = load_config(environ={"STACK_PROFILE": "cluster"})
    assert cfg.kafka_bootstrap == "127.0.0.1:9092,127.0.0.1:9192,127.0.0.1:9292"
    assert cfg.kudu_master_address == "127.0.0.1:7051,127.0.0.1:7151,127.0.0.1:7251"
    assert (cfg.kafka_replication, cfg.kafka_min_insync_replicas, cfg.kudu_replicas) == (3, 2, 3)
    assert cfg.spark_master_url == "spark://127.0.0.1:7077"
    assert len(set(cfg.ports().values())) == len(cfg.ports()) == 14 + 6 * 2 + 2 + 2 * 2
    single = load_config(environ={})
    assert (single.kafka_bootstrap, single.spark_master_url, single.kafka_min_insync_replicas) == (
        "127.0.0.1:9092", "local[*]", 1)
    # kafka-2's port would be 9192: the single-node profile does not use it, the cluster profile does.
    assert load_config(environ={"STACK_SQL_PORT": "9192"}).sql_port == 9192
    with pytest.raises(ValueError, match=r"'kafka_port of node 2' \(from .*stack.toml\) and 'sql_port' \(from "
                                         r"STACK_SQL_PORT\) are both port 9192.*cluster_port_step"):
        load_config(environ={"STACK_PROFILE": "cluster", "STACK_SQL_PORT": "9192"})
    with pytest.raises(ValueError, match=r"'profile' \(from STACK_PROFILE\) = 'multi': must be one of single, "
                                         r"cluster"):
        load_config(environ={"STACK_PROFILE": "multi"})


@pytest.mark.parametrize("variable, message", [
    ("STACK_KAFKA_PROT", "STACK_KAFKA_PROT is not a setting; did you mean STACK_KAFKA_PORT?"),
    ("STACK_kafka_port", "STACK_kafka_port is not a setting; did you mean STACK_KAFKA_PORT?"),
    ("STACK_READY_TIMEOUT", "STACK_READY_TIMEOUT is not a setting; did you mean STACK_READY_TIMEOUT_S?"),
    ("STACK_ZZZ", "STACK_ZZZ is not a setting; the settings are STACK_INSTALL_DIR, STACK_DIR, "),
])
def test_an_unknown_stack_variable_is_refused_with_the_nearest_setting(variable, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config(environ={variable: "1"})


def test_other_tools_stack_variables_are_let_be(monkeypatch):
    # Haskell's Stack exports STACK_ROOT and friends: a user of both tools must not be refused.
    assert load_config(environ={"STACK_ROOT": "/opt/other-tool"}).host == "127.0.0.1"
    monkeypatch.setattr(stack.config, "OTHER_STACK_VARIABLES", frozenset())
    with pytest.raises(ValueError, match="STACK_ROOT is not a setting"):
        load_config(environ={"STACK_ROOT": "/opt/other-tool"})


@pytest.mark.parametrize("line, message", [
    ("kafka_prot = 1", "'kafka_prot' is not a setting; did you mean kafka_port?"),
    ("kafka_port = -1", "setting 'kafka_port' (from {file}) = -1: must be an integer in 1..65535"),
    ("kafka_port = true", "setting 'kafka_port' (from {file}) = True: must be an integer"),
    ("kafka_port = 9092.5", "setting 'kafka_port' (from {file}) = 9092.5: must be an integer"),
    ("host = 127", "setting 'host' (from {file}) = 127: must be an IPv4/IPv6 address"),
    ('dir = "var/stack"', "'dir' cannot be set in this file: set STACK_DIR instead"),
    ('install_dir = "parts"', "'install_dir' cannot be set in this file: set STACK_INSTALL_DIR instead"),
])
def test_a_bad_line_in_the_file_names_the_file(tmp_path, line, message):
    lines = [text for text in DEFAULTS_FILE.read_text().splitlines() if not text.startswith(line.split()[0] + " ")]
    path = tmp_path / "stack.toml"
    path.write_text("\n".join([*lines, line]) + "\n")
    with pytest.raises(ValueError, match=re.escape(message.format(file=path))):
        load_config(path, environ={})


def test_stack_cli_reports_a_bad_setting_without_a_traceback(monkeypatch, capsys):
    monkeypatch.setenv("STACK_MQTT_MAX_QUEUED_MESSAGES", "0")
    assert stack_cli(["status"]) == 2
    assert capsys.readouterr().err.startswith("error: setting 'mqtt_max_queued_messages' (from STACK_MQTT_MAX_")


VALUES = st.one_of(
    st.text(),
    st.integers(min_value=-2, max_value=70_000).map(str),
    st.floats().map(str),
    st.sampled_from(["1g", "512m", "0", "nan", "inf", "::1", "localhost", "~", "/tmp/x", "a b", "9092", "\n"]),
)


@pytest.mark.parametrize("setting", SETTINGS)
@settings(max_examples=60, database=None, deadline=None)
@given(value=VALUES)
def test_any_text_gives_a_config_within_the_rules_or_a_value_error_naming_the_setting(setting, value):
    try:
        cfg = load_config(environ={"STACK_" + setting.upper(): value})
    except ValueError as exc:
        assert repr(setting) in str(exc)
    else:
        assert_within_rules(cfg)


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


@pytest.mark.parametrize("stack_dir_value", [None, "/tmp/elsewhere-stack"])
def test_the_runtime_parts_find_the_stack_where_the_launcher_puts_it(monkeypatch, stack_dir_value):
    """The runtime floor does not import the launcher: both must agree on where the stack's files are."""
    for name in ("STACK_DIR", "STACK_INSTALL_DIR", "MODEL_PATH"):
        monkeypatch.delenv(name, raising=False)
    if stack_dir_value:
        monkeypatch.setenv("STACK_DIR", stack_dir_value)
        monkeypatch.setenv("STACK_INSTALL_DIR", stack_dir_value)
    cfg = load_config()
    assert cfg.dir == runtime_settings.stack_dir()
    assert cfg.connection_file == runtime_settings.stack_dir() / "connection.env"
    assert cfg.model_file == runtime_settings.served_model_file()
    assert cfg.ivy_dir == runtime_spark.ivy_dir()
