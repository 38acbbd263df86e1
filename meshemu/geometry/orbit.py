"""Orbit propagation: SGP4 (vectorized) in TEME, rotated to Earth-fixed, and geodetic conversions.

References
----------
Vallado, Crawford, Hujsak & Kelso (2006), "Revisiting Spacetrack Report #3", AIAA 2006-6753:
SGP4 and the TEME frame; TEME -> pseudo Earth-fixed is a rotation by GMST (IAU-82,
Vallado 2013, "Fundamentals of Astrodynamics", eq. 3-47). Polar motion (< 20 m) is ignored.
WGS-84 geodetic conversions: Bowring (1976), Survey Review 23(181).
"""

from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import numpy.typing as npt
from sgp4.api import Satrec, SatrecArray, jday

from meshemu.geometry.arrays import FloatArray

log = logging.getLogger(__name__)

WGS84_A_KM = 6378.137
WGS84_F = 1.0 / 298.257223563
WGS84_E2 = WGS84_F * (2.0 - WGS84_F)


def julian_date(epoch: dt.datetime, t_s: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Split Julian dates (whole part, fraction) of ``epoch + t_s`` (UTC, taken as UT1)."""
    e = epoch.astimezone(dt.UTC)
    jd0, fr0 = jday(e.year, e.month, e.day, e.hour, e.minute, e.second + e.microsecond * 1e-6)
    fr: FloatArray = fr0 + np.asarray(t_s, dtype=np.float64) / 86400.0
    whole = np.floor(fr)
    return jd0 + whole, fr - whole


def gmst_rad(jd: FloatArray, fr: FloatArray) -> FloatArray:
    """Greenwich mean sidereal time (IAU-82), radians, for split Julian dates (UT1)."""
    t = ((jd - 2451545.0) + fr) / 36525.0
    sec = 67310.54841 + (876600.0 * 3600.0 + 8640184.812866) * t + 0.093104 * t**2 - 6.2e-6 * t**3
    theta: FloatArray = np.mod(np.deg2rad(np.mod(sec, 86400.0) / 240.0), 2.0 * np.pi)
    return theta


def teme_to_ecef(r_teme_km: FloatArray, jd: FloatArray, fr: FloatArray) -> FloatArray:
    """Rotate TEME positions (..., T, 3) to Earth-fixed by GMST at each of the T times."""
    th = gmst_rad(jd, fr)
    c, s = np.cos(th), np.sin(th)
    x, y, z = r_teme_km[..., 0], r_teme_km[..., 1], r_teme_km[..., 2]
    return np.stack([c * x + s * y, -s * x + c * y, z], axis=-1)


def propagate_ecef_km(
    satrecs: list[Satrec] | SatrecArray, epoch: dt.datetime, t_s: npt.ArrayLike
) -> FloatArray:
    """Earth-fixed positions of every satellite at every time.

    Parameters
    ----------
    satrecs : list of sgp4.api.Satrec, or an sgp4.api.SatrecArray of them
        (making the array copies every record: a caller that propagates the same satellites
        again and again makes it once)
    epoch : datetime
        t = 0.
    t_s : ndarray (T,)
        Seconds since ``epoch``.

    Returns
    -------
    ndarray (S, T, 3), km
        NaN where SGP4 failed for a satellite (decayed, eccentricity out of range); such
        satellites are logged once and carry no links.
    """
    t = np.atleast_1d(np.asarray(t_s, dtype=np.float64))
    jd, fr = julian_date(epoch, t)
    if len(satrecs) == 0:
        return np.zeros((0, t.size, 3))
    arr = satrecs if isinstance(satrecs, SatrecArray) else SatrecArray(satrecs)
    err, r, _v = arr.sgp4(jd, fr)
    bad = err != 0
    if bad.any():
        sats = np.unique(np.nonzero(bad)[0])
        log.warning(
            "SGP4 failed for %d satellite(s) (first: #%d, error code %d); they carry "
            "no links while failed",
            sats.size,
            sats[0],
            err[bad][0],
        )
        r = np.where(bad[..., None], np.nan, r)
    return teme_to_ecef(r, jd, fr)


def geodetic_to_ecef_km(
    lat_deg: npt.ArrayLike, lon_deg: npt.ArrayLike, alt_m: npt.ArrayLike
) -> FloatArray:
    """WGS-84 geodetic coordinates to Earth-fixed km, shape (..., 3)."""
    lat = np.deg2rad(np.asarray(lat_deg, dtype=np.float64))
    lon = np.deg2rad(np.asarray(lon_deg, dtype=np.float64))
    h = np.asarray(alt_m, dtype=np.float64) / 1000.0
    n = WGS84_A_KM / np.sqrt(1.0 - WGS84_E2 * np.sin(lat) ** 2)
    return np.stack(
        [
            (n + h) * np.cos(lat) * np.cos(lon),
            (n + h) * np.cos(lat) * np.sin(lon),
            (n * (1.0 - WGS84_E2) + h) * np.sin(lat),
        ],
        axis=-1,
    )


def ecef_to_geodetic(r_km: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Earth-fixed km (..., 3) to WGS-84 (lat_deg, lon_deg, alt_km), Bowring's method."""
    x, y, z = r_km[..., 0], r_km[..., 1], r_km[..., 2]
    b = WGS84_A_KM * (1.0 - WGS84_F)
    ep2 = (WGS84_A_KM**2 - b**2) / b**2
    p = np.hypot(x, y)
    th = np.arctan2(z * WGS84_A_KM, p * b)
    lat = np.arctan2(z + ep2 * b * np.sin(th) ** 3, p - WGS84_E2 * WGS84_A_KM * np.cos(th) ** 3)
    n = WGS84_A_KM / np.sqrt(1.0 - WGS84_E2 * np.sin(lat) ** 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        alt = np.where(np.abs(np.cos(lat)) > 1e-9, p / np.cos(lat) - n, np.abs(z) - b)
    return np.rad2deg(lat), np.rad2deg(np.arctan2(y, x)), alt


def up_vector(lat_deg: npt.ArrayLike, lon_deg: npt.ArrayLike) -> FloatArray:
    """Unit normal to the WGS-84 ellipsoid (local 'up'), shape (..., 3)."""
    lat = np.deg2rad(np.asarray(lat_deg, dtype=np.float64))
    lon = np.deg2rad(np.asarray(lon_deg, dtype=np.float64))
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=-1)
