"""Orbit and geometry against independent references (skyfield, closed-form geometry)."""

import datetime as dt
import math

import numpy as np
import pytest

from meshemu.geometry.constellation import build_constellation, parse_tle_text, walker_shell
from meshemu.geometry.grid import plus_grid
from meshemu.geometry.orbit import (
    WGS84_A_KM,
    ecef_to_geodetic,
    geodetic_to_ecef_km,
    propagate_ecef_km,
    up_vector,
)
from meshemu.geometry.visibility import (
    elevation_deg,
    grazing_altitude_km,
    isl_feasible,
)
from meshemu.spec.scenario import EARTH_RADIUS_KM, ISLPolicy, Scenario, ShellSpec

ISS = (
    "ISS (ZARYA)",
    "1 25544U 98067A   08264.51782528 -.00002182  00000-0 -11606-4 0  2927",
    "2 25544  51.6416 247.4627 0006703 130.5360 325.0288 15.72125391563537",
)


def test_sgp4_earth_fixed_matches_skyfield():
    skyfield = pytest.importorskip("skyfield.api")
    from skyfield.framelib import itrs

    ts = skyfield.load.timescale(builtin=True)
    sat = skyfield.EarthSatellite(ISS[1], ISS[2], ISS[0], ts)
    _, rec = parse_tle_text("\n".join(ISS))[0]
    epoch = sat.epoch.utc_datetime()
    t_s = np.array([0.0, 600.0, 3600.0, 43200.0, 86400.0])
    ours = propagate_ecef_km([rec], epoch, t_s)[0]
    for k, t in enumerate(t_s):
        ref = sat.at(ts.from_datetime(epoch + dt.timedelta(seconds=float(t)))).frame_xyz(itrs).km
        # skyfield applies full precession-nutation and UT1; meshemu rotates TEME by GMST
        # with UT1 = UTC. Those differ by a few hundred metres at most.
        assert np.linalg.norm(ours[k] - ref) < 1.0, (t, ours[k], ref)


def test_sgp4_published_vector_satellite_00005():
    # Vallado et al. 2006 (AIAA 2006-6753) verification case 00005, t = 0: TEME position.
    l1 = "1 00005U 58002B   00179.78495062  .00000023  00000-0  28098-4 0  4753"
    l2 = "2 00005  34.2682 348.7242 1859667 331.7664  19.3264 10.82419157413667"
    _, rec = parse_tle_text(f"{l1}\n{l2}\n")[0]
    e, r, v = rec.sgp4(rec.jdsatepoch, rec.jdsatepochF)
    assert e == 0
    np.testing.assert_allclose(r, [7022.46529266, -1400.08296755, 0.03995155], atol=1e-3)


def test_geodetic_round_trip_and_known_points():
    lat = np.array([0.0, 45.0, -33.9, 89.0, 51.5])
    lon = np.array([0.0, 90.0, 151.2, -120.0, -0.1])
    alt = np.array([0.0, 1000.0, 50.0, 0.0, 550e3])
    r = geodetic_to_ecef_km(lat, lon, alt)
    np.testing.assert_allclose(r[0], [WGS84_A_KM, 0, 0], atol=1e-9)
    la, lo, al = ecef_to_geodetic(r)
    np.testing.assert_allclose(la, lat, atol=1e-7)
    np.testing.assert_allclose(lo, lon, atol=1e-7)
    np.testing.assert_allclose(al * 1000, alt, atol=1e-3)


def test_elevation_known_geometries():
    g = geodetic_to_ecef_km([0.0], [0.0], [0.0])
    up = up_vector([0.0], [0.0])
    zenith = np.array([[WGS84_A_KM + 550.0, 0.0, 0.0]])
    assert elevation_deg(g, up, zenith)[0, 0] == pytest.approx(90.0)
    for e_deg in (0.0, 10.0, 25.0, 60.0):
        d = 1500.0
        e = math.radians(e_deg)
        sat = np.array([[WGS84_A_KM + d * math.sin(e), d * math.cos(e), 0.0]])
        assert elevation_deg(g, up, sat)[0, 0] == pytest.approx(e_deg, abs=1e-9)
    below = np.array([[WGS84_A_KM - 10.0, 100.0, 0.0]])
    assert elevation_deg(g, up, below)[0, 0] < 0


def test_grazing_altitude_closed_form():
    # Two points at radius R+h separated by central angle theta: lowest point of the chord is
    # at its midpoint, (R+h) cos(theta/2) from the centre.
    R = 6371.0
    for h, theta_deg in ((550.0, 20.0), (550.0, 45.0), (1200.0, 70.0), (550.0, 170.0)):
        th = math.radians(theta_deg)
        p = np.array([R + h, 0.0, 0.0])
        q = (R + h) * np.array([math.cos(th), math.sin(th), 0.0])
        assert grazing_altitude_km(p, q) == pytest.approx((R + h) * math.cos(th / 2) - R)
    # segment that does not pass the closest-approach point: lowest point is an end point
    p = np.array([R + 500.0, 0.0, 0.0])
    q = np.array([R + 900.0, 0.0, 0.0])
    assert grazing_altitude_km(p, q) == pytest.approx(500.0)


def test_isl_line_of_sight_blocked_by_earth():
    pol = ISLPolicy(max_range_km=20000.0, min_grazing_altitude_km=80.0)
    R = 6371.0 + 550.0
    pos = np.array([[R, 0, 0], [-R, 0, 0], [R * math.cos(0.3), R * math.sin(0.3), 0]])
    ok, dist = isl_feasible(pos, np.array([0, 0]), np.array([1, 2]), pol)
    assert not ok[0] and ok[1]
    assert dist[0] == pytest.approx(2 * R)


def _walker(planes, spp, alt, inc, kind="walker-delta", phasing=1):
    spec = ShellSpec(
        "t", kind, planes, spp, phasing, alt, inc, 360.0 if kind == "walker-delta" else 180.0
    )
    sc = Scenario.from_dict(
        {
            "constellation": {
                "shells": [
                    {
                        "type": kind,
                        "planes": planes,
                        "sats_per_plane": spp,
                        "phasing": phasing,
                        "altitude_km": alt,
                        "inclination_deg": inc,
                    }
                ]
            }
        }
    )
    return spec, sc


def test_plus_grid_intra_plane_distance_is_the_chord():
    spec, sc = _walker(72, 22, 550.0, 53.0)
    const = build_constellation(sc)
    r = propagate_ecef_km(const.satrecs, sc.epoch, np.array([0.0, 300.0]))
    a, b, cross = plus_grid_pairs(const, r[:, 0], allow_seam=False)
    assert a.size == 2 * 72 * 22  # two links per satellite
    deg = np.bincount(np.concatenate([a, b]), minlength=len(const))
    assert (deg == 4).all()
    intra = ~cross
    for j in range(2):
        radius = np.linalg.norm(r[:, j], axis=1)
        d = np.linalg.norm(r[a[intra], j] - r[b[intra], j], axis=1)
        chord = 2 * 0.5 * (radius[a[intra]] + radius[b[intra]]) * math.sin(math.pi / 22)
        # SGP4's short-period J2 terms make the orbit slightly non-circular: stay within 0.5 %
        np.testing.assert_allclose(d, chord, rtol=5e-3)
        nominal = 2 * (EARTH_RADIUS_KM + 550.0) * math.sin(math.pi / 22)
        assert abs(np.median(d) - nominal) / nominal < 0.01


def plus_grid_pairs(const, r0, allow_seam):
    g = plus_grid(const.layouts, r0, None, allow_seam, 1e9)
    return g.a, g.b, g.cross


def test_walker_star_has_no_seam_links():
    spec, sc = _walker(6, 11, 780.0, 86.4, kind="walker-star", phasing=0)
    const = build_constellation(sc)
    r0 = propagate_ecef_km(const.satrecs, sc.epoch, np.array([0.0]))[:, 0]
    a, b, cross = plus_grid_pairs(const, r0, allow_seam=False)
    plane = const.plane
    pairs = {(plane[x], plane[y]) for x, y in zip(a[cross], b[cross])}
    assert (0, 5) not in pairs and (5, 0) not in pairs
    assert (0, 1) in pairs
    a2, _, cross2 = plus_grid_pairs(const, r0, allow_seam=True)
    assert cross2.sum() == cross.sum() + 11


def test_walker_phasing_and_orbit_altitude():
    spec, sc = _walker(4, 6, 550.0, 53.0, phasing=1)
    recs = walker_shell(spec, sc.epoch)
    assert len(recs) == 24
    # mean anomaly of (p, s) = 360 s/S + 360 F p / T
    m = [math.degrees(r.mo) for r in recs]
    assert m[6 * 1 + 0] == pytest.approx(360 * 1 * 1 / 24)
    assert m[6 * 2 + 3] == pytest.approx((360 * 3 / 6 + 360 * 2 / 24) % 360)
    raan = [math.degrees(r.nodeo) for r in recs]
    assert raan[6 * 3] == pytest.approx(270.0)
    r = propagate_ecef_km(recs, sc.epoch, np.linspace(0, 6000, 7))
    alt = np.linalg.norm(r, axis=-1) - EARTH_RADIUS_KM
    assert np.all(np.abs(alt - 550.0) < 25.0)
