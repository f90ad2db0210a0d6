"""The simulator without a broker: its config file, its readings, and that the model sees its failures."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from contract import SENSOR_FIELDS, SENSOR_ID_RANGE, parse_reading
from model.registry import load_served_model
from simulator.__main__ import DEFAULT_CONFIG
from simulator.config import ConfigError, load_simulator_config
from simulator.fleet import FAULT_KINDS, Fleet


def write_config(tmp_path, **sections) -> object:
    config = json.loads(DEFAULT_CONFIG.read_text())
    config["mqtt"].update(host="127.0.0.1", port=1883, username="u", password="p")
    for section, values in sections.items():
        config[section].update(values)
    path = tmp_path / "sim.config"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("section, values, message", [
    ("misc", {"interval_ms": -5}, "misc.interval_ms: -5 must be >= 0"),
    ("misc", {"fault_share": 2}, "misc.fault_share: 2 must be between 0 and 1"),
    ("misc", {"publishers": "two"}, "misc.publishers: must be int"),
    ("mqtt", {"qos": 3}, "mqtt.qos: 3 must be 0, 1 or 2"),
    ("mqtt", {"topic": "iot/#"}, "mqtt.topic: 'iot/#' must be a plain topic"),
    ("machines", {"mode": "random"}, "machines.mode: 'random' is not one of"),
    ("machines", {"ranges": {"sensor_12": [0, 1]}}, "machines.ranges.sensor_12: unknown sensor"),
    ("mqtt", {"passwrd": "p"}, "mqtt.passwrd: unknown key; did you mean mqtt.password?"),
    ("misc", {"intervall_ms": 5}, "misc.intervall_ms: unknown key; did you mean misc.interval_ms?"),
    ("machines", {"cout": 5}, "machines.cout: unknown key; did you mean machines.count?"),
    ("misc", {"zzz": 1}, "misc.zzz: unknown key; known: interval_ms, verbose, seed,"),
    ("mqtt", {"port": 65536}, "mqtt.port: 65536 must be in 0..65535 (0 = from the environment)"),
    ("mqtt", {"port": -1}, "mqtt.port: -1 must be in 0..65535"),
    ("misc", {"seed": -1}, "misc.seed: -1 must be in 0..4294967295"),
    ("misc", {"seed": 2**32}, "misc.seed: 4294967296 must be in 0..4294967295"),
    ("misc", {"seed": 7.0}, "misc.seed: must be int, got float 7.0"),
    ("misc", {"interval_ms": math.nan}, "misc.interval_ms: nan must be >= 0 and finite"),
    ("misc", {"interval_ms": math.inf}, "misc.interval_ms: inf must be >= 0 and finite"),
    ("misc", {"duration_s": math.inf}, "misc.duration_s: inf must be >= 0 and finite"),
    ("machines", {"count": 0}, "machines.count: 0 must be in 1..100000"),
    ("machines", {"count": 100_001}, "machines.count: 100001 must be in 1..100000"),
    ("machines", {"count": 10.0}, "machines.count: must be int, got float 10.0"),
    ("machines", {"count": 10, "first_sensor_id": SENSOR_ID_RANGE[1] - 8},
     f"machines.first_sensor_id: {SENSOR_ID_RANGE[1] - 8} must be in {SENSOR_ID_RANGE[0]}..{SENSOR_ID_RANGE[1] - 9} "
     f"for machines.count 10 (sensor_id is at most {SENSOR_ID_RANGE[1]})"),
    ("machines", {"first_sensor_id": -1}, "machines.first_sensor_id: -1 must be in 0.."),
    ("machines", {"ranges": {"sensor_0": [0, math.nan]}}, "machines.ranges.sensor_0: must be [min, max] finite"),
])
def test_bad_config_names_the_key_and_the_problem(tmp_path, section, values, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_simulator_config(write_config(tmp_path, **{section: values}))


def test_python_json_reads_nan_and_infinity_which_the_config_refuses(tmp_path):
    path = tmp_path / "sim.config"
    path.write_text(write_config(tmp_path).read_text().replace('"duration_s": 0', '"duration_s": Infinity'))
    with pytest.raises(ConfigError, match=re.escape("misc.duration_s: inf must be >= 0 and finite")):
        load_simulator_config(path)


def test_limits_themselves_are_allowed(tmp_path):
    high = SENSOR_ID_RANGE[1]
    cfg = load_simulator_config(write_config(tmp_path, misc={"seed": 2**32 - 1},
                                             machines={"count": 10, "first_sensor_id": high - 9}))
    assert (cfg.seed, cfg.first_sensor_id + cfg.machine_count - 1) == (2**32 - 1, high)
    assert load_simulator_config(write_config(tmp_path, machines={"count": 100_000})).machine_count == 100_000


def test_port_zero_is_taken_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MQTT_PORT", "18830")
    assert load_simulator_config(write_config(tmp_path, mqtt={"port": 0})).port == 18830
    monkeypatch.setenv("MQTT_PORT", "mqtt")
    with pytest.raises(ConfigError, match=re.escape("MQTT_PORT: 'mqtt' must be an integer in 1..65535")):
        load_simulator_config(write_config(tmp_path, mqtt={"port": 0}))


def test_a_malformed_connection_file_is_a_config_error_too(tmp_path, monkeypatch):
    (tmp_path / "connection.env").write_text("MQTT_HOST 127.0.0.1\n")
    monkeypatch.setenv("STACK_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match=re.escape("connection settings: ") + ".*is not KEY=value"):
        load_simulator_config(write_config(tmp_path))


def test_readings_follow_the_contract_with_increasing_timestamps(tmp_path):
    cfg = load_simulator_config(write_config(tmp_path))
    fleet = Fleet(cfg, [5, 6, 7], seed=1)
    messages = fleet.next_messages(300)
    readings = [parse_reading(payload) for _, payload in messages]
    assert [topic for topic, _ in messages[:3]] == ["iot/5", "iot/6", "iot/7"]
    for sensor in (5, 6, 7):
        stamps = [r["sensor_ts"] for r in readings if r["sensor_id"] == sensor]
        assert len(stamps) == 100 and stamps == sorted(set(stamps))
    assert all(list(r)[2:] == list(SENSOR_FIELDS) for r in readings)


@pytest.mark.parametrize("mode", ["world", "workshop-uniform"])
def test_payloads_are_what_json_writes(tmp_path, mode):
    """The payloads are formatted from a template, not by json.dumps, yet byte for byte what it writes."""
    cfg = load_simulator_config(write_config(tmp_path, machines={"mode": mode}))
    for _, payload in Fleet(cfg, [5, 6, 7], seed=3).next_messages(300):
        assert json.dumps(json.loads(payload)).encode() == payload


def test_every_fault_kind_is_refused_by_the_contract(tmp_path):
    cfg = load_simulator_config(write_config(tmp_path, misc={"fault_share": 1.0}))
    fleet = Fleet(cfg, [1], seed=1)
    for _, payload in fleet.next_messages(len(FAULT_KINDS)):
        with pytest.raises(ValueError):
            parse_reading(payload)
    assert set(fleet.faults) == set(FAULT_KINDS)


def test_the_model_flags_degrading_machines_and_not_healthy_ones(tmp_path, served_model_file):
    cfg = load_simulator_config(write_config(tmp_path, machines={"count": 40, "degrading_share": 0.5,
                                                                 "readings_to_failure": 200}))
    fleet = Fleet(cfg, list(range(40)), seed=3)
    pipeline = load_served_model(served_model_file)[0]
    late = [parse_reading(p) for _, p in fleet.next_messages(40 * 200)][-40 * 20:]  # the last 20 of each
    rows = np.array([[r[name] for name in SENSOR_FIELDS] for r in late])
    verdict = pipeline.predict(rows)
    degrading = fleet.degrading[[r["sensor_id"] for r in late]]
    assert degrading.any() and (~degrading).any()
    assert (verdict[degrading] == 0).mean() > 0.6  # worn out: mostly flagged
    assert (verdict[~degrading] == 1).mean() > 0.9  # healthy: mostly not
