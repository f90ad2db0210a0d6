"""The named poison corpus: one payload of each kind that has stopped, or could stop, a stage of the pipeline,
with the dead-letter reason the contract gives it. The contract tests check each reason; the poison and drill
tests send the corpus over MQTT and straight into Kafka and expect each one in `iot.dlq`, nothing else stopped.

`mqtt` / `kafka`: whether the payload can travel that way (a Kafka tombstone has no MQTT form; Kafka refuses
records over 1 MiB, which MQTT carries).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass

GOOD = {"sensor_id": 48, "sensor_ts": 1556758787735011, **{f"sensor_{i}": 2 for i in range(12)}}


def reading(**changes: object) -> bytes:
    """The workshop's reading with some fields changed, as JSON bytes."""
    return json.dumps({**GOOD, **changes}).encode()


def _raw_field(name: str, literal: str) -> bytes:
    """The reading with one field's value written as a raw JSON literal (what json.dumps would refuse)."""
    return json.dumps({**GOOD, name: 0}).replace(f'"{name}": 0', f'"{name}": {literal}').encode()


@dataclass(frozen=True)
class Poison:
    name: str
    make: Callable[[], bytes | None]
    reason: str  # a regular expression the dead letter's reason must match
    mqtt: bool = True
    kafka: bool = True


CORPUS: tuple[Poison, ...] = (
    Poison("deep_array_100k", lambda: b"[" * 100_000 + b"]" * 100_000, r"^payload of 200,000 bytes exceeds"),
    Poison("deep_array_within_size", lambda: b"[" * 30_000 + b"]" * 30_000, r"^nested deeper than 32 levels"),
    Poison("deep_object", lambda: b'{"a":' * 5_000 + b"1" + b"}" * 5_000, r"^nested deeper than 32 levels"),
    Poison("huge_int_sensor", lambda: _raw_field("sensor_3", "9" * 400),
           r"^sensor_3: an integer of 400 digits is outside the physical bounds"),
    Poison("huge_int_id", lambda: _raw_field("sensor_id", "9" * 400), r"^sensor_id: an integer of 400 digits"),
    Poison("int_beyond_python_limit", lambda: _raw_field("sensor_3", "7" * 5_000), r"^not JSON: Exceeds the limit"),
    Poison("oversize_2mib", lambda: reading(note="x" * (2 * 1024 * 1024)), r"^payload of 2,097,\d{3} bytes exceeds",
           kafka=False),
    Poison("oversize_100k", lambda: reading(note="x" * 100_000), r"^payload of 100,\d{3} bytes exceeds"),
    Poison("empty", lambda: b"", r"^not JSON: Expecting value"),
    Poison("whitespace", lambda: b"  \n\t ", r"^not JSON: Expecting value"),
    Poison("not_unicode", lambda: b"\xff\xfe\xfd\x00garbage", r"^not JSON"),
    Poison("lone_surrogate_keys", lambda: b'{"\xed\xa0\x80": 1, "\xed\xa0\x80": 2}',
           r"^'\\ud800': duplicate key$"),
    Poison("nan", lambda: _raw_field("sensor_2", "NaN"), r"^sensor_2: nan is not a finite number$"),
    Poison("infinity", lambda: _raw_field("sensor_2", "-Infinity"), r"^sensor_2: -inf is not a finite number$"),
    Poison("overflowing_float", lambda: _raw_field("sensor_2", "1e400"), r"^sensor_2: inf is not a finite number$"),
    Poison("nan_in_extra_array", lambda: _raw_field("extra", "[1, NaN]"), r"^extra: holds nan"),
    Poison("json_null", lambda: b"null", r"^not a JSON object but NoneType$"),
    Poison("json_array", lambda: b"[1, 2, 3]", r"^not a JSON object but list$"),
    Poison("json_string", lambda: b'"a reading"', r"^not a JSON object but str$"),
    Poison("bool_id", lambda: reading(sensor_id=True), r"^sensor_id: must be an integer, got bool True$"),
    Poison("missing_field", lambda: json.dumps({k: v for k, v in GOOD.items() if k != "sensor_5"}).encode(),
           r"^sensor_5: missing$"),
    Poison("wrong_type", lambda: reading(sensor_3="fast"), r"^sensor_3: must be a number, got str 'fast'$"),
    Poison("long_string_value", lambda: reading(sensor_3="z" * 60_000),
           r"^sensor_3: must be a number, got str 'z{70,}\.\.\.$"),
    Poison("out_of_range", lambda: reading(sensor_7=1e12), r"^sensor_7: 1000000000000.0 is outside the physical"),
    Poison("duplicate_key", lambda: reading()[:-1] + b', "sensor_id": 49}', r"^sensor_id: duplicate key$"),
    Poison("control_character", lambda: b'{"sensor_id": 1\x00}', r"^not JSON"),
    Poison("binary_garbage", lambda: random.Random(7).randbytes(4096), r"^not JSON"),
    Poison("tombstone", lambda: None, r"^no payload \(a null value", mqtt=False),
)

# Not poison: unusual forms of a good reading, which must be scored like any other.
UNUSUAL_READINGS: dict[str, bytes] = {
    "utf16": json.dumps(GOOD).encode("utf-16"),
    "utf8_with_bom": b"\xef\xbb\xbf" + json.dumps(GOOD).encode(),
    "extra_fields": reading(site="plant-7", tags=["a", {"b": [1, 2.5]}]),
    "failure_spike": reading(sensor_4=21.95 + 1000, sensor_9=6 + 500),
}
