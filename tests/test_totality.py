"""What the gateway and the streaming job make of any input, without services: every payload becomes exactly one
record (a reading, or a dead letter whose reason encodes as a Kafka header), and every batch of Kafka records
becomes rows that Spark's Arrow conversion takes, whatever the mix (the job's schema, its serializer)."""

from __future__ import annotations

import numpy as np
import paho.mqtt.client as mqtt
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyspark.sql.pandas.serializers import ArrowStreamPandasSerializer
from pyspark.sql.pandas.types import to_arrow_type

from contract import MAX_NESTING, MAX_PAYLOAD_BYTES, parse_reading
from gateway.bridge import GatewaySettings, route
from model.client import Scored
from runtime.settings import DEAD_LETTER_TOPIC, IOT_TOPIC
from streaming.kafka_to_kudu import OUTPUT_SCHEMA
from streaming.scoring import KeyTracker, check_records, scored_frame, typed
from tests.poison import CORPUS, UNUSUAL_READINGS, reading

SETTINGS = GatewaySettings("127.0.0.1", 1883, "u", "p", "127.0.0.1:9092", "gw-test")
payloads = st.one_of(st.binary(max_size=4096), st.sampled_from([p.make() or b"" for p in CORPUS]),
                     st.sampled_from(list(UNUSUAL_READINGS.values())),
                     st.builds(lambda ts, v: reading(sensor_ts=ts, sensor_3=v),
                               st.integers(946_684_800_000_000, 4_102_444_800_000_000),
                               st.floats(-1e5, 1e6)))


def message(payload: bytes, topic: bytes = b"iot/48") -> mqtt.MQTTMessage:
    received = mqtt.MQTTMessage(mid=7, topic=topic)
    received.payload, received.qos = payload, 1
    return received


@settings(max_examples=400, deadline=None)
@given(payloads, st.binary(min_size=1, max_size=40))
def test_the_gateway_routes_any_payload_on_any_topic_to_exactly_one_record(payload, topic):
    record = route(message(payload, topic), SETTINGS, connection=3)
    assert (record.mid, record.qos, record.connection) == (7, 1, 3)
    if record.outcome == "produced":
        assert record.topic == IOT_TOPIC
        forwarded = parse_reading(record.value)  # what the gateway writes is itself a reading
        assert forwarded["gateway_id"] == "gw-test" and record.key == str(forwarded["sensor_id"]).encode()
    else:
        headers = dict(record.headers)
        assert record.topic == DEAD_LETTER_TOPIC and headers["reason"]
        assert record.value == payload[: SETTINGS.dead_letter_max_bytes]
        assert int(headers["payload_bytes"]) == len(payload)


def test_an_oversized_payload_is_dead_lettered_with_as_much_as_the_topic_takes():
    huge = b"x" * (3 * 1024 * 1024)
    record = route(message(huge), SETTINGS, 0)
    assert record.outcome == "dead_lettered" and len(record.value) == SETTINGS.dead_letter_max_bytes
    assert dict(record.headers)["reason"] == b"payload of 3,145,728 bytes exceeds the limit of 65,536 bytes"


kafka_values = st.one_of(st.none(), payloads)


def arrow_columns(frame: pd.DataFrame) -> None:
    """Convert each column as Spark's mapInPandas does for the job's OUTPUT_SCHEMA (raises if it cannot)."""
    serializer = ArrowStreamPandasSerializer("UTC", True)
    for field in OUTPUT_SCHEMA.fields:
        serializer._create_array(frame[field.name], to_arrow_type(field.dataType), field.dataType, arrow_cast=True)


@settings(max_examples=200, deadline=None)
@given(st.lists(kafka_values, max_size=30))
def test_the_job_makes_rows_spark_can_take_of_any_batch(values):
    batch = pd.DataFrame({"value": values, "partition": [0] * len(values), "offset": range(len(values))})
    good, dead = check_records(batch, KeyTracker(), MAX_PAYLOAD_BYTES, MAX_NESTING)
    assert len(good) + len(dead) <= len(values)  # repeats of a reading are dropped, nothing else
    frames = [pd.DataFrame(dead, columns=["value", "reason", "field", "partition", "offset"]).assign(kind="dead")]
    if good:
        frame, refused = scored_frame(good, good.feature_matrix(),
                                      Scored.by_one_model(np.ones(len(good), dtype=np.int8), 3), {})
        frames.append(frame)
    out = typed(pd.concat(frames, ignore_index=True).reindex(columns=[f.name for f in OUTPUT_SCHEMA.fields]))
    arrow_columns(out)


def test_a_repeat_is_dropped_and_a_different_reading_under_the_same_key_is_a_conflict():
    first, other = reading(), reading(sensor_3=9)
    batch = pd.DataFrame({"value": [first, first, other, other], "partition": [0] * 4, "offset": range(4)})
    good, dead = check_records(batch, KeyTracker(), MAX_PAYLOAD_BYTES, MAX_NESTING)
    assert dead == [] and good.offsets == [0, 2]
    assert good.conflicts[0] is None
    assert good.conflicts[1] == ("conflict: a different reading under this key (sensor_id=48, "
                                   "sensor_ts=1556758787735011) came earlier in the batch and is kept; "
                                   "sensor_3: 2.0 kept, 9.0 here")


@pytest.mark.parametrize("poison", CORPUS, ids=lambda p: p.name)
def test_every_poison_reaches_the_dead_letter_topic_from_the_gateway_or_the_job(poison):
    payload = poison.make()
    if poison.mqtt:
        assert route(message(payload), SETTINGS, 0).outcome == "dead_lettered"
    if poison.kafka:
        batch = pd.DataFrame({"value": [payload], "partition": [1], "offset": [5]})
        good, dead = check_records(batch, KeyTracker(), MAX_PAYLOAD_BYTES, MAX_NESTING)
        assert len(good) == 0 and len(dead) == 1 and dead[0][3:] == (1, 5)
