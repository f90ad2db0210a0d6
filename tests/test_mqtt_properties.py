"""runtime.mqtt.SharedTableProperties answers as paho's Properties does, for any bytes a broker could send: the
same properties, the same length read, or the same error (Hypothesis, over arbitrary bytes and over properties
packed by paho itself)."""

from __future__ import annotations

import paho.mqtt.client as mqtt
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from runtime.mqtt import BufferedClient, SharedTableProperties
from tests.mqtt_packets import publish_properties

PACKET_TYPES = st.sampled_from([PacketTypes.CONNECT, PacketTypes.CONNACK, PacketTypes.PUBLISH, PacketTypes.PUBACK,
                                PacketTypes.SUBACK, PacketTypes.DISCONNECT, PacketTypes.AUTH,
                                PacketTypes.WILLMESSAGE])
def outcome(properties: Properties, buffer: bytes) -> tuple:
    """What unpacking `buffer` gives: the properties and the length read, or the error."""
    try:
        _, length = properties.unpack(buffer)
    except Exception as exc:  # noqa: BLE001 - the error is the outcome compared
        return "error", type(exc), str(exc)
    return length, properties.json(), str(properties), properties.isEmpty()


@given(PACKET_TYPES, st.binary(max_size=64))
def test_any_bytes_unpack_the_same_as_with_paho(packet_type, buffer):
    assert outcome(SharedTableProperties(packet_type), buffer) == outcome(Properties(packet_type), buffer)


@given(publish_properties(), publish_properties())
def test_properties_packed_by_paho_unpack_the_same_even_into_a_reused_instance(first, second):
    shared = SharedTableProperties(PacketTypes.PUBLISH)
    assert outcome(shared, first + b"payload") == outcome(Properties(PacketTypes.PUBLISH), first + b"payload")
    assert outcome(shared, second) == outcome(Properties(PacketTypes.PUBLISH), second)  # the first's are cleared


def test_a_buffered_client_makes_paho_receive_with_them():
    BufferedClient(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    assert mqtt.Properties is SharedTableProperties
