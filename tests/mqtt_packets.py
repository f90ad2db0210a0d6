"""Hypothesis strategies for MQTT v5 packets a broker could send, built with paho's own packing."""

from __future__ import annotations

from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)


@st.composite
def publish_properties(draw) -> bytes:
    """MQTT v5 PUBLISH properties, packed by paho (none, some, or all of them, user properties repeated)."""
    properties = Properties(PacketTypes.PUBLISH)
    if draw(st.booleans()):
        properties.PayloadFormatIndicator = draw(st.integers(0, 1))
    if draw(st.booleans()):
        properties.MessageExpiryInterval = draw(st.integers(0, 2**32 - 1))
    if draw(st.booleans()):
        properties.ContentType = draw(TEXT)
    if draw(st.booleans()):
        properties.ResponseTopic = draw(TEXT)
    if draw(st.booleans()):
        properties.CorrelationData = draw(st.binary(max_size=20))
    if draw(st.booleans()):
        properties.TopicAlias = draw(st.integers(1, 65535))
    for pair in draw(st.lists(st.tuples(TEXT, TEXT), max_size=3)):
        properties.UserProperty = pair
    return properties.pack()


@st.composite
def publish_packets(draw) -> bytes:
    """A well-formed MQTT v5 PUBLISH body: topic, message id (for QoS > 0: drawn anyway), properties, payload."""
    topic = draw(st.binary(max_size=30))
    mid = draw(st.binary(min_size=2, max_size=2))
    return (len(topic).to_bytes(2, "big") + topic + mid + draw(publish_properties())
            + draw(st.binary(max_size=50)))
