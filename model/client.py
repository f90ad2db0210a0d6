"""The one client of the model server: every caller (the streaming job, the benchmark, the labs, the tests) scores
through these functions, over HTTP with bounded retries, in the wire format of `model/wire.py`.

    score_batch(rows, url, key)       one Arrow IPC call to POST /predict/batch: the job's way (n x 12 -> n verdicts)
    score_batch_json(rows, url, key)  the same route with a JSON body {"rows": [...]}
    predict(feature, url, key)        POST /predict with the workshop's feature string -> one verdict
    score_each(rows, url, key)        one call per reading to the workshop's CDSW-shaped route: the baseline
    score_or_refuse(score, rows, ...) verdicts for the rows the server takes, the reason for each row it refuses

A server that does not answer after the retries raises ModelUnavailable (the job's batch must fail, not skip: the
job tells a model outage by that name in the exception's text); rows the server refuses (HTTP 400 or 413) raise
RowsRefused at once, since sending them again cannot help.
"""

from __future__ import annotations

import time

import numpy as np
import requests

from contract import clip, format_feature_string
from model.wire import ARROW_STREAM, ipc_to_results, rows_to_ipc

BATCH_ROUTE = "/predict/batch"
PREDICT_ROUTE = "/predict"
CDSW_ROUTE = "/api/altus-ds-1/models/call-model"


class ModelUnavailable(RuntimeError):
    """The model server did not answer after the bounded retries: the micro-batch must fail, not skip."""


class RowsRefused(ValueError):
    """The model server refused the rows (HTTP 400, or 413 for too many): retrying them as they are cannot help."""


def post_with_retries(session, url: str, attempts: int, timeout_s: float, **request) -> requests.Response:
    """POST with bounded retries and backoff; the response once it is 200, ModelUnavailable otherwise."""
    problem = "no attempt made"
    for attempt in range(attempts):
        try:
            response = session.post(url, timeout=timeout_s, **request)
            if response.status_code == 200:
                return response
            problem = f"HTTP {response.status_code}: {response.text[:300]}"
            if response.status_code in (400, 413):
                raise RowsRefused(problem)  # the rows themselves, or too many at once: the caller splits them
            if response.status_code in (401, 415):
                break  # retrying cannot fix the key or the request's form
        except requests.RequestException as exc:
            problem = f"{type(exc).__name__}: {exc}"
        time.sleep(min(2**attempt * 0.5, 8))  # backoff between retries
    raise ModelUnavailable(f"model server {url} failed {attempts} time(s); last: {problem}")


def session() -> requests.Session:
    """A pool of connections to pass as `session=` to the calls below, for many calls in a row; close it after."""
    return requests.Session()


def _bearer(access_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {access_key}"}


def score_batch(rows: np.ndarray, model_url: str, access_key: str, timeout_s: float = 30,
                attempts: int = 5, session: requests.Session | None = None) -> np.ndarray:
    """Verdicts for an (n, 12) array in one call to the model server's Arrow batch endpoint."""
    response = post_with_retries(
        session or requests, f"{model_url}{BATCH_ROUTE}", attempts, timeout_s, data=rows_to_ipc(rows),
        headers={"Content-Type": ARROW_STREAM, **_bearer(access_key)})
    return ipc_to_results(response.content)


def score_batch_json(rows: np.ndarray, model_url: str, access_key: str, timeout_s: float = 30,
                     attempts: int = 5, session: requests.Session | None = None) -> np.ndarray:
    """Verdicts for an (n, 12) array in one call to the batch endpoint with a JSON body (`{"rows": [...]}`)."""
    response = post_with_retries(session or requests, f"{model_url}{BATCH_ROUTE}", attempts, timeout_s,
                                 json={"rows": np.asarray(rows).tolist()}, headers=_bearer(access_key))
    return np.array(response.json()["results"])


def predict(feature: str, model_url: str, access_key: str, timeout_s: float = 10,
            attempts: int = 5, session: requests.Session | None = None) -> int:
    """The verdict for one reading given as the workshop's feature string ("v0, v1, ..., v11")."""
    response = post_with_retries(session or requests, f"{model_url}{PREDICT_ROUTE}", attempts, timeout_s,
                                 json={"feature": feature}, headers=_bearer(access_key))
    return response.json()["result"]


def score_each(rows: np.ndarray, model_url: str, access_key: str, timeout_s: float = 30,
               attempts: int = 5, session: requests.Session | None = None) -> np.ndarray:
    """The workshop's way, kept as the baseline: one call per reading to the CDSW-shaped endpoint."""
    url = f"{model_url}{CDSW_ROUTE}"
    http = session or requests

    def one(row: np.ndarray) -> int:
        body = {"accessKey": access_key, "request": {"feature": format_feature_string(row)}}
        return post_with_retries(http, url, attempts, timeout_s, json=body).json()["response"]["result"]

    return np.array([one(row) for row in rows], dtype=np.int8)


# The job's --scoring choices: "batch" (one Arrow call per partition batch) or "per-record" (the workshop's).
SCORERS = {"batch": score_batch, "per-record": score_each}


def score_or_refuse(score, features: np.ndarray, **call) -> tuple[np.ndarray, dict[int, str]]:
    """Verdicts for the rows the model server takes, and the reason for each row it refuses (by bisection:
    one refused row must not cost the others their verdicts). Unrefused rows only fail with ModelUnavailable.

    `score` is one of SCORERS; `call` its other arguments (model_url, access_key, session, ...). A refused row's
    verdict is -1."""
    verdicts = np.full(len(features), -1, dtype=np.int32)
    refused: dict[int, str] = {}
    pending = [(0, len(features))]
    while pending:
        start, stop = pending.pop()
        try:
            verdicts[start:stop] = score(features[start:stop], **call)
        except RowsRefused as exc:
            if stop - start == 1:
                refused[start] = f"the model server refused the row: {clip(str(exc), 300)}"
            else:
                middle = (start + stop) // 2
                pending += [(start, middle), (middle, stop)]
    return verdicts, refused

