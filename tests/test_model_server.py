"""Lab 8: the model server, through Flask's test client and once through the real WSGI server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

from contract import FEATURES
from model.registry import load_served_model, promote
from model.server import create_app
from model.train import held_out_split, train
from model.wire import ARROW_STREAM, ipc_to_results, rows_to_ipc
from stack.probes import http_ok, wait_until
from stack.secrets import read_env_file
from tests.conftest import free_ports

KEY = "test-key-" + "x" * 24
AUTH = {"Authorization": f"Bearer {KEY}"}
HEALTHY_EXAMPLE = "0, 65, 0, 137, 21.95, 83, 19.42, 111, 9.4, 6, 3.43, 4"
FAILING_EXAMPLE = "0, 95, 0, 88, 26.62, 75, 21.05, 115, 8.65, 5, 3.32, 3"


@pytest.fixture()
def model_file(served_model_file, tmp_path):
    path = tmp_path / "iot_model.joblib"
    shutil.copy(served_model_file, path)
    return path


@pytest.fixture()
def client(model_file):
    app = create_app({"MODEL_ACCESS_KEY": KEY, "MODEL_PATH": str(model_file), "MAX_CONTENT_LENGTH": 2_000_000})
    return app.test_client()


@pytest.mark.parametrize("feature, expected", [(HEALTHY_EXAMPLE, 1), (FAILING_EXAMPLE, 0)])
def test_workshop_examples(client, feature, expected):
    response = client.post("/predict", json={"feature": feature}, headers=AUTH)
    assert response.status_code == 200
    assert response.json == {"result": expected}


@pytest.mark.parametrize("body, message", [
    ({"feature": "0, 65, 0"}, "must have 12 values"),
    ({"feature": HEALTHY_EXAMPLE.replace("137", "abc")}, "sensor_3: 'abc' is not a number"),
    ({"feature": HEALTHY_EXAMPLE.replace("21.95", "NaN")}, "sensor_4: 'NaN' is not a finite number"),
    ({"feature": HEALTHY_EXAMPLE.replace("111", "inf")}, "sensor_7: 'inf' is not a finite number"),
    ({"feature": [0, 65]}, "'feature' must be a string"),
    ({"features": HEALTHY_EXAMPLE}, "missing 'feature'"),
    ([HEALTHY_EXAMPLE], "body must be a JSON object"),
])
def test_bad_single_input_is_a_400_naming_the_problem(client, body, message):
    response = client.post("/predict", json=body, headers=AUTH)
    assert response.status_code == 400
    assert message in response.json["error"]


@pytest.mark.parametrize("data, message", [(b"", "empty body"), (b"{not json", "body is not JSON")])
def test_empty_or_non_json_body_is_a_400(client, data, message):
    response = client.post("/predict", data=data, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 400
    assert message in response.json["error"]


def test_oversized_body_is_refused_with_json(client):
    rows = [[1.0] * 12] * 100_000  # about 6 MB of JSON against a 2 MB limit
    response = client.post("/predict/batch", json={"rows": rows}, headers=AUTH)
    assert response.status_code == 413
    assert "error" in response.json


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"},
                                     {"Authorization": KEY}])
def test_scoring_needs_the_key(client, headers):
    for path, body in (("/predict", {"feature": HEALTHY_EXAMPLE}), ("/predict/batch", {"rows": [[1] * 12]}),
                       ("/model/reload", {})):
        response = client.post(path, json=body, headers=headers)
        assert response.status_code == 401, path
        assert "access key" in response.json["error"]


def test_health_and_model_need_no_key(client, workshop_run):
    assert client.get("/health").json == {"status": "ok", "model_version": 1}
    info = client.get("/model").json
    assert info["run_id"] == workshop_run.run_id
    assert info["features"] == list(FEATURES)
    assert info["params"]["num_trees"] == "20" and set(info["metrics"]) >= {"auroc", "ap"}


def test_batch_json_and_arrow_equal_in_process_predictions(client, model_file):
    rows = held_out_split().x_test[:5000]
    expected = load_served_model(model_file)[0].predict(rows)
    as_json = client.post("/predict/batch", json={"rows": rows.tolist()}, headers=AUTH)
    assert as_json.status_code == 200
    assert as_json.json["results"] == expected.tolist()
    as_arrow = client.post("/predict/batch", data=rows_to_ipc(rows), headers={**AUTH, "Content-Type": ARROW_STREAM})
    assert as_arrow.status_code == 200 and as_arrow.mimetype == ARROW_STREAM
    results = ipc_to_results(as_arrow.data)
    assert results.tolist() == expected.tolist()


@pytest.mark.parametrize("body, message", [
    ({"rows": []}, "non-empty list"),
    ({"rows": [[1] * 12, [1] * 11]}, "row 1: a row must have 12 values"),
    ({"rows": [[1] * 12, [1] * 11 + ["x"]]}, "row 1: sensor_11: 'x' is not a number"),
    ({"rows": [[1] * 12, [1] * 5 + [float("nan")] + [1] * 6]}, "row 1, sensor_5: nan is not a finite number"),
])
def test_bad_batch_rows_are_a_400_naming_row_and_field(client, body, message):
    headers = {**AUTH, "Content-Type": "application/json"}
    response = client.post("/predict/batch", data=json.dumps(body), headers=headers)
    assert response.status_code == 400
    assert message in response.json["error"]


def test_bad_arrow_batches_are_a_400(client):
    rows = np.ones((3, 12))
    headers = {**AUTH, "Content-Type": ARROW_STREAM}
    missing = client.post("/predict/batch", data=rows_to_ipc(rows[:, :11], FEATURES[:11]), headers=headers)
    assert missing.status_code == 400 and "sensor_11" in missing.json["error"]
    garbage = client.post("/predict/batch", data=b"not arrow at all", headers=headers)
    assert garbage.status_code == 400 and "not an Arrow IPC stream" in garbage.json["error"]
    rows[2, 3] = np.inf
    infinite = client.post("/predict/batch", data=rows_to_ipc(rows), headers=headers)
    assert infinite.status_code == 400 and "row 2, sensor_3" in infinite.json["error"]


def test_workshop_cdsw_route_and_shape(client):
    ok = client.post("/api/altus-ds-1/models/call-model",
                     json={"accessKey": KEY, "request": {"feature": FAILING_EXAMPLE}})
    assert ok.status_code == 200
    assert ok.json == {"success": True, "response": {"result": 0}}
    wrong_key = client.post("/api/altus-ds-1/models/call-model",
                            json={"accessKey": "nope", "request": {"feature": FAILING_EXAMPLE}})
    assert wrong_key.status_code == 401 and wrong_key.json["success"] is False
    bad = client.post("/api/altus-ds-1/models/call-model", json={"accessKey": KEY, "request": {"feature": "1, 2"}})
    assert bad.status_code == 400 and "12 values" in bad.json["message"]


def test_reload_swaps_the_model_while_requests_keep_being_answered(client, model_file):
    other = train(5, 4)
    errors: list[str] = []
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            response = client.post("/predict", json={"feature": HEALTHY_EXAMPLE}, headers=AUTH)
            if response.status_code != 200 or response.json["result"] not in (0, 1):
                errors.append(f"{response.status_code} {response.data[:200]!r}")

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        promote(other.run_id, model_file)
        reloaded = client.post("/model/reload", headers=AUTH)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert reloaded.status_code == 200
    assert reloaded.json["model"]["run_id"] == other.run_id
    assert client.get("/model").json["version"] == 2
    assert client.get("/model").json["params"]["num_trees"] == "5"
    assert errors == []


def test_real_wsgi_server_on_a_free_port(served_model_file):
    port = free_ports(1)[0]
    env = {**os.environ, "MODEL_ACCESS_KEY": KEY, "MODEL_PATH": str(served_model_file)}
    server = subprocess.Popen([sys.executable, "-m", "model", "serve", "--port", str(port)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{base}/health"), 60, "model server",
                   abort=lambda: "exited" if server.poll() is not None else None)

        def post(feature: str, headers: dict) -> tuple[int, dict]:
            req = urllib.request.Request(f"{base}/predict", data=json.dumps({"feature": feature}).encode(),
                                         headers={"Content-Type": "application/json", **headers}, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=10) as response:
                    return response.status, json.load(response)
            except urllib.error.HTTPError as exc:
                return exc.code, json.load(exc)

        assert post(HEALTHY_EXAMPLE, AUTH) == (200, {"result": 1})
        assert post(FAILING_EXAMPLE, AUTH) == (200, {"result": 0})
        status, body = post(FAILING_EXAMPLE, {})
        assert status == 401 and "access key" in body["error"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_server_refuses_to_start_without_a_key(served_model_file):
    with pytest.raises(RuntimeError, match="MODEL_ACCESS_KEY"):
        create_app({"MODEL_ACCESS_KEY": "", "MODEL_PATH": str(served_model_file)})


@pytest.mark.stack
def test_make_up_serves_the_model_at_model_url_with_the_generated_key(local_stack):
    settings = read_env_file(local_stack.cfg.connection_file)
    req = urllib.request.Request(f"{settings['MODEL_URL']}/predict", method="POST",
                                 data=json.dumps({"feature": FAILING_EXAMPLE}).encode(),
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {settings['MODEL_ACCESS_KEY']}"})
    with urllib.request.urlopen(req, timeout=10) as response:
        assert json.load(response) == {"result": 0}
