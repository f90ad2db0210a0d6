"""MQTT clients with the stack's credentials, and reading the retained messages under a topic filter.

    client = mqtt_client(settings, "my-client")         # settings: MQTT_HOST, MQTT_PORT, MQTT_USERNAME, MQTT_PASSWORD
    retained = retained_messages(settings, "jobs/+/status")   # {topic: payload} of every retained message there

`BufferedClient`: paho's client with far fewer system calls per message, for a process that receives thousands of
messages a second and acknowledges each (the gateway); with it, paho's MQTT v5 properties share their tables
(`SharedTableProperties`).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import uuid
from collections.abc import Mapping

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

READ_CHUNK = 256 * 1024
PACKETS_PER_READ = 1000  # packets handled per wakeup before the network thread writes (acknowledgements) again
MERGED_PACKETS = 10_000  # packets at most in one write


def mqtt_client(settings: Mapping[str, str], client_id: str, manual_ack: bool = False) -> mqtt.Client:
    """An MQTT v5 client with the stack's credentials (MQTT_USERNAME/MQTT_PASSWORD of `settings`), reconnecting
    with backoff (1 s doubling to 30 s). Not yet connected: `client.connect(settings["MQTT_HOST"], port)`."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                         manual_ack=manual_ack)
    if settings.get("MQTT_USERNAME"):
        client.username_pw_set(settings["MQTT_USERNAME"], settings.get("MQTT_PASSWORD", ""))
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    return client


def connect(client: mqtt.Client, settings: Mapping[str, str], timeout_s: float = 10.0) -> None:
    """Connect and start the network thread; returns once the broker accepted, raises ConnectionError otherwise."""
    accepted = threading.Event()
    refused: list[str] = []

    def on_connect(_client, _userdata, _flags, reason, _properties) -> None:
        if reason.is_failure:
            refused.append(str(reason))
        accepted.set()

    previous = client.on_connect
    client.on_connect = on_connect
    try:
        client.connect(settings["MQTT_HOST"], int(settings["MQTT_PORT"]))
        client.loop_start()
        if not accepted.wait(timeout_s) or refused:
            client.loop_stop()
            why = refused[0] if refused else f"no answer within {timeout_s:g} s"
            raise ConnectionError(f"MQTT broker {settings['MQTT_HOST']}:{settings['MQTT_PORT']} refused: {why}")
    finally:
        client.on_connect = previous


def retained_messages(settings: Mapping[str, str], topic_filter: str, timeout_s: float = 10.0) -> dict[str, bytes]:
    """Every retained message under `topic_filter`, {topic: payload}.

    The broker sends a subscription's retained messages before anything published after it, so after subscribing
    we publish to a topic of our own, also subscribed: once that comes back, every retained message has arrived."""
    fence = f"fence/{uuid.uuid4().hex}"
    found: dict[str, bytes] = {}
    done = threading.Event()

    def on_message(_client, _userdata, message: mqtt.MQTTMessage) -> None:
        if message.topic == fence:
            done.set()
        elif message.retain:
            found[message.topic] = bytes(message.payload)

    def on_subscribe(client, _userdata, _mid, _codes, _properties) -> None:
        client.publish(fence, b"", qos=1)

    client = mqtt_client(settings, f"retained-{uuid.uuid4().hex[:12]}")
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    connect(client, settings, timeout_s)
    try:
        client.subscribe([(topic_filter, SubscribeOptions(qos=1)), (fence, SubscribeOptions(qos=1))])
        if not done.wait(timeout_s):
            raise TimeoutError(f"the retained messages of {topic_filter} did not arrive within {timeout_s:g} s")
    finally:
        client.disconnect()
        client.loop_stop()
    return found


class BufferedSocket:
    """A socket read in large chunks, served to paho in the small pieces it asks for (1 byte of packet type, the
    length bytes one at a time, then the body: 3-4 system calls per message otherwise). `pending()` is what paho
    asks a TLS socket: while it is not 0, paho reads again without waiting in select()."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._chunk = b""
        self._at = 0

    def recv(self, size: int) -> bytes:
        if self._at >= len(self._chunk):
            self._chunk, self._at = self._sock.recv(READ_CHUNK), 0  # BlockingIOError when nothing came; b"" at EOF
        piece = self._chunk[self._at:self._at + size]
        self._at += len(piece)
        return piece

    def pending(self) -> int:
        return len(self._chunk) - self._at

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


class BufferedClient(mqtt.Client):
    """paho's client (2.1, pinned) reading and writing in bulk; its API and behaviour are paho's. For processes that
    move thousands of messages a second (the gateway, the simulator), with the network thread (`loop_start()`).

    - Reads: the socket is a BufferedSocket, and one wakeup of the network thread handles every packet its chunk
      holds (up to PACKETS_PER_READ), not one.
    - Writes: paho wakes its network thread with a byte on a socket pair for every packet queued (a publish, an
      acknowledgement); here only the first publication or acknowledgement queued since the last write does (any
      other packet takes paho's own path), and the publications (QoS 1 and 2) and acknowledgements queued
      meanwhile leave in one send().
    - Received MQTT v5 messages of QoS 0 and 1 (`_handle_publish`) cost less; `on_message` is called directly while
      no `message_callback_add` filter exists (`_handle_on_message`).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._woken: socket.socket | None = None  # the wakeup socket written to since the queue was last written
        self._filtered = False  # whether message_callback_add was ever called: paho's matcher is needed then
        mqtt.Properties = SharedTableProperties  # what paho's client makes for each packet it receives

    def message_callback_add(self, sub: str, callback) -> None:
        self._filtered = True
        super().message_callback_add(sub, callback)

    def _handle_publish(self) -> mqtt.MQTTErrorCode:
        """paho's, with less work for each MQTT v5 message of QoS 0 or 1: no struct format built for each, no topic
        decoded for a debug log that no logger takes, empty properties not unpacked, and no Condition made for the
        MQTTMessageInfo of a received message (they share one: it only serves publications). The same message, or
        the same exception, as paho's (tests/test_mqtt_publish.py); anything else takes paho's own path."""
        header = self._in_packet["command"]
        qos = (header & 0x06) >> 1
        if self._protocol != mqtt.MQTTv5 or qos > 1 or self._logger is not None or self._on_log is not None:
            return super()._handle_publish()
        packet = bytes(self._in_packet["packet"])  # a bytearray: its slices would be too, paho's are bytes
        (topic_end,) = _UINT16.unpack_from(packet)  # struct.error when too short, as paho's unpack
        topic_end += 2
        if topic_end > len(packet):
            raise struct.error("the topic is longer than the packet")
        message = mqtt.MQTTMessage.__new__(mqtt.MQTTMessage)
        message.state, message.info, message.mid = mqtt.mqtt_ms_invalid, _RECEIVED_INFO, 0
        message.dup, message.qos, message.retain = bool(header & 0x08), qos, bool(header & 0x01)
        message._topic = packet[2:topic_end]
        at = topic_end
        if qos:
            (message.mid,) = _UINT16.unpack_from(packet, at)
            at += 2
        message.properties = SharedTableProperties(PacketTypes.PUBLISH)
        if packet[at:at + 1] == b"\x00":  # no properties: a length of 0
            at += 1
        else:
            at += message.properties.unpack(packet[at:])[1]
        message.payload = packet[at:]
        message.timestamp = mqtt.time_func()
        self._handle_on_message(message)
        if qos and not self._manual_ack:
            return self._send_puback(message.mid)
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        """paho's, without its topic matcher (and the topic's decoding) while no filter callback exists."""
        if self._filtered:
            super()._handle_on_message(message)
            return
        on_message = self._on_message
        if on_message:
            with self._in_callback_mutex:
                try:
                    on_message(self, self._userdata, message)
                except Exception as err:
                    self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                    if not self.suppress_exceptions:
                        raise

    def _create_socket(self):
        sock = super()._create_socket()
        return BufferedSocket(sock) if isinstance(sock, socket.socket) else sock  # not TLS or websockets

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        rc = super().loop_read(max_packets)
        for _ in range(PACKETS_PER_READ):
            sock = self._sock
            if rc != mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS or not isinstance(sock, BufferedSocket) or not sock.pending():
                break
            rc = super().loop_read(max_packets)
        return rc

    def _handle_pubackcomp(self, cmd: str) -> mqtt.MQTTErrorCode:
        """An MQTT 3.1.1 PUBACK (the message id alone) without the ReasonCode and Properties paho makes for each
        (a fifth of a publisher's CPU): on_publish gets shared ones, which it must not change."""
        if self._protocol == mqtt.MQTTv5 or cmd != "PUBACK" or self._in_packet["remaining_length"] != 2:
            return super()._handle_pubackcomp(cmd)
        (mid,) = struct.unpack("!H", self._in_packet["packet"][:2])
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, _PUBACK_SUCCESS, _PUBACK_PROPERTIES)
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    def _packet_queue(self, command, packet, mid, qos, info=None) -> mqtt.MQTTErrorCode:
        wakeup = self._sockpairW
        if (wakeup is None or self._thread is None or self._on_socket_register_write is not None
                or command & 0xF0 not in (mqtt.PUBACK, mqtt.PUBLISH)):
            # No network thread of paho's own, or a rare packet (CONNECT, SUBSCRIBE, PINGREQ, DISCONNECT, ...):
            # paho's own path, which always wakes the network thread.
            return super()._packet_queue(command, packet, mid, qos, info)
        self._out_packet.append({"command": command, "mid": mid, "qos": qos, "pos": 0, "to_process": len(packet),
                                 "packet": packet, "info": info})
        # Queued before the check: a wakeup pending now writes this packet too (it is forgotten before the queue is
        # written). A reconnection makes a new wakeup socket: one sent to the old one is not pending.
        if self._woken is not wakeup:
            self._woken = wakeup
            with contextlib.suppress(BlockingIOError):  # full of wakeups already
                wakeup.send(b"0")
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    def _packet_write(self) -> mqtt.MQTTErrorCode:
        self._woken = None
        self._merge_head()
        return super()._packet_write()

    def _merge_head(self) -> None:
        """The packets at the head of the queue that paho does nothing with once written (acknowledgements, QoS 1
        and 2 publications; none partly written) as one packet: one send()."""
        queue, packets = self._out_packet, []
        while queue and len(packets) < MERGED_PACKETS and _mergeable(queue[0]):
            packets.append(queue.popleft())
        if len(packets) == 1:
            queue.appendleft(packets[0])
        elif packets:
            merged = b"".join(packet["packet"] for packet in packets)
            queue.appendleft({"command": mqtt.PUBACK, "mid": 0, "qos": 0, "pos": 0, "to_process": len(merged),
                              "packet": merged, "info": None})


_TABLES = Properties(PacketTypes.PUBLISH)
_PROPERTY_NAMES = frozenset(name.replace(" ", "") for name in _TABLES.names)


class SharedTableProperties(Properties):
    """paho's MQTT v5 Properties, answering the same (tests/test_mqtt_properties.py), without building its tables
    again for every instance.

    paho's client makes one for every MQTT v5 packet it receives: every message the gateway takes. Its __init__
    builds two dicts of the 27 property kinds (~12 us), and unpack() first clears all 27 by name (~15 us): ~28 us a
    message, a sixth of the gateway's CPU. Here the tables are shared (paho never changes them), and clear()
    deletes only the properties set."""

    def __init__(self, packetType: int):
        for name in ("types", "names", "properties"):
            object.__setattr__(self, name, getattr(_TABLES, name))
        object.__setattr__(self, "packetType", packetType)

    def clear(self) -> None:
        for name in [name for name in vars(self) if name in _PROPERTY_NAMES]:
            delattr(self, name)


_UINT16 = struct.Struct("!H")
_RECEIVED_INFO = mqtt.MQTTMessageInfo(0)
_PUBACK_SUCCESS = ReasonCode(PacketTypes.PUBACK)
_PUBACK_PROPERTIES = Properties(PacketTypes.PUBACK)


def _mergeable(packet: dict) -> bool:
    """paho acts on a QoS 0 publication (on_publish) and a DISCONNECT once written; on nothing else we merge."""
    kind = packet["command"] & 0xF0
    return packet["pos"] == 0 and (kind == mqtt.PUBACK or kind == mqtt.PUBLISH and packet["qos"] > 0)
