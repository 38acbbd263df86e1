"""`meshemu plan` end to end on the default scenario: files, columns and path invariants."""

import csv
import json
import subprocess
import sys
from collections import defaultdict

import pytest

from meshemu.plan import run_plan
from meshemu.spec.scenario import load_scenario

MESHEMU = [sys.executable, "-m", "meshemu.cli"]


@pytest.fixture(scope="module")
def plan_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("plan")
    run_plan(load_scenario("default"), 120, 1.0, "shortest-delay", out)
    return out


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_files_and_columns(plan_dir):
    for name in (
        "nodes.csv",
        "links.csv",
        "paths.csv",
        "summary.json",
        "map.png",
        "path_delay.png",
    ):
        assert (plan_dir / name).stat().st_size > 0, name
    nodes = rows(plan_dir / "nodes.csv")
    assert list(nodes[0]) == ["id", "name", "kind", "shell", "plane", "index", "slot", "norad_id"]
    assert len(nodes) == 68
    assert {n["kind"] for n in nodes} == {"sat", "compute", "station", "user", "datacenter"}
    links = rows(plan_dir / "links.csv")
    assert list(links[0]) == [
        "t_s",
        "a",
        "b",
        "kind",
        "up",
        "distance_km",
        "delay_ms",
        "rate_mbps",
        "access_down_ms",
        "access_up_ms",
    ]
    assert {r["kind"] for r in links} == {"isl", "gsl"}
    paths = rows(plan_dir / "paths.csv")
    assert list(paths[0]) == [
        "t_s",
        "src",
        "dst",
        "path",
        "hops",
        "delay_ms",
        "propagation_ms",
        "access_ms",
    ]
    summary = json.loads((plan_dir / "summary.json").read_text())
    assert summary["steps"] == 121 and summary["nodes"] == 68


def test_path_delay_is_sum_of_link_delays_over_up_links(plan_dir):
    links = {}
    for r in rows(plan_dir / "links.csv"):
        links[(r["t_s"], r["a"], r["b"])] = r
        links[(r["t_s"], r["b"], r["a"])] = r
    kinds = {r["name"]: r["kind"] for r in rows(plan_dir / "nodes.csv")}
    n = 0
    for p in rows(plan_dir / "paths.csv"):
        if not p["path"]:
            continue
        hops = p["path"].split()
        assert hops[0] == p["src"] and hops[-1] == p["dst"]
        assert int(p["hops"]) == len(hops) - 1
        total = 0.0
        for u, v in zip(hops, hops[1:]):
            link = links[(p["t_s"], u, v)]
            assert link["up"] == "1"
            total += float(link["delay_ms"])
        for mid in hops[1:-1]:
            assert kinds[mid] in ("sat", "compute"), "ground nodes must not carry transit"
        assert float(p["delay_ms"]) == pytest.approx(total, abs=1e-5)
        n += 1
    assert n > 1000


def test_path_delays_symmetric_and_triangle_inequality(plan_dir):
    d = defaultdict(dict)
    for p in rows(plan_dir / "paths.csv"):
        if p["delay_ms"]:
            d[p["t_s"]][(p["src"], p["dst"])] = float(p["delay_ms"])
    kinds = {r["name"]: r["kind"] for r in rows(plan_dir / "nodes.csv")}
    checked = 0
    for _t, pairs in d.items():
        for (s, x), v in pairs.items():
            assert pairs[(x, s)] == pytest.approx(v, abs=1e-6)
            if kinds[x] != "compute":  # only transit nodes may sit in the middle
                continue
            for (x2, y), w in pairs.items():
                if x2 == x and y != s and (s, y) in pairs:
                    assert pairs[(s, y)] <= v + w + 1e-5  # three values rounded to 1e-6 ms
                    checked += 1
    assert checked > 100


def test_cli_plan_and_errors(tmp_path):
    out = tmp_path / "p"
    r = subprocess.run(
        MESHEMU + ["plan", "--duration", "20", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and (out / "paths.csv").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "constellation:\n  shells:\n    - {planes: 3, sats_per_plane: 2, "
        "altitude_km: 550, inclination_deg: 53}\n"
    )
    r = subprocess.run(
        MESHEMU + ["plan", str(bad), "--out", str(tmp_path / "q")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert "sats_per_plane" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "q").exists()
    r = subprocess.run(
        MESHEMU + ["plan", "--routing", "teleport", "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "shortest-delay" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "r").exists()


PLUGINS = '''
import numpy as np
from meshemu.routing import ForwardingTables, ShortestDelay


class Raises(ShortestDelay):
    name = "raises"

    def forwarding_tables(self, snapshot, destinations):
        if snapshot.t_s >= 3:
            raise KeyError("boom at t=3")
        return super().forwarding_tables(snapshot, destinations)


class NotNeighbour(ShortestDelay):
    """Every node forwards to the destination directly, as if it were a neighbour."""
    name = "not-neighbour"

    def forwarding_tables(self, snapshot, destinations):
        d = np.asarray(destinations, dtype=np.int32)
        nh = np.broadcast_to(d[None, :, None], (snapshot.n_nodes, d.size, 1)).copy()
        nh[d, np.arange(d.size), 0] = -1
        return ForwardingTables(d, nh, self.name)
'''


@pytest.mark.parametrize(
    "cls,words",
    [
        ("Raises", ["'raises'", "step 3", "KeyError", "boom at t=3"]),
        ("NotNeighbour", ["'not-neighbour'", "step 0", "without an up link"]),
    ],
)
def test_cli_plan_catches_misbehaving_plugins(tmp_path, cls, words):
    plugin = tmp_path / "plugins.py"
    plugin.write_text(PLUGINS)
    r = subprocess.run(
        MESHEMU
        + [
            "plan",
            "--duration",
            "10",
            "--routing",
            f"{plugin}:{cls}",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "reachable" not in r.stdout
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("meshemu: error:")]
    assert len(err) == 1, r.stderr
    for w in words:
        assert w in err[0], err[0]


@pytest.mark.parametrize(
    "args,words",
    [
        (["--duration", "inf"], ["--duration", "finite", "inf"]),
        (["--duration", "nan"], ["--duration", "finite", "nan"]),
        (["--start", "inf"], ["--start", "finite"]),
        (["--step", "1e-9"], ["--step", "at least"]),
        (["--duration", "2000000", "--step", "1"], ["2,000,001 steps", "at most 1,000,000"]),
    ],
)
def test_cli_plan_refuses_bad_times_and_writes_nothing(tmp_path, args, words):
    out = tmp_path / "o"
    r = subprocess.run(
        MESHEMU + ["plan", *args, "--out", str(out)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr
    assert not out.exists()


def test_cli_plan_refuses_unusable_out_paths(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("")
    for out, words in ((f, ["exists and is not a directory"]), (f / "sub", ["is not a directory"])):
        r = subprocess.run(
            MESHEMU + ["plan", "--duration", "2", "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.startswith("meshemu: error: --out:"), r.stderr
        for w in words:
            assert w in r.stderr
    assert f.read_text() == ""


def test_run_plan_api_raises_meshemu_errors_only(tmp_path):
    from meshemu.errors import OptionsError

    sc = load_scenario("default")
    for kw in (
        {"duration_s": -1},
        {"duration_s": float("inf")},
        {"duration_s": 5, "step_s": 0},
        {"duration_s": 5, "start_s": float("nan")},
    ):
        with pytest.raises(OptionsError):
            run_plan(sc, out_dir=tmp_path / "x", **kw)
    assert not (tmp_path / "x").exists()


def test_malformed_routing_spec_is_a_routing_error(tmp_path):
    from meshemu.errors import RoutingError

    with pytest.raises(RoutingError, match="cannot load routing scheme ':'"):
        run_plan(load_scenario("default"), 2, routing=":", out_dir=tmp_path / "x")
    assert not (tmp_path / "x").exists()
