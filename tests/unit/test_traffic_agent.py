"""Two real agents on loopback (127.0.0.1 and 127.0.0.2, no root), driven through their
control pipes by the runtime's supervisor: a ring all-reduce with simulated losses (NACK and
RTO recovery), inference request/response, a bulk flow, and a clean stop. Also the agent
configuration's JSON round trip and the control lines."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from meshemu.errors import EmulationError
from meshemu.traffic import schedule as sch
from meshemu.traffic.config import (
    AgentConfig,
    AgentStatus,
    CollectiveConfig,
    Done,
    Go,
    InferenceClientConfig,
    InferenceServerConfig,
    Ready,
    Stop,
    StreamConfig,
    Targets,
    config_from_dict,
    config_to_dict,
    parse_command,
    parse_report,
    read_agent_config,
    write_agent_config,
)
from meshemu.traffic.supervision import AgentSupervisor

ADDRS = {"a": "127.0.0.1", "b": "127.0.0.2"}


def run_agents(
    tmp_path: Path, cfgs: dict[str, AgentConfig], seconds: float
) -> dict[str, AgentStatus]:
    """Start the agents, give the go, wait until each reported done (or ``seconds``), stop
    them; their statuses. Every agent must exit with 0 and report its status."""
    sup = AgentSupervisor(tmp_path)
    try:
        sup.start(cfgs, ready_timeout_s=60)
        start = time.time_ns() + 200_000_000
        sup.go(start, start + int(seconds * 1e9))
        assert sup.wait_done(cfgs, time.time() + seconds + 5), sup.done
    finally:
        st = sup.stop(wait_s=10)
    codes = {n: p.returncode for n, p in sup.procs.items()}
    logs = {n: sup.log_tail(n) for n in cfgs}
    assert codes == {n: 0 for n in cfgs}, logs
    assert set(st) == set(cfgs), logs
    return st


def base(tmp_path: Path, node: str, **kw) -> AgentConfig:
    return AgentConfig(
        node=node, bind=ADDRS[node], addrs=ADDRS, out_dir=str(tmp_path), control=True, **kw
    )


def ring_configs(tmp_path: Path, drop_every: int) -> dict[str, AgentConfig]:
    plan = tuple(sch.ring_plan(2, 300_000))
    flow_ids = tuple(1 if t.src == 0 else 2 for t in plan)
    return {
        node: base(
            tmp_path,
            node,
            drop_every=drop_every,
            collectives=(
                CollectiveConfig(
                    job="j",
                    rank=rank,
                    nodes=("a", "b"),
                    iterations=3,
                    compute_ms=20,
                    start_s=0,
                    plan=plan,
                    flow_ids=flow_ids,
                    pace_bps=(50e6,) * len(plan),
                ),
            ),
        )
        for rank, node in enumerate("ab")
    }


@pytest.mark.parametrize("drop_every", [0, 17])
def test_ring_allreduce_over_loopback(tmp_path, drop_every):
    st = run_agents(tmp_path, ring_configs(tmp_path, drop_every), 20)
    frags = sch.n_fragments(150_000)  # 110 per transfer
    for node, peer, flow in (("a", "b", "2"), ("b", "a", "1")):
        its = [r.split(",") for r in (tmp_path / f"{node}.iterations.csv").read_text().splitlines()]
        # every iteration completed, in order, each after the previous one's compute time
        assert [r[1] for r in its] == ["0", "1", "2"], its
        start, end = [int(r[3]) for r in its], [int(r[4]) for r in its]
        assert all(end[i] + 20e6 <= start[i + 1] for i in range(2)), its
        # a 300 kB model over 2 nodes at 50 Mbit/s: 2 steps of ~25 ms
        assert all((e - s) / 1e6 > 40 for s, e in zip(start, end)), its
        assert st[node].messages_received == 3 * 2  # 2 steps, 3 iterations
        assert st[node].messages_acked == 6
        assert st[node].done
        # every fragment of the peer's 6 messages arrived; each received packet has its
        # row, and no more arrived than the peer sent
        rows = [r.split(",") for r in (tmp_path / f"{node}.packets.csv").read_text().splitlines()]
        assert len(rows) == st[node].rx_packets
        assert 3 * 2 * frags <= len(rows) <= st[peer].sent_packets
        assert {r[0] for r in rows} == {flow}
        plan = sch.ring_plan(2, 300_000)
        sent_by_peer = {
            it * len(plan) + t.index for it in range(3) for t in plan if t.src == "ab".index(peer)
        }
        assert {int(r[1]) for r in rows} == sent_by_peer
        seqs = [int(r[2]) for r in rows]
        assert len(set(seqs)) == len(seqs) and max(seqs) < st[peer].sent_packets
        assert all(r[3:5] == [peer, node] for r in rows)
    if drop_every:  # the simulated losses are deterministic: they must have been recovered
        assert sum(s.retransmissions for s in st.values()) > 0
        assert sum(s.nacks_sent for s in st.values()) > 0


def test_inference_and_bulk_over_loopback(tmp_path):
    a = base(
        tmp_path,
        "a",
        inference_clients=(
            InferenceClientConfig(
                job="inf",
                servers=("b",),
                times_s=tuple(0.1 * i for i in range(10)),
                request_bytes=3000,
                response_bytes=9000,
                deadline_ms=100,
                target="least_loaded",
                pace_bps=100e6,
                flow_req={"b": 5},
                flow_resp={"b": 6},
                id_base=7_000_000,
            ),
        ),
        streams=(StreamConfig(flow_id=9, dst="b", rate_bps=10e6, start_s=0, duration_s=1.0),),
    )
    b = base(tmp_path, "b", inference_servers=(InferenceServerConfig(5, 6, 9000, 100e6),))
    run_agents(tmp_path, {"a": a, "b": b}, 3)
    rows = [r.split(",") for r in (tmp_path / "a.inference.csv").read_text().splitlines()]
    assert [int(r[0]) for r in rows] == list(range(7_000_000, 7_000_010))
    assert all(r[1:3] == ["a", "b"] and r[7] == "0" for r in rows)
    assert all(0 < float(r[5]) < 100 for r in rows)
    bulk = [r for r in (tmp_path / "b.packets.csv").read_text().splitlines() if r.startswith("9,")]
    expected = 1.0 / sch.bulk_interval_s(10.0)  # 867 packets in 1 s
    assert abs(len(bulk) - expected) <= 0.03 * expected
    assert all(int(r.split(",")[5]) == 1428 for r in bulk)


def test_agent_without_go_stops_on_stop(tmp_path):
    """An agent that never got the go exits cleanly on stop, with its status."""
    sup = AgentSupervisor(tmp_path)
    try:
        sup.start({"a": base(tmp_path, "a")})
        assert sup.ready == {"a"}
    finally:
        st = sup.stop(wait_s=10)
    assert sup.procs["a"].returncode == 0
    assert st["a"].node == "a" and st["a"].sent_packets == 0 and not st["a"].done


def test_config_round_trip(tmp_path):
    cfgs = ring_configs(tmp_path, 3)
    a = replace(
        cfgs["a"],
        sample={9: 4},
        streams=(
            StreamConfig(9, "b", 0.5, None, rate_bps=1e6),
            StreamConfig(10, "b", 0.0, 2.0, times_s=(0.0, 0.1), ip_bytes=(100, 200)),
        ),
        inference_servers=(InferenceServerConfig(5, 6, 900, 1e6),),
    )
    assert read_agent_config(write_agent_config(a, tmp_path / "a.json")) == a
    assert config_from_dict(config_to_dict(cfgs["b"])) == cfgs["b"]


@pytest.mark.parametrize(
    "change",
    [
        {"node": None},
        {"unknown_field": 1},
        {"control": "yes"},
        {"sample": {"3": 0}},
        {"streams": [{"flow_id": 1, "dst": "nowhere", "rate_bps": 1e6}]},
    ],
)
def test_bad_config_is_an_emulation_error(tmp_path, change):
    d = config_to_dict(ring_configs(tmp_path, 0)["a"])
    d.update(change)
    if change.get("node", 1) is None:
        del d["node"]
    with pytest.raises(EmulationError):
        config_from_dict(d)


def test_control_lines_round_trip():
    for cmd in (Go(1, 2), Targets("inf", ("s1", "s 2")), Stop()):
        assert parse_command(cmd.line()) == cmd
    for rep in (Ready(), Done(5), AgentStatus("a", sent_packets=3, cpu_s=0.5, done=True)):
        assert parse_report(rep.line()) == rep
    for bad in ("go 1", "jump", "targets [1"):
        with pytest.raises(EmulationError):
            parse_command(bad)
    with pytest.raises(EmulationError):
        parse_report('status {"node": "a", "x": 1}')


def test_agent_without_control_runs_on_its_config_times(tmp_path):
    """``python -m meshemu.traffic.agent CONFIG`` without control: it starts at the config's
    time zero, reports done on stdout when its stream is over, and SIGTERM ends it with its
    status."""
    import signal
    import subprocess
    import sys

    now = time.time_ns()
    cfg = AgentConfig(
        node="a",
        bind="127.0.0.1",
        addrs=ADDRS,
        out_dir=str(tmp_path),
        start_unix_ns=now + 1_000_000_000,
        end_unix_ns=now + 5_000_000_000,
        streams=(StreamConfig(1, "b", 0.0, 0.2, rate_bps=1e6),),
    )
    path = write_agent_config(cfg, tmp_path / "a.json")
    p = subprocess.Popen(
        [sys.executable, "-m", "meshemu.traffic.agent", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert parse_report(p.stdout.readline()) == Ready()
        done = parse_report(p.stdout.readline())
        assert isinstance(done, Done) and done.unix_ns >= now + 1_200_000_000
        p.send_signal(signal.SIGTERM)
        status = parse_report(p.stdout.readline())
        assert p.wait(timeout=10) == 0, p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert isinstance(status, AgentStatus) and status.done
    # at most the schedule's packets (fewer if the interpreter started after time zero: a
    # late sender does not make up more than MAX_BURST_NS of lost time)
    assert 1 <= status.sent_packets <= 0.2 / sch.bulk_interval_s(1.0) + 1
