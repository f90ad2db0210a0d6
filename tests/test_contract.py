"""The data contract: what is a reading, and what is refused with which reason."""

from __future__ import annotations

import json
import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import contract
from contract import MAX_NESTING, MAX_PAYLOAD_BYTES, InvalidReading, parse_reading
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


# -- the fast path (orjson) returns exactly what the strict parser returns, or steps aside --

def _strict(payload: bytes) -> dict | str:
    try:
        return contract._parse(payload, MAX_PAYLOAD_BYTES, MAX_NESTING)
    except InvalidReading as refused:
        return str(refused)


def _agrees(payload: bytes) -> bool:
    """Whether the fast path took `payload` (else it steps aside); asserts that it returns what the strict parser
    returns, value for value and type for type, whenever it does."""
    fast = contract._parse_fast(payload, MAX_PAYLOAD_BYTES, MAX_NESTING)
    if fast is None:
        return False
    strict = _strict(payload)
    assert fast == strict, payload
    assert [type(v) for v in fast.values()] == [type(v) for v in strict.values()], payload
    return True


def _pair(key: str, value: str) -> str:
    return f"{json.dumps(key)}:{value}"


number_texts = (st.integers(min_value=-10**30, max_value=10**30).map(str)
                | st.floats(allow_nan=False, allow_infinity=False).map(repr)
                | st.decimals(allow_nan=False, allow_infinity=False).map(str)
                | st.from_regex(r"-?(0|[1-9][0-9]{0,25})(\.[0-9]{1,25})?([eE][+-]?[0-9]{1,3})?", fullmatch=True))


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([*READING, "site", "gateway_id", "received_ts", "a:b"]),
                          number_texts | json_values.map(json.dumps)), max_size=20),
       st.sampled_from([",", ", ", " ,\n"]), st.booleans())
def test_the_fast_path_agrees_with_the_strict_parser(pairs, separator, complete):
    """Repeated keys, integers beyond 64 bits, decimals of any length, colons in strings: the fast path returns
    what the strict parser returns, or leaves the payload to it."""
    fields = {**({k: json.dumps(v) for k, v in READING.items()} if complete else {}), **dict(pairs)}
    text = separator.join(_pair(k, v) for k, v in [*fields.items(), *pairs[len(pairs) // 2:]])
    _agrees(("{" + text + "}").encode())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_the_fast_path_agrees_on_any_bytes(payload):
    _agrees(payload)


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({name: number_texts for name in READING}))
def test_plain_readings_take_the_fast_path(values):
    """A reading of numbers alone (any valid one: the simulator's and the gateway's records) is parsed by orjson."""
    payload = ("{" + ", ".join(_pair(k, v) for k, v in values.items()) + "}").encode()
    if isinstance(_strict(payload), dict):
        assert _agrees(payload)
        assert _agrees(payload[:-1] + b', "gateway_id": "gw-1", "received_ts": 1764230000123456}')
