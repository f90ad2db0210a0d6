"""Kafka as the project's tools, labs, benches and tests use it (kafka-python), in one place: a topic's end
offsets, the records written since given offsets, a consumer group's read and its committed offsets, a topic
made sure of. Offsets are always `{partition: offset}`; every wait is `runtime.waiting.wait_until`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import TopicAlreadyExistsError

from runtime.waiting import NotReady, wait_until

# One poll may hand over this many records (kafka-python's default is 500): reading a test's 30,000 readings
# takes a few polls, not sixty.
MAX_POLL_RECORDS = 10_000
MAX_PARTITION_FETCH_BYTES = 4 * 1024 * 1024

Keep = Callable[[ConsumerRecord], bool]


def _everything(_record: ConsumerRecord) -> bool:
    return True


def end_offsets(kafka: str | KafkaConsumer, topic: str) -> dict[int, int]:
    """Partition -> end offset (the offset the next record will get) of each partition of `topic`; {} if there is
    no such topic. `kafka` is a bootstrap address (a consumer is opened for the question), or an open consumer."""
    consumer = KafkaConsumer(bootstrap_servers=kafka) if isinstance(kafka, str) else kafka
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(partitions).items()} if partitions else {}
    finally:
        if consumer is not kafka:
            consumer.close()


def committed_offsets(bootstrap: str, topic: str, group: str) -> dict[int, int | None]:
    """Partition -> the offset consumer group `group` committed on `topic` (None where it committed none)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) for p in sorted(consumer.partitions_for_topic(topic))}
    finally:
        consumer.close()


def _collect(consumer: KafkaConsumer, what: str, expected: int, keep: Keep, timeout_s: float, settle_s: float,
             identity: Callable[[ConsumerRecord], Hashable] | None) -> list[ConsumerRecord]:
    """The one read loop: poll `consumer` until `expected` kept records (distinct by `identity`, if given) arrived
    or `timeout_s` passed, then poll `settle_s` longer for any duplicate still on its way."""
    kept: list[ConsumerRecord] = []
    distinct: set = set()

    def read(timeout_ms: int) -> None:
        for batch in consumer.poll(timeout_ms=timeout_ms).values():
            mine = [record for record in batch if keep(record)]
            kept.extend(mine)
            if identity:
                distinct.update(identity(record) for record in mine)

    def enough() -> bool:
        read(500)
        return (len(distinct) if identity else len(kept)) >= expected

    if expected > 0:
        with contextlib.suppress(NotReady):  # the caller sees fewer than it expected, and says so in its own terms
            wait_until(enough, timeout_s, what)
    if settle_s > 0:
        read(int(settle_s * 1000))
    return kept


def records_since(bootstrap: str, topic: str, offsets: dict[int, int], expected: int, keep: Keep = _everything,
                  timeout_s: float = 60, settle_s: float = 0,
                  identity: Callable[[ConsumerRecord], Hashable] | None = None) -> list[ConsumerRecord]:
    """The records of `topic` from `offsets` (partition -> offset, as `end_offsets` gives them) on for which
    keep(record) is true, read until `expected` of them arrived (distinct ones by `identity(record)`, if given)
    or `timeout_s` passed (then fewer: the caller checks), then `settle_s` longer to see duplicates still on
    their way. No consumer group, nothing committed; only committed records of transactions (`iot.alerts`)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed",
                             max_poll_records=MAX_POLL_RECORDS, max_partition_fetch_bytes=MAX_PARTITION_FETCH_BYTES)
    try:
        consumer.assign([TopicPartition(topic, p) for p in offsets])
        for partition, offset in offsets.items():
            consumer.seek(TopicPartition(topic, partition), offset)
        return _collect(consumer, f"{expected} records of {topic}", expected, keep, timeout_s, settle_s, identity)
    finally:
        consumer.close()


def read_as_group(bootstrap: str, topic: str, group: str, expected: int, keep: Keep = _everything,
                  timeout_s: float = 60) -> list[ConsumerRecord]:
    """Read `topic` as consumer group `group` (from its committed offsets, else the earliest) until `expected` kept
    records arrived or `timeout_s` passed, commit what was read, and return the kept records."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
                             enable_auto_commit=False, max_poll_records=MAX_POLL_RECORDS,
                             max_partition_fetch_bytes=MAX_PARTITION_FETCH_BYTES)
    try:
        records = _collect(consumer, f"{expected} records of {topic} for group {group}", expected, keep, timeout_s,
                           0, None)
        consumer.commit()
        return records
    finally:
        consumer.close()


def ensure_topic(bootstrap: str, name: str, partitions: int = 1, replication: int = 1,
                 client_id: str = "kafka-python-admin", configs: dict[str, str] | None = None) -> bool:
    """Create topic `name` (with topic `configs`) unless it exists (an existing topic is left as it is, whatever its
    partitions); True if this call created it. Once created, it is in the brokers' metadata, a leader for each
    partition."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id=client_id)
    try:
        if name in admin.list_topics():
            return False
        try:
            admin.create_topics({name: {"num_partitions": partitions, "replication_factor": replication,
                                        "configs": configs or {}}},
                                wait_for_metadata=True)
        except TopicAlreadyExistsError:
            return False  # created meanwhile by someone else
        return True
    finally:
        admin.close()


def delete_topic(bootstrap: str, name: str) -> None:
    """Delete topic `name` (the benchmarks' own topics, when they end)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.delete_topics([name])
    finally:
        admin.close()
