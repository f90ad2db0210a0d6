"""The streaming job's per-partition work (streaming/scoring.py) and the model client it scores with
(model/client.py) against the stack's real model server."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from contract import SENSOR_FIELDS, format_feature_string
from model.client import ModelUnavailable, predict, score_batch, score_batch_json, score_each, score_or_refuse, session
from model.data import load_history
from model.registry import load_served_model
from streaming.scoring import check_and_score

pytestmark = pytest.mark.stack


def readings(n: int) -> tuple[list[bytes], np.ndarray]:
    features = load_history().head(n)[list(SENSOR_FIELDS)].to_numpy(dtype=np.float64)
    payloads = [json.dumps({"sensor_id": i, "sensor_ts": 1_700_000_000_000_000 + i,
                            **{f"sensor_{k}": float(v) for k, v in enumerate(row)}}).encode()
                for i, row in enumerate(features)]
    return payloads, features


@pytest.fixture()
def model_server(local_stack, secrets):
    return f"http://{local_stack.cfg.host}:{local_stack.cfg.model_port}", secrets["MODEL_ACCESS_KEY"]


@pytest.mark.parametrize("scoring", ["batch", "per-record"])
def test_both_scorings_give_the_model_verdicts_and_dead_letter_the_rest(model_server, served_model_file, scoring):
    url, key = model_server
    payloads, features = readings(200)
    bad = b'{"sensor_id": 7, "sensor_ts": 1700000000000000, "sensor_0": "hot"}'
    values = [*payloads[:100], bad, *payloads[100:]]
    batch = pd.DataFrame({"value": values, "partition": 0, "offset": range(len(values))})

    (out,) = list(check_and_score(iter([batch]), url, key, scoring))

    scored = out[out["kind"] == "scored"]
    pipeline, info = load_served_model(served_model_file)
    expected = pipeline.predict(features)
    assert scored["sensor_id"].tolist() == list(range(200))
    assert scored["is_healthy"].tolist() == expected.astype(int).tolist()
    assert set(scored["model_version"]) == {info.version}
    assert str(scored["sensor_ts"].iloc[0]) == "2023-11-14 22:13:20"
    dead = out[out["kind"] == "dead"]
    assert dead["value"].tolist() == [bad]
    assert dead["reason"].tolist() == ["sensor_1: missing"]


@pytest.mark.parametrize("score", [score_batch, score_batch_json, score_each])
def test_every_scorer_names_the_served_models_version(model_server, served_model_file, score):
    url, key = model_server
    _, features = readings(5)
    pipeline, info = load_served_model(served_model_file)
    scored = score(features, url, key)
    assert scored.verdicts.tolist() == pipeline.predict(features).tolist()
    assert scored.model_version == info.version
    assert predict(format_feature_string(features[0]), url, key) == (scored.verdicts[0], info.version)


def test_a_wrong_key_fails_the_batch_instead_of_skipping_it(model_server):
    url, _ = model_server
    with pytest.raises(ModelUnavailable, match="HTTP 401"):
        score_batch(np.zeros((3, 12)), url, "not-the-key", attempts=2)


def test_a_row_the_model_server_refuses_costs_only_itself_its_verdict(model_server, served_model_file):
    url, key = model_server
    _, features = readings(8)
    features[5, 3] = 1e39  # beyond float32: the server refuses the row (HTTP 400); the contract never lets it by
    with session() as http:
        scored, refused = score_or_refuse(score_batch, features, model_url=url, access_key=key, session=http)
    assert list(refused) == [5] and "refused the row" in refused[5]
    assert set(scored.verdicts[[0, 1, 2, 3, 4, 6, 7]]) <= {0, 1}
    version = load_served_model(served_model_file)[1].version
    assert scored.model_versions.tolist() == [version] * 5 + [-1] + [version] * 2
