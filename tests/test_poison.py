"""No input stops the pipeline: the poison corpus over MQTT and straight into Kafka, each payload dead-lettered
with its reason, and the good readings around it all scored into Kudu. The first two tests are the issue's
reproductions: on the code before this test existed, each stopped its stage for good."""

from __future__ import annotations

import re

import pytest

from runtime.settings import DEAD_LETTER_TOPIC
from tests.poison import CORPUS, reading

pytestmark = [pytest.mark.stack, pytest.mark.slow]

BY_NAME = {poison.name: poison for poison in CORPUS}


@pytest.fixture(scope="module")
def job(pipeline):
    process = pipeline.start_job("poison-job")
    yield process
    pipeline.stop(process)


def good(sensor_id: int, n: int, first_ts: int = 1_700_000_000_000_000) -> list[bytes]:
    return [reading(sensor_id=sensor_id, sensor_ts=first_ts + i) for i in range(n)]


def header(record, name: str) -> str:
    return dict(record.headers).get(name, b"").decode(errors="replace")


def test_a_deeply_nested_message_on_mqtt_stops_nothing(pipeline, job):
    machine = 1_100_000
    dlq = pipeline.end_offsets(DEAD_LETTER_TOPIC)
    poison = [BY_NAME["deep_array_100k"], BY_NAME["deep_array_within_size"]]
    pipeline.publish([(f"iot/{machine}", p.make(), False) for p in poison]
                     + [(f"iot/{machine}", payload, False) for payload in good(machine, 200)])

    assert pipeline.wait_for_rows(f"sensor_id = {machine}", 200) == 200
    dead = pipeline.records_since(DEAD_LETTER_TOPIC, dlq, lambda r: header(r, "mqtt_topic") == f"iot/{machine}",
                                  expected=2)
    assert sorted(header(r, "reason") for r in dead) == ["nested deeper than 32 levels of arrays or objects",
                                                         "payload of 200,000 bytes exceeds the limit of 65,536 bytes"]
    assert {header(r, "payload_bytes") for r in dead} == {"200000", "60000"}
    assert pipeline.stack.status(["gateway"])[0].state == "up"


def test_a_kafka_tombstone_stops_nothing(pipeline, job):
    machine = 1_100_001
    dlq = pipeline.end_offsets(DEAD_LETTER_TOPIC)
    (tombstone, *_) = pipeline.produce([(b"1", None)] + [(str(machine).encode(), v) for v in good(machine, 200)])

    assert pipeline.wait_for_rows(f"sensor_id = {machine}", 200) == 200
    dead = pipeline.records_since(
        DEAD_LETTER_TOPIC, dlq,
        lambda r: (header(r, "kafka_partition"), header(r, "kafka_offset")) == tuple(map(str, tombstone)), 1)
    assert len(dead) == 1 and dead[0].value is None
    assert header(dead[0], "reason").startswith("no payload (a null value")
    assert header(dead[0], "source") == "streaming"


def test_the_whole_corpus_over_mqtt_is_dead_lettered_once_each_and_the_readings_flow(pipeline, job):
    machine = 1_100_002
    topic = f"iot/{machine}"
    sendable = [p for p in CORPUS if p.mqtt]
    readings = good(machine, 1_000)
    messages = []
    for i, payload in enumerate(readings):
        messages.append((topic, payload, False))
        if i % 30 == 0 and i // 30 < len(sendable):
            messages.append((topic, sendable[i // 30].make(), False))
    retained = BY_NAME["wrong_type"].make().replace(b"fast", b"retained")
    messages.append((topic, retained, True))
    dlq = pipeline.end_offsets(DEAD_LETTER_TOPIC)
    try:
        pipeline.publish(messages)
        assert pipeline.wait_for_rows(f"sensor_id = {machine}", 1_000) == 1_000
        dead = pipeline.records_since(DEAD_LETTER_TOPIC, dlq, lambda r: header(r, "mqtt_topic") == topic,
                                      len(sendable) + 1)
        reasons = [header(r, "reason") for r in dead]
        assert len(dead) == len(sendable) + 1, reasons
        for poison in sendable:
            assert sum(bool(re.search(poison.reason, reason)) for reason in reasons) >= 1, poison.name
        assert reasons.count("sensor_3: must be a number, got str 'retained'") == 1
        assert pipeline.stack.status(["gateway"])[0].state == "up"

        # A retained poison message is not delivered again when the gateway comes back (its subscription exists).
        dlq = pipeline.end_offsets(DEAD_LETTER_TOPIC)
        pipeline.stack.down(["gateway"])
        pipeline.stack.up(["gateway"])
        pipeline.publish([(topic, payload, False) for payload in good(machine, 10, 1_800_000_000_000_000)])
        assert pipeline.wait_for_rows(f"sensor_id = {machine}", 1_010) == 1_010
        assert pipeline.records_since(DEAD_LETTER_TOPIC, dlq, lambda r: header(r, "mqtt_topic") == topic, 1,
                                      timeout_s=5) == []
    finally:
        pipeline.publish([(topic, b"", True)])  # an empty retained message deletes the retained one


def test_the_whole_corpus_straight_into_kafka_is_dead_lettered_by_the_job(pipeline, job):
    machine = 1_100_003
    producible = [p for p in CORPUS if p.kafka]
    records, positions_of = [], {}
    for i, payload in enumerate(good(machine, 1_000)):
        records.append((str(machine).encode(), payload))
        if i % 30 == 0 and i // 30 < len(producible):
            value = producible[i // 30].make()
            records.append((None if value is not None else b"tombstone", value))  # null keys too
    dlq = pipeline.end_offsets(DEAD_LETTER_TOPIC)
    positions = pipeline.produce(records)
    for (key, _), position in zip(records, positions, strict=True):
        if key != str(machine).encode():
            positions_of[position] = producible[len(positions_of)]

    assert pipeline.wait_for_rows(f"sensor_id = {machine}", 1_000) == 1_000
    mine = {tuple(map(str, position)) for position in positions_of}
    dead = pipeline.records_since(
        DEAD_LETTER_TOPIC, dlq, lambda r: (header(r, "kafka_partition"), header(r, "kafka_offset")) in mine, len(mine))
    assert len(dead) == len(producible)
    for record in dead:
        poison = positions_of[(int(header(record, "kafka_partition")), int(header(record, "kafka_offset")))]
        assert re.search(poison.reason, header(record, "reason")), (poison.name, header(record, "reason"))
        assert header(record, "kind") == "invalid"
