"""A fleet of simulated machines producing readings in the contract's shape, and malformed ones on request.

Healthy machines wear very slowly; degrading machines wear from where they are to worn out over
`readings_to_failure` readings, so their sensors drift the way the training history says failing machines look.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import numpy as np

from contract import ID_FIELD, SENSOR_FIELDS, TS_FIELD
from simulator.config import SimulatorConfig
from world import sensor_readings

FAULT_KINDS = ("bad_json", "missing_field", "wrong_type", "out_of_range", "duplicate_key")
_INT_SENSORS = frozenset({"sensor_0", "sensor_1", "sensor_2", "sensor_3", "sensor_5", "sensor_7", "sensor_9",
                          "sensor_11"})


# A reading as json.dumps writes it (repr of each int and float), filled in by %-formatting: a third of its cost.
READING_JSON = "{" + ", ".join(f'"{name}": %r' for name in (ID_FIELD, TS_FIELD, *SENSOR_FIELDS)) + "}"


class Fleet:
    """The machines one publisher owns; `next_messages(n)` returns the next n (topic, payload) pairs."""

    def __init__(self, cfg: SimulatorConfig, sensor_ids: list[int], seed: int):
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)
        self.sensor_ids = np.array(sensor_ids, dtype=np.int64)
        n = len(sensor_ids)
        degrading = self.rng.uniform(size=n) < cfg.degrading_share
        self.wear = np.where(degrading, self.rng.uniform(0.15, 0.35, n), self.rng.uniform(0.0, 0.25, n))
        # Degrading machines reach full wear after readings_to_failure readings; healthy ones 20 times slower.
        self.wear_step = (1.0 - self.wear) / cfg.readings_to_failure * np.where(degrading, 1.0, 0.05)
        self.degrading = degrading
        self.load = self.rng.uniform(0.2, 0.8, n)
        self.last_ts = np.zeros(n, dtype=np.int64)
        self.cursor = 0
        self.faults: Counter[str] = Counter()

    def _values(self, machine: np.ndarray) -> list[tuple]:
        """The sensor values of each reading, in SENSOR_FIELDS order (Python ints and floats, as JSON writes them)."""
        if self.cfg.mode == "workshop-uniform":
            return [tuple(int(self.rng.integers(lo, hi + 1)) for lo, hi in map(self.cfg.ranges.get, SENSOR_FIELDS))
                    for _ in machine]
        # Each machine advances one wear step per reading; several readings of one machine in a batch each step.
        order = np.zeros(len(machine))
        seen: Counter[int] = Counter()
        for i, m in enumerate(machine):
            seen[m] += 1
            order[i] = seen[m]
        wear = np.minimum(1.0, self.wear[machine] + self.wear_step[machine] * order)
        self.load = np.clip(self.load + self.rng.normal(0, 0.02, len(self.load)), 0.0, 1.0)
        frame = sensor_readings(wear, self.load[machine], self.rng)
        for m, count in seen.items():
            self.wear[m] = min(1.0, self.wear[m] + self.wear_step[m] * count)
        columns = [frame[name].to_numpy().astype(np.int64 if name in _INT_SENSORS else np.float64).tolist()
                   for name in SENSOR_FIELDS]
        return list(zip(*columns, strict=True))

    def next_messages(self, n: int) -> list[tuple[str, bytes]]:
        """The next n readings, round-robin over the machines, as (MQTT topic, JSON payload)."""
        machine = (self.cursor + np.arange(n)) % len(self.sensor_ids)
        self.cursor = int((self.cursor + n) % len(self.sensor_ids))
        values = self._values(machine)
        now = time.time_ns() // 1000
        messages = []
        for m, sensors in zip(machine, values, strict=True):
            ts = max(now, int(self.last_ts[m]) + 1)  # strictly increasing per machine: (id, ts) is the key
            self.last_ts[m] = ts
            sensor_id = int(self.sensor_ids[m])
            if self.cfg.fault_share and self.rng.uniform() < self.cfg.fault_share:
                values = dict(zip(SENSOR_FIELDS, sensors, strict=True))
                payload = self._malformed({ID_FIELD: sensor_id, TS_FIELD: ts, **values})
            else:
                payload = (READING_JSON % (sensor_id, ts, *sensors)).encode()
            messages.append((f"{self.cfg.topic}/{sensor_id}", payload))
        return messages

    def _malformed(self, reading: dict) -> bytes:
        """Break a reading in the next of the FAULT_KINDS ways, and count it."""
        kind = FAULT_KINDS[sum(self.faults.values()) % len(FAULT_KINDS)]
        self.faults[kind] += 1
        if kind == "bad_json":
            return json.dumps(reading).encode()[:-7]
        if kind == "missing_field":
            return json.dumps({k: v for k, v in reading.items() if k != "sensor_5"}).encode()
        if kind == "wrong_type":
            return json.dumps({**reading, "sensor_3": "fast"}).encode()
        if kind == "out_of_range":
            return json.dumps({**reading, "sensor_7": 1e12}).encode()
        return json.dumps(reading).encode()[:-1] + f', "{ID_FIELD}": {reading[ID_FIELD] + 1}}}'.encode()
