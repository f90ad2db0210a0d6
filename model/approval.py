"""Approval of registered model versions: only an approved version is served, centrally or at the edge.

    approval = approve(3)              # approval=approved, who and when; ONNX export, parity, the edge artifact
    rejection = reject(3, reason="…")  # approval=rejected, who, when, why; the edge artifact withdrawn
    promote(3)                         # model.registry: serve an approved version centrally

Every trained run is registered pending (model.train). `approve` exports the model to ONNX, checks it against
scikit-learn on the run's held-out rows, and records the figures (`onnx.*`) and then the decision (who, when,
`approval=approved`) as tags of the version in the MLflow Model Registry. Only when the parity is acceptable
(model.edge_model.MAX_SHARE_DIFFERING, and the workshop examples agree) is the export stored, last, for the model
server to hand out (`GET /model/versions/<N>/onnx`); otherwise the version is approved for central serving only.

The latest decision stands: `reject` withdraws an earlier approval (and the edge artifact), `approve` of a rejected
version approves it again. Both keep the other decision's tags, so a version shows who approved and who rejected it.
Rejecting the version the model server serves does not stop it: promote another approved version.
"""

from __future__ import annotations

import getpass
from dataclasses import asdict, dataclass
from pathlib import Path

from contract import clip
from model.edge_model import (
    MAX_SHARE_DIFFERING,
    Artifact,
    Parity,
    artifacts_dir,
    check_parity,
    find_artifact,
    remove_artifact,
    store_artifact,
    to_onnx,
)
from model.registry import (
    APPROVAL_TAG,
    APPROVED,
    ONNX_TAG_PREFIX,
    REJECTED,
    ModelInfo,
    VersionRecord,
    load_served_model,
    load_version,
    promote,
    set_version_tags,
    utc_now,
    version_record,
)
from model.train import DEFAULT_SEED, held_out_split


@dataclass(frozen=True)
class Approval:
    """What `approve` did: the ONNX parity (None if the export failed) and the edge artifact (None unless stored)."""

    version: int
    approved_by: str
    approved_at: str
    parity: Parity | None
    export_error: str
    artifact: Artifact | None

    def summary(self) -> str:
        lines = [f"approved model version {self.version} as {self.approved_by} at {self.approved_at}"]
        if self.parity is None:
            lines.append(f"ONNX export failed: {self.export_error}")
        else:
            verdict = "ok" if self.parity.acceptable() else "FAILED"
            lines.append(f"ONNX parity {verdict}: {self.parity.summary()} (at most {MAX_SHARE_DIFFERING:.1%} may "
                         "differ, and the workshop examples must agree)")
        if self.artifact is None:
            lines.append(f"no edge artifact: version {self.version} is approved for central serving only "
                         f"(`python -m model promote {self.version}`); the edge cannot get it")
        else:
            lines.append(f"edge artifact stored: {self.artifact.path} ({self.artifact.size_bytes:,} bytes, sha256 "
                         f"{self.artifact.sha256}); the model server hands it out at "
                         f"GET /model/versions/{self.version}/onnx")
        return "\n".join(lines)


@dataclass(frozen=True)
class Rejection:
    """What `reject` did: the status it replaced, whether it withdrew an edge artifact, whether it is still served."""

    version: int
    rejected_by: str
    rejected_at: str
    reason: str
    previous_status: str
    removed_artifact: bool
    still_served: bool

    def summary(self) -> str:
        because = f": {self.reason}" if self.reason else ""
        lines = [f"rejected model version {self.version} (was {self.previous_status}) as {self.rejected_by} at "
                 f"{self.rejected_at}{because}"]
        if self.removed_artifact:
            lines.append(f"its edge artifact is withdrawn: GET /model/versions/{self.version}/onnx answers 404")
        if self.still_served:
            lines.append(f"version {self.version} is still the served model: promote an approved version "
                         "(`python -m model promote best`)")
        return "\n".join(lines)


def _who(by: str | None) -> str:
    """`by`, or the user running this."""
    if by is not None:
        if not by.strip():
            raise ValueError("by: the name is empty: give who decides (--by NAME), or leave it out to record you")
        return by.strip()
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        raise ValueError("cannot tell who you are (no USER or LOGNAME, no passwd entry): give a name (--by NAME)"
                         ) from None


def _export(pipeline, seed: int) -> tuple[bytes, Parity | None, str]:
    """The ONNX export and its parity on the held-out rows of `seed`; ("", None, error) if it cannot be exported."""
    try:
        onnx_bytes = to_onnx(pipeline)
    except Exception as exc:  # noqa: BLE001 - skl2onnx cannot convert every estimator; the version still serves
        return b"", None, f"{type(exc).__name__}: {clip(str(exc), 300)}"
    return onnx_bytes, check_parity(pipeline, onnx_bytes, held_out_split(seed).x_test), ""


def _parity_tags(parity: Parity | None, error: str) -> dict[str, str]:
    if parity is None:
        figures = {"parity": "failed", "error": error}
    else:
        figures = {"parity": "ok" if parity.acceptable() else "failed", "rows": str(parity.rows),
                   "verdicts_differing": str(parity.verdicts_differing),
                   "share_differing": f"{parity.share_differing:.6f}",
                   "max_probability_gap": f"{parity.max_probability_gap:.3e}",
                   "examples_agree": str(parity.examples_agree).lower()}
    return {ONNX_TAG_PREFIX + name: value for name, value in figures.items()}


def approve(version: int, by: str | None = None, path: Path | None = None) -> Approval:
    """Approve a registered version as `by` (default: you): record it, export it to ONNX, check the parity, and
    store the export for the edge if it is acceptable. `path`: the served-model file whose `onnx/` keeps the
    exports (default MODEL_PATH; MODEL_ONNX_DIR overrides)."""
    record = version_record(version)
    approved_by, approved_at = _who(by), utc_now()
    pipeline = load_version(version)
    onnx_bytes, parity, error = _export(pipeline, int(record.params.get("seed", DEFAULT_SEED)))
    # The decision last: a version is approved only once its parity is recorded.
    set_version_tags(version, {**_parity_tags(parity, error), "approved_by": approved_by,
                               "approved_at": approved_at, APPROVAL_TAG: APPROVED})
    directory = artifacts_dir(path)
    artifact = None
    if parity is not None and parity.acceptable():
        meta = {"run_id": record.run_id, "params": record.params, "metrics": record.metrics,
                "approved_by": approved_by, "approved_at": approved_at, "parity": asdict(parity)}
        artifact = store_artifact(version, onnx_bytes, meta, directory)
    else:
        remove_artifact(version, directory)
    return Approval(version, approved_by, approved_at, parity, error, artifact)


def reject(version: int, by: str | None = None, reason: str = "", path: Path | None = None) -> Rejection:
    """Reject a registered version as `by` (default: you), withdrawing any approval and its edge artifact. `path`:
    the served-model file (default MODEL_PATH), whose `onnx/` keeps the exports."""
    record = version_record(version)
    rejected_by, rejected_at = _who(by), utc_now()
    directory = artifacts_dir(path)
    had_artifact = find_artifact(version, directory) is not None
    remove_artifact(version, directory)  # first: the edge never gets a version recorded as rejected
    set_version_tags(version, {"rejected_by": rejected_by, "rejected_at": rejected_at,
                               "rejected_reason": reason.strip(), APPROVAL_TAG: REJECTED})
    return Rejection(version, rejected_by, rejected_at, reason.strip(), record.status, had_artifact,
                     _is_served(record, path))


def _is_served(record: VersionRecord, path: Path | None) -> bool:
    """Whether the served-model file (default MODEL_PATH) holds this version (same number, same run)."""
    try:
        info = load_served_model(path)[1]
    except FileNotFoundError:
        return False
    return (info.version, info.run_id) == (record.version, record.run_id)


def approve_and_promote(version: int, by: str | None = None, path: Path | None = None) -> tuple[Approval, ModelInfo]:
    """Approve a version and serve it (`python -m model.train --promote`, `python -m model.experiments
    --promote-best`)."""
    approval = approve(version, by, path)
    return approval, promote(version, path)
