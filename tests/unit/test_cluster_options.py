"""A run over several hosts without root: its options, the tunnels' commands, the routes
each host installs (meshemu.live.options, meshemu.live.tunnels, meshemu.live.routes)."""

from __future__ import annotations

import numpy as np
import pytest

from meshemu.errors import OptionsError
from meshemu.live import addressing as adr
from meshemu.live.options import RunOptions
from meshemu.live.routes import RouteInstaller
from meshemu.live.tunnels import CutLink, move_cmd, plain_end_cmds, vni_of, vxlan_add_cmd


def test_cluster_options_checked():
    ok = RunOptions(cluster="10.0.0.1:6379", traffic="default", traffic_optional=True)
    assert ok.cluster == "10.0.0.1:6379" and ok.partition == "auto"
    with pytest.raises(OptionsError, match="ADDRESS:PORT"):
        RunOptions(cluster="10.0.0.1")
    # an explicit workload runs over several hosts; the trust threshold is checked
    assert RunOptions(cluster="10.0.0.1:6379", traffic="default").owd_trust_ms == 1.0
    for bad in (-1.0, float("nan"), "1", True):
        with pytest.raises(OptionsError, match="--owd-trust-ms"):
            RunOptions(cluster="10.0.0.1:6379", traffic="default", owd_trust_ms=bad)
    with pytest.raises(OptionsError, match="--capture"):
        RunOptions(cluster="10.0.0.1:6379", traffic="none", capture=("s0_0_0",))
    with pytest.raises(OptionsError, match="--cli"):
        RunOptions(cluster="10.0.0.1:6379", traffic="none", cli=True)
    with pytest.raises(OptionsError, match="userspace shaper"):
        RunOptions(cluster="10.0.0.1:6379", traffic="none", shaper="netem")
    with pytest.raises(OptionsError, match="unknown method"):
        RunOptions(cluster="10.0.0.1:6379", traffic="none", partition="random")
    with pytest.raises(OptionsError, match="integer >= 1"):
        RunOptions(cluster="10.0.0.1:6379", traffic="none", hosts=0)
    # without --cluster nothing changes
    assert RunOptions(traffic="default", capture=("s0_0_0",)).cluster is None


def test_tunnel_commands():
    c = CutLink(41, True, "10.77.0.1", "10.77.0.2", vni_of(41), mtu=1450, side="b")
    assert vxlan_add_cmd(c) == [
        "link",
        "add",
        "mxvx41",
        "mtu",
        "1450",
        "type",
        "vxlan",
        "id",
        "42",
        "local",
        "10.77.0.1",
        "remote",
        "10.77.0.2",
        "dstport",
        "4789",
    ]
    assert move_cmd(c, 1234, "dl41a") == ["link", "set", "mxvx41", "netns", "1234", "name", "dl41a"]
    assert plain_end_cmds(c, 99, "isl41") == [vxlan_add_cmd(c), move_cmd(c, 99, "isl41")]
    assert len({vni_of(k) for k in range(1000)}) == 1000 and vni_of(0) >= 1


class FakeSocket:
    """Records what a node's rtnetlink socket is sent."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send_batch(self, chunks, ignore=()):
        self.sent.extend(bytes(c) for c in chunks)
        return []


def test_routes_only_for_the_hosts_own_nodes():
    """A host installs the routes of its own nodes only; the other nodes have no socket
    here, and their rows are skipped rather than refused."""
    names = ["a", "b", "c"]
    keys = np.array([0 * 3 + 1, 1 * 3 + 2], dtype=np.int64)  # a-b, b-c
    plan = adr.AddressPlan.from_links(names, ["sat"] * 3, keys)
    ifindex = np.array([[2, 3], [4, 5]], dtype=np.int32)
    socks = [FakeSocket(), FakeSocket(), None]  # c is on another host
    local = np.array([True, True, False])
    inst = RouteInstaller(plan, ifindex, socks, local=local)
    u = np.array([0, 1, 2], dtype=np.int64)
    d = np.array([2, 2, 0], dtype=np.int64)
    hops = np.array([[1], [2], [1]], dtype=np.int64)
    assert inst.route_ops(u, d, hops) == 2
    assert socks[0].sent and socks[1].sent
    # without the host's mask the same rows are refused (c has no socket)
    with pytest.raises(Exception, match="no netlink socket"):
        RouteInstaller(plan, ifindex, socks).route_ops(u, d, hops)
