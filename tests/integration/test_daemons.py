"""Routing daemons in the nodes (issue 11), as root: OSPF and IS-IS (FRR) and OSPF (BIRD)
converge to the fewest-hop next hops, failed links are routed around within the detection
time, ground nodes carry no transit, a crashing daemon stops the run by name, and nothing is
left behind.

The reference next hops are computed here by breadth-first search over the links that are up
(``links.csv`` at t = 0), independently of meshemu's routing code: every neighbour one hop
closer to the destination, through satellites only."""

from __future__ import annotations

import csv
import subprocess
from collections import defaultdict, deque
from pathlib import Path

import pytest

from meshemu.errors import EmulationError
from meshemu.live.daemons import STATE_ROOT
from meshemu.live.runner import run_emulation
from meshemu.routing.daemons import DaemonProcess
from meshemu.routing.daemons.frr import FRROSPF
from meshemu.spec.scenario import Scenario

pytestmark = [pytest.mark.root, pytest.mark.slow]


def scenario(cutoff_deg: float | None = 45.0, endpoints: list[str] | None = None) -> Scenario:
    """60 satellites (6 x 10, 550 km, 53 deg), +Grid; cross-plane links go down above 45 deg
    (at t = 10, 22, 31, 33 s), two ground stations, four endpoints."""
    return Scenario.from_dict(
        {
            "name": "daemons",
            "epoch": "2026-01-01T00:00:00Z",
            "constellation": {
                "shells": [
                    {
                        "name": "w",
                        "type": "walker-delta",
                        "planes": 6,
                        "sats_per_plane": 10,
                        "phasing": 1,
                        "altitude_km": 550,
                        "inclination_deg": 53,
                    }
                ]
            },
            "ground": [
                {"name": "london", "lat_deg": 51.5, "lon_deg": -0.1},
                {"name": "nairobi", "lat_deg": -1.3, "lon_deg": 36.8},
            ],
            "isl": {
                "pattern": "plus-grid",
                "max_range_km": 8000,
                "cross_plane_max_lat_deg": cutoff_deg,
                "rate_mbps": 100,
            },
            "gsl": {"min_elevation_deg": 10, "rate_mbps": 100},
            "endpoints": endpoints or ["london", "nairobi", "s0_0_0", "s0_2_3"],
        }
    )


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def reference_next_hops(run_dir: Path, t_s: float = 0.0) -> dict[tuple[str, str], set[str]]:
    """Every node's fewest-hop next hops toward each endpoint at ``t_s`` (BFS, satellites
    only as transit)."""
    kinds = {r["name"]: r["kind"] for r in rows(run_dir / "nodes.csv")}
    adj: dict[str, set[str]] = defaultdict(set)
    for r in rows(run_dir / "links.csv"):
        if float(r["t_s"]) == t_s and r["up"] == "1":
            adj[r["a"]].add(r["b"])
            adj[r["b"]].add(r["a"])
    summary = __import__("json").loads((run_dir / "summary.json").read_text())
    out = {}
    for d in summary["endpoints"]:
        dist = {d: 0}
        q = deque([d])
        while q:
            u = q.popleft()
            if u != d and kinds[u] not in ("sat", "compute"):
                continue  # ground nodes end paths, they do not carry them
            for v in adj[u]:
                if v not in dist:
                    dist[v] = dist[u] + 1
                    q.append(v)
        for u in kinds:
            if u == d or u not in dist:
                continue
            out[(u, d)] = {
                v
                for v in adj[u]
                if v in dist
                and dist[v] == dist[u] - 1
                and (v == d or kinds[v] in ("sat", "compute"))
            }
    return out


def fib_at(run_dir: Path, t_s: float) -> dict[tuple[str, str], set[str]]:
    state: dict[tuple[str, str], set[str]] = {}
    for r in rows(run_dir / "fib.csv"):
        if float(r["t_s"]) <= t_s:
            state[(r["node"], r["dest"])] = {x for x in r["next_hops"].split("|") if x}
    return {k: v for k, v in state.items() if v}


def nothing_left(run_id: str) -> None:
    assert not (STATE_ROOT / run_id).exists()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert f"/run/meshemu/{run_id}/" not in ps


@pytest.mark.parametrize("routing", ["ospf", "isis", "bird-ospf"])
def test_daemons_converge_to_the_fewest_hop_next_hops(tmp_path, routing):
    res = run_emulation(
        scenario(cutoff_deg=None),
        duration_s=2,
        shaper="userspace",
        routing=routing,
        out_dir=tmp_path / "r",
        traffic=None,
        plots=False,
    )
    run = res.run_dir
    want = reference_next_hops(run)
    got = fib_at(run, 0.0)
    assert len(want) > 100
    wrong = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
    assert not wrong, f"{len(wrong)} of {len(want)} differ, e.g. {list(wrong.items())[:3]}"
    # ground nodes never carry transit traffic
    kinds = {r["name"]: r["kind"] for r in rows(run / "nodes.csv")}
    for (u, d), hops in got.items():
        assert all(kinds[h] in ("sat", "compute") or h == d for h in hops), (u, d, hops)
    assert res.summary["convergence"]["initial_s"] is not None
    # the protocol's frames are counted on (nearly) every link direction: hellos every 1 s
    n_links = sum(1 for r in rows(run / "links.csv") if float(r["t_s"]) == 0 and r["up"] == "1")
    ctl = res.summary["control"]
    assert ctl["links"] >= 1.8 * n_links and ctl["missed"] == 0, (ctl, n_links)
    for node in ("s0_0_0", "london"):
        conf = list((run / "daemons" / node).glob("*.conf"))
        assert conf, f"no configuration kept for {node}"
    nothing_left(res.summary["run_id"])


@pytest.mark.parametrize(("detect", "lo_s", "hi_s"), [("carrier", 0.0, 1.5), ("silent", 2.0, 6.0)])
def test_failed_links_are_routed_around_within_the_detection_time(tmp_path, detect, lo_s, hi_s):
    """Cross-plane links go down at 10, 22, 31 and 33 s. With carrier detection OSPF reroutes
    within SPF delay plus flooding; silently failed links wait for the dead interval (4 s,
    hello 1 s)."""
    res = run_emulation(
        scenario(),
        duration_s=40,
        shaper="userspace",
        routing="ospf",
        detect=detect,
        out_dir=tmp_path / "r",
        traffic=None,
        plots=False,
    )
    events = [
        r
        for r in rows(res.run_dir / "convergence.csv")
        if r["kind"] == "isl" and int(r["links_down"]) > 0 and int(r["fib_changes"]) > 0
    ]
    assert events, rows(res.run_dir / "convergence.csv")
    for e in events:
        assert e["converged"] == "True", e
        assert lo_s <= float(e["convergence_s"]) <= hi_s, e
    nothing_left(res.summary["run_id"])


class CrashingDaemon(FRROSPF):
    """zebra, then a 'protocol daemon' that fails at once."""

    name = "crashing"

    def processes(self, node, state_dir):
        procs = super().processes(node, state_dir)[:1]
        crash = ("sh", "-c", "echo 'cannot bind: bad things'; exit 3")
        return [*procs, DaemonProcess("crashd", crash, str(state_dir / "crashd.pid"))]


def daemon_processes() -> set[str]:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return {ln for ln in ps.splitlines() if "/run/meshemu/" in ln}


def test_a_crashing_daemon_stops_the_run_by_name_and_leaves_nothing(tmp_path):
    before = (daemon_processes(), set(STATE_ROOT.glob("*")) if STATE_ROOT.is_dir() else set())
    with pytest.raises(EmulationError) as ei:
        run_emulation(
            scenario(),
            duration_s=5,
            shaper="userspace",
            routing=CrashingDaemon(),
            out_dir=tmp_path / "r",
            traffic=None,
            plots=False,
        )
    msg = str(ei.value)
    assert "daemon crashd of node" in msg and "exited with status 3" in msg
    assert "cannot bind: bad things" in msg
    after = (daemon_processes(), set(STATE_ROOT.glob("*")) if STATE_ROOT.is_dir() else set())
    assert after == before  # no daemon and no state directory left by this run


def test_a_plugin_daemon_runs(tmp_path):
    """The README's plug-in example (RIPv2 with BIRD) routes every node to every
    endpoint, loop-free, along fewest-hop paths."""
    plugin = Path(__file__).resolve().parents[1] / "plugins" / "rip_scheme.py"
    res = run_emulation(
        scenario(cutoff_deg=None),
        duration_s=2,
        shaper="userspace",
        routing=f"{plugin}:RIP",
        out_dir=tmp_path / "r",
        traffic=None,
        plots=False,
    )
    want = reference_next_hops(res.run_dir)
    got = fib_at(res.run_dir, 0.0)
    bad = {k: (got.get(k), v) for k, v in want.items() if not got.get(k) or not got[k] <= v}
    assert not bad, f"{len(bad)} of {len(want)}: {list(bad.items())[:3]}"
    assert res.summary["routing"] == "rip"
    nothing_left(res.summary["run_id"])


def probe_pairs(
    tmp: Path, events: tuple[float, ...] = (10.0, 22.0)
) -> list[tuple[float, str, str]]:
    """For each ISL failure at ``events``: a satellite pair whose fewest-hop path just before
    it crosses a link that fails, and that stays connected for 6 s after (from ``meshemu
    plan`` of the same constellation, every satellite an endpoint; pure, no root)."""
    from meshemu.plan import run_plan

    sats = [f"s0_{p}_{i}" for p in range(6) for i in range(10)]
    run_plan(scenario(endpoints=sats), 30, routing="fewest-hops", out_dir=tmp, plots=False)
    up: dict[float, set[frozenset[str]]] = defaultdict(set)
    for r in rows(tmp / "links.csv"):
        up[float(r["t_s"])] |= {frozenset((r["a"], r["b"]))} if r["up"] == "1" else set()
    paths = {
        (float(r["t_s"]), r["src"], r["dst"]): r["path"].split() for r in rows(tmp / "paths.csv")
    }
    out, used = [], set()
    for t_e in events:
        down = up[t_e - 1] - up[t_e]
        assert down, f"no link fails at {t_e} s"
        cands = sorted(
            (len(p), s, d)
            for (t0, s, d), p in paths.items()
            if t0 == t_e - 1
            and len(p) >= 3  # one satellite between them at least
            and {frozenset(e) for e in zip(p, p[1:])} & down
            and all(paths.get((t_e + k, s, d)) for k in range(7))
            and not {s, d} & used
        )
        assert cands, f"no pair crosses the links that fail at {t_e} s"
        _, s, d = cands[0]
        used |= {s, d}
        out.append((t_e, s, d))
    return out


@pytest.mark.parametrize("detect", ["carrier", "silent"])
def test_a_probe_sees_what_the_convergence_measurement_says(tmp_path, detect):
    """A 2 Mbit/s probe (167 frames/s) crosses a link that fails at 10 s and another at 22 s.
    What it saw (``disruption.csv``: the outage is the gap between the last frame before the
    cut and the first after) agrees with what ``convergence.csv`` and ``fib.csv`` say: the
    probe is not cut longer than routing took to converge, nor shorter than routing took to
    react at all (the first FIB change toward its destination after the failure); with
    carrier detection that is well under a second, silently it is the dead interval."""
    from meshemu.spec.profile import Profile

    probes = probe_pairs(tmp_path / "plan")
    ends = sorted({x for _, s, d in probes for x in (s, d)})
    prof = Profile.from_dict(
        {
            "name": "probe",
            "workloads": [
                {"kind": "bulk", "name": f"probe{i}", "src": s, "dst": d, "rate_mbps": 2.0}
                for i, (_, s, d) in enumerate(probes)
            ],
        }
    )
    res = run_emulation(
        scenario(endpoints=ends),
        duration_s=30,
        shaper="userspace",
        routing="ospf",
        detect=detect,
        out_dir=tmp_path / "r",
        traffic=prof,
        plots=False,
    )
    run = res.run_dir
    flows = {(r["src"], r["dst"]): r["flow_id"] for r in rows(run / "flows.csv")}
    conv = {float(r["t_s"]): r for r in rows(run / "convergence.csv")}
    fib = [(float(r["t_s"]), r["dest"]) for r in rows(run / "fib.csv")]
    effects = {(float(r["t_s"]), r["flow_id"]): r for r in rows(run / "disruption.csv")}
    spacing = 1500 * 8 / 2e6
    for t_e, s, d in probes:
        e = effects[(t_e, flows[(s, d)])]
        c = conv[t_e]
        outage, conv_s = float(e["outage_s"]), float(c["convergence_s"])
        react = min(t for t, dest in fib if dest == d and t > t_e) - t_e
        assert c["converged"] == "True", c
        assert outage <= conv_s + 3 * spacing + 0.05, (e, c)
        if detect == "carrier":
            assert outage < 1.0, e
        else:  # nothing happens until the dead interval (4 s, hello 1 s) ends
            assert int(e["lost"]) > 0, e
            assert 2.0 <= outage <= 6.0, e
            assert outage >= react - 3 * spacing - 0.05, (e, react)
        assert res.summary["disruption"]["all"]["events"] >= 2
    # the protocol's own packets, counted per link: OSPF hellos at least, on every link
    ctl = res.summary["control"]
    assert ctl["filter"] == "ip proto 89" and ctl["missed"] == 0
    assert ctl["links"] >= 2 * 60  # both directions of (nearly) every link
    assert 1.0 <= ctl["packets_per_link_s"] <= 20.0, ctl  # hello every 1 s, plus LSAs
    counted = sum(int(r["packets"]) for r in rows(run / "control.csv"))
    assert counted >= ctl["packets"] > 0
    use = res.summary["daemon_usage"]
    assert use["processes"] == 2 * use["nodes"] and use["pss_mib_per_node"] > 1
    assert {r["daemon"] for r in rows(run / "daemons.csv")} == {"zebra", "ospfd"}
    nothing_left(res.summary["run_id"])


@pytest.mark.parametrize("how", ["sigint", "sigkill"])
def test_no_daemon_or_state_is_left_after_a_signal(tmp_path, how):
    """A daemon-routed run (BIRD OSPF on the default scenario) stopped by SIGINT tears its
    daemons down itself (exit 130); after SIGKILL the daemons live on, and ``meshemu clean``
    removes them and their state. Either way the machine is as before."""
    import os
    import signal

    from test_run import MESHEMU, NOTHING, LiveRun, leftovers, machine_state, wait_until

    before = machine_state()
    run = LiveRun(
        tmp_path / "s",
        "--duration",
        "120",
        "--shaper",
        "userspace",
        "--routing",
        "bird-ospf",
        "--traffic",
        "none",
        start_new_session=True,
    )
    run_id = ""
    try:
        run.wait_stepping(2, timeout_s=240)
        run_id = run.run_id()
        assert (STATE_ROOT / run_id).is_dir()
        assert any("bird" in p and f"/run/meshemu/{run_id}/" in p for p in daemon_processes())
        if how == "sigint":
            run.proc.send_signal(signal.SIGINT)
            assert run.proc.wait(timeout=120) == 128 + signal.SIGINT, run.text
            assert "Traceback" not in run.text, run.text
        else:
            os.kill(run.proc.pid, signal.SIGKILL)
            run.proc.wait(timeout=10)
            # the daemons outlive the run until clean
            assert any(f"/run/meshemu/{run_id}/" in p for p in daemon_processes())
            r = subprocess.run(MESHEMU + ["clean"], capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr
    finally:
        run.kill()
    assert not any(f"/run/meshemu/{run_id}/" in p for p in daemon_processes())
    assert not (STATE_ROOT / run_id).exists()
    assert leftovers(run_id) == NOTHING
    wait_until(lambda: machine_state() == before, 30, "the machine to be as before", poll_s=0.5)
