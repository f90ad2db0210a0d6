"""Property-based tests of the model server: whatever a call sends, the answer is never a 5xx; a call without the
key to a keyed route is a 401 before anything else; every error is JSON that says what is wrong."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.exceptions import default_exceptions

from contract import FEATURES
from model.server import create_app
from model.server.api import MAX_MAGNITUDE
from model.wire import ARROW_STREAM, ipc_to_results
from tests.fixtures.model_server import AUTH, CDSW, HEALTHY_EXAMPLE, KEY

MAX_ROWS = 300
KEYED = ("/predict", "/predict/batch", "/model/reload")
POSTED = ("/predict", "/predict/batch", CDSW, "/health", "/model")  # /model/reload has a test of its own
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def client(served_model_file):
    app = create_app({"MODEL_ACCESS_KEY": KEY, "MODEL_PATH": str(served_model_file), "MAX_CONTENT_LENGTH": 2_000_000,
                      "MODEL_MAX_ROWS": MAX_ROWS})
    return app.test_client()


def check(response, path: str, keyed: bool) -> None:
    """No 5xx; 401 without the key on a keyed route; an error says what is wrong, in the route's shape."""
    assert response.status_code < 500, (response.status_code, response.data[:500])
    if path in KEYED and not keyed:
        assert response.status_code == 401 and "access key" in response.json["error"]
    if response.status_code == 405:  # POST to a GET route: werkzeug's own words say it
        return
    if response.status_code >= 400:
        problem = response.json["message" if path == CDSW else "error"]
        assert isinstance(problem, str) and problem and problem != default_exceptions[response.status_code].description


# ---- strategies

ascii_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
content_types = st.sampled_from([None, "application/json", "application/json; charset=utf-16", ARROW_STREAM,
                                 "text/plain", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded",
                                 "application/problem+json"]) | ascii_text
any_text = st.text(st.characters(exclude_categories=()), max_size=30)  # lone surrogates too
big_ints = st.integers(min_value=-(10**400), max_value=10**400)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | big_ints | st.floats() | any_text,
    lambda children: st.lists(children, max_size=14) | st.dictionaries(any_text, children, max_size=5),
    max_leaves=40)
cells = (st.integers(-10**6, 10**6) | st.floats() | big_ints | st.booleans() | st.none() | st.text(max_size=6)
         | st.lists(st.integers(), max_size=2))
finite = st.floats(allow_nan=False, allow_infinity=False)  # beyond float32 too
good_rows = st.lists(st.lists(st.integers(-10**6, 10**6) | finite, min_size=12, max_size=12), min_size=1, max_size=5)
near_rows = st.lists(st.lists(cells, min_size=10, max_size=13) | cells, max_size=6) | good_rows
numbers_as_text = st.floats().map(repr) | st.integers().map(str) | big_ints.map(str) | st.text(max_size=5)
features = (st.lists(numbers_as_text, min_size=10, max_size=13).map(", ".join) | any_text
            | st.lists(finite.map(repr), min_size=12, max_size=12).map(", ".join))
near_misses = st.one_of(
    st.builds(lambda rows: {"rows": rows}, near_rows),
    st.builds(lambda feature: {"feature": feature}, features | json_values),
    st.builds(lambda key, feature: {"accessKey": key, "request": {"feature": feature}},
              st.sampled_from([KEY, "nope"]) | json_values, features | json_values),
)


def headers(keyed: bool, content_type: str | None) -> dict:
    return {**(AUTH if keyed else {}), **({"Content-Type": content_type} if content_type is not None else {})}


# ---- bytes and JSON, every route


@FUZZ
@given(path=st.sampled_from(POSTED), body=st.binary(max_size=400), content_type=content_types, keyed=st.booleans())
def test_arbitrary_bytes_never_get_a_5xx(client, path, body, content_type, keyed):
    check(client.post(path, data=body, headers=headers(keyed, content_type)), path, keyed)


@FUZZ
@given(path=st.sampled_from(POSTED), value=json_values | near_misses, keyed=st.booleans(),
       content_type=st.sampled_from([None, "application/json"]), cdsw_key=st.booleans())
def test_arbitrary_json_never_gets_a_5xx(client, path, value, keyed, content_type, cdsw_key):
    if cdsw_key and isinstance(value, dict) and "request" in value:
        value = {**value, "accessKey": KEY}
    check(client.post(path, data=json.dumps(value), headers=headers(keyed, content_type)), path, keyed)


@settings(max_examples=12, deadline=None)
@given(body=st.binary(max_size=200), content_type=content_types, keyed=st.booleans())
def test_reload_never_reads_the_body(client, body, content_type, keyed):
    response = client.post("/model/reload", data=body, headers=headers(keyed, content_type))
    check(response, "/model/reload", keyed)
    assert response.status_code == (200 if keyed else 401)


@FUZZ
@given(path=st.sampled_from(POSTED), authorization=ascii_text | st.just(f"Bearer {KEY}"), body=st.binary(max_size=100))
def test_any_authorization_header_but_the_key_is_a_401(client, path, authorization, body):
    keyed = authorization.partition(" ")[0].lower() == "bearer" and authorization.partition(" ")[2].strip() == KEY
    response = client.post(path, data=body, headers={"Authorization": authorization})
    check(response, path, keyed)
    if path == CDSW and authorization and not keyed:  # a header, if sent, is checked before the body
        assert response.status_code == 401


@settings(max_examples=40, deadline=None)
@given(path=st.sampled_from(["/health", "/model"]), body=st.binary(max_size=200), query=ascii_text)
def test_get_routes_answer_whatever_comes_with_them(client, path, body, query):
    response = client.get(path, data=body, query_string={"q": query})
    assert response.status_code == 200 and response.json


# ---- Arrow

NUMERIC_TYPES = [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint32(), pa.uint64(), pa.float16(),
                 pa.float32(), pa.float64()]
OTHER_FLAT_TYPES = [pa.bool_(), pa.string(), pa.large_binary(), pa.null(), pa.date32(), pa.timestamp("ms"),
                    pa.decimal128(10, 2), pa.binary(3)]
REFUSED_TYPES = [pa.dictionary(pa.int8(), pa.string()), pa.list_(pa.int32()), pa.struct([("a", pa.int8())]),
                 pa.string_view()]


def random_column(kind: pa.DataType, length: int, rng: np.random.Generator) -> pa.Array:
    """A column of `kind`; numbers now and then with nulls, NaN, infinities or values beyond float32."""
    mask = rng.random(length) < 0.05 if rng.random() < 0.03 else None
    if pa.types.is_integer(kind):
        info = np.iinfo(kind.to_pandas_dtype())
        return pa.array(rng.integers(info.min, info.max, size=length, endpoint=True, dtype=info.dtype), kind, mask=mask)
    if pa.types.is_floating(kind):
        values = rng.standard_normal(length) * 10.0 ** rng.integers(0, 4)
        if rng.random() < 0.03:
            values[rng.integers(0, max(length, 1), size=min(length, 3))] = rng.choice([np.nan, np.inf, -np.inf, 1e39])
        with np.errstate(over="ignore"):
            return pa.array(values.astype(kind.to_pandas_dtype()), kind, mask=mask)
    if pa.types.is_string(kind) or pa.types.is_dictionary(kind):
        strings = pa.array([f"v{i % 7}" for i in range(length)])
        return strings.dictionary_encode() if pa.types.is_dictionary(kind) else strings
    return pa.nulls(length, kind)


any_type = st.sampled_from(NUMERIC_TYPES + OTHER_FLAT_TYPES + REFUSED_TYPES)
names = st.text(max_size=6) | st.sampled_from(["sensor_id", "note", "", "sensor_3"])


@st.composite
def arrow_tables(draw) -> pa.Table:
    """Either the features (numeric) with a few other columns in any order, or any columns at all."""
    length = draw(st.integers(1, 20) | st.integers(1, MAX_ROWS) | st.sampled_from([0, MAX_ROWS, MAX_ROWS + 1])
                  | st.integers(0, 3 * MAX_ROWS))
    unique = (lambda column: column[0]) if draw(st.booleans()) else None
    columns = draw(st.lists(st.tuples(names, any_type), max_size=2 if draw(st.booleans()) else 12, unique_by=unique))
    if draw(st.booleans()):
        columns = draw(st.permutations(columns + [(name, draw(st.sampled_from(NUMERIC_TYPES))) for name in FEATURES]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return pa.Table.from_arrays([random_column(kind, length, rng) for _, kind in columns],
                                names=[name for name, _ in columns])


def arrow_ipc(table: pa.Table, compression: str | None, chunk: int | None) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as writer:
        writer.write_table(table, max_chunksize=chunk)
    return sink.getvalue().to_pybytes()


def scorable(table: pa.Table) -> bool:
    """Whether the server must score `table`: the features once each, numeric, no nulls, values it can score,
    between 1 and MAX_ROWS rows, and any other columns flat and uniquely named."""
    if len(set(table.column_names)) < table.num_columns or not set(FEATURES) <= set(table.column_names):
        return False
    refused = [field for field in table.schema
               if pa.types.is_dictionary(field.type) or field.type.num_fields or pa.types.is_string_view(field.type)]
    if refused or not 0 < table.num_rows <= MAX_ROWS:
        return False
    features = [table.column(name) for name in FEATURES]
    return all(column.type in NUMERIC_TYPES and column.null_count == 0
               and np.all(np.abs(column.to_numpy().astype(np.float64)) <= MAX_MAGNITUDE) for column in features)


compressions = st.sampled_from([None, "zstd", "lz4"])
chunks = st.none() | st.integers(1, 100)


@FUZZ
@given(table=arrow_tables(), compression=compressions, chunk=chunks, keyed=st.booleans())
def test_arbitrary_arrow_tables_are_scored_or_refused_with_a_4xx(client, table, compression, chunk, keyed):
    response = client.post("/predict/batch", data=arrow_ipc(table, compression, chunk),
                           headers=headers(keyed, ARROW_STREAM))
    check(response, "/predict/batch", keyed)
    if keyed and scorable(table):
        assert response.status_code == 200, response.json
        assert len(ipc_to_results(response.data)[0]) == table.num_rows
    elif keyed:
        assert response.status_code in (400, 413), response.status_code


@FUZZ
@given(table=arrow_tables(), compression=compressions, chunk=chunks, data=st.data())
def test_corrupted_arrow_streams_never_get_a_5xx(client, table, compression, chunk, data):
    body = bytearray(arrow_ipc(table, compression, chunk))
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(body) - 1))
        body[at] = data.draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, body[at] ^ 0x01]) | st.integers(0, 255))
    body = body[:data.draw(st.integers(0, len(body)))] if data.draw(st.booleans()) else body
    check(client.post("/predict/batch", data=bytes(body), headers=headers(True, ARROW_STREAM)), "/predict/batch", True)


def test_the_fuzzed_server_still_scores(client, workshop_run):
    response = client.post("/predict", json={"feature": HEALTHY_EXAMPLE}, headers=AUTH)
    assert response.status_code == 200 and response.json == {"result": 1, "model_version": workshop_run.version}
