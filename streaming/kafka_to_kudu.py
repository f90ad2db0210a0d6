r"""Lab 9: score every reading of Kafka topic `iot` with the model server and write it into Kudu `sensors`.

Usage (from the repository root, in the project's virtualenv, with MODEL_ACCESS_KEY and the connection settings
KAFKA_BOOTSTRAP, KUDU_MASTER, MODEL_URL in the environment: `set -a; source .stack/connection.env; set +a`):

    spark-submit --master "local[*]" \
        --packages org.apache.spark:spark-sql-kafka-0-10_2.12:3.5.7,org.apache.kudu:kudu-spark3_2.12:1.18.1 \
        streaming/kafka_to_kudu.py [options]

    python -m streaming [options]   # checks the options, then prints and runs that command (adding the connector
                                    # cache and the driver's address), with the settings of .stack/connection.env

Options: `--help`. streaming/options.py checks every one (ranges, topics, host:port lists, URLs, the
--kafka-option KEY=VALUE settings) before Spark starts; a wrong one exits 2 with the option and value named.

Each micro-batch (`write_batch`), in three steps:
  1. summarise (`summarise`): read Kafka (from the earliest offset on the first run), check each record against
     the data contract, score the valid ones in one Arrow call per partition to the model server's batch endpoint
     (`model.client`), and count them;
  2. write scored (`write_scored`): INSERT the new readings into Kudu, each with its verdict and the version of
     the model that gave it (`model_version`);
  3. publish scored (`publish_scored`): the readings Kudu now holds, with their verdicts, to Kafka `iot.scored`;
  4. write dead letters (`write_batch_dead_letters`): send the rest to the dead-letter topic with the reason:
     records that are not readings, and conflicts (a different reading under a key that is already stored; the
     stored one is kept).
Only when the INSERT finds a key already stored (a replay after a crash, or a conflict) is the batch compared with
what Kudu holds under its keys: a replayed batch finds its own rows and writes nothing twice. Kafka offsets live
in the checkpoint.

A second query (unless --no-alerts; streaming/alerts_query.py) reads `iot.scored`, keeps each machine's state in
its own checkpoint (`--alerts-checkpoint`) and raises an alert when a machine's verdict changes, debounced (k of the
last n verdicts: --alert-needed, --alert-window): once into Kudu `alerts`, once into Kafka `iot.alerts`.
A third (unless --no-verdicts; streaming/verdicts.py) reads the edge agents' verdicts of `iot.verdicts` (checkpoint
`--verdicts-checkpoint`), checks each with the contract and writes it into Kudu `edge_verdicts` with insert-ignore
on (sensor_id, sensor_ts, agent_id): a repeat or a replay writes nothing twice; the rest is dead-lettered.
With --metrics-port the driver serves Prometheus metrics (streaming/metrics.py).

Nothing stops the job for longer than an outage: while the model server, Kudu or Kafka is away, the batch waits
with capped backoff and retries (rows already scored are not scored again while Kudu is away) and the health
file says what it waits on (a write unanswered for 20 s to a node that is gone counts: streaming/probes.py). If
Kafka deleted offsets the checkpoint still needs (retention), the job stops loudly (exit 3) unless
--no-fail-on-data-loss.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce
from typing import TypeVar

from pyspark.errors import StreamingQueryException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery
from pyspark.sql.types import (
    BinaryType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from contract import ID_FIELD, LABEL, MODEL_VERSION, SENSOR_FIELDS, TABLE_COLUMNS, TS_FIELD
from runtime.health import Health, HealthReporter
from runtime.metrics import start_metrics_server
from runtime.retry import Backoff
from runtime.spark import keep_jars_off_the_python_path, quiet_per_record_warnings
from streaming.alerts_query import QueryIdentity, alerts_stream, scored_records, write_alerts
from streaming.metrics import JobMetrics
from streaming.options import kafka_options, parse_args
from streaming.probes import OVERDUE_PROBES, SLOW_CALL_S, idle_problem, overdue_problem
from streaming.scoring import INPUT_COLUMNS, check_and_score
from streaming.verdicts import CHECKED_SCHEMA, DEAD, VERDICT, check_verdicts, invalid_records, table_rows

OUTPUT_SCHEMA = StructType([
    StructField("kind", StringType()),
    StructField(ID_FIELD, IntegerType()),
    StructField(TS_FIELD, TimestampType()),
    *[StructField(name, DoubleType()) for name in SENSOR_FIELDS],
    StructField(LABEL, IntegerType()),
    StructField(MODEL_VERSION, IntegerType()),
    StructField("value", BinaryType()),
    StructField("reason", StringType()),
    StructField("field", StringType()),
    StructField("partition", IntegerType()),
    StructField("offset", LongType()),
    StructField("conflict", StringType()),
])
READINGS_QUERY, ALERTS_QUERY, VERDICTS_QUERY = "readings", "alerts", "verdicts"
DATA_LOSS_EXIT = 3
STUCK_EXIT = 4
UNPROCESSABLE_AFTER = 5  # failures in a row, none blaming a dependency, before a batch is dead-lettered whole
log = logging.getLogger("streaming")
T = TypeVar("T")


def read_kafka(spark: SparkSession, args: argparse.Namespace, topic: str) -> DataFrame:
    """The records of Kafka `topic` (the readings', or the verdicts'), from the earliest offset on a first run."""
    return (spark.readStream.format("kafka")
            .options(**kafka_options(args))
            .option("subscribe", topic)
            .option("startingOffsets", "earliest")
            .option("maxOffsetsPerTrigger", args.max_offsets_per_trigger)
            # Kafka's retention deleting unread offsets is loss we cannot undo: stop loudly (the default).
            .option("failOnDataLoss", str(args.fail_on_data_loss).lower())
            .load()
            .select(*INPUT_COLUMNS))


@dataclass(frozen=True)
class Call:
    """A write to a dependency under way, since when (the status's clock)."""
    dependency: str
    what: str
    since: float


class JobStatus:
    """What the job is doing, shared by the batch function and the main loop; `assess()` is its health."""

    def __init__(self, stuck_batch_s: float, metrics: JobMetrics | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.metrics = metrics or JobMetrics()
        self.clock = clock
        self.lock = threading.Lock()
        self.state, self.waiting_on, self.detail = "starting", None, "starting the query"
        self.batch_started: float | None = None
        self.stuck_batch_s = stuck_batch_s
        self.calls: dict[int, Call] = {}  # by thread: the queries' batches run side by side
        self.probed_problem: tuple[str, str] | None = None  # (dependency, detail) the main loop's probes found
        self.counters = {"batches": 0, "rows": 0, "dead_lettered": 0, "conflicts": 0, "retries": 0,
                         "unprocessable_batches": 0, "verdicts": 0, "verdicts_dead_lettered": 0}
        self.last_batch_at = clock()

    def set(self, state: str, detail: str, waiting_on: str | None = None) -> None:
        with self.lock:
            self.state, self.detail, self.waiting_on = state, detail, waiting_on

    def batch_begins(self) -> None:
        self.batch_started = self.clock()

    def batch_done(self, rows: int, dead: int, conflicts: int, detail: str) -> None:
        with self.lock:
            self.batch_started, self.last_batch_at = None, self.clock()
            self.counters["batches"] += 1
            self.counters["rows"] += rows
            self.counters["dead_lettered"] += dead
            self.counters["conflicts"] += conflicts
            self.state, self.detail, self.waiting_on = "up", detail, None

    def verdicts_done(self, written: int, dead: int) -> None:
        """A batch of the verdicts query: verdicts written to Kudu, records dead-lettered."""
        with self.lock:
            self.counters["verdicts"] += written
            self.counters["verdicts_dead_lettered"] += dead
        self.metrics.verdicts_done(written, dead)

    def stuck_for(self) -> float:
        """Seconds the running batch has run without waiting on a dependency (0 if none runs or it waits)."""
        started = self.batch_started
        return self.clock() - started if started and self.state == "up" else 0.0

    def probed(self, problem: tuple[str, str] | None) -> None:
        """What the main loop's probes found now (dependency, detail), or None; logged when the dependency changes."""
        before = self.probed_problem[0] if self.probed_problem else None
        if problem and problem[0] != before:
            log.warning("waiting on %s: %s", *problem)
        elif before and not problem:
            log.info("%s answers again", before)
        self.probed_problem = problem

    def quiet_for(self) -> float:
        """Seconds since the last batch ended (or the job started)."""
        return self.clock() - self.last_batch_at

    @contextlib.contextmanager
    def calling(self, dependency: str, what: str):
        """Around a call to `dependency` ("kudu", "kafka", ...): `overdue()` tells one that goes unanswered."""
        thread = threading.get_ident()
        self.calls[thread] = Call(dependency, what, self.clock())
        try:
            yield
        finally:
            self.calls.pop(thread, None)

    def overdue(self) -> tuple[Call, float] | None:
        """The longest-running write the probes can check (Kudu, Kafka) unanswered for SLOW_CALL_S, and for how
        long, if any."""
        late = [call for call in list(self.calls.values())
                if call.dependency in OVERDUE_PROBES and self.clock() - call.since > SLOW_CALL_S]
        first = min(late, key=lambda call: call.since, default=None)
        return (first, self.clock() - first.since) if first else None

    def assess(self) -> Health:
        with self.lock:
            counters = dict(self.counters)
            if self.stuck_for() > self.stuck_batch_s:
                return Health("degraded", f"a batch has run for {self.stuck_for():.0f} s", counters=counters)
            if self.state == "up" and self.probed_problem:
                return Health("degraded", self.probed_problem[1], self.probed_problem[0], counters=counters)
            return Health(self.state, self.detail, self.waiting_on, counters=counters)


def dependency_of(exc: BaseException, phase: str) -> str:
    """Which dependency a failure of `phase` ("read", "score", "kudu", "kafka") points at."""
    text = str(exc)
    if "ModelUnavailable" in text:
        return "model"
    if phase in ("read", "score"):
        return "kafka" if "kafka" in text.lower() else "spark"
    return phase


class BatchUnprocessable(RuntimeError):
    """The batch failed again and again with no dependency to blame: its records are dead-lettered instead."""


def until_done(status: JobStatus, phase: str, what: str, action: Callable[[], T], backoff: Backoff,
               passthrough: type[Exception] | None = None, unprocessable_after: int | None = None) -> T:
    """Run `action` until it succeeds, waiting with capped backoff while its dependency is away.

    `passthrough`: an exception that is an answer, not a failure (it is raised at once). With
    `unprocessable_after`, that many failures in a row that blame no dependency raise BatchUnprocessable: a batch
    that cannot be processed must not stop the job for good."""
    blameless = failures = 0
    while True:
        try:
            with status.calling(phase, what):
                result = action()
            backoff.reset()
            if failures:
                status.set("up", f"{what}: done after {failures} failure(s)")
            return result
        except Exception as exc:  # noqa: BLE001 - an outage or a failed write: wait and retry, never skip
            if passthrough and isinstance(exc, passthrough):
                raise
            if data_was_lost(str(exc)):
                raise  # not an outage: the query must fail, and the job stop loudly (see run())
            dependency = dependency_of(exc, phase)
            problem = first_line(exc)
            failures += 1
            status.metrics.failed.labels(dependency).inc()
            blameless = blameless + 1 if dependency == "spark" else 0
            if unprocessable_after and blameless >= unprocessable_after:
                raise BatchUnprocessable(problem) from exc
            delay = backoff.next_delay()
            status.counters["retries"] += 1
            status.set("degraded", f"{what} failed: {problem}; retrying in {delay:.0f} s", dependency)
            log.warning("%s failed (waiting on %s): %s; retrying in %.0f s", what, dependency, problem, delay)
            time.sleep(delay)


def first_line(exc: BaseException) -> str:
    """The line of a (Py4J- and Spark-wrapped) exception that names its cause, short: our own ModelUnavailable,
    else the deepest `Caused by:`, else the first line naming an exception."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.strip().startswith("at ")]
    # The exception's own line ("model.client.ModelUnavailable: ..."), not the traceback's source line that raised it.
    ours = [line for line in lines if "ModelUnavailable: " in line] or [line for line in lines
                                                                       if "ModelUnavailable" in line]
    causes = [line.removeprefix("Caused by: ") for line in lines if line.startswith("Caused by:")]
    named = [line for line in lines if re.search(r"(Exception|Error)\b", line)]
    return (ours or causes[-1:] or named or lines or [repr(exc)])[0][:300]


@dataclass(frozen=True)
class Summary:
    scored: int
    dead: int
    batch_conflicts: int  # scored readings marked as conflicts within the batch
    ids: list[int]
    ts_min: object
    ts_max: object


def summarize(scored: DataFrame) -> Summary:
    """One Spark job reads, checks and scores the batch (then cached); counts and the keys' extent come back."""
    by_kind = {kind: (count, conflicts, ids, low, high) for kind, count, conflicts, ids, low, high in
               scored.groupBy("kind").agg(F.count("*"), F.count("conflict"), F.collect_set(ID_FIELD),
                                          F.min(TS_FIELD), F.max(TS_FIELD)).collect()}
    rows, conflicts, ids, low, high = by_kind.get("scored", (0, 0, [], None, None))
    return Summary(rows, by_kind.get("dead", (0,))[0], conflicts, sorted(ids), low, high)


# What decides a reading's identity: its key and its sensor values, never its verdict nor the model's version (a
# replay scored again after a new model was promoted is the same reading, not a conflict).
STORED_COLUMNS = [ID_FIELD, TS_FIELD, *SENSOR_FIELDS]


def stored_rows(spark: SparkSession, summary: Summary, args: argparse.Namespace) -> list:
    """What Kudu holds under the batch's keys (the scan is bounded by its machines and time span, both pushed down
    to Kudu): nothing, unless this batch is a replay or brings conflicts. A fresh scan at each call: a retry must
    not reuse a plan made while a tablet server was away (one kept failing after the server was back)."""
    return (spark.read.format("kudu").option("kudu.master", args.kudu_master).option("kudu.table", args.kudu_table)
            .load()
            .where(F.col(ID_FIELD).isin(summary.ids) & F.col(TS_FIELD).between(summary.ts_min, summary.ts_max))
            .select(*STORED_COLUMNS).collect())


def _differs(name: str) -> Column:
    return ~F.col(name).eqNullSafe(F.col(f"stored_{name}"))


def classify(spark: SparkSession, scored: DataFrame, stored: list) -> DataFrame:
    """The batch's readings, each marked `new`, `conflict` (a different reading is stored under its key, or came
    earlier in the batch; with the reason) or `same` (exactly this reading is stored: a replay)."""
    readings = scored.where("kind = 'scored'")
    if not stored:  # the usual case: nothing to compare with
        return (readings.withColumn("status", F.when(F.col("conflict").isNull(), "new").otherwise("conflict"))
                .withColumn("reason", F.col("conflict")))
    schema = StructType([field for field in OUTPUT_SCHEMA.fields if field.name in STORED_COLUMNS])
    known = spark.createDataFrame(stored, schema).select(
        ID_FIELD, TS_FIELD, F.lit(True).alias("stored"),
        *[F.col(name).alias(f"stored_{name}") for name in SENSOR_FIELDS])
    differs = reduce(lambda a, b: a | b, [_differs(name) for name in SENSOR_FIELDS])
    changes = F.concat_ws("; ", *[F.when(_differs(name), F.format_string(
        f"{name}: %s kept, %s here", F.col(f"stored_{name}"), F.col(name))) for name in SENSOR_FIELDS])
    stored_conflict = F.format_string(
        f"conflict: a different reading under this key ({ID_FIELD}=%d, {TS_FIELD}=%d) is stored in Kudu and is "
        "kept; %s", F.col(ID_FIELD), F.expr(f"unix_micros({TS_FIELD})"), changes)
    new = F.col("stored").isNull()
    return (readings.join(F.broadcast(known), [ID_FIELD, TS_FIELD], "left")
            .withColumn("status", F.when(new & F.col("conflict").isNull(), "new")
                        .when(new | differs, "conflict").otherwise("same"))
            .withColumn("reason", F.when(new, F.col("conflict")).otherwise(stored_conflict)))


class KeysAlreadyStored(RuntimeError):
    """A plain INSERT found keys already in Kudu (a replay, or conflicts): the batch is compared with Kudu."""


KEY_PRESENT = "Already present: key already present"  # Kudu's row error for an INSERT of an existing key


def insert(rows: DataFrame, args: argparse.Namespace) -> None:
    """INSERT, which fails on a key already present (after writing the others): KeysAlreadyStored then."""
    try:
        write_kudu(rows, args, "insert")
    except Exception as exc:
        if KEY_PRESENT in str(exc):
            raise KeysAlreadyStored(first_line(exc)) from None
        raise


def write_readings(spark: SparkSession, scored: DataFrame, summary: Summary, args: argparse.Namespace,
                   status: JobStatus, backoff: Backoff, batch_id: int) -> tuple[DataFrame, dict[str, int]]:
    """Write the batch's new readings to Kudu, never over a stored row; the readings marked, and counts by mark.

    The usual batch holds only new keys: one INSERT writes it, no scan needed. If a key is already stored (a
    replay after a crash, or a conflict), the INSERT has written the rest and says so; the batch is then compared
    with what Kudu holds under its keys (our own rows just written included: they are `same`), and the new ones
    are written with insert-ignore."""
    classified = classify(spark, scored, [])
    try:
        if summary.scored > summary.batch_conflicts:
            until_done(status, "kudu", f"batch {batch_id}: writing to Kudu",
                       lambda: insert(classified.where("status = 'new'"), args), backoff, KeysAlreadyStored)
        return classified, {"new": summary.scored - summary.batch_conflicts, "conflict": summary.batch_conflicts}
    except KeysAlreadyStored:
        log.info("batch %d: keys already stored (a replay or conflicts): comparing the batch with Kudu", batch_id)
    stored = until_done(status, "kudu", f"batch {batch_id}: comparing with Kudu",
                        lambda: stored_rows(spark, summary, args), backoff)
    classified = classify(spark, scored, stored).persist()
    counts = dict(classified.groupBy("status").count().collect())
    if counts.get("new"):
        until_done(status, "kudu", f"batch {batch_id}: writing to Kudu",
                   lambda: write_kudu(classified.where("status = 'new'"), args, "insert-ignore"), backoff)
    return classified, counts


def conflicts_with_originals(classified: DataFrame, batch: DataFrame) -> DataFrame:
    """The conflicts as dead letters, with their original Kafka records (rare: read again from the batch, so that
    the scored rows need not carry their records in the cache)."""
    originals = batch.select("value", "partition", "offset")
    return (classified.where("status = 'conflict'").select("partition", "offset", "reason")
            .join(originals, ["partition", "offset"])
            .select("value", "reason", F.lit("").alias("field"), "partition", "offset",
                    F.lit("conflict").alias("dead_kind")))


def write_kudu(rows: DataFrame, args: argparse.Namespace, operation: str) -> None:
    """Write rows with `operation`: insert or insert-ignore, never upsert: a stored row is never overwritten."""
    (rows.select(*TABLE_COLUMNS).write.format("kudu")
     .option("kudu.master", args.kudu_master).option("kudu.table", args.kudu_table)
     .option("kudu.operation", operation).mode("append").save())


def write_dead_letters(dead: DataFrame, args: argparse.Namespace, kafka: dict[str, str], topic: str) -> None:
    """Dead letters to Kafka: the original value, the reason and where the record came from (Kafka `topic`), in
    headers."""
    def header(name: str, value: Column) -> Column:
        return F.struct(F.lit(name).alias("key"), value.cast("string").cast("binary").alias("value"))

    (dead.select(F.col("value"), F.array(
        header("reason", F.col("reason")), header("field", F.coalesce(F.col("field"), F.lit(""))),
        header("source", F.lit("streaming")), header("kafka_topic", F.lit(topic)),
        header("kafka_partition", F.col("partition")), header("kafka_offset", F.col("offset")),
        header("kind", F.col("dead_kind"))).alias("headers"))
     .write.format("kafka").options(**kafka).option("topic", args.dead_letter_topic).save())


@dataclass(frozen=True)
class BatchContext:
    """What every micro-batch needs: the options, the job's status, the backoff, the Kafka sink's settings."""
    args: argparse.Namespace
    status: JobStatus
    backoff: Backoff
    kafka_sink: dict[str, str]

    @classmethod
    def of(cls, args: argparse.Namespace, status: JobStatus) -> BatchContext:
        """A query's context. What the job writes to Kafka (dead letters, scored readings) is written like the
        gateway's records: every replica acknowledges, no duplicates on retry."""
        kafka_sink = {**kafka_options(args), "kafka.acks": "all", "kafka.enable.idempotence": "true"}
        return cls(args, status, Backoff(args.restart_delay_seconds, args.max_backoff_seconds), kafka_sink)


def summarise(scored: DataFrame, batch_id: int, ctx: BatchContext) -> Summary:
    """Step 1: read, check and score the batch (`summarize`), waiting out an outage of the model server or Kafka.
    BatchUnprocessable after UNPROCESSABLE_AFTER failures in a row that blame no dependency."""
    return until_done(ctx.status, "score", f"batch {batch_id}: reading and scoring", lambda: summarize(scored),
                      ctx.backoff, unprocessable_after=UNPROCESSABLE_AFTER)


def write_scored(spark: SparkSession, scored: DataFrame, summary: Summary, batch_id: int, ctx: BatchContext
                 ) -> tuple[DataFrame | None, dict[str, int]]:
    """Step 2: the batch's new readings into Kudu (`write_readings`); the readings marked, and counts by mark (None
    and no counts for a batch without readings)."""
    if not summary.scored:
        return None, {}
    return write_readings(spark, scored, summary, ctx.args, ctx.status, ctx.backoff, batch_id)


def publish_scored(classified: DataFrame | None, batch_id: int, ctx: BatchContext) -> None:
    """Step 2b: the readings Kudu holds now (new, and those a replay found stored) to `iot.scored`, for the
    alerts and the dashboard. A replay publishes them again: their readers ignore a reading they already took."""
    if classified is None:
        return
    stored = scored_records(classified.where("status in ('new', 'same')"))
    until_done(ctx.status, "kafka", f"batch {batch_id}: publishing scored readings",
               lambda: stored.write.format("kafka").options(**ctx.kafka_sink)
               .option("topic", ctx.args.scored_topic).save(), ctx.backoff)


def write_batch_dead_letters(batch: DataFrame, scored: DataFrame, classified: DataFrame | None, summary: Summary,
                             counts: dict[str, int], batch_id: int, ctx: BatchContext) -> None:
    """Step 3: the records that are not readings, and the conflicts with their original records, to the
    dead-letter topic (nothing is written if there are none)."""
    dead = scored.where("kind = 'dead'").select("value", "reason", "field", "partition", "offset",
                                                 F.lit("invalid").alias("dead_kind"))
    if counts.get("conflict"):
        dead = dead.unionByName(conflicts_with_originals(classified, batch))
    if summary.dead or counts.get("conflict"):
        until_done(ctx.status, "kafka", f"batch {batch_id}: writing dead letters",
                   lambda: write_dead_letters(dead, ctx.args, ctx.kafka_sink, ctx.args.topic), ctx.backoff)


def report_batch(status: JobStatus, batch_id: int, summary: Summary, counts: dict[str, int], started: float,
                 scoring_s: float, kudu_s: float) -> None:
    """The batch's one log line, and its counts into the job's status."""
    total_s = time.monotonic() - started
    rows, conflicts, replayed = counts.get("new", 0), counts.get("conflict", 0), counts.get("same", 0)
    age_s = time.time() - summary.ts_min.timestamp() if summary.ts_min else None
    lag_s = f"{age_s:.1f} s" if age_s is not None else "-"
    status.metrics.batch_done(rows, replayed, summary.dead, conflicts, scoring_s, total_s, age_s)
    line = (f"batch {batch_id}: {rows} rows, {summary.dead} dead-lettered, {conflicts} conflicts, {replayed} "
            f"already stored, {rows / total_s if total_s else 0:.0f} rows/s, scoring {scoring_s:.2f} s, "
            f"write {total_s - scoring_s:.2f} s (Kudu {kudu_s:.2f} s), lag {lag_s}")
    status.batch_done(rows, summary.dead + conflicts, conflicts, line)
    log.info(line)


def write_batch(args: argparse.Namespace, access_key: str, status: JobStatus):
    """The foreachBatch function: summarise, write scored, write dead letters, log one line."""
    ctx = BatchContext.of(args, status)

    def score(batches):
        return check_and_score(batches, args.model_url, access_key, args.scoring, args.max_payload_bytes,
                               args.max_nesting)

    def process(batch: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        status.batch_begins()
        spark = batch.sparkSession
        # One Python task per core, not one per Kafka partition: each task costs a fixed share of every batch.
        scored = batch.coalesce(spark.sparkContext.defaultParallelism).mapInPandas(score, OUTPUT_SCHEMA).persist()
        classified = None
        try:
            try:
                summary = summarise(scored, batch_id, ctx)
            except BatchUnprocessable as exc:
                status.metrics.dead.labels("unprocessable").inc(
                    dead_letter_whole_batch(batch, batch_id, str(exc), args.topic, ctx))
                status.batch_done(0, 0, 0, f"batch {batch_id} could not be processed; its records were dead-lettered")
                return
            scoring_s = time.monotonic() - started
            classified, counts = write_scored(spark, scored, summary, batch_id, ctx)
            kudu_s = time.monotonic() - started - scoring_s
            publish_scored(classified, batch_id, ctx)
            write_batch_dead_letters(batch, scored, classified, summary, counts, batch_id, ctx)
        finally:
            scored.unpersist()
            if classified is not None:
                classified.unpersist()
        report_batch(status, batch_id, summary, counts, started, scoring_s, kudu_s)

    return process


def dead_letter_whole_batch(batch: DataFrame, batch_id: int, problem: str, topic: str, ctx: BatchContext) -> int:
    """Keep every record of a batch of Kafka `topic` that cannot be processed in the dead-letter topic, and go on:
    how many there were."""
    reason = f"the job could not process this record's batch ({batch_id}): {problem}"
    log.error("batch %d of %s failed %d times with no dependency to blame (%s): dead-lettering its records",
              batch_id, topic, UNPROCESSABLE_AFTER, problem)
    dead = batch.select("value", F.lit(reason).alias("reason"), F.lit("").alias("field"), "partition", "offset",
                        F.lit("unprocessable").alias("dead_kind"))
    until_done(ctx.status, "kafka", f"batch {batch_id} of {topic}: dead-lettering the whole batch",
               lambda: write_dead_letters(dead, ctx.args, ctx.kafka_sink, topic), ctx.backoff)
    ctx.status.counters["unprocessable_batches"] += 1
    return batch.count()


def probed_problem(spark: SparkSession, args: argparse.Namespace, status: JobStatus) -> tuple[str, str] | None:
    """What the dependencies' probes (streaming/probes.py) find wrong: about a write unanswered for long, or, with
    no batch for 10 s, about the dependencies an idle job would need."""
    late = status.overdue()
    if late:
        call, waited_s = late
        return overdue_problem(spark, args, call.dependency, call.what, waited_s)
    return idle_problem(args) if status.quiet_for() > 10 else None


DATA_LOSS_MARKER = "Some data may have been lost because they are not available in Kafka any more"


def exit_if_stuck(status: JobStatus, stuck_batch_s: float) -> None:
    """A batch running twice the stuck limit with no dependency to wait on is hung: exit so that the supervisor (or
    Compose) restarts the job, which replays the batch from its checkpoint; the replay is harmless."""
    if status.stuck_for() > 2 * stuck_batch_s:
        log.error("a batch has run for %.0f s without waiting on anything: exiting to be restarted from the "
                  "checkpoint", status.stuck_for())
        logging.shutdown()
        os._exit(STUCK_EXIT)


def data_was_lost(message: str) -> bool:
    """Spark's Kafka source says so, in these words, when offsets it needs were deleted (failOnDataLoss=true)."""
    return DATA_LOSS_MARKER in message


def start_readings_query(spark: SparkSession, args: argparse.Namespace, access_key: str, status: JobStatus
                         ) -> StreamingQuery:
    """Kafka `iot` -> score -> Kudu (and `iot.scored`), batch by batch (`write_batch`)."""
    return (read_kafka(spark, args, args.topic).writeStream.queryName(READINGS_QUERY)
            .foreachBatch(write_batch(args, access_key, status))
            .option("checkpointLocation", args.checkpoint)
            .trigger(processingTime=f"{args.trigger_seconds} seconds")
            .start())


def start_alerts_query(spark: SparkSession, args: argparse.Namespace, status: JobStatus) -> StreamingQuery:
    """Kafka `iot.scored` -> per-machine state -> alerts in Kudu and Kafka (streaming/alerts_query.py)."""
    backoff = Backoff(args.restart_delay_seconds, args.max_backoff_seconds)
    identity = QueryIdentity()

    def keep(phase: str, what: str, action):
        return until_done(status, phase, what, action, backoff)

    def write_kudu_alerts(rows: DataFrame) -> None:
        (rows.write.format("kudu").option("kudu.master", args.kudu_master)
         .option("kudu.table", args.alerts_kudu_table).option("kudu.operation", "insert-ignore")
         .mode("append").save())

    def counted(alerts: list[dict]) -> None:
        for alert in alerts:
            status.metrics.alerts.labels(alert["state"]).inc()

    query = (alerts_stream(spark, args, kafka_options(args)).writeStream.queryName(ALERTS_QUERY)
             .foreachBatch(write_alerts(args, identity, dict(args.kafka_option), keep, write_kudu_alerts, counted))
             .option("checkpointLocation", args.alerts_checkpoint)
             .trigger(processingTime=f"{args.trigger_seconds} seconds")
             .start())
    identity.set(str(query.id))
    return query


def write_verdicts_batch(ctx: BatchContext):
    """The verdicts query's foreachBatch function: check each record (streaming/verdicts.py), insert-ignore the
    verdicts into Kudu, dead-letter the rest; a batch that keeps failing with no dependency to blame is
    dead-lettered whole."""
    args, status = ctx.args, ctx.status

    def kinds(checked: DataFrame) -> dict[str, int]:
        return dict(checked.groupBy("kind").count().collect())

    def write_kudu(rows: DataFrame) -> None:
        (rows.write.format("kudu").option("kudu.master", args.kudu_master)
         .option("kudu.table", args.edge_verdicts_kudu_table).option("kudu.operation", "insert-ignore")
         .mode("append").save())

    def process(batch: DataFrame, batch_id: int) -> None:
        what = f"verdicts batch {batch_id}"
        checked = batch.mapInPandas(check_verdicts, CHECKED_SCHEMA).persist()
        try:
            try:
                counts = until_done(status, "read", f"{what}: reading and checking", lambda: kinds(checked),
                                    ctx.backoff, unprocessable_after=UNPROCESSABLE_AFTER)
            except BatchUnprocessable as exc:
                status.verdicts_done(0, dead_letter_whole_batch(batch, batch_id, str(exc), args.verdicts_topic, ctx))
                return
            if counts.get(VERDICT):
                until_done(status, "kudu", f"{what}: writing to Kudu", lambda: write_kudu(table_rows(checked)),
                           ctx.backoff)
            if counts.get(DEAD):
                until_done(status, "kafka", f"{what}: writing dead letters", lambda: write_dead_letters(
                    invalid_records(checked), args, ctx.kafka_sink, args.verdicts_topic), ctx.backoff)
        finally:
            checked.unpersist()
        status.verdicts_done(counts.get(VERDICT, 0), counts.get(DEAD, 0))
        log.info("%s: %d verdict(s) written (insert-ignore), %d dead-lettered", what, counts.get(VERDICT, 0),
                 counts.get(DEAD, 0))

    return process


def start_verdicts_query(spark: SparkSession, args: argparse.Namespace, status: JobStatus) -> StreamingQuery:
    """Kafka `iot.verdicts` -> check -> Kudu `edge_verdicts` (and dead letters), batch by batch."""
    return (read_kafka(spark, args, args.verdicts_topic).writeStream.queryName(VERDICTS_QUERY)
            .foreachBatch(write_verdicts_batch(BatchContext.of(args, status)))
            .option("checkpointLocation", args.verdicts_checkpoint)
            .trigger(processingTime=f"{args.trigger_seconds} seconds")
            .start())


def stop_all(spark: SparkSession, queries: list[StreamingQuery]) -> None:
    """Stop the queries still running, and forget the terminated ones (before they are started again)."""
    for query in queries:
        with contextlib.suppress(Exception):
            query.stop()
    spark.streams.resetTerminated()


def run(spark: SparkSession, args: argparse.Namespace, access_key: str, status: JobStatus) -> int:
    """Start the queries (readings; alerts and verdicts unless --no-alerts, --no-verdicts); after a failure of any,
    restart them all from their checkpoints, with capped backoff, forever. Returns when a query stops without
    failing."""
    backoff = Backoff(args.restart_delay_seconds, args.max_backoff_seconds)
    while True:
        status.set("starting", "starting the query")
        queries: list[StreamingQuery] = []
        try:
            queries.append(start_readings_query(spark, args, access_key, status))
            log.info("streaming %s -> Kudu %s (checkpoint %s)", args.topic, args.kudu_table, args.checkpoint)
            if args.alerts:
                queries.append(start_alerts_query(spark, args, status))
                log.info("alerts: %s -> Kafka %s, Kudu %s (k=%d of n=%d; checkpoint %s)", args.scored_topic,
                         args.alerts_topic, args.alerts_kudu_table, args.alert_needed, args.alert_window,
                         args.alerts_checkpoint)
            if args.verdicts:
                queries.append(start_verdicts_query(spark, args, status))
                log.info("verdicts: %s -> Kudu %s (checkpoint %s)", args.verdicts_topic,
                         args.edge_verdicts_kudu_table, args.verdicts_checkpoint)
            status.set("up", "query running, waiting for the first batch")
            while not spark.streams.awaitAnyTermination(5):
                # Polled here, not pushed to a Python StreamingQueryListener: py4j handed each query's every progress
                # event to Python member by member, 7% of the JVM's CPU in a profile with 5,000-record batches.
                status.metrics.progress((queries[0].lastProgress or {}).get("sources", []))
                status.probed(probed_problem(spark, args, status))
                if status.counters["batches"]:
                    backoff.reset()
                exit_if_stuck(status, args.stuck_batch_seconds)
            stop_all(spark, queries)
            return 0
        except (StreamingQueryException, Exception) as exc:  # noqa: BLE001 - restart from the checkpoint
            stop_all(spark, queries)
            problem = first_line(exc)
            if data_was_lost(str(exc)):
                log.error("Kafka no longer holds offsets this job still needs (retention deleted them): %s. "
                          "Stopping rather than skipping data. To go on from what is left, restart with "
                          "--no-fail-on-data-loss (or delete the checkpoint %s to start over).",
                          problem, args.checkpoint)
                return DATA_LOSS_EXIT
            delay = backoff.next_delay()
            status.set("degraded", f"query failed: {problem}; restarting from the checkpoint in {delay:.0f} s",
                       dependency_of(exc, "score"))
            log.error("query failed (%s); restarting from the checkpoint in %.0f s", problem, delay)
            time.sleep(delay)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for chatty in ("kafka", "py4j"):  # a line per connection and per callback: only their warnings
        logging.getLogger(chatty).setLevel(logging.WARNING)
    access_key = os.environ.get("MODEL_ACCESS_KEY")
    if not access_key:
        print("error: MODEL_ACCESS_KEY is not set (source .stack/connection.env)", file=sys.stderr)
        return 2
    status = JobStatus(args.stuck_batch_seconds)
    reporter = HealthReporter(args.health_file, status.assess).start()
    if args.metrics_port:
        try:
            server = start_metrics_server(args.metrics_port, args.metrics_host, status.metrics.registry)
        except OSError as exc:
            print(f"error: cannot serve metrics on {args.metrics_host}:{args.metrics_port}: {exc}; pick another "
                  "--metrics-port (or STREAMING_METRICS_PORT)", file=sys.stderr)
            reporter.stop()
            return 2
        log.info("metrics at %s", server.url)
    spark = (SparkSession.builder.appName("iot-kafka-to-kudu")
             .config("spark.sql.session.timeZone", "UTC")
             .config("spark.sql.shuffle.partitions", "1")  # only the per-batch summary shuffles
             .getOrCreate())
    spark.sparkContext.setLogLevel("WARN")
    quiet_per_record_warnings(spark.sparkContext)
    log.info("the Python workers' path leaves out the connectors' jars: %s",
             ", ".join(keep_jars_off_the_python_path(spark.sparkContext)) or "none were on it")
    try:
        return run(spark, args, access_key, status)
    finally:
        reporter.stop()


if __name__ == "__main__":
    sys.exit(main())
