"""Edge scoring: the ONNX Runtime session an agent scores with, and what a reading becomes (a verdict).

    model = load_model(version, onnx_bytes, sha256)      # loads and checks the workshop examples, else BadModel
    scorer = Scorer("edge-1"); scorer.swap(model)
    topic, payload = scorer.score(reading_bytes)         # ("verdicts/7", verdict JSON); InvalidReading if not one

A model is swapped in as one reference assignment: a reading is scored by the model it started with, never by half
of a swap. `score` allocates nothing per reading beyond the parsed reading and the verdict bytes: the input row is
one float32 array reused (readings are scored in one thread, the MQTT network thread).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from contract import (
    AGENT_ID_FIELD,
    ID_FIELD,
    LABEL,
    MODEL_VERSION,
    N_SENSORS,
    SCORED_TS_FIELD,
    SENSOR_FIELDS,
    TS_FIELD,
    clip,
    parse_reading,
    verdict_json,
)
from model.edge_model import ONNX_OUTPUTS, examples_agree, onnx_scores, onnx_session
from runtime.settings import MQTT_VERDICTS_PREFIX


class BadModel(Exception):
    """An artifact that must not score: it does not load, or it gets the workshop examples wrong."""


@dataclass(frozen=True)
class EdgeModel:
    """One loaded model version: its ONNX Runtime session and what identifies it."""

    version: int
    sha256: str
    session: object  # onnxruntime.InferenceSession
    input_name: str


def load_model(version: int, onnx_bytes: bytes, sha256: str) -> EdgeModel:
    """A session for `onnx_bytes`, once it has shown it gives the workshop examples their verdicts; else BadModel
    saying why. The running model is not touched: the caller swaps only what this returns."""
    try:
        session = onnx_session(onnx_bytes)
        inputs = session.get_inputs()
        outputs = {output.name for output in session.get_outputs()}
    except Exception as exc:  # noqa: BLE001 - whatever ONNX Runtime says, it is not a model we can use
        raise BadModel(f"not a loadable ONNX model: {clip(str(exc).strip(), 300)}") from None
    if len(inputs) != 1 or inputs[0].shape[-1] != N_SENSORS or not set(ONNX_OUTPUTS) <= outputs:
        shape = [(i.name, i.shape) for i in inputs]
        raise BadModel(f"not the sensor model: inputs {clip(str(shape))}, outputs {sorted(outputs)}; expected one "
                       f"input of {N_SENSORS} features and outputs {', '.join(ONNX_OUTPUTS)}")
    try:
        agree = examples_agree(lambda rows: onnx_scores(session, rows)[0])
    except Exception as exc:  # noqa: BLE001 - a model that cannot score the examples cannot score readings
        raise BadModel(f"the model fails on the workshop examples: {clip(str(exc).strip(), 300)}") from None
    if not agree:
        raise BadModel("the model gives the workshop examples the wrong verdicts (contract.WORKSHOP_EXAMPLES)")
    return EdgeModel(version, sha256, session, inputs[0].name)


class Scorer:
    """The current model of one agent, and the scoring of one reading with it."""

    def __init__(self, agent_id: str):
        self.agent_id = agent_id
        self._model: EdgeModel | None = None
        self._row = np.zeros((1, N_SENSORS), dtype=np.float32)
        self._feed: dict[str, np.ndarray] = {}
        self._outputs = [ONNX_OUTPUTS[0]]  # the label only: the probabilities are not published

    @property
    def model(self) -> EdgeModel | None:
        return self._model

    def swap(self, model: EdgeModel) -> None:
        """Score with `model` from the next reading on (one assignment: readers see the old or the new one)."""
        self._model = model

    def score(self, payload: object) -> tuple[str, bytes] | None:
        """(MQTT topic, verdict JSON) for one reading, or None while there is no model. Raises InvalidReading
        for a payload that is not a reading (contract.parse_reading, total); ONNX Runtime errors propagate."""
        reading = parse_reading(payload)
        model = self._model
        if model is None:
            return None
        row = self._row
        for index, name in enumerate(SENSOR_FIELDS):
            row[0, index] = reading[name]
        feed = self._feed
        feed.clear()
        feed[model.input_name] = row
        label = model.session.run(self._outputs, feed)[0]
        verdict = {ID_FIELD: reading[ID_FIELD], TS_FIELD: reading[TS_FIELD], LABEL: int(label[0]),
                   MODEL_VERSION: model.version, AGENT_ID_FIELD: self.agent_id,
                   SCORED_TS_FIELD: time.time_ns() // 1000}
        return f"{MQTT_VERDICTS_PREFIX}/{reading[ID_FIELD]}", verdict_json(verdict)
