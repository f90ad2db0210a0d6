"""The served model in memory: loaded once, scored without locks, swapped atomically on reload."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract import N_SENSORS
from model.registry import ModelInfo, load_served_model

# Batches of at least this many rows are split by rows across one thread per core. The trees' traversal releases
# the GIL, and each row is still scored by the same sequential sum over trees, so answers equal scikit-learn's.
PARALLEL_MIN_ROWS = 4096


@dataclass(frozen=True)
class LoadedModel:
    pipeline: object
    info: ModelInfo


class ModelHolder:
    """Holds the current model. Readers take one reference and use it for the whole request, so a reload
    (which builds the new model first and then replaces the reference in one assignment) is never seen half-done.
    `on_load` is told the info of each model swapped in, the first one too (the server publishes it as metrics)."""

    def __init__(self, path: Path, on_load: Callable[[ModelInfo], None] | None = None):
        self.path = path
        self._on_load = on_load or (lambda info: None)
        self._current = self._load()
        self._on_load(self._current.info)
        self._reload_lock = threading.Lock()
        self._workers = os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="score")

    def _load(self) -> LoadedModel:
        pipeline, info = load_served_model(self.path)
        # One request scores on one core: joblib's worker pool costs more than it saves at serving batch sizes,
        # and the WSGI server already runs requests in parallel.
        pipeline.set_params(forest__n_jobs=1)
        return LoadedModel(pipeline, info)

    @property
    def current(self) -> LoadedModel:
        return self._current

    def reload(self) -> ModelInfo:
        with self._reload_lock:
            loaded = self._load()
            self._current = loaded
            self._on_load(loaded.info)
        return loaded.info

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Verdicts (1 healthy, 0 likely to break) for an (n, 12) float64 array."""
        return self.score(rows)[0]

    def score(self, rows: np.ndarray) -> tuple[np.ndarray, int]:
        """Verdicts for an (n, 12) float64 array, and the version of the model that gave them all: one model for
        the whole request, even if a reload happens meanwhile."""
        if rows.ndim != 2 or rows.shape[1] != N_SENSORS:
            raise ValueError(f"expected an (n, {N_SENSORS}) array, got shape {rows.shape}")
        model = self._current
        if len(rows) < PARALLEL_MIN_ROWS or self._workers == 1:
            return model.pipeline.predict(rows).astype(np.int8), model.info.version
        chunks = np.array_split(rows, self._workers)
        verdicts = np.concatenate(list(self._pool.map(model.pipeline.predict, chunks))).astype(np.int8)
        return verdicts, model.info.version
