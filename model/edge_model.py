"""The model as the edge runs it: an approved version exported to ONNX (skl2onnx), checked against scikit-learn,
and stored beside the served model for the model server to hand out (`GET /model/versions/<N>/onnx`).

    onnx_bytes = to_onnx(pipeline)
    parity = check_parity(pipeline, onnx_bytes, split.x_test)      # rows whose verdict differs, largest gap
    artifact = store_artifact(version, onnx_bytes, {"parity": asdict(parity), ...})
    find_artifact(version)                                          # Artifact | None
    stored_versions()                                               # [1, 3, ...]: the versions with one

Artifacts live in `MODEL_ONNX_DIR`, default `onnx/` beside the served model file: `v<N>.onnx` and `v<N>.json`
(its sha256, size and whatever the registry recorded: parity, who approved it and when). Both are written
atomically, the metadata last, so a version is there only once both are whole.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract import N_SENSORS, WORKSHOP_EXAMPLES
from runtime.files import write_atomically
from runtime.settings import served_model_file

ONNX_INPUT = "input"
# The ONNX graph returns the label and, per class, its probability (no ZipMap: plain float32 arrays).
ONNX_OUTPUTS = ("label", "probabilities")
# A version whose ONNX export gives a different verdict than scikit-learn on more than this share of the
# held-out rows is not rolled out (an earlier float32 export differed on 0.2%); the workshop examples must agree.
MAX_SHARE_DIFFERING = 0.005


@dataclass(frozen=True)
class Parity:
    """How the ONNX export scores against scikit-learn on the same rows."""

    rows: int
    verdicts_differing: int
    share_differing: float
    max_probability_gap: float
    examples_agree: bool

    def acceptable(self, max_share: float = MAX_SHARE_DIFFERING) -> bool:
        return self.examples_agree and self.share_differing <= max_share

    def summary(self) -> str:
        examples = "agree" if self.examples_agree else "DISAGREE"
        return (f"{self.verdicts_differing:,} of {self.rows:,} verdicts differ ({self.share_differing:.3%}), "
                f"largest probability gap {self.max_probability_gap:.2e}, workshop examples {examples}")


@dataclass(frozen=True)
class Artifact:
    version: int
    path: Path
    sha256: str
    size_bytes: int
    meta: dict


def to_onnx(pipeline) -> bytes:
    """The fitted pipeline as an ONNX model taking float32 rows of the twelve sensors."""
    from skl2onnx import to_onnx as convert  # heavy import, only where a model is exported
    from skl2onnx.common.data_types import FloatTensorType

    model = convert(pipeline, initial_types=[(ONNX_INPUT, FloatTensorType([None, N_SENSORS]))],
                    options={"zipmap": False})
    return model.SerializeToString()


def onnx_session(onnx_bytes: bytes):
    """An ONNX Runtime session on one thread (the edge scores one reading at a time)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def onnx_scores(session, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(verdicts, class probabilities) of an (n, 12) array, scored by an ONNX Runtime session."""
    name = session.get_inputs()[0].name
    labels, probabilities = session.run(list(ONNX_OUTPUTS), {name: np.asarray(rows, dtype=np.float32)})
    return labels.astype(np.int8), probabilities


def examples_agree(predict) -> bool:
    """Whether `predict` (an (n, 12) array -> verdicts) gives the workshop examples their verdicts."""
    rows = np.array([features for features, _ in WORKSHOP_EXAMPLES], dtype=np.float64)
    expected = [verdict for _, verdict in WORKSHOP_EXAMPLES]
    return [int(v) for v in predict(rows)] == expected


def check_parity(pipeline, onnx_bytes: bytes, rows: np.ndarray) -> Parity:
    """Score `rows` both ways; count the verdicts that differ and the largest gap between class probabilities."""
    session = onnx_session(onnx_bytes)
    labels, probabilities = onnx_scores(session, rows)
    expected = pipeline.predict(rows)
    gap = float(np.max(np.abs(probabilities - pipeline.predict_proba(rows)))) if len(rows) else 0.0
    differing = int(np.count_nonzero(labels != expected))
    return Parity(rows=len(rows), verdicts_differing=differing, share_differing=differing / max(len(rows), 1),
                  max_probability_gap=gap, examples_agree=examples_agree(lambda x: onnx_scores(session, x)[0]))


def artifacts_dir(model_file: Path | None = None) -> Path:
    """`MODEL_ONNX_DIR`, or `onnx/` beside the served model file (`model_file`, default MODEL_PATH's)."""
    configured = os.environ.get("MODEL_ONNX_DIR")
    return Path(configured) if configured else (model_file or served_model_file()).parent / "onnx"


def _paths(version: int, directory: Path | None) -> tuple[Path, Path]:
    directory = directory or artifacts_dir()
    return directory / f"v{version}.onnx", directory / f"v{version}.json"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def store_artifact(version: int, onnx_bytes: bytes, meta: dict, directory: Path | None = None) -> Artifact:
    """Keep version `version`'s ONNX model and its metadata (sha256 and size added) for the model server."""
    model_file, meta_file = _paths(version, directory)
    model_file.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(model_file, onnx_bytes)
    full = {**meta, "version": version, "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
            "size_bytes": len(onnx_bytes)}
    write_atomically(meta_file, json.dumps(full, indent=2).encode())
    return Artifact(version, model_file, full["sha256"], full["size_bytes"], full)


def find_artifact(version: int, directory: Path | None = None) -> Artifact | None:
    """Version `version`'s stored artifact, or None if it has none (never exported, or withdrawn)."""
    model_file, meta_file = _paths(version, directory)
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError):
        return None
    if not model_file.exists():
        return None
    return Artifact(version, model_file, meta["sha256"], meta["size_bytes"], meta)


def stored_versions(directory: Path | None = None) -> list[int]:
    """The versions that have a whole artifact (model and metadata) in `directory` (default artifacts_dir()),
    oldest first."""
    directory = directory or artifacts_dir()
    found = []
    for meta_file in directory.glob("v*.json"):
        number = meta_file.stem[1:]
        if number.isascii() and number.isdigit() and find_artifact(int(number), directory) is not None:
            found.append(int(number))
    return sorted(found)


def remove_artifact(version: int, directory: Path | None = None) -> None:
    """Withdraw a version's artifact (its metadata first: without it the version is gone)."""
    model_file, meta_file = _paths(version, directory)
    meta_file.unlink(missing_ok=True)
    model_file.unlink(missing_ok=True)
