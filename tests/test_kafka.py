"""Kafka of the local stack: topic `iot`, 10,000 keyed records through a consumer group."""

from __future__ import annotations

import time

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from runtime.settings import DEAD_LETTER_TOPIC, IOT_TOPIC

pytestmark = pytest.mark.stack

RECORDS = 10_000
MACHINES = 50


def produce_keyed(bootstrap: str, topic: str, count: int, prefix: str = "") -> None:
    """Produce `count` records keyed `<prefix><machine>`, value = '<machine>:<sequence per machine>'."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    futures = [
        producer.send(topic, key=f"{prefix}{i % MACHINES}".encode(), value=f"{i % MACHINES}:{i // MACHINES}".encode())
        for i in range(count)
    ]
    producer.flush()
    for future in futures:
        future.get(timeout=30)
    producer.close()


def consume_all(bootstrap: str, topic: str, group: str, expected: int, timeout_s: float = 60,
                prefix: str = "") -> list:
    """Read until `expected` records keyed `<prefix>...` arrived (or the time is up), commit, and return those."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
                             enable_auto_commit=False)
    records = []
    deadline = time.monotonic() + timeout_s
    while len(records) < expected and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(r for r in batch if r.key is not None and r.key.startswith(prefix.encode()))
    consumer.commit()
    consumer.close()
    return records


def test_make_up_created_the_iot_and_dead_letter_topics(local_stack):
    cfg = local_stack.cfg
    consumer = KafkaConsumer(bootstrap_servers=cfg.kafka_bootstrap)
    try:
        assert len(consumer.partitions_for_topic(IOT_TOPIC)) == cfg.kafka_iot_partitions
        assert consumer.partitions_for_topic(DEAD_LETTER_TOPIC)
    finally:
        consumer.close()


def test_kafka_python_creates_a_topic(local_stack):
    admin = KafkaAdminClient(bootstrap_servers=local_stack.cfg.kafka_bootstrap)
    try:
        admin.create_topics([NewTopic("iot.created-by-test", 3, 1)])
        assert "iot.created-by-test" in admin.list_topics()
    finally:
        admin.close()


def test_ten_thousand_keyed_records_round_trip_through_a_consumer_group(local_stack):
    bootstrap = local_stack.cfg.kafka_bootstrap
    # `iot` also carries other tests' readings: this test's records are told apart by their key prefix.
    produce_keyed(bootstrap, IOT_TOPIC, RECORDS, prefix="roundtrip-")
    records = consume_all(bootstrap, IOT_TOPIC, group="roundtrip", expected=RECORDS, prefix="roundtrip-")

    assert len(records) == RECORDS
    assert len({(r.partition, r.offset) for r in records}) == RECORDS
    # One machine's records share a partition and keep their order.
    by_machine: dict[bytes, list] = {}
    for record in records:
        by_machine.setdefault(record.key, []).append(record)
    assert len(by_machine) == MACHINES
    for key, machine_records in by_machine.items():
        assert len({r.partition for r in machine_records}) == 1, key
        sequence = [int(r.value.split(b":")[1]) for r in sorted(machine_records, key=lambda r: r.offset)]
        assert sequence == list(range(RECORDS // MACHINES))


def committed_offsets(bootstrap: str, topic: str, group: str) -> dict[int, int | None]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) for p in consumer.partitions_for_topic(topic)}
    finally:
        consumer.close()


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close()
