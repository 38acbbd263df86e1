"""What an emulation needs from the machine: memory, open files, ptys; refused early.

The memory model (measured on Debian 12, kernel 6.x, per build phase: see
``benchmarks/bench_vs_mininet.py`` and ``benchmarks/bench_build.py``): a node costs
:data:`NODE_BYTES` (its namespace, the process holding it, a netlink socket: 322-370 KiB
measured at 1,594 and 4,418 nodes; a node's bash, about 220 KiB more, starts only when
something uses it), a link :data:`LINK_BYTES` (its interfaces, 4 veth ends for the userspace
shaper, and shaper state: 195-203 KiB measured), a route :data:`ROUTE_BYTES` (a kernel fib
entry). An emulation may plan to use at most :data:`MEMORY_HEADROOM` of ``MemAvailable``.

:func:`check_capacity` runs before planning (from node counts only),
:func:`check_memory` and :func:`reserve_descriptors` at build time with the exact figures.
"""

from __future__ import annotations

from meshemu.errors import ResourceError
from meshemu.linux.limits import FD_FLOOR, ensure_ptys, mem_available_bytes, raise_nofile_limit
from meshemu.live import addressing

NODE_BYTES = 400 * 1024
LINK_BYTES = 210 * 1024
ROUTE_BYTES = 300
#: Share of MemAvailable an emulation may plan to use.
MEMORY_HEADROOM = 0.85
#: Links assumed per satellite and per ground node by :func:`check_capacity` (a +Grid has
#: two ISLs per satellite; a ground node sees a few satellites over a run).
LINKS_PER_SAT = 2
LINKS_PER_GROUND = 4


def estimate_memory_bytes(n_nodes: int, n_links: int, n_routes: int) -> int:
    """Rough memory an emulation needs (see :data:`NODE_BYTES` and the others).

    Parameters
    ----------
    n_nodes, n_links, n_routes : int
        Nodes, links (every link of the run) and kernel routes (all nodes together).

    Returns
    -------
    int
        Bytes.
    """
    return n_nodes * NODE_BYTES + n_links * LINK_BYTES + n_routes * ROUTE_BYTES


def check_memory(n_nodes: int, n_links: int, n_routes: int) -> None:
    """Refuse an emulation that will not fit the available memory.

    Raises
    ------
    ResourceError
        :func:`estimate_memory_bytes` exceeds :data:`MEMORY_HEADROOM` of ``MemAvailable``.
    """
    need = estimate_memory_bytes(n_nodes, n_links, n_routes)
    avail = mem_available_bytes()
    if need > MEMORY_HEADROOM * avail:
        raise ResourceError(
            f"{n_nodes} nodes, {n_links} links and {n_routes} routes need about "
            f"{need / 2**30:.1f} GiB but only {avail / 2**30:.1f} GiB is available "
            f"(at most {MEMORY_HEADROOM:.0%} of it may be planned); use fewer satellites or "
            f"ground nodes, fewer destinations, or a machine with more memory"
        )


def check_capacity(n_nodes: int, n_sats: int, n_ground: int) -> None:
    """Refuse a scenario that cannot fit before spending time planning it.

    Checks the addressing limits and the memory, with the link count estimated as
    :data:`LINKS_PER_SAT` per satellite plus :data:`LINKS_PER_GROUND` per ground node and a
    route from every node to every node (the exact figures are checked again at build time).

    Parameters
    ----------
    n_nodes, n_sats, n_ground : int
        All nodes, satellites, ground nodes.

    Raises
    ------
    ResourceError
    """
    n_links = LINKS_PER_SAT * n_sats + LINKS_PER_GROUND * n_ground
    addressing.check_limits(n_nodes, n_links)
    check_memory(n_nodes, n_links, n_nodes * n_nodes)


def reserve_descriptors(n_nodes: int) -> None:
    """Raise the open-file limit and make sure there are ptys for ``n_nodes`` node shells
    (each node holds a netlink socket, and a pty master once its shell starts: shells start
    on first use, so they may all be started at any time of the run).

    Raises
    ------
    ResourceError
        The hard limits are too low.
    """
    raise_nofile_limit(FD_FLOOR + 2 * n_nodes + 1024)
    ensure_ptys(n_nodes)
