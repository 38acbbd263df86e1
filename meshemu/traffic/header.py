"""The meshemu traffic header: one Scapy layer, and a fast path that patches a template.

Every packet the traffic agents send is ``IP / UDP(sport=47000, dport=47000) /
MeshemuHeader / padding``. The header (36 bytes, network byte order)::

     0      2  3  4          8         12        16     18       20                28        32
     +------+--+--+----------+---------+---------+------+--------+-----------------+---------+
     |magic |v |k | flow_id  | msg_id  |  seq    | frag |n_frags |    send_ns      |msg_bytes|
     +------+--+--+----------+---------+---------+------+--------+-----------------+---------+
     32     34     36
     | flags| rsvd |   (then the payload: zero padding, or a NACK's list of missing fragments)

``kind`` says what the packet is (:data:`KIND_NAMES`); ``seq`` counts every packet a sender
puts on a flow (retransmissions included), ``frag``/``n_frags`` place the packet in its
message, ``msg_bytes`` is the message's size, ``send_ns`` the sender's ``time.time_ns()``
(all agents run on one host, so receivers compute one-way delays from it).

Building each packet with Scapy costs ~100 us; the agents instead build one template per
message with Scapy (:func:`template`) and patch the changing fields in place with
``struct.pack_into`` at the offsets in :data:`HEADER` (:func:`patch`). ``tests/unit/
test_traffic_header.py`` proves that the patched bytes equal Scapy's build and dissect back.
"""

from __future__ import annotations

import struct

from scapy.fields import (
    ByteEnumField,
    ByteField,
    FlagsField,
    IntField,
    LongField,
    ShortField,
    XShortField,
)
from scapy.layers.inet import UDP
from scapy.packet import Packet, Raw, bind_layers

#: UDP port of the agents (source and destination).
PORT = 47000
MAGIC = 0x4D45  # "ME"
VERSION = 1

#: ``kind`` values.
DATA = 0  # a fragment of a message (collective transfer, request, response, bulk, replay)
ACK = 1  # the receiver has the whole message (flow_id, msg_id)
NACK = 2  # the receiver misses fragments: payload = big-endian u16 fragment numbers
KIND_NAMES = {DATA: "data", ACK: "ack", NACK: "nack"}

#: ``flags`` bits.
F_LAST = 0x1  # last packet of a sending round: a receiver missing fragments NACKs now
F_RELIABLE = 0x2  # the sender wants an ACK (collective transfers, requests, responses)
FLAG_NAMES = ["last", "reliable"]

#: The header as a struct (network order); field order as in :class:`MeshemuHeader`.
HEADER = struct.Struct("!HBBIIIHHQIHH")
HEADER_BYTES = HEADER.size  # 36
#: Offsets of the fields the fast path patches.
OFF_KIND = 3
OFF_SEQ = 12
OFF_FRAG = 16
OFF_SEND_NS = 20
OFF_FLAGS = 32
#: IPv4 + UDP header bytes before ours; Ethernet header bytes a link also carries.
IP_UDP_BYTES = 28
ETH_BYTES = 14
#: Largest IP packet the agents send (fits a 1500-byte MTU) and the payload it leaves.
MAX_IP_BYTES = 1428
MAX_PAYLOAD = MAX_IP_BYTES - IP_UDP_BYTES - HEADER_BYTES  # 1364
#: Bytes a packet occupies on a link beyond its payload (what the shaper serialises).
PER_PACKET_WIRE_BYTES = ETH_BYTES + IP_UDP_BYTES + HEADER_BYTES  # 78


class MeshemuHeader(Packet):
    """The meshemu traffic header (see the module docstring for the layout)."""

    name = "Meshemu"
    fields_desc = [
        XShortField("magic", MAGIC),
        ByteField("version", VERSION),
        ByteEnumField("kind", DATA, KIND_NAMES),
        IntField("flow_id", 0),
        IntField("msg_id", 0),
        IntField("seq", 0),
        ShortField("frag", 0),
        ShortField("n_frags", 1),
        LongField("send_ns", 0),
        IntField("msg_bytes", 0),
        FlagsField("flags", 0, 16, FLAG_NAMES),
        ShortField("reserved", 0),
    ]

    def mysummary(self) -> str:
        return self.sprintf(
            "Meshemu %kind% flow=%flow_id% msg=%msg_id% seq=%seq% frag=%frag%/%n_frags%"
        )


bind_layers(UDP, MeshemuHeader, dport=PORT)
bind_layers(UDP, MeshemuHeader, sport=PORT)
bind_layers(MeshemuHeader, Raw)


def template(
    flow_id: int,
    msg_id: int,
    n_frags: int,
    msg_bytes: int,
    payload_bytes: int,
    kind: int = DATA,
    flags: int = 0,
) -> bytearray:
    """A packet body (our header + zero payload) built by Scapy, to be patched per packet.

    Parameters
    ----------
    flow_id, msg_id, n_frags, msg_bytes : int
        Fields that stay the same for every packet of the message.
    payload_bytes : int
        Zero bytes after the header (0 .. :data:`MAX_PAYLOAD`).
    """
    if not 0 <= payload_bytes <= MAX_PAYLOAD:
        raise ValueError(f"payload_bytes must be in 0..{MAX_PAYLOAD}; got {payload_bytes}")
    pkt = MeshemuHeader(
        kind=kind, flow_id=flow_id, msg_id=msg_id, n_frags=n_frags, msg_bytes=msg_bytes, flags=flags
    )
    if payload_bytes:
        pkt = pkt / Raw(bytes(payload_bytes))
    return bytearray(bytes(pkt))


def patch(buf: bytearray, seq: int, frag: int, send_ns: int, flags: int = 0) -> None:
    """Set the per-packet fields of a :func:`template` in place (no Scapy)."""
    struct.pack_into("!I", buf, OFF_SEQ, seq)
    struct.pack_into("!H", buf, OFF_FRAG, frag)
    struct.pack_into("!Q", buf, OFF_SEND_NS, send_ns)
    struct.pack_into("!H", buf, OFF_FLAGS, flags)


# one call instead of four for the hot path: seq, frag, n_frags, send_ns
_SEQ_TO_SEND = struct.Struct("!IHHQ")


def patch_fast(buf: bytearray, seq: int, frag: int, n_frags: int, send_ns: int, flags: int) -> None:
    """:func:`patch` in two ``pack_into`` calls (``n_frags`` is rewritten unchanged)."""
    _SEQ_TO_SEND.pack_into(buf, OFF_SEQ, seq, frag, n_frags, send_ns)
    struct.pack_into("!H", buf, OFF_FLAGS, flags)


def parse(buf: bytes | bytearray | memoryview) -> tuple[int, ...]:
    """The header fields of a packet body, as :data:`HEADER` unpacks them:
    ``(magic, version, kind, flow_id, msg_id, seq, frag, n_frags, send_ns, msg_bytes,
    flags, reserved)``."""
    return HEADER.unpack_from(buf, 0)
