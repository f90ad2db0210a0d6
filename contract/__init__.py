"""The data contract: the one place that says what a sensor reading is. Every part imports it; it imports
nothing of the project (the bottom floor, with `runtime`).

A reading, as the workshop's simulator printed it and as it travels on MQTT `iot/<sensor_id>` and Kafka `iot`:

    {"sensor_id": 48, "sensor_ts": 1556758787735011, "sensor_0": 2, ..., "sensor_11": 5}

- `sensor_id`: the machine, an int.
- `sensor_ts`: microseconds since the epoch, an int.
- `sensor_0` .. `sensor_11`: the twelve sensor values, numbers. They are the model's features, always in this
  order; the model API's feature string lists them in this order too: "0, 65, 0, 137, 21.95, ...".
- Model verdict `is_healthy` / `result`: 1 = healthy, 0 = likely to break.
- `model_version`: the version of the served model that gave a verdict (the model server sends it with every
  answer).

The Kudu/SQL table `sensors` (`TABLE_COLUMNS`, in order): the workshop's lab-9 columns `sensor_id`, `sensor_ts`,
`sensor_0`..`sensor_11`, `is_healthy` (primary key: sensor_id, sensor_ts), then `model_version`, beyond the
workshop's schema: after lab 7 promotes a new model, old and new verdicts are told apart.

What the gateway adds on the way into Kafka (`GATEWAY_FIELDS`): `gateway_id` and `received_ts` (microseconds).

A payload that is not a reading (not JSON, not an object, a duplicate key, a missing field, a wrong type, NaN or
infinity anywhere, beyond the wide physical bounds below, larger than `MAX_PAYLOAD_BYTES`, nested deeper than
`MAX_NESTING`, no payload at all) raises `InvalidReading` naming the field and the problem. `parse_reading` is
total: whatever it is given, it returns a reading or raises `InvalidReading`, never anything else, so that one
payload can never stop the gateway or the streaming job (both use it). Unusual but possible values are readings:
judging them is the model's job.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence

import orjson

N_SENSORS = 12
SENSOR_FIELDS: tuple[str, ...] = tuple(f"sensor_{i}" for i in range(N_SENSORS))
FEATURES = SENSOR_FIELDS
ID_FIELD = "sensor_id"
TS_FIELD = "sensor_ts"
LABEL = "is_healthy"
HEALTHY, LIKELY_TO_BREAK = 1, 0
MODEL_VERSION = "model_version"
TABLE_COLUMNS = (ID_FIELD, TS_FIELD, *SENSOR_FIELDS, LABEL, MODEL_VERSION)


# The workshop's two examples of lab 8, as (features, the verdict every model must give): a cool bearing at full
# speed, and a hot bearing (95 degC) with the spindle slowed to 880 rpm and a high current.
WORKSHOP_EXAMPLES: tuple[tuple[tuple[float, ...], int], ...] = (
    ((0, 65, 0, 137, 21.95, 83, 19.42, 111, 9.4, 6, 3.43, 4), 1),
    ((0, 95, 0, 88, 26.62, 75, 21.05, 115, 8.65, 5, 3.32, 3), 0),
)

GATEWAY_ID_FIELD = "gateway_id"
RECEIVED_TS_FIELD = "received_ts"
GATEWAY_FIELDS = (GATEWAY_ID_FIELD, RECEIVED_TS_FIELD)

# Wide physical bounds: anything outside cannot come from a working instrument. They are deliberately loose;
# the workshop's own simulator ranges and its failure spikes (+500 to +1000 on a sensor) are far inside.
SENSOR_ID_RANGE = (0, 2**31 - 1)  # Kudu INT
SENSOR_TS_RANGE = (946_684_800_000_000, 4_102_444_800_000_000)  # 2000-01-01 .. 2100-01-01, in microseconds
SENSOR_VALUE_RANGE = (-100_000.0, 1_000_000.0)


# Bounds of what the checks read. A reading is about 350 bytes and flat; these leave room for extra fields while
# keeping one payload's cost bounded. The gateway and the streaming job take them as options (--max-payload-bytes,
# --max-nesting); both default to these.
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_NESTING = 32
_SHOWN_CHARS = 80  # how much of an offending value an error message repeats


class InvalidReading(ValueError):
    """A payload that cannot be a reading. `field` names the culprit (None for the payload as a whole)."""

    def __init__(self, field: str | None, problem: str):
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}" if field else problem)


def clip(text: str, limit: int = _SHOWN_CHARS) -> str:
    """`text` cut to `limit` characters (with "..." when cut): error messages repeat values, never whole payloads."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def show(value: object) -> str:
    """A short, printable rendering of an offending value for an error message."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        return f"an integer of {len(str(abs(value))) if abs(value) < 10**4000 else 'over 4,000'} digits"
    return clip(repr(value))


def _field_name(key: str) -> str:
    return key if key.isprintable() and len(key) <= _SHOWN_CHARS else show(key)


def _strict_pairs(pairs: list[tuple[str, object]]) -> dict:
    """object_pairs_hook: refuse a repeated key and a non-finite number, naming the key."""
    seen: dict[str, object] = {}
    for key, value in pairs:
        if key in seen:
            raise InvalidReading(_field_name(key), "duplicate key")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidReading(_field_name(key), f"{value} is not a finite number")
        seen[key] = value
    return seen


def _check_extra(name: str, value: object) -> None:
    """Extra fields are kept as they are, so they too must hold only finite numbers (arrays included)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise InvalidReading(_field_name(name), f"holds {item}, which is not a finite number")
        if isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.values())


def _check_int(name: str, value: object, bounds: tuple[int, int]) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidReading(name, f"must be an integer, got {type(value).__name__} {show(value)}")
    if not bounds[0] <= value <= bounds[1]:
        raise InvalidReading(name, f"{show(value)} is outside [{bounds[0]}, {bounds[1]}]")
    return value


def _check_sensor(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidReading(name, f"must be a number, got {type(value).__name__} {show(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidReading(name, f"{value} is not a finite number")
    low, high = SENSOR_VALUE_RANGE
    if not low <= value <= high:  # exact for any int, however large: no conversion to float
        raise InvalidReading(name, f"{show(value)} is outside the physical bounds [{low:g}, {high:g}]")
    return value


def _decode(payload: object, max_bytes: int) -> str:
    """The payload as text, within the size bound (JSON may be UTF-8, -16 or -32, as `json.loads` accepts)."""
    if payload is None:
        raise InvalidReading(None, "no payload (a null value: a Kafka tombstone or an empty record)")
    if isinstance(payload, str):
        size = len(payload.encode("utf-8", "surrogatepass"))
    elif isinstance(payload, bytes | bytearray | memoryview):
        payload = bytes(payload)
        size = len(payload)
    else:
        raise InvalidReading(None, f"payload must be bytes or text, got {type(payload).__name__}")
    if size > max_bytes:
        raise InvalidReading(None, f"payload of {size:,} bytes exceeds the limit of {max_bytes:,} bytes")
    if isinstance(payload, str):
        return payload
    try:
        return payload.decode(json.detect_encoding(payload), "surrogatepass")
    except UnicodeDecodeError as exc:
        raise InvalidReading(None, f"not JSON: not valid Unicode text ({exc.reason} at byte {exc.start})") from None


def nested_deeper_than(text: str, limit: int) -> bool:
    """True if arrays and objects in the JSON `text` nest deeper than `limit` (brackets in strings do not count);
    checked before parsing, since Python's parser recurses once per level."""
    return text.count("[") + text.count("{") > limit and _nesting(text) > limit


def _nesting(text: str) -> int:
    """How deep arrays and objects nest in `text`; brackets inside strings do not count. One linear pass."""
    depth = deepest = skip_to = 0
    in_string = False
    for match in _SPECIAL.finditer(text):
        at = match.start()
        if at < skip_to:
            continue
        char = text[at]
        if in_string:
            if char == "\\":
                skip_to = at + 2  # the escaped character, whatever it is
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


_SPECIAL = re.compile(r'["\\\[\]{}]')


def _parse(payload: object, max_bytes: int, max_nesting: int) -> dict:
    """The strict parser: json's, every pair checked as it is read; it names the fault of any payload."""
    text = _decode(payload, max_bytes)
    if nested_deeper_than(text, max_nesting):
        raise InvalidReading(None, f"nested deeper than {max_nesting} levels of arrays or objects")
    try:
        reading = json.loads(text, object_pairs_hook=_strict_pairs)
    except ValueError as exc:  # InvalidReading is a ValueError too: keep its field and problem
        if isinstance(exc, InvalidReading):
            raise
        raise InvalidReading(None, f"not JSON: {clip(str(exc), 200)}") from None
    if not isinstance(reading, dict):
        raise InvalidReading(None, f"not a JSON object but {type(reading).__name__}")
    return _checked(reading)


def _checked(reading: dict) -> dict:
    """The reading if its fields keep the contract; InvalidReading naming the first that does not."""
    for name in (ID_FIELD, TS_FIELD, *SENSOR_FIELDS):
        if name not in reading:
            raise InvalidReading(name, "missing")
    _check_int(ID_FIELD, reading[ID_FIELD], SENSOR_ID_RANGE)
    _check_int(TS_FIELD, reading[TS_FIELD], SENSOR_TS_RANGE)
    low, high = SENSOR_VALUE_RANGE
    for name in SENSOR_FIELDS:
        value = reading[name]
        # The usual value passes this one comparison; any other gets the full check, which names its fault.
        if not ((type(value) is float or type(value) is int) and low <= value <= high):
            _check_sensor(name, value)
    if len(reading) > len(_CONTRACT_FIELDS):
        for name in reading.keys() - _CONTRACT_FIELDS:
            _check_extra(name, reading[name])
    return reading


# orjson turns an integer beyond 64 bits into a float, where json keeps it exact: a float this large may be one.
_EXACT_FLOATS_BELOW = 2.0**63
_PLAIN_EXTRAS = (str, int, bool, type(None))


def _parse_fast(payload: object, max_bytes: int, max_nesting: int) -> dict | None:
    """The reading, parsed by orjson (~15x faster), when it is certainly what the strict parser returns; else None,
    and the strict parser decides and names the fault. Certain means: UTF-8 bytes within the bound; an object with
    as many `:` in its bytes as keys (every pair puts one there, a colon in a string one more: so no repeated key,
    no nested pairs); extra fields plain (text, bool, null, int, a float below 2**63); every check passed. orjson
    refuses NaN, Infinity, numbers beyond a double and lone surrogates itself."""
    if type(payload) is not bytes or len(payload) > max_bytes or max_nesting < 1:
        return None
    try:
        reading = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if type(reading) is not dict or len(reading) != payload.count(b":"):
        return None
    if len(reading) > len(_CONTRACT_FIELDS):
        for name in reading.keys() - _CONTRACT_FIELDS:
            value = reading[name]
            if not (isinstance(value, _PLAIN_EXTRAS) or type(value) is float and abs(value) < _EXACT_FLOATS_BELOW):
                return None
    try:
        return _checked(reading)
    except InvalidReading:
        return None


_CONTRACT_FIELDS = frozenset((ID_FIELD, TS_FIELD, *SENSOR_FIELDS))


def parse_reading(payload: object, max_bytes: int = MAX_PAYLOAD_BYTES, max_nesting: int = MAX_NESTING) -> dict:
    """Parse and validate one reading (JSON bytes or text). Returns the object; raises InvalidReading otherwise.

    Total: no input makes it raise anything but InvalidReading. Fields beyond the contract's are kept (they are
    not the gateway's business), but they too must be finite, unrepeated and within the bounds."""
    try:
        return _parse_fast(payload, max_bytes, max_nesting) or _parse(payload, max_bytes, max_nesting)
    except InvalidReading:
        raise
    except Exception as exc:  # noqa: BLE001 - total by design: anything else still means "not a reading"
        raise InvalidReading(None, f"unreadable payload ({type(exc).__name__}: {clip(str(exc))})") from None


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
            raise FeatureError(f"{name}: {show(value)} is not a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise FeatureError(f"{name}: {show(value)} is not a number") from None
        except OverflowError:
            number = math.inf  # an integer too large for a float
        if not math.isfinite(number):
            raise FeatureError(f"{name}: {show(value)} is not a finite number")
        row.append(number)
    return row


def format_feature_string(values: Sequence[float]) -> str:
    """The feature string for 12 values, as the workshop's client sent it ("0, 65, 21.95, ..."), but lossless."""
    return ", ".join(_shortest(v) for v in validate_features(values))


def _shortest(value: float) -> str:
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


# --- What the streaming job publishes after scoring (Kafka `iot.scored`, key = sensor_id): the reading, its
# verdict and the model version, e.g. {"sensor_id": 48, "sensor_ts": 1556758787735011, "sensor_0": 2.0, ...,
# "sensor_11": 5.0, "is_healthy": 1, "model_version": 3}. The alerts and the dashboard read it.
SCORED_FIELDS = (ID_FIELD, TS_FIELD, *SENSOR_FIELDS, LABEL, MODEL_VERSION)


def _check_verdict(record: dict) -> None:
    if LABEL not in record:
        raise InvalidReading(LABEL, "missing")
    if record[LABEL] not in (HEALTHY, LIKELY_TO_BREAK) or isinstance(record[LABEL], bool):
        raise InvalidReading(LABEL, f"must be {HEALTHY} or {LIKELY_TO_BREAK}, got {show(record[LABEL])}")
    if MODEL_VERSION not in record:
        raise InvalidReading(MODEL_VERSION, "missing")
    if record[MODEL_VERSION] is not None:
        _check_int(MODEL_VERSION, record[MODEL_VERSION], (0, 2**31 - 1))


def parse_scored(payload: object) -> dict:
    """Parse one scored reading of `iot.scored`: a reading plus `is_healthy` and `model_version` (an int or null).
    Total: raises InvalidReading and nothing else."""
    record = parse_reading(payload)
    _check_verdict(record)
    return record


# --- Alerts: a machine's verdict changed (Kafka `iot.alerts`, key = sensor_id; Kudu/SQL table `alerts`; MQTT
# `alerts/<sensor_id>`, retained). One alert per change, debounced: a machine is "likely_to_break" once at least k
# of its last n verdicts say so, and "healthy" again once at least k of its last n say healthy. e.g.
#   {"sensor_id": 7, "sensor_ts": 1764150000000000, "is_healthy": 0, "state": "likely_to_break",
#    "model_version": 3, "readings": [[1764149996000000, 1], [1764149997000000, 0], ...]}
# `sensor_ts` is the reading that made the change (the alert's key with sensor_id); `readings` the n readings
# that decided it, oldest first, as [sensor_ts, is_healthy].
STATE_NAMES = {HEALTHY: "healthy", LIKELY_TO_BREAK: "likely_to_break"}
ALERT_FIELDS = (ID_FIELD, TS_FIELD, LABEL, "state", MODEL_VERSION, "readings")
ALERTS_TABLE_COLUMNS = ALERT_FIELDS  # the Kudu table `alerts` (readings as JSON text); key (sensor_id, sensor_ts)


def alert_json(alert: dict) -> bytes:
    """One alert as the JSON bytes of `iot.alerts` and MQTT `alerts/<sensor_id>`."""
    return json.dumps({name: alert[name] for name in ALERT_FIELDS}, separators=(",", ":")).encode()


def parse_alert(payload: object) -> dict:
    """Parse one alert (JSON bytes or text). Total: raises InvalidReading naming the field, nothing else."""
    alert = _document(payload, "alert", ALERT_FIELDS, max_nesting=4)
    _check_key(alert)
    _check_verdict(alert)
    if alert["state"] != STATE_NAMES[alert[LABEL]]:
        raise InvalidReading("state", f"{show(alert['state'])} does not match {LABEL}={alert[LABEL]}")
    if not isinstance(alert["readings"], list):
        raise InvalidReading("readings", f"must be a list, got {type(alert['readings']).__name__}")
    return alert


def _document(payload: object, what: str, fields: Sequence[str], max_nesting: int = 2) -> dict:
    """The JSON object in `payload` with every one of `fields` present (strict: no repeated key, no NaN).
    Total: raises InvalidReading and nothing else."""
    try:
        text = _decode(payload, MAX_PAYLOAD_BYTES)
        if nested_deeper_than(text, max_nesting):
            raise InvalidReading(None, f"nested deeper than {max_nesting} levels of arrays or objects")
        document = json.loads(text, object_pairs_hook=_strict_pairs)
    except InvalidReading:
        raise
    except ValueError as exc:
        raise InvalidReading(None, f"not JSON: {clip(str(exc), 200)}") from None
    except Exception as exc:  # noqa: BLE001 - total by design
        raise InvalidReading(None, f"unreadable {what} ({type(exc).__name__}: {clip(str(exc))})") from None
    if not isinstance(document, dict):
        raise InvalidReading(None, f"not a JSON object but {type(document).__name__}")
    for name in fields:
        if name not in document:
            raise InvalidReading(name, "missing")
    return document


def _check_key(record: dict) -> None:
    _check_int(ID_FIELD, record[ID_FIELD], SENSOR_ID_RANGE)
    _check_int(TS_FIELD, record[TS_FIELD], SENSOR_TS_RANGE)


def _check_text(record: dict, name: str, pattern: re.Pattern | None = None, nullable: bool = False) -> None:
    value = record[name]
    if value is None and nullable:
        return
    if not isinstance(value, str):
        raise InvalidReading(name, f"must be a string, got {type(value).__name__} {show(value)}")
    if pattern is not None and not pattern.fullmatch(value):
        raise InvalidReading(name, f"{show(value)} must match {pattern.pattern}")


def _check_version(record: dict, name: str = MODEL_VERSION, nullable: bool = False) -> None:
    if record[name] is None and nullable:
        return
    _check_int(name, record[name], (1, 2**31 - 1))


# --- Edge agents (python -m edge): one process per edge site. Topic names are in runtime.settings.
# An agent id names MQTT topic levels, so it is short and plain: letters, digits, '.', '_', '-'.
AGENT_ID_FIELD = "agent_id"
AGENT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

# An edge verdict (MQTT `verdicts/<sensor_id>`, QoS 1; Kafka `iot.verdicts`, key = sensor_id; Kudu/SQL
# `edge_verdicts`, key (sensor_id, sensor_ts, agent_id)): an agent scored a reading with its ONNX model, e.g.
#   {"sensor_id": 7, "sensor_ts": 1764150000000000, "is_healthy": 1, "model_version": 3, "agent_id": "edge-1",
#    "scored_ts": 1764150000004000}
SCORED_TS_FIELD = "scored_ts"
VERDICT_FIELDS = (ID_FIELD, TS_FIELD, LABEL, MODEL_VERSION, AGENT_ID_FIELD, SCORED_TS_FIELD)


def verdict_json(verdict: dict) -> bytes:
    """One edge verdict as the JSON bytes of MQTT `verdicts/<sensor_id>` and Kafka `iot.verdicts`."""
    return json.dumps({name: verdict[name] for name in VERDICT_FIELDS}, separators=(",", ":")).encode()


def parse_verdict(payload: object) -> dict:
    """Parse one edge verdict. Total: raises InvalidReading naming the field, nothing else."""
    verdict = _document(payload, "verdict", VERDICT_FIELDS, max_nesting=1)
    _check_key(verdict)
    _check_verdict(verdict)
    _check_version(verdict)
    _check_text(verdict, AGENT_ID_FIELD, AGENT_ID_PATTERN)
    _check_int(SCORED_TS_FIELD, verdict[SCORED_TS_FIELD], SENSOR_TS_RANGE)
    return {name: verdict[name] for name in VERDICT_FIELDS}


# A model job (MQTT `jobs/<agent_id>/model`, QoS 1, retained: an agent that was away finds it when it connects):
# serve this model version at the edge. Written by `python -m model approve|rollout|rollback`, e.g.
#   {"job_id": "v3-5f1c2a9e", "model_version": 3, "artifact_url": "http://127.0.0.1:8000/model/versions/3/onnx",
#    "sha256": "<64 hex digits>", "size_bytes": 15570733, "issued_at": 1764150000000000}
# The download needs the model server's access key (the agent has it from its environment, never from the job).
MODEL_JOB_FIELDS = ("job_id", MODEL_VERSION, "artifact_url", "sha256", "size_bytes", "issued_at")
MAX_ARTIFACT_BYTES = 1024 * 1024 * 1024


def model_job_json(job: dict) -> bytes:
    return json.dumps({name: job[name] for name in MODEL_JOB_FIELDS}, separators=(",", ":")).encode()


def parse_model_job(payload: object) -> dict:
    """Parse one model job. Total: raises InvalidReading naming the field, nothing else."""
    job = _document(payload, "model job", MODEL_JOB_FIELDS, max_nesting=1)
    _check_text(job, "job_id", JOB_ID_PATTERN)
    _check_version(job)
    _check_text(job, "artifact_url", re.compile(r"https?://[^\s]{1,2000}"))
    _check_text(job, "sha256", SHA256_PATTERN)
    _check_int("size_bytes", job["size_bytes"], (1, MAX_ARTIFACT_BYTES))
    _check_int("issued_at", job["issued_at"], SENSOR_TS_RANGE)
    return {name: job[name] for name in MODEL_JOB_FIELDS}


# A job's status, as the agent reports it (MQTT `jobs/<agent_id>/status`, QoS 1, retained: the last one stands;
# the fleet is the set of agents that have a status). `state` is IDLE until the agent's first job, then the job's:
# QUEUED -> IN_PROGRESS -> SUCCEEDED or FAILED (with the `reason`). `model_version` is the version the agent
# scores with now (null before its first model), `target_version` the job's.
#   {"agent_id": "edge-1", "job_id": "v3-5f1c2a9e", "state": "SUCCEEDED", "model_version": 3,
#    "target_version": 3, "reason": "", "ts": 1764150000000000}
JOB_STATES = ("IDLE", "QUEUED", "IN_PROGRESS", "SUCCEEDED", "FAILED")
JOB_STATUS_FIELDS = (AGENT_ID_FIELD, "job_id", "state", MODEL_VERSION, "target_version", "reason", "ts")


def job_status_json(status: dict) -> bytes:
    return json.dumps({name: status[name] for name in JOB_STATUS_FIELDS}, separators=(",", ":")).encode()


def parse_job_status(payload: object) -> dict:
    """Parse one job status. Total: raises InvalidReading naming the field, nothing else."""
    status = _document(payload, "job status", JOB_STATUS_FIELDS, max_nesting=1)
    _check_text(status, AGENT_ID_FIELD, AGENT_ID_PATTERN)
    _check_text(status, "job_id", JOB_ID_PATTERN, nullable=True)
    if status["state"] not in JOB_STATES or not isinstance(status["state"], str):
        raise InvalidReading("state", f"must be one of {', '.join(JOB_STATES)}, got {show(status['state'])}")
    _check_version(status, nullable=True)
    _check_version(status, "target_version", nullable=True)
    _check_text(status, "reason")
    _check_int("ts", status["ts"], SENSOR_TS_RANGE)
    return {name: status[name] for name in JOB_STATUS_FIELDS}
