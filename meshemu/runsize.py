"""Whether a scenario can be emulated at all, told from its counts before anything is built.

``meshemu run`` makes every satellite, ground station and compute node a Linux network
namespace with its own routes, so its cost grows with the nodes (and the routes, with their
square); ``meshemu plan`` needs none of that. :func:`check_emulable` is called by
``meshemu run`` and :func:`meshemu.api.run_emulation` first, before the root check, the
constellation or the schedule: a million-satellite scenario is refused in milliseconds with
what it would need, instead of after minutes of building SGP4 records.

The figures are those of :mod:`meshemu.live.resources` (bytes per node, link and route,
the share of ``MemAvailable`` a run may plan) and :mod:`meshemu.live.addressing` (one /32
per node, one /31 per link); the checks at plan and build time stay as they were, with the
exact link counts.
"""

from __future__ import annotations

import math

from meshemu.errors import ResourceError
from meshemu.linux.limits import mem_available_bytes
from meshemu.live import addressing, resources
from meshemu.spec.scenario import Scenario


def scenario_counts(scenario: Scenario) -> tuple[int, int]:
    """Satellites and ground nodes of a scenario, from its file alone (TLE files count
    every element set they hold, an upper bound of what takes part)."""
    sats = sum(s.n_sats for s in scenario.shells)
    for src in scenario.tle_sources:
        sats += len(src.records)
    return sats, len(scenario.ground)


def check_emulable(scenario: Scenario, mem_available: int | None = None) -> None:
    """Refuse a scenario that ``meshemu run`` could not build, saying what it would need.

    Parameters
    ----------
    scenario : Scenario
    mem_available : int, optional
        Bytes available (default: ``MemAvailable`` of this machine).

    Raises
    ------
    ResourceError
        More nodes than the addressing plan holds, or more memory than this machine has;
        the message names the size, what an emulation of it would need and what would fit.
    """
    sats, ground = scenario_counts(scenario)
    nodes = sats + ground
    links = resources.LINKS_PER_SAT * sats + resources.LINKS_PER_GROUND * ground
    need = resources.estimate_memory_bytes(nodes, links, nodes * nodes)
    avail = mem_available_bytes() if mem_available is None else mem_available
    budget = resources.MEMORY_HEADROOM * avail
    if nodes <= addressing.MAX_NODES and need <= budget:
        return
    fit = min(addressing.MAX_NODES, _nodes_that_fit(budget, ground))
    reasons = []
    if nodes > addressing.MAX_NODES:
        reasons.append(
            f"the addressing plan holds at most {addressing.MAX_NODES:,} nodes (one /32 each "
            f"in {addressing.NODE_NET})"
        )
    if need > budget:
        reasons.append(
            f"it would need about {_size(need)} of memory (a network namespace with its holder and "
            f"interfaces per node, {resources.LINKS_PER_SAT} links per satellite, a route "
            f"from every node to every node: {nodes:,}^2 routes) and this machine has "
            f"{_size(avail)} available, of which a run may plan {resources.MEMORY_HEADROOM:.0%}"
        )
    raise ResourceError(
        f"scenario {scenario.name} has {sats:,} satellites and {ground:,} ground nodes "
        f"({nodes:,} nodes): too large for `meshemu run`, which emulates every node as a "
        f"Linux network namespace: {'; and '.join(reasons)}. On this machine an emulation "
        f"fits up to about {max(fit - ground, 0):,} satellites with these {ground:,} ground "
        f"nodes. Plan it instead, which needs no emulation: meshemu plan {scenario.name}"
    )


def _nodes_that_fit(budget: float, ground: int) -> int:
    """The most nodes whose estimated memory (:func:`~meshemu.live.resources.
    estimate_memory_bytes`, quadratic in the nodes through the routes) stays in ``budget``."""
    # route * n^2 + (node + 2 link) * n + (4 - 2) link * ground <= budget
    a = resources.ROUTE_BYTES
    b = resources.NODE_BYTES + resources.LINKS_PER_SAT * resources.LINK_BYTES
    c = (resources.LINKS_PER_GROUND - resources.LINKS_PER_SAT) * resources.LINK_BYTES * ground
    disc = b * b + 4 * a * max(budget - c, 0.0)
    return max(0, int((-b + math.sqrt(disc)) / (2 * a)))


def _size(n: float) -> str:
    return f"{n / 2**40:,.1f} TiB" if n >= 2**40 else f"{n / 2**30:,.1f} GiB"
