"""Per-partition work of the streaming job: check each Kafka record against the contract, score the valid ones
with the model server in one batch call, and return scored rows and dead letters side by side.

Used inside Spark's `mapInPandas`; plain pandas in, plain pandas out, so it is tested without Spark. The calls to
the model server (retries, the wire format, refused rows split off) are `model.client`'s. Total: any
record (a null value, any bytes) becomes a scored row or a dead letter with its reason; only an unreachable
model server fails the batch (the job then waits for it).

Within one partition's records, a reading seen again under its key (sensor_id, sensor_ts) is dropped (a
replay); a *different* reading under a key seen earlier is scored but marked with a `conflict` reason: the job
dead-letters it unless Kudu already holds exactly it. Kafka puts a key in one partition, and the job keeps whole
Kafka partitions together, so this sees every repeat of a key within a micro-batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from contract import (
    ID_FIELD,
    LABEL,
    MAX_NESTING,
    MAX_PAYLOAD_BYTES,
    MODEL_VERSION,
    SENSOR_FIELDS,
    TS_FIELD,
    InvalidReading,
    parse_reading,
)
from model.client import SCORERS, Scored, score_or_refuse, session

# Columns of what mapInPandas returns (see OUTPUT_SCHEMA in the job): `kind` tells scored rows from dead letters.
OUTPUT_COLUMNS = ["kind", ID_FIELD, TS_FIELD, *SENSOR_FIELDS, LABEL, MODEL_VERSION, "value", "reason", "field",
                  "partition", "offset", "conflict"]
INPUT_COLUMNS = ["value", "partition", "offset"]


REPEAT = "repeat"


class KeyTracker:
    """The distinct readings seen so far in one partition of one micro-batch, by key: replays from conflicts."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, int], list[tuple]] = {}

    def classify(self, reading: dict) -> str | None:
        """None for the first reading of a key; REPEAT for one seen before; a conflict reason otherwise."""
        key = (reading[ID_FIELD], reading[TS_FIELD])
        values = tuple(float(reading[name]) for name in SENSOR_FIELDS)
        earlier = self.seen.setdefault(key, [])
        if values in earlier:
            return REPEAT
        earlier.append(values)
        return None if len(earlier) == 1 else conflict_reason(key, earlier[0], values, "came earlier in the batch")


def conflict_reason(key: tuple[int, int], kept: tuple, other: tuple, where: str) -> str:
    """The dead-letter reason of a different reading under a key already taken, naming what differs."""
    changes = [f"{name}: {a!r} kept, {b!r} here" for name, a, b in zip(SENSOR_FIELDS, kept, other, strict=True)
               if a != b]
    return (f"conflict: a different reading under this key ({ID_FIELD}={key[0]}, {TS_FIELD}={key[1]}) {where} "
            f"and is kept; {'; '.join(changes)}")


def check_records(batch: pd.DataFrame, tracker: KeyTracker, max_bytes: int, max_nesting: int
                  ) -> tuple[list[dict], list[tuple]]:
    """Readings (with their Kafka position) and dead letters (value, reason, field, partition, offset)."""
    good, dead = [], []
    for value, partition, offset in zip(batch["value"], batch["partition"], batch["offset"], strict=True):
        try:
            reading = parse_reading(value, max_bytes, max_nesting)
        except InvalidReading as exc:
            dead.append((value, str(exc), exc.field or "", partition, offset))
            continue
        verdict = tracker.classify(reading)
        if verdict != REPEAT:
            good.append({**reading, "value": value, "partition": partition, "offset": offset, "conflict": verdict})
    return good, dead


def scored_frame(good: list[dict], scored: Scored, refused: dict[int, str]) -> tuple[pd.DataFrame, list]:
    """The scored readings as rows of the job's schema (each with its verdict and the version of the model that
    gave it), and the rows the model server refused as dead letters. Scored rows do not carry their Kafka record
    (the job finds it again by partition and offset if it needs it)."""
    frame = pd.DataFrame.from_records(good, columns=[ID_FIELD, TS_FIELD, *SENSOR_FIELDS, "value", "partition",
                                                     "offset", "conflict"])
    frame[LABEL], frame[MODEL_VERSION] = scored.verdicts, scored.model_versions
    dead = [(frame["value"][i], reason, "", frame["partition"][i], frame["offset"][i]) for i, reason in refused.items()]
    frame = frame.drop(index=list(refused)) if refused else frame
    frame[TS_FIELD] = pd.to_datetime(frame[TS_FIELD], unit="us")
    frame[ID_FIELD] = frame[ID_FIELD].astype(np.int32)
    frame["kind"], frame["reason"], frame["field"], frame["value"] = "scored", None, None, None
    return frame, dead


def check_and_score(batches: Iterator[pd.DataFrame], model_url: str, access_key: str, scoring: str = "batch",
                    max_bytes: int = MAX_PAYLOAD_BYTES, max_nesting: int = MAX_NESTING) -> Iterator[pd.DataFrame]:
    """mapInPandas function: Kafka `value`, `partition`, `offset` in; scored readings and dead letters out.

    `scoring`: "batch" (one call per partition batch) or "per-record" (the workshop's baseline)."""
    score = SCORERS[scoring]
    tracker = KeyTracker()
    with session() as http:
        for batch in batches:
            good, dead = check_records(batch, tracker, max_bytes, max_nesting)
            out = []
            if good:
                features = np.array([[r[name] for name in SENSOR_FIELDS] for r in good], dtype=np.float64)
                scored, refused = score_or_refuse(score, features, model_url=model_url, access_key=access_key,
                                                  session=http)
                frame, refused_rows = scored_frame(good, scored, refused)
                out.append(frame)
                dead += refused_rows
            if dead:
                out.append(pd.DataFrame(dead, columns=["value", "reason", "field", "partition", "offset"])
                           .assign(kind="dead"))
            if out:
                yield typed(pd.concat(out, ignore_index=True).reindex(columns=OUTPUT_COLUMNS))


def typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns with the dtypes Arrow converts to the job's schema, whatever mix of rows (a batch of dead letters
    alone has no timestamps: NaN would not convert to a timestamp and fail the batch)."""
    texts = ("kind", "reason", "field", "value", "conflict")
    types = {ID_FIELD: "Int32", LABEL: "Int32", MODEL_VERSION: "Int32", "partition": "Int32", "offset": "Int64",
             **dict.fromkeys(SENSOR_FIELDS, "float64"), **dict.fromkeys(texts, object)}
    return frame.astype(types).assign(**{TS_FIELD: pd.to_datetime(frame[TS_FIELD])})
