"""Routing schemes against networkx as an independent reference, plus the scheme registry."""

import textwrap

import networkx as nx
import numpy as np
import pytest
from meshes import random_mesh_edges

from meshemu.errors import RoutingError
from meshemu.geometry.schedule import LinkSchedule
from meshemu.routing import (
    ForwardingTables,
    get_scheme,
    path_delay_s,
    route_diff,
    snapshot_from_edges,
    trace_path,
    validate_tables,
)
from meshemu.spec.scenario import load_scenario


def random_graph(seed, n_sat=40, n_ground=6):
    """A random connected satellite mesh with ground nodes hanging off two satellites each."""
    rng = np.random.default_rng(seed)
    edges = random_mesh_edges(rng, n_sat, n_ground)
    delays = rng.uniform(1e-3, 10e-3, len(edges))
    transit = np.r_[np.ones(n_sat, bool), np.zeros(n_ground, bool)]
    return snapshot_from_edges(n_sat + n_ground, edges, delays, transit=transit), edges, delays


def reference_graph(snap, weight):
    """networkx graph of the up links; ground nodes may only be path ends."""
    g = nx.Graph()
    for k in range(snap.n_links):
        if snap.up[k]:
            g.add_edge(int(snap.a[k]), int(snap.b[k]), w=weight[k])
    return g


def ref_distance(snap, weight, s, d):
    g = reference_graph(snap, weight)
    keep = [x for x in g if snap.transit[x] or x in (s, d)]
    try:
        return nx.shortest_path_length(g.subgraph(keep), s, d, weight="w")
    except nx.NetworkXNoPath:
        return None


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_shortest_delay_matches_networkx_and_never_transits_ground(seed):
    snap, _, _ = random_graph(seed)
    dests = np.arange(snap.n_nodes, dtype=np.int32)
    tab = get_scheme("shortest-delay").forwarding_tables(snap, dests)
    assert validate_tables(tab, snap) == []
    for s in range(snap.n_nodes):
        for d in range(snap.n_nodes):
            if s == d:
                continue
            ref = ref_distance(snap, snap.delay_s, s, d)
            path = trace_path(tab, snap, s, d)
            assert (path is None) == (ref is None)
            if path is None:
                continue
            assert path_delay_s(snap, path) == pytest.approx(ref, abs=1e-12)
            assert all(snap.transit[x] for x in path[1:-1])


@pytest.mark.parametrize("chunk", [50, 256])
def test_tables_routed_in_chunks_and_transposed_in_blocks_match_networkx(monkeypatch, chunk):
    # 150 satellites and 10 ground nodes: the trees are routed `chunk` destinations at a
    # time (50: four chunks, the last one short) and transposed 64 rows at a time
    from meshemu.routing import computed

    monkeypatch.setattr(computed, "TREE_CHUNK", chunk)
    snap, _, _ = random_graph(11, n_sat=150, n_ground=10)
    dests = np.arange(snap.n_nodes, dtype=np.int32)
    scheme = get_scheme("shortest-delay")
    tab = scheme.forwarding_tables(snap, dests)
    assert tab.next_hop.shape == (snap.n_nodes, snap.n_nodes, 1)
    assert validate_tables(tab, snap) == []
    # the route hold's tables (all trees at once, with their costs) are the same
    assert np.array_equal(scheme.forwarding_tables_and_costs(snap, dests)[0].next_hop, tab.next_hop)
    rng = np.random.default_rng(5)
    for s, d in rng.integers(0, snap.n_nodes, size=(120, 2)):
        if s == d:
            continue
        ref = ref_distance(snap, snap.delay_s, int(s), int(d))
        path = trace_path(tab, snap, int(s), int(d))
        assert (path is None) == (ref is None)
        if path is not None:
            assert path_delay_s(snap, path) == pytest.approx(ref, abs=1e-12)


def test_fewest_hops_matches_networkx_hop_count():
    snap, _, _ = random_graph(7)
    tab = get_scheme("fewest-hops").forwarding_tables(snap, np.arange(snap.n_nodes))
    ones = np.ones(snap.n_links)
    for s, d in [(0, 39), (40, 45), (3, 44), (41, 17)]:
        path = trace_path(tab, snap, s, d)
        assert len(path) - 1 == ref_distance(snap, ones, s, d)


def test_ecmp_next_hops_all_lie_on_fewest_hop_paths():
    # a 4x4 grid: between opposite corners there are many equal-hop paths
    n = 16
    edges = [(r * 4 + c, r * 4 + c + 1) for r in range(4) for c in range(3)]
    edges += [(r * 4 + c, (r + 1) * 4 + c) for r in range(3) for c in range(4)]
    snap = snapshot_from_edges(n, edges, np.full(len(edges), 1e-3))
    tab = get_scheme("ecmp").forwarding_tables(snap, np.arange(n))
    assert validate_tables(tab, snap) == []
    g = reference_graph(snap, np.ones(snap.n_links))
    hops = dict(nx.all_pairs_shortest_path_length(g))
    j = tab.dest_index(15)
    assert sorted(x for x in tab.next_hop[0, j] if x >= 0) == [1, 4]
    for u in range(n):
        for x in tab.next_hop[u, j]:
            if x >= 0:
                assert hops[int(x)][15] == hops[u][15] - 1


def test_route_diff_counts_changed_entries():
    snap, edges, delays = random_graph(4)
    scheme = get_scheme("shortest-delay")
    dests = np.arange(snap.n_nodes)
    t0 = scheme.forwarding_tables(snap, dests)
    assert len(route_diff(t0, t0)) == 0
    g = nx.Graph(edges)
    k = next(
        i
        for i, (a, b) in enumerate(edges)
        if b < 40 and nx.has_path(nx.restricted_view(g, [n for n in g if n >= 40], [(a, b)]), a, b)
    )
    a, b = edges[k]
    up = np.ones(len(edges), bool)
    up[k] = False  # a link a-b whose ends stay connected goes down
    snap1 = snapshot_from_edges(snap.n_nodes, edges, delays, transit=snap.transit, up=up)
    t1 = scheme.forwarding_tables(snap1, dests)
    diff = route_diff(t0, t1)
    changed = np.any(t0.next_hop != t1.next_hop, axis=2)
    assert len(diff) == int(changed.sum()) > 0
    assert np.array_equal(t1.next_hop[diff.nodes, diff.dest_index], diff.new)
    detour = trace_path(t1, snap1, a, b)
    assert detour is not None and len(detour) > 2
    assert (
        trace_path(t0, snap, a, b) == [a, b]
        or path_delay_s(snap, trace_path(t0, snap, a, b)) < delays[k]
    )


def test_validate_tables_finds_loops_missing_links_and_ground_transit():
    snap = snapshot_from_edges(
        4, [(0, 1), (1, 2), (2, 3)], [1e-3] * 3, transit=[True, True, False, True]
    )
    nh = np.full((4, 1, 1), -1, np.int32)
    nh[0, 0, 0], nh[1, 0, 0] = 1, 0  # 0 <-> 1 loop towards 3
    problems = validate_tables(ForwardingTables([3], nh), snap)
    assert any("loop" in p for p in problems)
    nh[1, 0, 0] = 3  # no link 1-3
    assert any("without an up link" in p for p in validate_tables(ForwardingTables([3], nh), snap))
    nh[1, 0, 0], nh[2, 0, 0] = 2, 3  # through node 2, which is not a transit node
    assert any("non-transit" in p for p in validate_tables(ForwardingTables([3], nh), snap))


def test_scheme_registry_errors_and_user_scheme_from_file(tmp_path):
    with pytest.raises(
        RoutingError, match="unknown routing scheme 'dijkstra'.*ecmp.*fewest-hops.*shortest-delay"
    ):
        get_scheme("dijkstra")
    with pytest.raises(RoutingError, match="does not exist"):
        get_scheme(str(tmp_path / "nope.py") + ":X")
    f = tmp_path / "myscheme.py"
    f.write_text(
        textwrap.dedent("""
        import numpy as np
        from meshemu.routing import ShortestDelay

        class AvoidLink01(ShortestDelay):
            name = "avoid-01"
            def weights(self, snap):
                w = snap.delay_s.copy()
                w[(snap.a == 0) & (snap.b == 1)] = 1.0
                return w
    """)
    )
    scheme = get_scheme(f"{f}:AvoidLink01")
    assert scheme.name == "avoid-01"
    snap = snapshot_from_edges(3, [(0, 1), (1, 2), (0, 2)], [1e-3, 1e-3, 5e-3])
    tab = scheme.forwarding_tables(snap, np.arange(3))
    assert trace_path(tab, snap, 0, 1) == [0, 2, 1]
    with pytest.raises(RoutingError, match="has no class 'Nope'.*AvoidLink01"):
        get_scheme(f"{f}:Nope")
    with pytest.raises(RoutingError, match="could not import module"):
        get_scheme("no_such_module_xyz:Scheme")


def test_default_scenario_routes_are_valid_every_step():
    sched = LinkSchedule(load_scenario("default"), 1.0)
    dests = np.arange(len(sched.nodes), dtype=np.int32)
    for snap in sched.snapshots(30):
        for name in ("shortest-delay", "fewest-hops", "ecmp"):
            assert validate_tables(get_scheme(name).forwarding_tables(snap, dests), snap) == []


def test_routing_package_keeps_every_name_it_exported():
    import meshemu.routing as routing

    names = [
        "ECMP",
        "MAX_PATHS",
        "SCHEMES",
        "FewestHops",
        "ForwardingTables",
        "RouteDiff",
        "RoutingScheme",
        "ShortestDelay",
        "Snapshot",
        "available_schemes",
        "get_scheme",
        "linkstate",
        "path_delay_s",
        "register",
        "route_diff",
        "snapshot_from_edges",
        "trace_path",
        "validate_tables",
    ]
    missing = [n for n in names if not hasattr(routing, n)]
    assert missing == []
    assert set(routing.__all__) >= set(names)


def test_schemes_have_a_kind_and_builtins_are_computed():
    from meshemu.routing import SCHEME_KINDS, RoutingScheme, available_schemes, scheme_kind

    assert SCHEME_KINDS == ("computed", "daemon")
    assert RoutingScheme.kind == "computed"
    for name in ("shortest-delay", "fewest-hops", "ecmp"):
        assert name in available_schemes()
        assert scheme_kind(get_scheme(name)) == "computed"

    class Duck:  # a plug-in that declares no kind: computed
        name = "duck"

    assert scheme_kind(Duck) == "computed"
    Duck.kind = "quantum"
    with pytest.raises(RoutingError, match="kind 'quantum'.*computed, daemon"):
        scheme_kind(Duck)


def test_duck_typed_scheme_from_file_and_registered_scheme(tmp_path):
    from meshemu.routing import SCHEMES, ComputedScheme, ShortestDelay, register

    f = tmp_path / "duck.py"
    f.write_text(
        textwrap.dedent("""
        from meshemu.routing import get_scheme

        class Duck:
            name = "duck"
            def forwarding_tables(self, snapshot, destinations):
                return get_scheme("fewest-hops").forwarding_tables(snapshot, destinations)

        NotAScheme = 42
    """)
    )
    duck = get_scheme(f"{f}:Duck")
    assert type(duck).__name__ == "Duck" and isinstance(duck, ComputedScheme)
    snap = snapshot_from_edges(3, [(0, 1), (1, 2), (0, 2)], [1e-3, 1e-3, 5e-3])
    assert trace_path(duck.forwarding_tables(snap, np.arange(3)), snap, 0, 2) == [0, 2]
    with pytest.raises(RoutingError, match="is not a routing scheme"):
        get_scheme(f"{f}:NotAScheme")

    @register
    class Slow(ShortestDelay):
        name = "test-slow"

    try:
        assert isinstance(get_scheme("test-slow"), Slow)
    finally:
        SCHEMES.pop("test-slow")
    with pytest.raises(RoutingError, match="takes a RoutingScheme subclass"):
        register(int)
