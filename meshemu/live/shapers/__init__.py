"""Link shapers: give each emulated link its delay, capacity, queue, loss and up/down state.

One narrow interface, :class:`LinkShaper` (:mod:`.base`), one module per implementation,
and a registry, :data:`SHAPERS`:

``netem`` (:mod:`.netem`)
    A veth pair straight between the two nodes and a ``netem`` root qdisc on each end, set
    and changed in place over rtnetlink. Needs a kernel with ``sch_netem``; see
    :func:`netem_available`.
``userspace`` (:mod:`.userspace`)
    Each link goes through a delay-line process (:mod:`meshemu.live.delayline`; compiled in
    ``meshemu/live/dlc/`` when built, else the Python reference) in a namespace of the
    shaper's own, ``meshemu-<run_id>-dl``. Works on any kernel. Its ``guard()`` reports how
    late frames left and what the workers dropped because they could not keep up.

:func:`make_shaper` picks one by name (``auto``: netem when available, else userspace) and
:func:`cleanup_leftovers` removes what a crashed run left behind. A test double that needs no
root lives with the tests (``tests/doubles.py``), not here.
"""

from __future__ import annotations

import logging
import os

from meshemu.errors import CommandError, ShaperError, choices_message
from meshemu.linux import commands, procs
from meshemu.linux.commands import batch_text
from meshemu.live.shapers.base import (
    DL_SUFFIX,
    IFNAME_MAX,
    NS_PREFIX,
    WORKER_LINK,
    GuardRecord,
    LinkEnds,
    LinkParams,
    LinkShaper,
    veth_cmd,
)
from meshemu.live.shapers.netem import (
    NETEM_BDP_PACKET_BYTES,
    NETEM_UNLIMITED_PPS,
    NetemShaper,
    netem_args,
    netem_change_cmds,
    netem_create_cmds,
    netem_limit,
    netem_qdisc_cmd,
    netem_qdisc_msg,
    parse_netem_stats,
    qdisc_stats,
)
from meshemu.live.shapers.userspace import (
    CONTROL_TIMEOUT_S,
    DELAYLINE_ENV,
    UserspaceShaper,
    delayline_argv,
    delayline_binary,
    delayline_netns_run,
    delayline_procs,
    gso_max_segs,
    resolve_delayline,
    userspace_create_cmds,
)

__all__ = [
    "CONTROL_TIMEOUT_S",
    "DELAYLINE_ENV",
    "DL_SUFFIX",
    "IFNAME_MAX",
    "NETEM_BDP_PACKET_BYTES",
    "NETEM_UNLIMITED_PPS",
    "NS_PREFIX",
    "SHAPERS",
    "GuardRecord",
    "WORKER_LINK",
    "LinkEnds",
    "LinkParams",
    "LinkShaper",
    "NetemShaper",
    "UserspaceShaper",
    "batch_text",
    "cleanup_leftovers",
    "delayline_argv",
    "delayline_binary",
    "gso_max_segs",
    "make_shaper",
    "netem_args",
    "netem_available",
    "netem_change_cmds",
    "netem_create_cmds",
    "netem_limit",
    "netem_qdisc_cmd",
    "netem_qdisc_msg",
    "parse_netem_stats",
    "qdisc_stats",
    "resolve_delayline",
    "userspace_create_cmds",
    "veth_cmd",
]

log = logging.getLogger(__name__)

#: The shapers by name (``make_shaper`` also takes ``auto``).
SHAPERS: dict[str, type[LinkShaper]] = {
    "netem": NetemShaper,
    "userspace": UserspaceShaper,
}


def netem_available() -> bool:
    """True when this kernel can run ``tc qdisc add ... netem``.

    Probes in a throw-away network namespace (``unshare -n``) that vanishes with the probe
    process, so nothing can leak even if the probe is killed. False without root.
    """
    if os.geteuid() != 0:
        return False
    script = (
        "ip link add mxprobe0 type veth peer name mxprobe1 && "
        "tc qdisc add dev mxprobe0 root handle 1: netem delay 1ms"
    )
    try:
        p = commands.run(["unshare", "-n", "sh", "-c", script], check=False, timeout_s=20)
    except CommandError:  # no unshare, or it hung
        return False
    if p.returncode != 0:
        log.debug("netem probe failed: %s", p.stderr.strip())
    return p.returncode == 0


def make_shaper(name: str, run_id: str, **options: object) -> LinkShaper:
    """Make a link shaper by name.

    Parameters
    ----------
    name : str
        ``auto`` (netem if the kernel has it, else userspace), or a key of :data:`SHAPERS`.
    run_id : str
        Names what the shaper creates (``meshemu-<run_id>-dl``).
    **options
        Passed to the shaper class (e.g. ``workers=2`` for userspace).

    Raises
    ------
    ShaperError
        Unknown name, or ``netem`` on a kernel without netem.
    """
    if name == "auto":
        name = "netem" if netem_available() else "userspace"
        log.info(
            "shaper auto: using %s (kernel netem %s)",
            name,
            "available" if name == "netem" else "not available",
        )
    elif name not in SHAPERS:
        raise ShaperError(choices_message("shaper", name, ["auto", *SHAPERS]))
    elif name == "netem" and not netem_available():
        raise ShaperError(
            "shaper 'netem' needs the kernel's sch_netem qdisc, which this kernel "
            "does not have (tc: 'Specified qdisc kind is unknown'); use "
            "--shaper userspace (or auto)"
        )
    cls = SHAPERS[name]
    import inspect

    accepted = inspect.signature(cls).parameters
    ignored = sorted(k for k in options if k not in accepted)
    if ignored:  # e.g. workers= for netem, which has none
        log.info("shaper %s ignores %s", name, ", ".join(ignored))
    return cls(run_id, **{k: v for k, v in options.items() if k in accepted})


def cleanup_leftovers(run_id: str | None = None) -> list[str]:
    """Remove delay-line processes and shaper namespaces left behind by crashed runs.

    Parameters
    ----------
    run_id : str, optional
        Only this run's leftovers, live or not. Without it: every orphaned delay line
        (its parent is gone) and every ``meshemu-*-dl`` namespace with no live delay line,
        so runs in progress are not disturbed.

    Returns
    -------
    list of str
        What was removed, e.g. ``["process 4242 (delay line of run ab12cd)",
        "netns meshemu-ab12cd-dl"]``.

    Raises
    ------
    CommandError
        A namespace could not be deleted.
    """
    victims = {
        pid: run
        for pid, ppid, run in delayline_procs()
        if ((run == run_id) if run_id is not None else ppid == 1)
    }
    removed = [
        f"process {pid} (delay line of run {victims[pid]})" for pid in procs.kill_and_wait(victims)
    ]
    live_runs = {run for _, _, run in delayline_procs()}
    try:
        names = os.listdir("/run/netns")
    except FileNotFoundError:
        names = []
    for ns in sorted(names):
        run = delayline_netns_run(ns)
        if (
            run is None
            or (run_id is not None and run != run_id)
            or (run_id is None and run in live_runs)
        ):
            continue
        p = commands.run(["ip", "netns", "del", ns], check=False)
        if p.returncode == 0:
            removed.append(f"netns {ns}")
        elif os.path.exists(f"/run/netns/{ns}"):
            raise CommandError(["ip", "netns", "del", ns], p.returncode, p.stderr)
    for item in removed:
        log.info("removed leftover %s", item)
    return removed
