"""Where runs are tracked (MLflow) and which model is served (the promoted model file).

- MLflow store: `MLFLOW_TRACKING_URI`, default a SQLite store in `mlruns/` at the repository root
  (`make mlflow-ui` shows it).
- Served model: `MODEL_PATH`, default `<stack dir>/model/iot_model.joblib`: one file holding the fitted pipeline and
  its metadata (version, run id, params, metrics, features), replaced atomically on promotion.
"""

from __future__ import annotations

import json
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import joblib

from contract import FEATURES
from runtime.settings import REPO_ROOT, connection_settings, served_model_file

EXPERIMENT = "iot-predictive-maintenance"
DEFAULT_TRACKING_DIR = REPO_ROOT / "mlruns"


def tracking_uri() -> str:
    """The MLflow tracking URI: `MLFLOW_TRACKING_URI`, or the project's local SQLite store."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    DEFAULT_TRACKING_DIR.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{DEFAULT_TRACKING_DIR / 'mlflow.db'}"


def use_tracking_store():
    """Point MLflow at the project's store and experiment; returns the mlflow module."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        artifacts = os.environ.get("MLFLOW_ARTIFACT_ROOT", str(DEFAULT_TRACKING_DIR / "artifacts"))
        mlflow.create_experiment(EXPERIMENT, artifact_location=Path(artifacts).resolve().as_uri())
    mlflow.set_experiment(EXPERIMENT)
    return mlflow


def model_path() -> Path:
    """`MODEL_PATH`, or the local stack's served-model file."""
    return served_model_file()


@dataclass(frozen=True)
class ModelInfo:
    """What `GET /model` tells about the served model."""

    version: int
    run_id: str
    params: dict
    metrics: dict
    features: list[str] = field(default_factory=lambda: list(FEATURES))
    promoted_at: str = ""


def save_served_model(pipeline, info: ModelInfo, path: Path | None = None) -> Path:
    """Write model + metadata as one file, atomically (a reader sees the old file or the new, never half)."""
    path = path or model_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".promote-", suffix=".joblib")
    os.close(fd)
    try:
        joblib.dump({"model": pipeline, "info": asdict(info)}, tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def load_served_model(path: Path | None = None):
    """The served (pipeline, ModelInfo); FileNotFoundError says how to make one."""
    path = path or model_path()
    if not path.exists():
        raise FileNotFoundError(f"no served model at {path}: train and promote one "
                                f"(`python -m model.train --num-trees 20 --max-depth 20 --promote`)")
    bundle = joblib.load(path)
    return bundle["model"], ModelInfo(**bundle["info"])


def next_version(path: Path | None = None) -> int:
    try:
        return load_served_model(path)[1].version + 1
    except FileNotFoundError:
        return 1


def promote(run_id: str, path: Path | None = None) -> ModelInfo:
    """Make an MLflow run's model the served model, recording which run it came from."""
    mlflow = use_tracking_store()
    run = mlflow.get_run(run_id)
    pipeline = mlflow.sklearn.load_model(f"runs:/{run_id}/model")
    info = ModelInfo(
        version=next_version(path),
        run_id=run_id,
        params=dict(run.data.params),
        metrics={k: round(v, 6) for k, v in run.data.metrics.items()},
        promoted_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    save_served_model(pipeline, info, path)
    return info


def best_run_id() -> str:
    """The run with the highest auroc in the experiment."""
    mlflow = use_tracking_store()
    runs = mlflow.search_runs(experiment_names=[EXPERIMENT], order_by=["metrics.auroc DESC"], max_results=1)
    if runs.empty:
        raise LookupError(f"no runs in MLflow experiment {EXPERIMENT!r} ({tracking_uri()}): train first")
    return str(runs.iloc[0]["run_id"])


def tell_server_to_reload() -> str:
    settings = connection_settings()
    if not settings.get("MODEL_URL") or not settings.get("MODEL_ACCESS_KEY"):
        return "no MODEL_URL/MODEL_ACCESS_KEY known: a model server loads the new model when it starts"
    req = urllib.request.Request(f"{settings['MODEL_URL']}/model/reload", method="POST", data=b"",
                                 headers={"Authorization": f"Bearer {settings['MODEL_ACCESS_KEY']}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            version = json.load(response)["model"]["version"]
        return f"the model server at {settings['MODEL_URL']} now serves version {version}"
    except urllib.error.HTTPError as exc:
        return f"the model server at {settings['MODEL_URL']} refused the reload: {exc.code} {exc.read()[:300]!r}"
    except OSError:
        return f"no model server answers at {settings['MODEL_URL']}: it loads the new model when it starts"
