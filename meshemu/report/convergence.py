"""Convergence of a distributed routing protocol, from a run's files (issue 11).

A *topology event* is a step at which the set of links that are up changes (``links.csv``).
For each event at ``t_e``, until the next event (or the end of the run), the node FIBs of
``fib.csv`` are replayed in time order, and at every change the state is judged:

- a **loop**: following first next hops from some node toward an endpoint revisits a node;
- a **blackhole**: a node has no route (or a route through a link that is down) toward an
  endpoint it can reach over links that are up (through satellites only: ground nodes carry
  no transit traffic).

``convergence_s`` is the time from ``t_e`` to the last FIB change before the next event (0
when the FIBs did not change); ``converged`` says whether the state after it is free of
loops and blackholes; ``loop_s`` and ``blackhole_s`` are how long, within the window, at
least one loop / blackhole existed; ``stretch`` is the mean, over endpoint pairs with a
path, of the FIB path's hop count over the fewest hops possible at ``t_e`` (with the delay
metric: its propagation delay over the least possible).

Only the files are read: no scenario, no orbits.
"""

from __future__ import annotations

import csv
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meshemu.report.files import CONVERGENCE, SATELLITE_KINDS


@dataclass(frozen=True)
class Event:
    """One topology event and how the routing protocol handled it (see module docstring)."""

    t_s: float
    kind: str
    links_down: int
    links_up: int
    fib_changes: int
    convergence_s: float
    converged: bool
    loop_s: float
    blackhole_s: float
    stretch: float


def _topologies(
    links: list[dict[str, str]], ids: dict[str, int]
) -> tuple[
    list[tuple[float, set[tuple[int, int]], dict[tuple[int, int], str]]],
    dict[float, dict[tuple[int, int], float]],
]:
    """The links up at each time, their kinds, and their delays (ms) at each time."""
    by_t: dict[float, set[tuple[int, int]]] = defaultdict(set)
    kinds: dict[tuple[int, int], str] = {}
    delays: dict[float, dict[tuple[int, int], float]] = defaultdict(dict)
    for r in links:
        t = float(r["t_s"])
        by_t.setdefault(t, set())
        if r.get("up", "1") in ("1", "True", "true"):
            a, b = ids[r["a"]], ids[r["b"]]
            key = (min(a, b), max(a, b))
            by_t[t].add(key)
            kinds[key] = r.get("kind", "")
            try:
                delays[t][key] = float(r.get("delay_ms") or "nan")
            except ValueError:
                delays[t][key] = float("nan")
    return [(t, by_t[t], kinds) for t in sorted(by_t)], delays


def _delays_from(
    adj: dict[int, set[int]], src: int, transit: np.ndarray, w: dict[tuple[int, int], float]
) -> dict[int, float]:
    """Least total delay from ``src`` (Dijkstra; satellites only as transit)."""
    import heapq

    dist = {src: 0.0}
    heap = [(0.0, src)]
    done: set[int] = set()
    while heap:
        du, u = heapq.heappop(heap)
        if u in done:
            continue
        done.add(u)
        if u != src and not transit[u]:
            continue
        for v in adj.get(u, ()):
            dv = du + w.get((min(u, v), max(u, v)), float("inf"))
            if dv < dist.get(v, float("inf")):
                dist[v] = dv
                heapq.heappush(heap, (dv, v))
    return dist


def _hops_from(adj: dict[int, set[int]], src: int, transit: np.ndarray) -> dict[int, int]:
    dist = {src: 0}
    q = deque([src])
    while q:
        u = q.popleft()
        if u != src and not transit[u]:
            continue
        for v in adj.get(u, ()):
            if v not in dist:
                dist[v] = dist[u] + 1
                q.append(v)
    return dist


def _judge(
    state: dict[tuple[int, int], tuple[int, ...]],
    ends: Sequence[int],
    up: set[tuple[int, int]],
    reach: dict[int, dict[int, int]],
    n: int,
    w: dict[tuple[int, int], float] | None = None,
) -> tuple[bool, bool, list[float]]:
    """(any loop, any blackhole, FIB path length per (src endpoint, dst endpoint) pair or
    -1): in hops, or in total delay with link weights ``w``."""
    loop = hole = False
    hops: list[float] = []
    for d in ends:
        for s in range(n):
            if s == d:
                continue
            if d not in reach.get(s, {}):
                continue  # d is not reachable from s: no route is right
            u, seen, k = s, {s}, 0.0
            while u != d:
                nh = state.get((u, d), ())
                key = (min(u, nh[0]), max(u, nh[0])) if nh else (u, u)
                if not nh or key not in up:
                    hole = True
                    k = -1
                    break
                u = nh[0]
                k += w.get(key, float("nan")) if w is not None else 1
                if u in seen:
                    loop = True
                    k = -1
                    break
                seen.add(u)
            if s in ends:
                hops.append(k)
    return loop, hole, hops


def analyse(
    links: list[dict[str, str]],
    fib: list[dict[str, str]],
    nodes: list[dict[str, str]],
    endpoints: Sequence[str],
    end_s: float | None = None,
    metric: str = "hops",
) -> list[Event]:
    """Every topology event of a run and its convergence (rows of the run's CSV files).

    ``metric``: what the stretch compares, ``hops`` (against the fewest hops) or ``delay``
    (against the least propagation delay, ``links.csv``'s ``delay_ms`` at the event)."""
    names = [r["name"] for r in sorted(nodes, key=lambda r: int(r["id"]))]
    ids = {nm: i for i, nm in enumerate(names)}
    kinds = {r["name"]: r["kind"] for r in nodes}
    transit = np.array([kinds[nm] in SATELLITE_KINDS for nm in names])
    ends = [ids[e] for e in endpoints if e in ids]
    n = len(names)
    topo, link_delay = _topologies(links, ids)
    rows = [
        (
            float(r["t_s"]),
            ids[r["node"]],
            ids[r["dest"]],
            tuple(ids[x] for x in r["next_hops"].split("|") if x),
        )
        for r in fib
    ]
    changes = sorted(rows, key=lambda c: c[0])  # stable: rows of one time keep file order
    state: dict[tuple[int, int], tuple[int, ...]] = {}
    ci = 0
    events: list[Event] = []
    last_t = end_s if end_s is not None else (topo[-1][0] if topo else 0.0)
    for j in range(1, len(topo)):
        t_e, up, link_kind = topo[j]
        prev = topo[j - 1][1]
        down_l, up_l = prev - up, up - prev
        if not down_l and not up_l:
            continue
        t_next = next((t for t, u, _ in topo[j + 1 :] if u != up), last_t)
        while ci < len(changes) and changes[ci][0] < t_e:
            _, u, d, nh = changes[ci]
            state[(u, d)] = nh
            ci += 1
        adj: dict[int, set[int]] = defaultdict(set)
        for a, b in up:
            adj[a].add(b)
            adj[b].add(a)
        reach = {s: _hops_from(adj, s, transit) for s in range(n)}
        loop, hole, _ = _judge(state, ends, up, reach, n)
        t_prev, loop_s, hole_s, n_changes, t_last = t_e, 0.0, 0.0, 0, t_e
        while ci < len(changes) and changes[ci][0] < t_next:
            t, u, d, nh = changes[ci]
            state[(u, d)] = nh
            ci += 1
            n_changes += 1
            if ci < len(changes) and changes[ci][0] - t < 1e-3:
                continue  # a burst: judge once it is applied
            loop_s += (t - t_prev) if loop else 0.0
            hole_s += (t - t_prev) if hole else 0.0
            loop, hole, _ = _judge(state, ends, up, reach, n)
            t_prev, t_last = t, t
        loop_s += (t_next - t_prev) if loop else 0.0
        hole_s += (t_next - t_prev) if hole else 0.0
        if metric == "delay":
            w = link_delay.get(t_e, {})
            _, _, fib_hops = _judge(state, ends, up, reach, n, w)
            best_of = {s: _delays_from(adj, s, transit, w) for s in ends}
            best = [
                best_of[s].get(d, -1.0) if d in reach[s] else -1.0
                for d in ends
                for s in range(n)
                if s != d and s in ends
            ]
        else:
            _, _, fib_hops = _judge(state, ends, up, reach, n)
            best = [reach[s].get(d, -1) for d in ends for s in range(n) if s != d and s in ends]
        ratios = [f / b for f, b in zip(fib_hops, best) if f > 0 and b > 0]
        changed = {link_kind.get(k, "") for k in down_l | up_l}
        events.append(
            Event(
                t_e,
                changed.pop() if len(changed) == 1 else "mixed",
                len(down_l),
                len(up_l),
                n_changes,
                round(t_last - t_e, 6),
                not loop and not hole,
                round(loop_s, 6),
                round(hole_s, 6),
                round(float(np.mean(ratios)), 4) if ratios else float("nan"),
            )
        )
    return events


def write_events(path: Path, events: Sequence[Event]) -> Path:
    """``convergence.csv``."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CONVERGENCE.columns)
        for e in events:
            w.writerow([getattr(e, c) for c in CONVERGENCE.columns])
    return path


def summarize(events: Sequence[Event]) -> dict[str, Any]:
    """Convergence time p50/p99/max per event kind, and the loops and blackholes seen."""
    out: dict[str, Any] = {"events": len(events)}
    by_kind: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        by_kind[e.kind].append(e)
        by_kind["all"].append(e)
    for kind, evs in by_kind.items():
        c = np.array([e.convergence_s for e in evs])
        out[kind] = {
            "events": len(evs),
            "convergence_s_p50": float(np.percentile(c, 50)),
            "convergence_s_p99": float(np.percentile(c, 99)),
            "convergence_s_max": float(c.max()),
            "not_converged": sum(not e.converged for e in evs),
            "loop_s_total": float(sum(e.loop_s for e in evs)),
            "blackhole_s_total": float(sum(e.blackhole_s for e in evs)),
        }
    return out
