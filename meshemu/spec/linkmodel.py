"""Delay and loss beyond propagation on access links (``gsl.access_model``), per direction.

Measured Starlink RTTs are far above propagation (idle user -> gateway: minimum about 20 ms,
median about 40 ms, against 7-15 ms of propagation for a 550 km shell; Mohan et al., "A
Multifaceted Look at Starlink Performance", WWW 2024), and loss comes in bursts (Ma et al.,
INFOCOM 2023; Michel et al., IMC 2022). The model adds to each direction of a user
terminal's GSL (not a gateway's feeder links):

- ``constant``: a fixed delay (processing, scheduling not modelled otherwise);
- MAC frame alignment: a frame leaves at the next boundary of a ``frame`` grid (uniform
  wait in ``[0, frame)`` for random arrivals). Starlink's Ku-band downlink is framed at
  750 frames per second, 1.333 ms (Humphreys, Iannucci, Komodromos and Graff, "Signal
  Structure of the Starlink Ku-Band Downlink", IEEE Trans. Aerospace and Electronic
  Systems, 2023);
- uplink only, a request-grant wait, uniform in ``[grant_min, grant_max]`` before the
  alignment (uplink one-way delay is larger than downlink's: Mohan et al.);
- ``per_assignment``: each assignment (a user terminal's GSL to one satellite: one link)
  adds a fixed delay drawn once for it, uniform in ``[0, per_assignment]``: the scheduler's
  share that holds for a slot and changes with the satellite, so that the minimum RTT steps
  at slot boundaries "often by 10, 20 or even 50 ms" (Pan, Zhao and Cai, ICC 2024, as
  summarised in issue 13); the draw travels in the snapshots (``Snapshot.access_draw``);
- Gilbert-Elliott bursty loss (netem's ``loss gemodel``): two states, good -> bad with
  probability ``p`` and bad -> good with ``r`` per packet, a packet lost with ``loss_bad``
  in the bad state and ``loss_good`` in the good one (the state a packet finds; then the
  state moves), besides the link's uniform ``loss``.

Per packet, extra delay = ``constant + W`` with ``W`` the wait for the transmission
opportunity: in ``[grant_min, grant_max + frame)``, mean ``(grant_min + grant_max)/2 +
frame/2``, plus the assignment's draw. The deterministic part a plan predicts is that mean
(:attr:`DirectionModel.mean_s` of :meth:`DirectionModel.assigned`).

Schema (``gsl.access_model``)::

    frame_ms: 1.333                    MAC frame (both directions); 0: no alignment
    downlink:                          satellite -> ground
      constant_ms: 0
      per_assignment_ms: 0             each assignment adds uniform [0, this], drawn once
      gilbert_elliott: {p, r, loss_bad: 1, loss_good: 0}   (optional)
    uplink:                            ground -> satellite
      constant_ms: 0, grant_min_ms: 0, grant_max_ms: 0 (default grant_min_ms)
      gilbert_elliott: {...}

This module is pure: the values travel in the geometry's snapshots
(:attr:`meshemu.geometry.linkstate.Snapshot.access_model`) to the shapers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from meshemu.spec.validate import Validator

#: Starlink's MAC frame: 1/750 s (Humphreys et al., IEEE TAES 2023, see the module docstring).
STARLINK_FRAME_S = 1.0 / 750.0


@dataclass(frozen=True)
class DirectionModel:
    """One direction of an access link: extra delay and Gilbert-Elliott loss.

    Attributes
    ----------
    constant_s : float
        Fixed extra delay, seconds.
    frame_s : float
        MAC frame; a frame leaves at the next multiple of it (0: no alignment).
    grant_min_s, grant_max_s : float
        Uplink grant wait, uniform in ``[grant_min_s, grant_max_s]`` (0 on a downlink).
    ge_p, ge_r : float
        Gilbert-Elliott transition probabilities per packet, good -> bad and bad -> good
        (``ge_p`` 0: no Gilbert-Elliott loss).
    ge_loss_bad, ge_loss_good : float
        Loss probability in the bad and in the good state (netem's ``1-h`` and ``1-k``).
    per_assignment_s : float
        Each assignment adds ``draw * per_assignment_s`` to ``constant_s``
        (:meth:`assigned`); 0: none.
    """

    constant_s: float = 0.0
    frame_s: float = 0.0
    grant_min_s: float = 0.0
    grant_max_s: float = 0.0
    ge_p: float = 0.0
    ge_r: float = 1.0
    ge_loss_bad: float = 1.0
    ge_loss_good: float = 0.0
    per_assignment_s: float = 0.0

    def assigned(self, draw: float) -> DirectionModel:
        """The model of one assignment: ``draw`` (uniform in [0, 1), the link's) times
        ``per_assignment_s`` added to the constant."""
        if not self.per_assignment_s:
            return self
        return replace(
            self, constant_s=self.constant_s + draw * self.per_assignment_s, per_assignment_s=0.0
        )

    @property
    def gilbert_elliott(self) -> bool:
        """True when the direction has Gilbert-Elliott loss."""
        return self.ge_p > 0

    @property
    def delays(self) -> bool:
        """True when the direction adds any delay."""
        return bool(self.constant_s or self.frame_s or self.grant_max_s)

    @property
    def mean_s(self) -> float:
        """Mean extra delay of an assignment (the deterministic part a plan predicts; the
        per-assignment draw is in the constant, :meth:`assigned`), seconds."""
        return self.constant_s + (self.grant_min_s + self.grant_max_s) / 2 + self.frame_s / 2

    @property
    def min_s(self) -> float:
        """Least extra delay, seconds."""
        return self.constant_s + self.grant_min_s

    @property
    def max_s(self) -> float:
        """Bound of the extra delay (exclusive when there is a frame), seconds."""
        return self.constant_s + self.grant_max_s + self.frame_s

    @property
    def ge_loss_rate(self) -> float:
        """Long-run Gilbert-Elliott loss rate: ``pi_bad loss_bad + pi_good loss_good`` with
        ``pi_bad = p / (p + r)``; 0 without Gilbert-Elliott loss."""
        if not self.gilbert_elliott:
            return 0.0
        bad = self.ge_p / (self.ge_p + self.ge_r)
        return bad * self.ge_loss_bad + (1 - bad) * self.ge_loss_good


@dataclass(frozen=True)
class AccessLinkModel:
    """``gsl.access_model``: both directions of a user terminal's GSL."""

    downlink: DirectionModel
    uplink: DirectionModel


def parse_access_model(v: Validator, d: Any, path: str = "gsl.access_model") -> AccessLinkModel:
    """Validate a ``gsl.access_model`` mapping (see the module docstring)."""
    d = v.mapping(d, path, ("frame_ms", "downlink", "uplink"), none_ok=True)
    frame_s = v.number(d, "frame_ms", path, STARLINK_FRAME_S * 1e3, lo=0, hi=1000) / 1e3
    return AccessLinkModel(
        downlink=_direction(v, d.get("downlink"), f"{path}.downlink", frame_s, uplink=False),
        uplink=_direction(v, d.get("uplink"), f"{path}.uplink", frame_s, uplink=True),
    )


def _direction(v: Validator, d: Any, p: str, frame_s: float, uplink: bool) -> DirectionModel:
    keys = ("constant_ms", "per_assignment_ms", "gilbert_elliott") + (
        ("grant_min_ms", "grant_max_ms") if uplink else ()
    )
    if not uplink and isinstance(d, dict):
        for k in ("grant_min_ms", "grant_max_ms"):
            if k in d:
                v.fail(f"{p}.{k}", "a grant wait applies to the uplink only; move it there")
    d = v.mapping(d, p, keys, none_ok=True)
    constant = v.number(d, "constant_ms", p, 0.0, lo=0, hi=10_000) / 1e3
    gmin = v.number(d, "grant_min_ms", p, 0.0, lo=0, hi=10_000) / 1e3
    gmax = v.number(d, "grant_max_ms", p, gmin * 1e3, lo=0, hi=10_000) / 1e3
    if gmax < gmin:
        v.fail(f"{p}.grant_max_ms", f"must be >= grant_min_ms ({gmin * 1e3:g}); got {gmax * 1e3:g}")
    ge = {}
    if d.get("gilbert_elliott") is not None:
        gp = f"{p}.gilbert_elliott"
        g = v.mapping(d["gilbert_elliott"], gp, ("p", "r", "loss_bad", "loss_good"))
        ge = {
            "ge_p": v.number(g, "p", gp, lo=0, hi=1, lo_open=True),
            "ge_r": v.number(g, "r", gp, lo=0, hi=1, lo_open=True),
            "ge_loss_bad": v.number(g, "loss_bad", gp, 1.0, lo=0, hi=1),
            "ge_loss_good": v.number(g, "loss_good", gp, 0.0, lo=0, hi=1),
        }
    per = v.number(d, "per_assignment_ms", p, 0.0, lo=0, hi=10_000) / 1e3
    return DirectionModel(constant, frame_s, gmin, gmax, per_assignment_s=per, **ge)
