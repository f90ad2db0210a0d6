"""The job's third query, record by record: Kafka `iot.verdicts` (the edge agents' verdicts, carried by the gateway)
checked against the contract, for Kudu `edge_verdicts` or the dead-letter topic.

`check_verdicts` runs in Spark's `mapInPandas`: plain pandas in and out, tested without Spark. Total: any record
(a null value, any bytes) becomes a verdict row or a dead letter with its reason (`contract.parse_verdict`).
The batch function (`write_verdicts_batch` in kafka_to_kudu.py) writes the verdicts with insert-ignore on the key
(sensor_id, sensor_ts, agent_id) and sends the rest to the dead-letter topic.
"""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType, IntegerType, LongType, StringType, StructField, StructType

from contract import (
    AGENT_ID_FIELD,
    ID_FIELD,
    LABEL,
    MODEL_VERSION,
    SCORED_TS_FIELD,
    TS_FIELD,
    InvalidReading,
    parse_verdict,
)

VERDICT, DEAD = "verdict", "dead"  # the `kind` of a checked record
# What check_verdicts returns: the verdict's fields (timestamps as µs, made TIMESTAMPs by `table_rows`) for a
# verdict; the record, the reason and the field at fault for a dead letter; the Kafka position for both.
CHECKED_SCHEMA = StructType([
    StructField("kind", StringType()),
    StructField(ID_FIELD, IntegerType()),
    StructField(TS_FIELD, LongType()),
    StructField(AGENT_ID_FIELD, StringType()),
    StructField(LABEL, IntegerType()),
    StructField(MODEL_VERSION, IntegerType()),
    StructField(SCORED_TS_FIELD, LongType()),
    StructField("value", BinaryType()),
    StructField("reason", StringType()),
    StructField("field", StringType()),
    StructField("partition", IntegerType()),
    StructField("offset", LongType()),
])
CHECKED_COLUMNS = [field.name for field in CHECKED_SCHEMA.fields]
# The Kudu/SQL table `edge_verdicts` (sql/create_edge_verdicts.sql), in order: the key first.
TABLE_COLUMNS = (ID_FIELD, TS_FIELD, AGENT_ID_FIELD, LABEL, MODEL_VERSION, SCORED_TS_FIELD)
_DTYPES = {"kind": object, ID_FIELD: "Int32", TS_FIELD: "Int64", AGENT_ID_FIELD: object, LABEL: "Int32",
           MODEL_VERSION: "Int32", SCORED_TS_FIELD: "Int64", "value": object, "reason": object, "field": object,
           "partition": "Int32", "offset": "Int64"}


def checked_record(value: object, partition: int, offset: int) -> dict:
    """One Kafka record as a row of CHECKED_COLUMNS: its verdict, or a dead letter with the reason."""
    try:
        verdict = parse_verdict(value)
    except InvalidReading as exc:
        return {"kind": DEAD, "value": value, "reason": str(exc), "field": exc.field or "", "partition": partition,
                "offset": offset}
    return {"kind": VERDICT, **verdict, "partition": partition, "offset": offset}


def checked_frame(batch: pd.DataFrame) -> pd.DataFrame:
    """A batch of Kafka records (`value`, `partition`, `offset`) checked: one row each, with the dtypes Arrow
    converts to CHECKED_SCHEMA whatever the mix (nullable integers: no float in between, so µs stay exact)."""
    rows = [checked_record(value, partition, offset)
            for value, partition, offset in zip(batch["value"], batch["partition"], batch["offset"], strict=True)]
    return pd.DataFrame({name: pd.Series([row.get(name) for row in rows], dtype=dtype, index=range(len(rows)))
                         for name, dtype in _DTYPES.items()})


def check_verdicts(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """mapInPandas function: Kafka `value`, `partition`, `offset` in; verdicts and dead letters out."""
    for batch in batches:
        yield checked_frame(batch)


def table_rows(checked: DataFrame) -> DataFrame:
    """The verdicts of checked records as rows of `edge_verdicts` (sensor_ts, scored_ts as TIMESTAMPs)."""
    return checked.where(F.col("kind") == VERDICT).select(*[
        F.timestamp_micros(name).alias(name) if name in (TS_FIELD, SCORED_TS_FIELD) else F.col(name)
        for name in TABLE_COLUMNS])


def invalid_records(checked: DataFrame) -> DataFrame:
    """The records that are not verdicts, as the job's dead letters (`kind` invalid)."""
    return checked.where(F.col("kind") == DEAD).select("value", "reason", "field", "partition", "offset",
                                                      F.lit("invalid").alias("dead_kind"))
