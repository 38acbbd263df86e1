"""Traffic agents in a live static network (root, userspace shaper).

The network: four compute satellites in a ring, every ISL 5 ms one way at 50 Mbit/s, and two
ground stations (g0 on c0, g1 on c2) with 5 ms, 50 Mbit/s links::

    g0 -- c0 ---- c1
          |        |
          c3 ---- c2 -- g1

A ring all-reduce's transfers are one hop each (5 ms); its measured iterations must be
within 15 % of the alpha-beta prediction, and one-way delays equal the path delay within
1 ms.
"""

from __future__ import annotations

import csv
import os
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from meshemu.live import emulation as em
from meshemu.live.shapers import make_shaper
from meshemu.spec.profile import Profile
from meshemu.traffic.runtime import TrafficRun, start_traffic

pytestmark = pytest.mark.root

NAMES = ["c0", "c1", "c2", "c3", "g0", "g1"]
KINDS = ["compute", "compute", "compute", "compute", "station", "user"]
EDGES = [(0, 1), (1, 2), (2, 3), (0, 3), (0, 4), (2, 5)]
TRANSIT = [True, True, True, True, False, False]
DELAY_S = 0.005
RATE_BPS = 50e6


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail(
            "integration tests need root (they create network namespaces); run them "
            "as root, as CI does"
        )


def topology():
    from meshemu.routing import get_scheme, snapshot_from_edges

    snap = snapshot_from_edges(
        6, EDGES, [DELAY_S] * len(EDGES), transit=TRANSIT, rates=[RATE_BPS] * len(EDGES), t_s=0.0
    )
    tab = get_scheme("shortest-delay").forwarding_tables(snap, np.arange(6, dtype=np.int32))
    return snap, tab


def endpoint_paths(snap, tab) -> dict:
    from meshemu.routing import trace_path

    return {(s, d): trace_path(tab, snap, s, d) for s in range(6) for d in range(6) if s != d}


@pytest.fixture
def network(tmp_path):
    """The network above, built with the userspace shaper; always stopped afterwards."""
    _require_root()
    run_id = f"mxtrf{uuid.uuid4().hex[:6]}"
    snap, tab = topology()
    emu = em.Emulation(NAMES, KINDS, make_shaper("userspace", run_id), tmp_path, run_id)
    try:
        emu.build(snap.key, snap, tab)
        yield emu, snap, tab
    finally:
        emu.stop()


def run_profile(
    emu, snap, tab, profile: dict, out: Path, wall_s: float, paths: dict | None = None, tables=None
) -> TrafficRun:
    """Run ``profile`` as the runner would: a step a second (static network), then
    finish and stop. ``paths`` (default: every pair, traced through ``tab``) and ``tables``
    are what each step gets."""
    sched = SimpleNamespace(nodes=SimpleNamespace(names=tuple(NAMES), kind=np.array(KINDS)))
    n_steps = int(wall_s) + 1
    run = start_traffic(Profile.from_dict(profile), None, emu, sched, [snap] * n_steps, out, wall_s)
    if paths is None:
        paths = endpoint_paths(snap, tab)
    try:
        t0 = time.monotonic()
        for k in range(n_steps):
            # the emulation's clock (a step a second, as the runner's): not a wait for a
            # condition; finish() waits on the agents' done reports
            time.sleep(max(0.0, t0 + k - time.monotonic()))
            run.step(k, float(k), paths, tables)
        run.finish()
    finally:
        run.stop()
    return run


def read(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def fifo_owd_ms(packets: list[dict], rate_bps: float, delay_s: float) -> np.ndarray:
    """The one-way delay each packet of ``packets.csv`` rows (one hop each) would see on a
    FIFO link of ``rate_bps`` and ``delay_s`` given its actual send time: Lindley's
    recursion per flow, departure = max(send, previous departure) + frame / rate (the
    frame is the IP packet plus its 14-byte Ethernet header)."""
    out = np.empty(len(packets))
    last: dict[tuple[str, str], float] = {}
    order = sorted(range(len(packets)), key=lambda i: int(packets[i]["send_unix_ns"]))
    for i in order:
        p = packets[i]
        sent = int(p["send_unix_ns"]) * 1e-9
        key = (p["src"], p["dst"])
        dep = max(sent, last.get(key, 0.0)) + (int(p["size_bytes"]) + 14) * 8 / rate_bps
        last[key] = dep
        out[i] = (dep + delay_s - sent) * 1e3
    return out


def test_ring_allreduce_matches_alpha_beta(network, tmp_path):
    emu, snap, tab = network
    prof = {
        "name": "t",
        "workloads": [
            {
                "kind": "allreduce",
                "name": "ring",
                "algorithm": "ring",
                "nodes": "compute",
                "model_mb": 1,
                "iterations": 5,
                "compute_ms": 100,
                "rate_mbps": 20,
                "start_s": 0,
            }
        ],
    }
    out = tmp_path / "run"
    run = run_profile(emu, snap, tab, prof, out, wall_s=12)
    its = read(out / "iterations.csv")
    assert len(its) == 5, (its, run.summary()["lines"])
    # hand check of the prediction: 6 steps of (alpha + 5 ms + wire bytes / 20 Mbit/s
    # + one 1442-byte frame at 50 Mbit/s)
    chunk = 250_000
    wire = chunk + 184 * 78
    step_s = 0.5e-3 + DELAY_S + wire * 8 / 20e6 + 1442 * 8 / RATE_BPS
    pace = float(run.jobs[0].pace_bps[0])
    assert pace == 20e6
    for row in its:
        pred = float(row["predicted_ms"])
        assert pred == pytest.approx(6 * step_s * 1e3, rel=1e-6)
        assert float(row["critical_path_ms"]) == pytest.approx(pred, rel=1e-6)  # symmetric
    # the median iteration within 15 % of the prediction; every one within 40 % (this
    # machine is shared: a descheduled agent can stretch one iteration)
    meas = np.array([float(r["duration_ms"]) for r in its])
    why = (meas.tolist(), pred, run.summary()["lines"])
    assert abs(np.median(meas) - pred) <= 0.15 * pred, why
    assert np.all(np.abs(meas - pred) <= 0.40 * pred), why
    pk = read(out / "packets.csv")
    assert len(pk) >= 5 * 6 * 4 * 184
    owd = np.array([float(r["owd_ms"]) for r in pk])
    # one hop: 5 ms plus serialisation of the frame at 50 Mbit/s (0.23 ms)
    assert np.median(np.abs(owd - DELAY_S * 1e3)) < 1.0, np.percentile(owd, [5, 50, 95])
    # each frame against the link it crossed, fed by the actual send times: an agent that
    # was descheduled catches up with a burst, which queues at 50 Mbit/s as it should (in
    # CI that queueing put the plain OWD's p95 at 7.7 ms); the tail beyond p90 is this
    # shared VM's own stalls, which stop the delay line too
    err = np.abs(owd - fifo_owd_ms(pk, RATE_BPS, DELAY_S))
    assert np.median(err) < 0.2 and np.percentile(err, 90) < 1.0, np.percentile(err, [50, 90, 99])
    s = run.summary()
    assert s["retransmissions"] <= 10  # none, unless a busy machine drops a few
    assert any(line.startswith("all-reduce ring over 4 nodes") for line in s["lines"])
    # the path of every ring flow is its one hop, at 5 ms
    paths = read(out / "flow_paths.csv")
    assert {r["path"] for r in paths} == {"c0 c1", "c1 c2", "c2 c3", "c3 c0"}
    assert all(float(r["delay_ms"]) == pytest.approx(5.0) for r in paths)
    # transport round trips of the ring's messages: one 5 ms hop each way, plus the last
    # fragment's serialisation (1442 bytes at 50 Mbit/s, 0.23 ms) and the ACK's
    rtt = np.array([float(r["rtt_ms"]) for r in read(out / "rtt.csv")])
    assert rtt.size >= 4 * 2 * 3 * 2  # 4 nodes x 6 transfers x >= 2 iterations
    assert rtt.min() >= 10.0 and 10.0 <= np.median(rtt) <= 11.5, np.percentile(rtt, [0, 50])
    # agents are gone
    assert all(p.poll() is not None for p in run.procs.values())


def test_mixed_workload_files(network, tmp_path):
    emu, snap, tab = network
    prof = {
        "name": "mixed",
        "seed": 3,
        "workloads": [
            {
                "kind": "inference",
                "name": "inf",
                "users": "users",
                "servers": "compute",
                "rate_per_s": 20,
                "request_bytes": 2000,
                "response_bytes": 8000,
                "deadline_ms": 100,
                "target": "nearest",
                "duration_s": 3,
            },
            {
                "kind": "bulk",
                "name": "bulk",
                "src": "g0",
                "dst": "g1",
                "rate_mbps": 5,
                "start_s": 0.5,
                "duration_s": 2,
            },
            {
                "kind": "replay",
                "name": "replay",
                "pcap": str(Path(__file__).resolve().parents[2] / "traffic" / "example.pcap"),
                "src": "g1",
                "dst": "g0",
                "duration_s": 3,
            },
            {
                "kind": "allreduce",
                "name": "ps",
                "algorithm": "parameter_server",
                "nodes": ["c0", "c1", "c2"],
                "model_mb": 0.2,
                "iterations": 2,
                "compute_ms": 50,
            },
        ],
    }
    out = tmp_path / "run"
    run = run_profile(emu, snap, tab, prof, out, wall_s=7)
    heads = {
        "flows.csv": "flow_id,name,kind,src,dst",
        "packets.csv": "flow_id,msg_id,seq,src,dst,size_bytes,send_unix_ns,recv_unix_ns,owd_ms",
        "flow_throughput.csv": "t_s,flow_id,rx_bytes,mbps",
        "flow_paths.csv": "t_s,flow_id,src,dst,path,delay_ms",
        "link_counters.csv": "t_s,a,b,packets,bytes,dropped",
        "iterations.csv": "job,algorithm,iteration,start_unix,end_unix,duration_ms,predicted_ms,"
        "first_start_unix,critical_path_ms",
        "inference.csv": "request_id,user,server,send_unix,done_unix,latency_ms,deadline_ms,missed",
    }
    for name, head in heads.items():
        assert (out / name).read_text().splitlines()[0] == head, name
    assert (out / "traffic.json").exists()
    inf = read(out / "inference.csv")
    assert len(inf) > 30
    # g1 (user) is nearest to c2: one hop each way (10 ms), plus the request's 2 and the
    # response's 6 packets paced at 20 Mbit/s (0.58 ms each): ~14.6 ms
    lat = [float(r["latency_ms"]) for r in inf if r["user"] == "g1" and r["latency_ms"]]
    assert all(r["server"] == "c2" for r in inf if r["user"] == "g1")
    assert lat and 13 <= np.median(lat) <= 17, lat
    flows = {r["flow_id"]: r for r in read(out / "flows.csv")}
    bulk = next(f for f, r in flows.items() if r["kind"] == "bulk")
    rx = sum(int(r["rx_bytes"]) for r in read(out / "flow_throughput.csv") if r["flow_id"] == bulk)
    assert rx == pytest.approx(5e6 / 8 * 2 * 1428 / 1442, rel=0.1)
    replay = next(f for f, r in flows.items() if r["kind"] == "replay")
    n_replay = sum(1 for r in read(out / "packets.csv") if r["flow_id"] == replay)
    assert n_replay > 20
    its = read(out / "iterations.csv")
    assert [r["job"] for r in its] == ["ps", "ps"]
    counters = read(out / "link_counters.csv")
    assert {(r["a"], r["b"]) for r in counters} >= {("c0", "g0"), ("c2", "g1")}
    assert all(p.poll() is not None for p in run.procs.values())
    assert run.files() and all(f.exists() for f in run.files())


def test_a_flow_outside_the_endpoint_pairs_gets_the_path_the_tables_forward_on(network, tmp_path):
    """A bulk flow c0 -> c1 whose pair the runner's recorder does not cover is traced through
    the installed forwarding tables. Here they detour c0 -> c3 -> c2 -> c1 (15 ms) instead
    of the 5 ms direct hop: the recorded path and the measured one-way delay are the
    detour's, not the shortest-delay path's."""
    from meshemu.routing import ForwardingTables, trace_path

    emu, snap, tab = network
    nh = tab.next_hop.copy()
    j = tab.dest_index(1)
    nh[0, j, 0], nh[3, j, 0], nh[2, j, 0] = 3, 2, 1
    detour = ForwardingTables(destinations=tab.destinations, next_hop=nh, scheme="detour")
    assert trace_path(detour, snap, 0, 1) == [0, 3, 2, 1]
    emu.apply(snap, detour)
    prof = {
        "name": "detour",
        "workloads": [
            {
                "kind": "bulk",
                "name": "bulk",
                "src": "c0",
                "dst": "c1",
                "rate_mbps": 2,
                "start_s": 0.2,
                "duration_s": 2,
            }
        ],
    }
    out = tmp_path / "run"
    run_profile(emu, snap, tab, prof, out, wall_s=3, paths={}, tables=detour)
    rows = read(out / "flow_paths.csv")
    assert rows and {r["path"] for r in rows} == {"c0 c3 c2 c1"}, rows
    assert float(rows[0]["delay_ms"]) == pytest.approx(15.0)
    owd = np.array([float(r["owd_ms"]) for r in read(out / "packets.csv")])
    assert owd.size > 100
    # three 5 ms hops plus serialisation; the direct hop would be ~5 ms
    # 2 ms: the userspace delay line's overhead on this machine (see test_run.RTT_TOLERANCE_MS);
    # the direct path would be 5 ms
    assert abs(np.median(owd) - 15.0) < 2.0, np.percentile(owd, [5, 50, 95])
