"""Geometry: which inter-satellite and ground links are feasible, how long they are.

Pure numpy functions over Earth-fixed positions (km). Formulas:

- line of sight: the lowest point of the segment P-Q is its closest approach to the Earth's
  centre, ``|P + t (Q - P)|`` with ``t = clip(-P.(Q-P) / |Q-P|^2, 0, 1)``; the link is
  feasible when that point stays ``min_grazing_altitude_km`` above a spherical Earth of mean
  radius 6371 km (the usual atmosphere-grazing rule, e.g. Hypatia, Kassing et al. 2020);
- elevation of a satellite seen from a ground point: ``asin(u . (S - G) / |S - G|)`` with
  ``u`` the local ellipsoid normal;
- +Grid: each satellite links to its two neighbours in its plane and to the satellites with
  the same index (shifted to the best phase match) in the two adjacent planes.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from meshemu.geometry.arrays import BoolArray, FloatArray, Int32Array
from meshemu.geometry.constellation import Constellation
from meshemu.spec.scenario import ISLPolicy

EARTH_MEAN_RADIUS_KM = 6371.0


def distance_km(p: FloatArray, q: FloatArray) -> FloatArray:
    """Euclidean distances between matching rows of ``p`` and ``q`` (..., 3)."""
    dist: FloatArray = np.linalg.norm(q - p, axis=-1)
    return dist


def grazing_altitude_km(p: FloatArray, q: FloatArray) -> FloatArray:
    """Lowest altitude above a spherical Earth along the straight segment P-Q."""
    d = q - p
    dd = np.einsum("...i,...i->...", d, d)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.clip(-np.einsum("...i,...i->...", p, d) / np.where(dd > 0, dd, 1.0), 0.0, 1.0)
    closest = p + t[..., None] * d
    alt: FloatArray = np.linalg.norm(closest, axis=-1) - EARTH_MEAN_RADIUS_KM
    return alt


def elevation_deg(ground_km: FloatArray, ground_up: FloatArray, sat_km: FloatArray) -> FloatArray:
    """Elevation (deg) of every satellite from every ground point.

    Parameters
    ----------
    ground_km, ground_up : ndarray (G, 3)
        Positions and unit local normals of ground points.
    sat_km : ndarray (S, 3)

    Returns
    -------
    ndarray (G, S)
    """
    rel = sat_km[None, :, :] - ground_km[:, None, :]
    rng = np.linalg.norm(rel, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.einsum("gsi,gi->gs", rel, ground_up) / rng
    elev: FloatArray = np.rad2deg(np.arcsin(np.clip(s, -1.0, 1.0)))
    return elev


def plus_grid_pairs(
    const: Constellation, ecef0_km: FloatArray, allow_seam: bool
) -> tuple[Int32Array, Int32Array, BoolArray]:
    """Candidate +Grid ISLs of the Walker shells (TLE satellites get none).

    The cross-plane partner of satellite (p, s) is (p+1, s + shift) where ``shift`` is the
    index offset that minimises the mean link length at t = 0 (it absorbs the Walker phasing
    F and, at the wrap from the last plane to the first, the phase offset of the seam).
    For a Walker star shell the last and first planes counter-rotate (the seam): those links
    are left out unless ``allow_seam``.

    Returns
    -------
    a, b : ndarray of int32 (a < b)
    cross : ndarray of bool
        True for cross-plane links.
    """
    a_l, b_l, c_l = [], [], []
    base = 0
    for spec in const.shells:
        P, S = spec.planes, spec.sats_per_plane
        ids = base + np.arange(P * S).reshape(P, S)
        # intra-plane ring
        a_l.append(ids.ravel())
        b_l.append(np.roll(ids, -1, axis=1).ravel())
        c_l.append(np.zeros(P * S, bool))
        if P > 1:
            n_pairs = P if (spec.type == "walker-delta" or allow_seam) else P - 1
            if spec.type == "walker-delta" and P == 2:
                n_pairs = 1
            for p in range(n_pairs):
                q = (p + 1) % P
                src = ids[p]
                best, best_len = 0, np.inf
                for shift in range(S):
                    dst = np.roll(ids[q], -shift)
                    m = float(np.nanmean(distance_km(ecef0_km[src], ecef0_km[dst])))
                    if m < best_len:
                        best, best_len = shift, m
                a_l.append(src)
                b_l.append(np.roll(ids[q], -best))
                c_l.append(np.ones(S, bool))
        base += P * S
    if not a_l:
        return np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, bool)
    a = np.concatenate(a_l)
    b = np.concatenate(b_l)
    cross = np.concatenate(c_l)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    keep = lo != hi
    key = lo[keep].astype(np.int64) * (len(const) + 1) + hi[keep]
    _, first = np.unique(key, return_index=True)
    return (lo[keep][first].astype(np.int32), hi[keep][first].astype(np.int32), cross[keep][first])


def isl_feasible(
    ecef_km: FloatArray,
    a: Int32Array,
    b: Int32Array,
    policy: ISLPolicy,
    lat_deg: FloatArray | None = None,
    cross: BoolArray | None = None,
) -> tuple[BoolArray, FloatArray]:
    """Feasibility and length of candidate ISLs at one instant.

    Returns
    -------
    ok : ndarray of bool
        Within ``max_range_km``, line of sight above ``min_grazing_altitude_km``, and for
        cross-plane links both ends below ``cross_plane_max_lat_deg``.
    dist_km : ndarray
    """
    p, q = ecef_km[a], ecef_km[b]
    dist = distance_km(p, q)
    with np.errstate(invalid="ignore"):
        ok = (dist <= policy.max_range_km) & (
            grazing_altitude_km(p, q) >= policy.min_grazing_altitude_km
        )
        if policy.cross_plane_max_lat_deg is not None and lat_deg is not None and cross is not None:
            polar = (np.abs(lat_deg[a]) > policy.cross_plane_max_lat_deg) | (
                np.abs(lat_deg[b]) > policy.cross_plane_max_lat_deg
            )
            ok &= ~(cross & polar)
    return ok & np.isfinite(dist), dist


def nearest_isls(
    ecef_km: FloatArray,
    policy: ISLPolicy,
    keep: set[tuple[int, int]] | None = None,
    k_candidates: int = 12,
) -> list[tuple[int, int]]:
    """ISLs chosen greedily by length: each satellite uses at most ``policy.terminals`` links.

    Links in ``keep`` (the previous step's) are kept first while still feasible, so links
    persist instead of flapping; free terminals then pair up shortest-first among the
    ``k_candidates`` nearest satellites in range with line of sight.
    """
    n = ecef_km.shape[0]
    good = np.isfinite(ecef_km).all(axis=1)
    idx = np.nonzero(good)[0]
    if idx.size < 2 or policy.terminals == 0:
        return []
    tree = cKDTree(ecef_km[idx])
    k = min(k_candidates + 1, idx.size)
    dist, nb = tree.query(ecef_km[idx], k=k, distance_upper_bound=policy.max_range_km)
    src = np.repeat(idx, k - 1)
    dst_local = nb[:, 1:].ravel()
    d = dist[:, 1:].ravel()
    valid = np.isfinite(d)
    src, dst, d = src[valid], idx[dst_local[valid]], d[valid]
    lo, hi = np.minimum(src, dst), np.maximum(src, dst)
    key = lo.astype(np.int64) * n + hi
    key, first = np.unique(key, return_index=True)
    lo, hi, d = lo[first], hi[first], d[first]
    los = grazing_altitude_km(ecef_km[lo], ecef_km[hi]) >= policy.min_grazing_altitude_km
    lo, hi, d = lo[los], hi[los], d[los]
    free = np.full(n, policy.terminals, dtype=np.int64)
    chosen: list[tuple[int, int]] = []
    if keep:
        feasible = set(zip(lo.tolist(), hi.tolist()))
        for pair in sorted(keep):
            u, v = pair
            feasible_now = pair in feasible or _pair_feasible(ecef_km, u, v, policy)
            if feasible_now and free[u] > 0 and free[v] > 0:
                chosen.append(pair)
                free[u] -= 1
                free[v] -= 1
    kept = set(chosen)
    for j in np.argsort(d, kind="stable"):
        u, v = int(lo[j]), int(hi[j])
        if free[u] > 0 and free[v] > 0 and (u, v) not in kept:
            chosen.append((u, v))
            free[u] -= 1
            free[v] -= 1
    return sorted(chosen)


def _pair_feasible(ecef_km: FloatArray, u: int, v: int, policy: ISLPolicy) -> bool:
    p, q = ecef_km[u], ecef_km[v]
    d = float(np.linalg.norm(q - p))
    return bool(
        np.isfinite(d)
        and d <= policy.max_range_km
        and grazing_altitude_km(p, q) >= policy.min_grazing_altitude_km
    )
