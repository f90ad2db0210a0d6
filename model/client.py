"""The one client of the model server: every caller (the streaming job, the benchmark, the labs, the tests) scores
through these functions, over HTTP with bounded retries, in the wire format of `model/wire.py`.

    score_batch(rows, url, key)       one Arrow IPC call to POST /predict/batch: the job's way (n x 12 -> Scored)
    score_batch_json(rows, url, key)  the same route with a JSON body {"rows": [...]}
    predict(feature, url, key)        POST /predict with the workshop's feature string -> one Verdict
    score_each(rows, url, key)        one call per reading to the workshop's CDSW-shaped route: the baseline
    score_or_refuse(score, rows, ...) verdicts for the rows the server takes, the reason for each row it refuses

Every verdict comes with the version of the model that gave it (`Scored.model_versions`, one per row;
`Verdict.model_version`): each call is answered by one model, and a row keeps the version of the call that scored
it, also when the server swaps its model between two calls of a batch.

A server that does not answer after the retries raises ModelUnavailable (the job's batch must fail, not skip: the
job tells a model outage by that name in the exception's text); rows the server refuses (HTTP 400 or 413) raise
RowsRefused at once, since sending them again cannot help.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np
import requests

from contract import clip, format_feature_string
from model.wire import ARROW_STREAM, ipc_to_results, rows_to_ipc

BATCH_ROUTE = "/predict/batch"
PREDICT_ROUTE = "/predict"
CDSW_ROUTE = "/api/altus-ds-1/models/call-model"


class Scored(NamedTuple):
    """Verdicts (1 healthy, 0 likely to break) of n rows, and for each the version of the model that gave it."""

    verdicts: np.ndarray
    model_versions: np.ndarray

    @classmethod
    def by_one_model(cls, verdicts: np.ndarray, model_version: int) -> Scored:
        """The answer of one call: every row scored by the same model."""
        return cls(verdicts, np.full(len(verdicts), model_version, dtype=np.int32))

    @property
    def model_version(self) -> int:
        """The version of the model that gave every verdict; ValueError if several did (rows scored by several
        calls, across a promotion)."""
        versions = set(self.model_versions.tolist())
        if len(versions) != 1:
            raise ValueError(f"the verdicts come from model versions {sorted(versions)}, not from one")
        return versions.pop()


class Verdict(NamedTuple):
    """The verdict on one reading, and the version of the model that gave it."""

    result: int
    model_version: int


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
                attempts: int = 5, session: requests.Session | None = None) -> Scored:
    """Verdicts for an (n, 12) array in one call to the model server's Arrow batch endpoint."""
    response = post_with_retries(
        session or requests, f"{model_url}{BATCH_ROUTE}", attempts, timeout_s, data=rows_to_ipc(rows),
        headers={"Content-Type": ARROW_STREAM, **_bearer(access_key)})
    return Scored.by_one_model(*ipc_to_results(response.content))


def score_batch_json(rows: np.ndarray, model_url: str, access_key: str, timeout_s: float = 30,
                     attempts: int = 5, session: requests.Session | None = None) -> Scored:
    """Verdicts for an (n, 12) array in one call to the batch endpoint with a JSON body (`{"rows": [...]}`)."""
    response = post_with_retries(session or requests, f"{model_url}{BATCH_ROUTE}", attempts, timeout_s,
                                 json={"rows": np.asarray(rows).tolist()}, headers=_bearer(access_key))
    answer = response.json()
    return Scored.by_one_model(np.array(answer["results"], dtype=np.int8), answer["model_version"])


def predict(feature: str, model_url: str, access_key: str, timeout_s: float = 10,
            attempts: int = 5, session: requests.Session | None = None) -> Verdict:
    """The verdict for one reading given as the workshop's feature string ("v0, v1, ..., v11")."""
    response = post_with_retries(session or requests, f"{model_url}{PREDICT_ROUTE}", attempts, timeout_s,
                                 json={"feature": feature}, headers=_bearer(access_key))
    return _verdict(response.json())


def _verdict(answer: dict) -> Verdict:
    return Verdict(answer["result"], answer["model_version"])


def score_each(rows: np.ndarray, model_url: str, access_key: str, timeout_s: float = 30,
               attempts: int = 5, session: requests.Session | None = None) -> Scored:
    """The workshop's way, kept as the baseline: one call per reading to the CDSW-shaped endpoint."""
    url = f"{model_url}{CDSW_ROUTE}"
    http = session or requests

    def one(row: np.ndarray) -> Verdict:
        body = {"accessKey": access_key, "request": {"feature": format_feature_string(row)}}
        return _verdict(post_with_retries(http, url, attempts, timeout_s, json=body).json()["response"])

    verdicts = [one(row) for row in rows]
    return Scored(np.array([v.result for v in verdicts], dtype=np.int8),
                  np.array([v.model_version for v in verdicts], dtype=np.int32))


# The job's --scoring choices: "batch" (one Arrow call per partition batch) or "per-record" (the workshop's).
SCORERS = {"batch": score_batch, "per-record": score_each}


def score_or_refuse(score, features: np.ndarray, **call) -> tuple[Scored, dict[int, str]]:
    """Verdicts (with their model's versions) for the rows the model server takes, and the reason for each row it
    refuses (by bisection: one refused row must not cost the others their verdicts). Unrefused rows only fail with
    ModelUnavailable. Each row keeps the version of the call that scored it.

    `score` is one of SCORERS; `call` its other arguments (model_url, access_key, session, ...). A refused row's
    verdict and version are -1."""
    verdicts = np.full(len(features), -1, dtype=np.int32)
    versions = np.full(len(features), -1, dtype=np.int32)
    refused: dict[int, str] = {}
    pending = [(0, len(features))]
    while pending:
        start, stop = pending.pop()
        try:
            verdicts[start:stop], versions[start:stop] = score(features[start:stop], **call)
        except RowsRefused as exc:
            if stop - start == 1:
                refused[start] = f"the model server refused the row: {clip(str(exc), 300)}"
            else:
                middle = (start + stop) // 2
                pending += [(start, middle), (middle, stop)]
    return Scored(verdicts, versions), refused

