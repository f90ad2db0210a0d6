"""The data contract: what is a reading, and what is refused with which reason."""

from __future__ import annotations

import json
import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract import InvalidReading, parse_reading
from tests.poison import CORPUS, UNUSUAL_READINGS

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


# -- totality: whatever the input, a reading or InvalidReading with a short, encodable reason --

def _outcome(payload: object) -> dict | InvalidReading:
    try:
        result = parse_reading(payload)
    except InvalidReading as refused:
        assert refused.problem
        str(refused).encode("utf-8")  # dead-letter headers are UTF-8: the reason must encode
        assert len(str(refused)) < 400, "a reason repeats values, never whole payloads"
        return refused
    assert isinstance(result, dict)
    for name in ("sensor_id", "sensor_ts", *(f"sensor_{i}" for i in range(12))):
        assert isinstance(result[name], int | float) and not isinstance(result[name], bool)
        assert math.isfinite(result[name])
    return result


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=-10**500, max_value=10**500)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_any_bytes_are_a_reading_or_refused(payload):
    _outcome(payload)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=2048))
def test_any_text_is_a_reading_or_refused(payload):
    _outcome(payload)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_value_is_a_reading_or_refused(value):
    _outcome(json.dumps(value).encode())


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([*READING, "site", "sensor_12"]), json_values, max_size=16),
       st.sampled_from(["utf-8", "utf-16", "utf-32"]))
def test_near_readings_in_any_json_encoding_are_a_reading_or_refused(fields, encoding):
    outcome = _outcome(json.dumps({**READING, **fields}).encode(encoding))
    if isinstance(outcome, dict):
        assert outcome == {**READING, **fields}


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=33, max_value=5_000), st.sampled_from(["[", '{"a":']))
def test_any_nesting_beyond_the_bound_is_refused_without_recursion(depth, opener):
    closer = "]" if opener == "[" else "}"
    with pytest.raises(InvalidReading, match="nested deeper than 32|exceeds the limit"):
        parse_reading((opener * depth + "1" + closer * depth).encode())


@pytest.mark.parametrize("poison", CORPUS, ids=lambda p: p.name)
def test_every_poison_of_the_corpus_is_refused_with_its_reason(poison):
    with pytest.raises(InvalidReading) as refused:
        parse_reading(poison.make())
    assert re.search(poison.reason, str(refused.value)), str(refused.value)


@pytest.mark.parametrize("name", UNUSUAL_READINGS)
def test_unusual_forms_of_a_reading_are_readings(name):
    reading = parse_reading(UNUSUAL_READINGS[name])
    assert reading["sensor_id"] == READING["sensor_id"]


def test_the_bounds_are_settings():
    nested = b"[" * 40 + b"]" * 40
    with pytest.raises(InvalidReading, match="nested deeper than 32"):
        parse_reading(nested)
    with pytest.raises(InvalidReading, match="not a JSON object"):  # deep enough for a bound of 50
        parse_reading(nested, max_nesting=50)
    with pytest.raises(InvalidReading, match="payload of 230 bytes exceeds the limit of 100 bytes"):
        parse_reading(json.dumps(READING).encode(), max_bytes=100)
