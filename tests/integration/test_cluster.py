"""One run over several simulated hosts (network namespaces on a bridge, a Ray node in
each): the hosts and the engine, the meshemu workers, cross-host links. Root; run under
``flock /tmp/meshemu-root.lock``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from meshemu.live.cluster.simhosts import SimulatedHosts

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("cluster tests need root (they create network namespaces); run as root")


def _ray_listeners_outside(hosts: SimulatedHosts) -> list[str]:
    """Listening TCP sockets of the root namespace held by the hosts' processes."""
    pids = {p for i in range(hosts.n) for p in hosts.processes(i)}
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if any(f"pid={p}," in line for p in pids)]


def test_simulated_hosts_start_ray_with_auth_and_leave_nothing(tmp_path: Path) -> None:
    _require_root()
    hosts = SimulatedHosts(2)
    with hosts:
        assert sorted(hosts.wait_joined()) == [hosts.address(0), hosts.address(1)]
        # each host's processes live in its own namespace; nothing listens in the root one
        assert hosts.processes(0) and hosts.processes(1)
        assert _ray_listeners_outside(hosts) == []
        listen = subprocess.run(
            hosts.exec_argv(0, ["ss", "-Hltn"]), capture_output=True, text=True
        ).stdout
        assert f"{hosts.address(0)}:" in listen or "*:6379" in listen
        # a driver with the wrong token is refused
        env = dict(hosts.env)
        env.pop("RAY_AUTH_TOKEN_PATH")
        env["RAY_AUTH_TOKEN"] = "0" * 64
        code = f"import ray; ray.init(address={hosts.head_address!r}); print('CONNECTED')"
        p = subprocess.run(
            hosts.exec_argv(1, [sys.executable, "-c", code]),
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert p.returncode != 0 and "CONNECTED" not in p.stdout
        assert "InvalidAuthToken" in p.stderr
        # meshemu clean on every host, through the engine
        meshemu = str(Path(sys.executable).with_name("meshemu"))
        p = subprocess.run(
            hosts.exec_argv(
                0,
                [meshemu, "cluster", "clean", "--join", hosts.head_address]
                + ["--token", str(hosts.token_path), "--run", "mxtestnone"],
            ),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert p.returncode == 0, p.stdout + p.stderr
        for i in range(2):
            assert f"host {i} ({hosts.address(i)}): nothing to clean" in p.stdout, p.stdout
        inodes = dict(hosts.inodes)
        names = [hosts.netns(i) for i in range(2)]
    from meshemu.linux import procs

    assert procs.pids_in_netns(set(inodes.values())) == []
    assert not any(os.path.exists(f"/run/netns/{n}") for n in names)
    assert not hosts.tmp.exists()
    assert not os.path.exists(f"/sys/class/net/{hosts.bridge}")


def test_simulated_hosts_torn_down_after_a_failed_start(monkeypatch) -> None:
    _require_root()
    hosts = SimulatedHosts(2)
    monkeypatch.setattr(hosts, "ray_bin", "/nonexistent/ray")
    with pytest.raises(Exception, match="ray start|No such file"):
        hosts.start()
    assert not any(os.path.exists(f"/run/netns/{hosts.netns(i)}") for i in range(2))
    assert not hosts.tmp.exists()
    assert not os.path.exists(f"/sys/class/net/{hosts.bridge}")


PROBE = Path(__file__).with_name("cluster_probe.py")


def _probe(hosts: SimulatedHosts, out: Path, pairs: str, cluster: bool) -> dict:
    """Run cluster_probe.py as the driver in host 0; its JSON."""
    import json

    result = out.with_suffix(".json")
    argv = [sys.executable, str(PROBE), str(out), str(result), pairs]
    if cluster:
        argv.append(hosts.head_address)
    p = subprocess.run(
        hosts.exec_argv(0, argv), env=hosts.env, capture_output=True, text=True, timeout=900
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    return json.loads(result.read_text())


def _planned(run_dir: Path, src: str, dst: str) -> dict[int, float]:
    """Planned one-way path delay (ms) per step from paths.csv."""
    import csv

    with open(run_dir / "paths.csv") as f:
        return {
            int(float(r["t_s"])): float(r["delay_ms"])
            for r in csv.DictReader(f)
            if r["src"] == src and r["dst"] == dst and r["delay_ms"]
        }


def _link_delay(run_dir: Path, a: str, b: str) -> dict[int, float]:
    """Planned delay (ms) of link a-b per step from links.csv."""
    import csv

    with open(run_dir / "links.csv") as f:
        rows = list(csv.DictReader(f))
    key = {a, b}
    col = "delay_ms" if "delay_ms" in rows[0] else "delay_s"
    scale = 1.0 if col == "delay_ms" else 1e3
    return {
        int(float(r["t_s"])): float(r[col]) * scale for r in rows if {r.get("a"), r.get("b")} == key
    }


def _guard_late(run_dir: Path) -> dict[int, dict[frozenset[str], float]]:
    """shaper.csv: per poll (step), each link's (its ends) largest late_max_ms."""
    import csv

    out: dict[int, dict[frozenset[str], float]] = {}
    with open(run_dir / "shaper.csv") as f:
        for r in csv.DictReader(f):
            if r["a"]:
                d = out.setdefault(int(r["step"]), {})
                key = frozenset((r["a"], r["b"]))
                d[key] = max(d.get(key, 0.0), float(r["late_max_ms"]))
    return out


def _path_links(run_dir: Path, src: str, dst: str) -> dict[int, set[frozenset[str]]]:
    """The links of the planned path src -> dst per step (paths.csv)."""
    import csv

    with open(run_dir / "paths.csv") as f:
        out = {}
        for r in csv.DictReader(f):
            if r["src"] == src and r["dst"] == dst and r["path"]:
                hops = r["path"].split()
                out[int(float(r["t_s"]))] = {frozenset(h) for h in zip(hops, hops[1:])}
        return out


@pytest.mark.parametrize("n_hosts", [2, 3])
def test_hosts_match_one_host(tmp_path: Path, n_hosts: int) -> None:
    """The default scenario over 2 and 3 simulated hosts: the same paths as on one host, and at
    every step a cut link's and a cross-host path's measured one-way delay (half the
    minimum ping round trip) within 1 ms of the one-host run's and of the plan's."""
    _require_root()
    with SimulatedHosts(n_hosts) as hosts:
        two = _probe(hosts, tmp_path / "two", "cut,london:s0_4_4", cluster=True)
        (cut_a, cut_b), _ = two["pairs"]
        one = _probe(hosts, tmp_path / "one", f"{cut_a}:{cut_b},london:s0_4_4", cluster=False)
        hosts.run_ids |= {two["summary"]["run_id"] + f"h{i}" for i in range(n_hosts)}
    c = two["summary"]["cluster"]
    assert c["n_hosts"] == n_hosts and c["partition"]["cut_links"] > 0
    assert all(x["apply_ms_p99"] is not None for x in c["hosts"].values())
    assert set(c["clock"]) == {"start", "end"}
    assert c["substrate_one_way_ms"] and max(c["substrate_one_way_ms"].values()) < 1.0
    # the same plan, so the same paths
    assert (tmp_path / "two" / "paths.csv").read_text() == (
        tmp_path / "one" / "paths.csv"
    ).read_text()
    link = _link_delay(tmp_path / "two", cut_a, cut_b)
    path = _planned(tmp_path / "two", "london", "s0_4_4")
    # the fidelity guard over every host's shaper: the cut link's pings were measured
    guard = _guard_late(tmp_path / "two")
    assert any(frozenset((cut_a, cut_b)) in g for g in guard.values()), sorted(guard)
    on_path = {
        f"{cut_a}:{cut_b}": {k: {frozenset((cut_a, cut_b))} for k in link},
        "london:s0_4_4": _path_links(tmp_path / "two", "london", "s0_4_4"),
    }
    checked = 0
    worst = {"vs_one_host_ms": 0.0, "vs_plan_ms": 0.0}
    baseline_late = []  # steps where the one-host run itself was over 1 ms off the plan
    reported_late = []  # steps the run over several hosts was off the plan and said so
    for pair, planned in ((f"{cut_a}:{cut_b}", link), ("london:s0_4_4", path)):
        r2, r1 = two["rtt_ms"][pair], one["rtt_ms"][pair]
        assert set(r2) == set(r1) and len(r2) >= 5
        for k in r2:
            ow2, ow1 = r2[k] / 2, r1[k] / 2
            if int(k) in planned:
                # the run over several hosts against the plan, at every step; a host stall
                # of this shared 2-core VM (seen once in CI: 1.9 ms over at one step) is
                # allowed only where the run's own fidelity guard reported it on the path:
                # the pings of step k are in the guard's poll at step k + 1 (or the last
                # poll, labelled k, after the last step)
                off = abs(ow2 - planned[int(k)])
                if off >= 1.0:
                    late = max(
                        (
                            g.get(lk, 0.0)
                            for s in (int(k), int(k) + 1)
                            for g in [guard.get(s, {})]
                            for lk in on_path[pair][int(k)]
                        ),
                        default=0.0,
                    )
                    assert late >= 0.5, (pair, k, ow2, planned[int(k)], "guard saw", late)
                    reported_late.append((pair, k, round(off, 3), late))
                    checked += 1
                    continue  # (a stall here, so no comparison with the one-host run)
                worst["vs_plan_ms"] = max(worst["vs_plan_ms"], off)
                checked += 1
                if abs(ow1 - planned[int(k)]) >= 1.0:
                    # the one-host baseline's single delay line was late (a host stall on a
                    # loaded CI machine: seen at 2 of 16 steps, up to 2.3 ms); no reference there
                    baseline_late.append((pair, k, ow1, planned[int(k)]))
                    continue
            assert abs(ow2 - ow1) < 1.0, (pair, k, ow2, ow1)
            worst["vs_one_host_ms"] = max(worst["vs_one_host_ms"], abs(ow2 - ow1))
    assert checked >= 8
    assert len(baseline_late) <= checked // 4, baseline_late  # a few stalls, not a drift
    assert len(reported_late) <= checked // 4, reported_late
    print(
        f"\ncut link {cut_a}-{cut_b} and london->s0_4_4 over {n_hosts} hosts, worst one-way "
        f"difference: {worst}; per host: {c['hosts']}; substrate {c['substrate_one_way_ms']}; "
        f"clock {c['clock']}; one-host steps off the plan: {baseline_late}; steps off the plan "
        f"the guard reported: {reported_late}"
    )


def _worker_pids(hosts: SimulatedHosts, i: int) -> list[int]:
    """The meshemu worker actor's process in host ``i`` (Ray titles it ray::HostWorker)."""
    out = []
    for pid in hosts.processes(i):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"HostWorker" in argv:
            out.append(pid)
    return out


def test_killed_worker_stops_the_run_and_leaves_nothing(tmp_path: Path) -> None:
    """SIGKILL host 1's meshemu worker mid-run: the run stops with a message naming host 1,
    the other host's share is torn down, the dead host's is cleaned by a task on that host,
    and no run of either host is left (no shells, processes, namespaces, locks)."""
    _require_root()
    from waits import wait_for

    from meshemu.live.clean import find_runs

    before = set(find_runs())
    meshemu = str(Path(sys.executable).with_name("meshemu"))
    out = tmp_path / "run"
    with SimulatedHosts(2) as hosts:
        proc = subprocess.Popen(
            hosts.exec_argv(
                0,
                [meshemu, "run", "default", "--cluster", hosts.head_address]
                + ["--duration", "120", "--traffic", "none", "--out", str(out)],
            ),
            env=hosts.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            steps = out / "hosts_steps.csv"
            assert wait_for(
                lambda: steps.exists() and len(steps.read_text().splitlines()) > 6, 300, 0.2
            ), "the cluster run did not start stepping"
            ours = set(find_runs()) - before
            assert {r[-2:] for r in ours} == {"h0", "h1"}, ours
            hosts.run_ids |= ours
            victims = _worker_pids(hosts, 1)
            assert len(victims) == 1, victims
            os.kill(victims[0], 9)
            text, _ = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode not in (0, None), text[-3000:]
        why = [
            ln
            for ln in text.splitlines()
            if "host 1 (10." in ln and "its meshemu worker died while it was to" in ln
        ]
        assert why, text[-3000:]
        left = {r: v for r, v in find_runs().items() if r in ours}
        assert left == {}, left
        stale = [n for n in os.listdir("/run/netns") if any(r in n for r in ours)]
        assert stale == [], stale
        print("\n" + why[0])


def test_cluster_simulate_command_until_interrupted() -> None:
    """`meshemu cluster simulate` keeps its hosts until SIGINT, then removes them."""
    _require_root()
    import re
    import signal

    meshemu = str(Path(sys.executable).with_name("meshemu"))
    proc = subprocess.Popen(
        [meshemu, "cluster", "simulate", "--hosts", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C removes" in line:
                break
        text = "".join(lines)
        m = re.search(r"ip netns exec (mxh\w+?)0 ", text)
        assert m, text
        names = [f"{m.group(1)}{i}" for i in range(2)]
        assert all(os.path.exists(f"/run/netns/{n}") for n in names)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not any(os.path.exists(f"/run/netns/{n}") for n in names)


# -- traffic over several hosts ----------------------------------------------------------------
TRAFFIC_S = 30  # the default workload's all-reduce needs about 15 s (8 x 2 MB at 20 Mbit/s)


def _rows(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


def _owd_per_step(run_dir: Path) -> dict[str, dict[int, float]]:
    """Per flow and step (by send time), the median of the measured one-way delays minus the
    delay expected: the flow's planned path delay (flow_paths.csv) in force then plus the
    packet's serialization at every hop of that path (size x 8 / the link's rate,
    links.csv; store and forward, which the shaper models and the plan's propagation delay
    leaves out: 0.11 ms per hop for 1,428 bytes at 100 Mbit/s, about 0.7 ms over the
    all-reduce's 6-hop paths). Packets sent within 50 ms of a step's start are left out (a
    path or delay change is applied at the step's start, on every host within its apply
    time)."""
    import numpy as np

    steps = _rows(run_dir / "steps.csv")
    starts = np.array([float(s["unix_s"]) for s in steps])
    t_of = [float(s["t_s"]) for s in steps]
    rate: dict[frozenset[str], list[tuple[float, float]]] = {}
    for r in _rows(run_dir / "links.csv"):
        rate.setdefault(frozenset((r["a"], r["b"])), []).append(
            (float(r["t_s"]), float(r["rate_mbps"]) * 1e6)
        )

    def at(rows: list[tuple[float, float]], t: float) -> float:
        return [v for tt, v in rows if tt <= t + 1e-9][-1]

    plan: dict[str, list[tuple[float, tuple[float, float]]]] = {}
    for r in _rows(run_dir / "flow_paths.csv"):
        hops = r["path"].split()
        t = float(r["t_s"])
        inv = sum(1.0 / at(rate[frozenset(h)], t) for h in zip(hops, hops[1:]))  # s per bit
        delay = float(r["delay_ms"]) if r["delay_ms"] else float("nan")
        plan.setdefault(r["flow_id"], []).append((t, (delay, inv)))
    per: dict[tuple[str, int], list[float]] = {}
    for p in _rows(run_dir / "packets.csv"):
        sent = int(p["send_unix_ns"]) / 1e9
        k = int(np.searchsorted(starts, sent, side="right")) - 1
        if not (0 <= k < len(starts) - 1 and starts[k] + 0.05 < sent < starts[k + 1] - 0.05):
            continue
        rows = [x for t, x in plan.get(p["flow_id"], []) if t <= t_of[k] + 1e-9]
        if not rows or not np.isfinite(rows[-1][0]):
            continue
        delay_ms, inv = rows[-1]
        expect_ms = delay_ms + int(p["size_bytes"]) * 8 * inv * 1e3
        per.setdefault((p["flow_id"], k), []).append(float(p["owd_ms"]) - expect_ms)
    return {
        fid: {k: float(np.median(v)) for (f, k), v in per.items() if f == fid}
        for fid in {f for f, _ in per}
    }


def _guard_flagged(run_dir: Path, threshold_ms: float = 0.5) -> dict[str, set[int]]:
    """Per flow, the steps whose packets the run's own fidelity guard says left late on the
    flow's path (a link direction's lateness p99 over ``threshold_ms``, the guard's default,
    in the poll after the step: the one that covers the step's packets)."""
    late: dict[int, set[frozenset[str]]] = {}
    for r in _rows(run_dir / "shaper.csv"):
        if r["a"] and float(r["late_p99_ms"]) > threshold_ms:
            late.setdefault(int(r["step"]) - 1, set()).add(frozenset((r["a"], r["b"])))
    steps = [float(s["t_s"]) for s in _rows(run_dir / "steps.csv")]
    paths: dict[str, list[tuple[float, set[frozenset[str]]]]] = {}
    for r in _rows(run_dir / "flow_paths.csv"):
        hops = r["path"].split()
        paths.setdefault(r["flow_id"], []).append(
            (float(r["t_s"]), {frozenset(h) for h in zip(hops, hops[1:])})
        )
    out: dict[str, set[int]] = {}
    for fid, rows in paths.items():
        for k, t in enumerate(steps):
            now = [links for tt, links in rows if tt <= t + 1e-9]
            if now and now[-1] & late.get(k, set()):
                out.setdefault(fid, set()).add(k)
    return out


def _processes_naming(path: Path) -> list[int]:
    """Processes whose command line names ``path`` (the agents name their configuration)."""
    out = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and str(path).encode() in (p / "cmdline").read_bytes():
                out.append(int(p.name))
        except OSError:
            continue  # exited meanwhile
    return out


def _meshemu_run(hosts: SimulatedHosts, out: Path, *extra: str) -> str:
    meshemu = str(Path(sys.executable).with_name("meshemu"))
    argv = [meshemu, "run", "default", "--duration", str(TRAFFIC_S), "--no-plots"]
    p = subprocess.run(
        hosts.exec_argv(0, [*argv, "--out", str(out), *extra]),
        env=hosts.env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout


@pytest.mark.parametrize("n_hosts", [2, 3])
def test_traffic_over_hosts_matches_plan_and_one_host(tmp_path: Path, n_hosts: int) -> None:
    """The default scenario with its default workload over 2 and 3 simulated hosts: the agents run
    on their nodes' hosts, their files are merged into the one run directory, flows cross
    hosts, and each flow's one-way delays keep to the plan and to a one-host run of the same
    (per step, median within 1 ms); the trust rule says trusted, with the measured offsets.
    Nothing is left on either host."""
    _require_root()
    import json

    import numpy as np

    from meshemu.linux import procs
    from meshemu.live.clean import find_runs

    before = set(find_runs())
    two, one = tmp_path / "hosts", tmp_path / "one"
    with SimulatedHosts(n_hosts) as hosts:
        try:
            text = _meshemu_run(hosts, two, "--cluster", hosts.head_address)
        finally:
            if (two / "summary.json").exists():
                rid = json.loads((two / "summary.json").read_text())["run_id"]
                hosts.run_ids |= {f"{rid}h{i}" for i in range(n_hosts)}
        _meshemu_run(hosts, one, "--shaper", "userspace")
        inodes = set(hosts.inodes.values())
    # nothing left: no run, no process in the hosts' namespaces, no agent anywhere
    assert set(find_runs()) - before == set()
    assert procs.pids_in_netns(inodes) == []
    assert _processes_naming(tmp_path) == []

    s = json.loads((two / "summary.json").read_text())
    tr = s["traffic"]
    # the one run directory has what a one-host run writes
    for name in ("flows.csv", "packets.csv", "iterations.csv", "inference.csv", "owd_trust.csv"):
        assert (two / name).exists(), name
    assert (two / "flows.csv").read_text() == (one / "flows.csv").read_text()
    its = _rows(two / "iterations.csv")
    assert len(its) == 8, its  # every all-reduce iteration finished
    assert len(_rows(two / "link_counters.csv")) > 0
    # flows cross hosts, and the trust rule trusts them with the offsets it measured
    trust = {r["flow_id"]: r for r in _rows(two / "owd_trust.csv")}
    cross = {f for f, r in trust.items() if r["src_host"] != r["dst_host"]}
    assert cross and len(cross) < len(trust), trust
    assert all(trust[f]["owd"] == "trusted" and trust[f]["offset_start_ms"] for f in cross)
    assert all(float(trust[f]["bound_ms"]) <= 1.0 for f in cross)
    assert tr["owd_trust"]["verdict"] == "trusted"
    assert f"one-way delay trusted for {len(cross)} flow(s) between hosts" in text, text[-3000:]
    # one-way delays: per flow and step against the plan, and against the one-host run
    d2, d1 = _owd_per_step(two), _owd_per_step(one)
    # the one-host run is the reference only where its own guard says it kept to the plan
    # (its single delay line carries every flow; on a loaded machine it can fall behind,
    # and then says so in shaper.csv)
    baseline_off = _guard_flagged(one)
    # over 3 simulated hosts the machine's 2 cores carry 3 delay lines, 3 Ray nodes and the
    # agents: there the delay lines fall behind at some steps (lateness p99 of 1-3 ms per
    # hop) and say so in shaper.csv. Against the plan, a flow's median is taken over the
    # steps the run's own guard did not report on its path (a step's median may still be
    # off by queueing, which the model has and the plan's path delay leaves out); most
    # flows must have at least 3 such steps
    reported = _guard_flagged(two)
    checked = checked_cross = compared = skipped = 0
    off_reported = against_plan = 0
    worst = {"vs_plan_ms": 0.0, "vs_one_host_ms": 0.0}
    for fid, per in d2.items():
        if len(per) < 3:
            continue
        clean = [abs(v) for k, v in per.items() if k not in reported.get(fid, set())]
        off_reported += len(per) - len(clean)
        if len(clean) >= 3:
            vs_plan = float(np.median(clean))
            assert vs_plan < 1.0, (fid, trust.get(fid), per, sorted(reported.get(fid, ())))
            worst["vs_plan_ms"] = max(worst["vs_plan_ms"], vs_plan)
            against_plan += 1
        checked += 1
        checked_cross += fid in cross
        common = sorted(set(per) & set(d1.get(fid, {})))
        assert len(common) >= min(3, len(per)), (fid, sorted(per), sorted(d1.get(fid, {})))
        valid = [k for k in common if k not in baseline_off.get(fid, set())]
        skipped += len(common) - len(valid)
        if len(valid) < 3:
            continue
        vs_one = float(np.median([abs(per[k] - d1[fid][k]) for k in valid]))
        assert vs_one < 1.0, (fid, per, d1[fid])
        worst["vs_one_host_ms"] = max(worst["vs_one_host_ms"], vs_one)
        compared += 1
    # (a ring over compute satellites on several hosts crosses between them at least twice)
    assert checked_cross >= 2, (sorted(d2), cross)
    # the comparisons happened: most flows had steps to compare
    assert against_plan >= checked // 2, (against_plan, checked, "steps reported", off_reported)
    assert compared >= checked // 2, (compared, checked, "one-host steps off the plan", skipped)
    print(
        f"\ntraffic over {n_hosts} hosts: {len(cross)} of {len(trust)} flows between hosts; "
        f"{checked} flows checked ({checked_cross} between hosts), {compared} against one "
        f"host ({skipped} flow-steps where the one-host run's guard said it fell behind); "
        f"{against_plan} against the plan ({off_reported} flow-steps the guard reported "
        f"late on the flow's path left out); "
        f"worst per-flow median "
        f"one-way delay difference {worst}; "
        f"trust {tr['owd_trust']['offset_bound_ms']:.3f} ms bound; "
        f"clock {s['cluster']['clock']}"
    )
