"""meshemu: a laser inter-satellite mesh network emulator.

Data flows one way, one module per step::

    scenario -> constellation -> orbit -> geometry -> schedule (link state) -> routing
        -> plan (files) | emulator (Mininet nodes, shapers, routes) -> runner (clock)
        -> traffic (agents) -> measurements -> report (plots)

The public API is re-exported from :mod:`meshemu.api`.
"""

__version__ = "0.1.0"
