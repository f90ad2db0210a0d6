"""What an edge agent keeps on disk between runs: `<state-dir>/state.json`, always replaced atomically.

    {"status": {...the last job status it reported...}, "model_version": 3, "model_file": "model-v3.onnx",
     "model_sha256": "<64 hex>", "succeeded": {"v3-5f1c2a9e": {...its SUCCEEDED status...}, ...}}

`status` is what the agent publishes again when it starts (IDLE if it never had a job); `model_*` the model it
loads first, so that it scores at once; `succeeded` the last `MAX_SUCCEEDED` jobs that succeeded, which it never
runs again (a redelivered retained job is only re-reported).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from runtime.files import write_atomically

STATE_FILE = "state.json"
MAX_SUCCEEDED = 50  # job ids remembered as done; older ones drop out (job ids are unique per rollout)


class StateError(ValueError):
    """state.json exists but cannot be used; the message names the file and the problem."""


@dataclass
class AgentState:
    status: dict | None = None
    model_version: int | None = None
    model_file: str | None = None
    model_sha256: str | None = None
    succeeded: dict[str, dict] = field(default_factory=dict)

    def remember_success(self, status: dict) -> None:
        """Record a SUCCEEDED status, forgetting the oldest beyond MAX_SUCCEEDED."""
        self.succeeded[status["job_id"]] = status
        while len(self.succeeded) > MAX_SUCCEEDED:
            del self.succeeded[next(iter(self.succeeded))]


def load_state(state_dir: Path) -> AgentState:
    """The saved state, or a fresh one if there is none; StateError if the file is there but unusable."""
    path = state_dir / STATE_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return AgentState()
    except (OSError, ValueError) as exc:
        raise StateError(f"{path}: unreadable ({exc})") from None
    if not isinstance(raw, dict):
        raise StateError(f"{path}: not a JSON object but {type(raw).__name__}")
    try:
        state = AgentState(**{name: raw[name] for name in AgentState.__dataclass_fields__ if name in raw})
    except TypeError as exc:
        raise StateError(f"{path}: {exc}") from None
    if not isinstance(state.succeeded, dict) or not (state.status is None or isinstance(state.status, dict)):
        raise StateError(f"{path}: 'succeeded' must be an object and 'status' an object or null")
    return state


def save_state(state_dir: Path, state: AgentState) -> None:
    """Replace state.json atomically and durably (a crash leaves the old file or the new one, never half)."""
    write_atomically(state_dir / STATE_FILE, json.dumps(asdict(state), indent=1).encode())
