"""Statistics of a time series against a slotted scheduler (pure numpy).

The slot-jump statistic (Tanveer et al., "Making Sense of Constellations", CoNEXT
Companion 2023, as stated in issue 13): for each offset ``o`` of 0 .. slot_s - 1 seconds,
cut time into ``slot_s`` slots starting at ``o`` (seconds of the UTC minute, modulo
``slot_s``), take the minimum RTT of each slot, and average the absolute change between
consecutive slots. Where the scheduler really changes paths, the per-slot minima step only
across slots cut at the true offset, so the statistic peaks there (12 s on Starlink).

:func:`loss_near_boundaries` compares the loss within ``window_s`` of a boundary with the
loss elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class SlotJump:
    """The slot-jump statistic per offset."""

    offsets_s: npt.NDArray[np.float64]
    mean_jump_ms: npt.NDArray[np.float64]

    @property
    def peak_offset_s(self) -> float:
        """The offset with the largest mean jump."""
        return float(self.offsets_s[int(np.nanargmax(self.mean_jump_ms))])

    @property
    def peak_ratio(self) -> float:
        """The peak's mean jump over the median of the other offsets'."""
        k = int(np.nanargmax(self.mean_jump_ms))
        others = np.delete(self.mean_jump_ms, k)
        med = float(np.nanmedian(others)) if others.size else float("nan")
        return float(self.mean_jump_ms[k] / med) if med > 0 else float("inf")


def slot_jump(
    utc_s: npt.ArrayLike, rtt_ms: npt.ArrayLike, slot_s: float = 15.0, step_s: float = 1.0
) -> SlotJump:
    """The slot-jump statistic of RTT samples taken at UTC times ``utc_s`` (POSIX seconds,
    or any time whose zero is on a UTC minute); lost probes are NaN and ignored. Slots the
    probe covers only in part (the first and the last, cut at an offset other than the
    probe's start) are left out: the minimum of fewer samples is higher, a jump that is not
    the network's."""
    t = np.asarray(utc_s, dtype=np.float64)
    r = np.asarray(rtt_ms, dtype=np.float64)
    ok = np.isfinite(r)
    if t.size > 1:
        gap = float(np.median(np.diff(np.sort(t))))
        lo, hi = float(t.min()) - gap, float(t.max()) + gap
    else:
        lo, hi = -np.inf, np.inf
    t, r = t[ok], r[ok]
    offsets = np.arange(0.0, slot_s, step_s)
    out = np.full(offsets.size, np.nan)
    for i, o in enumerate(offsets):
        k = np.floor((t - o) / slot_s).astype(np.int64)
        whole = (k * slot_s + o >= lo - 1e-9) & ((k + 1) * slot_s + o <= hi + 1e-9)
        k = k[whole]
        if k.size == 0:
            continue
        uniq, inv = np.unique(k, return_inverse=True)
        mins = np.full(uniq.size, np.inf)
        np.minimum.at(mins, inv, r[whole])
        consecutive = np.diff(uniq) == 1
        if consecutive.any():
            out[i] = float(np.mean(np.abs(np.diff(mins))[consecutive]))
    return SlotJump(offsets, out)


def loss_near_boundaries(
    utc_s: npt.ArrayLike,
    lost: npt.ArrayLike,
    slot_s: float = 15.0,
    offset_s: float = 12.0,
    window_s: float = 1.0,
) -> tuple[float, float, float]:
    """(loss rate within ``window_s`` of a boundary, loss rate elsewhere, share of all
    losses that fall near a boundary) for probes sent at ``utc_s``."""
    t = np.asarray(utc_s, dtype=np.float64)
    x = np.asarray(lost, dtype=bool)
    d = np.mod(t - offset_s, slot_s)
    near = np.minimum(d, slot_s - d) <= window_s
    rate_near = float(x[near].mean()) if near.any() else float("nan")
    rate_far = float(x[~near].mean()) if (~near).any() else float("nan")
    share = float(x[near].sum() / x.sum()) if x.any() else float("nan")
    return rate_near, rate_far, share


def probe_figures(
    utc_s: npt.ArrayLike,
    rtt_ms: npt.ArrayLike,
    slot_s: float = 15.0,
    offset_s: float = 12.0,
    window_s: float = 1.0,
) -> dict[str, object]:
    """What an idle RTT probe measured, as the fidelity check compares it with the published
    figures: RTT minimum, median and p95 (of the answered probes), the loss rate, the
    slot-jump statistic per offset (its peak offset and the peak's ratio to the median of
    the others) and the loss within ``window_s`` of a boundary against elsewhere.

    Parameters
    ----------
    utc_s : array of float
        Send time of each probe, UTC (POSIX) seconds.
    rtt_ms : array of float
        Its round-trip time, NaN when it was not answered.
    """
    t = np.asarray(utc_s, dtype=np.float64)
    r = np.asarray(rtt_ms, dtype=np.float64)
    ok = np.isfinite(r)
    jump = slot_jump(t, r, slot_s)
    near, far, share = loss_near_boundaries(t, ~ok, slot_s, offset_s, window_s)

    def f(x: float) -> float | None:
        return round(float(x), 4) if np.isfinite(x) else None

    return {
        "probes": int(r.size),
        "answered": int(ok.sum()),
        "loss": f(1 - ok.mean()) if r.size else None,
        "rtt_min_ms": f(r[ok].min()) if ok.any() else None,
        "rtt_median_ms": f(float(np.median(r[ok]))) if ok.any() else None,
        "rtt_p95_ms": f(float(np.percentile(r[ok], 95))) if ok.any() else None,
        "slot_jump_offsets_s": jump.offsets_s.tolist(),
        "slot_jump_ms": [f(x) for x in jump.mean_jump_ms.tolist()],
        "slot_jump_peak_offset_s": (
            jump.peak_offset_s if np.isfinite(jump.mean_jump_ms).any() else None
        ),
        "slot_jump_peak_ratio": (
            f(jump.peak_ratio) if np.isfinite(jump.mean_jump_ms).any() else None
        ),
        "loss_near_boundaries": f(near),
        "loss_elsewhere": f(far),
        "loss_share_near_boundaries": f(share),
        "window_s": window_s,
    }
