"""Per-machine alert state: when a machine's verdict changes (healthy <-> likely to break), debounced.

A machine starts healthy. It becomes "likely to break" once at least `k` of its last `n` verdicts say so, and
healthy again once at least `k` of its last `n` say healthy (`2k > n`, so the two never hold at once and a machine
needs a clear majority to change). Each change is one alert (contract.ALERT_FIELDS), keyed by the machine and the
reading that made the change.

Replays are harmless: a machine's state remembers the newest reading it has taken, and a reading not newer than
that (a replayed batch of `iot.scored`, or a late reading) changes nothing. So feeding the same readings twice, or
split into batches in any way, raises exactly the same alerts.

`advance` is plain Python (tested without Spark); `track_machines` adapts it to Spark's `applyInPandasWithState`,
whose state lives in the job's checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import pandas as pd

from contract import HEALTHY, ID_FIELD, LABEL, LIKELY_TO_BREAK, MODEL_VERSION, STATE_NAMES, TS_FIELD

DEFAULT_WINDOW = 5  # n: the verdicts looked at
DEFAULT_NEEDED = 4  # k: how many of them must agree to change the state


@dataclass(frozen=True)
class Debounce:
    """k of the last n verdicts change a machine's state."""

    needed: int = DEFAULT_NEEDED
    window: int = DEFAULT_WINDOW

    def __post_init__(self) -> None:
        if not 1 <= self.needed <= self.window or 2 * self.needed <= self.window:
            raise ValueError(f"k={self.needed} of n={self.window}: k must be more than half of n, and at most n")


@dataclass
class MachineState:
    """What is kept per machine: its state, its last n verdicts (sensor_ts in µs, verdict) and the newest reading."""

    state: int = HEALTHY
    recent: list[tuple[int, int]] = field(default_factory=list)
    newest_ts: int = -1


def advance(machine: MachineState, readings: Iterable[tuple[int, int, int | None]], debounce: Debounce,
            sensor_id: int) -> list[dict]:
    """Take `readings` (sensor_ts µs, verdict, model_version) in time order, updating `machine` in place; the
    alerts they raise (contract.ALERT_FIELDS; `readings` as a list of [sensor_ts, verdict])."""
    alerts = []
    for ts, verdict, model_version in sorted(readings):
        if ts <= machine.newest_ts:
            continue  # replayed or late: already taken, or older than what decided the state
        machine.newest_ts = ts
        machine.recent = [*machine.recent, (ts, verdict)][-debounce.window:]
        other = LIKELY_TO_BREAK if machine.state == HEALTHY else HEALTHY
        if sum(1 for _, seen in machine.recent if seen == other) >= debounce.needed:
            machine.state = other
            alerts.append({ID_FIELD: sensor_id, TS_FIELD: ts, LABEL: other, "state": STATE_NAMES[other],
                           MODEL_VERSION: model_version, "readings": [list(pair) for pair in machine.recent]})
    return alerts


# The state Spark keeps per machine (applyInPandasWithState's stateStructType), and the alerts' rows.
STATE_SCHEMA = "state INT, recent_ts ARRAY<BIGINT>, recent_verdicts ARRAY<INT>, newest_ts BIGINT"
ALERT_SCHEMA = (f"{ID_FIELD} INT, {TS_FIELD} TIMESTAMP, {LABEL} INT, state STRING, {MODEL_VERSION} INT, "
                "readings STRING")


def _load(stored: tuple) -> MachineState:
    state, recent_ts, recent_verdicts, newest_ts = stored
    return MachineState(int(state), [(int(t), int(v)) for t, v in zip(recent_ts, recent_verdicts, strict=True)],
                        int(newest_ts))


def _saved(machine: MachineState) -> tuple:
    return (machine.state, [t for t, _ in machine.recent], [v for _, v in machine.recent], machine.newest_ts)


def alert_rows(alerts: list[dict]) -> pd.DataFrame:
    """Alerts as rows of ALERT_SCHEMA (sensor_ts a timestamp, readings JSON text)."""
    frame = pd.DataFrame({
        ID_FIELD: pd.Series([a[ID_FIELD] for a in alerts], dtype="int32"),
        TS_FIELD: pd.to_datetime([a[TS_FIELD] for a in alerts], unit="us"),
        LABEL: pd.Series([a[LABEL] for a in alerts], dtype="int32"),
        "state": [a["state"] for a in alerts],
        MODEL_VERSION: pd.Series([a[MODEL_VERSION] for a in alerts], dtype="Int32"),
        "readings": [json.dumps(a["readings"], separators=(",", ":")) for a in alerts],
    })
    return frame


def track_machines(debounce: Debounce):
    """The applyInPandasWithState function: one machine's new verdicts in, its alerts out, its state kept."""

    def track(key: tuple, frames: Iterator[pd.DataFrame], group_state) -> Iterator[pd.DataFrame]:
        sensor_id = int(key[0])
        machine = _load(group_state.get) if group_state.exists else MachineState()
        readings = [(int(ts), int(verdict), None if pd.isna(version) else int(version))
                    for frame in frames
                    for ts, verdict, version in zip(frame[TS_FIELD], frame[LABEL], frame[MODEL_VERSION],
                                                    strict=True)]
        alerts = advance(machine, readings, debounce, sensor_id)
        group_state.update(_saved(machine))
        yield alert_rows(alerts)

    return track
