"""Scenario files load, and every kind of bad input gets an error naming the field."""

import copy
from pathlib import Path

import numpy as np
import pytest

from meshemu.errors import ScenarioError, TLEError
from meshemu.geometry.constellation import build_constellation, build_nodes, parse_tle_text
from meshemu.geometry.orbit import propagate_ecef_km
from meshemu.spec.scenario import Scenario, list_scenarios, load_scenario

BASE = {
    "name": "t",
    "constellation": {
        "shells": [
            {
                "type": "walker-delta",
                "planes": 4,
                "sats_per_plane": 6,
                "phasing": 1,
                "altitude_km": 550,
                "inclination_deg": 53,
            }
        ]
    },
    "ground": [{"name": "gs1", "lat_deg": 10, "lon_deg": 20}],
}


def with_(path, value):
    d = copy.deepcopy(BASE)
    cur = d
    keys = path.split(".")
    for k in keys[:-1]:
        cur = cur[int(k)] if isinstance(cur, list) else cur.setdefault(k, {})
    if isinstance(cur, list):
        cur[int(keys[-1])] = value
    else:
        cur[keys[-1]] = value
    return d


SHARED_TLE = Path(__file__).resolve().parents[2].parent / "shared/data/starlink-2026-05-21.tle"


@pytest.mark.parametrize("name", list_scenarios())
def test_shipped_scenarios_load_and_build(name, tmp_path, monkeypatch):
    if name == "starlink-real":  # needs a fetched catalogue: the shared snapshot stands in
        if not SHARED_TLE.is_file():
            pytest.skip(f"{SHARED_TLE} is not present")
        (tmp_path / "starlink-20260521T120000Z.tle").symlink_to(SHARED_TLE)
        monkeypatch.setenv("MESHEMU_TLE_DIR", str(tmp_path))
    sc = load_scenario(name)
    const = build_constellation(sc)
    assert len(const) > 0
    r0 = propagate_ecef_km(const.satrecs, sc.epoch, np.array([0.0]))[:, 0]
    nodes = build_nodes(sc, const, r0)
    assert len(nodes) == len(const) + len(sc.ground)


def test_required_scenarios_are_shipped():
    names = set(list_scenarios())
    assert {
        "default",
        "starlink-shell1",
        "polar-star",
        "kuiper-shell1",
        "orbital-datacenter",
        "tle-demo",
    } <= names
    assert sum(s.n_sats for s in load_scenario("starlink-shell1").shells) == 1584


def test_compute_selections():
    for sel, expected in (
        ("all", 24),
        ("none", 0),
        ({"every": 5}, 5),
        ({"list": ["s0_1_2", "s0_3_5"]}, 2),
        ({"cluster": {"center": "s0_0_0", "size": 7}}, 7),
    ):
        sc = Scenario.from_dict(with_("compute", {"satellites": sel}))
        const = build_constellation(sc)
        r0 = propagate_ecef_km(const.satrecs, sc.epoch, np.array([0.0]))[:, 0]
        nodes = build_nodes(sc, const, r0)
        assert int((nodes.kind == "compute").sum()) == expected, sel
    # the cluster is the centre and its nearest neighbours: in a single plane of 20, those are
    # the two in-plane neighbours
    d = with_("compute", {"satellites": {"cluster": {"center": "s0_0_0", "size": 3}}})
    d["constellation"]["shells"][0].update(planes=1, sats_per_plane=20, phasing=0)
    sc = Scenario.from_dict(d)
    const = build_constellation(sc)
    r0 = propagate_ecef_km(const.satrecs, sc.epoch, np.array([0.0]))[:, 0]
    nodes = build_nodes(sc, const, r0)
    chosen = {nodes.names[i] for i in np.nonzero(nodes.kind == "compute")[0]}
    assert chosen == {"s0_0_0", "s0_0_1", "s0_0_19"}


@pytest.mark.parametrize(
    "path,value,field,words",
    [
        ("constellation.shells.0.planes", 0, "constellation.shells[0].planes", "[1, 1000]"),
        ("constellation.shells.0.planes", "many", "constellation.shells[0].planes", "number"),
        ("constellation.shells.0.altitude_km", 50, "constellation.shells[0].altitude_km", "160"),
        (
            "constellation.shells.0.inclination_deg",
            200,
            "constellation.shells[0].inclination_deg",
            "180",
        ),
        ("constellation.shells.0.phasing", 4, "constellation.shells[0].phasing", "[0, 3]"),
        (
            "constellation.shells.0.type",
            "walker-zeta",
            "constellation.shells[0].type",
            "walker-delta, walker-star",
        ),
        ("constellation.shells.0.colour", "red", "constellation.shells[0].colour", "allowed keys"),
        ("ground.0.lat_deg", 95, "ground[0].lat_deg", "[-90, 90]"),
        ("ground.0.name", "9bad name", "ground[0].name", "letters"),
        ("ground.0.kind", "castle", "ground[0].kind", "station, user, datacenter"),
        ("isl.pattern", "mesh", "isl.pattern", "plus-grid, nearest"),
        ("isl.max_range_km", -5, "isl.max_range_km", "> 0"),
        ("isl.terminals", 2, "isl.terminals", "4 laser terminals"),
        ("gsl.handover", "random", "gsl.handover", "nearest, longest-visible"),
        ("gsl.min_elevation_deg", 91, "gsl.min_elevation_deg", "[0, 90]"),
        ("compute.satellites", "some", "compute.satellites", "all, none"),
        ("epoch", "yesterday", "epoch", "ISO 8601"),
        ("constellation", {}, "constellation", "at least one"),
    ],
)
def test_bad_fields_are_named(path, value, field, words):
    with pytest.raises(ScenarioError) as ei:
        Scenario.from_dict(with_(path, value))
    assert ei.value.field == field
    assert words in str(ei.value)
    assert isinstance(ei.value, ValueError)


def test_unknown_names_in_compute_and_endpoints():
    sc = Scenario.from_dict(with_("compute", {"satellites": {"list": ["s9_9_9"]}}))
    const = build_constellation(sc)
    r0 = propagate_ecef_km(const.satrecs, sc.epoch, np.array([0.0]))[:, 0]
    with pytest.raises(ScenarioError, match="unknown satellite 's9_9_9'.*s0_0_0"):
        build_nodes(sc, const, r0)
    sc = Scenario.from_dict(with_("endpoints", ["gs1", "atlantis"]))
    const = build_constellation(sc)
    with pytest.raises(ScenarioError, match="unknown node name 'atlantis'"):
        build_nodes(sc, const, r0)


def test_duplicate_ground_names():
    d = copy.deepcopy(BASE)
    d["ground"].append({"name": "gs1", "lat_deg": 0, "lon_deg": 0})
    with pytest.raises(ScenarioError, match="duplicate ground node name 'gs1'"):
        Scenario.from_dict(d)


def test_missing_scenario_file_lists_shipped(tmp_path):
    with pytest.raises(ScenarioError, match="default"):
        load_scenario(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("constellation: [unclosed")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load_scenario(bad)


def _fix_checksum(line):
    total = sum(int(c) if c.isdigit() else (c == "-") for c in line[:68])
    return line[:68] + str(total % 10)


GOOD = (
    "1 25544U 98067A   08264.51782528 -.00002182  00000-0 -11606-4 0  2927",
    "2 25544  51.6416 247.4627 0006703 130.5360 325.0288 15.72125391563537",
)


def test_tle_parsing_good_and_3le():
    pairs = parse_tle_text(f"ISS (ZARYA)\n{GOOD[0]}\n{GOOD[1]}\n{GOOD[0]}\n{GOOD[1]}\n")
    assert [p[0] for p in pairs] == ["ISS (ZARYA)", "SAT25544"]
    assert pairs[0][1].satnum == 25544


@pytest.mark.parametrize(
    "text,words",
    [
        (f"{GOOD[0][:40]}\n{GOOD[1]}", "69 characters"),
        (f"{GOOD[0][:-1]}8\n{GOOD[1]}", "checksum is 8"),
        (
            f"{GOOD[0]}\n{_fix_checksum(GOOD[1].replace('2 25544', '2 25545', 1))}",
            "satellite numbers differ",
        ),
        (f"ISS\n{GOOD[0]}", "cut short"),
        ("", "no element sets"),
        (
            f"{GOOD[0]}\n3 25544  51.6416 247.4627 0006703 130.5360 325.0288 15.72125391563537",
            "not a TLE line 2",
        ),
    ],
)
def test_malformed_tle_errors_show_template(text, words):
    with pytest.raises(TLEError) as ei:
        parse_tle_text(text, "x.tle")
    assert words in str(ei.value)
    assert "x.tle" in str(ei.value)


def test_tle_scenario_with_missing_file(tmp_path):
    d = {"constellation": {"tle_files": [{"file": "missing.tle"}]}}
    with pytest.raises(ScenarioError, match="no such file"):
        Scenario.from_dict(d, base_dir=tmp_path)
