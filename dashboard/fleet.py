"""The fleet as the dashboard shows it: plain Python state fed with the payloads of Kafka `iot.scored` and
`iot.alerts`, bounded in every dimension, safe to read from one thread while another feeds it.

- Each machine keeps its last `points_per_machine` scored readings (oldest dropped); at most `max_machines`
  machines are kept, the one heard from least recently dropped first.
- The last `alerts_kept` alerts, newest last.
- A payload that breaks the contract is skipped, counted by (topic, reason) and logged (the first of each reason,
  then at 10, 100, 1,000, ...): nothing on those topics can stop the dashboard.

Every point and alert taken gets a sequence number, so that a browser session asks only for what is new since the
last number it saw.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from contract import (
    ALERT_FIELDS,
    ID_FIELD,
    LABEL,
    MODEL_VERSION,
    SCORED_FIELDS,
    SENSOR_FIELDS,
    STATE_NAMES,
    TS_FIELD,
    InvalidReading,
    parse_alert,
    parse_scored,
)
from runtime.settings import ALERTS_TOPIC, SCORED_TOPIC

log = logging.getLogger(__name__)

POINTS_PER_MACHINE = 300  # five minutes at the workshop's one reading a second
MAX_MACHINES = 500
ALERTS_KEPT = 200
# The reasons a skipped record is counted under: a field the contract names, or one of these (a bounded set, so
# that no stream of odd payloads can grow the counts without end).
WHOLE_PAYLOAD = "payload"
OTHER_FIELD = "other_field"
UNKNOWN_TOPIC = "unknown_topic"
_KNOWN_FIELDS = frozenset((*SCORED_FIELDS, *ALERT_FIELDS))


@dataclass(frozen=True)
class Point:
    """One scored reading of a machine."""

    seq: int
    sensor_ts: int  # microseconds since the epoch
    values: tuple[float, ...]  # sensor_0 .. sensor_11
    is_healthy: int
    model_version: int | None


@dataclass(frozen=True)
class Alert:
    """A machine's verdict changed (contract.parse_alert)."""

    seq: int
    sensor_id: int
    sensor_ts: int
    is_healthy: int
    model_version: int | None

    @property
    def state(self) -> str:
        return STATE_NAMES[self.is_healthy]


@dataclass(frozen=True)
class Tile:
    """What a machine's tile shows: its current verdict and where it comes from."""

    sensor_id: int
    is_healthy: int
    from_alert: bool  # True: the job's debounced alert state; False: its latest scored verdict

    @property
    def state(self) -> str:
        return STATE_NAMES[self.is_healthy]


@dataclass
class _Machine:
    points: deque[Point]
    alert: Alert | None = None

    def tile(self, sensor_id: int) -> Tile:
        if self.alert is not None:
            return Tile(sensor_id, self.alert.is_healthy, True)
        return Tile(sensor_id, self.points[-1].is_healthy, False)  # a machine is made by its first point or alert


@dataclass
class Skipped:
    """Records skipped because they break the contract, by (topic, reason)."""

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, topic: str, reason: str, error: Exception) -> None:
        self.counts[topic, reason] += 1
        count = self.counts[topic, reason]
        if _is_power_of_ten(count):
            log.warning("skipped a record of %s (%s, %d so far): %s", topic, reason, count, error)


def _is_power_of_ten(n: int) -> bool:
    while n % 10 == 0:
        n //= 10
    return n == 1


def reason_of(error: InvalidReading) -> str:
    """The bounded category a contract error is counted under."""
    if error.field is None:
        return WHOLE_PAYLOAD
    return error.field if error.field in _KNOWN_FIELDS else OTHER_FIELD


class Fleet:
    """The machines, their recent scored readings and the recent alerts. Thread-safe: one feeder, many readers."""

    def __init__(self, points_per_machine: int = POINTS_PER_MACHINE, max_machines: int = MAX_MACHINES,
                 alerts_kept: int = ALERTS_KEPT):
        self.points_per_machine = points_per_machine
        self.max_machines = max_machines
        self.alerts_kept = alerts_kept
        self._machines: OrderedDict[int, _Machine] = OrderedDict()  # least recently heard from first
        self._alerts: deque[Alert] = deque(maxlen=alerts_kept)
        self._lock = threading.Lock()
        self._seq = 0
        self.tiles_version = 0  # changes whenever a tile would look different (or one comes or goes)
        self.skipped = Skipped()
        self.older_ignored = 0  # scored readings no newer than the machine's last one (a replay of the job)

    def add(self, topic: str, payload: object) -> None:
        """Take one record's value from `topic`; a payload that breaks the contract is counted and skipped."""
        self.add_all([(topic, payload)])

    def add_all(self, records: Iterable[tuple[str, object]]) -> None:
        """Take a batch of (topic, value) records, in order, under one lock."""
        with self._lock:
            for topic, payload in records:
                self._add(topic, payload)

    def _add(self, topic: str, payload: object) -> None:
        try:
            if topic == SCORED_TOPIC:
                self._add_scored(parse_scored(payload))
            elif topic == ALERTS_TOPIC:
                self._add_alert(parse_alert(payload))
            else:
                self.skipped.add(topic, UNKNOWN_TOPIC, ValueError(f"not a topic of the dashboard: {topic!r}"))
        except InvalidReading as error:
            self.skipped.add(topic, reason_of(error), error)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _machine(self, sensor_id: int) -> _Machine:
        """The machine, made if new (dropping the least recently heard from beyond the bound), now most recent."""
        machine = self._machines.get(sensor_id)
        if machine is None:
            machine = self._machines[sensor_id] = _Machine(deque(maxlen=self.points_per_machine))
            while len(self._machines) > self.max_machines:
                self._machines.popitem(last=False)
        self._machines.move_to_end(sensor_id)
        return machine

    def _add_scored(self, record: dict) -> None:
        sensor_id, sensor_ts = record[ID_FIELD], record[TS_FIELD]
        known = self._machines.get(sensor_id)
        if known is not None and known.points and sensor_ts <= known.points[-1].sensor_ts:
            self.older_ignored += 1
            return
        machine = self._machine(sensor_id)
        before = machine.tile(sensor_id) if machine.points or machine.alert else None
        machine.points.append(Point(self._next_seq(), sensor_ts, tuple(float(record[name]) for name in SENSOR_FIELDS),
                                    record[LABEL], record[MODEL_VERSION]))
        if machine.tile(sensor_id) != before:
            self.tiles_version += 1

    def _add_alert(self, record: dict) -> None:
        alert = Alert(self._next_seq(), record[ID_FIELD], record[TS_FIELD], record[LABEL], record[MODEL_VERSION])
        self._alerts.append(alert)
        machine = self._machine(alert.sensor_id)
        if machine.alert is None or alert.sensor_ts >= machine.alert.sensor_ts:
            machine.alert = alert
        self.tiles_version += 1

    # ---- what sessions read (copies, taken under the lock)

    def tiles(self) -> list[Tile]:
        """Every machine's tile, by sensor id."""
        with self._lock:
            return [self._machines[sensor_id].tile(sensor_id) for sensor_id in sorted(self._machines)]

    def points_since(self, sensor_id: int, seq: int = 0) -> list[Point]:
        """The machine's kept points newer than sequence number `seq` (all of them for 0), oldest first."""
        with self._lock:
            machine = self._machines.get(sensor_id)
            if machine is None:
                return []
            return list(_newer_than(machine.points, seq))

    def alerts_since(self, seq: int = 0) -> list[Alert]:
        """The kept alerts newer than sequence number `seq`, oldest first."""
        with self._lock:
            return list(_newer_than(self._alerts, seq))

    def skipped_counts(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self.skipped.counts)


def _newer_than(items: deque, seq: int) -> Iterable:
    """The items of `items` (ascending by .seq) with a sequence number above `seq`, read from the newest end."""
    newer = []
    for item in reversed(items):
        if item.seq <= seq:
            break
        newer.append(item)
    return reversed(newer)

