"""Per-partition work of the streaming job: check each Kafka record against the contract, score the valid ones
with the model server in one batch call, and return scored rows and dead letters side by side.

Used inside Spark's `mapInPandas`; plain pandas in, plain pandas out, so it is tested without Spark.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pandas as pd
import requests

from contract import ID_FIELD, LABEL, SENSOR_FIELDS, TS_FIELD, InvalidReading, parse_reading
from model.wire import ARROW_STREAM, ipc_to_results, rows_to_ipc

# Columns of what mapInPandas returns (see OUTPUT_SCHEMA in the job): `kind` tells scored rows from dead letters.
OUTPUT_COLUMNS = ["kind", ID_FIELD, TS_FIELD, *SENSOR_FIELDS, LABEL, "value", "reason"]


class ModelUnavailable(RuntimeError):
    """The model server did not answer after the bounded retries: the micro-batch must fail, not skip."""


def score_batch(rows: np.ndarray, model_url: str, access_key: str, timeout_s: float = 30,
                attempts: int = 5, session: requests.Session | None = None) -> np.ndarray:
    """Verdicts for an (n, 12) array from the model server's Arrow batch endpoint, with bounded retries."""
    body = rows_to_ipc(rows)
    http = session or requests
    problem = "no attempt made"
    for attempt in range(attempts):
        try:
            response = http.post(f"{model_url}/predict/batch", data=body, timeout=timeout_s,
                                 headers={"Content-Type": ARROW_STREAM, "Authorization": f"Bearer {access_key}"})
            if response.status_code == 200:
                return ipc_to_results(response.content)
            problem = f"HTTP {response.status_code}: {response.text[:300]}"
            if response.status_code in (400, 401, 413):
                break  # retrying cannot fix the request or the key
        except requests.RequestException as exc:
            problem = f"{type(exc).__name__}: {exc}"
        time.sleep(min(2**attempt * 0.5, 8))  # backoff between retries
    raise ModelUnavailable(f"model server {model_url} failed {attempts} time(s); last: {problem}")


def check_and_score(batches: Iterator[pd.DataFrame], model_url: str, access_key: str) -> Iterator[pd.DataFrame]:
    """mapInPandas function: Kafka `value` bytes in; scored readings and dead letters out."""
    with requests.Session() as session:
        for batch in batches:
            good, dead = [], []
            for value in batch["value"]:
                try:
                    good.append(parse_reading(value))
                except InvalidReading as exc:
                    dead.append((value, str(exc)))
            out = []
            if good:
                frame = pd.DataFrame.from_records(good, columns=[ID_FIELD, TS_FIELD, *SENSOR_FIELDS])
                features = frame[list(SENSOR_FIELDS)].to_numpy(dtype=np.float64)
                frame[LABEL] = score_batch(features, model_url, access_key, session=session).astype(np.int32)
                frame[TS_FIELD] = pd.to_datetime(frame[TS_FIELD], unit="us")
                frame[ID_FIELD] = frame[ID_FIELD].astype(np.int32)
                frame["kind"], frame["value"], frame["reason"] = "scored", None, None
                out.append(frame)
            if dead:
                out.append(pd.DataFrame({"kind": "dead", "value": [v for v, _ in dead],
                                         "reason": [r for _, r in dead]}))
            if out:
                yield pd.concat(out, ignore_index=True).reindex(columns=OUTPUT_COLUMNS)
