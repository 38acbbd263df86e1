"""``nearest_isls`` against a plain-Python reference written from its docstring's rules.

The reference brute-forces the k nearest satellites (no k-d tree), tests line of sight with
a different formula (distance from the Earth's centre to the segment: ``|P x Q| / |Q - P|``
when the foot of the perpendicular lies inside it, else the nearer end) and runs both
greedy passes pair by pair.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from meshemu.geometry.visibility import _greedy_take, nearest_isls
from meshemu.spec.scenario import ISLPolicy

R_EARTH_KM = 6371.0

Pair = tuple[int, int]


def _lowest_altitude_km(p: list[float], q: list[float]) -> float:
    d = [q[i] - p[i] for i in range(3)]
    dd = sum(x * x for x in d)
    if dd == 0 or sum(p[i] * d[i] for i in range(3)) >= 0:  # moving away from the centre
        return math.hypot(*p) - R_EARTH_KM
    if sum(q[i] * d[i] for i in range(3)) <= 0:  # still approaching at Q
        return math.hypot(*q) - R_EARTH_KM
    cross = (p[1] * q[2] - p[2] * q[1], p[2] * q[0] - p[0] * q[2], p[0] * q[1] - p[1] * q[0])
    return math.hypot(*cross) / math.sqrt(dd) - R_EARTH_KM


def reference(pos: list[list[float]], policy: ISLPolicy, keep: list[Pair], k: int) -> list[Pair]:
    """The docstring's rules, pair by pair."""
    n = len(pos)
    good = [i for i in range(n) if all(math.isfinite(x) for x in pos[i])]
    good_set = set(good)

    def sees(u: int, v: int) -> bool:
        return _lowest_altitude_km(pos[u], pos[v]) >= policy.min_grazing_altitude_km

    def feasible(u: int, v: int) -> bool:
        if u not in good_set or v not in good_set:
            return False
        return math.dist(pos[u], pos[v]) <= policy.max_range_km and sees(u, v)

    free = [policy.terminals] * n
    chosen: list[Pair] = []
    if policy.terminals == 0 or len(good) < 2:
        return []
    # rule 1: kept links in (a, b) order while feasible and both ends have a terminal
    for u, v in sorted({(min(x, y), max(x, y)) for x, y in keep if x != y}):
        if feasible(u, v) and free[u] > 0 and free[v] > 0:
            chosen.append((u, v))
            free[u] -= 1
            free[v] -= 1
    kept = set(chosen)
    # rule 2: the k nearest others within range, as unordered pairs, with line of sight
    cand: dict[Pair, float] = {}
    for u in good:
        others = sorted((math.dist(pos[u], pos[v]), v) for v in good if v != u)
        for dist, v in others[:k]:
            if dist <= policy.max_range_km and sees(u, v):
                cand[(min(u, v), max(u, v))] = dist
    # rule 3: shortest first, ties by (a, b)
    for (u, v), _ in sorted(cand.items(), key=lambda kv: (kv[1], kv[0])):
        if (u, v) not in kept and free[u] > 0 and free[v] > 0:
            chosen.append((u, v))
            free[u] -= 1
            free[v] -= 1
    return sorted(chosen)


def shell_positions(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random satellites between 500 and 1,300 km altitude."""
    v = rng.normal(size=(n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v * (R_EARTH_KM + rng.uniform(500.0, 1300.0, size=(n, 1)))


def pairs(a: np.ndarray, b: np.ndarray) -> list[Pair]:
    assert a.dtype == np.int32 and b.dtype == np.int32
    return list(zip(a.tolist(), b.tolist(), strict=True))


def as_arrays(p: list[Pair]) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.array([x for x, _ in p], np.int32).reshape(-1),
        np.array([y for _, y in p], np.int32).reshape(-1),
    )


@pytest.mark.parametrize(
    ("seed", "n", "terminals", "max_range_km", "k"),
    [
        (1, 300, 4, 5000.0, 12),  # line of sight bites on the long pairs
        (2, 300, 2, 3000.0, 12),
        (3, 200, 1, 8000.0, 12),
        (4, 250, 3, 4000.0, 3),  # few candidates: the k-nearest rule bites
        (5, 40, 6, 20000.0, 39),  # every pair a candidate
    ],
)
def test_matches_reference_without_keep(seed, n, terminals, max_range_km, k):
    rng = np.random.default_rng(seed)
    pos = shell_positions(rng, n)
    pol = ISLPolicy(pattern="nearest", max_range_km=max_range_km, terminals=terminals)
    got = pairs(*nearest_isls(pos, pol, k_candidates=k))
    want = reference(pos.tolist(), pol, [], k)
    assert got == want
    assert len(want) > 0
    deg = np.bincount(np.array(want).ravel(), minlength=n)
    assert deg.max() <= terminals


def test_matches_reference_with_a_kept_set():
    rng = np.random.default_rng(7)
    n = 300
    pos = shell_positions(rng, n)
    pos[17] = np.nan  # a satellite whose propagation failed
    pol = ISLPolicy(pattern="nearest", max_range_km=4000.0, terminals=3)
    dist = np.linalg.norm(pos[:, None] - pos[None, :], axis=-1)
    far = [(int(a), int(b)) for a, b in zip(*np.nonzero(dist > 4000.0), strict=True)][:20]
    near = [(int(a), int(b)) for a, b in zip(*np.nonzero(dist < 2500.0), strict=True) if a < b]
    py = random.Random(7)
    keep = py.sample(near, 400) + far  # out of range: not kept
    keep += [(0, j) for j in range(1, 9)]  # more than satellite 0's 3 terminals (if feasible)
    keep += [(17, 3), (5, 5), (9, 4), (4, 9)]  # NaN end, self pair, reversed pair, repeat
    got = pairs(*nearest_isls(pos, pol, keep=as_arrays(keep)))
    want = reference(pos.tolist(), pol, keep, 12)
    assert got == want
    assert not any(17 in p for p in want)
    kept = set(want) & {(min(a, b), max(a, b)) for a, b in keep}
    assert len(kept) > 100  # rule 1 decided much of the result


def test_matches_reference_over_moving_steps():
    """The schedule's use: each step keeps the previous step's links."""
    rng = np.random.default_rng(11)
    pos = shell_positions(rng, 250)
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    pol = ISLPolicy(pattern="nearest", max_range_km=3500.0, terminals=4)
    prev: list[Pair] = []
    changed = 0
    for step in range(6):
        # rotate half the satellites one way and half the other, so links break
        ang = 0.02 * step
        rot = _rotation(axis, ang)
        moved = pos.copy()
        moved[::2] = pos[::2] @ rot.T
        moved[1::2] = pos[1::2] @ rot
        got = pairs(*nearest_isls(moved, pol, keep=as_arrays(prev)))
        want = reference(moved.tolist(), pol, prev, 12)
        assert got == want
        changed += len(set(want) ^ set(prev)) if step else 0
        prev = want
    assert changed > 0


def test_no_links_without_terminals_or_satellites():
    pos = shell_positions(np.random.default_rng(0), 20)
    none = nearest_isls(pos, ISLPolicy(pattern="nearest", terminals=0))
    assert none[0].size == 0 and none[1].size == 0
    one = nearest_isls(pos[:1], ISLPolicy(pattern="nearest"))
    assert one[0].dtype == np.int32 and one[0].size == 0
    # every terminal taken by a kept link: nothing left to pair (no k-d tree rows queried)
    tri = np.array([[7000.0, 0, 0], [7000, 100, 0], [7000, 0, 100]])
    pol = ISLPolicy(pattern="nearest", terminals=2)
    full = nearest_isls(tri, pol)
    assert pairs(*full) == [(0, 1), (0, 2), (1, 2)]
    assert pairs(*nearest_isls(tri, pol, keep=full)) == [(0, 1), (0, 2), (1, 2)]


def _rotation(axis: np.ndarray, ang: float) -> np.ndarray:
    x, y, z = axis
    c, s = math.cos(ang), math.sin(ang)
    k = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return np.eye(3) * c + s * k + (1 - c) * np.outer(axis, axis)


def _greedy_loop(u: list[int], v: list[int], free: list[int]) -> list[bool]:
    free = list(free)
    taken = []
    for x, y in zip(u, v, strict=True):
        ok = free[x] > 0 and free[y] > 0
        if ok:
            free[x] -= 1
            free[y] -= 1
        taken.append(ok)
    return taken


@pytest.mark.parametrize("seed", range(6))
def test_greedy_rounds_match_the_plain_loop(seed):
    """The vectorised rounds of the greedy on random pairs and on a chain of pairs that
    each wait on the previous one (the slow case for rounds)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 3000))
    m = int(rng.integers(2000, 20000))
    u = rng.integers(0, n, m)
    v = (u + rng.integers(1, n, m)) % n
    free = rng.integers(0, 5, n)
    taken, left = _greedy_take(u, v, free.astype(np.int64))
    want = _greedy_loop(u.tolist(), v.tolist(), free.tolist())
    assert taken.tolist() == want
    use = np.bincount(u[taken], minlength=n) + np.bincount(v[taken], minlength=n)
    assert left.tolist() == (free - use).tolist()
    # a path 0-1-2-... in order, one terminal each: every other pair is taken
    chain = np.arange(5000)
    taken, _ = _greedy_take(chain, chain + 1, np.ones(5001, np.int64))
    assert taken.tolist() == [j % 2 == 0 for j in range(5000)]
