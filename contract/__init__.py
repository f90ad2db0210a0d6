"""The data contract: the one place that says what a sensor reading is. Every part imports it.

A reading, as the workshop's simulator printed it and as it travels on MQTT `iot/<sensor_id>` and Kafka `iot`:

    {"sensor_id": 48, "sensor_ts": 1556758787735011, "sensor_0": 2, ..., "sensor_11": 5}

- `sensor_id`: the machine, an int.
- `sensor_ts`: microseconds since the epoch, an int.
- `sensor_0` .. `sensor_11`: the twelve sensor values, numbers. They are the model's features, always in this
  order; the model API's feature string lists them in this order too: "0, 65, 0, 137, 21.95, ...".
- Model verdict `is_healthy` / `result`: 1 = healthy, 0 = likely to break.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

N_SENSORS = 12
SENSOR_FIELDS: tuple[str, ...] = tuple(f"sensor_{i}" for i in range(N_SENSORS))
FEATURES = SENSOR_FIELDS
ID_FIELD = "sensor_id"
TS_FIELD = "sensor_ts"
LABEL = "is_healthy"
HEALTHY, LIKELY_TO_BREAK = 1, 0


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
    """The feature string for 12 values, as the workshop's client sent it."""
    return ", ".join(f"{v:g}" for v in validate_features(values))
