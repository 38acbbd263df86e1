"""Slot-jump statistic and loss near slot boundaries."""

import numpy as np
import pytest

from meshemu.report.slots import loss_near_boundaries, slot_jump


def test_slot_jump_peaks_at_the_scheduler_offset():
    rng = np.random.default_rng(1)
    t = np.arange(0, 1800, 0.2) + 1_700_000_040.0  # a UTC minute + 0 s
    slot = np.floor((t - 12.0) / 15.0)
    base = 30 + 10 * rng.integers(0, 4, size=int(slot.max() - slot.min()) + 1)
    rtt = base[(slot - slot.min()).astype(int)] + rng.exponential(5, t.size)
    sj = slot_jump(t, rtt)
    assert sj.peak_offset_s == 12.0
    assert sj.peak_ratio > 1.5


def test_slot_jump_ignores_lost_probes():
    t = np.arange(0, 300, 1.0)
    rtt = np.where(t % 15 == 12, np.nan, 20.0)
    sj = slot_jump(t, rtt)
    assert np.allclose(sj.mean_jump_ms, 0.0)


def test_loss_near_boundaries():
    t = np.arange(0, 600, 0.1)
    d = np.mod(t - 12, 15)
    lost = np.minimum(d, 15 - d) < 0.3
    near, far, share = loss_near_boundaries(t, lost)
    assert far == 0 and share == 1.0
    assert near == pytest.approx(0.6 / 2.1, abs=0.02)
