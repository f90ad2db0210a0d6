"""The data contract: the one place that says what a sensor reading is. Every part imports it.

A reading, as the workshop's simulator printed it and as it travels on MQTT `iot/<sensor_id>` and Kafka `iot`:

    {"sensor_id": 48, "sensor_ts": 1556758787735011, "sensor_0": 2, ..., "sensor_11": 5}

- `sensor_id`: the machine, an int.
- `sensor_ts`: microseconds since the epoch, an int.
- `sensor_0` .. `sensor_11`: the twelve sensor values, numbers. They are the model's features, always in this
  order; the model API's feature string lists them in this order too: "0, 65, 0, 137, 21.95, ...".
- Model verdict `is_healthy` / `result`: 1 = healthy, 0 = likely to break.

What the gateway adds on the way into Kafka (`GATEWAY_FIELDS`): `gateway_id` and `received_ts` (microseconds).

A payload that is not a reading (not JSON, not an object, a duplicate key, a missing field, a wrong type, NaN or
infinity, beyond the wide physical bounds below) raises `InvalidReading` naming the field and the problem.
Unusual but possible values are readings: judging them is the model's job.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

N_SENSORS = 12
SENSOR_FIELDS: tuple[str, ...] = tuple(f"sensor_{i}" for i in range(N_SENSORS))
FEATURES = SENSOR_FIELDS
ID_FIELD = "sensor_id"
TS_FIELD = "sensor_ts"
LABEL = "is_healthy"
HEALTHY, LIKELY_TO_BREAK = 1, 0


GATEWAY_ID_FIELD = "gateway_id"
RECEIVED_TS_FIELD = "received_ts"
GATEWAY_FIELDS = (GATEWAY_ID_FIELD, RECEIVED_TS_FIELD)

# Wide physical bounds: anything outside cannot come from a working instrument. They are deliberately loose;
# the workshop's own simulator ranges and its failure spikes (+500 to +1000 on a sensor) are far inside.
SENSOR_ID_RANGE = (0, 2**31 - 1)  # Kudu INT
SENSOR_TS_RANGE = (946_684_800_000_000, 4_102_444_800_000_000)  # 2000-01-01 .. 2100-01-01, in microseconds
SENSOR_VALUE_RANGE = (-100_000.0, 1_000_000.0)


class InvalidReading(ValueError):
    """A payload that cannot be a reading. `field` names the culprit (None for the payload as a whole)."""

    def __init__(self, field: str | None, problem: str):
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}" if field else problem)


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    seen: dict[str, object] = {}
    for key, value in pairs:
        if key in seen:
            raise InvalidReading(key, "duplicate key")
        seen[key] = value
    return seen


def _check_int(name: str, value: object, bounds: tuple[int, int]) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidReading(name, f"must be an integer, got {type(value).__name__} {value!r}")
    if not bounds[0] <= value <= bounds[1]:
        raise InvalidReading(name, f"{value} is outside [{bounds[0]}, {bounds[1]}]")
    return value


def _check_sensor(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidReading(name, f"must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise InvalidReading(name, f"{value} is not a finite number")
    low, high = SENSOR_VALUE_RANGE
    if not low <= value <= high:
        raise InvalidReading(name, f"{value} is outside the physical bounds [{low:g}, {high:g}]")
    return value


def parse_reading(payload: bytes | str) -> dict:
    """Parse and validate one reading (JSON). Returns the object; raises InvalidReading otherwise.

    Fields beyond the contract's are kept (they are not the gateway's business)."""
    try:
        reading = json.loads(payload, object_pairs_hook=_no_duplicate_keys)
    except InvalidReading:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidReading(None, f"not JSON: {exc}") from None
    if not isinstance(reading, dict):
        raise InvalidReading(None, f"not a JSON object but {type(reading).__name__}")
    for name in (ID_FIELD, TS_FIELD, *SENSOR_FIELDS):
        if name not in reading:
            raise InvalidReading(name, "missing")
    _check_int(ID_FIELD, reading[ID_FIELD], SENSOR_ID_RANGE)
    _check_int(TS_FIELD, reading[TS_FIELD], SENSOR_TS_RANGE)
    for name in SENSOR_FIELDS:
        _check_sensor(name, reading[name])
    return reading


class FeatureError(ValueError):
    """A feature vector that cannot be scored; the message names what is wrong."""


def parse_feature_string(feature: object) -> list[float]:
    """Parse the workshop's feature string "v0, v1, ..., v11" into 12 finite floats."""
    if not isinstance(feature, str):
        raise FeatureError(f"'feature' must be a string of {N_SENSORS} comma-separated numbers, "
                           f"got {type(feature).__name__}")
    parts = [part.strip() for part in feature.split(",")]
    if len(parts) != N_SENSORS:
        raise FeatureError(f"'feature' must have {N_SENSORS} values (sensor_0..sensor_11), got {len(parts)}")
    return validate_features(parts)


def validate_features(values: Sequence[object]) -> list[float]:
    """Check one row of 12 feature values: each a finite number. Returns them as floats."""
    if len(values) != N_SENSORS:
        raise FeatureError(f"a row must have {N_SENSORS} values (sensor_0..sensor_11), got {len(values)}")
    row = []
    for name, value in zip(SENSOR_FIELDS, values, strict=True):
        if isinstance(value, bool):
            raise FeatureError(f"{name}: {value!r} is not a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise FeatureError(f"{name}: {value!r} is not a number") from None
        if not math.isfinite(number):
            raise FeatureError(f"{name}: {value!r} is not a finite number")
        row.append(number)
    return row


def format_feature_string(values: Sequence[float]) -> str:
    """The feature string for 12 values, as the workshop's client sent it ("0, 65, 21.95, ..."), but lossless."""
    return ", ".join(_shortest(v) for v in validate_features(values))


def _shortest(value: float) -> str:
    short = f"{value:g}"
    return short if float(short) == value else repr(value)
