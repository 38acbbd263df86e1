"""The plan at scale: Parquet and CSV tables read alike, Parquet written step by step,
endpoint routing against an independent oracle (networkx), the GSL prefilter against the
brute force, maps with capped drawing, and `meshemu run` refusing a scenario too large to
emulate before anything is built."""

import time

import networkx as nx
import numpy as np
import pytest

from meshemu import cli
from meshemu.errors import ReportError, ResourceError
from meshemu.geometry import schedule as schedule_mod
from meshemu.geometry.schedule import LinkSchedule
from meshemu.geometry.visibility import elevation_deg
from meshemu.plan import endpoint_ids, run_plan
from meshemu.report import files, maps
from meshemu.report.files import LINKS, NODES, PATHS, choose_format
from meshemu.report.run import load_run, read_spec
from meshemu.routing import ShortestDelay, trace_path, trace_paths
from meshemu.runsize import check_emulable
from meshemu.spec.scenario import load_scenario


@pytest.fixture(scope="module")
def both_formats(tmp_path_factory):
    sc = load_scenario("default")
    dirs = {}
    for fmt in ("csv", "parquet"):
        out = tmp_path_factory.mktemp(fmt)
        run_plan(sc, 30, 1.0, "shortest-delay", out, plots=False, table_format=fmt)
        dirs[fmt] = out
    return dirs


def same_table(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype.kind == b[k].dtype.kind, k
        if a[k].dtype.kind == "f":
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # NaN == NaN here
        else:
            assert a[k].tolist() == b[k].tolist(), k


def test_parquet_and_csv_read_as_identical_frames(both_formats):
    csv_dir, pq_dir = both_formats["csv"], both_formats["parquet"]
    assert (csv_dir / "links.csv").is_file() and not (csv_dir / "links.parquet").exists()
    assert (pq_dir / "links.parquet").is_dir() and not (pq_dir / "links.csv").exists()
    assert (pq_dir / "nodes.parquet").is_file()
    for spec in (NODES, LINKS, PATHS):
        same_table(read_spec(csv_dir, spec), read_spec(pq_dir, spec))
    a, b = load_run(csv_dir), load_run(pq_dir)
    same_table(a.links_at(7.2), b.links_at(7.2))
    assert b.links_at(7.2)["t_s"][0] == 7.0
    paths = read_spec(pq_dir, PATHS)
    assert np.isnan(paths["hops"]).any() or (paths["path"] != "").all()


def test_parquet_tables_keep_the_csv_column_types(both_formats):
    import pyarrow.parquet as pq

    for spec in (NODES, LINKS, PATHS):
        path = both_formats["parquet"] / spec.parquet_name
        schema = pq.read_schema(path if path.is_file() else sorted(path.iterdir())[0])
        assert schema.names == list(spec.columns)
        assert [str(t) for t in schema.types] == [
            "string" if t == "string" else t.replace("float64", "double") for t in spec.types
        ]


def test_format_rule():
    assert choose_format("auto", files.AUTO_PARQUET_ROWS - 1) == "csv"
    assert choose_format("auto", files.AUTO_PARQUET_ROWS) == "parquet"
    assert choose_format("csv", 10**9) == "csv"
    with pytest.raises(ReportError, match="unknown table format 'feather'.*auto, csv, parquet"):
        choose_format("feather", 1)


class Stop(Exception):
    pass


def test_interrupted_parquet_plan_leaves_the_steps_it_finished(tmp_path):
    k = 4

    def progress(done, total):
        if done == k:
            raise Stop

    with pytest.raises(Stop):
        run_plan(
            load_scenario("default"),
            60,
            1.0,
            out_dir=tmp_path,
            progress=progress,
            plots=False,
            table_format="parquet",
        )
    assert not (tmp_path / "summary.json").exists()
    for spec in (LINKS, PATHS):
        tab = read_spec(tmp_path, spec)
        assert sorted(set(tab["t_s"].tolist())) == [0.0, 1.0, 2.0, 3.0], spec.name
        parts = sorted(p.name for p in (tmp_path / spec.parquet_name).iterdir())
        assert parts == [f"part-{i:06d}.parquet" for i in range(k)]  # no partial file


def test_a_new_plan_replaces_the_tables_of_the_other_format(tmp_path):
    sc = load_scenario("default")
    run_plan(sc, 2, 1.0, out_dir=tmp_path, plots=False, table_format="parquet")
    run_plan(sc, 3, 1.0, out_dir=tmp_path, plots=False, table_format="csv")
    assert not (tmp_path / "links.parquet").exists() and not (tmp_path / "nodes.parquet").exists()
    assert sorted(set(read_spec(tmp_path, LINKS)["t_s"].tolist())) == [0.0, 1.0, 2.0, 3.0]


def _oracle_graph(snap):
    g = nx.Graph()
    g.add_nodes_from(range(snap.n_nodes))
    for a, b, up, d in zip(snap.a.tolist(), snap.b.tolist(), snap.up.tolist(), snap.delay_s):
        if up:
            g.add_edge(a, b, weight=float(d))
    return g


def test_endpoint_routing_agrees_with_networkx_shortest_paths():
    sc = load_scenario("starlink-shell1")
    sched = LinkSchedule(sc, 1.0)
    ends = endpoint_ids(sc, sched.nodes)
    snap = next(sched.snapshots(0))
    tables = ShortestDelay().forwarding_tables(snap, ends)  # trees rooted at 10 endpoints only
    assert tables.next_hop.shape == (snap.n_nodes, ends.size, 1)
    g = _oracle_graph(snap)
    ground = set(np.flatnonzero(~snap.transit).tolist())
    src = np.array([s for s in ends for d in ends if s != d])
    dst = np.array([d for s in ends for d in ends if s != d])
    traced = trace_paths(tables, snap, src, dst)
    for i, (s, d) in enumerate(zip(src.tolist(), dst.tolist())):
        # all-pairs oracle: ground nodes other than the two ends carry no transit
        sub = g.subgraph([v for v in g if v not in ground or v in (s, d)])
        try:
            want = nx.shortest_path_length(sub, s, d, weight="weight")
        except nx.NetworkXNoPath:
            want = None
        assert traced.path(i) == trace_path(tables, snap, s, d)
        if want is None:
            assert traced.hops[i] == -1
        else:
            assert traced.delay_s(snap, i) == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_gsl_prefilter_matches_the_brute_force():
    sc = load_scenario("starlink-shell1")
    sched = LinkSchedule(sc, 1.0)
    for t in (0.0, 300.0):
        r = sched.positions_ecef_km(np.array([t]))[:, 0]
        vis = sched._visible_sats(r)
        el = elevation_deg(sched.ground_ecef_km, sched.ground_up, r)
        for g in range(len(sc.ground)):
            want = np.flatnonzero(el[g] >= sc.gsl.min_elevation_deg)
            assert vis.ids[g].tolist() == want.tolist()


def test_positions_are_propagated_in_memory_bounded_chunks(monkeypatch):
    sched = LinkSchedule(load_scenario("default"), 1.0)
    sizes = []
    real = sched.positions_ecef_km
    monkeypatch.setattr(schedule_mod, "POSITIONS_CHUNK_BYTES", 24 * sched.n_sats * 3)
    monkeypatch.setattr(sched, "positions_ecef_km", lambda t: sizes.append(len(t)) or real(t))
    assert len(list(sched.steps(9))) == 10
    assert sizes == [3, 3, 3, 1]


def test_map_of_a_large_constellation_is_capped_and_fast(tmp_path):
    rng = np.random.default_rng(1)
    n = 60_000
    lat, lon = rng.uniform(-60, 60, n), rng.uniform(-180, 180, n)
    kinds = np.array(["sat"] * (n - 1) + ["station"])
    nodes = maps.MapNodes(tuple(f"n{i}" for i in range(n)), kinds, lat, lon)
    a = np.arange(n - 1)
    b = (a + 1) % (n - 1)
    lk = maps.LinkFrame(0.0, np.minimum(a, b), np.maximum(a, b), np.zeros(n - 1, int), a % 7 > 0)
    t0 = time.perf_counter()
    out = maps.plot_map(tmp_path / "map.png", nodes, lk)
    assert out.stat().st_size > 0
    assert time.perf_counter() - t0 < 8.0


def test_run_refuses_a_million_satellites_before_anything_is_built(monkeypatch, capsys):
    def built(*args, **kwargs):
        raise AssertionError("the schedule was built before the size check")

    monkeypatch.setattr(LinkSchedule, "__init__", built)
    monkeypatch.setattr("os.geteuid", lambda: 1000)  # refused before the root check too
    t0 = time.perf_counter()
    assert cli.main(["run", "million"]) == 2
    assert time.perf_counter() - t0 < 5.0
    err = capsys.readouterr().err
    assert err.count("\n") == 1  # one line
    for part in (
        "1,000,000 satellites",
        "1,000,030 nodes",
        "at most 65,534 nodes",
        "TiB of memory",
        "fits up to about",
        "meshemu plan million",
    ):
        assert part in err, part


def test_emulable_scenarios_pass_the_size_check():
    check_emulable(load_scenario("starlink-shell1"), mem_available=64 * 2**30)
    with pytest.raises(ResourceError, match="1,594 nodes.*GiB of memory.*fits up to about"):
        check_emulable(load_scenario("starlink-shell1"), mem_available=2**30)
