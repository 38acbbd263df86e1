"""The access network: PoPs, servers, backhaul delay, home-PoP routing, the KML loader."""

import copy
from pathlib import Path

import numpy as np
import pytest

from meshemu.errors import ScenarioError
from meshemu.geometry.linkstate import GSL, TRL
from meshemu.geometry.schedule import LinkSchedule
from meshemu.routing import ECMP, FewestHops, ShortestDelay, trace_path, validate_tables
from meshemu.spec.access import (
    AccessSpec,
    KmlSource,
    backhaul_delay_s,
    great_circle_km,
    read_kml_sites,
    select_sites,
    site_name,
)
from meshemu.spec.scenario import Scenario

KML = Path(__file__).resolve().parents[3] / "shared" / "data" / "starlink-gw-pop-2023-10-10.kml"

BASE = {
    "epoch": "2026-01-01T00:00:00Z",
    "constellation": {
        "shells": [
            {
                "type": "walker-delta",
                "planes": 24,
                "sats_per_plane": 22,
                "phasing": 1,
                "altitude_km": 550,
                "inclination_deg": 53,
            }
        ]
    },
    "ground": [
        {"name": "paris", "lat_deg": 48.86, "lon_deg": 2.35, "kind": "user"},
        {"name": "lyon", "lat_deg": 45.76, "lon_deg": 4.84, "kind": "user", "pop": "pop_SYD"},
        {"name": "gw_fr", "lat_deg": 47.0, "lon_deg": 2.0, "kind": "station"},
        {"name": "gw_de", "lat_deg": 50.0, "lon_deg": 8.0, "kind": "station"},
        {"name": "gw_au", "lat_deg": -33.0, "lon_deg": 150.0, "kind": "station"},
        {"name": "pop_FRA", "lat_deg": 50.12, "lon_deg": 8.73, "kind": "pop"},
        {"name": "pop_SYD", "lat_deg": -33.79, "lon_deg": 151.13, "kind": "pop"},
    ],
    "isl": {"max_range_km": 5000},
    "gsl": {"min_elevation_deg": 25},
    "access": {},
}


def scenario(**top):
    d = copy.deepcopy(BASE)
    d.update(top)
    return Scenario.from_dict(d)


def by_name(sc):
    return {g.name: g for g in sc.ground}


def test_backhaul_delay_is_distance_times_route_factor_over_fibre():
    acc = AccessSpec()
    # 1000 km x 1.5 / (c / 1.468) = 7.345 ms
    assert backhaul_delay_s(1000.0, acc) == pytest.approx(1000e3 * 1.5 * 1.468 / 299_792_458.0)
    assert great_circle_km(0, 0, 0, 90) == pytest.approx(np.pi / 2 * 6371.0088)


def test_home_pop_explicit_or_nearest_and_a_server_per_pop():
    g = by_name(scenario())
    assert g["paris"].pop == "pop_FRA"  # nearest
    assert g["lyon"].pop == "pop_SYD"  # explicit, another continent
    assert g["gw_au"].pop == "pop_SYD" and g["gw_fr"].pop == "pop_FRA"
    assert g["srv_FRA"].kind == "server" and g["srv_FRA"].pop == "pop_FRA"


def test_snapshot_has_backhaul_links_with_fibre_delay_and_no_gsl_at_pops():
    sc = scenario()
    s = LinkSchedule(sc)
    snap = s.snapshot_at(0.0)
    ids = {n: i for i, n in enumerate(s.nodes.names)}
    trl = np.flatnonzero(snap.kind == TRL)
    assert trl.size == 3 + 2  # three gateways, two servers
    e = snap.edge_index(ids["gw_de"], ids["pop_FRA"])
    assert snap.kind[e] == TRL
    gc = great_circle_km(50.0, 8.0, 50.12, 8.73)
    assert snap.delay_s[e] == pytest.approx(backhaul_delay_s(gc, sc.access))
    gsl_ground = set(snap.b[snap.kind == GSL].tolist())
    assert not gsl_ground & {ids["pop_FRA"], ids["srv_FRA"], ids["pop_SYD"]}
    assert s.nodes.relays[ids["gw_de"]] and s.nodes.relays[ids["pop_FRA"]]
    assert not s.nodes.relays[ids["paris"]]


@pytest.mark.parametrize("scheme", [ShortestDelay(), FewestHops(), ECMP()])
def test_user_reaches_home_pop_over_satellites_a_gateway_and_its_backhaul(scheme):
    s = LinkSchedule(scenario())
    ids = {n: i for i, n in enumerate(s.nodes.names)}
    kind = dict(zip(range(len(s.nodes)), s.nodes.kind.tolist(), strict=True))
    ends = [ids[n] for n in ("paris", "lyon", "pop_FRA", "pop_SYD", "srv_FRA", "srv_SYD")]
    for snap in s.snapshots(60, start_s=0):
        tables = scheme.forwarding_tables(snap, ends)
        assert validate_tables(tables, snap) == []
        for user, pop, srv in (("paris", "pop_FRA", "srv_FRA"), ("lyon", "pop_SYD", "srv_SYD")):
            path = trace_path(tables, snap, ids[user], ids[srv])
            assert path is not None
            kinds = [kind[x] for x in path]
            # user -> satellite(s) -> one gateway -> its PoP -> the server
            assert kinds[0] == "user" and kinds[1] == "sat"
            assert kinds[-3:] == ["station", "pop", "server"] and path[-2] == ids[pop]
            assert set(kinds[1:-3]) == {"sat"}
            gw = s.scenario.ground[path[-3] - s.n_sats]
            assert gw.pop == pop
            back = trace_path(tables, snap, ids[srv], ids[user])
            assert back is not None and [kind[x] for x in back][:3] == ["server", "pop", "station"]


def test_home_pop_on_another_continent_goes_over_isls():
    s = LinkSchedule(scenario())
    ids = {n: i for i, n in enumerate(s.nodes.names)}
    snap = s.snapshot_at(0.0)
    tables = ShortestDelay().forwarding_tables(snap, [ids["pop_SYD"], ids["pop_FRA"]])
    far = trace_path(tables, snap, ids["lyon"], ids["pop_SYD"])
    near = trace_path(tables, snap, ids["paris"], ids["pop_FRA"])
    assert far[-2] == ids["gw_au"]
    delay = sum(snap.delay_s[snap.edge_index(u, v)] for u, v in zip(far, far[1:], strict=False))
    assert delay > 0.05  # France to Sydney: over 50 ms one way
    assert len(far) > len(near) + 5


def test_gateways_and_pops_never_transit_between_satellites():
    """Every path between every pair: a ground node inside a path sits between a satellite
    and a PoP (a gateway) or between a gateway and a server (a PoP)."""
    s = LinkSchedule(scenario())
    kind = s.nodes.kind
    ends = np.flatnonzero(kind != "sat")
    for snap in s.snapshots(30, start_s=0):
        tables = ShortestDelay().forwarding_tables(snap, ends)
        for src in ends.tolist():
            for dst in ends.tolist():
                p = trace_path(tables, snap, src, dst) if src != dst else None
                for x, y, z in zip(p or [], (p or [])[1:], (p or [])[2:], strict=False):
                    if kind[y] == "station":
                        assert {kind[x], kind[z]} == {"sat", "pop"}
                    if kind[y] == "pop":
                        assert {kind[x], kind[z]} == {"station", "server"}
                    assert kind[y] in ("sat", "station", "pop")


def test_validate_tables_flags_a_gateway_between_satellites():
    s = LinkSchedule(scenario())
    ids = {n: i for i, n in enumerate(s.nodes.names)}
    snap = s.snapshot_at(0.0)
    d = ids["paris"]
    tables = ShortestDelay().forwarding_tables(snap, [d])
    nh = tables.next_hop.copy()
    gw = ids["gw_au"]
    sat = int(snap.a[snap.edge_index(gw, int(nh[gw, 0, 0]))]) if nh[gw, 0, 0] >= 0 else None
    assert sat is not None and s.nodes.kind[sat] == "sat"
    nh[sat, 0, 0] = gw  # the satellite hands paris's traffic to a gateway, which sends it up
    from meshemu.routing import ForwardingTables

    problems = validate_tables(ForwardingTables(tables.destinations, nh), snap)
    assert any("non-transit" in p for p in problems)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (
            {"ground": [{"name": "p", "lat_deg": 0, "lon_deg": 0, "kind": "pop"}], "access": None},
            "ground[0].kind",
        ),
        (
            {
                "ground": BASE["ground"]
                + [{"name": "u", "lat_deg": 0, "lon_deg": 0, "kind": "user", "pop": "pop_XXX"}]
            },
            "ground[7].pop",
        ),
        ({"access": {"route_factor": 0.5}}, "access.route_factor"),
        ({"access": {"kml": {"file": "nowhere.kml"}}}, "access.kml.file"),
        ({"ground": BASE["ground"][:5]}, "access"),
    ],
)
def test_bad_access_fields_are_named(change, field):
    with pytest.raises(ScenarioError) as e:
        scenario(**change)
    assert field in str(e.value)


@pytest.mark.skipif(not KML.is_file(), reason=f"{KML} not present")
def test_kml_loader_reads_pops_and_gateways():
    sites = read_kml_sites(KML)
    pops = {s.name: s for s in sites if s.kind == "pop"}
    assert {"pop_FRA", "pop_LON", "pop_SEA", "pop_LOS", "pop_SYD"} <= set(pops)
    assert pops["pop_FRA"].lat_deg == pytest.approx(50.1196613)
    gws = [s for s in sites if s.kind == "station"]
    assert len(gws) > 150 and {s.state for s in gws} >= {"live", "construction"}
    assert len({s.name for s in sites}) == len(sites)
    assert site_name("Redmond, WA | Mega", "station") == "gw_Redmond_WA"
    assert site_name("São Gonçalo do Amarante, BR", "station") == "gw_Sao_Goncalo_do_Amarante_BR"
    near = select_sites(sites, [(48.86, 2.35)], KmlSource(KML, ("live",), 1500.0, 3))
    chosen_gws = [s for s in near if s.kind == "station"]
    assert len(chosen_gws) == 3 and all(s.state == "live" for s in chosen_gws)
    assert all(great_circle_km(48.86, 2.35, s.lat_deg, s.lon_deg) <= 1500 for s in chosen_gws)


@pytest.mark.skipif(not KML.is_file(), reason=f"{KML} not present")
def test_scenario_with_kml_gets_gateways_pops_and_servers(tmp_path):
    d = copy.deepcopy(BASE)
    d["ground"] = [{"name": "paris", "lat_deg": 48.86, "lon_deg": 2.35, "kind": "user"}]
    d["access"] = {"kml": {"file": str(KML), "gateways_per_user": 2}}
    sc = Scenario.from_dict(d)
    kinds = [g.kind for g in sc.ground]
    assert kinds.count("station") == 2 and kinds.count("pop") >= 1
    assert kinds.count("server") == kinds.count("pop")
    assert all(g.pop.startswith("pop_") for g in sc.ground if g.kind in ("station", "user"))
