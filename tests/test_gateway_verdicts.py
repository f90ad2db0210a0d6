"""The gateway carries the edge agents' verdicts: MQTT `verdicts/<sensor_id>` -> Kafka `iot.verdicts`.

Without services: what a message on a verdicts topic becomes (the verdict as the contract writes it, keyed by
sensor_id, or a dead letter naming the field), how topics are told apart (raw bytes, MQTT wildcards), the
subscriptions of one worker and of several, the counters and metrics, the options; Hypothesis over any bytes on
any verdicts topic.
Against the session's stack (`stack`), whose gateway carries verdicts: verdicts arrive in `iot.verdicts`, bad ones
and the poison corpus in `iot.dlq` with their reasons, and the gateway stays up and carries the next one.
"""

from __future__ import annotations

import json
import random
import time

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from contract import VERDICT_FIELDS, InvalidReading, parse_verdict, verdict_json
from gateway.__main__ import parse_args
from gateway.bridge import DEAD_LETTER_REASONS, VERDICT, Counters, GatewaySettings, Outgoing, route, topic_matcher
from gateway.metrics import GatewayMetrics
from runtime.health import is_up
from runtime.settings import DEAD_LETTER_TOPIC, IOT_TOPIC, MQTT_VERDICTS_FILTER, VERDICTS_TOPIC
from tests.poison import CORPUS, reading

SETTINGS = GatewaySettings("127.0.0.1", 1, "user", "secret", "127.0.0.1:1", "gw-test")
VERDICT_ = {"sensor_id": 940_000, "sensor_ts": 1_764_150_000_000_000, "is_healthy": 1, "model_version": 3,
            "agent_id": "edge-1", "scored_ts": 1_764_150_000_004_000}


def message(payload: bytes | None, topic: bytes = b"verdicts/940000") -> mqtt.MQTTMessage:
    received = mqtt.MQTTMessage(mid=9, topic=topic)
    received.payload, received.qos = payload, 1
    return received


def variant(**changes: object) -> bytes:
    return json.dumps({**VERDICT_, **changes}).encode()


def headers(record: Outgoing) -> dict[str, str]:
    return {name: value.decode() for name, value in record.headers}


# -- what a message on a verdicts topic becomes --

def test_a_verdict_goes_to_iot_verdicts_keyed_by_its_machine_as_the_contract_writes_it():
    spaced = json.dumps({**VERDICT_, "extra": "dropped"}, indent=2).encode()
    record = route(message(spaced), SETTINGS, connection=4)
    assert record == Outgoing(VERDICTS_TOPIC, b"940000", verdict_json(VERDICT_), None, "produced", 9, 1, 4,
                              kind=VERDICT)


def test_the_topic_is_told_by_its_raw_bytes_even_when_not_utf8():
    assert route(message(verdict_json(VERDICT_), b"verdicts/\xff\xfe"), SETTINGS, 0).topic == VERDICTS_TOPIC
    letter = route(message(b"{", b"verdicts/\xff"), SETTINGS, 0)
    assert headers(letter)["mqtt_topic"] == "verdicts/\\xff" and letter.kind == VERDICT


@pytest.mark.parametrize("topic", [b"iot/940000", b"verdictsx/1", b"iot/verdicts/1"])
def test_other_topics_carry_readings(topic):
    assert route(message(reading(), topic), SETTINGS, 0).topic == IOT_TOPIC
    assert route(message(verdict_json(VERDICT_), topic), SETTINGS, 0).topic == DEAD_LETTER_TOPIC


def test_with_verdicts_off_a_verdicts_topic_is_taken_as_readings():
    off = GatewaySettings("h", 1, "u", "p", "k:1", "gw", verdicts=False)
    assert route(message(verdict_json(VERDICT_)), off, 0).reason == "sensor_0"


@pytest.mark.parametrize("payload, field, category, reason", [
    (b"", "", "not_json", "not JSON"),
    (None, "", "unreadable", "no payload"),
    (b"\xff\xfe{", "", "not_json", "not JSON"),
    (b"[1, 2]", "", "not_an_object", "not a JSON object but list"),
    (b'{"a": [1]}', "", "too_deep", "nested deeper than 1 levels"),
    (b"x" * 70_000, "", "too_large", "payload of 70,000 bytes exceeds"),
    (json.dumps({k: v for k, v in VERDICT_.items() if k != "agent_id"}).encode(), "agent_id", "agent_id",
     "agent_id: missing"),
    (variant(agent_id="edge 1"), "agent_id", "agent_id", "agent_id: 'edge 1' must match"),
    (variant(is_healthy=2), "is_healthy", "is_healthy", "is_healthy: must be 1 or 0, got 2"),
    (variant(model_version=None), "model_version", "model_version", "model_version: must be an integer"),
    (variant(scored_ts=5), "scored_ts", "scored_ts", "scored_ts: 5 is outside"),
    (variant(sensor_id="940000"), "sensor_id", "sensor_id", "sensor_id: must be an integer, got str"),
    (variant(sensor_ts=True), "sensor_ts", "sensor_ts", "sensor_ts: must be an integer, got bool"),
    (variant()[:-1] + b', "agent_id": "edge-2"}', "agent_id", "agent_id", "agent_id: duplicate key"),
    (variant(note=float("nan")), "note", "extra_field", "note: nan is not a finite number"),
    (variant()[:-1] + b', "sensor_0": 1, "sensor_0": 2}', "sensor_0", "extra_field", "sensor_0: duplicate key"),
])
def test_what_is_not_a_verdict_is_a_dead_letter_like_a_bad_reading(payload, field, category, reason):
    letter = route(message(payload), SETTINGS, 0)
    assert (letter.topic, letter.key, letter.outcome, letter.reason, letter.kind) == (
        DEAD_LETTER_TOPIC, b"verdicts/940000", "dead_lettered", category, VERDICT)
    assert letter.value == (payload or b"")[: SETTINGS.dead_letter_max_bytes]
    assert headers(letter)["reason"].startswith(reason)
    assert {name: headers(letter)[name] for name in ("field", "mqtt_topic", "gateway_id", "payload_bytes")} == {
        "field": field, "mqtt_topic": "verdicts/940000", "gateway_id": "gw-test",
        "payload_bytes": str(len(payload or b""))}
    assert category in DEAD_LETTER_REASONS


def without(name: str) -> bytes:
    return json.dumps({k: v for k, v in VERDICT_.items() if k != name}).encode()


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
verdict_like = st.one_of(
    st.dictionaries(st.sampled_from([*VERDICT_FIELDS, "x"]), json_scalars, max_size=3).map(lambda c: variant(**c)),
    st.sampled_from(VERDICT_FIELDS).map(without), st.just(verdict_json(VERDICT_)))
payloads = st.one_of(st.binary(max_size=600), st.sampled_from([p.make() or b"" for p in CORPUS if p.mqtt]),
                     verdict_like)


@settings(max_examples=500, deadline=None)
@given(payloads, st.binary(max_size=30))
def test_any_bytes_on_any_verdicts_topic_become_exactly_one_record(payload, level):
    record = route(message(payload, b"verdicts/" + level), SETTINGS, connection=2)
    assert (record.mid, record.qos, record.connection, record.kind) == (9, 1, 2, VERDICT)
    if record.outcome == "produced":
        verdict = parse_verdict(payload)
        assert (record.topic, record.key, record.value) == (VERDICTS_TOPIC, str(verdict["sensor_id"]).encode(),
                                                            verdict_json(verdict))
        return
    with pytest.raises(InvalidReading):
        parse_verdict(payload)
    assert record.topic == DEAD_LETTER_TOPIC and record.reason in DEAD_LETTER_REASONS
    assert headers(record)["reason"] and int(headers(record)["payload_bytes"]) == len(payload)
    assert record.value == payload[: SETTINGS.dead_letter_max_bytes]


# -- topics and subscriptions --

@pytest.mark.parametrize("topic_filter, topic, matches", [
    ("verdicts/#", b"verdicts/7", True),
    ("verdicts/#", b"verdicts", True),
    ("verdicts/#", b"verdicts/a/b\n", True),
    ("verdicts/#", b"verdictsx/7", False),
    ("verdicts/#", b"iot/7", False),
    ("site/+/verdicts/#", b"site/a/verdicts/7", True),
    ("site/+/verdicts/#", b"site/a/b/verdicts/7", False),
    ("v/+", b"v/", True),
    ("v/+", b"v/a/b", False),
    ("v.x/#", b"vax/1", False),
    ("#", b"anything/\xff", True),
])
def test_a_topic_matches_a_filter_as_mqtt_says(topic_filter, topic, matches):
    assert bool(topic_matcher(topic_filter)(topic)) is matches


@pytest.mark.parametrize("workers, verdicts, wanted, dropped", [
    (1, True, ["iot/#", "verdicts/#"], ["$share/g/iot/#", "$share/g/verdicts/#"]),
    (2, True, ["$share/g/iot/#", "$share/g/verdicts/#"], ["iot/#", "verdicts/#"]),
    (1, False, ["iot/#"], ["$share/g/iot/#", "verdicts/#", "$share/g/verdicts/#"]),
    (3, False, ["$share/g/iot/#"], ["iot/#", "$share/g/verdicts/#", "verdicts/#"]),
])
def test_one_worker_subscribes_plainly_several_share_and_the_other_forms_are_dropped(workers, verdicts, wanted,
                                                                                    dropped):
    options = GatewaySettings("h", 1, "u", "p", "k:1", "gw", share_group="g", workers=workers, verdicts=verdicts)
    assert options.subscriptions() == (wanted, dropped)


# -- counters, metrics, options --

def test_verdicts_are_counted_apart_from_readings_and_their_dead_letters_with_all_others():
    counters = Counters()
    for _ in range(6):
        counters.add("received")
    counters.delivered("produced", None, 0.003)
    counters.delivered("produced", None, 0.003, VERDICT)
    counters.delivered("produced", None, 0.003, VERDICT)
    counters.delivered("dead_lettered", "agent_id", 0.003, VERDICT)
    counters.delivered("dead_lettered", "not_json", 0.003)
    assert counters.as_dict() == {"received": 6, "produced": 1, "verdicts": 2, "dead_lettered": 2}
    assert "produced 1, verdicts 2, dead-lettered 2, in flight 1" in counters.line()[0]
    registry = CollectorRegistry()
    registry.register(GatewayMetrics(lambda: [counters.snapshot(), Counters().snapshot()]))
    samples = {(s.name, tuple(s.labels.values())): s.value
               for family in text_string_to_metric_families(generate_latest(registry).decode()) for s in family.samples}
    assert samples[("iot_gateway_verdicts_total", ("produced",))] == 2
    assert samples[("iot_gateway_verdicts_total", ("dead_lettered",))] == 1
    assert samples[("iot_gateway_produced_total", ())] == 1
    assert samples[("iot_gateway_dead_lettered_total", ("agent_id",))] == 1
    assert samples[("iot_gateway_in_flight", ())] == 1
    assert samples[("iot_gateway_kafka_ack_latency_seconds_count", ("produced",))] == 3


def test_the_options_and_their_defaults():
    args = parse_args([])
    assert (args.verdicts_filter, args.verdicts_topic, args.no_verdicts) == (MQTT_VERDICTS_FILTER, VERDICTS_TOPIC,
                                                                             False)
    args = parse_args(["--verdicts-filter", "site/+/verdicts/#", "--verdicts-topic", "v", "--no-verdicts"])
    assert (args.verdicts_filter, args.verdicts_topic, args.no_verdicts) == ("site/+/verdicts/#", "v", True)


@pytest.mark.parametrize("argv, says", [
    (["--verdicts-filter", "iot/#"], "argument --verdicts-filter: 'iot/#' is the readings' --topic-filter"),
    (["--verdicts-topic", "iot"], "argument --verdicts-topic: 'iot' is the --kafka-topic or the --dead-letter-topic"),
    (["--verdicts-topic", "iot.dlq"], "argument --verdicts-topic: 'iot.dlq' is the --kafka-topic"),
])
def test_verdicts_must_not_meet_readings_or_dead_letters(capsys, argv, says):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2 and says in capsys.readouterr().err
    parse_args([*argv, "--no-verdicts"])  # without verdicts, nothing to meet


# -- against the session's stack: its gateway carries verdicts --

@pytest.mark.stack
def test_the_stacks_gateway_carries_verdicts_and_dead_letters_the_rest_without_stopping(pipeline):
    gateway = next(service for service in pipeline.stack.services if service.name == "gateway")
    machines = range(940_100, 940_110)
    good = [{**VERDICT_, "sensor_id": machine, "is_healthy": machine % 2} for machine in machines]
    run = f"run-{time.time_ns()}"  # the dead letters' topics name this run: nothing else's are counted
    rng = random.Random(16)
    bad = [*(p.make() for p in CORPUS if p.mqtt), *(rng.randbytes(rng.randrange(200)) for _ in range(30)),
           variant(agent_id="edge 1"), variant(is_healthy=None)]
    offsets = {topic: pipeline.end_offsets(topic) for topic in (VERDICTS_TOPIC, DEAD_LETTER_TOPIC)}
    pipeline.publish([(f"verdicts/{v['sensor_id']}", verdict_json(v), False) for v in good[:5]]
                     + [(f"verdicts/{run}/{i}", payload, False) for i, payload in enumerate(bad)]
                     + [(f"verdicts/{v['sensor_id']}", json.dumps(v).encode(), False) for v in good[5:]])
    carried = pipeline.records_since(VERDICTS_TOPIC, offsets[VERDICTS_TOPIC],
                                     lambda r: r.key is not None and r.key.isdigit() and int(r.key) in machines,
                                     len(good))
    assert sorted((r.key, r.value) for r in carried) == sorted(
        (str(v["sensor_id"]).encode(), verdict_json(v)) for v in good)
    letters = pipeline.records_since(DEAD_LETTER_TOPIC, offsets[DEAD_LETTER_TOPIC],
                                     lambda r: (r.key or b"").startswith(f"verdicts/{run}/".encode()), len(bad))
    assert sorted(int(r.key.rsplit(b"/", 1)[1]) for r in letters) == list(range(len(bad)))
    for letter in letters:
        header = dict(letter.headers)
        assert header["reason"] and header["mqtt_topic"] == letter.key
        assert letter.value == bad[int(letter.key.rsplit(b"/", 1)[1])][: 512 * 1024]
    assert is_up(gateway.health_file)
