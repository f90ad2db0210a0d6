"""The simulator's JSON config file: the workshop's shape (`mqtt`, `misc`, `machines`), extended.

    {
      "mqtt":     {"host": "", "port": 0, "username": "", "password": "", "topic": "iot", "qos": 1},
      "misc":     {"interval_ms": 1000, "verbose": true, "seed": 42, "messages": 0, "duration_s": 0,
                   "publishers": 1, "fault_share": 0.0},
      "machines": {"count": 10, "degrading_share": 0.3, "first_sensor_id": 1, "readings_to_failure": 600,
                   "mode": "world", "ranges": {"sensor_0": [0, 3], ...}}
    }

mqtt.host/port/username/password left empty ("" or 0) are taken from the environment or .stack/connection.env
(MQTT_HOST, MQTT_PORT, MQTT_USERNAME, MQTT_PASSWORD). Readings go to `<topic>/<sensor_id>`.
misc.interval_ms: pause between two messages (0 = as fast as possible); messages / duration_s: stop after that
many messages / seconds (0 = no limit); publishers: publishing processes (for high rates); fault_share: share of
messages deliberately malformed, to exercise the dead-letter path.
machines.mode: "world" draws readings from the model's world (the default); "workshop-uniform" sends uniform random
integers within `ranges`, as the original simulator did (readings the model was never trained on).
Every value is checked (numbers finite, seed 0..2**32-1, count 1..100000, sensor ids within the contract's), and a
key the file's sections do not have is refused with the nearest one (a misspelt key would silently be ignored).
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from contract import SENSOR_FIELDS, SENSOR_ID_RANGE
from runtime.settings import MQTT_TOPIC_PREFIX, connection_settings

MODES = ("world", "workshop-uniform")
SECTION_KEYS = {
    "mqtt": ("host", "port", "username", "password", "topic", "qos"),
    "misc": ("interval_ms", "verbose", "seed", "messages", "duration_s", "publishers", "fault_share"),
    "machines": ("count", "degrading_share", "first_sensor_id", "readings_to_failure", "mode", "ranges"),
}
# What every NumPy and scikit-learn seed accepts (default_rng alone would take any non-negative int), so a seed
# from this file can be reused with the model's tools.
SEED_MAX = 2**32 - 1
# One simulated machine per sensor_id, each an object of a publishing process: beyond this, a config is a typo.
MACHINES_MAX = 100_000


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the key and the problem."""


@dataclass(frozen=True)
class SimulatorConfig:
    host: str
    port: int
    username: str
    password: str
    topic: str
    qos: int
    interval_ms: float
    verbose: bool
    seed: int
    messages: int
    duration_s: float
    publishers: int
    fault_share: float
    machine_count: int
    degrading_share: float
    first_sensor_id: int
    readings_to_failure: int
    mode: str
    ranges: dict[str, tuple[float, float]]


def _get(section: dict, section_name: str, key: str, kind: type | tuple, default=None, check=None):
    value = section.get(key, default)
    where = f"{section_name}.{key}"
    if value is None:
        raise ConfigError(f"{where}: missing")
    if isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{where}: must be {getattr(kind, '__name__', kind)}, got {value!r}")
    if not isinstance(value, kind):
        expected = " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__
        raise ConfigError(f"{where}: must be {expected}, got {type(value).__name__} {value!r}")
    if check:
        problem = check(value)
        if problem:
            raise ConfigError(f"{where}: {value!r} {problem}")
    return value


def _non_negative(value) -> str | None:
    return "must be >= 0" if value < 0 else None


def _finite_non_negative(value) -> str | None:
    """Python's json reads NaN and Infinity, which JSON itself does not have."""
    return None if 0 <= value < math.inf else "must be >= 0 and finite"


def _within(low: int, high: int, note: str = "") -> Callable[[int], str | None]:
    return lambda value: None if low <= value <= high else f"must be in {low}..{high}{note}"


def _share(value) -> str | None:
    return None if 0 <= value <= 1 else "must be between 0 and 1"


def _positive(value) -> str | None:
    return None if value > 0 else "must be > 0"


def _ranges(machines: dict) -> dict[str, tuple[float, float]]:
    ranges = machines.get("ranges", {})
    if not isinstance(ranges, dict):
        raise ConfigError("machines.ranges: must be an object of sensor -> [min, max]")
    result = {}
    for name, bounds in ranges.items():
        if name not in SENSOR_FIELDS:
            raise ConfigError(f"machines.ranges.{name}: unknown sensor; sensors are sensor_0..sensor_11")
        if (not isinstance(bounds, list) or len(bounds) != 2
                or not all(isinstance(b, int | float) and not isinstance(b, bool) and -math.inf < b < math.inf
                           for b in bounds)
                or bounds[0] > bounds[1]):
            raise ConfigError(f"machines.ranges.{name}: must be [min, max] finite numbers with min <= max, "
                              f"got {bounds!r}")
        result[name] = (bounds[0], bounds[1])
    return result


def _refuse_unknown_keys(section: dict, name: str) -> None:
    for key in section:
        if key not in SECTION_KEYS[name]:
            match = difflib.get_close_matches(key, SECTION_KEYS[name], n=1)
            hint = f"did you mean {name}.{match[0]}?" if match else f"known: {', '.join(SECTION_KEYS[name])}"
            raise ConfigError(f"{name}.{key}: unknown key; {hint}")


def _sensor_ids(machines: dict) -> tuple[int, int]:
    """machines.count and machines.first_sensor_id, such that every machine's sensor_id fits the contract."""
    count = _get(machines, "machines", "count", int, 10, _within(1, MACHINES_MAX))
    low, high = SENSOR_ID_RANGE
    first = _get(machines, "machines", "first_sensor_id", int, 1,
                 _within(low, high - count + 1, f" for machines.count {count} (sensor_id is at most {high})"))
    return count, first


def _connection() -> dict[str, str]:
    """The environment's or connection.env's MQTT settings; a malformed connection file is a ConfigError too."""
    try:
        return connection_settings()
    except ValueError as exc:
        raise ConfigError(f"connection settings: {exc}") from None


def _environment_port(connection: dict[str, str]) -> int:
    text = connection.get("MQTT_PORT", "0")
    if not text.isdecimal() or not 0 <= int(text) <= 65535:
        raise ConfigError(f"MQTT_PORT: {text!r} must be an integer in 1..65535 (used as mqtt.port is 0)")
    return int(text)


def load_simulator_config(path: Path, misc_overrides: dict | None = None) -> SimulatorConfig:
    """Read and check the config file; empty MQTT settings come from the environment or connection.env.

    `misc_overrides` (command-line options) replace keys of the `misc` section before the checks, so they are
    checked the same way."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must hold a JSON object with mqtt, misc and machines")
    if misc_overrides:
        if not isinstance(raw.get("misc", {}), dict):
            raise ConfigError("misc: must be an object")
        raw["misc"] = {**raw.get("misc", {}), **misc_overrides}
    sections = {}
    for name in SECTION_KEYS:
        section = raw.get(name, {})
        if not isinstance(section, dict):
            raise ConfigError(f"{name}: must be an object")
        _refuse_unknown_keys(section, name)
        sections[name] = section
    unknown = set(raw) - set(sections)
    if unknown:
        raise ConfigError(f"unknown section(s) {sorted(unknown)}; known: mqtt, misc, machines")
    mqtt, misc, machines = sections["mqtt"], sections["misc"], sections["machines"]

    connection = _connection()
    host = _get(mqtt, "mqtt", "host", str, "") or connection.get("MQTT_HOST", "")
    port = (_get(mqtt, "mqtt", "port", int, 0, _within(0, 65535, " (0 = from the environment)"))
            or _environment_port(connection))
    username = _get(mqtt, "mqtt", "username", str, "") or connection.get("MQTT_USERNAME", "")
    password = _get(mqtt, "mqtt", "password", str, "") or connection.get("MQTT_PASSWORD", "")
    if not host or not port:
        raise ConfigError("mqtt.host/mqtt.port: empty in the file and MQTT_HOST/MQTT_PORT not set: run `make up` "
                          "(writes .stack/connection.env) or fill them in")
    mode = _get(machines, "machines", "mode", str, "world",
                lambda v: None if v in MODES else f"is not one of {', '.join(MODES)}")
    ranges = _ranges(machines)
    machine_count, first_sensor_id = _sensor_ids(machines)
    if mode == "workshop-uniform" and set(ranges) != set(SENSOR_FIELDS):
        raise ConfigError("machines.ranges: mode workshop-uniform needs a [min, max] for each of sensor_0..sensor_11")
    return SimulatorConfig(
        host=host, port=port, username=username, password=password,
        topic=_get(mqtt, "mqtt", "topic", str, MQTT_TOPIC_PREFIX, lambda v: None if v and "#" not in v and "+" not in v
                   else "must be a plain topic (no wildcards)").rstrip("/"),
        qos=_get(mqtt, "mqtt", "qos", int, 1, lambda v: None if v in (0, 1, 2) else "must be 0, 1 or 2"),
        interval_ms=_get(misc, "misc", "interval_ms", (int, float), 1000, _finite_non_negative),
        verbose=_get(misc, "misc", "verbose", bool, False),
        seed=_get(misc, "misc", "seed", int, 42, _within(0, SEED_MAX)),
        messages=_get(misc, "misc", "messages", int, 0, _non_negative),
        duration_s=_get(misc, "misc", "duration_s", (int, float), 0, _finite_non_negative),
        publishers=_get(misc, "misc", "publishers", int, 1, _positive),
        fault_share=_get(misc, "misc", "fault_share", (int, float), 0.0, _share),
        machine_count=machine_count,
        degrading_share=_get(machines, "machines", "degrading_share", (int, float), 0.3, _share),
        first_sensor_id=first_sensor_id,
        readings_to_failure=_get(machines, "machines", "readings_to_failure", int, 600, _positive),
        mode=mode,
        ranges=ranges,
    )
