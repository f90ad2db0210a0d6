"""The per-machine alert state (streaming/alerts.py) and the alerts' contract (contract.parse_alert, alert_json),
without Spark or services: debouncing, replays, batch boundaries, and total parsing."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from contract import ALERT_FIELDS, HEALTHY, LIKELY_TO_BREAK, InvalidReading, alert_json, parse_alert
from streaming.alerts import ALERT_SCHEMA, Debounce, MachineState, advance, track_machines

T0 = 1_764_150_000_000_000
K4_OF_5 = Debounce(4, 5)


def readings(verdicts: list[int], start: int = 0) -> list[tuple[int, int, int]]:
    """(sensor_ts, verdict, model_version) one second apart."""
    return [(T0 + (start + i) * 1_000_000, verdict, 1) for i, verdict in enumerate(verdicts)]


def test_a_machine_that_degrades_raises_one_alert_when_k_of_its_last_n_verdicts_say_so():
    machine = MachineState()
    alerts = advance(machine, readings([1] * 10 + [0, 1, 0, 0, 0, 0, 0, 0]), K4_OF_5, 7)
    assert len(alerts) == 1
    alert = alerts[0]
    assert (alert["sensor_id"], alert["is_healthy"], alert["state"], alert["model_version"]) == \
        (7, LIKELY_TO_BREAK, "likely_to_break", 1)
    assert alert["sensor_ts"] == T0 + 14 * 1_000_000  # the fourth "likely to break" of the last five
    assert [verdict for _, verdict in alert["readings"]] == [0, 1, 0, 0, 0]
    assert machine.state == LIKELY_TO_BREAK


def test_a_machine_becomes_healthy_again_only_with_k_healthy_verdicts_of_n():
    machine = MachineState()
    alerts = advance(machine, readings([0] * 5 + [1, 0, 1, 0, 1, 1, 1]), K4_OF_5, 7)
    assert [a["state"] for a in alerts] == ["likely_to_break", "healthy"]
    assert alerts[1]["sensor_ts"] == T0 + 11 * 1_000_000


def test_noise_below_k_of_n_raises_nothing():
    assert advance(MachineState(), readings([1, 0, 1, 0, 0, 1, 0, 1, 1, 0, 0, 1]), K4_OF_5, 7) == []


def test_readings_already_taken_or_older_change_nothing():
    machine = MachineState()
    advance(machine, readings([1] * 5), K4_OF_5, 7)
    assert advance(machine, readings([0] * 5), K4_OF_5, 7) == []  # the same timestamps again, other verdicts
    assert machine.state == HEALTHY


@pytest.mark.parametrize(("needed", "window"), [(2, 4), (0, 3), (4, 3), (1, 2)])
def test_k_must_be_a_majority_of_n(needed, window):
    with pytest.raises(ValueError, match="more than half"):
        Debounce(needed, window)


verdict_lists = st.lists(st.integers(0, 1), max_size=60)


@given(verdict_lists, st.lists(st.integers(1, 10), max_size=20), st.data())
def test_batches_and_replays_raise_exactly_the_alerts_of_one_pass(verdicts, cuts, data):
    """However the readings are cut into batches, with any earlier batch replayed in between (a crash's replay
    of iot.scored), the alerts are those of one pass over the readings in order."""
    timeline = readings(verdicts)
    expected = advance(MachineState(), timeline, K4_OF_5, 7)
    batches, at = [], 0
    for size in cuts:
        batches.append(timeline[at:at + size])
        at += size
    batches.append(timeline[at:])
    machine, seen = MachineState(), []
    for index, batch in enumerate(batches):
        replays = data.draw(st.lists(st.integers(0, index), max_size=2))
        for replayed in replays:
            seen += advance(machine, batches[replayed], K4_OF_5, 7)
        seen += advance(machine, data.draw(st.permutations(batch)), K4_OF_5, 7)
    assert seen == expected


@given(verdict_lists)
def test_alerts_alternate_and_start_with_likely_to_break(verdicts):
    states = [a["state"] for a in advance(MachineState(), readings(verdicts), K4_OF_5, 7)]
    assert states == ["likely_to_break", "healthy"] * (len(states) // 2) + ["likely_to_break"] * (len(states) % 2)


class KeptState:
    """Spark's GroupState as the function sees it: exists, get, update (state kept between calls here)."""

    def __init__(self) -> None:
        self.value: tuple | None = None

    @property
    def exists(self) -> bool:
        return self.value is not None

    @property
    def get(self) -> tuple:
        return self.value

    def update(self, value: tuple) -> None:
        self.value = value


def test_the_spark_function_keeps_state_between_batches_and_emits_rows_of_the_alert_schema():
    track, kept = track_machines(K4_OF_5), KeptState()
    frame = pd.DataFrame(readings([1, 1, 0, 0]), columns=["sensor_ts", "is_healthy", "model_version"])
    assert list(track((7,), iter([frame]), kept))[0].empty
    frame = pd.DataFrame(readings([0, 0], start=4), columns=["sensor_ts", "is_healthy", "model_version"])
    [rows] = list(track((7,), iter([frame]), kept))
    assert list(rows.columns) == [column.split()[0] for column in ALERT_SCHEMA.split(", ")]
    assert rows.to_dict("records")[0]["sensor_ts"] == pd.Timestamp(T0 + 5 * 1_000_000, unit="us")
    assert json.loads(rows["readings"][0]) == [[ts, v] for ts, v, _ in readings([1, 0, 0, 0, 0], start=1)]


def alert(**changes: object) -> dict:
    return {"sensor_id": 7, "sensor_ts": T0, "is_healthy": 0, "state": "likely_to_break", "model_version": 3,
            "readings": [[T0, 0]], **changes}


def test_an_alert_round_trips_through_its_json():
    assert parse_alert(alert_json(alert())) == alert()


@pytest.mark.parametrize(("changes", "field"), [
    ({"sensor_id": "7"}, "sensor_id"), ({"sensor_ts": 5}, "sensor_ts"), ({"is_healthy": 2}, "is_healthy"),
    ({"state": "healthy"}, "state"), ({"model_version": -1}, "model_version"), ({"readings": "x"}, "readings"),
])
def test_a_bad_alert_names_its_field(changes, field):
    with pytest.raises(InvalidReading) as caught:
        parse_alert(json.dumps(alert(**changes)))
    assert caught.value.field == field


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                           lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner), max_leaves=20)


@given(st.binary() | json_values.map(json.dumps) | st.dictionaries(st.sampled_from(list(alert())), json_values)
       .map(lambda fields: json.dumps({**alert(), **fields})))
def test_parsing_an_alert_is_total(payload):
    """Whatever arrives is an alert with every field, or InvalidReading: nothing else escapes."""
    try:
        parsed = parse_alert(payload)
    except InvalidReading as exc:
        assert str(exc)
    else:
        assert set(ALERT_FIELDS) <= set(parsed)
