"""The live emulation with ``--shaper netem`` on a kernel that has sch_netem (inside the VM).

What the issue asks of the netem path, end to end:

* every link carries a netem root qdisc whose delay and rate are the plan's (``links.csv``)
  for the current step, changed in place over time (same qdisc, counters keep counting);
* ping RTT between two ground stations follows the plan (``paths.csv``), see
  :data:`RTT_EARLY_MS` and :data:`RTT_LATE_MEDIAN_MS_PER_QDISC` for the tolerance and why;
* a link going down moves traffic to another path;
* a finished run, and ``meshemu clean`` after a SIGKILLed one, leave the VM's network as
  it was.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from vmhelpers import U32_MAX, read_qdiscs

from meshemu.live import emulation as em
from meshemu.live.emulation import DELAY_TOLERANCE_S
from meshemu.live.shapers import make_shaper
from meshemu.spec.scenario import load_scenario

MESHEMU = [sys.executable, "-m", "meshemu.cli"]
#: Emulated (= wall-clock) seconds of the netem run.
RUN_S = 30
#: The default scenario with its epoch moved so that within :data:`RUN_S` new_york's ground
#: link hands over (at t = 8 s the link to s0_1_1 leaves the plan and one to s0_6_2 comes
#: up) and the london -> new_york path changes from 3 to 7 hops, one-way 30.2 -> 69.8 ms
#: (found with ``meshemu plan`` over a range of epochs).
RUN_EPOCH = "2026-01-01T02:34:00Z"
#: Ping tolerance, per step (about 8 pings of 10 Hz each). netem never releases a packet
#: before its time, so in no step may the fastest ping be below the plan by more than
#: ping's rounding (it prints 3 significant digits): RTT_EARLY_MS. Above the plan, qemu TCG
#: emulates the CPU in software, so every hop (8 namespaces, 14 netem qdiscs and their
#: timers on the 7-hop path) runs late by a variable amount. Measured on a quiet 2-core
#: host: fastest ping +1.0..+2.3 ms, median +1.1..+3.3 ms above the plan; when the host is
#: busy (CI, other jobs), a few steps in a row get slower (fastest +5 ms, median +18 ms,
#: single pings +50 ms). Hence, in OK_SHARE of the steps the fastest ping must be within
#: a bound and the median within another of the plan (see below), and in every step
#: the fastest ping must be nearer to that step's plan than to the other path's: tight enough
#: to tell the two paths of this run apart (their RTTs differ by 79 ms), loose enough for
#: TCG on a shared host (one step of a run measured while other emulations ran on the same
#: 2 cores: fastest +23 ms, median +134 ms). On hardware, tests/integration/test_run.py
#: holds the userspace shaper to 1 ms.
#: 2026-12-01, same quiet host, kernel 6.1.0-57: the code before the package redesign and
#: its first steps measured within 5 ms; after it, the fastest ping on the 7-hop path came
#: out +5.3 ms in most steps (3-hop path +2.1 ms) in two runs, with every qdisc still
#: carrying the plan's values (test_every_link_has_a_netem_qdisc_with_the_plans_delay_...). The
#: cause is not found (see the issue 8 note), so the bound was 8 ms.
#: 2026-12-02, CI (stop 22, a shared host): on the 7-hop path the fastest ping came out
#: +6..+12 ms and the median +10..+24 ms in 9 of 30 steps, the 3-hop path within +2.5 ms
#: as before. TCG's lateness grows with the qdiscs (and namespaces) a ping crosses, so the
#: bounds are per netem qdisc on the round trip (2 per link of the path): fastest ping
#: RTT_LATE_MIN_MS_PER_QDISC, median RTT_LATE_MEDIAN_MS_PER_QDISC (7 hops: 14 and 21 ms;
#: 3 hops: 6 and 9 ms). The two paths' RTTs differ by far more (PATHS_APART_MS).
RTT_EARLY_MS = 0.6
RTT_LATE_MIN_MS_PER_QDISC = 1.0
RTT_LATE_MEDIAN_MS_PER_QDISC = 1.5
PATHS_APART_MS = 40.0
OK_SHARE = 0.8


def _qdiscs_on_round_trip(path: str) -> int:
    """netem qdiscs a ping crosses there and back on a path of ``path``'s nodes."""
    return 2 * (len(path.split()) - 1)


# ---- what the VM's network looks like -----------------------------------------------------
def machine_state() -> dict:
    """Everything of the VM's root network namespace a run could change or leave behind."""

    def run(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    procs = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                argv = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            text = b" ".join(argv).decode(errors="replace")
            if (
                "meshemu" in text or "mininet:" in text or em.RUN_MARKER in text
            ) and "pytest" not in text:
                procs.append(text)
    qdiscs = json.loads(run("tc", "-j", "qdisc", "show") or "[]")
    return {
        "netns": sorted(run("ip", "netns", "list").split()),
        "links": sorted(name for _, name in socket.if_nameindex()),
        "addresses": sorted(run("ip", "-o", "addr", "show").splitlines()),
        "routes": sorted(run("ip", "route", "show", "table", "all").splitlines()),
        "qdiscs": sorted((q["dev"], q["kind"], q["handle"]) for q in qdiscs),
        "processes": sorted(procs),
        "locks": sorted(os.listdir(em.LOCK_DIR)) if em.LOCK_DIR.is_dir() else [],
    }


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---- one live run of the default scenario, sampled every step ------------------------------
@pytest.fixture(scope="module")
def netem_run(tmp_path_factory):
    """``meshemu run --shaper netem --traffic none`` of the default scenario at
    :data:`RUN_EPOCH` for :data:`RUN_S` s (through ``run_emulation``, for its hooks), a 10 Hz
    ping london -> new_york all along, and every node's qdiscs read right after each step
    was applied."""
    import yaml

    from meshemu.live.runner import run_emulation

    before = machine_state()
    out = tmp_path_factory.mktemp("netem-run")
    raw = dict(load_scenario("default").raw, epoch=RUN_EPOCH)
    scenario = out / "default-handover.yaml"
    scenario.write_text(yaml.safe_dump(raw))
    state: dict = {"samples": {}, "sample_s": []}

    def sample(k: int, emu) -> None:
        t0 = time.monotonic()
        qd = read_qdiscs(emu.pids)
        state["samples"][k] = {emu.names[i]: qd[pid] for i, pid in enumerate(emu.pids)}
        state["sample_s"].append(time.monotonic() - t0)

    def built(emu) -> None:
        state["pids"] = {n: p for n, p in zip(emu.names, emu.pids)}
        sample(0, emu)
        state["tc_check"] = {
            name: subprocess.run(
                ["nsenter", "-t", str(emu.node(name).pid), "-n", "tc", "-j", "qdisc", "show"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            for name in ("london", "s0_0_0")
        }
        dst = emu.node_address("new_york")
        state["ping"] = emu.node("london").popen(
            ["ping", "-D", "-n", "-i", "0.1", "-W", "2", "-w", str(RUN_S + 20), dst],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    try:
        res = run_emulation(
            str(scenario),
            duration_s=RUN_S,
            step_s=1.0,
            shaper="netem",
            out_dir=out,
            traffic=None,
            on_built=built,
            on_step=lambda k, snap, emu: sample(k, emu),
            plots=False,
        )
    finally:
        p = state.get("ping")
        if p is not None:
            p.terminate()
            state["ping_text"] = p.communicate(timeout=20)[0]
    state["after"] = machine_state()
    return res, state, before


def _interfaces(run_dir: Path) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """(a, b) node names of each link -> [(node, ifname), (node, ifname)] (addressing.csv)."""
    out: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for r in _rows(run_dir / "addressing.csv"):
        if r["link_id"]:
            a, b = sorted((r["node"], r["peer_node"]))
            out[(a, b)].append((r["node"], r["ifname"]))
    return out


def test_the_run_used_netem_and_kept_real_time(netem_run):
    res, state, _ = netem_run
    s = res.summary
    assert s["shaper"] == "netem" and s["steps"] == RUN_S + 1
    steps = _rows(res.run_dir / "steps.csv")
    # applying a step (~65 netlink qdisc changes + routes) takes 25..60 ms under TCG (it
    # took 4.5 s with a `tc` process per namespace); the clock may slip a little more
    # because each step here also reads every node's qdiscs, and TCG on a busy host stalls
    apply_ms = [float(r["apply_ms"]) for r in steps[1:]]
    assert np.median(apply_ms) < 500, f"apply per step: {apply_ms}"
    assert max(float(r["lag_ms"]) for r in steps) < 2000, steps


def test_every_link_has_a_netem_qdisc_with_the_plans_delay_and_rate_at_each_step(netem_run):
    res, state, _ = netem_run
    run_dir = res.run_dir
    ifaces = _interfaces(run_dir)
    n_links = res.summary["links_total"]
    assert len(ifaces) == n_links
    plan: dict[float, dict[tuple[str, str], dict]] = defaultdict(dict)
    for r in _rows(run_dir / "links.csv"):
        plan[float(r["t_s"])][tuple(sorted((r["a"], r["b"])))] = r
    steps = {int(r["step"]): float(r["t_s"]) for r in _rows(run_dir / "steps.csv")}
    samples = state["samples"]
    assert sorted(samples) == list(range(RUN_S + 1))
    checked_up = checked_down = 0
    for k, t in steps.items():
        qd = samples[k]
        for link, ends in ifaces.items():
            row = plan[t].get(link)
            up = row is not None and row["up"] == "1"
            for node, ifname in ends:
                q = qd[node].get(ifname)
                where = f"step {k} (t={t} s), link {link[0]}-{link[1]}, {node}:{ifname}"
                assert q is not None and q.kind == "netem", f"{where}: root qdisc {q}"
                assert q.handle == 0x10000, f"{where}: handle {q.handle:#x}, not 1:"
                if not up:
                    assert q.loss_u32 == U32_MAX, f"{where}: down in the plan, loss {q}"
                    checked_down += 1
                    continue
                assert q.loss_u32 == 0, f"{where}: up in the plan, loss {q.loss_u32}"
                delay_s = float(row["delay_ms"]) / 1e3
                assert abs(q.delay_ns / 1e9 - delay_s) <= DELAY_TOLERANCE_S + 1e-9, (
                    f"{where}: netem delay {q.delay_ns} ns, plan {row['delay_ms']} ms"
                )
                assert q.rate_bytes_per_s == round(float(row["rate_mbps"]) * 1e6) // 8, (
                    f"{where}: netem rate {q.rate_bytes_per_s} B/s, plan {row['rate_mbps']} Mbit/s"
                )
                checked_up += 1
    assert checked_up >= (RUN_S + 1) * n_links  # both ends of most links at every step
    # the decoder the samples come from agrees with tc itself
    for name, text in state["tc_check"].items():
        for q in json.loads(text):
            if q["kind"] != "netem":
                continue
            mine = samples[0][name][q["dev"]]
            assert mine.delay_ns / 1e9 == pytest.approx(q["options"]["delay"]["delay"], abs=1e-6)
            assert mine.rate_bytes_per_s == q["options"]["rate"]["rate"]
            assert mine.limit == q["options"]["limit"]


def test_qdiscs_are_changed_in_place_not_recreated(netem_run):
    """The delays change every step, yet each qdisc stays the same object: its packet
    counter, which a delete + add would reset, never goes back."""
    res, state, _ = netem_run
    samples = state["samples"]
    changed = carried = 0
    for node in samples[0]:
        for ifname in samples[0][node]:
            seq = [samples[k][node][ifname] for k in sorted(samples)]
            if seq[0].kind != "netem":
                continue
            delays = {q.delay_ns for q in seq}
            if len(delays) > 1:
                changed += 1
            packets = [q.packets for q in seq]
            assert packets == sorted(packets), (
                f"{node}:{ifname}: packet counter went back across an update ({packets}): "
                f"the qdisc was re-created, not changed"
            )
            if packets[-1] > packets[0] and len(delays) > 1:
                carried += 1
    assert changed >= res.summary["links_total"], changed  # both ends of most links
    assert carried >= 4, "too few links that carried the ping while being updated"
    assert res.summary["link_updates_total"] >= RUN_S * 50


def _planned_rtt_ms(run_dir: Path, src: str, dst: str) -> dict[float, float]:
    one_way: dict[float, dict[str, float]] = defaultdict(dict)
    for r in _rows(run_dir / "paths.csv"):
        if r["delay_ms"] and {r["src"], r["dst"]} == {src, dst}:
            one_way[float(r["t_s"])][r["src"]] = float(r["delay_ms"])
    return {t: v[src] + v[dst] for t, v in one_way.items() if len(v) == 2}


def _rtt_per_step(res, state) -> list[dict]:
    """Per step: the planned london -> new_york RTT, its path, and the pings sent and
    answered within the step (clear of the update at its start)."""
    run_dir = res.run_dir
    steps = _rows(run_dir / "steps.csv")
    starts = np.array([float(s["unix_s"]) for s in steps])
    planned = _planned_rtt_ms(run_dir, "london", "new_york")
    paths = {
        float(r["t_s"]): r["path"]
        for r in _rows(run_dir / "paths.csv")
        if r["src"] == "london" and r["dst"] == "new_york"
    }
    per_step: dict[int, list[float]] = defaultdict(list)
    for m in re.finditer(r"^\[(\d+\.\d+)\].*time=([\d.]+) ms", state["ping_text"], re.M):
        recv, rtt = float(m.group(1)), float(m.group(2))
        sent = recv - rtt / 1e3
        k = int(np.searchsorted(starts, sent, side="right")) - 1
        if k < 0 or k + 1 >= len(starts):
            continue
        if sent - starts[k] < 0.05 or recv > starts[k + 1] - 0.01:
            continue
        per_step[k].append(rtt)
    report = []
    for k, rtts in sorted(per_step.items()):
        t = float(steps[k]["t_s"])
        if t in planned and len(rtts) >= 3:
            report.append(
                {
                    "step": k,
                    "t_s": t,
                    "planned_ms": round(planned[t], 3),
                    "min_ms": min(rtts),
                    "median_ms": float(np.median(rtts)),
                    "max_ms": max(rtts),
                    "n": len(rtts),
                    "path": paths[t],
                }
            )
    out = os.environ.get("MESHEMU_VM_RESULTS")
    if out and os.path.isdir(out):
        Path(out, "rtt_vs_plan.json").write_text(json.dumps(report, indent=1))
    return report


def test_ping_rtt_between_two_ground_stations_follows_the_plan(netem_run):
    res, state, _ = netem_run
    report = _rtt_per_step(res, state)
    assert len(report) >= RUN_S - 5, f"too few steps with pings:\n{state['ping_text'][-2000:]}"
    early = [r for r in report if r["min_ms"] < r["planned_ms"] - RTT_EARLY_MS]
    assert not early, (
        "steps whose fastest ping beat the planned delay (is netem applied?):\n"
        + "\n".join(map(str, early))
    )
    by_path = {r["path"]: r["planned_ms"] for r in report}
    astray = [
        r
        for r in report
        if min(by_path.values(), key=lambda p: abs(r["min_ms"] - p)) != by_path[r["path"]]
    ]
    assert not astray, (
        "steps whose fastest ping is nearer another path's RTT than the "
        "planned one:\n" + "\n".join(map(str, astray))
    )
    slow = [
        r
        for r in report
        if r["min_ms"]
        > r["planned_ms"] + RTT_LATE_MIN_MS_PER_QDISC * _qdiscs_on_round_trip(r["path"])
        or r["median_ms"]
        > r["planned_ms"] + RTT_LATE_MEDIAN_MS_PER_QDISC * _qdiscs_on_round_trip(r["path"])
    ]
    assert len(slow) <= (1 - OK_SHARE) * len(report), (
        f"{len(slow)} of {len(report)} steps have their fastest ping more than "
        f"{RTT_LATE_MIN_MS_PER_QDISC} ms or their median more than "
        f"{RTT_LATE_MEDIAN_MS_PER_QDISC} ms per netem qdisc of the round trip above the "
        f"plan:\n" + "\n".join(map(str, slow))
    )
    # the plan itself moves (the path changes, and the RTT with it) and ping followed
    assert len({r["path"] for r in report}) >= 2, "the path must change during the run"
    ps = [r["planned_ms"] for r in report]
    assert max(ps) - min(ps) > PATHS_APART_MS


def test_a_link_leaving_the_plan_drops_everything_and_the_ping_takes_the_new_path(netem_run):
    """At the handover the old path's ground link leaves the plan: its qdiscs drop all
    (loss 100 %), and from that step on the pings take the new path's RTT."""
    res, state, _ = netem_run
    report = _rtt_per_step(res, state)
    change = next(i for i in range(1, len(report)) if report[i]["path"] != report[i - 1]["path"])
    old, new = report[change - 1], report[change]

    def hops(path):
        return {tuple(sorted(e)) for e in zip(path.split(), path.split()[1:])}

    gone = hops(old["path"]) - hops(new["path"])
    k = new["step"]
    in_plan = {
        tuple(sorted((r["a"], r["b"])))
        for r in _rows(res.run_dir / "links.csv")
        if float(r["t_s"]) == new["t_s"] and r["up"] == "1"
    }
    down = gone - in_plan
    assert down, f"no link of the old path {old['path']} left the plan at step {k}"
    ifaces = _interfaces(res.run_dir)
    for link in down:
        for node, ifname in ifaces[link]:
            q = state["samples"][k][node][ifname]
            assert q.kind == "netem" and q.loss_u32 == U32_MAX, (link, node, ifname, q)
    assert abs(new["planned_ms"] - old["planned_ms"]) > PATHS_APART_MS
    for r in report[change:]:
        assert abs(r["min_ms"] - new["planned_ms"]) < abs(r["min_ms"] - old["planned_ms"]), r


def test_the_run_leaves_the_network_as_it_was(netem_run):
    _, state, before = netem_run
    assert state["after"] == before


# ---- a link going down: the ring of tests/integration/test_emulator.py, on netem ----------
NAMES = ["s0", "s1", "s2", "g0", "g1"]
KINDS = ["sat", "sat", "sat", "station", "station"]
EDGES = [(0, 1), (1, 2), (0, 2), (0, 3), (1, 4)]
DELAY_S = 0.005


def ring(up=None, t_s: float = 0.0):
    """The ring (g0 - s0 - s1 - g1, s2 beside) and its shortest-delay tables::

    g0 --- s0 ---- s1 --- g1      g0 -> g1: 3 links of 5 ms, RTT 30 ms
            \\    /                with s0-s1 down: g0-s0-s2-s1-g1, RTT 40 ms
              s2
    """
    from meshemu.routing import get_scheme, snapshot_from_edges

    snap = snapshot_from_edges(
        5,
        EDGES,
        [DELAY_S] * len(EDGES),
        transit=[True, True, True, False, False],
        up=up,
        rates=[1e9] * len(EDGES),
        t_s=t_s,
    )
    return snap, get_scheme("shortest-delay").forwarding_tables(snap, np.arange(5, dtype=np.int32))


def test_a_link_going_down_moves_traffic_to_another_path(tmp_path):
    from vmhelpers import Ping, assert_rtt

    run_id = f"vmring{uuid.uuid4().hex[:6]}"
    snap, tab = ring()
    emu = em.Emulation(NAMES, KINDS, make_shaper("netem", run_id), tmp_path, run_id)

    def ping(count: int = 15) -> Ping:
        out = emu.node("g0").cmd(f"ping -n -c {count} -i 0.05 -W 2 {emu.node_address('g1')}")
        rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]
        return Ping(count, len(rtts), rtts, out)

    try:
        emu.build(snap.key, snap, tab)
        s0 = emu.node("s0")
        k01, k02 = emu.plan.link_id(0, 1), emu.plan.link_id(0, 2)
        g1 = emu.node_address("g1")
        assert f"dev isl{k01} " in s0.cmd(f"ip route get {g1}")
        assert_rtt(ping(), expected_ms=2 * 3 * DELAY_S * 1e3)
        before = read_qdiscs([s0.pid])[s0.pid][f"isl{k01}"]

        snap2, tab2 = ring(up=[False, True, True, True, True], t_s=1.0)  # s0-s1 down
        st = emu.apply(snap2, tab2)
        assert st.n_link_updates == 1 and st.n_route_changes > 0
        q = read_qdiscs([s0.pid])[s0.pid][f"isl{k01}"]
        assert q.loss_u32 == U32_MAX and q.handle == before.handle
        assert q.packets >= before.packets
        assert f"dev isl{k02} " in s0.cmd(f"ip route get {g1}")
        assert_rtt(ping(), expected_ms=2 * 4 * DELAY_S * 1e3)

        snap3, tab3 = ring(t_s=2.0)  # and back up
        emu.apply(snap3, tab3)
        assert read_qdiscs([s0.pid])[s0.pid][f"isl{k01}"].loss_u32 == 0
        assert f"dev isl{k01} " in s0.cmd(f"ip route get {g1}")
        assert_rtt(ping(), expected_ms=2 * 3 * DELAY_S * 1e3)
    finally:
        emu.stop()


# ---- the command line: a finished run, and `meshemu clean` after a killed one --------------
def test_meshemu_run_netem_from_the_command_line_then_clean(tmp_path):
    before = machine_state()
    r = subprocess.run(
        MESHEMU
        + [
            "run",
            "--shaper",
            "netem",
            "--duration",
            "5",
            "--traffic",
            "none",
            "--out",
            str(tmp_path / "cli"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "shaper netem" in r.stdout, r.stdout
    assert json.loads((tmp_path / "cli" / "summary.json").read_text())["shaper"] == "netem"
    assert machine_state() == before
    r = subprocess.run(MESHEMU + ["clean"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert machine_state() == before


def test_meshemu_clean_after_a_killed_netem_run_restores_the_network(tmp_path):
    before = machine_state()
    proc = subprocess.Popen(
        MESHEMU
        + [
            "run",
            "--shaper",
            "netem",
            "--duration",
            "300",
            "--traffic",
            "none",
            "--out",
            str(tmp_path / "k"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        seen = ""
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            seen += line
            if line.startswith("built in") or not line:
                break
        assert "built in" in seen, seen
        time.sleep(2)
        during = machine_state()
        assert during != before and during["locks"], "the run built nothing?"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        r = subprocess.run(MESHEMU + ["clean"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    deadline = time.monotonic() + 30
    while machine_state() != before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert machine_state() == before
