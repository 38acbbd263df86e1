"""Random satellite meshes for the routing tests (a helper module, not a test file)."""

from __future__ import annotations

import numpy as np


def random_mesh_edges(rng: np.random.Generator, n_sat: int, n_ground: int) -> list[tuple[int, int]]:
    """A connected mesh of ``n_sat`` satellites (a chain plus random links, 2 per satellite
    on average) with each of ``n_ground`` ground nodes (ids after the satellites) hanging off
    two satellites; sorted edges."""
    edges = {(i, i + 1) for i in range(n_sat - 1)}
    while len(edges) < 2 * n_sat:
        a, b = sorted(rng.choice(n_sat, 2, replace=False).tolist())
        edges.add((a, b))
    for g in range(n_ground):
        for s in rng.choice(n_sat, 2, replace=False).tolist():
            edges.add((s, n_sat + g))
    return sorted(edges)
