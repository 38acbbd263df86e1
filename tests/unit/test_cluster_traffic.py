"""Traffic over several hosts without root: the one-way-delay trust rule
(meshemu.traffic.clocks) and, on a local Ray, the driver's RemoteAgents driving real agents
on loopback through two HostWorker actors, with an offset injected into one host's measured
clock (simulated hosts share one kernel clock, so a real offset cannot be made here)."""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from meshemu.traffic.clocks import FIX, ONE_HOST, TRUSTED, UNTRUSTED, flow_trust, trust_summary
from meshemu.traffic.collection import collect
from meshemu.traffic.config import AgentConfig, StreamConfig
from meshemu.traffic.planning import Flow

FLOWS = [
    Flow(1, "ab", "bulk", "a", "b"),
    Flow(2, "ba", "bulk", "b", "a"),
    Flow(3, "aa", "bulk", "a", "c"),
]
HOST_OF = {"a": 0, "b": 1, "c": 0}


def clock(off1_start: float, off1_end: float, err: float = 0.1) -> dict:
    return {
        "start": {
            "0": {"offset_ms": 0.0, "error_ms": err},
            "1": {"offset_ms": off1_start, "error_ms": err},
        },
        "end": {
            "0": {"offset_ms": 0.0, "error_ms": err},
            "1": {"offset_ms": off1_end, "error_ms": err},
        },
    }


def test_trust_rule_bounds_offset_uncertainty_and_drift():
    t = {x.flow_id: x for x in flow_trust(FLOWS, HOST_OF, clock(0.2, 0.5), threshold_ms=1.0)}
    assert t[3].owd == ONE_HOST and t[3].bound_ms is None
    # a -> b: host 1 ahead by 0.2 then 0.5 ms, +- 0.1 ms at each host: bound 0.5 + 0.2
    assert t[1].owd == TRUSTED
    assert t[1].offset_start_ms == pytest.approx(0.2) and t[1].offset_end_ms == pytest.approx(0.5)
    assert t[1].drift_ms == pytest.approx(0.3) and t[1].error_ms == pytest.approx(0.2)
    assert t[1].bound_ms == pytest.approx(0.7)
    # b -> a sees the opposite sign, the same bound
    assert t[2].offset_start_ms == pytest.approx(-0.2) and t[2].bound_ms == pytest.approx(0.7)
    # the same clocks against a 0.6 ms threshold: refused, at the end as at the start
    assert {x.owd for x in flow_trust(FLOWS[:2], HOST_OF, clock(0.2, 0.5), 0.6)} == {UNTRUSTED}
    assert {x.owd for x in flow_trust(FLOWS[:2], HOST_OF, clock(0.9, 0.0), 1.0)} == {UNTRUSTED}
    # no measurement of a host at the start: untrusted, not guessed
    c = clock(0.0, 0.0)
    del c["start"]["1"]
    assert flow_trust(FLOWS[:1], HOST_OF, c)[0].owd == UNTRUSTED
    with pytest.raises(ValueError, match=">= 0 ms"):
        flow_trust(FLOWS, HOST_OF, clock(0, 0), threshold_ms=-1)


def test_summary_refuses_untrusted_and_names_the_fix():
    s, lines = trust_summary(flow_trust(FLOWS, HOST_OF, clock(3.0, 3.4), threshold_ms=1.0))
    assert s["verdict"] == UNTRUSTED and s["untrusted_flows"] == [1, 2]
    assert s["offset_bound_ms"] == pytest.approx(3.6) and s["fix"] == FIX
    (line,) = lines
    assert "UNTRUSTED for 2 of 2 flow(s)" in line and "1 ms threshold" in line
    assert "chrony" in line and "PTP" in line and "--owd-trust-ms" in line
    s, lines = trust_summary(flow_trust(FLOWS, HOST_OF, clock(0.01, 0.02)))
    assert s["verdict"] == TRUSTED and s["untrusted_flows"] == [] and s["fix"] is None
    assert "trusted for 2 flow(s)" in lines[0] and "+0.020 ms" in lines[0]


def test_collect_marks_untrusted_flows_in_files_and_summary(tmp_path):
    """collect() with the trust of two flows, one refused: owd_trust.csv, the summary's
    figures (no one-way delay for the refused flow) and its lines."""
    agent_dir = tmp_path / "traffic"
    agent_dir.mkdir()
    rows = [
        f"{f},0,{i},a,b,1000,{i * 10**6},{i * 10**6 + 5 * 10**6},5.0\n"
        for f in (1, 3)
        for i in range(5)
    ]
    (agent_dir / "b.packets.csv").write_text("".join(rows))
    # (collect's flow ids are 0..n-1)
    flows = (Flow(0, "ab", "bulk", "a", "b"), Flow(1, "aa", "bulk", "a", "c"))
    plan = SimpleNamespace(flows=flows, sample={}, jobs=())
    resolved = SimpleNamespace(workloads=(), to_dict=lambda: {})
    c = clock(0.0, 0.0)
    c["end"]["1"]["offset_ms"] = 4.0  # host 1 drifted 4 ms away by the end
    trust = flow_trust(plan.flows, HOST_OF, c, threshold_ms=1.0)
    summary, files = collect(
        tmp_path, agent_dir, resolved, plan, ["a", "b"], {}, [], lambda j, t: (0.0, 0.0),
        (0, 10**9), time.time(), trust,
    )  # fmt: skip
    assert tmp_path / "owd_trust.csv" in files
    with open(tmp_path / "owd_trust.csv") as f:
        got = {r["flow_id"]: r for r in csv.DictReader(f)}
    assert got["0"]["owd"] == UNTRUSTED and float(got["0"]["bound_ms"]) == pytest.approx(4.2)
    assert float(got["0"]["drift_ms"]) == pytest.approx(4.0)
    assert got["1"]["owd"] == ONE_HOST and got["1"]["bound_ms"] == ""
    streams = summary["streams"]
    assert streams["ab"]["owd_p50_ms"] is None and streams["aa"]["owd_p50_ms"] == 5.0
    text = "\n".join(summary["lines"])
    assert "bulk a->b: " in text and "one-way delay untrusted" in text
    assert "bulk a->c: " in text and "one-way delay p50 5.0 ms" in text
    assert "UNTRUSTED for 1 of 1" in text and "chrony" in text
    assert summary["owd_trust"]["flows"]["0"]["owd"] == UNTRUSTED


# -- RemoteAgents and the workers' agents, on a local Ray -----------------------------------
ray = pytest.importorskip("ray")


class LoopbackNode:
    def popen(self, argv, **kw):
        import subprocess

        return subprocess.Popen(argv, **kw)


class LoopbackEmu:
    """A host's share whose nodes are this machine (agents on 127.0.0.x)."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir

    timings: dict = {}

    def node(self, name):
        return LoopbackNode()

    def stop(self):
        pass


def make_worker(host: int, run_dir: str):
    from meshemu.live.cluster.worker import HostWorker

    w = HostWorker(host, "tt")
    w.emu = LoopbackEmu(run_dir)
    return w


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    from localray import local_ray_session

    with local_ray_session(sys.modules[__name__], tmp_path_factory.mktemp("ray")) as r:
        yield r


class WorkerActor:
    """The HostWorker methods the driver calls, over a loopback share (Ray cannot proxy
    ``__getattr__``, so each is spelled out)."""

    def __init__(self, host: int, run_dir: str):
        self.w = make_worker(host, run_dir)

    def clock(self):
        return self.w.clock()

    def clock_server(self, address):
        return self.w.clock_server(address)

    def agents_start(self, configs, timeout):
        return self.w.agents_start(configs, timeout)

    def agents_go(self, a, b):
        return self.w.agents_go(a, b)

    def agents_send(self, node, cmd):
        return self.w.agents_send(node, cmd)

    def agents_wait_done(self, nodes, deadline):
        return self.w.agents_wait_done(nodes, deadline)

    def agents_stop(self):
        return self.w.agents_stop()

    def stop(self):
        return self.w.stop()


@pytest.mark.slow
def test_remote_agents_run_on_their_hosts_and_skew_refuses(local_ray, tmp_path):
    """Agent a on host 0 streams to agent b on host 1, each started by its host's worker; the
    files come back into the driver's traffic/ directory; host 1's clock measured 5 ms ahead
    (injected) makes the a->b flow's one-way delays untrusted, while the real measurement
    (the same kernel clock) is trusted."""
    from meshemu.live.cluster.engine import ClusterEmulation
    from meshemu.partition import partition_nodes

    part = partition_nodes(2, np.array([1], dtype=np.int64), 2, method="planes")
    emu = ClusterEmulation(
        "127.0.0.1:1", ["a", "b"], ["sat"] * 2, part, "userspace", tmp_path, "tt", 1.0
    )
    emu._ray = ray
    assert part.host.tolist() == [0, 1], part.host
    actor = ray.remote(WorkerActor).options(num_cpus=0)
    emu.workers = {h: actor.remote(h, str(tmp_path / "hosts" / f"h{h}")) for h in range(2)}
    # without the hosts' addresses the clocks are read through Ray calls
    assert {v["via"] for v in emu.measure_clocks().values()} == {"ray"}
    emu.info = {h: {"address": "127.0.0.1"} for h in range(2)}
    emu.clock["start"] = emu.measure_clocks()
    start = emu.clock["start"]
    # through the hosts' UDP clock servers; one kernel clock: the measured offset is within
    # its own error bound (+ 0.05 ms: the two time.time_ns() reads around the exchange)
    assert {v["via"] for v in start.values()} == {"udp"}, start
    assert all(abs(v["offset_ms"]) <= v["error_ms"] + 0.05 for v in start.values()), start

    addrs = {"a": "127.0.0.1", "b": "127.0.0.2"}
    src, dst = "a", "b"  # a on host 0, b on host 1
    cfg = {
        src: AgentConfig(
            node=src,
            bind=addrs[src],
            addrs=addrs,
            out_dir="/nonexistent",
            control=True,
            streams=(StreamConfig(flow_id=1, dst=dst, rate_bps=5e6, start_s=0, duration_s=0.5),),
        ),
        dst: AgentConfig(
            node=dst, bind=addrs[dst], addrs=addrs, out_dir="/nonexistent", control=True
        ),
    }
    sup = emu.agents(tmp_path / "traffic")
    try:
        sup.start(cfg, 60)
        t0 = time.time_ns() + 200_000_000
        sup.go(t0, t0 + 1_000_000_000)
        assert sup.wait_done([src], time.time() + 10)
    finally:
        statuses = sup.stop()
    assert set(statuses) == {"a", "b"} and statuses[src].sent_packets > 100
    # each host's agents wrote on that host (out_dir rewritten), and the bytes came back
    for h, n in enumerate("ab"):
        assert (tmp_path / "hosts" / f"h{h}" / "traffic" / f"{n}.json").exists()
        assert (tmp_path / "traffic" / f"{n}.log").exists()
    rows = (tmp_path / "traffic" / f"{dst}.packets.csv").read_text().splitlines()
    assert len(rows) == statuses[dst].rx_packets > 100
    flows = [Flow(1, "ab", "bulk", src, dst)]
    # the real measurement: trusted (loopback on one clock)
    emu.clock["end"] = emu.measure_clocks()
    (t,) = emu.owd_trust(flows, 1.0)
    assert t.owd == TRUSTED and t.bound_ms is not None and t.bound_ms < 1.0, t
    # host 1 measured 5 ms ahead: refused, with the offset it was given
    emu.clock_skew_ms = {1: 5.0}
    emu.clock["end"] = emu.measure_clocks()
    (t,) = emu.owd_trust(flows, 1.0)
    assert t.owd == UNTRUSTED and t.bound_ms > 5.0
    assert abs(abs(t.offset_end_ms) - 5.0) < 1.0 and abs(t.drift_ms) > 4.0
    ray.get([w.stop.remote() for w in emu.workers.values()])
    # no agent of this test is left
    left = []
    for p in Path("/proc").iterdir():
        try:
            argv = (p / "cmdline").read_bytes()
        except OSError:
            continue
        if b"meshemu.traffic.agent" in argv and str(tmp_path).encode() in argv:
            left.append(p.name)
    assert left == []
