"""The rtnetlink codec (meshemu.linux.netlink) without root, pyroute2 as the independent
decoder: every message kind meshemu builds, the dump parsers and the error parser."""

from __future__ import annotations

import errno
import socket
import struct

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.tcmsg import tcmsg

from meshemu.errors import CommandError
from meshemu.linux import netlink as nl


def _decode(cls: type, data: bytes):
    m = cls(data)
    m.decode()
    return m


def test_address_message_as_pyroute2_reads_it():
    m = _decode(ifaddrmsg, nl.addr_msg(7, 0x0A400003, 31, 99))
    assert m["header"]["type"] == nl.RTM_NEWADDR and m["header"]["sequence_number"] == 99
    assert m["header"]["flags"] == nl.NLM_F_REQUEST | nl.NLM_F_CREATE | nl.NLM_F_REPLACE
    assert (m["family"], m["prefixlen"], m["index"]) == (socket.AF_INET, 31, 7)
    assert m.get_attr("IFA_LOCAL") == m.get_attr("IFA_ADDRESS") == "10.64.0.3"
    p = _decode(ifaddrmsg, nl.addr_msg(7, 0x0A400003, 32, 1, peer=0x0A400002))
    assert p.get_attr("IFA_ADDRESS") == "10.64.0.2"


def test_neighbour_and_link_up_messages_as_pyroute2_reads_them():
    n = _decode(ndmsg, nl.neigh_msg(4, 0x0A400001, bytes.fromhex("02aabbccddee"), 5))
    assert n["header"]["type"] == nl.RTM_NEWNEIGH and n["ifindex"] == 4
    assert n["state"] == nl.NUD_PERMANENT
    assert n.get_attr("NDA_DST") == "10.64.0.1"
    assert n.get_attr("NDA_LLADDR") == "02:aa:bb:cc:dd:ee"
    u = _decode(ifinfmsg, nl.link_up_msg(9, 6))
    assert u["header"]["type"] == nl.RTM_NEWLINK and u["index"] == 9
    assert u["flags"] & nl.IFF_UP and u["change"] & nl.IFF_UP


def test_netem_qdisc_message_as_pyroute2_reads_it():
    data = nl.netem_qdisc_msg(3, 12_345_678, 2_500_000, 1167, 0.02, True, 11)
    m = _decode(tcmsg, data)
    assert m["header"]["flags"] == nl.NLM_F_REQUEST | nl.NLM_F_CREATE | nl.NLM_F_EXCL
    assert (m["index"], m["handle"], m["parent"]) == (3, nl.NETEM_HANDLE, nl.TC_H_ROOT)
    assert m.get_attr("TCA_KIND") == "netem"
    opts = m.get_attr("TCA_OPTIONS")
    assert opts["delay"] == 12_345_678 >> 6 and opts["limit"] == 1167
    assert opts["loss"] == round(0.02 * 0xFFFFFFFF)
    assert opts.get_attr("TCA_NETEM_RATE")["rate"] == 2_500_000
    change = nl.netem_qdisc_msg(3, 0, 0, 1, 1.0, False, 12)
    assert struct.unpack_from("=H", change, 6)[0] == nl.NLM_F_REQUEST


def test_one_walker_for_messages_and_attributes():
    a = nl.addr_msg(1, 1, 32, 1)
    b = nl.link_up_msg(2, 2)
    walked = list(nl.messages(a + b))
    assert [(off, length, t, seq) for off, length, t, _, seq in walked] == [
        (0, len(a), nl.RTM_NEWADDR, 1),
        (len(a), len(b), nl.RTM_NEWLINK, 2),
    ]
    attrs = list(nl.rtattrs(a, 16 + 8, len(a)))
    assert [(t, n) for t, _, n in attrs] == [(nl.IFA_LOCAL, 4), (nl.IFA_ADDRESS, 4)]
    assert list(nl.messages(b"\0" * 16)) == []  # a zero length stops the walk


#: RFC 2863 operational states (``linux/if.h`` IF_OPER_*) by pyroute2's names.
OPER_NAMES = {0: "UNKNOWN", 2: "DOWN", 6: "UP"}


def _link(index: int, name: str, flags: int, oper: int) -> bytes:
    m = ifinfmsg()
    m["index"], m["flags"] = index, flags
    m["header"]["type"] = nl.RTM_NEWLINK
    m["attrs"] = [["IFLA_IFNAME", name], ["IFLA_OPERSTATE", OPER_NAMES[oper]], ["IFLA_MTU", 1500]]
    m.encode()
    return bytes(m.data)


def test_link_dump_parser_reads_what_pyroute2_writes():
    done = struct.pack("=IHHIIi", 20, nl.NLMSG_DONE, 2, 1, 0, 0)
    data = _link(1, "lo", nl.IFF_UP | nl.IFF_LOOPBACK, 0) + _link(5, "isl3", nl.IFF_UP, 2)
    links, finished = nl.parse_link_dump(data)
    assert links == [(1, nl.IFF_UP | nl.IFF_LOOPBACK, "lo", 0), (5, nl.IFF_UP, "isl3", 2)]
    assert not finished
    assert nl.parse_link_dump(_link(6, "gsl1", 0, nl.IF_OPER_UP) + done) == (
        [(6, 0, "gsl1", nl.IF_OPER_UP)],
        True,
    )
    err = struct.pack("=IHHIIi", 36, nl.NLMSG_ERROR, 0, 1, 0, -errno.EPERM) + b"\0" * 16
    with pytest.raises(CommandError, match="RTM_GETLINK dump"):
        nl.parse_link_dump(err)


def test_errors_come_with_their_sequence_number_and_extack_text():
    inner = struct.pack("=IHHII", 16, nl.RTM_NEWROUTE, 0, 77, 0)
    text = nl.rta(nl.NLMSGERR_ATTR_MSG, b"Nexthop has invalid gateway\0")
    body = struct.pack("=i", -errno.EINVAL) + inner + text
    capped = nl.msg(nl.NLMSG_ERROR, nl.NLM_F_ACK_TLVS | nl.NLM_F_CAPPED, 77, body)
    ack = nl.msg(nl.NLMSG_ERROR, 0, 78, struct.pack("=i", 0) + inner)
    assert nl.parse_errors(capped + ack) == [
        (77, errno.EINVAL, "Nexthop has invalid gateway"),
        (78, 0, ""),
    ]
