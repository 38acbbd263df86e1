"""Geometry: which inter-satellite and ground links are feasible, how long they are.

Pure numpy functions over Earth-fixed positions (km). Formulas:

- line of sight: the lowest point of the segment P-Q is its closest approach to the Earth's
  centre, ``|P + t (Q - P)|`` with ``t = clip(-P.(Q-P) / |Q-P|^2, 0, 1)``; the link is
  feasible when that point stays ``min_grazing_altitude_km`` above a spherical Earth of mean
  radius 6371 km (the usual atmosphere-grazing rule, e.g. Hypatia, Kassing et al. 2020);
- elevation of a satellite seen from a ground point: ``asin(u . (S - G) / |S - G|)`` with
  ``u`` the local ellipsoid normal;
- +Grid candidates come from :mod:`meshemu.geometry.grid`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy.spatial import cKDTree

from meshemu.geometry.arrays import BoolArray, FloatArray, Int32Array, Int64Array
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
    keep: tuple[Int32Array, Int32Array] | None = None,
    k_candidates: int = 12,
) -> tuple[Int32Array, Int32Array]:
    """ISLs chosen greedily by length: each satellite uses at most ``policy.terminals`` links.

    The rules, in this order:

    1. Links in ``keep`` (the previous step's) are kept first, in ``(a, b)`` order, while
       still feasible (finite ends, within ``max_range_km``, line of sight above
       ``min_grazing_altitude_km``) and both ends have a free terminal; so links persist
       instead of flapping.
    2. Candidates are the unordered pairs (u, v) where v is one of the ``k_candidates``
       nearest other satellites of u within ``max_range_km`` (a k-d tree query over the
       satellites with a finite position), with line of sight.
    3. Free terminals then pair up shortest-first among the candidates not kept in 1 (ties
       in length go to the smaller ``(a, b)``): a pair is taken when both its ends still
       have a free terminal.

    Parameters
    ----------
    ecef_km : ndarray (S, 3)
        Satellite positions; rows with a non-finite coordinate get no links.
    policy : ISLPolicy
        ``terminals``, ``max_range_km`` and ``min_grazing_altitude_km`` are used.
    keep : (ndarray of int32, ndarray of int32), optional
        The links to keep if they can, as this function returns them; a pair is read as
        (min, max), repeats count once and a satellite paired with itself is ignored.
    k_candidates : int
        Nearest satellites looked at per satellite.

    Returns
    -------
    a, b : ndarray of int32
        The chosen links, ``a < b``, sorted by ``(a, b)``.

    Notes
    -----
    Rules 1 and 3 are one sequential greedy each; :func:`_greedy_take` computes it in
    vectorised rounds with the same result.
    """
    n = ecef_km.shape[0]
    none = np.zeros(0, np.int32)
    good = np.isfinite(ecef_km).all(axis=1)
    idx = np.nonzero(good)[0]
    if idx.size < 2 or policy.terminals == 0:
        return none, none.copy()
    free = np.full(n, policy.terminals, dtype=np.int64)
    kept_key = np.zeros(0, np.int64)
    if keep is not None and keep[0].size:
        kept_key, free = _keep_links(ecef_km, policy, keep, free)
    # rule 3 needs the k-d tree rows of the satellites with a free terminal only: a pair of
    # two such satellites is a candidate through one of their rows, and a pair with an end
    # out of terminals would be refused
    tree = cKDTree(ecef_km[idx])
    k = min(k_candidates + 1, idx.size)
    rows = idx[free[idx] > 0]
    dist, nb = tree.query(ecef_km[rows], k=k, distance_upper_bound=policy.max_range_km)
    # column 0 is the satellite itself (a self pair, possible only when two satellites share
    # a position, is dropped below); nb is idx.size where fewer than k are in range
    nb, dist = nb[:, 1:].ravel(), dist[:, 1:].ravel()
    valid = np.isfinite(dist)
    src, dst, d = np.repeat(rows, k - 1)[valid], idx[nb[valid]], dist[valid]
    both_free = free[dst] > 0
    src, dst, d = src[both_free], dst[both_free], d[both_free]
    lo, hi = np.minimum(src, dst), np.maximum(src, dst)
    key, first = np.unique(lo.astype(np.int64) * n + hi, return_index=True)
    lo, hi, d = lo[first], hi[first], d[first]
    ok = (lo != hi) & ~np.isin(key, kept_key, assume_unique=True)
    ok[ok] = grazing_altitude_km(ecef_km[lo[ok]], ecef_km[hi[ok]]) >= (
        policy.min_grazing_altitude_km
    )
    cand = np.nonzero(ok)[0]
    cand = cand[np.argsort(d[cand], kind="stable")]  # shortest first, ties by (a, b)
    taken, _ = _greedy_take(lo[cand], hi[cand], free)
    chosen = np.sort(np.concatenate([kept_key, key[cand[taken]]]))
    return (chosen // n).astype(np.int32), (chosen % n).astype(np.int32)


def _keep_links(
    ecef_km: FloatArray, policy: ISLPolicy, keep: tuple[Int32Array, Int32Array], free: Int64Array
) -> tuple[Int64Array, Int64Array]:
    """Rule 1 of :func:`nearest_isls`: the links kept (keys ``a * S + b``, sorted) and the
    free terminals left."""
    n = ecef_km.shape[0]
    a = np.minimum(keep[0], keep[1]).astype(np.int64)
    b = np.maximum(keep[0], keep[1]).astype(np.int64)
    kk = a[a != b] * n + b[a != b]
    if kk.size > 1 and not bool(np.all(kk[1:] > kk[:-1])):
        kk = np.unique(kk)
    a, b = kk // n, kk % n
    ok = isl_feasible(ecef_km, a.astype(np.int32), b.astype(np.int32), policy)[0]
    taken, free = _greedy_take(a[ok], b[ok], free)
    return kk[ok][taken], free


#: Below this many undecided pairs :func:`_greedy_take` finishes with a plain loop.
_GREEDY_LOOP_PAIRS = 512


def _greedy_take(
    u: npt.NDArray[np.integer], v: npt.NDArray[np.integer], free: Int64Array
) -> tuple[BoolArray, Int64Array]:
    """The sequential greedy over pairs: in the given order, take (u, v) when both ends
    have a free terminal, and use one at each end.

    Computed in rounds instead of pair by pair: a pair that is among the first ``free[x]``
    undecided pairs at each of its ends x is taken by the greedy whatever comes before it,
    so a round takes all such pairs at once, then drops the pairs with an end out of
    terminals. At least the first undecided pair is taken per round; taking a round's pairs
    ahead of time changes no other decision, because a pair that lies before one of them at
    a shared end sees a free terminal there in both orders. When few undecided pairs are
    left, or a round decides few (pairs that wait on each other in a chain), a plain loop
    over the rest finishes.

    Parameters
    ----------
    u, v : ndarray of int (M,)
        The ends of each pair (``u != v``), in the order of preference.
    free : ndarray of int64 (N,)
        Free terminals per node (not modified).

    Returns
    -------
    taken : ndarray of bool (M,)
    free : ndarray of int64 (N,)
        The free terminals left.
    """
    m = u.size
    use = np.bincount(u, minlength=free.size) + np.bincount(v, minlength=free.size)
    if bool(np.all(use <= free)):  # no end is short of terminals: every pair is taken
        return np.ones(m, bool), free - use
    free = free.copy()
    taken = np.zeros(m, bool)
    alive = np.ones(m, bool)
    # every pair's two ends (pair j's at 2j and 2j + 1), grouped by node by a stable sort,
    # so in preference order within a node; 16-bit ids get numpy's fast radix sort
    ends = np.column_stack([u, v]).ravel()
    inc = np.argsort(ends.astype(np.uint16) if free.size <= 1 << 16 else ends, kind="stable")
    node, pair = ends[inc], inc // 2
    while pair.size > 2 * _GREEDY_LOOP_PAIRS:
        i = np.arange(node.size)
        start = np.ones(node.size, bool)
        start[1:] = node[1:] != node[:-1]
        rank = i - np.maximum.accumulate(np.where(start, i, 0))
        within = rank < free[node]
        sure = np.bincount(pair[within], minlength=m) == 2
        taken |= sure
        free -= np.bincount(u[sure], minlength=free.size)
        free -= np.bincount(v[sure], minlength=free.size)
        alive &= ~sure & (free[u] > 0) & (free[v] > 0)
        left = alive[pair]
        before = pair.size
        node, pair = node[left], pair[left]
        if pair.size > before - before // 8:  # a chain of dependent pairs: loop instead
            break
    fl = free.tolist()
    rest = np.nonzero(alive)[0]
    for j, x, y in zip(rest.tolist(), u[rest].tolist(), v[rest].tolist(), strict=True):
        if fl[x] > 0 and fl[y] > 0:
            taken[j] = True
            fl[x] -= 1
            fl[y] -= 1
    return taken, np.array(fl, np.int64)
