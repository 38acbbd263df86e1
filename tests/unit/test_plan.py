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
    for name in ("nodes.csv", "links.csv", "paths.csv", "summary.json", "map.png",
                 "path_delay.png"):
        assert (plan_dir / name).stat().st_size > 0, name
    nodes = rows(plan_dir / "nodes.csv")
    assert list(nodes[0]) == ["id", "name", "kind", "shell", "plane", "index"]
    assert len(nodes) == 68
    assert {n["kind"] for n in nodes} == {"sat", "compute", "station", "user", "datacenter"}
    links = rows(plan_dir / "links.csv")
    assert list(links[0]) == ["t_s", "a", "b", "kind", "up", "distance_km", "delay_ms",
                              "rate_mbps"]
    assert {r["kind"] for r in links} == {"isl", "gsl"}
    paths = rows(plan_dir / "paths.csv")
    assert list(paths[0]) == ["t_s", "src", "dst", "path", "hops", "delay_ms"]
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
    for t, pairs in d.items():
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
    r = subprocess.run(MESHEMU + ["plan", "--duration", "20", "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and (out / "paths.csv").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("constellation:\n  shells:\n    - {planes: 3, sats_per_plane: 2, "
                   "altitude_km: 550, inclination_deg: 53}\n")
    r = subprocess.run(MESHEMU + ["plan", str(bad), "--out", str(tmp_path / "q")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "sats_per_plane" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "q").exists()
    r = subprocess.run(MESHEMU + ["plan", "--routing", "teleport", "--out", str(tmp_path / "r")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "shortest-delay" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "r").exists()
