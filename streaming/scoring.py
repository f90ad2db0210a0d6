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
from dataclasses import dataclass, field
from operator import itemgetter

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
from runtime.spark import skip_zip_rereads_in_this_worker

# Columns of what mapInPandas returns (see OUTPUT_SCHEMA in the job): `kind` tells scored rows from dead letters.
OUTPUT_COLUMNS = ["kind", ID_FIELD, TS_FIELD, *SENSOR_FIELDS, LABEL, MODEL_VERSION, "value", "reason", "field",
                  "partition", "offset", "conflict"]
INPUT_COLUMNS = ["value", "partition", "offset"]


REPEAT = "repeat"
FEATURES = itemgetter(*SENSOR_FIELDS)


class KeyTracker:
    """The distinct readings seen so far in one partition of one micro-batch, by key: replays from conflicts."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, int], list[tuple]] = {}

    def classify(self, key: tuple[int, int], values: tuple[float, ...]) -> str | None:
        """None for the first reading of a key; REPEAT for one seen before; a conflict reason otherwise."""
        earlier = self.seen.get(key)
        if earlier is None:
            self.seen[key] = [values]
            return None
        if values in earlier:
            return REPEAT
        earlier.append(values)
        return conflict_reason(key, earlier[0], values, "came earlier in the batch")


def conflict_reason(key: tuple[int, int], kept: tuple, other: tuple, where: str) -> str:
    """The dead-letter reason of a different reading under a key already taken, naming what differs."""
    changes = [f"{name}: {a!r} kept, {b!r} here" for name, a, b in zip(SENSOR_FIELDS, kept, other, strict=True)
               if a != b]
    return (f"conflict: a different reading under this key ({ID_FIELD}={key[0]}, {TS_FIELD}={key[1]}) {where} "
            f"and is kept; {'; '.join(changes)}")


@dataclass
class Readings:
    """The checked readings of one partition batch, column by column (one list per column: no dict per row)."""
    ids: list[int] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    features: list[tuple[float, ...]] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)  # the Kafka records, to dead-letter a row the model refuses
    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    conflicts: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def feature_matrix(self) -> np.ndarray:
        """The readings' twelve values, a row each: what the model scores."""
        return np.array(self.features, dtype=np.float64).reshape(len(self), len(SENSOR_FIELDS))


def check_records(batch: pd.DataFrame, tracker: KeyTracker, max_bytes: int, max_nesting: int
                  ) -> tuple[Readings, list[tuple]]:
    """Readings (with their Kafka position) and dead letters (value, reason, field, partition, offset)."""
    good, dead = Readings(), []
    for value, partition, offset in zip(batch["value"], batch["partition"], batch["offset"], strict=True):
        try:
            reading = parse_reading(value, max_bytes, max_nesting)
        except InvalidReading as exc:
            dead.append((value, str(exc), exc.field or "", partition, offset))
            continue
        key, features = (reading[ID_FIELD], reading[TS_FIELD]), tuple(map(float, FEATURES(reading)))
        verdict = tracker.classify(key, features)
        if verdict != REPEAT:
            good.ids.append(key[0])
            good.timestamps.append(key[1])
            good.features.append(features)
            good.values.append(value)
            good.partitions.append(partition)
            good.offsets.append(offset)
            good.conflicts.append(verdict)
    return good, dead


def scored_frame(good: Readings, features: np.ndarray, scored: Scored, refused: dict[int, str]
                 ) -> tuple[pd.DataFrame, list]:
    """The scored readings as rows of the job's schema (each with its verdict and the version of the model that
    gave it), and the rows the model server refused as dead letters. Scored rows do not carry their Kafka record
    (the job finds it again by partition and offset if it needs it)."""
    frame = pd.DataFrame({
        "kind": "scored",
        ID_FIELD: np.array(good.ids, dtype=np.int32),
        # numpy's own conversion: pandas' to_datetime(unit="us") made a Timestamp per row (~5 us each)
        TS_FIELD: np.array(good.timestamps, dtype="datetime64[us]").astype("datetime64[ns]"),
        **{name: features[:, i] for i, name in enumerate(SENSOR_FIELDS)},
        LABEL: scored.verdicts, MODEL_VERSION: scored.model_versions,
        "value": None, "reason": None, "field": None,
        "partition": good.partitions, "offset": good.offsets, "conflict": good.conflicts,
    }, columns=OUTPUT_COLUMNS)
    dead = [(good.values[i], reason, "", good.partitions[i], good.offsets[i]) for i, reason in refused.items()]
    return (frame.drop(index=list(refused)) if refused else frame), dead


def check_and_score(batches: Iterator[pd.DataFrame], model_url: str, access_key: str, scoring: str = "batch",
                    max_bytes: int = MAX_PAYLOAD_BYTES, max_nesting: int = MAX_NESTING) -> Iterator[pd.DataFrame]:
    """mapInPandas function: Kafka `value`, `partition`, `offset` in; scored readings and dead letters out.

    `scoring`: "batch" (one call per partition batch) or "per-record" (the workshop's baseline)."""
    skip_zip_rereads_in_this_worker()  # once per task: the next tasks of this worker skip 170 ms of CPU each
    score = SCORERS[scoring]
    tracker = KeyTracker()
    with session() as http:
        for batch in batches:
            good, dead = check_records(batch, tracker, max_bytes, max_nesting)
            out = []
            if good:
                features = good.feature_matrix()
                scored, refused = score_or_refuse(score, features, model_url=model_url, access_key=access_key,
                                                  session=http)
                frame, refused_rows = scored_frame(good, features, scored, refused)
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
    # cache=False: the cache's uniqueness check made a Timestamp of each of a tenth of the rows (9% of the workers'
    # samples, steady state); the column is already datetime64, or NaT for dead letters, and converts as it is.
    return frame.astype(types).assign(**{TS_FIELD: pd.to_datetime(frame[TS_FIELD], cache=False)})
