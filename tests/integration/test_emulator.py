"""The live emulator on a small network (root): real packets, failover, teardown, signals.

The network: a ring of three satellites s0-s1-s2 and two ground stations, g0 on s0 and g1 on
s1, every link 5 ms one way, through the userspace shaper (this kernel has no netem)::

    g0 --- s0 ---- s1 --- g1          g0 -> g1: 3 links, RTT 30 ms
            \\    /                     with s0-s1 down: g0-s0-s2-s1-g1, RTT 40 ms
              s2
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from doubles import FakeShaper
from waits import wait_for

from meshemu.errors import EmulationError, NotRootError, ResourceError
from meshemu.geometry.linkstate import GSL, ISL
from meshemu.linux import limits, netlink, procs
from meshemu.linux import netns as nl
from meshemu.live import emulation as em
from meshemu.live import resources
from meshemu.live.shapers import make_shaper

pytestmark = pytest.mark.root

NAMES = ["s0", "s1", "s2", "g0", "g1"]
KINDS = ["sat", "sat", "sat", "station", "station"]
EDGES = [(0, 1), (1, 2), (0, 2), (0, 3), (1, 4)]
LINK_KINDS = [ISL, ISL, ISL, GSL, GSL]
TRANSIT = [True, True, True, False, False]
DELAY_S = 0.005
MAIN = Path(__file__).resolve().parents[2]


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail(
            "integration tests need root (they create network namespaces); run them "
            "as root, as CI does"
        )


def ring(up=None, t_s: float = 0.0, k: int = 2):
    """Snapshot and shortest-delay tables (padded to ``k`` next hops) of the test ring."""
    from meshemu.routing import ForwardingTables, get_scheme, snapshot_from_edges

    snap = snapshot_from_edges(
        5,
        EDGES,
        [DELAY_S] * len(EDGES),
        transit=TRANSIT,
        up=up,
        rates=[1e9] * len(EDGES),
        t_s=t_s,
        kinds=LINK_KINDS,
    )
    tab = get_scheme("shortest-delay").forwarding_tables(snap, np.arange(5, dtype=np.int32))
    nh = np.full((5, 5, k), -1, dtype=np.int32)
    nh[:, :, : min(k, tab.next_hop.shape[2])] = tab.next_hop[:, :, :k]
    return snap, ForwardingTables(
        destinations=np.asarray(tab.destinations), next_hop=nh, scheme="test"
    )


def machine_state() -> dict:
    """What a run could leave behind: named namespaces, root interfaces, marked processes."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {
        "netns": {ln.split()[0] for ln in netns.splitlines() if ln.strip()},
        "links": {name for _, name in socket.if_nameindex()},
        "marked": {
            pid
            for pid, (_, argv) in procs.scan_processes().items()
            if any(a.startswith(em.RUN_MARKER) for a in argv)
        },
    }


def leftovers(run_id: str, inodes: set[int] = frozenset()) -> list[str]:
    """Everything of run ``run_id`` still on the machine."""
    out = []
    for pid, (ino, argv) in procs.scan_processes().items():
        if em.RUN_MARKER + run_id in argv or "--run-id" in argv and run_id in argv:
            out.append(f"process {pid} {argv}")
        elif ino in inodes and pid != os.getpid():
            out.append(f"process {pid} in a node namespace {argv}")
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    out += [f"netns {ln}" for ln in names.splitlines() if run_id in ln]
    if em.lock_path(run_id).exists():
        out.append(f"lock {em.lock_path(run_id)}")
    return out


def rtts_ms(output: str) -> list[float]:
    return [float(x) for x in re.findall(r"time=([\d.]+) ms", output)]


@pytest.fixture
def run_id() -> str:
    return f"mxemu{uuid.uuid4().hex[:6]}"


@pytest.fixture
def built(tmp_path, run_id):
    """The ring, built with the userspace shaper; always stopped afterwards."""
    _require_root()
    snap, tab = ring()
    emu = em.Emulation(NAMES, KINDS, make_shaper("userspace", run_id), tmp_path, run_id)
    try:
        emu.build(snap.key, snap, tab)
        yield emu
    finally:
        emu.stop()


def test_ping_rtt_and_failover_within_one_step(built):
    emu = built
    g1 = emu.node_address("g1")
    assert emu.mininet["g1"].IP() == g1 == "10.0.0.5"
    out = emu.node("g0").cmd(f"ping -c 12 -i 0.05 -W 2 {g1}")
    rtt = rtts_ms(out)
    assert len(rtt) >= 10, out
    assert abs(np.median(rtt) - 2 * 3 * DELAY_S * 1e3) < 1.0, out

    s0 = emu.node("s0")
    k01 = emu.plan.link_id(0, 1)
    k02 = emu.plan.link_id(0, 2)
    assert f"dev isl{k01} " in s0.cmd(f"ip route get {g1}")

    snap2, tab2 = ring(up=[False, True, True, True, True], t_s=1.0)  # s0-s1 down
    st = emu.apply(snap2, tab2)
    assert st.n_link_updates == 1 and st.n_route_changes > 0 and st.t_s == 1.0
    route = s0.cmd(f"ip route get {g1}")
    assert f"dev isl{k02} " in route and "10.64." in route, route
    out = emu.node("g0").cmd(f"ping -c 12 -i 0.05 -W 2 {g1}")
    rtt = rtts_ms(out)
    assert len(rtt) >= 10, out
    assert abs(np.median(rtt) - 2 * 4 * DELAY_S * 1e3) < 1.0, out

    # nothing changed: nothing applied
    st = emu.apply(snap2, tab2)
    assert (st.n_link_updates, st.n_route_changes) == (0, 0)


def test_build_configures_nodes(built, tmp_path):
    emu = built
    s1 = emu.node("s1")
    addrs = s1.cmd("ip -o -4 addr show")
    assert "10.0.0.2/32" in addrs
    for k in (emu.plan.link_id(1, 0), emu.plan.link_id(1, 2), emu.plan.link_id(1, 4)):
        assert re.search(rf"isl{k}|gsl{k}", addrs)
    assert s1.cmd("cat /proc/sys/net/ipv4/ip_forward").strip() == "1"
    assert s1.cmd("cat /proc/sys/net/ipv4/conf/all/rp_filter").strip() == "0"
    for key, value in {**em.NODE_SYSCTLS, **em.NO_IPV6_SYSCTLS}.items():  # each one written
        assert s1.cmd(f"cat /proc/sys/{key.replace('.', '/')}").strip() == str(value), key
    routes = s1.cmd("ip route show proto static").strip().splitlines()
    assert len(routes) == 4, routes  # every other node's address
    g0_route = next(r for r in routes if r.startswith("10.0.0.4 "))
    assert "src 10.0.0.2" in g0_route and f"dev isl{emu.plan.link_id(0, 1)}" in g0_route
    k01 = emu.plan.link_id(0, 1)
    assert "10.64.0.0 " in s1.cmd(f"ip neigh show dev isl{k01}") and "PERMANENT" in s1.cmd(
        f"ip neigh show dev isl{k01}"
    )  # the peer's MAC is known: no ARP
    assert (tmp_path / "addressing.csv").exists() and (tmp_path / "addressing.json").exists()
    # Mininet's view: node names resolve to node addresses, interfaces are listed
    assert emu.mininet["g0"].defaultIntf().updateIP() == "10.0.0.4"
    assert "gsl" in " ".join(emu.mininet["g0"].intfNames())


def test_multipath_route(built):
    emu = built
    snap, tab = ring(t_s=1.0)
    nh = tab.next_hop.copy()
    nh[2, 4] = [1, 0]  # s2 -> g1 via s1 and via s0
    from meshemu.routing import ForwardingTables

    st = emu.apply(
        snap, ForwardingTables(destinations=tab.destinations, next_hop=nh, scheme="test")
    )
    assert st.n_route_changes == 1
    out = emu.node("s2").cmd(f"ip route show {emu.node_address('g1')}")
    assert out.count("nexthop via") == 2, out
    st = emu.apply(snap, tab)  # back to a single next hop
    out = emu.node("s2").cmd(f"ip route show {emu.node_address('g1')}")
    assert "nexthop" not in out and "via 10.64." in out, out


def test_unreachable_destination_loses_its_route(built):
    emu = built
    snap, tab = ring(up=[True, True, True, True, False], t_s=1.0)  # g1's only link down
    emu.apply(snap, tab)
    g1 = emu.node_address("g1")
    assert emu.node("s0").cmd(f"ip route show {g1}").strip() == ""
    assert "unreachable" in emu.node("s0").cmd(f"ip route get {g1} 2>&1")
    snap, tab = ring(t_s=2.0)
    emu.apply(snap, tab)
    assert "via" in emu.node("s0").cmd(f"ip route show {g1}")


def test_stop_leaves_nothing(tmp_path, run_id):
    _require_root()
    before = machine_state()
    snap, tab = ring()
    emu = em.Emulation(NAMES, KINDS, make_shaper("userspace", run_id), tmp_path, run_id)
    try:
        emu.build(snap.key, snap, tab)
        inodes = {nl.netns_inode(p) for p in emu.pids}
        emu.node("g0").cmd("sleep 1000 &")  # a process inside a node
        emu.node("s0").popen(["sleep", "1000"])  # and one attached with mnexec -a
        assert leftovers(run_id, inodes)
    finally:
        emu.stop()
    emu.stop()  # idempotent
    assert leftovers(run_id, inodes) == []
    after = machine_state()
    assert after["links"] == before["links"]
    assert after["netns"] <= before["netns"]
    assert not (after["marked"] - before["marked"])


def _run_processes(run_id: str) -> dict[int, str]:
    """pid -> program name (argv[0]'s base name) of every process with the run's marker."""
    return {
        pid: os.path.basename(argv[0])
        for pid, (_, argv) in procs.scan_processes().items()
        if em.RUN_MARKER + run_id in argv
    }


def test_node_shells_start_on_first_use_in_the_nodes_namespace(built, run_id):
    """A node is its namespace, held by a small process; its bash starts when used."""
    emu = built
    running = _run_processes(run_id)
    # one holder per node, each in a namespace of its own, and no shell yet
    assert sorted(running) == sorted(emu.pids)
    assert set(running.values()) == {"meshemu-node"}, running
    inodes = {nl.netns_inode(p) for p in emu.pids}
    assert len(inodes) == len(NAMES) and nl.netns_inode(os.getpid()) not in inodes
    assert not any(n.has_shell for n in emu.nodes)
    # the node forwards without a shell: g1 reaches g0 through the ring
    g1 = str(emu.node("g1").pid)
    ping = ["mnexec", "-a", g1, "ping", "-c", "1", "-W", "3", emu.node_address("g0")]
    assert " 0% packet loss" in subprocess.run(ping, capture_output=True, text=True).stdout
    g0 = emu.node("g0")
    g0.on_shell_start("GREETING=queued")  # runs when the shell starts
    out = g0.cmd("echo $GREETING; readlink /proc/self/ns/net")
    assert out.split() == ["queued", os.readlink(f"/proc/{g0.pid}/ns/net")]
    assert g0.has_shell and [n.name for n in emu.nodes if n.has_shell] == ["g0"]
    emu.start_shells(["s1", "s2"])  # several at once
    assert {n.name for n in emu.nodes if n.has_shell} == {"g0", "s1", "s2"}
    assert sorted(_run_processes(run_id).values()).count("bash") == 3
    bash = emu.node("s2")._bash
    assert bash is not None and "mininet:s2" in procs.scan_processes()[bash.pid][1]
    emu.stop()
    assert _run_processes(run_id) == {}


def test_nodes_without_the_compiled_holder_use_sh_and_a_failed_holder_is_named(monkeypatch, run_id):
    """Without ``meshemu-node`` built, ``unshare --net sh`` holds the namespace; a holder that
    exits before its namespace is made is an error naming the node."""
    _require_root()
    from meshemu.live import nodes

    monkeypatch.setattr(nodes, "HOLDER_BINARY", Path("/nonexistent/meshemu-node"))
    node = nodes.MeshNode("h1", run_id=run_id)
    try:
        nodes.await_namespaces([node], 30)
        # (its namespace is made by unshare, which then execs sh)
        assert wait_for(lambda: _run_processes(run_id) == {node.pid: "sh"}, timeout_s=10), (
            _run_processes(run_id)
        )
        assert nl.netns_inode(node.pid) != nl.netns_inode(os.getpid())
        assert node.cmd("readlink /proc/self/ns/net").strip() == os.readlink(
            f"/proc/{node.pid}/ns/net"
        )
    finally:
        node.terminate()
    assert _run_processes(run_id) == {}

    monkeypatch.setattr(nodes, "HOLDER_BINARY", Path("/bin/false"))
    bad = nodes.MeshNode("h2", run_id=run_id)
    try:
        with pytest.raises(EmulationError, match=r"holder of node h2 .* exited with status 1"):
            nodes.await_namespaces([bad], 30)
    finally:
        bad.terminate()


def test_partial_build_failure_leaves_nothing(tmp_path, run_id):
    _require_root()
    snap, tab = ring()
    nh = tab.next_hop.copy()
    nh[3, 4, 0] = 2  # g0 -> g1 via s2: there is no link g0-s2
    from meshemu.routing import ForwardingTables

    bad = ForwardingTables(destinations=tab.destinations, next_hop=nh, scheme="test")
    before = machine_state()
    emu = em.Emulation(NAMES, KINDS, make_shaper("userspace", run_id), tmp_path, run_id)
    with pytest.raises(EmulationError, match="no link g0-s2"):
        emu.build(snap.key, snap, bad)
    assert emu.pids  # it got as far as creating the nodes
    inodes = set()
    assert leftovers(run_id, inodes) == []
    assert all(procs.process_start_ticks(p) is None for p in emu.pids)
    after = machine_state()
    assert after["links"] == before["links"] and after["netns"] <= before["netns"]
    emu.stop()  # still fine


def test_not_root(monkeypatch, tmp_path):
    snap, tab = ring()
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    emu = em.Emulation(NAMES, KINDS, FakeShaper("mxfake"), tmp_path, "mxfake")
    with pytest.raises(NotRootError, match="needs root"):
        emu.build(snap.key, snap, tab)
    with pytest.raises(NotRootError):
        limits.require_root()


def test_not_root_for_real(tmp_path):
    """As user nobody, in a fresh process: NotRootError, not a traceback from deep inside."""
    _require_root()
    code = (
        "from meshemu.linux.limits import require_root\n"
        "from meshemu.errors import NotRootError\n"
        "try:\n    require_root('meshemu run')\n"
        "except NotRootError as e:\n    print('NotRootError:', e)\n"
    )
    p = subprocess.run(
        [
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            sys.executable,
            "-c",
            code,
        ],
        capture_output=True,
        text=True,
        cwd="/",
        env={**os.environ, "PYTHONPATH": str(MAIN)},
        timeout=60,
    )
    assert "NotRootError: meshemu run needs root" in p.stdout, p.stderr


def test_memory_estimate_refuses_what_cannot_fit(monkeypatch, tmp_path, run_id):
    _require_root()
    snap, tab = ring()
    monkeypatch.setattr(resources, "mem_available_bytes", lambda: 1 << 20)
    shaper = FakeShaper(run_id)
    emu = em.Emulation(NAMES, KINDS, shaper, tmp_path, run_id)
    with pytest.raises(ResourceError, match="GiB"):
        emu.build(snap.key, snap, tab)
    assert not emu.pids and not shaper.calls
    with pytest.raises(ResourceError, match="hard limit"):
        limits.raise_nofile_limit(1 << 40)


SIGNAL_SCRIPT = r"""
import signal, sys, time
import numpy as np
from types import SimpleNamespace
from meshemu.live.emulation import Emulation
from meshemu.signals import handle_signals
from meshemu.geometry.linkstate import Snapshot
from meshemu.live.shapers import make_shaper

run_id, run_dir = sys.argv[1], sys.argv[2]
a = np.array([0, 0, 0, 1, 1], np.int32); b = np.array([1, 2, 3, 2, 4], np.int32)
E = 5
snap = Snapshot(0.0, 5, a, b, np.zeros(E, np.int8), np.ones(E, bool), np.full(E, 1500e3),
                np.full(E, 0.005), np.full(E, 1e9), np.array([1, 1, 1, 0, 0], bool))
nh = np.array([[-1, 1, 2, 3, 1], [0, -1, 2, 0, 4], [0, 1, -1, 0, 1],
               [0, 0, 0, -1, 0], [1, 1, 1, 1, -1]], np.int32)[:, :, None]
tables = SimpleNamespace(destinations=np.arange(5, dtype=np.int32), next_hop=nh)
with handle_signals():
    emu = Emulation(["s0", "s1", "s2", "g0", "g1"], ["sat"] * 3 + ["station"] * 2,
                    make_shaper("userspace", run_id), run_dir, run_id)
    try:
        emu.build(snap.key, snap, tables)
        emu.node("g0").cmd("sleep 1000 &")
        # survives a SIGHUP, once nohup has set SIGHUP to ignored and exec'ed sleep: wait for
        # that, or a quick SIGKILL of this process can hang up the pty before nohup has run
        pid = int(emu.node("g1").cmd("nohup sleep 1001 >/dev/null 2>&1 & echo $!").split()[-1])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == "sleep":
                    break
            time.sleep(0.01)
        emu.node("s0").popen(["sleep", "1002"])                   # not on the node's pty
        print("BUILT", " ".join(str(p) for p in emu.pids), flush=True)
        signal.pause()              # until the test's signal (handle_signals raises)
    finally:
        emu.stop()
        print("STOPPED", flush=True)
"""


def start_build_process(tmp_path: Path, run_id: str) -> tuple[subprocess.Popen, list[int]]:
    """A process that builds the ring and sleeps; returns it and its node shells' pids."""
    script = tmp_path / "build_and_sleep.py"
    script.write_text(SIGNAL_SCRIPT)
    p = subprocess.Popen(
        [sys.executable, str(script), run_id, str(tmp_path / "run")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(MAIN)},
    )
    line = p.stdout.readline()
    if not line.startswith("BUILT"):
        p.kill()
        raise AssertionError(f"build process failed: {line}{p.stderr.read()}")
    return p, [int(x) for x in line.split()[1:]]


def test_sigterm_tears_down_and_a_second_run_starts_right_after(tmp_path, run_id):
    _require_root()
    p, pids = start_build_process(tmp_path, run_id)
    try:
        inodes = {nl.netns_inode(pid) for pid in pids}
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
            from meshemu.live.clean import clean

            clean(run_id)
    assert "STOPPED" in out and "Interrupted" in err, err
    assert leftovers(run_id, inodes) == []
    # the next run, at once, with the same node names
    run2 = run_id + "b"
    snap, tab = ring()
    emu = em.Emulation(NAMES, KINDS, make_shaper("userspace", run2), tmp_path / "r2", run2)
    try:
        emu.build(snap.key, snap, tab)
        assert " 0% packet loss" in emu.node("g0").cmd(
            f"ping -c 2 -i 0.1 -W 2 {emu.node_address('g1')}"
        )
    finally:
        emu.stop()


def test_netlink_messages_decode_with_pyroute2():
    """The hand-packed route messages are what pyroute2 (and so the kernel) expect."""
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    rec = netlink.route_records(
        np.array([0x0A000005], np.uint32),
        np.array([0x0A400001], np.uint32),
        np.array([7]),
        np.array([0x0A000004], np.uint32),
        np.array([42], np.uint32),
    )
    m = rtmsg(rec.tobytes())
    m.decode()
    assert m["header"]["type"] == netlink.RTM_NEWROUTE and m["header"]["sequence_number"] == 42
    assert m["dst_len"] == 32 and m["proto"] == netlink.RTPROT_MESHEMU
    assert (
        m.get_attr("RTA_DST"),
        m.get_attr("RTA_GATEWAY"),
        m.get_attr("RTA_OIF"),
        m.get_attr("RTA_PREFSRC"),
    ) == ("10.0.0.5", "10.64.0.1", 7, "10.0.0.4")
    m = rtmsg(
        netlink.multipath_route_msg(0x0A000005, [(0x0A400001, 3), (0x0A400003, 4)], 0x0A000004, 9)
    )
    m.decode()
    hops = m.get_attr("RTA_MULTIPATH")
    assert [(h["oif"], h.get_attr("RTA_GATEWAY")) for h in hops] == [
        (3, "10.64.0.1"),
        (4, "10.64.0.3"),
    ]
    d = rtmsg(
        netlink.delroute_records(
            np.array([0x0A000005], np.uint32), np.array([1], np.uint32)
        ).tobytes()
    )
    d.decode()
    assert d["header"]["type"] == netlink.RTM_DELROUTE and d.get_attr("RTA_DST") == "10.0.0.5"


def test_queue_sizes_and_loss_come_from_the_snapshot(tmp_path, run_id):
    """Each link gets the snapshot's own queue size and loss (here ISLs 7 packets, GSLs 9,
    and one link 1 % loss); the link kind (interface name) is the snapshot's; a change of
    queue or loss alone is pushed at the next step; a bad queue size is refused."""
    _require_root()
    snap, tab = ring()
    isl = snap.kind == ISL
    queue = np.where(isl, 7, 9).astype(np.int32)
    loss = np.zeros(snap.n_links)
    loss[0] = 0.01
    snap = dataclasses.replace(snap, queue_packets=queue, loss=loss)
    emu = em.Emulation(NAMES, KINDS, make_shaper("userspace", run_id), tmp_path, run_id)
    try:
        emu.build(em.RunLinks.from_snapshots([snap]), snap, tab)
        for k in range(snap.n_links):
            p = emu.shaper.params(k)
            assert p.queue_packets == (7 if isl[k] else 9) and p.loss == loss[k]
            assert emu.plan.ifname(k).startswith("isl" if isl[k] else "gsl")
        snap2, _ = ring(t_s=1.0)
        queue2 = queue.copy()
        queue2[1] = 50
        snap2 = dataclasses.replace(snap2, queue_packets=queue2, loss=loss)
        st = emu.apply(snap2, tab)
        assert (st.n_link_updates, st.n_route_changes, len(st.route_diff)) == (1, 0, 0)
        assert emu.shaper.params(1).queue_packets == 50
    finally:
        emu.stop()
    bad = dataclasses.replace(snap, queue_packets=np.zeros(snap.n_links, np.int32))
    emu = em.Emulation(NAMES, KINDS, None, tmp_path, run_id)  # refused before the shaper
    with pytest.raises(EmulationError, match="queue_packets"):
        emu.build(snap.key, bad, tab)
    assert not emu.pids


def test_aggregated_routes_forward_as_the_tables_say(tmp_path, run_id):
    """Route aggregation in the kernel: the default scenario built with aggregate prefixes
    (fewer routes than destinations), then 20 steps of /32s over them and a destination cut
    off and back: at each check, ``ip route get`` in sampled nodes gives each destination's
    next hop from the tables (or no route)."""
    _require_root()
    from meshemu.geometry.schedule import LinkSchedule
    from meshemu.live import addressing as adr
    from meshemu.live.links import RunLinks
    from meshemu.routing import ForwardingTables, get_scheme, route_diff
    from meshemu.spec.scenario import load_scenario

    sched = LinkSchedule(load_scenario("default"), 1.0)
    snaps = list(sched.snapshots(20))
    names, kinds = list(sched.nodes.names), list(sched.nodes.kind)
    n = len(names)
    dests = np.arange(n, dtype=np.int32)
    scheme = get_scheme("shortest-delay")
    tables = [scheme.forwarding_tables(s, dests) for s in snaps]
    emu = em.Emulation(
        names, kinds, make_shaper("userspace", run_id), tmp_path, run_id, route_aggregation=True
    )
    sample = [0, 17, 40, n - 1]  # satellites and a ground node

    def check(tab) -> int:
        nh = np.asarray(tab.next_hop)
        checked = 0
        for u in sample:
            addrs = " ".join(emu.node_address(names[d]) for d in range(n))
            out = emu.node(names[u]).cmd(
                f'for a in {addrs}; do echo "$a $(ip -o route get $a 2>&1)"; done'
            )
            got = {ln.split()[0]: ln for ln in out.splitlines() if ln.strip()}
            for d in range(n):
                if d == u:
                    continue
                line = got[emu.node_address(names[d])]
                v = int(nh[u, d, 0])
                if v < 0:
                    assert " via " not in line, (names[u], names[d], line)
                    continue
                k = emu.plan.link_id(u, v)
                gw = adr.int_to_ip(adr.link_address_int(k, 0 if v < u else 1))
                assert f" via {gw} " in line, (names[u], names[d], names[v], line)
                checked += 1
        return checked

    try:
        emu.build(RunLinks.from_snapshots(snaps), snaps[0], tables[0])
        installed = sum(
            len(emu.node(names[u]).cmd("ip route show proto static").splitlines()) for u in range(n)
        )
        per_dest = int(np.count_nonzero(np.asarray(tables[0].next_hop)[:, :, 0] >= 0))
        assert installed < per_dest, (installed, per_dest)
        assert check(tables[0]) > 200
        changed = 0
        for k in range(1, len(snaps)):
            changed += emu.apply(snaps[k], tables[k]).n_route_changes
        assert changed > 0
        check(tables[-1])
        # a destination nobody reaches (an unreachable /32 under the aggregates), then back
        cut = np.asarray(tables[-1].next_hop).copy()
        cut[:, 40, :] = -1
        gone = ForwardingTables(tables[-1].destinations, cut, "test")
        assert len(route_diff(tables[-1], gone)) > 0
        emu.apply(snaps[-1], gone)
        check(gone)
        emu.apply(snaps[-1], tables[-1])
        check(tables[-1])
    finally:
        emu.stop()
