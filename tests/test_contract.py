"""The data contract: what is a reading, and what is refused with which reason."""

from __future__ import annotations

import json

import pytest

from contract import InvalidReading, parse_reading

READING = {"sensor_id": 48, "sensor_ts": 1556758787735011, **{f"sensor_{i}": 2 for i in range(12)}}


def test_the_workshop_reading_and_its_failure_spikes_are_readings():
    assert parse_reading(json.dumps(READING)) == READING
    spiked = {**READING, "sensor_4": 21.95 + 1000, "sensor_9": 6 + 500}  # the original simulator's injected spikes
    assert parse_reading(json.dumps(spiked))["sensor_4"] == pytest.approx(1021.95)
    extra = {**READING, "site": "plant-7"}
    assert parse_reading(json.dumps(extra))["site"] == "plant-7"


@pytest.mark.parametrize("payload, field, problem", [
    (b"{\"sensor_id\": 48,", None, "not JSON"),
    (b"[1, 2]", None, "not a JSON object"),
    (b"\xff\xfe", None, "not JSON"),
    (json.dumps({k: v for k, v in READING.items() if k != "sensor_ts"}), "sensor_ts", "missing"),
    (json.dumps({**READING, "sensor_id": "48"}), "sensor_id", "must be an integer"),
    (json.dumps({**READING, "sensor_id": True}), "sensor_id", "must be an integer"),
    (json.dumps({**READING, "sensor_ts": 1.5e15}), "sensor_ts", "must be an integer"),
    (json.dumps({**READING, "sensor_ts": 12}), "sensor_ts", "outside"),
    (json.dumps({**READING, "sensor_2": None}), "sensor_2", "must be a number"),
    (json.dumps({**READING, "sensor_2": float("nan")}), "sensor_2", "not a finite number"),
    (json.dumps({**READING, "sensor_2": float("-inf")}), "sensor_2", "not a finite number"),
    (json.dumps({**READING, "sensor_11": -2e5}), "sensor_11", "outside the physical bounds"),
    (b'{"sensor_id": 1, "sensor_id": 2}', "sensor_id", "duplicate key"),
])
def test_what_cannot_be_a_reading_is_refused_naming_field_and_problem(payload, field, problem):
    with pytest.raises(InvalidReading) as refused:
        parse_reading(payload)
    assert refused.value.field == field
    assert problem in refused.value.problem
