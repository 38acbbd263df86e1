"""Links between hosts: one VXLAN tunnel per cut link, over the hosts' cluster network.

When a run is spread over several hosts (:mod:`meshemu.live.cluster`), a link whose two
nodes are on different hosts (a *cut link*, :mod:`meshemu.partition`) becomes a VXLAN
tunnel (RFC 7348) between the two hosts, one VNI per link. Each end is created in the
host's own network namespace, where the cluster address is, and then moved into the
namespace it serves (``ip link set ... netns``): the tunnel's UDP socket stays in the host's
namespace, the Ethernet device is in the node's (or the delay line's) namespace.

The link is shaped on one side only, by the host with the lower index: there the node's end
is a veth into the delay line as for any link, and the delay line's other end is the
tunnel (:meth:`meshemu.live.shapers.userspace.UserspaceShaper.create_cut_links`); on the
other host the tunnel itself is the node's interface (:func:`plain_end_cmds`). The
substrate's own one-way latency between the two hosts, measured at start, is subtracted
from the delay the shaper adds (:attr:`CutLink.offset_s`), so the link carries its planned
delay end to end.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The UDP port of the tunnels (IANA's VXLAN port).
VXLAN_PORT = 4789
#: Bytes a VXLAN tunnel adds to each frame (outer IPv4 20 + UDP 8 + VXLAN 8 + Ethernet 14).
VXLAN_OVERHEAD = 50
#: The frame size (MTU) of an emulated link.
LINK_MTU = 1500


@dataclass(frozen=True)
class CutLink:
    """One end of a link between two hosts, as the host of that end sees it.

    Attributes
    ----------
    link_id : int
    shaped_here : bool
        This host shapes the link (its delay line holds the tunnel's end).
    local_ip, remote_ip : str
        The two hosts' cluster addresses.
    vni : int
        The tunnel's VXLAN network identifier (1 .. 2**24 - 1), one per link.
    port : int
        UDP port.
    mtu : int
        The tunnel's MTU (the link's, unless the cluster network is too small for it).
    offset_s : float
        The substrate's one-way latency between the hosts, taken off the shaped delay.
    side : str
        ``"a"`` or ``"b"``: which end of the link this host's node is.
    """

    link_id: int
    shaped_here: bool
    local_ip: str
    remote_ip: str
    vni: int
    port: int = VXLAN_PORT
    mtu: int = LINK_MTU
    offset_s: float = 0.0
    side: str = "a"


def vni_of(link_id: int) -> int:
    """The VNI of link ``link_id`` (link ids are below 2**21, the addressing plan's limit)."""
    return link_id + 1


def tunnel_tmp_name(link_id: int) -> str:
    """The tunnel device's name in the host namespace, before it is moved and renamed."""
    return f"mxvx{link_id}"


def vxlan_add_cmd(c: CutLink) -> list[str]:
    """``ip`` command (without ``ip``) creating ``c``'s tunnel in the host namespace."""
    return [
        "link",
        "add",
        tunnel_tmp_name(c.link_id),
        "mtu",
        str(c.mtu),
        "type",
        "vxlan",
        "id",
        str(c.vni),
        "local",
        c.local_ip,
        "remote",
        c.remote_ip,
        "dstport",
        str(c.port),
    ]


def move_cmd(c: CutLink, netns: int | str, name: str) -> list[str]:
    """``ip`` command moving ``c``'s tunnel into ``netns`` (a pid or name) as ``name``."""
    return ["link", "set", tunnel_tmp_name(c.link_id), "netns", str(netns), "name", name]


def plain_end_cmds(c: CutLink, pid: int, ifname: str) -> list[list[str]]:
    """The unshaped end: the tunnel is the node's own interface ``ifname``."""
    return [vxlan_add_cmd(c), move_cmd(c, pid, ifname)]
