"""+Grid laser links from shell layouts (Walker shells and inferred catalogues alike).

Each satellite links to its two neighbours in its plane (slot order, a ring) and to one
partner in each adjacent plane:

- ``cross_plane_shift: k`` (Hypatia's ``isl_shift``, Kassing et al. 2020, and most papers):
  slot s of plane p links to slot (s + k) mod S of plane p + 1, with S the satellites of
  plane p + 1 (for planes of unequal size, the slots s < min(S_p, S_{p+1}));
- ``auto``: between planes of equal size, the shift k that makes the links shortest on
  average at t = 0 (it absorbs the Walker phasing F and, at the wrap from the last plane to
  the first, the phase offset of the seam); between planes of unequal size (partly filled
  real planes), the one-to-one pairing of least total length at t = 0 (the assignment
  problem, :func:`scipy.optimize.linear_sum_assignment`), pairs longer than the ISL range
  left out.

Seam pairs of planes (see :mod:`meshemu.geometry.shells`) are linked only with
``allow_seam``. Which candidate links are up at a step is decided by range and line of sight
(:func:`meshemu.geometry.visibility.isl_feasible`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from meshemu.geometry.arrays import BoolArray, FloatArray, Int32Array
from meshemu.geometry.shells import ShellLayout
from meshemu.geometry.visibility import distance_km


@dataclass(frozen=True, eq=False)
class GridLinks:
    """Candidate +Grid ISLs.

    Attributes
    ----------
    a, b : ndarray of int32
        Ends, ``a < b``, sorted by (a, b), no duplicates.
    cross : ndarray of bool
        True for cross-plane links.
    shell : ndarray of int32
        The shell (index into the layouts) of each link.
    """

    a: Int32Array
    b: Int32Array
    cross: BoolArray
    shell: Int32Array


def cross_pairs(
    src: Int32Array,
    dst: Int32Array,
    ecef0_km: FloatArray,
    shift: int | None,
    max_range_km: float,
) -> tuple[Int32Array, Int32Array]:
    """Partners in plane ``dst`` of the satellites of plane ``src`` (both in slot order)."""
    n_p, n_q = src.size, dst.size
    if n_p == 0 or n_q == 0:
        return src[:0], dst[:0]
    if shift is not None:
        m = min(n_p, n_q)
        return src[:m], dst[(np.arange(m) + shift) % n_q]
    if n_p == n_q:
        best, best_len = 0, np.inf
        for k in range(n_q):
            mean = float(np.nanmean(distance_km(ecef0_km[src], ecef0_km[np.roll(dst, -k)])))
            if mean < best_len:
                best, best_len = k, mean
        return src, np.roll(dst, -best)
    d = np.linalg.norm(ecef0_km[src][:, None, :] - ecef0_km[dst][None, :, :], axis=-1)
    cost = np.where(np.isfinite(d), d, 1e9)
    i, j = linear_sum_assignment(cost)
    ok = d[i, j] <= max_range_km
    return src[i[ok]], dst[j[ok]]


def plus_grid(
    layouts: Sequence[ShellLayout],
    ecef0_km: FloatArray,
    shift: int | None,
    allow_seam: bool,
    max_range_km: float,
) -> GridLinks:
    """Candidate +Grid ISLs of every shell (see the module docstring)."""
    a_l, b_l, c_l, s_l = [], [], [], []
    for k, lay in enumerate(layouts):
        for plane in lay.planes:
            if plane.size >= 2:
                a_l.append(plane)
                b_l.append(np.roll(plane, -1))
                c_l.append(np.zeros(plane.size, bool))
                s_l.append(np.full(plane.size, k, np.int32))
        for p, q, seam in lay.adjacent:
            if seam and not allow_seam:
                continue
            src, dst = cross_pairs(lay.planes[p], lay.planes[q], ecef0_km, shift, max_range_km)
            a_l.append(src)
            b_l.append(dst)
            c_l.append(np.ones(src.size, bool))
            s_l.append(np.full(src.size, k, np.int32))
    if not a_l:
        z = np.zeros(0, np.int32)
        return GridLinks(z, z, np.zeros(0, bool), z)
    a, b = np.concatenate(a_l), np.concatenate(b_l)
    cross, shell = np.concatenate(c_l), np.concatenate(s_l)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    keep = lo != hi
    n = int(hi.max(initial=0)) + 1
    key = lo[keep].astype(np.int64) * n + hi[keep]
    _, first = np.unique(key, return_index=True)
    return GridLinks(
        lo[keep][first].astype(np.int32),
        hi[keep][first].astype(np.int32),
        cross[keep][first],
        shell[keep][first].astype(np.int32),
    )
