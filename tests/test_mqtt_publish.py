"""runtime.mqtt.BufferedClient receives a PUBLISH as paho's client does, for any bytes a broker could send: the same
message to on_message (flags, topic, message id, properties, payload), the same acknowledgement, or the same
error (Hypothesis, over arbitrary bytes and over packets built from paho's own properties)."""

from __future__ import annotations

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.mqtt import BufferedClient
from tests.mqtt_packets import publish_packets

HEADERS = st.integers(0, 0x0F).map(lambda flags: mqtt.PUBLISH | flags)  # dup, QoS 0-3, retain


def received(client_class: type[mqtt.Client], header: int, packet: bytes, manual_ack: bool) -> tuple:
    """What a client of `client_class` makes of one PUBLISH packet: the message on_message got, what it queued to
    send (a PUBACK), and the return code; or the error."""
    client = client_class(mqtt.CallbackAPIVersion.VERSION2, client_id="test", protocol=mqtt.MQTTv5,
                          manual_ack=manual_ack)
    messages: list[mqtt.MQTTMessage] = []
    client.on_message = lambda _client, _userdata, message: messages.append(message)
    client._in_packet["command"] = header
    client._in_packet["packet"] = bytearray(packet)
    try:
        rc = client._handle_publish()
    except Exception as exc:  # noqa: BLE001 - the error is the outcome compared
        return "error", type(exc)
    seen = [(m.dup, m.qos, m.retain, m._topic, type(m._topic), m.mid, m.payload, type(m.payload),
             m.properties.json(), m.state, m.info.mid) for m in messages]
    queued = [bytes(out["packet"]) for out in client._out_packet]
    return rc, seen, queued


@pytest.mark.parametrize("manual_ack", [True, False])
@given(header=HEADERS, packet=st.binary(max_size=64))
def test_any_bytes_are_received_as_paho_receives_them(manual_ack, header, packet):
    assert received(BufferedClient, header, packet, manual_ack) == received(mqtt.Client, header, packet, manual_ack)


@pytest.mark.parametrize("manual_ack", [True, False])
@given(header=HEADERS, packet=publish_packets())
def test_well_formed_publications_are_received_as_paho_receives_them(manual_ack, header, packet):
    ours = received(BufferedClient, header, packet, manual_ack)
    assert ours == received(mqtt.Client, header, packet, manual_ack)
    if (header & 0x06) >> 1 < 2:
        assert ours[1], "a QoS 0 or 1 publication reaches on_message"


def test_a_filter_callback_is_still_served():
    client = BufferedClient(mqtt.CallbackAPIVersion.VERSION2, client_id="test", protocol=mqtt.MQTTv5)
    filtered, general = [], []
    client.message_callback_add("a/+", lambda _c, _u, message: filtered.append(message.topic))
    client.on_message = lambda _c, _u, message: general.append(message.topic)
    for topic in (b"a/1", b"b/1"):
        client._in_packet["command"] = mqtt.PUBLISH
        client._in_packet["packet"] = bytearray(len(topic).to_bytes(2, "big") + topic + b"\x00payload")
        client._handle_publish()
    assert (filtered, general) == (["a/1"], ["b/1"])
