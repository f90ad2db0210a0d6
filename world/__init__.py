"""The simulated world: machines that wear out, their twelve sensors, and when they break (its own package,
under the simulator and the training data).

One generator serves both the historical training data (`model.data`) and the live simulator, so the model is
trained on the world it later scores.

Mechanism. Each reading comes from a machine with a hidden wear level `w` in [0, 1] (0 = new, 1 = worn out) and a
load `l` in [0, 1]. Wear heats the bearing, slows the spindle, draws more current, thins the lubricant and shifts
the vibration spectrum; load adds heat and current on top. The chance that the machine breaks soon rises
steeply with wear and somewhat with load (a logistic curve), and whether it does is a coin flip with that chance:
labels are noisy, as real maintenance logs are, so no model can be perfect. Most machines are healthy
(failures are the minority, about one reading in eight).

The sensors (value types as in the workshop's examples):

| field     | meaning                         | type  | healthy (w=0.1) | worn (w=0.8) |
|-----------|---------------------------------|-------|-----------------|--------------|
| sensor_0  | error events in the last hour   | int   | 0               | 0-1          |
| sensor_1  | bearing temperature, degC       | int   | ~64             | ~93          |
| sensor_2  | safety stops in the last hour   | int   | 0               | 0-1          |
| sensor_3  | spindle speed, x10 rpm          | int   | ~139            | ~92          |
| sensor_4  | motor current, A                | float | ~21.9           | ~26.2        |
| sensor_5  | lubricant level, %              | int   | ~84             | ~75          |
| sensor_6  | housing temperature, degC       | float | ~19.3           | ~21.1        |
| sensor_7  | supply voltage, V               | int   | ~112            | ~115         |
| sensor_8  | vibration peak frequency, Hz    | float | ~9.4            | ~8.7         |
| sensor_9  | ambient humidity, g/m3          | int   | ~6              | ~5           |
| sensor_10 | efficiency ratio                | float | ~3.44           | ~3.34        |
| sensor_11 | shift (0-6), not informative    | int   | 0-6             | 0-6          |
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from contract import HEALTHY, LABEL, LIKELY_TO_BREAK, SENSOR_FIELDS

# Linear sensor models: value = base + wear_gain * w + load_gain * l + noise_sd * N(0, 1), then rounded.
# name: (base, wear_gain, load_gain, noise_sd, decimals)
_GAUSSIAN_SENSORS: dict[str, tuple[float, float, float, float, int]] = {
    "sensor_1": (56.0, 42.0, 8.0, 3.5, 0),
    "sensor_3": (146.0, -68.0, -4.0, 7.0, 0),
    "sensor_4": (20.8, 6.2, 1.8, 0.7, 2),
    "sensor_5": (85.5, -13.0, 0.0, 3.0, 0),
    "sensor_6": (18.7, 2.6, 1.0, 0.8, 2),
    "sensor_7": (111.0, 4.0, 1.0, 4.0, 0),
    "sensor_8": (9.5, -1.1, 0.0, 0.35, 2),
    "sensor_10": (3.45, -0.15, 0.0, 0.06, 2),
}
# Counts: value = Poisson(base + wear_gain * w)
_POISSON_SENSORS: dict[str, tuple[float, float]] = {
    "sensor_0": (0.15, 0.6),
    "sensor_2": (0.05, 0.4),
    "sensor_9": (6.0, -1.5),
}
# The chance of breaking soon: logistic in wear and load.
_FAILURE_SLOPE = 11.0
_FAILURE_MIDPOINT = 0.62
_LOAD_EFFECT = 1.2
# Wear across a fleet at a random moment: mostly low (Beta distribution).
_FLEET_WEAR = (1.4, 3.6)


def failure_probability(wear: np.ndarray, load: np.ndarray) -> np.ndarray:
    """Chance that a machine at this wear and load breaks soon."""
    return 1.0 / (1.0 + np.exp(-(_FAILURE_SLOPE * (wear - _FAILURE_MIDPOINT) + _LOAD_EFFECT * (load - 0.5))))


def sensor_readings(wear: np.ndarray, load: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    """Twelve sensor values for each (wear, load) pair, rounded like real instruments report them."""
    wear = np.asarray(wear, dtype=float)
    load = np.asarray(load, dtype=float)
    n = wear.shape[0]
    columns: dict[str, np.ndarray] = {}
    for name, (base, wear_gain, load_gain, noise_sd, decimals) in _GAUSSIAN_SENSORS.items():
        value = base + wear_gain * wear + load_gain * load + noise_sd * rng.standard_normal(n)
        columns[name] = np.round(value, decimals) if decimals else np.round(value).astype(np.int64)
    for name, (base, wear_gain) in _POISSON_SENSORS.items():
        columns[name] = rng.poisson(np.clip(base + wear_gain * wear, 0.01, None)).astype(np.int64)
    columns["sensor_11"] = rng.integers(0, 7, n)
    return pd.DataFrame({name: columns[name] for name in SENSOR_FIELDS})


def historical_readings(n_rows: int, seed: int) -> pd.DataFrame:
    """A labelled history of `n_rows` readings from a fleet at random moments of its life (reproducible)."""
    rng = np.random.default_rng(seed)
    wear = rng.beta(*_FLEET_WEAR, n_rows)
    load = rng.uniform(0.0, 1.0, n_rows)
    readings = sensor_readings(wear, load, rng)
    breaks = rng.uniform(0.0, 1.0, n_rows) < failure_probability(wear, load)
    readings[LABEL] = np.where(breaks, LIKELY_TO_BREAK, HEALTHY)
    return readings


@dataclass
class Machine:
    """One simulated machine for the live simulator: wear grows with time, faster if it is degrading."""

    sensor_id: int
    wear: float
    wear_per_reading: float
    load: float

    def step(self, rng: np.random.Generator) -> dict[str, float | int]:
        """Advance one reading interval and return the sensor values (field name -> value)."""
        self.wear = min(1.0, self.wear + self.wear_per_reading)
        self.load = float(np.clip(self.load + rng.normal(0, 0.05), 0.0, 1.0))
        row = sensor_readings(np.array([self.wear]), np.array([self.load]), rng).iloc[0]
        return {name: row[name].item() for name in SENSOR_FIELDS}
