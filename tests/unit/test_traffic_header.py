"""The meshemu header: Scapy layer, fast path, byte-exact round trip."""

import random

import pytest
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from meshemu.traffic import header as H
from meshemu.traffic.header import MeshemuHeader


def test_layout_and_binding():
    assert H.HEADER_BYTES == 36 == len(bytes(MeshemuHeader()))
    assert H.MAX_PAYLOAD + H.HEADER_BYTES + H.IP_UDP_BYTES == H.MAX_IP_BYTES == 1428
    pkt = IP(bytes(IP() / UDP(sport=1234, dport=H.PORT) / MeshemuHeader(flow_id=7)))
    assert pkt[MeshemuHeader].flow_id == 7
    pkt = IP(bytes(IP() / UDP(sport=H.PORT, dport=9) / MeshemuHeader(msg_id=9)))
    assert pkt[MeshemuHeader].msg_id == 9  # bound on the source port too
    assert not IP(bytes(IP() / UDP(sport=1, dport=2) / Raw(b"x" * 40))).haslayer(MeshemuHeader)


@pytest.mark.parametrize("seed", range(20))
def test_fast_path_equals_scapy_build(seed):
    rng = random.Random(seed)
    payload = rng.choice([0, 1, 100, H.MAX_PAYLOAD])
    fields = dict(
        flow_id=rng.randrange(2**32),
        msg_id=rng.randrange(2**32),
        n_frags=rng.randrange(1, 2**16),
        msg_bytes=rng.randrange(2**32),
    )
    per_packet = dict(
        seq=rng.randrange(2**32),
        frag=rng.randrange(2**16),
        send_ns=rng.randrange(2**64),
        flags=rng.randrange(4),
    )
    buf = H.template(payload_bytes=payload, **fields)
    H.patch(buf, per_packet["seq"], per_packet["frag"], per_packet["send_ns"], per_packet["flags"])
    scapy_pkt = MeshemuHeader(**fields, **per_packet)
    if payload:
        scapy_pkt = scapy_pkt / Raw(bytes(payload))
    assert bytes(buf) == bytes(scapy_pkt)
    buf2 = H.template(payload_bytes=payload, **fields)
    H.patch_fast(
        buf2,
        per_packet["seq"],
        per_packet["frag"],
        fields["n_frags"],
        per_packet["send_ns"],
        per_packet["flags"],
    )
    assert buf2 == buf

    # in a full packet: Scapy dissects the fast-path bytes back, byte for byte
    wire = bytes(
        IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=H.PORT, dport=H.PORT) / Raw(bytes(buf))
    )
    back = IP(wire)
    hdr = back[MeshemuHeader]
    for k, v in {**fields, **per_packet}.items():
        assert getattr(hdr, k) == v, k
    assert hdr.magic == H.MAGIC and hdr.version == H.VERSION and hdr.kind == H.DATA
    assert bytes(back) == wire
    assert H.parse(buf)[3:11] == (
        fields["flow_id"],
        fields["msg_id"],
        per_packet["seq"],
        per_packet["frag"],
        fields["n_frags"],
        per_packet["send_ns"],
        fields["msg_bytes"],
        per_packet["flags"],
    )


def test_template_checks_payload():
    with pytest.raises(ValueError, match="payload_bytes"):
        H.template(1, 1, 1, 1, H.MAX_PAYLOAD + 1)


def test_summary_mentions_fields():
    s = MeshemuHeader(kind=H.NACK, flow_id=3, msg_id=4).mysummary()
    assert "nack" in s and "flow=3" in s
