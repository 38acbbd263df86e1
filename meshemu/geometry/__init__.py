"""Pure geometry: constellation -> orbits -> visibility -> link schedule -> snapshots.

- :mod:`~meshemu.geometry.constellation`: Walker shells and TLE files as SGP4 records, nodes;
- :mod:`~meshemu.geometry.orbit`: SGP4 propagation, TEME -> Earth-fixed, geodetic conversions;
- :mod:`~meshemu.geometry.visibility`: line of sight, range, elevation, ISL candidates;
- :mod:`~meshemu.geometry.schedule`: :class:`~meshemu.geometry.schedule.LinkSchedule`, the
  link policies over time (terminals, handover, acquisition);
- :mod:`~meshemu.geometry.linkstate`: :class:`~meshemu.geometry.linkstate.Snapshot`, the
  value every later stage consumes, and :func:`~meshemu.geometry.linkstate.diff`;
- :mod:`~meshemu.geometry.arrays`: the numpy array types used in signatures.
"""
