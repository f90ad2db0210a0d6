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

from contract import (
    ID_FIELD,
    LABEL,
    SENSOR_FIELDS,
    TS_FIELD,
    InvalidReading,
    format_feature_string,
    parse_reading,
)
from model.wire import ARROW_STREAM, ipc_to_results, rows_to_ipc

# Columns of what mapInPandas returns (see OUTPUT_SCHEMA in the job): `kind` tells scored rows from dead letters.
OUTPUT_COLUMNS = ["kind", ID_FIELD, TS_FIELD, *SENSOR_FIELDS, LABEL, "value", "reason"]


class ModelUnavailable(RuntimeError):
    """The model server did not answer after the bounded retries: the micro-batch must fail, not skip."""


def _post_with_retries(session, url: str, attempts: int, timeout_s: float, **request) -> requests.Response:
    """POST with bounded retries and backoff; the response once it is 200, ModelUnavailable otherwise."""
    problem = "no attempt made"
    for attempt in range(attempts):
        try:
            response = session.post(url, timeout=timeout_s, **request)
            if response.status_code == 200:
                return response
            problem = f"HTTP {response.status_code}: {response.text[:300]}"
            if response.status_code in (400, 401, 413):
                break  # retrying cannot fix the request or the key
        except requests.RequestException as exc:
            problem = f"{type(exc).__name__}: {exc}"
        time.sleep(min(2**attempt * 0.5, 8))  # backoff between retries
    raise ModelUnavailable(f"model server {url} failed {attempts} time(s); last: {problem}")


def score_batch(rows: np.ndarray, model_url: str, access_key: str, timeout_s: float = 30,
                attempts: int = 5, session: requests.Session | None = None) -> np.ndarray:
    """Verdicts for an (n, 12) array in one call to the model server's Arrow batch endpoint."""
    response = _post_with_retries(
        session or requests, f"{model_url}/predict/batch", attempts, timeout_s, data=rows_to_ipc(rows),
        headers={"Content-Type": ARROW_STREAM, "Authorization": f"Bearer {access_key}"})
    return ipc_to_results(response.content)


def score_each(rows: np.ndarray, model_url: str, access_key: str, timeout_s: float = 30,
               attempts: int = 5, session: requests.Session | None = None) -> np.ndarray:
    """The workshop's way, kept as the baseline: one call per reading to the CDSW-shaped endpoint."""
    url = f"{model_url}/api/altus-ds-1/models/call-model"
    http = session or requests

    def one(row: np.ndarray) -> int:
        body = {"accessKey": access_key, "request": {"feature": format_feature_string(row)}}
        return _post_with_retries(http, url, attempts, timeout_s, json=body).json()["response"]["result"]

    return np.array([one(row) for row in rows], dtype=np.int8)


SCORERS = {"batch": score_batch, "per-record": score_each}


def check_and_score(batches: Iterator[pd.DataFrame], model_url: str, access_key: str,
                    scoring: str = "batch") -> Iterator[pd.DataFrame]:
    """mapInPandas function: Kafka `value` bytes in; scored readings and dead letters out.

    `scoring`: "batch" (one call per partition batch) or "per-record" (the workshop's baseline)."""
    score = SCORERS[scoring]
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
                frame[LABEL] = score(features, model_url, access_key, session=session).astype(np.int32)
                frame[TS_FIELD] = pd.to_datetime(frame[TS_FIELD], unit="us")
                frame[ID_FIELD] = frame[ID_FIELD].astype(np.int32)
                frame["kind"], frame["value"], frame["reason"] = "scored", None, None
                out.append(frame)
            if dead:
                out.append(pd.DataFrame({"kind": "dead", "value": [v for v, _ in dead],
                                         "reason": [r for _, r in dead]}))
            if out:
                yield pd.concat(out, ignore_index=True).reindex(columns=OUTPUT_COLUMNS)
