"""Where runs are tracked (MLflow), which versions are approved (the MLflow Model Registry), and which model is
served (the promoted model file).

- MLflow store: `MLFLOW_TRACKING_URI`, default a SQLite store in `mlruns/` at the repository root
  (`make mlflow-ui` shows it). Its Model Registry holds every trained run's model as a version of
  `iot-failure-model`, tagged `approval=pending|approved|rejected` (model/approval.py approves and rejects).
- Served model: `MODEL_PATH`, default `<stack dir>/model/iot_model.joblib`: one file holding the fitted pipeline of an
  approved version and its metadata (version, run id, params, metrics, features, who approved it), replaced
  atomically on promotion.
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
REGISTERED_MODEL = "iot-failure-model"
DEFAULT_TRACKING_DIR = REPO_ROOT / "mlruns"
# A registered version's approval: its `approval` tag, with who decided and when in the tags below.
APPROVAL_TAG = "approval"
PENDING, APPROVED, REJECTED = "pending", "approved", "rejected"
DECISION_TAGS = ("approved_by", "approved_at", "rejected_by", "rejected_at", "rejected_reason")
ONNX_TAG_PREFIX = "onnx."  # the ONNX export's parity figures (model/approval.py)
LIST_VERSIONS = "`python -m model versions` lists them"


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


def utc_now() -> str:
    """Now, UTC, ISO 8601 to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---- the Model Registry


@dataclass(frozen=True)
class VersionRecord:
    """One registered version of the model: its run, its approval and its ONNX parity (`onnx`, tags sans prefix)."""

    version: int
    run_id: str
    status: str
    params: dict
    metrics: dict
    registered_at: str
    approved_by: str = ""
    approved_at: str = ""
    rejected_by: str = ""
    rejected_at: str = ""
    rejected_reason: str = ""
    onnx: dict = field(default_factory=dict)


class NotApproved(PermissionError):
    """Only approved versions are served."""

    def __init__(self, record: VersionRecord):
        v = record.version
        if record.status == REJECTED:
            reason = f" ({record.rejected_reason})" if record.rejected_reason else ""
            why, approve = f"was rejected by {record.rejected_by} at {record.rejected_at}{reason}", "Approve it again"
        else:
            why, approve = f"is {record.status}, not approved", "Approve it first"
        super().__init__(f"model version {v} {why}: only approved versions are served. {approve} "
                         f"(`python -m model approve {v}`), or promote an approved version ({LIST_VERSIONS})")


def _registry():
    """An MLflow client on the project's store."""
    return use_tracking_store().MlflowClient()


def register(model_uri: str) -> int:
    """Register a logged model (e.g. `runs:/<run_id>/model`) as a new version of REGISTERED_MODEL, pending
    approval; returns the version number."""
    version = use_tracking_store().register_model(model_uri, REGISTERED_MODEL, tags={APPROVAL_TAG: PENDING})
    return int(version.version)


def _record(client, model_version) -> VersionRecord:
    run = client.get_run(model_version.run_id)
    tags = dict(model_version.tags)
    return VersionRecord(
        version=int(model_version.version),
        run_id=model_version.run_id,
        status=tags.get(APPROVAL_TAG, PENDING),
        params=dict(run.data.params),
        metrics={k: round(v, 6) for k, v in run.data.metrics.items()},
        registered_at=datetime.fromtimestamp(model_version.creation_timestamp / 1000, UTC).isoformat(
            timespec="seconds"),
        **{name: tags.get(name, "") for name in DECISION_TAGS},
        onnx={k.removeprefix(ONNX_TAG_PREFIX): v for k, v in sorted(tags.items()) if k.startswith(ONNX_TAG_PREFIX)},
    )


def version_record(version: int) -> VersionRecord:
    """One registered version; LookupError if there is no such version."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version: {version!r} is not a model version number (1, 2, ...): {LIST_VERSIONS}")
    mlflow = use_tracking_store()
    client = mlflow.MlflowClient()
    try:
        found = client.get_model_version(REGISTERED_MODEL, str(version))
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise LookupError(f"model version {version} of {REGISTERED_MODEL!r} does not exist in {tracking_uri()}: "
                          f"{LIST_VERSIONS}") from None
    return _record(client, found)


def list_versions() -> list[VersionRecord]:
    """Every registered version, oldest first."""
    client = _registry()
    found = client.search_model_versions(f"name = '{REGISTERED_MODEL}'")
    return sorted((_record(client, v) for v in found), key=lambda r: r.version)


def set_version_tags(version: int, tags: dict[str, str]) -> None:
    """Set a version's tags, in the order given (put the one that decides, `approval`, last)."""
    client = _registry()
    for key, value in tags.items():
        client.set_model_version_tag(REGISTERED_MODEL, str(version), key, value)


def load_version(version: int):
    """The fitted pipeline of a registered version."""
    return use_tracking_store().sklearn.load_model(f"models:/{REGISTERED_MODEL}/{version}")


def best_approved_version() -> int:
    """The approved version with the highest auroc (the newer one on a tie)."""
    approved = [r for r in list_versions() if r.status == APPROVED]
    if not approved:
        raise LookupError(f"no approved version of {REGISTERED_MODEL!r} in {tracking_uri()}: approve one first "
                          f"(`python -m model approve N`; {LIST_VERSIONS})")
    return max(approved, key=lambda r: (r.metrics.get("auroc", float("-inf")), r.version)).version


# ---- the served model


@dataclass(frozen=True)
class ModelInfo:
    """What `GET /model` tells about the served model: `version` is its Model Registry version."""

    version: int
    run_id: str
    params: dict
    metrics: dict
    features: list[str] = field(default_factory=lambda: list(FEATURES))
    promoted_at: str = ""
    approved_by: str = ""
    approved_at: str = ""


def save_served_model(pipeline, info: ModelInfo, path: Path | None = None) -> Path:
    """Write model + metadata as one file, atomically (a reader sees the old file or the new, never half)."""
    path = path or model_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".promote-", suffix=".joblib")
    os.fchmod(fd, 0o644)  # readable by the model server, which may run as another user (stack/service_user.py)
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
        raise FileNotFoundError(f"no served model at {path}: train, approve and promote one "
                                f"(`python -m model.train --num-trees 20 --max-depth 20 --promote`)")
    bundle = joblib.load(path)
    return bundle["model"], ModelInfo(**bundle["info"])


def promote(version: int, path: Path | None = None) -> ModelInfo:
    """Make an approved version's model the served model (NotApproved for any other), under its registry version."""
    record = version_record(version)
    if record.status != APPROVED:
        raise NotApproved(record)
    info = ModelInfo(version=record.version, run_id=record.run_id, params=record.params, metrics=record.metrics,
                     promoted_at=utc_now(), approved_by=record.approved_by, approved_at=record.approved_at)
    save_served_model(load_version(version), info, path)
    return info


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
