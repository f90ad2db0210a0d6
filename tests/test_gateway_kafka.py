"""The gateway's Kafka producer (librdkafka's) against a real broker: a machine's key lands on the partition Java's
partitioner (and kafka-python's, which the gateway used before) gives it, and a record over Kafka's size limit is
refused as such, which the gateway turns into a dead letter."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException
from kafka.partitioner.default import murmur2

from gateway.bridge import RECORD_ERRORS, GatewaySettings, kafka_producer
from runtime.kafka import ensure_topic

pytestmark = pytest.mark.stack

PARTITIONS = 6


def java_partition(key: bytes, partitions: int) -> int:
    """The partition Java's default partitioner gives a keyed record."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@pytest.fixture()
def topic(local_stack) -> str:
    name = "gateway-partitioner-test"
    ensure_topic(local_stack.cfg.kafka_bootstrap, name, partitions=PARTITIONS)
    return name


@pytest.fixture()
def producer(local_stack):
    settings = GatewaySettings("127.0.0.1", 1, "", "", local_stack.cfg.kafka_bootstrap, "gw-kafka-test")
    errors: list[KafkaError] = []
    producer = kafka_producer(settings, "gw-kafka-test-0", errors.append)
    yield producer
    assert producer.flush(30) == 0
    assert not [error for error in errors if error.fatal()]


def test_a_machine_key_lands_on_the_partition_java_gives_it(topic, producer):
    landed: dict[bytes, int] = {}

    def on_delivery(error, message) -> None:
        assert error is None, error
        landed[message.key()] = message.partition()

    keys = [str(sensor_id).encode() for sensor_id in (*range(200), 1_200_000, 2**31, -7)]
    for key in keys:
        producer.produce(topic, b"{}", key, on_delivery=on_delivery)
    assert producer.flush(30) == 0
    assert landed == {key: java_partition(key, PARTITIONS) for key in keys}
    assert len(set(landed.values())) == PARTITIONS  # the keys spread: not all on one partition by accident


def test_a_record_over_kafkas_size_limit_is_refused_as_such(topic, producer):
    with pytest.raises(KafkaException) as refused:
        producer.produce(topic, b"x" * 1_200_000, b"1")
    assert refused.value.args[0].code() in RECORD_ERRORS
