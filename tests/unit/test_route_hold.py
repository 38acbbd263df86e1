"""Route hold (meshemu/routing/hold.py): held tables checked against networkx shortest paths
and meshemu's own table validator, never against the hold's own path costs."""

import networkx as nx
import numpy as np
import pytest
from meshes import random_mesh_edges

from meshemu.errors import OptionsError, RoutingError
from meshemu.geometry.schedule import LinkSchedule
from meshemu.plan import run_plan
from meshemu.routing import (
    ForwardingTables,
    get_scheme,
    path_delay_s,
    route_diff,
    snapshot_from_edges,
    trace_path,
    validate_tables,
)
from meshemu.routing.hold import HeldRoutes, check_route_hold_us, hold_next_hops
from meshemu.spec.scenario import load_scenario


def _moving_mesh(seed, steps, n_sat=30, n_ground=4, jitter=20e-6, down_every=7):
    """A random satellite mesh whose link delays drift by up to ``jitter`` per step (so
    near-equal paths swap), with one random link down every ``down_every`` steps."""
    rng = np.random.default_rng(seed)
    edges = random_mesh_edges(rng, n_sat, n_ground)
    transit = np.r_[np.ones(n_sat, bool), np.zeros(n_ground, bool)]
    delays = rng.uniform(2e-3, 4e-3, len(edges))
    out = []
    for k in range(steps):
        delays = np.clip(delays + rng.uniform(-jitter, jitter, len(edges)), 1e-3, 6e-3)
        up = np.ones(len(edges), bool)
        if down_every and k % down_every == down_every - 1:
            up[rng.integers(len(edges))] = False
        out.append(snapshot_from_edges(n_sat + n_ground, edges, delays, transit=transit, up=up))
    return out


def _nx_distances(snap):
    """Shortest one-way delay between every pair, ground nodes only as path ends."""
    g = nx.Graph()
    g.add_nodes_from(range(snap.n_nodes))
    for k in range(snap.n_links):
        if snap.up[k]:
            g.add_edge(int(snap.a[k]), int(snap.b[k]), w=float(snap.delay_s[k]))
    ground = [x for x in range(snap.n_nodes) if not snap.transit[x]]
    dist = {}
    for d in range(snap.n_nodes):
        sub = g.subgraph([x for x in g if snap.transit[x] or x == d])
        lengths = nx.single_source_dijkstra_path_length(sub, d, weight="w")
        for s in range(snap.n_nodes):
            if s in lengths:
                dist[s, d] = lengths[s]
        for s in ground:  # a ground source's first hop is its own (one edge up)
            if s != d and s not in lengths:
                best = min(
                    (g[s][v]["w"] + lengths[v] for v in g[s] if v in lengths and v != s),
                    default=None,
                )
                if best is not None:
                    dist[s, d] = best
    return dist


@pytest.mark.parametrize("seed,tol_us", [(1, 30), (2, 100), (3, 1000)])
def test_held_paths_are_loop_free_and_within_the_tolerance_of_networkx(seed, tol_us):
    snaps = _moving_mesh(seed, 40)
    n = snaps[0].n_nodes
    dests = np.arange(n, dtype=np.int32)
    raw, held = (
        get_scheme("shortest-delay"),
        HeldRoutes(get_scheme("shortest-delay"), tol_us * 1e-6),
    )
    changes = {"raw": 0, "held": 0}
    prev_raw = prev_held = None
    kept_somewhere = False
    for snap in snaps:
        r = raw.forwarding_tables(snap, dests)
        h = held.forwarding_tables(snap, dests)
        # the shared validator: up neighbours only, no ground transit, no loops
        assert validate_tables(h, snap) == []
        ref = _nx_distances(snap)
        for s in range(n):
            for d in range(n):
                if s == d:
                    continue
                path = trace_path(h, snap, s, d)
                # a route exactly where the scheme has one (removals are never held)
                assert (path is None) == ((s, d) not in ref), (s, d)
                if path is None:
                    continue
                excess = path_delay_s(snap, path) - ref[s, d]
                assert -1e-12 <= excess <= tol_us * 1e-6 + 1e-12, (s, d, excess)
        if prev_raw is not None:
            changes["raw"] += len(route_diff(prev_raw, r))
            changes["held"] += len(route_diff(prev_held, h))
        kept_somewhere |= bool(np.any(h.next_hop != r.next_hop))
        prev_raw, prev_held = r, h
    assert kept_somewhere
    assert held.held_total > 0
    assert changes["held"] < changes["raw"], changes


def _square(d_top, d_bottom, up=(True, True, True, True)):
    """0 -> 3 over the top (0-1-3) or the bottom (0-2-3); 1 and 2 also have a spur."""
    edges = [(0, 1), (1, 3), (0, 2), (2, 3)]
    delays = np.array([d_top / 2, d_top / 2, d_bottom / 2, d_bottom / 2])
    return snapshot_from_edges(4, edges, delays, up=np.array(up))


def _nh(h, node, dest):
    return int(h.next_hop[node, h.dest_index(dest), 0])


def test_a_next_hop_is_held_within_the_tolerance_and_moves_beyond_it():
    held = HeldRoutes(get_scheme("shortest-delay"), 50e-6)
    dests = np.arange(4, dtype=np.int32)
    assert _nh(held.forwarding_tables(_square(10e-3, 10.01e-3), dests), 0, 3) == 1
    # the bottom is now 40 us shorter: held
    h = held.forwarding_tables(_square(10e-3, 9.96e-3), dests)
    assert _nh(h, 0, 3) == 1
    assert (
        _nh(get_scheme("shortest-delay").forwarding_tables(_square(10e-3, 9.96e-3), dests), 0, 3)
        == 2
    )
    # 60 us shorter: beyond the tolerance, the route moves
    assert _nh(held.forwarding_tables(_square(10e-3, 9.94e-3), dests), 0, 3) == 2
    # the top link goes down: a removal is never held, even within the tolerance
    held2 = HeldRoutes(get_scheme("shortest-delay"), 50e-6)
    assert _nh(held2.forwarding_tables(_square(10e-3, 10.01e-3), dests), 0, 3) == 1
    h = held2.forwarding_tables(_square(10e-3, 10.01e-3, up=(False, True, True, True)), dests)
    assert _nh(h, 0, 3) == 2


def test_a_next_hop_that_is_no_longer_downstream_is_not_held():
    # 0 - 1 - 2 with 3 off 1 and 2: node 2 reaches 3 over 1 (2 ms against 5 ms direct)
    edges = [(0, 1), (1, 2), (1, 3), (2, 3)]
    delays = np.array([1, 1, 1, 5]) * 1e-3
    dests = np.arange(4, dtype=np.int32)
    held = HeldRoutes(get_scheme("shortest-delay"), 10.0)  # a huge tolerance: only loops stop it
    h = held.forwarding_tables(snapshot_from_edges(4, edges, delays), dests)
    assert _nh(h, 2, 3) == 1
    # 1-3 goes down: 1 now goes over 2; 2 keeping next hop 1 (within the tolerance) would loop
    snap = snapshot_from_edges(4, edges, delays, up=np.array([True, True, False, True]))
    h = held.forwarding_tables(snap, dests)
    assert validate_tables(h, snap) == []
    assert _nh(h, 1, 3) == 2 and _nh(h, 2, 3) == 3


def test_hold_is_per_destination_so_a_plan_of_the_endpoints_matches_the_run(tmp_path):
    """The run routes every node, ``meshemu plan`` only the endpoints: the held tables of the
    endpoints' columns are the same (the hold of a column depends on that column only)."""
    sc = load_scenario("default")
    sched = LinkSchedule(sc, 1.0)
    snaps = list(sched.snapshots(40.0))
    n = snaps[0].n_nodes
    from meshemu.plan import endpoint_ids

    ends = endpoint_ids(sc, sched.nodes).astype(np.int32)
    everyone = HeldRoutes(get_scheme("shortest-delay"), 200e-6)
    only = HeldRoutes(get_scheme("shortest-delay"), 200e-6)
    for snap in snaps:
        a = everyone.forwarding_tables(snap, np.arange(n, dtype=np.int32))
        b = only.forwarding_tables(snap, ends)
        cols = [a.dest_index(int(e)) for e in ends]
        assert np.array_equal(a.next_hop[:, cols, :], b.next_hop)
    assert everyone.held_total > 0
    # and meshemu plan writes it: the same paths as the raw plan where nothing is held
    res = run_plan("default", 40, route_hold_us=200, out_dir=tmp_path / "p", plots=False)
    assert res.summary["route_hold_us"] == 200


def test_hold_refuses_multipath_schemes_and_bad_tolerances():
    snap = _square(10e-3, 10e-3)
    held = HeldRoutes(get_scheme("ecmp"), 50e-6)
    with pytest.raises(RoutingError, match="single-path"):
        held.forwarding_tables(snap, np.arange(4, dtype=np.int32))
    for bad in (-1, float("nan"), True, "10", 1e9):
        with pytest.raises(OptionsError, match="route-hold-us"):
            check_route_hold_us(bad)
    with pytest.raises(RoutingError, match="above 0"):
        HeldRoutes(get_scheme("shortest-delay"), 0.0)
    from meshemu.live.options import RunOptions

    with pytest.raises(OptionsError, match="route-hold-us"):
        RunOptions(route_hold_us=-5)


def test_hold_next_hops_keeps_nothing_without_candidates():
    snap = _square(10e-3, 10e-3)
    t = get_scheme("shortest-delay").forwarding_tables(snap, np.arange(4, dtype=np.int32))
    nh = t.next_hop[:, :, 0]
    out, kept = hold_next_hops(nh, nh.copy(), t.destinations, snap, 1e-3)
    assert kept == 0 and np.array_equal(out, nh)
    assert isinstance(ForwardingTables(t.destinations, out), ForwardingTables)


def test_plan_cli_takes_the_hold_and_refuses_a_bad_one(tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "meshemu.cli", "plan", "default", "--duration", "5"]
    p = subprocess.run(
        cmd + ["--route-hold-us", "-3", "--out", str(tmp_path / "bad")],
        capture_output=True,
        text=True,
    )
    assert p.returncode != 0 and "--route-hold-us" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "bad").exists()
    p = subprocess.run(
        cmd + ["--route-hold-us", "100", "--no-plots", "--out", str(tmp_path / "ok")],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    import json

    assert json.loads((tmp_path / "ok" / "summary.json").read_text())["route_hold_us"] == 100


def test_shortest_delay_distances_and_walked_delays_hold_the_same():
    """The hold takes shortest-delay's Dijkstra distances when it can; walking the tables
    gives the same held entries."""
    snaps = _moving_mesh(5, 25)
    n = snaps[0].n_nodes
    dests = np.arange(n, dtype=np.int32)
    sd = get_scheme("shortest-delay")
    assert HeldRoutes(sd, 1e-4)._by_delay
    assert not HeldRoutes(get_scheme("fewest-hops"), 1e-4)._by_delay
    prev = None
    kept_any = 0
    for snap in snaps:
        t, dist = sd.forwarding_tables_and_costs(snap, dests)
        if prev is not None:
            a, ka = hold_next_hops(prev, t.next_hop[:, :, 0].copy(), dests, snap, 1e-4, dist)
            b, kb = hold_next_hops(prev, t.next_hop[:, :, 0].copy(), dests, snap, 1e-4)
            assert np.array_equal(a, b) and ka == kb
            kept_any += ka
            prev = a
        else:
            prev = t.next_hop[:, :, 0].copy()
    assert kept_any > 0
