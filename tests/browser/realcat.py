"""The real Starlink catalogue of the shared test data (``../shared/data``, beside the
project, never copied into it) as a scenario the view's test and benchmark plan: the
shipped ``starlink-real`` scenario's ISLs and GSLs over the shared snapshot instead of a
fetched group, with three ground stations."""

from __future__ import annotations

from pathlib import Path

#: The shared snapshot (about 10,000 Starlink satellites; 8,817 above 400 km on shells).
REAL_TLE = (
    Path(__file__).resolve().parents[2].parent / "shared" / "data" / "starlink-2026-05-21.tle"
)

SCENARIO = """\
name: starlink-real-shared
description: The shared Starlink catalogue snapshot; +Grid on inferred planes.
constellation:
  tle_files:
    - file: {tle}
      shells: auto
      min_altitude_km: 400
isl:
  pattern: plus-grid
  cross_plane_shift: auto
  max_range_km: 5016
  min_grazing_altitude_km: 80
  terminals: 4
  acquisition_s: 5
  rate_mbps: 10000
gsl:
  min_elevation_deg: 25
  links_per_station: all
  handover: nearest
  rate_mbps: 1000
ground:
  - {{name: london, lat_deg: 51.51, lon_deg: -0.13}}
  - {{name: new_york, lat_deg: 40.71, lon_deg: -74.01}}
  - {{name: tokyo, lat_deg: 35.68, lon_deg: 139.69}}
"""


def write_scenario(directory: Path, tle: Path = REAL_TLE) -> Path:
    """``directory/starlink-real-shared.yaml`` pointing at ``tle`` (which must exist)."""
    if not tle.is_file():
        raise FileNotFoundError(f"{tle} is not present (the shared data: ../shared/data)")
    path = Path(directory) / "starlink-real-shared.yaml"
    path.write_text(SCENARIO.format(tle=tle))
    return path
