"""The job's second query: Kafka `iot.scored` -> per-machine state (streaming/alerts.py) -> alerts, exactly once.

    iot.scored --(applyInPandasWithState, state in <checkpoint>-alerts)--> each micro-batch's alerts:
        1. Kudu `alerts`: insert-ignore on (sensor_id, sensor_ts): a replayed batch writes nothing twice;
        2. Kafka `iot.alerts`: in one Kafka transaction with a watermark, the batch id, committed as the offset of a
           consumer group named after the query: a batch whose id is below the watermark was already published
           and is skipped. A batch cut short by a kill -9 leaves an open transaction, which the next start aborts
           (`init_transactions` with the same transactional id). Readers use isolation.level=read_committed.

The scoring query (kafka_to_kudu.py) writes every scored reading to `iot.scored` after Kudu took it (a replay
writes it again; the state ignores readings it has already taken).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import threading
from collections.abc import Callable

from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import OffsetAndMetadata, TopicPartition
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming.state import GroupStateTimeout

from contract import ALERT_FIELDS, ID_FIELD, LABEL, MODEL_VERSION, SENSOR_FIELDS, TS_FIELD, alert_json
from streaming.alerts import ALERT_SCHEMA, STATE_SCHEMA, Debounce, track_machines

log = logging.getLogger("streaming.alerts")
SCORED_SCHEMA = (f"{ID_FIELD} INT, {TS_FIELD} BIGINT, "
                 + ", ".join(f"{name} DOUBLE" for name in SENSOR_FIELDS) + f", {LABEL} INT, {MODEL_VERSION} INT")


def scored_records(rows: DataFrame) -> DataFrame:
    """Scored readings as `iot.scored` records: key sensor_id, value the reading with its verdict (contract.
    SCORED_FIELDS; sensor_ts in µs)."""
    value = F.to_json(F.struct(F.col(ID_FIELD), F.expr(f"unix_micros({TS_FIELD})").alias(TS_FIELD),
                               *SENSOR_FIELDS, LABEL, MODEL_VERSION))
    return rows.select(F.col(ID_FIELD).cast("string").alias("key"), value.alias("value"))


def alerts_stream(spark: SparkSession, args: argparse.Namespace, kafka: dict[str, str]) -> DataFrame:
    """The alerts of `iot.scored`'s readings, one row per change of a machine's state."""
    readings = (spark.readStream.format("kafka").options(**kafka)
                .option("subscribe", args.scored_topic).option("startingOffsets", "earliest")
                .option("failOnDataLoss", str(args.fail_on_data_loss).lower()).load()
                .select(F.from_json(F.col("value").cast("string"), SCORED_SCHEMA).alias("r")).select("r.*")
                .where(F.col(ID_FIELD).isNotNull() & F.col(TS_FIELD).isNotNull() & F.col(LABEL).isin(0, 1))
                .select(ID_FIELD, TS_FIELD, LABEL, MODEL_VERSION))
    debounce = Debounce(args.alert_needed, args.alert_window)
    return readings.groupBy(ID_FIELD).applyInPandasWithState(
        track_machines(debounce), ALERT_SCHEMA, STATE_SCHEMA, "append", GroupStateTimeout.NoTimeout)


class AlertPublisher:
    """Publishes each batch's alerts to Kafka in one transaction, once: the batch id is the watermark."""

    def __init__(self, bootstrap: str, topic: str, query_id: str, client_settings: dict[str, str]):
        self.topic = topic
        self.group = f"iot-alerts-{query_id}"
        self.watermark = TopicPartition(topic, 0)
        settings = {key.replace(".", "_"): value for key, value in client_settings.items()}
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=self.group, acks="all",
                                      enable_idempotence=True, **settings)
        self.producer.init_transactions()  # aborts what a killed predecessor left open
        # read_committed: the watermark is read stable (KIP-447), never before a just-committed transaction's
        # offsets are, so a batch published a moment ago is not taken as unpublished.
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=self.group, enable_auto_commit=False,
                                      isolation_level="read_committed", **settings)

    def published(self, batch_id: int) -> bool:
        """True if batch `batch_id`'s alerts were already committed to Kafka."""
        committed = self.consumer.committed(self.watermark)
        return committed is not None and committed > batch_id

    def publish(self, batch_id: int, alerts: list[dict]) -> bool:
        """Publish the alerts of batch `batch_id` unless done before; True if published now."""
        if self.published(batch_id):
            return False
        self.producer.begin_transaction()
        try:
            for alert in alerts:
                self.producer.send(self.topic, key=str(alert[ID_FIELD]).encode(), value=alert_json(alert))
            self.producer.send_offsets_to_transaction(
                {self.watermark: OffsetAndMetadata(batch_id + 1, "", -1)}, self.group)
            self.producer.commit_transaction()
        except Exception:
            try:
                self.producer.abort_transaction()
            except Exception as exc:  # noqa: BLE001 - the next producer's init_transactions aborts it anyway
                log.warning("could not abort the alerts transaction: %s", exc)
            raise
        return True

    def close(self) -> None:
        """Let go of the clients; Kafka may be away, so nothing here may fail."""
        for client in (self.producer, self.consumer):
            with contextlib.suppress(Exception):
                client.close(timeout=5) if client is self.producer else client.close()


def as_alerts(rows: list) -> list[dict]:
    """Collected alert rows back to contract alerts (sensor_ts in µs, readings a list)."""
    alerts = []
    for row in rows:
        alert = row.asDict()
        alert[TS_FIELD] = int(alert[TS_FIELD].timestamp() * 1_000_000) if alert[TS_FIELD] else None
        alert["readings"] = json.loads(alert["readings"])
        alerts.append({name: alert[name] for name in ALERT_FIELDS})
    return alerts


class QueryIdentity:
    """The alerts query's id (stable for its checkpoint), known once the query started: it names the Kafka
    transactional id and the watermark's consumer group, so a new checkpoint starts a new watermark."""

    def __init__(self) -> None:
        self._id: str | None = None
        self._known = threading.Event()

    def set(self, query_id: str) -> None:
        self._id = query_id
        self._known.set()

    def get(self) -> str:
        self._known.wait()
        return self._id


def write_alerts(args: argparse.Namespace, identity: QueryIdentity, client_settings: dict[str, str],
                 keep: Callable[[str, str, Callable], object], write_kudu: Callable[[DataFrame], None],
                 counted: Callable[[list[dict]], None]):
    """The alerts query's foreachBatch function. `keep(phase, what, action)` runs an action until it succeeds
    (the job's retry with backoff); `write_kudu(rows)` inserts-ignore into the alerts table."""
    publisher: list[AlertPublisher] = []

    def publish(batch_id: int, alerts: list[dict]) -> bool:
        """One attempt; after a failure the producer is dropped, and the next attempt starts a new one (which
        aborts the failed transaction if it is still open)."""
        if not publisher:
            publisher.append(AlertPublisher(args.bootstrap_servers, args.alerts_topic, identity.get(),
                                            client_settings))
        try:
            return publisher[0].publish(batch_id, alerts)
        except Exception:
            publisher.pop().close()
            raise

    def process(batch: DataFrame, batch_id: int) -> None:
        rows = keep("kafka", f"alerts batch {batch_id}: reading", batch.collect)
        if not rows:
            return
        alerts = as_alerts(rows)
        keep("kudu", f"alerts batch {batch_id}: writing {len(alerts)} alert(s) to Kudu",
             lambda: write_kudu(batch.sparkSession.createDataFrame(rows, batch.schema)))
        if keep("kafka", f"alerts batch {batch_id}: publishing to Kafka", lambda: publish(batch_id, alerts)):
            counted(alerts)
            for alert in alerts:
                log.info("alert: machine %d is %s (reading %d, model version %s)", alert[ID_FIELD],
                         alert["state"], alert[TS_FIELD], alert[MODEL_VERSION])
        else:
            log.info("alerts batch %d: already published (a replay): not published again", batch_id)

    return process
