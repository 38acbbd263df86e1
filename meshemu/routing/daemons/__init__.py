"""Daemon schemes (``kind = "daemon"``): routing run by daemons inside the nodes.

Not implemented yet; this is their place. A daemon scheme will not compute forwarding
tables: it renders a configuration per node from the node's interfaces and addresses,
starts a routing daemon (FRR's ospfd or isisd, BIRD) in each node's namespace and lets it
converge, as ipmininet's ``OSPF``/``Zebra`` classes do. The planner and the emulator tell
the two kinds apart with :func:`meshemu.routing.scheme_kind`: only ``"computed"`` schemes
have ``forwarding_tables``.

Like the rest of :mod:`meshemu.routing`, this package must stay pure: the code that starts
processes in the nodes belongs in :mod:`meshemu.live`, which imports from here, never the
other way round (see ``ARCHITECTURE.md`` and ``tests/unit/test_import_rule.py``).
"""
