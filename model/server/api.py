"""Routes of the model server. Every scoring route needs the access key; errors are JSON that say what is wrong.

    POST /predict            {"feature": "0, 65, 0, 137, 21.95, 83, 19.42, 111, 9.4, 6, 3.43, 4"}
                             -> {"result": 1, "model_version": N}
    POST /predict/batch      {"rows": [[12 numbers], ...]}  -> {"results": [1, 0, ...], "model_version": N}
                             or an Arrow IPC stream (Content-Type application/vnd.apache.arrow.stream) with
                             columns sensor_0..sensor_11 -> an Arrow IPC stream with one int8 column `result`
                             and `model_version` in its schema's metadata
    POST /model/reload       load the promoted model file again and swap it in
    GET  /model/versions/<N>/onnx   an approved version's ONNX export, for the edge agents (key needed; HTTP
                             ranges for resumed downloads; its sha256 in X-Content-SHA256 and the ETag)
    GET  /health, GET /model no key needed
    GET  /metrics            Prometheus metrics (model/server/metrics.py), no key needed
    POST /api/altus-ds-1/models/call-model   the workshop's CDSW shape:
                             {"accessKey": KEY, "request": {"feature": "..."}}
                             -> {"success": true, "response": {"result": 1, "model_version": N}}

Every answer names the version of the model that scored it: one model per call, even across a reload.
A bad call gets a 4xx, never a 5xx: the key is checked before the body is read (on the CDSW route, whose key is in
the body, the body is bounded to CDSW_MAX_BODY_BYTES first), bodies are bounded in bytes, nesting and rows, and
every value is checked before it reaches the model.
"""

from __future__ import annotations

import functools
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TypeVar

import numpy as np
from flask import Blueprint, Response, current_app, jsonify, request, send_file
from werkzeug.exceptions import (
    BadRequest,
    HTTPException,
    NotFound,
    RequestEntityTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)

import contract
from contract import N_SENSORS, SENSOR_FIELDS, FeatureError, clip, parse_feature_string, show, validate_features
from model.edge_model import find_artifact
from model.server import metrics
from model.server.scoring import ModelHolder
from model.wire import ARROW_STREAM, StreamError, StreamTooLarge, read_columns, results_to_ipc

bp = Blueprint("api", __name__)
T = TypeVar("T")

CDSW_MAX_BODY_BYTES = 16 * 1024  # a call is about 150 bytes; its key is inside, so it is read before the key check
# The random forest scores float32: a larger magnitude would become infinite inside scikit-learn.
MAX_MAGNITUDE = float(np.finfo(np.float32).max)
# /health scores the workshop's healthy example: the server is ok only while its model really scores.
PROBE_ROW = np.array([[0, 65, 0, 137, 21.95, 83, 19.42, 111, 9.4, 6, 3.43, 4]], dtype=np.float64)
ARROW_HINT = (f"send an Arrow IPC stream (Content-Type {ARROW_STREAM}) with integer or float columns "
              "sensor_0..sensor_11")
_NUMBER_TYPES = frozenset((int, float))


def _holder() -> ModelHolder:
    return current_app.extensions["model"]


def _key_matches(provided: str | None) -> bool:
    expected = current_app.config["MODEL_ACCESS_KEY"].encode()
    return provided is not None and hmac.compare_digest(provided.encode("utf-8", "surrogatepass"), expected)


def _bearer_token() -> str | None:
    """The token of `Authorization: Bearer <token>`; None without an Authorization header, "" if not Bearer."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def require_key(view):
    """401 unless the request carries `Authorization: Bearer <MODEL_ACCESS_KEY>` (compared in constant time).
    Checked before anything reads the body."""

    @functools.wraps(view)
    def checked(*args, **kwargs):
        if not _key_matches(_bearer_token()):
            raise Unauthorized("missing or wrong access key: send 'Authorization: Bearer <MODEL_ACCESS_KEY>'")
        return view(*args, **kwargs)

    return checked


# ---- bodies


def _read_body(limit: int | None = None) -> bytes:
    """The body, read no further than `limit` bytes (default and at most: MAX_CONTENT_LENGTH, from
    MODEL_MAX_BODY_BYTES); 413 beyond, also for a chunked body, which declares no length."""
    app_limit = current_app.config["MAX_CONTENT_LENGTH"]
    limit = app_limit if limit is None else limit if app_limit is None else min(limit, app_limit)
    if limit is None:
        return request.get_data(cache=True)
    too_large = RequestEntityTooLarge(f"body over the limit of {limit:,} bytes")
    # Werkzeug stops a chunked body silently at the limit, so read one byte more to tell "longer" from "as long".
    request.max_content_length = limit + 1
    try:
        body = request.get_data(cache=True)
    except RequestEntityTooLarge:
        raise too_large from None
    if len(body) > limit:
        raise too_large
    return body


def _require_json(accepted: str = "application/json") -> None:
    """415 for a Content-Type that is not JSON; none at all is taken as JSON."""
    if request.mimetype and not request.is_json:
        raise UnsupportedMediaType(f"Content-Type {show(request.content_type)} is not accepted here: "
                                   f"send {accepted}")


class _NonFiniteLiteral(ValueError):
    """NaN, Infinity or -Infinity in a JSON text: Python's json reads them, JSON has no such numbers."""


def _refuse_literal(name: str) -> float:
    raise _NonFiniteLiteral(name)


def _json_body(validate: Callable[[dict], T], limit: int | None = None) -> T:
    """`validate` applied to the JSON object in the body (read up to `limit` bytes); 400 naming the problem."""
    text = _json_text(_read_body(limit))
    try:
        return validate(_json_object(text, _refuse_literal))
    except _NonFiniteLiteral as literal:
        validate(_json_object(text, float))  # names the row and sensor when the literal is in a value that is used
        raise BadRequest(f"{literal} is not a JSON number: send finite numbers") from None


def _json_text(raw: bytes) -> str:
    if not raw.strip():
        raise BadRequest("empty body: send a JSON object")
    try:  # UTF-8, -16 or -32, as json.loads accepts; a lone surrogate stays one, as json.loads does it
        text = raw.decode(json.detect_encoding(raw), "surrogatepass")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"body is not JSON: not valid Unicode text ({exc.reason} at byte {exc.start})") from None
    _check_nesting(text)
    return text


def _check_nesting(text: str) -> None:
    """400 beyond contract.MAX_NESTING levels of arrays and objects: json.loads recurses once per level."""
    limit = contract.MAX_NESTING
    if contract.nested_deeper_than(text, limit):
        raise BadRequest(f"body is nested deeper than {limit} levels of arrays or objects")


def _json_object(text: str, parse_constant: Callable[[str], float]) -> dict:
    try:
        body = json.loads(text, parse_constant=parse_constant)
    except _NonFiniteLiteral:
        raise
    except ValueError as exc:  # also ints of more than 4,300 digits
        raise BadRequest(f"body is not JSON: {clip(str(exc), 200)}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"body must be a JSON object, got {_json_type(body)}")
    return body


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return names.get(type(value), "null")


def _shown(value: object) -> str:
    """An offending JSON value as the caller wrote it, short."""
    return json.dumps(value) if value is None or isinstance(value, bool) else show(value)


# ---- rows


def _feature_row(body: dict) -> np.ndarray:
    if "feature" not in body:
        raise BadRequest(f"missing 'feature': a string of {N_SENSORS} comma-separated numbers (sensor_0..sensor_11)")
    try:
        row = np.array([parse_feature_string(body["feature"])], dtype=np.float64)
    except FeatureError as exc:
        raise BadRequest(str(exc)) from None
    return _scorable(row, batch=False)


def _scorable(rows: np.ndarray, batch: bool = True) -> np.ndarray:
    """The rows if the model can score every value: finite and within float32's range."""
    bad = np.argwhere(~(np.abs(rows) <= MAX_MAGNITUDE))  # NaN compares false
    if len(bad):
        i, j = bad[0]
        where = f"row {i}, {SENSOR_FIELDS[j]}" if batch else SENSOR_FIELDS[j]
        value = rows[i, j]
        if not np.isfinite(value):
            raise BadRequest(f"{where}: {value} is not a finite number")
        raise BadRequest(f"{where}: {value:g} is beyond the model's range of +-{MAX_MAGNITUDE:.4g} (float32)")
    return rows


def _json_rows(body: dict) -> np.ndarray:
    rows = body.get("rows")
    if not isinstance(rows, list) or not rows:
        raise BadRequest(f"'rows' must be a non-empty list of rows of {N_SENSORS} numbers (sensor_0..sensor_11)")
    _check_row_count(len(rows))
    if not all(isinstance(row, list) and len(row) == N_SENSORS and _NUMBER_TYPES.issuperset(map(type, row))
               for row in rows):
        raise _bad_row(rows)
    try:
        array = np.array(rows, dtype=np.float64)
    except OverflowError:  # an integer too large for a float
        raise _bad_row(rows) from None
    return _scorable(array)


def _check_row_count(count: int) -> None:
    limit = current_app.config["MODEL_MAX_ROWS"]
    if count > limit:
        raise RequestEntityTooLarge(f"{count:,} rows, more than the limit of {limit:,} (MODEL_MAX_ROWS): "
                                    "send fewer rows per call")


def _bad_row(rows: list) -> BadRequest:
    """A 400 naming the first row that is not a list of 12 numbers, and its culprit."""
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            return BadRequest(f"row {i}: must be a list of {N_SENSORS} numbers, got {_json_type(row)}")
        for name, value in zip(SENSOR_FIELDS, row, strict=False):
            if type(value) not in _NUMBER_TYPES:
                return BadRequest(f"row {i}: {name}: {_shown(value)} is not a number")
        try:
            validate_features(row)
        except FeatureError as exc:
            return BadRequest(f"row {i}: {exc}")
    return BadRequest(f"'rows' must be a list of rows of {N_SENSORS} numbers")


def _arrow_rows(raw: bytes) -> np.ndarray:
    if not raw:
        raise BadRequest(f"empty body: {ARROW_HINT}")
    try:
        table = read_columns(raw, SENSOR_FIELDS, current_app.config["MODEL_MAX_ROWS"])
    except StreamTooLarge as exc:
        raise RequestEntityTooLarge(f"{exc} (MODEL_MAX_ROWS): send fewer rows per call") from None
    except StreamError as exc:
        raise BadRequest(f"{exc}: {ARROW_HINT}") from None
    if table.num_rows == 0:
        raise BadRequest(f"Arrow stream has no rows: {ARROW_HINT}")
    columns = []
    for name in SENSOR_FIELDS:
        column = table.column(name)
        if column.null_count:
            raise BadRequest(f"{name}: {column.null_count} null value(s)")
        columns.append(column.to_numpy())
    return _scorable(np.column_stack(columns).astype(np.float64, copy=False))


def _arrow_response(results: np.ndarray, model_version: int) -> Response:
    return Response(results_to_ipc(results, model_version), mimetype=ARROW_STREAM)


def _score(rows: np.ndarray) -> tuple[np.ndarray, int]:
    """Verdicts for the rows and the version of the model that gave them, counted and timed."""
    started = time.perf_counter()
    results, version = _holder().score(rows)
    metrics.scored(len(rows), time.perf_counter() - started)
    return results, version


def _score_one(row: np.ndarray) -> dict:
    """The verdict for one row, with the version of the model that gave it."""
    results, version = _score(row)
    return {"result": int(results[0]), "model_version": version}


# ---- routes


@bp.get("/health")
def health():
    """ok only if the model scores the probe row now; 503 with the error otherwise."""
    holder = _holder()
    version = holder.current.info.version
    try:
        verdict = holder.predict(PROBE_ROW)[0]
        if verdict not in (0, 1):
            raise ValueError(f"the model answered {show(verdict)}, not 0 or 1")
    except Exception as exc:  # noqa: BLE001 - any failure means the server cannot score
        current_app.logger.error("health probe failed: %r", exc)
        return jsonify(status="unavailable", model_version=version,
                       error=f"the model cannot score: {type(exc).__name__}: {clip(str(exc), 200)}"), 503
    return jsonify(status="ok", model_version=version)


@bp.get("/model")
def model_info():
    return jsonify(asdict(_holder().current.info))


@bp.get("/metrics")
def metrics_page():
    """Prometheus metrics, no key needed: counts, timings and the served model's version and run, no data."""
    body, content_type = metrics.exposition(request.headers.get("Accept"))
    return Response(body, content_type=content_type)


@bp.post("/predict")
@require_key
def predict():
    _require_json()
    return jsonify(_score_one(_json_body(_feature_row)))


@bp.post("/predict/batch")
@require_key
def predict_batch():
    if request.mimetype == ARROW_STREAM:
        return _arrow_response(*_score(_arrow_rows(_read_body())))
    _require_json(f"application/json or {ARROW_STREAM}")
    results, version = _score(_json_body(_json_rows))
    return jsonify(results=results.tolist(), model_version=version)


@bp.post("/model/reload")
@require_key
def reload_model():
    """Reloads the server's own model file; the body is never read."""
    try:
        info = _holder().reload()
    except Exception as exc:  # noqa: BLE001 - the old model keeps serving; say why the new one did not load
        current_app.logger.exception("model reload failed")
        return jsonify(error=f"reload failed, still serving the previous model: {exc}", status=500), 500
    return jsonify(reloaded=True, model=asdict(info))


@bp.get("/model/versions/<int:version>/onnx")
@require_key
def model_artifact(version: int):
    """An approved version's ONNX export. Only approved versions are exported, so any other version is a 404."""
    artifact = find_artifact(version, Path(current_app.config["MODEL_ONNX_DIR"]))
    if artifact is None:
        raise NotFound(f"model version {version} has no ONNX export: only approved versions have one "
                       f"(python -m model approve {version})")
    response = send_file(artifact.path, mimetype="application/octet-stream", conditional=True,
                         etag=artifact.sha256, max_age=0, download_name=f"iot-model-v{version}.onnx")
    response.headers["X-Content-SHA256"] = artifact.sha256
    response.headers["X-Model-Version"] = str(version)
    return response


@bp.post("/api/altus-ds-1/models/call-model")
def call_model():
    """The workshop's CDSW model API: key in the body (or as a Bearer header), result under `response`."""
    try:
        answer = _score_one(_cdsw_row())
    except HTTPException as exc:
        return jsonify(success=False, message=exc.description), exc.code
    return jsonify(success=True, response=answer)


def _cdsw_row() -> np.ndarray:
    """The row of a CDSW call. A Bearer header, if sent, is checked before the body and then stands for the
    key; otherwise the key is the body's `accessKey`, so the body is bounded before it is read."""
    token = _bearer_token()
    if token is not None and not _key_matches(token):
        raise Unauthorized("wrong access key in the Authorization header: send 'Bearer <MODEL_ACCESS_KEY>'")
    _require_json()
    return _json_body(functools.partial(_cdsw_body_row, keyed=token is not None), CDSW_MAX_BODY_BYTES)


def _cdsw_body_row(body: dict, keyed: bool) -> np.ndarray:
    key = body.get("accessKey")
    if not keyed and not _key_matches(key if isinstance(key, str) else None):
        raise Unauthorized("missing or wrong 'accessKey'")
    request_part = body.get("request")
    if not isinstance(request_part, dict):
        raise BadRequest("missing 'request': an object with 'feature'")
    return _feature_row(request_part)
