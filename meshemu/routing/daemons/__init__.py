"""Daemon schemes (``kind = "daemon"``): routing run by daemons inside the nodes.

A daemon scheme renders a configuration per node from the node's interfaces and addresses;
the emulator (:mod:`meshemu.live.daemons`) starts the daemons in the nodes' namespaces and
lets them converge. Built in: ``ospf`` and ``isis`` (FRR, :mod:`.frr`), ``bird-ospf`` (BIRD 2,
:mod:`.bird`); a researcher's own daemon subclasses :class:`DaemonScheme` (see the README).

Like the rest of :mod:`meshemu.routing`, this package is pure: it writes text and names
commands; the code that starts processes in the nodes is in :mod:`meshemu.live`.
"""

from meshemu.routing.daemons.base import (
    DETECT_MODES,
    METRICS,
    DaemonLink,
    DaemonNode,
    DaemonOptions,
    DaemonProcess,
    DaemonScheme,
)
from meshemu.routing.daemons.bird import BirdOSPF
from meshemu.routing.daemons.frr import FRRISIS, FRROSPF

__all__ = [
    "DETECT_MODES",
    "METRICS",
    "BirdOSPF",
    "DaemonLink",
    "DaemonNode",
    "DaemonOptions",
    "DaemonProcess",
    "DaemonScheme",
    "FRRISIS",
    "FRROSPF",
]
