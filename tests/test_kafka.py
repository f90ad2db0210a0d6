"""Kafka of the local stack: topic `iot`, 10,000 keyed records through a consumer group, topics made sure of."""

from __future__ import annotations

import pytest

from runtime.kafka import end_offsets, ensure_topic, read_as_group
from runtime.settings import DEAD_LETTER_TOPIC, IOT_TOPIC

pytestmark = pytest.mark.stack

RECORDS = 10_000
MACHINES = 50  # as `produce_keyed` keys them


def test_make_up_created_the_iot_and_dead_letter_topics(local_stack):
    cfg = local_stack.cfg
    assert len(end_offsets(cfg.kafka_bootstrap, IOT_TOPIC)) == cfg.kafka_iot_partitions
    assert end_offsets(cfg.kafka_bootstrap, DEAD_LETTER_TOPIC)


def test_ensure_topic_creates_a_topic_once(local_stack):
    bootstrap = local_stack.cfg.kafka_bootstrap
    assert end_offsets(bootstrap, "iot.created-by-test") == {}
    assert ensure_topic(bootstrap, "iot.created-by-test", 3) is True
    assert end_offsets(bootstrap, "iot.created-by-test") == {0: 0, 1: 0, 2: 0}
    assert ensure_topic(bootstrap, "iot.created-by-test", 3) is False  # there already: left as it is


def test_ten_thousand_keyed_records_round_trip_through_a_consumer_group(local_stack, produce_keyed):
    bootstrap = local_stack.cfg.kafka_bootstrap
    # `iot` also carries other tests' readings: this test's records are told apart by their key prefix.
    produce_keyed(bootstrap, IOT_TOPIC, RECORDS, prefix="roundtrip-")
    records = read_as_group(bootstrap, IOT_TOPIC, "roundtrip", RECORDS,
                            keep=lambda r: r.key is not None and r.key.startswith(b"roundtrip-"))

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
