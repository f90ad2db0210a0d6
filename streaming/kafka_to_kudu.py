"""Lab 9: score every reading of Kafka topic `iot` with the model server and upsert it into Kudu `sensors`.

Usage:
    spark-submit --master "local[*]" --packages <kafka and kudu connectors> streaming/kafka_to_kudu.py [options]
    python -m streaming [options]        # prints and runs that exact spark-submit command

Each micro-batch: read Kafka (from the earliest offset on the first run), check each record against the data
contract, score the valid ones in one Arrow call per partition to the model server's batch endpoint, upsert them
into Kudu (key sensor_id, sensor_ts: a replayed batch is harmless), and send records that are not readings to
the dead-letter topic with the reason. Kafka offsets live in the checkpoint. If the model server is down, the
batch fails after bounded retries, and the query restarts from the checkpoint: nothing is written unscored and
nothing is skipped.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType, DoubleType, IntegerType, StringType, StructField, StructType, TimestampType

from contract import ID_FIELD, LABEL, SENSOR_FIELDS, TS_FIELD
from streaming.scoring import SCORERS, check_and_score

OUTPUT_SCHEMA = StructType([
    StructField("kind", StringType()),
    StructField(ID_FIELD, IntegerType()),
    StructField(TS_FIELD, TimestampType()),
    *[StructField(name, DoubleType()) for name in SENSOR_FIELDS],
    StructField(LABEL, IntegerType()),
    StructField("value", BinaryType()),
    StructField("reason", StringType()),
])
TABLE_COLUMNS = [ID_FIELD, TS_FIELD, *SENSOR_FIELDS, LABEL]
log = logging.getLogger("streaming")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="kafka_to_kudu.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap-servers", default=env("KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument("--topic", default="iot")
    parser.add_argument("--dead-letter-topic", default="iot.dlq")
    parser.add_argument("--kudu-master", default=env("KUDU_MASTER", "127.0.0.1:7051"))
    parser.add_argument("--kudu-table", default="impala::default.sensors")
    parser.add_argument("--model-url", default=env("MODEL_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--scoring", choices=sorted(SCORERS), default="batch",
                        help="batch: one model call per partition batch (default); per-record: the workshop's "
                             "one call per reading, kept as the benchmark's baseline")
    parser.add_argument("--trigger-seconds", type=float, default=1.0, help="micro-batch interval (default 1 s)")
    parser.add_argument("--max-offsets-per-trigger", type=int, default=200_000,
                        help="upper bound of records per micro-batch (default 200,000)")
    parser.add_argument("--checkpoint", default=env("STREAMING_CHECKPOINT", ".stack/data/checkpoints/kafka_to_kudu"))
    parser.add_argument("--kafka-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a Kafka client setting for the source and the dead-letter sink, repeatable: e.g. "
                             "security.protocol=SASL_SSL (see docs/cluster.md)")
    parser.add_argument("--fail-on-data-loss", action="store_true",
                        help="stop if Kafka deleted offsets the checkpoint wants (default: log and go on)")
    parser.add_argument("--restart-delay-seconds", type=float, default=5.0,
                        help="pause before restarting a failed query from its checkpoint")
    parser.add_argument("--ready-file", help="touched once the query has started (for `make up`)")
    return parser.parse_args(argv)


def kafka_options(args: argparse.Namespace) -> dict[str, str]:
    """The Kafka client settings: the bootstrap servers and every --kafka-option, prefixed `kafka.` for Spark."""
    options = {"kafka.bootstrap.servers": args.bootstrap_servers}
    for option in args.kafka_option:
        key, sep, value = option.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --kafka-option {option!r} is not KEY=VALUE")
        options[f"kafka.{key}"] = value
    return options


def read_kafka(spark: SparkSession, args: argparse.Namespace) -> DataFrame:
    return (spark.readStream.format("kafka")
            .options(**kafka_options(args))
            .option("subscribe", args.topic)
            .option("startingOffsets", "earliest")
            .option("maxOffsetsPerTrigger", args.max_offsets_per_trigger)
            # Kafka's retention deleting unread offsets is loss we cannot undo; by default the job says so in
            # its log and carries on from what is left (--fail-on-data-loss stops it instead).
            .option("failOnDataLoss", str(args.fail_on_data_loss).lower())
            .load()
            .select("value"))


def write_batch(args: argparse.Namespace, access_key: str):
    """The foreachBatch function: score, upsert into Kudu, dead-letter the rest, log one line."""
    dead_letter_options = kafka_options(args)

    def process(batch: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        # One Python task per core, not one per Kafka partition: each task costs a fixed share of every batch.
        scored = batch.coalesce(batch.sparkSession.sparkContext.defaultParallelism).mapInPandas(
            lambda batches: check_and_score(batches, args.model_url, access_key, args.scoring),
            OUTPUT_SCHEMA).persist()
        try:
            # One Spark job reads, checks and scores the batch (then cached); the writes reuse it.
            summary = {kind: (count, oldest) for kind, count, oldest in
                       scored.groupBy("kind").agg(F.count("*"), F.min(TS_FIELD)).collect()}
            scoring_s = time.monotonic() - started
            rows, oldest = summary.get("scored", (0, None))
            dead = summary.get("dead", (0, None))[0]
            if rows:
                (scored.where("kind = 'scored'").select(*TABLE_COLUMNS).write.format("kudu")
                 .option("kudu.master", args.kudu_master).option("kudu.table", args.kudu_table)
                 .option("kudu.operation", "upsert").mode("append").save())
            if dead:
                (scored.where("kind = 'dead'")
                 .select(F.col("value"), F.array(F.struct(F.lit("reason").alias("key"),
                                                          F.col("reason").cast("binary").alias("value")))
                         .alias("headers"))
                 .write.format("kafka").options(**dead_letter_options)
                 .option("topic", args.dead_letter_topic).save())
        finally:
            scored.unpersist()
        total_s = time.monotonic() - started
        lag_s = f"{(time.time() - oldest.timestamp()):.1f} s" if oldest else "-"
        log.info("batch %d: %d rows, %d dead-lettered, %.0f rows/s, scoring %.2f s, write %.2f s, lag %s",
                 batch_id, rows, dead, rows / total_s if total_s else 0, scoring_s,
                 total_s - scoring_s, lag_s)

    return process


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    access_key = os.environ.get("MODEL_ACCESS_KEY")
    if not access_key:
        print("error: MODEL_ACCESS_KEY is not set (source .stack/connection.env)", file=sys.stderr)
        return 2
    spark = (SparkSession.builder.appName("iot-kafka-to-kudu")
             .config("spark.sql.session.timeZone", "UTC")
             .config("spark.sql.shuffle.partitions", "1")  # only the per-batch summary shuffles
             .getOrCreate())
    spark.sparkContext.setLogLevel("WARN")
    while True:
        query = (read_kafka(spark, args).writeStream
                 .foreachBatch(write_batch(args, access_key))
                 .option("checkpointLocation", args.checkpoint)
                 .trigger(processingTime=f"{args.trigger_seconds} seconds")
                 .start())
        log.info("streaming %s -> Kudu %s (checkpoint %s)", args.topic, args.kudu_table, args.checkpoint)
        if args.ready_file:
            Path(args.ready_file).touch()
        try:
            query.awaitTermination()
            return 0
        except Exception as exc:  # noqa: BLE001 - any failed batch: restart from the checkpoint
            log.error("query failed (%s); restarting from the checkpoint in %.0f s",
                      str(exc).splitlines()[0][:300], args.restart_delay_seconds)
            time.sleep(args.restart_delay_seconds)


if __name__ == "__main__":
    sys.exit(main())
