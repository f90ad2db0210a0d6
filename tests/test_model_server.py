"""Lab 8: the model server, through Flask's test client and once through the real WSGI server."""

from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pytest

from contract import FEATURES
from model import wire
from model.approval import approve, approve_and_promote
from model.registry import load_served_model, promote
from model.server import create_app
from model.train import held_out_split, train
from model.wire import ARROW_STREAM, ipc_to_results, rows_to_ipc
from runtime.settings import read_env_file
from runtime.waiting import http_ok, wait_until
from tests.fixtures.model_server import AUTH, CDSW, FAILING_EXAMPLE, HEALTHY_EXAMPLE, KEY

JSON_AUTH = {**AUTH, "Content-Type": "application/json"}
ARROW_AUTH = {**AUTH, "Content-Type": ARROW_STREAM}


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
def test_workshop_examples(client, workshop_run, feature, expected):
    response = client.post("/predict", json={"feature": feature}, headers=AUTH)
    assert response.status_code == 200
    assert response.json == {"result": expected, "model_version": workshop_run.version}


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
    assert client.get("/health").json == {"status": "ok", "model_version": workshop_run.version}
    info = client.get("/model").json
    assert (info["version"], info["run_id"]) == (workshop_run.version, workshop_run.run_id)
    assert info["approved_by"] and info["approved_at"] <= info["promoted_at"]
    assert info["features"] == list(FEATURES)
    assert info["params"]["num_trees"] == "20" and set(info["metrics"]) >= {"auroc", "ap"}


def test_batch_json_and_arrow_equal_in_process_predictions(client, model_file, workshop_run):
    rows = held_out_split().x_test[:5000]
    expected = load_served_model(model_file)[0].predict(rows)
    as_json = client.post("/predict/batch", json={"rows": rows.tolist()}, headers=AUTH)
    assert as_json.status_code == 200
    assert as_json.json["results"] == expected.tolist() and as_json.json["model_version"] == workshop_run.version
    as_arrow = client.post("/predict/batch", data=rows_to_ipc(rows), headers={**AUTH, "Content-Type": ARROW_STREAM})
    assert as_arrow.status_code == 200 and as_arrow.mimetype == ARROW_STREAM
    results, version = ipc_to_results(as_arrow.data)
    assert results.tolist() == expected.tolist() and version == workshop_run.version


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


def test_workshop_cdsw_route_and_shape(client, workshop_run):
    ok = client.post("/api/altus-ds-1/models/call-model",
                     json={"accessKey": KEY, "request": {"feature": FAILING_EXAMPLE}})
    assert ok.status_code == 200
    assert ok.json == {"success": True, "response": {"result": 0, "model_version": workshop_run.version}}
    wrong_key = client.post("/api/altus-ds-1/models/call-model",
                            json={"accessKey": "nope", "request": {"feature": FAILING_EXAMPLE}})
    assert wrong_key.status_code == 401 and wrong_key.json["success"] is False
    bad = client.post("/api/altus-ds-1/models/call-model", json={"accessKey": KEY, "request": {"feature": "1, 2"}})
    assert bad.status_code == 400 and "12 values" in bad.json["message"]


def ipc(table: pa.Table, compression: str | None = None) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def sensor_table(rows: int, extra: dict | None = None) -> pa.Table:
    return pa.table({**{name: np.full(rows, i, dtype=np.float64) for i, name in enumerate(FEATURES)}, **(extra or {})})


class Tripwire(io.BytesIO):
    """A request body that fails the request if anything reads it."""

    def read(self, size=-1):
        raise AssertionError("the body was read")

    readinto = readline = read1 = read


class CountingBody(io.BytesIO):
    """A request body that counts how much of it was read."""

    consumed = 0

    def readinto(self, buffer):
        count = super().readinto(buffer)
        self.consumed += count
        return count

    def read(self, size=-1):
        data = super().read(size)
        self.consumed += len(data)
        return data


@pytest.mark.parametrize("path, content_type", [("/predict", "application/json"), ("/predict/batch", ARROW_STREAM),
                                                ("/predict/batch", "application/json"), ("/model/reload", None)])
def test_the_key_is_checked_before_the_body_is_read(client, path, content_type):
    response = client.post(path, input_stream=Tripwire(b"x" * 1000), content_type=content_type)
    assert response.status_code == 401 and "access key" in response.json["error"]


def test_cdsw_route_checks_a_bearer_header_before_the_body_and_accepts_it_as_the_key(client, workshop_run):
    wrong = client.post(CDSW, input_stream=Tripwire(b"{}"), content_type="application/json",
                        headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json["success"] is False
    keyed = client.post(CDSW, json={"request": {"feature": HEALTHY_EXAMPLE}}, headers=AUTH)
    assert keyed.status_code == 200
    assert keyed.json == {"success": True, "response": {"result": 1, "model_version": workshop_run.version}}


def test_cdsw_route_refuses_a_1_mib_body_without_reading_it(client):
    big = json.dumps({"accessKey": KEY, "request": {"feature": HEALTHY_EXAMPLE}, "pad": "x" * (1 << 20)}).encode()
    declared = client.post(CDSW, input_stream=Tripwire(big), content_type="application/json")
    assert declared.status_code == 413 and declared.json["success"] is False
    assert "16,384 bytes" in declared.json["message"]
    chunked = CountingBody(big)  # no Content-Length: read no further than the limit
    response = client.post(CDSW, input_stream=chunked, content_type="application/json",
                           headers={"Transfer-Encoding": "chunked"}, environ_overrides={"wsgi.input_terminated": True})
    assert response.status_code == 413 and "16,384 bytes" in response.json["message"]
    assert chunked.consumed <= 2 * 16_384


@pytest.mark.parametrize("path, data", [("/predict", b"[" * 100_000), ("/predict/batch", b'{"rows": ' + b"[" * 100_000),
                                        ("/predict", b'{"feature": ' + b'{"a": ' * 50_000)])
def test_a_deeply_nested_body_is_a_400(client, path, data):
    response = client.post(path, data=data, headers=JSON_AUTH)
    assert response.status_code == 400 and "nested deeper than 32 levels" in response.json["error"]


def test_a_deeply_nested_cdsw_body_is_a_400_in_the_workshop_shape(client):
    body = b'{"accessKey": "k", "request": ' + b"[" * 10_000
    response = client.post(CDSW, data=body, content_type="application/json")
    assert response.status_code == 400 and "nested deeper" in response.json["message"]


@pytest.mark.parametrize("body, message", [
    ({"rows": [[1] * 12, [1] * 3 + [10**400] + [1] * 8]}, "row 1: sensor_3: an integer of 401 digits is not a finite"),
    ({"rows": [[1] * 12, [1] * 3 + [1e39] + [1] * 8]}, "row 1, sensor_3: 1e+39 is beyond the model's range"),
    ({"rows": [[1] * 12, [1] * 4 + [True] + [1] * 7]}, "row 1: sensor_4: true is not a number"),
    ({"rows": [[1] * 12, [1] * 4 + [None] + [1] * 7]}, "row 1: sensor_4: null is not a number"),
    ({"rows": [[1] * 12, [1] * 4 + ["1.5"] + [1] * 7]}, "row 1: sensor_4: '1.5' is not a number"),
    ({"rows": [[1] * 12, {"sensor_0": 1}]}, "row 1: must be a list of 12 numbers, got object"),
    ({"rows": [[1] * 12, [[1] * 12]]}, "row 1: sensor_0: [1, 1, 1"),
    ({"rows": {"0": [1] * 12}}, "'rows' must be a non-empty list"),
    ({"feature": HEALTHY_EXAMPLE.replace("137", "1e300")}, "sensor_3: 1e+300 is beyond the model's range"),
])
def test_values_the_model_cannot_score_are_a_400_naming_row_and_sensor(client, body, message):
    path = "/predict/batch" if "rows" in body else "/predict"
    response = client.post(path, data=json.dumps(body), headers=JSON_AUTH)
    assert response.status_code == 400
    assert message in response.json["error"]


@pytest.mark.parametrize("path, data, message", [
    ("/predict", f'{{"feature": "{HEALTHY_EXAMPLE}", "note": NaN}}', "NaN is not a JSON number"),
    ("/predict/batch", '{"rows": [[1,1,1,1,1,1,1,1,1,1,1,1]], "weights": [Infinity]}', "Infinity is not a JSON number"),
    ("/predict/batch", '{"rows": [[1,1,1,1,1,1,1,1,1,1,1,-Infinity]]}', "row 0, sensor_11: -inf is not a finite"),
    ("/predict/batch", '{"rows": [[1,1,1,1,1,1,1,1,1,1,1,1e999]]}', "row 0, sensor_11: inf is not a finite"),
])
def test_non_finite_numbers_are_a_400_anywhere_in_the_body(client, path, data, message):
    response = client.post(path, data=data, headers=JSON_AUTH)
    assert response.status_code == 400 and message in response.json["error"]


@pytest.mark.parametrize("data, message", [
    (b"\xff\xfe\x00\x00{", "not JSON"),
    (b'{"feature": "\xc3\x28"}', "not valid Unicode text"),
    (b"1" * 5000, "not JSON"),
    (b'"' + b"x" * 1_000_000 + b'"', "body must be a JSON object, got string"),
    (b"null", "body must be a JSON object, got null"),
])
def test_undecodable_or_non_object_json_is_a_400(client, data, message):
    response = client.post("/predict", data=data, headers=JSON_AUTH)
    assert response.status_code == 400 and message in response.json["error"]


def test_a_lone_surrogate_in_the_cdsw_key_is_a_401(client):
    response = client.post(CDSW, data=b'{"accessKey": "\\ud800", "request": {"feature": "1"}}',
                           content_type="application/json")
    assert response.status_code == 401 and response.json["success"] is False


@pytest.mark.parametrize("path, content_type", [("/predict", "text/plain"), ("/predict", ARROW_STREAM),
                                                ("/predict/batch", "application/x-www-form-urlencoded"),
                                                (CDSW, "multipart/form-data; boundary=x")])
def test_a_body_that_is_not_json_by_content_type_is_a_415(client, path, content_type):
    body = json.dumps({"accessKey": KEY, "feature": HEALTHY_EXAMPLE, "request": {"feature": HEALTHY_EXAMPLE},
                       "rows": [[1] * 12]})
    response = client.post(path, data=body, headers={**AUTH, "Content-Type": content_type})
    assert response.status_code == 415
    assert "send application/json" in (response.json.get("error") or response.json["message"])
    untyped = client.post(path, data=body, headers=AUTH)  # no Content-Type at all: taken as JSON
    assert untyped.status_code == 200


@pytest.fixture()
def small_client(model_file):
    app = create_app({"MODEL_ACCESS_KEY": KEY, "MODEL_PATH": str(model_file), "MODEL_MAX_ROWS": 100})
    return app.test_client()


def test_rows_beyond_model_max_rows_are_a_413(small_client):
    at_limit = small_client.post("/predict/batch", json={"rows": [[1] * 12] * 100}, headers=AUTH)
    assert at_limit.status_code == 200
    as_json = small_client.post("/predict/batch", json={"rows": [[1] * 12] * 101}, headers=AUTH)
    assert as_json.status_code == 413 and "MODEL_MAX_ROWS" in as_json.json["error"]
    as_arrow = small_client.post("/predict/batch", data=rows_to_ipc(np.ones((101, 12))), headers=ARROW_AUTH)
    assert as_arrow.status_code == 413 and "MODEL_MAX_ROWS" in as_arrow.json["error"]


def test_arrow_duplicate_columns_are_a_400(client):
    table = pa.Table.from_arrays([pa.array(np.ones(3))] * 13, names=[*FEATURES, "sensor_3"])
    response = client.post("/predict/batch", data=ipc(table), headers=ARROW_AUTH)
    assert response.status_code == 400 and "repeated column name(s) 'sensor_3'" in response.json["error"]
    assert f"send an Arrow IPC stream (Content-Type {ARROW_STREAM})" in response.json["error"]


@pytest.mark.parametrize("extra, message", [
    ({"tag": pa.array(["a", "b", "a"]).dictionary_encode()}, "'tag': dictionary<values=string"),
    ({"tag": pa.array([[1], [2], []])}, "'tag': list<item: int64> is dictionary-encoded or nested"),
    ({"tag": pa.array([{"a": 1}] * 3)}, "'tag': struct<a: int64> is dictionary-encoded or nested"),
    ({"tag": pa.array(["a", "b", "c"], pa.string_view())}, "'tag': Arrow type string_view is not supported"),
    ({"sensor_3": pa.array(["1", "2", "3"])}, "sensor_3: Arrow type string is not an integer or float type"),
])
def test_arrow_columns_of_unsupported_types_are_a_400(client, extra, message):
    columns = {name: np.ones(3) for name in FEATURES} | extra
    response = client.post("/predict/batch", data=ipc(pa.table(columns)), headers=ARROW_AUTH)
    assert response.status_code == 400 and message in response.json["error"]


def test_arrow_streams_of_more_than_max_batches_record_batches_are_a_413(client, monkeypatch):
    monkeypatch.setattr(wire, "MAX_BATCHES", 5)
    five, six = (pa.Table.from_batches(sensor_table(count).to_batches(max_chunksize=1)) for count in (5, 6))
    assert client.post("/predict/batch", data=ipc(five), headers=ARROW_AUTH).status_code == 200
    response = client.post("/predict/batch", data=ipc(six), headers=ARROW_AUTH)
    assert response.status_code == 413 and "more than 5 record batches" in response.json["error"]


def test_arrow_streams_the_server_cannot_take_are_a_400(client):
    v4 = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(metadata_version=pa.ipc.MetadataVersion.V4)
    with pa.ipc.new_stream(v4, sensor_table(2).schema, options=options) as writer:
        writer.write_table(sensor_table(2))
    for body, message in ((v4.getvalue().to_pybytes(), "IPC metadata version V4: send V5"),
                          (ipc(sensor_table(0)), "Arrow stream has no rows"),
                          (ipc(sensor_table(3))[:-20], "not an Arrow IPC stream pyarrow can read")):
        response = client.post("/predict/batch", data=body, headers=ARROW_AUTH)
        assert response.status_code == 400 and message in response.json["error"]


@pytest.mark.parametrize("compression", [None, "zstd", "lz4"])
def test_arrow_extra_flat_columns_are_skipped(client, compression):
    table = sensor_table(3, {"sensor_id": np.arange(3), "note": ["a", "b", None], "none": pa.nulls(3)})
    response = client.post("/predict/batch", data=ipc(table, compression), headers=ARROW_AUTH)
    assert response.status_code == 200 and len(ipc_to_results(response.data)[0]) == 3


def test_a_zstd_arrow_bomb_is_refused_quickly_without_allocating(client):
    zeros = pa.array(np.zeros(50_000_000, dtype=np.int8))  # numpy's memory, not Arrow's pool
    bomb = ipc(pa.table({name: zeros for name in FEATURES}), "zstd")  # 600 MB of values
    del zeros
    assert len(bomb) < 100_000
    pool = pa.default_memory_pool()
    peak = pool.max_memory()
    started = time.monotonic()
    response = client.post("/predict/batch", data=bomb, headers=ARROW_AUTH)
    assert time.monotonic() - started < 2
    assert response.status_code == 413 and "declares at least 50,000,000 rows" in response.json["error"]
    assert pool.max_memory() - peak < 1 << 20 and pa.total_allocated_bytes() < 1 << 20


@pytest.mark.parametrize("before", [None, pa.nulls(100), pa.array([True] * 100), pa.array(["v"] * 100),
                                    pa.array([b"x"] * 100, pa.large_binary()), pa.array(range(100), pa.date32()),
                                    pa.array(range(100), pa.timestamp("ms")), pa.array([b"abc"] * 100, pa.binary(3)),
                                    pa.array([Decimal(1)] * 100, pa.decimal128(10, 2))])
def test_a_compressed_buffer_declaring_more_than_its_rows_need_is_a_400(client, before):
    table = pa.table({**({} if before is None else {"before": before}), **sensor_table(100).to_pydict()})
    body = bytearray(ipc(table, "zstd"))
    at = body.rindex(struct.pack("<q", 800))  # the decompressed length of sensor_11's 100 float64, the last buffer
    body[at:at + 8] = struct.pack("<q", 1 << 40)
    started = time.monotonic()
    response = client.post("/predict/batch", data=bytes(body), headers=ARROW_AUTH)
    assert time.monotonic() - started < 2
    assert response.status_code == 400  # found where the flat columns before it say sensor_11's buffers are
    assert f"100 rows declares {(1 << 40) + 11 * 800:,} bytes" in response.json["error"]


def test_health_is_503_while_the_model_cannot_score(client, monkeypatch, workshop_run):
    def broken(rows):
        raise RuntimeError("the forest is gone")

    monkeypatch.setattr(client.application.extensions["model"].current.pipeline, "predict", broken)
    response = client.get("/health")
    assert response.status_code == 503
    assert response.json["status"] == "unavailable" and response.json["model_version"] == workshop_run.version
    assert "RuntimeError: the forest is gone" in response.json["error"]
    monkeypatch.undo()
    assert client.get("/health").json == {"status": "ok", "model_version": workshop_run.version}


def versions_answered(client) -> set[int]:
    """The model versions each scoring route names in its answer."""
    feature, row = {"feature": HEALTHY_EXAMPLE}, np.array([[float(v) for v in HEALTHY_EXAMPLE.split(",")]])
    arrow = client.post("/predict/batch", data=rows_to_ipc(row), headers=ARROW_AUTH).data
    return {client.post("/predict", json=feature, headers=AUTH).json["model_version"],
            client.post("/predict/batch", json={"rows": row.tolist()}, headers=AUTH).json["model_version"],
            ipc_to_results(arrow)[1],
            client.post(CDSW, json={"accessKey": KEY, "request": feature}).json["response"]["model_version"]}


def test_reload_swaps_the_model_while_requests_keep_being_answered(client, model_file, workshop_run):
    other = train(5, 4)
    approve(other.version, path=model_file)
    both = (workshop_run.version, other.version)
    errors: list[str] = []
    stop = threading.Event()
    assert versions_answered(client) == {workshop_run.version}

    def hammer():
        while not stop.is_set():
            response = client.post("/predict", json={"feature": HEALTHY_EXAMPLE}, headers=AUTH)
            answer = response.json
            if response.status_code != 200 or answer["result"] not in (0, 1) or answer["model_version"] not in both:
                errors.append(f"{response.status_code} {response.data[:200]!r}")

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        promote(other.version, model_file)
        reloaded = client.post("/model/reload", headers=AUTH)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert reloaded.status_code == 200
    assert reloaded.json["model"]["run_id"] == other.run_id
    assert client.get("/model").json["version"] == other.version
    assert client.get("/model").json["params"]["num_trees"] == "5"
    assert errors == []
    assert versions_answered(client) == {other.version}


@pytest.mark.parametrize("arrow", [False, True], ids=["json", "arrow"])
def test_a_batch_answered_across_a_reload_names_the_model_that_scored_it(client, model_file, monkeypatch, arrow,
                                                                         workshop_run):
    holder = client.application.extensions["model"]
    other = train(5, 4)
    approve_and_promote(other.version, path=model_file)
    scoring = holder.current.pipeline
    predict = scoring.predict

    def predict_then_reload(rows):
        verdicts = predict(rows)
        holder.reload()  # the new model arrives while this call still scores with the old one
        return verdicts

    monkeypatch.setattr(scoring, "predict", predict_then_reload)
    rows = held_out_split().x_test[:10]
    if arrow:
        answer = client.post("/predict/batch", data=rows_to_ipc(rows), headers=ARROW_AUTH)
        assert ipc_to_results(answer.data)[1] == workshop_run.version
    else:
        answer = client.post("/predict/batch", json={"rows": rows.tolist()}, headers=AUTH)
        assert answer.json["model_version"] == workshop_run.version
    assert holder.current.info.version == other.version


def test_real_wsgi_server_on_a_free_port(served_model_file, free_ports, workshop_run):
    port = free_ports(1)[0]
    env = {**os.environ, "MODEL_ACCESS_KEY": KEY, "MODEL_PATH": str(served_model_file)}
    server = subprocess.Popen([sys.executable, "-m", "model", "serve", "--port", str(port)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{base}/health"), 60, "model server",
                   abort=lambda: "exited" if server.poll() is not None else None)

        def call(path: str, data, headers: dict) -> tuple[int, dict]:
            """POST `data`: bytes, or an iterable of bytes sent chunked. Kept alive, so that gunicorn skips what it
            did not read of a refused body rather than close the connection under a client still sending it."""
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                connection.request("POST", path, body=data, headers={"Content-Type": "application/json", **headers},
                                   encode_chunked=not isinstance(data, bytes))
                response = connection.getresponse()
                return response.status, json.loads(response.read())
            finally:
                connection.close()

        def post(feature: str, headers: dict) -> tuple[int, dict]:
            return call("/predict", json.dumps({"feature": feature}).encode(), headers)

        assert post(HEALTHY_EXAMPLE, AUTH) == (200, {"result": 1, "model_version": workshop_run.version})
        assert post(FAILING_EXAMPLE, AUTH) == (200, {"result": 0, "model_version": workshop_run.version})
        status, body = post(FAILING_EXAMPLE, {})
        assert status == 401 and "access key" in body["error"]
        big = json.dumps({"accessKey": KEY, "request": {"feature": HEALTHY_EXAMPLE}, "pad": "x" * (1 << 20)}).encode()
        for data in (big, (big[at:at + 65_536] for at in range(0, len(big), 65_536))):
            status, body = call(CDSW, data, {})
            assert status == 413 and body["success"] is False and "16,384 bytes" in body["message"]
        status, body = call("/predict/batch", b'{"rows": ' + b"[" * 100_000, AUTH)
        assert status == 400 and "nested deeper" in body["error"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_server_refuses_to_start_without_a_key(served_model_file):
    with pytest.raises(RuntimeError, match="MODEL_ACCESS_KEY"):
        create_app({"MODEL_ACCESS_KEY": "", "MODEL_PATH": str(served_model_file)})


@pytest.mark.stack
def test_make_up_serves_the_model_at_model_url_with_the_generated_key(local_stack, workshop_run):
    settings = read_env_file(local_stack.cfg.connection_file)
    req = urllib.request.Request(f"{settings['MODEL_URL']}/predict", method="POST",
                                 data=json.dumps({"feature": FAILING_EXAMPLE}).encode(),
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {settings['MODEL_ACCESS_KEY']}"})
    with urllib.request.urlopen(req, timeout=10) as response:
        assert json.load(response) == {"result": 0, "model_version": workshop_run.version}
