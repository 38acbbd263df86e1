"""The fidelity guard: does the shaper keep up with the plan? (issue 10)

A shaper that falls behind makes every measurement on its links wrong in silence: frames
leave later than the model says, or are lost before the model sees them. Every step, the
guard asks the shaper (:meth:`~meshemu.live.shapers.base.LinkShaper.guard`) for, per link
and direction, how late frames left against their scheduled departure (p99 and max) and
how many frames it lost because it could not keep up (kernel ring overflow: not the model's
drop-tail queue), and the frames in each direction's drop-tail queue when it asked (the
userspace delay line reports it; netem does not). It writes them to ``shaper.csv``, warns
live when a link's lateness p99 over a step exceeds the threshold (default
:data:`THRESHOLD_MS`) or frames were lost, and sums up for ``summary.json`` which links and
steps were affected.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshemu.live.shapers.base import WORKER_LINK, GuardRecord, LinkShaper
from meshemu.report.files import SHAPER

log = logging.getLogger(__name__)

#: Default lateness p99 above which a link's step counts as affected (ms).
THRESHOLD_MS = 0.5
#: Live warnings: one per affected step for the first this-many, then one every
#: :data:`WARN_EVERY` affected steps.
WARN_FIRST = 5
WARN_EVERY = 30
#: Links listed in the summary (the worst first).
SUMMARY_LINKS = 20

DIRECTIONS = ("a>b", "b>a")


@dataclass
class _LinkWorst:
    steps: int = 0
    worst_p99_ns: int = 0
    worst_max_ns: int = 0
    worst_step: int = -1


@dataclass
class GuardStep:
    """What one poll found: the affected links' (link_id, direction, p99 ns) and the frames
    the shaper lost."""

    step: int
    over: list[tuple[int, int, int]] = field(default_factory=list)
    behind_drops: int = 0

    @property
    def affected(self) -> bool:
        return bool(self.over) or self.behind_drops > 0


class FidelityGuard:
    """Polls a shaper's guard records each step and writes ``shaper.csv``.

    Parameters
    ----------
    shaper : LinkShaper
    out : Path
        The run directory.
    ends : dict of int to (str, str)
        Link id -> names of its a and b nodes.
    threshold_ms : float
    warn : callable
        Where live warnings go (``log.warning``).
    """

    def __init__(
        self,
        shaper: LinkShaper,
        out: Path,
        ends: dict[int, tuple[str, str]],
        threshold_ms: float = THRESHOLD_MS,
        warn: Callable[..., None] = log.warning,
    ):
        self.shaper = shaper
        self.ends = ends
        self.threshold_ns = int(threshold_ms * 1e6)
        self.threshold_ms = threshold_ms
        self.warn = warn
        self.steps_polled = 0
        self.affected_steps: list[int] = []
        self.behind_drops = 0
        self.frames = 0
        self._worst: dict[tuple[int, int], _LinkWorst] = {}
        self._f = open(out / SHAPER.name, "w", newline="")
        self._w = csv.writer(self._f)
        self._w.writerow(SHAPER.columns)

    def poll(self, step: int, t_s: float) -> GuardStep:
        """Read the shaper's records for the time since the last poll; write and judge them."""
        recs = self.shaper.guard() or []
        res = GuardStep(step)
        for r in recs:
            self._row(step, t_s, r)
            if r.link_id == WORKER_LINK:
                res.behind_drops += r.behind_drops
                continue
            self.frames += r.frames
            res.behind_drops += r.behind_drops
            if r.frames and r.late_p99_ns > self.threshold_ns:
                res.over.append((r.link_id, r.direction, r.late_p99_ns))
                w = self._worst.setdefault((r.link_id, r.direction), _LinkWorst())
                w.steps += 1
                if r.late_p99_ns > w.worst_p99_ns:
                    w.worst_p99_ns, w.worst_step = r.late_p99_ns, step
                w.worst_max_ns = max(w.worst_max_ns, r.late_max_ns)
        self.steps_polled += 1
        self.behind_drops += res.behind_drops
        if res.affected:
            self.affected_steps.append(step)
            n = len(self.affected_steps)
            if n <= WARN_FIRST or n % WARN_EVERY == 0:
                self.warn("%s", self._warning(res, t_s, n))
        return res

    def _row(self, step: int, t_s: float, r: GuardRecord) -> None:
        if not (r.frames or r.behind_drops or r.queue_frames):
            return
        if r.link_id == WORKER_LINK:
            a = b = d = ""
        else:
            a, b = self.ends.get(r.link_id, ("", ""))
            d = DIRECTIONS[r.direction] if r.direction in (0, 1) else ""
        self._w.writerow(
            (
                step,
                f"{t_s:g}",
                r.link_id if r.link_id != WORKER_LINK else -1,
                a,
                b,
                d,
                r.frames,
                round(r.late_p99_ns / 1e6, 4),
                round(r.late_max_ns / 1e6, 4),
                r.behind_drops,
                r.queue_frames,
            )
        )

    def _name(self, link_id: int, direction: int) -> str:
        a, b = self.ends.get(link_id, (f"link{link_id}.a", f"link{link_id}.b"))
        return f"{a}->{b}" if direction == 0 else f"{b}->{a}"

    def _warning(self, res: GuardStep, t_s: float, n: int) -> str:
        parts = [
            f"shaper {self.shaper.name} fell behind the plan at step {res.step} (t = {t_s:g} s)"
        ]
        if res.over:
            lid, d, p99 = max(res.over, key=lambda o: o[2])
            parts.append(
                f"{len(res.over)} link direction(s) sent frames with lateness p99 over "
                f"{self.threshold_ms:g} ms (worst {self._name(lid, d)}: {p99 / 1e6:.2f} ms)"
            )
        if res.behind_drops:
            parts.append(f"{res.behind_drops} frame(s) lost because it could not keep up")
        parts.append(
            f"measurements on these links do not follow the plan (affected steps so far: {n}; "
            f"see shaper.csv)"
        )
        return "; ".join(parts)

    @property
    def closed(self) -> bool:
        return self._f.closed

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def summary(self) -> dict[str, Any]:
        """The ``fidelity`` part of ``summary.json``."""
        worst = sorted(self._worst.items(), key=lambda kv: -kv[1].worst_p99_ns)
        links = []
        for (lid, d), w in worst[:SUMMARY_LINKS]:
            a, b = self.ends.get(lid, ("", ""))
            links.append(
                {
                    "link_id": lid,
                    "a": a,
                    "b": b,
                    "direction": DIRECTIONS[d] if d in (0, 1) else "",
                    "steps": w.steps,
                    "worst_p99_ms": round(w.worst_p99_ns / 1e6, 4),
                    "worst_max_ms": round(w.worst_max_ns / 1e6, 4),
                    "worst_step": w.worst_step,
                }
            )
        ok = not self.affected_steps
        return {
            "shaper": self.shaper.name,
            "threshold_ms": self.threshold_ms,
            "steps_polled": self.steps_polled,
            "frames": self.frames,
            "steps_affected": len(self.affected_steps),
            "affected_steps": self.affected_steps[:100],
            "link_directions_affected": len(self._worst),
            "links": links,
            "behind_drops": self.behind_drops,
            "ok": ok,
            "verdict": verdict(ok, len(self.affected_steps), self.steps_polled, self.behind_drops),
        }


def verdict(ok: bool, n_affected: int, n_steps: int, drops: int) -> str:
    """One line for the summary and the report."""
    if n_steps == 0:
        return "not measured (the shaper has no guard)"
    if ok:
        return f"the shaper kept up with the plan at every step ({n_steps} steps)"
    text = f"the shaper fell behind the plan in {n_affected} of {n_steps} steps"
    if drops:
        text += f" and lost {drops} frame(s) it could not keep up with"
    return text + ": measurements on the affected links do not follow the plan"
