"""The model server's compact batch format: Arrow IPC streams, one module for the server (model/server/api.py)
and its client (model/client.py).

Request: columns sensor_0..sensor_11, integer or float, one row per reading (other flat columns are skipped).
Answer: one int8 column `result`; the schema's metadata `model_version` names the model that gave the verdicts.

`read_columns` reads a request within bounds that hold before anything is decompressed. An IPC stream may compress
each buffer on its own (LZ4 frame or ZSTD) behind an 8-byte uncompressed length, and pyarrow allocates that length
before it decompresses, so a small body can declare gigabytes. So a first pass walks the raw messages with
`pa.ipc.MessageReader` (which decompresses nothing): it checks the schema, reads each record batch's declared row
count and buffer locations from its flatbuffer metadata (format/Message.fbs in apache/arrow) and the declared size
of every buffer that will be read. Only then does pyarrow read the stream, with `included_fields`, so the other
columns are skipped, never decompressed.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from contract import FEATURES, MODEL_VERSION, clip, show

ARROW_STREAM = "application/vnd.apache.arrow.stream"
# Record batches per stream. Each costs a pass of Python and some Arrow objects, however few rows it holds.
MAX_BATCHES = 10_000
_VALUE_BYTES = 8  # the widest integer or float column, per row


class StreamError(ValueError):
    """A body that is not a readable Arrow IPC stream with the wanted columns; the message says what is wrong."""


class StreamTooLarge(StreamError):
    """A stream that declares more rows or record batches than allowed."""


def table_to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def rows_to_ipc(rows: np.ndarray, columns=FEATURES) -> bytes:
    """A request body: an (n, k) array as named Arrow columns (the features, in contract order)."""
    return table_to_ipc(pa.table({name: rows[:, i] for i, name in enumerate(columns)}))


def results_to_ipc(results: np.ndarray, model_version: int) -> bytes:
    """An answer body: the verdicts as an int8 column `result`, the version of the model that gave them in the
    schema's metadata (`model_version`)."""
    verdicts = pa.table({"result": pa.array(results, type=pa.int8())})
    return table_to_ipc(verdicts.replace_schema_metadata({MODEL_VERSION: str(model_version)}))


def ipc_to_results(body: bytes) -> tuple[np.ndarray, int]:
    """The verdicts and the model's version from an answer body."""
    table = pa.ipc.open_stream(body).read_all()
    version = (table.schema.metadata or {}).get(MODEL_VERSION.encode())
    if version is None:
        raise StreamError(f"the answer's schema metadata has no {MODEL_VERSION}")
    return table.column("result").to_numpy(), int(version)


def read_columns(body: bytes, names: Sequence[str], max_rows: int) -> pa.Table:
    """The integer or float columns `names` of the IPC stream `body`, checked before anything is decompressed.

    Raises StreamTooLarge beyond `max_rows` rows or MAX_BATCHES record batches, StreamError for anything else."""
    try:
        messages = _messages(body)
        schema = _schema(messages[0])
        wanted = _wanted_fields(schema, names)
        _check_batches(messages[1:], _first_buffers(schema, wanted), max_rows)
        options = pa.ipc.IpcReadOptions(included_fields=sorted(wanted))
        table = pa.ipc.open_stream(body, options=options).read_all()
        table.validate(full=True)
    # pyarrow raises a plain OSError for its IOError status, and decodes names, which the format says are UTF-8
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        raise StreamError(f"not an Arrow IPC stream pyarrow can read ({clip(str(exc), 200)})") from None
    return table


def _messages(body: bytes) -> list[pa.ipc.Message]:
    messages = []
    for message in pa.ipc.MessageReader.open_stream(pa.BufferReader(body)):
        if len(messages) > MAX_BATCHES:
            raise StreamTooLarge(f"more than {MAX_BATCHES:,} record batches: send fewer, larger ones")
        if message.metadata_version != pa.ipc.MetadataVersion.V5:
            raise StreamError(f"IPC metadata version {message.metadata_version.name}: send V5 "
                              "(pyarrow >= 1.0 writes it)")
        messages.append(message)
    if not messages:
        raise StreamError("not an Arrow IPC stream: no messages")
    return messages


def _schema(message: pa.ipc.Message) -> pa.Schema:
    if message.type != "schema":
        raise StreamError(f"the stream begins with a {message.type} message, not with its schema")
    return pa.ipc.read_schema(message)


def _wanted_fields(schema: pa.Schema, names: Sequence[str]) -> list[int]:
    """The index of each of `names` in `schema`, each present once, of an integer or float type."""
    counts = Counter(schema.names)
    repeated = [show(name) for name, count in counts.items() if count > 1]
    if repeated:
        raise StreamError(f"repeated column name(s) {', '.join(repeated[:5])}: name each column once")
    missing = [name for name in names if name not in counts]
    if missing:
        raise StreamError(f"the stream lacks column(s) {missing}")
    for name in names:
        kind = schema.field(name).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            raise StreamError(f"{name}: Arrow type {clip(str(kind))} is not an integer or float type")
    return [schema.get_field_index(name) for name in names]


def _first_buffers(schema: pa.Schema, wanted: list[int]) -> list[int]:
    """Where the buffers of each wanted column begin in a record batch's buffer list (integers and floats
    have two: validity bitmap, values). Every column must be flat for the count to be known."""
    starts, position = {}, 0
    for index, field in enumerate(schema):
        starts[index] = position
        position += _buffer_count(field)
    return [starts[index] for index in wanted]


def _buffer_count(field: pa.Field) -> int:
    """How many buffers a flat column has in a record batch (the layouts of format/Columnar.rst)."""
    kind = field.type.storage_type if isinstance(field.type, pa.BaseExtensionType) else field.type
    if pa.types.is_dictionary(kind) or kind.num_fields:
        raise StreamError(f"column {show(field.name)}: {clip(str(kind))} is dictionary-encoded or nested: "
                          "send flat columns")
    if pa.types.is_null(kind):
        return 0
    if any(is_kind(kind) for is_kind in _BINARY_KINDS):
        return 3  # validity, offsets, data
    if _is_fixed_width(kind):
        return 2  # validity, values
    raise StreamError(f"column {show(field.name)}: Arrow type {clip(str(kind))} is not supported")


_BINARY_KINDS = (pa.types.is_binary, pa.types.is_string, pa.types.is_large_binary, pa.types.is_large_string)


def _is_fixed_width(kind: pa.DataType) -> bool:
    try:
        return kind.bit_width > 0
    except ValueError:  # pyarrow's answer for variable-width types
        return False


def _check_batches(messages: list[pa.ipc.Message], first_buffers: list[int], max_rows: int) -> None:
    rows = 0
    for message in messages:
        if message.type != "record batch":
            raise StreamError(f"unexpected {message.type} message: send one schema, then record batches")
        batch = _RecordBatchHeader(message)
        rows += batch.rows
        if rows > max_rows:
            raise StreamTooLarge(f"the stream declares at least {rows:,} rows, more than the limit of {max_rows:,}")
        batch.check_decompressed_size(first_buffers)


# Field slots of the flatbuffer tables read here (format/Message.fbs); a union takes two: type, then value.
_MESSAGE_HEADER_TYPE, _MESSAGE_HEADER = 1, 2
_HEADER_RECORD_BATCH = 3
_BATCH_LENGTH, _BATCH_BUFFERS, _BATCH_COMPRESSION = 0, 2, 3


class _RecordBatchHeader:
    """What a record batch message declares, read from its flatbuffer metadata without touching its body."""

    def __init__(self, message: pa.ipc.Message):
        self.body = message.body or pa.py_buffer(b"")
        self.meta = _FlatBuffer(message.metadata.to_pybytes())
        root = self.meta.root()
        self.batch = self.meta.table(root, _MESSAGE_HEADER)
        if self.batch is None or self.meta.scalar(root, _MESSAGE_HEADER_TYPE, "<B") != _HEADER_RECORD_BATCH:
            raise StreamError("a record batch message without a record batch header")
        self.rows = self.meta.scalar(self.batch, _BATCH_LENGTH, "<q")
        if self.rows < 0:
            raise StreamError(f"a record batch declares {self.rows} rows")

    def check_decompressed_size(self, first_buffers: list[int]) -> None:
        """StreamError if the columns whose buffers begin at `first_buffers` would decompress to more than
        8 bytes per value plus a validity bitmap, each padded to 64 bytes as writers may."""
        if self.meta.table(self.batch, _BATCH_COMPRESSION) is None:
            return  # uncompressed buffers are slices of the body: nothing is allocated for them
        declared = sum(self._uncompressed_size(index) for first in first_buffers for index in (first, first + 1))
        budget = len(first_buffers) * (_padded(_VALUE_BYTES * self.rows) + _padded((self.rows + 7) // 8))
        if declared > budget:
            raise StreamError(f"a record batch of {self.rows:,} rows declares {declared:,} bytes of decompressed "
                              f"data in its sensor columns, more than the {budget:,} they can need")

    def _uncompressed_size(self, index: int) -> int:
        """What pyarrow allocates to decompress buffer `index`: the length its first 8 bytes declare, unless -1
        (stored uncompressed)."""
        offset, length = self.meta.vector_struct(self.batch, _BATCH_BUFFERS, index, "<qq")
        if length == 0:
            return 0
        if offset < 0 or length < 8 or offset + length > self.body.size:
            raise StreamError("a compressed buffer lies outside its record batch's body")
        declared = struct.unpack_from("<q", self.body, offset)[0]
        if declared < -1:
            raise StreamError(f"a compressed buffer declares {declared} bytes")
        return max(declared, 0)


def _padded(size: int) -> int:
    """`size` rounded up to Arrow's 64-byte alignment: a writer may send a buffer that long (pyarrow does)."""
    return -(-size // 64) * 64


class _FlatBuffer:
    """Bounds-checked reads of a flatbuffer (see flatbuffers' internals doc), just what the headers need."""

    def __init__(self, data: bytes):
        self.data = data

    def _unpack(self, fmt: str, at: int) -> tuple[int, ...]:
        if not 0 <= at <= len(self.data) - struct.calcsize(fmt):
            raise StreamError("corrupt record batch metadata: an offset points outside it")
        return struct.unpack_from(fmt, self.data, at)

    def _read(self, fmt: str, at: int) -> int:
        return self._unpack(fmt, at)[0]

    def root(self) -> int:
        return self._read("<I", 0)

    def _field(self, table: int, slot: int) -> int | None:
        """Where the field in `slot` of the table at `table` lies, None if absent (then it has its default)."""
        vtable = table - self._read("<i", table)
        entry = 4 + 2 * slot  # the vtable begins with its own size and the table's
        if entry + 2 > self._read("<H", vtable):
            return None
        offset = self._read("<H", vtable + entry)
        return table + offset if offset else None

    def scalar(self, table: int, slot: int, fmt: str) -> int:
        """A scalar field; 0 (the default of every field read here) if absent."""
        at = self._field(table, slot)
        return 0 if at is None else self._read(fmt, at)

    def table(self, table: int, slot: int) -> int | None:
        """The table (or vector) a field refers to, by an offset relative to the field."""
        at = self._field(table, slot)
        return None if at is None else at + self._read("<I", at)

    def vector_struct(self, table: int, slot: int, index: int, fmt: str) -> tuple[int, ...]:
        """Element `index` of a vector of structs of format `fmt`."""
        vector = self.table(table, slot)
        count = 0 if vector is None else self._read("<I", vector)
        if not 0 <= index < count:
            raise StreamError("corrupt record batch metadata: fewer buffers than its schema needs")
        return self._unpack(fmt, vector + 4 + index * struct.calcsize(fmt))
