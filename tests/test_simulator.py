"""The simulator without a broker: its config file, its readings, and that the model sees its failures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from contract import SENSOR_FIELDS, parse_reading
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
])
def test_bad_config_names_the_key_and_the_problem(tmp_path, section, values, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_simulator_config(write_config(tmp_path, **{section: values}))


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
