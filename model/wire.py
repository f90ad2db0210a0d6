"""The model server's compact batch format: Arrow IPC streams, one module for the server and its clients.

Request: columns sensor_0..sensor_11 (one row per reading). Answer: one int8 column `result`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from contract import FEATURES

ARROW_STREAM = "application/vnd.apache.arrow.stream"


def table_to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def rows_to_ipc(rows: np.ndarray, columns=FEATURES) -> bytes:
    """A request body: an (n, k) array as named Arrow columns (the features, in contract order)."""
    return table_to_ipc(pa.table({name: rows[:, i] for i, name in enumerate(columns)}))


def results_to_ipc(results: np.ndarray) -> bytes:
    """An answer body: the verdicts as an int8 column `result`."""
    return table_to_ipc(pa.table({"result": pa.array(results, type=pa.int8())}))


def ipc_to_results(body: bytes) -> np.ndarray:
    """The verdicts from an answer body."""
    return pa.ipc.open_stream(body).read_all().column("result").to_numpy()
