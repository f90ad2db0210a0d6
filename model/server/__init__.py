"""The model server (lab 8): a Flask app that scores sensor readings with the promoted random forest.

Run it behind gunicorn (what `make up` does):

    MODEL_ACCESS_KEY=... python -m model serve --host 127.0.0.1 --port 8000

Routes (see model/server/api.py): POST /predict, POST /predict/batch (JSON or Arrow IPC), POST /model/reload,
GET /health, GET /model, GET /metrics (Prometheus, see model/server/metrics.py), GET /model/versions/<N>/onnx (an
approved version's ONNX export, for the edge agents), and the workshop's CDSW route
POST /api/altus-ds-1/models/call-model.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from model.edge_model import artifacts_dir
from model.registry import model_path
from model.server.scoring import ModelHolder

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024  # ~250,000 rows as JSON, far more as Arrow
DEFAULT_MAX_ROWS = 1_000_000  # rows per batch call: ~100 MB of float64 features
log = logging.getLogger(__name__)


def create_app(config: dict | None = None) -> Flask:
    """App factory. Settings (env or `config`): MODEL_ACCESS_KEY (required), MODEL_PATH, MODEL_ONNX_DIR (the approved
    versions' ONNX exports, default `onnx/` beside MODEL_PATH), MODEL_MAX_BODY_BYTES (the config key is Flask's
    MAX_CONTENT_LENGTH), MODEL_MAX_ROWS."""
    app = Flask(__name__)
    app.config.from_mapping(
        MODEL_ACCESS_KEY=os.environ.get("MODEL_ACCESS_KEY", ""),
        MODEL_PATH=str(model_path()),
        MODEL_ONNX_DIR="",
        MAX_CONTENT_LENGTH=_positive_int_env("MODEL_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
        MODEL_MAX_ROWS=_positive_int_env("MODEL_MAX_ROWS", DEFAULT_MAX_ROWS),
    )
    app.config.update(config or {})
    app.config["MODEL_ONNX_DIR"] = app.config["MODEL_ONNX_DIR"] or str(artifacts_dir(Path(app.config["MODEL_PATH"])))
    if not app.config["MODEL_ACCESS_KEY"]:
        raise RuntimeError("MODEL_ACCESS_KEY is not set: the model server refuses to run without an access key "
                           "(source .stack/connection.env)")
    # Imported here, not at the top: the gunicorn master imports this package to read model.server.gunicorn_conf,
    # and prometheus_client must not be imported before that config has set PROMETHEUS_MULTIPROC_DIR.
    from model.server import metrics

    app.extensions["model"] = ModelHolder(Path(app.config["MODEL_PATH"]), on_load=metrics.model_loaded)
    metrics.instrument(app)

    from model.server.api import bp

    app.register_blueprint(bp)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return jsonify(error=exc.description, status=exc.code), exc.code

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception):
        log.exception("unexpected error while serving a request")
        return jsonify(error="internal error; see the server log", status=500), 500

    return app


def _positive_int_env(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not (value.isascii() and value.isdigit()) or int(value) == 0:
        raise RuntimeError(f"{name}={value!r}: must be a positive whole number")
    return int(value)
