"""Pure geometry: constellation -> orbits -> visibility -> link schedule -> snapshots."""
