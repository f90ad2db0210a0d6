"""Routes of the model server. Every scoring route needs the access key; errors are JSON that say what is wrong.

    POST /predict            {"feature": "0, 65, 0, 137, 21.95, 83, 19.42, 111, 9.4, 6, 3.43, 4"} -> {"result": 1}
    POST /predict/batch      {"rows": [[12 numbers], ...]}  -> {"results": [1, 0, ...], "model_version": N}
                             or an Arrow IPC stream (Content-Type application/vnd.apache.arrow.stream) with
                             columns sensor_0..sensor_11 -> an Arrow IPC stream with one int8 column `result`
    POST /model/reload       load the promoted model file again and swap it in
    GET  /health, GET /model no key needed
    POST /api/altus-ds-1/models/call-model   the workshop's CDSW shape:
                             {"accessKey": KEY, "request": {"feature": "..."}}
                             -> {"success": true, "response": {"result": 1}}
"""

from __future__ import annotations

import functools
import hmac
import json
from dataclasses import asdict

import numpy as np
import pyarrow as pa
from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import BadRequest, HTTPException, Unauthorized

from contract import N_SENSORS, SENSOR_FIELDS, FeatureError, parse_feature_string, validate_features
from model.server.scoring import ModelHolder
from model.wire import ARROW_STREAM, results_to_ipc

bp = Blueprint("api", __name__)


def _holder() -> ModelHolder:
    return current_app.extensions["model"]


def _key_matches(provided: str | None) -> bool:
    expected = current_app.config["MODEL_ACCESS_KEY"].encode()
    return provided is not None and hmac.compare_digest(provided.encode(), expected)


def require_key(view):
    """401 unless the request carries `Authorization: Bearer <MODEL_ACCESS_KEY>` (compared in constant time)."""

    @functools.wraps(view)
    def checked(*args, **kwargs):
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not _key_matches(token.strip()):
            raise Unauthorized("missing or wrong access key: send 'Authorization: Bearer <MODEL_ACCESS_KEY>'")
        return view(*args, **kwargs)

    return checked


def _json_body() -> dict:
    raw = request.get_data(cache=True)
    if not raw.strip():
        raise BadRequest("empty body: send a JSON object")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"body must be a JSON object, got {type(body).__name__}")
    return body


def _feature_row(body: dict) -> np.ndarray:
    if "feature" not in body:
        raise BadRequest(f"missing 'feature': a string of {N_SENSORS} comma-separated numbers (sensor_0..sensor_11)")
    try:
        return np.array([parse_feature_string(body["feature"])], dtype=np.float64)
    except FeatureError as exc:
        raise BadRequest(str(exc)) from None


def _check_finite(rows: np.ndarray) -> np.ndarray:
    bad = np.argwhere(~np.isfinite(rows))
    if len(bad):
        i, j = bad[0]
        raise BadRequest(f"row {i}, {SENSOR_FIELDS[j]}: {rows[i, j]} is not a finite number")
    return rows


def _json_rows(body: dict) -> np.ndarray:
    rows = body.get("rows")
    if not isinstance(rows, list) or not rows:
        raise BadRequest(f"'rows' must be a non-empty list of rows of {N_SENSORS} numbers (sensor_0..sensor_11)")
    try:
        array = np.array(rows, dtype=np.float64)
    except (ValueError, TypeError):
        array = None
    if array is None or array.ndim != 2 or array.shape[1] != N_SENSORS:
        for i, row in enumerate(rows):  # find and name the first bad row
            if not isinstance(row, list):
                raise BadRequest(f"row {i}: must be a list of {N_SENSORS} numbers, got {type(row).__name__}")
            try:
                validate_features(row)
            except FeatureError as exc:
                raise BadRequest(f"row {i}: {exc}") from None
        raise BadRequest(f"'rows' must be a list of rows of {N_SENSORS} numbers")
    return _check_finite(array)


def _arrow_rows(raw: bytes) -> np.ndarray:
    if not raw:
        raise BadRequest("empty body: send an Arrow IPC stream with columns sensor_0..sensor_11")
    try:
        table = pa.ipc.open_stream(raw).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise BadRequest(f"body is not an Arrow IPC stream: {exc}") from None
    missing = [name for name in SENSOR_FIELDS if name not in table.column_names]
    if missing:
        raise BadRequest(f"Arrow stream lacks column(s) {missing}")
    if table.num_rows == 0:
        raise BadRequest("Arrow stream has no rows")
    columns = []
    for name in SENSOR_FIELDS:
        column = table.column(name)
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
            raise BadRequest(f"{name}: Arrow type {column.type} is not numeric")
        if column.null_count:
            raise BadRequest(f"{name}: {column.null_count} null value(s)")
        columns.append(column.to_numpy())
    return _check_finite(np.column_stack(columns).astype(np.float64, copy=False))


def _arrow_response(results: np.ndarray) -> Response:
    return Response(results_to_ipc(results), mimetype=ARROW_STREAM)


@bp.get("/health")
def health():
    return jsonify(status="ok", model_version=_holder().current.info.version)


@bp.get("/model")
def model_info():
    return jsonify(asdict(_holder().current.info))


@bp.post("/predict")
@require_key
def predict():
    return jsonify(result=int(_holder().predict(_feature_row(_json_body()))[0]))


@bp.post("/predict/batch")
@require_key
def predict_batch():
    holder = _holder()
    if request.mimetype == ARROW_STREAM:
        return _arrow_response(holder.predict(_arrow_rows(request.get_data())))
    results = holder.predict(_json_rows(_json_body()))
    return jsonify(results=results.tolist(), model_version=holder.current.info.version)


@bp.post("/model/reload")
@require_key
def reload_model():
    try:
        info = _holder().reload()
    except Exception as exc:  # noqa: BLE001 - the old model keeps serving; say why the new one did not load
        current_app.logger.exception("model reload failed")
        return jsonify(error=f"reload failed, still serving the previous model: {exc}", status=500), 500
    return jsonify(reloaded=True, model=asdict(info))


@bp.post("/api/altus-ds-1/models/call-model")
def call_model():
    """The workshop's CDSW model API: key in the body, result under `response`."""
    try:
        body = _json_body()
        if not _key_matches(body.get("accessKey") if isinstance(body.get("accessKey"), str) else None):
            raise Unauthorized("missing or wrong 'accessKey'")
        request_part = body.get("request")
        if not isinstance(request_part, dict):
            raise BadRequest("missing 'request': an object with 'feature'")
        result = int(_holder().predict(_feature_row(request_part))[0])
    except HTTPException as exc:
        return jsonify(success=False, message=exc.description), exc.code
    return jsonify(success=True, response={"result": result})
