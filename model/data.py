"""The historical sensor data the model is trained on (the workshop's `data/historical_iot.txt`, re-created).

The shipped file `model/data/historical_iot.csv.gz` was made with the defaults below; make it again, or more:

    python -m model.data                       # 200,000 rows, seed 42 -> model/data/historical_iot.csv.gz
    python -m model.data --rows 1000000 --seed 7 --out /tmp/more.csv.gz

Columns: sensor_0..sensor_11 (see `world` for what each measures) and is_healthy (1 = healthy, 0 = broke soon).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from contract import LABEL, SENSOR_FIELDS
from world import historical_readings

HISTORY_FILE = Path(__file__).resolve().parent / "data" / "historical_iot.csv.gz"
DEFAULT_ROWS = 200_000
DEFAULT_SEED = 42


def load_history(path: Path = HISTORY_FILE) -> pd.DataFrame:
    """The labelled history, with the contract's columns in order."""
    frame = pd.read_csv(path)
    missing = [c for c in (*SENSOR_FIELDS, LABEL) if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    return frame[[*SENSOR_FIELDS, LABEL]]


def write_history(path: Path, rows: int, seed: int) -> pd.DataFrame:
    frame = historical_readings(rows, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0 keeps the gzip bytes reproducible for the same rows and seed.
    frame.to_csv(path, index=False, compression={"method": "gzip", "mtime": 0})
    return frame


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m model.data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help=f"readings to generate ({DEFAULT_ROWS:,})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed ({DEFAULT_SEED})")
    parser.add_argument("--out", type=Path, default=HISTORY_FILE, help=f"output CSV (.gz compresses) ({HISTORY_FILE})")
    args = parser.parse_args(argv)
    frame = write_history(args.out, args.rows, args.seed)
    share = (frame[LABEL] == 0).mean()
    print(f"wrote {len(frame):,} readings to {args.out} ({share:.1%} likely to break)")


if __name__ == "__main__":
    main()
