"""UTC-aligned scheduling slots: when a slotted GSL scheduler may change assignments.

Starlink assigns satellites to ground terminals in 15 s slots, synchronised worldwide, that
start at seconds 12, 27, 42 and 57 of each UTC minute (Tanveer et al., "Making Sense of
Constellations", CoNEXT Companion 2023; Pan, Zhao and Cai, ICC 2024; Mohan et al., WWW
2024). A :class:`SlotClock` maps plan time ``t`` (seconds after the scenario epoch) to the
slot it falls in: slot ``k`` covers the UTC instants ``u`` (POSIX seconds) with
``k = floor((u - offset_s) / slot_s)``. As 60 is a multiple of 15, counting from the POSIX
epoch puts the boundaries on the same seconds of every minute.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from meshemu.geometry.arrays import FloatArray, Int64Array

#: Times closer to a boundary than this count as on it (float rounding of epoch + t).
BOUNDARY_TOLERANCE_S = 1e-6


@dataclass(frozen=True)
class SlotClock:
    """Slots of ``slot_s`` seconds whose boundaries fall ``offset_s`` seconds (modulo
    ``slot_s``) after a UTC minute, seen from a plan that starts at ``epoch``.

    Attributes
    ----------
    epoch : datetime
        t = 0 of the plan (timezone-aware, UTC).
    slot_s, offset_s : float
    """

    epoch: dt.datetime
    slot_s: float
    offset_s: float

    @property
    def _epoch_posix_s(self) -> float:
        return self.epoch.timestamp()

    @property
    def phase_s(self) -> float:
        """Plan time of the first boundary at or after t = 0 (in ``[0, slot_s)``)."""
        x = (self.offset_s - self._epoch_posix_s) % self.slot_s
        return 0.0 if x > self.slot_s - BOUNDARY_TOLERANCE_S else x

    def slot_index(self, t_s: npt.ArrayLike) -> Int64Array:
        """The slot each plan time falls in (a boundary belongs to the slot it starts)."""
        t = np.asarray(t_s, dtype=np.float64)
        k: Int64Array = np.floor((t - self.phase_s) / self.slot_s + 1e-9).astype(np.int64)
        return k

    def slot_start(self, k: int) -> float:
        """Plan time at which slot ``k`` starts."""
        return self.phase_s + k * self.slot_s

    def boundaries(self, t0_s: float, t1_s: float) -> FloatArray:
        """Plan times of the boundaries in ``[t0_s, t1_s]``."""
        k0 = math.ceil((t0_s - self.phase_s) / self.slot_s - 1e-9)
        k1 = math.floor((t1_s - self.phase_s) / self.slot_s + 1e-9)
        out: FloatArray = (self.phase_s + np.arange(k0, k1 + 1) * self.slot_s).astype(np.float64)
        return out

    def on_boundary(self, t_s: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """Whether each plan time is a slot boundary."""
        t = np.asarray(t_s, dtype=np.float64)
        r = np.mod(t - self.phase_s, self.slot_s)
        on: npt.NDArray[np.bool_] = (r < 1e-6) | (r > self.slot_s - 1e-6)
        return on

    def utc_second(self, t_s: float) -> float:
        """Seconds past the UTC minute of plan time ``t_s``."""
        return (self._epoch_posix_s + t_s) % 60.0

    def steps_align(self, start_s: float, step_s: float) -> bool:
        """True when plan steps ``start_s + k step_s`` hit every boundary exactly."""
        if self.slot_s / step_s % 1 > 1e-9 and 1 - self.slot_s / step_s % 1 > 1e-9:
            return False
        r = (self.phase_s - start_s) % step_s
        return bool(r < 1e-6 or r > step_s - 1e-6)
