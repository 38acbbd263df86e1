"""The options of a live run, as one frozen value checked when it is made.

:class:`RunOptions` replaces the keyword parameters :func:`meshemu.live.runner.run_emulation`
used to take one by one; ``run_emulation(scenario, duration_s=30, shaper="userspace")`` still
works (the keywords build the options). What can be checked without the scenario or the
machine is checked in ``__post_init__``; the shaper, routing scheme, traffic profile, capture
specs and output directory are checked by :func:`meshemu.live.run.validate` before anything
is planned, written or built.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshemu.errors import OptionsError
from meshemu.routing.hold import check_route_hold_us
from meshemu.spec.options import MAX_STEPS, TimeSpan

if TYPE_CHECKING:
    from meshemu.geometry.linkstate import Snapshot
    from meshemu.live.emulation import Emulation
    from meshemu.routing import RoutingScheme
    from meshemu.spec.profile import Profile

#: Called after each step is applied: ``on_step(k, snapshot, emulation)``.
StepHook = Callable[[int, "Snapshot", "Emulation"], None]
#: Called once the network is built, before the clock starts: ``on_built(emulation)``.
BuiltHook = Callable[["Emulation"], None]

#: Shortest wall-clock time per step (``step_s / time_scale``) the clock is asked to keep.
MIN_WALL_STEP_S = 1e-3
#: Most steps a live run may have (its snapshots are all held in memory; see also the memory
#: check of the plan stage).
MAX_RUN_STEPS = MAX_STEPS // 10


@dataclass(frozen=True)
class RunOptions:
    """How to run one live emulation.

    Attributes
    ----------
    duration_s, step_s : float
        Emulated time span and step (s).
    start_s : float
        Start this many seconds after the scenario epoch.
    time_scale : float
        Emulated seconds per wall-clock second (2 = twice as fast as real time).
    shaper : str
        ``auto`` (netem when the kernel has it, else userspace), ``netem``, ``userspace``.
    shaper_workers : int
        Delay-line worker processes of the userspace shaper (links are partitioned among
        them; ignored by netem). 2 forwards faster on 2 cores (``bench_dataplane.py``).
    shaper_gso : bool, optional
        Userspace shaper: GSO passthrough (TCP bursts cross the delay line as super-frames;
        see :class:`~meshemu.live.shapers.userspace.UserspaceShaper`); None (the default):
        on with the compiled delay line. Ignored by netem, which does this in the kernel.
    routing : str or RoutingScheme
        A scheme name, a plug-in spec (``file.py:Class``, ``module:Class``) or an instance.
    out_dir : path, optional
        Run directory (default ``runs/run-<scenario>-<time>``).
    traffic : str, Profile or None
        A traffic profile (path, name in ``traffic/`` or a loaded one); ``None`` or
        ``"none"`` for no traffic.
    traffic_optional : bool
        If the profile does not fit the scenario (the default workload on a scenario without
        compute satellites), run without traffic and say so instead of failing.
    capture : tuple of str
        Packet captures: ``NODE`` (all its interfaces) or ``NODE:PEER`` (one link).
    cli : bool
        Open Mininet's CLI; the geometry keeps updating in a background thread and the run
        ends when the CLI exits.
    plots : bool
        Write ``map.png``, ``path_delay.png`` and the report.
    on_step : callable(k, snapshot, emulation), optional
        Called after each step is applied (from the stepping thread).
    on_built : callable(emulation), optional
        Called once the network is built, before the clock starts.
    detect : str
        With a daemon routing scheme, how a failed link shows itself to the daemons:
        ``carrier`` (its interfaces go down at both ends) or ``silent`` (frames are lost;
        the protocol's dead interval finds it).
    guard_ms : float
        The fidelity guard's threshold: a step in which a link sent frames with lateness p99
        above this (ms) counts as affected and warns (``meshemu/live/guard.py``).
    delay_tolerance_us : float
        A link's delay change up to this (microseconds) is not pushed to the shaper: the
        delay the shaper holds stays within it of the plan (default 1 us; 10-50 us, below
        the userspace delay line's own p99 error, saves most ISL updates on large
        constellations).
    route_hold_us : float
        Route hold (:mod:`meshemu.routing.hold`): a node keeps its next hop while it is
        loop-free and its path is at most this much (microseconds, one-way) longer than the
        scheme's; 0 (the default) is off. Computed single-path schemes only.
    route_aggregation : str
        ``auto`` (on from 1,000 nodes), ``on`` or ``off``: install the build's routes as
        aggregate prefixes, with /32s over them as routes change
        (:mod:`meshemu.live.routes`).
    owd_trust_ms : float
        With ``cluster``: the largest clock offset bound (ms) between two hosts whose flows'
        one-way delays are trusted (:mod:`meshemu.traffic.clocks`).
    """

    duration_s: float = 60.0
    step_s: float = 1.0
    start_s: float = 0.0
    time_scale: float = 1.0
    shaper: str = "auto"
    shaper_workers: int = 1
    shaper_gso: bool | None = None
    routing: str | RoutingScheme = "shortest-delay"
    out_dir: Path | str | None = None
    traffic: str | Path | Profile | None = "default"
    traffic_optional: bool = False
    capture: tuple[str, ...] = ()
    cli: bool = False
    plots: bool = True
    on_step: StepHook | None = field(default=None, compare=False)
    on_built: BuiltHook | None = field(default=None, compare=False)
    guard_ms: float = 0.5
    detect: str = "carrier"
    delay_tolerance_us: float = 1.0
    route_hold_us: float = 0.0
    route_aggregation: str = "auto"
    cluster: str | None = None
    hosts: int | None = None
    partition: str = "auto"
    owd_trust_ms: float = 1.0

    def __post_init__(self) -> None:
        span = self.span  # checks duration, step, start and the step count
        ts = self.time_scale
        if (
            isinstance(ts, bool)
            or not isinstance(ts, (int, float))
            or not math.isfinite(ts)
            or ts <= 0
        ):
            raise OptionsError(f"must be a finite number > 0; got {ts!r}", field="--time-scale")
        if span.step_s / ts < MIN_WALL_STEP_S:
            raise OptionsError(
                f"steps of {span.step_s:g} s at {ts:g}x last "
                f"{span.step_s / ts * 1e3:.3g} ms of wall-clock time; at least "
                f"{MIN_WALL_STEP_S * 1e3:g} ms: use a larger --step or a smaller "
                f"--time-scale",
                field="--time-scale",
            )
        g = self.guard_ms
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or g <= 0:
            raise OptionsError(f"must be a finite number > 0 (ms); got {g!r}", field="--guard-ms")
        tol = self.delay_tolerance_us
        if (
            isinstance(tol, bool)
            or not isinstance(tol, (int, float))
            or not math.isfinite(tol)
            or not 0 <= tol <= 100_000
        ):
            raise OptionsError(
                f"must be a number of microseconds from 0 to 100000; got {tol!r}",
                field="--delay-tolerance-us",
            )
        check_route_hold_us(self.route_hold_us)
        if self.route_aggregation not in ("auto", "on", "off"):
            raise OptionsError(
                f"must be auto, on or off; got {self.route_aggregation!r}",
                field="--route-aggregation",
            )
        if self.detect not in ("carrier", "silent"):
            raise OptionsError(
                f"unknown detection {self.detect!r}; please specify one of: carrier, silent",
                field="--detect",
            )
        if self.shaper_gso is not None and not isinstance(self.shaper_gso, bool):
            raise OptionsError(
                f"must be true, false or None (auto); got {self.shaper_gso!r}",
                field="--shaper-gso",
            )
        w = self.shaper_workers
        if isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= 64:
            raise OptionsError(
                f"must be an integer from 1 to 64; got {w!r}", field="--shaper-workers"
            )
        if not isinstance(self.shaper, str) or not self.shaper:
            raise OptionsError(f"must be a shaper name; got {self.shaper!r}", field="--shaper")
        cap = self.capture
        if isinstance(cap, str) or not all(isinstance(c, str) and c for c in cap):
            raise OptionsError(
                f"must be a list of NODE or NODE:PEER; got {cap!r}", field="--capture"
            )
        object.__setattr__(self, "capture", tuple(cap))
        if self.out_dir is not None and not isinstance(self.out_dir, (str, Path)):
            raise OptionsError(f"must be a path; got {self.out_dir!r}", field="--out")
        if self.cluster is not None:
            self._check_cluster()
        for hook in ("on_step", "on_built"):
            if getattr(self, hook) is not None and not callable(getattr(self, hook)):
                raise OptionsError(f"must be callable; got {getattr(self, hook)!r}", field=hook)

    def _check_cluster(self) -> None:
        """``--cluster``: what a run over several hosts does not do yet is refused here."""
        from meshemu.partition import METHODS

        c = self.cluster
        if not isinstance(c, str) or ":" not in c or not c.rsplit(":", 1)[1].isdigit():
            raise OptionsError(
                f"must be the Ray head's ADDRESS:PORT (e.g. 10.0.0.1:6379); got {c!r}",
                field="--cluster",
            )
        h = self.hosts
        if h is not None and (isinstance(h, bool) or not isinstance(h, int) or h < 1):
            raise OptionsError(f"must be an integer >= 1; got {h!r}", field="--hosts")
        t = self.owd_trust_ms
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise OptionsError(
                f"must be a finite number >= 0 (ms); got {t!r}", field="--owd-trust-ms"
            )
        if self.partition not in METHODS:
            raise OptionsError(
                f"unknown method {self.partition!r}; please specify one of: {', '.join(METHODS)}",
                field="--partition",
            )
        for flag, on in (
            ("--cli", self.cli),
            ("--capture", bool(self.capture)),
        ):
            if on:
                raise OptionsError(
                    f"{flag} does not work over several hosts yet; run without it",
                    field="--cluster",
                )
        if self.shaper not in ("auto", "userspace"):
            raise OptionsError(
                "a run over several hosts shapes with the userspace shaper (its delay line "
                "holds the tunnels between hosts); use --shaper userspace (or auto)",
                field="--cluster",
            )

    @property
    def span(self) -> TimeSpan:
        """The checked time line (:class:`~meshemu.spec.options.TimeSpan`)."""
        return TimeSpan.checked(self.duration_s, self.step_s, self.start_s, max_steps=MAX_RUN_STEPS)

    @property
    def wants_traffic(self) -> bool:
        """True unless traffic is off (``None`` or ``"none"``)."""
        return self.traffic is not None and self.traffic != "none"

    @classmethod
    def from_keywords(cls, options: RunOptions | None = None, **kw: Any) -> RunOptions:
        """``options`` (or the defaults) with the fields in ``kw`` replaced.

        Raises
        ------
        OptionsError
            A keyword that is not a field (listing the fields), or a bad value.
        """
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(kw) - set(names))
        if unknown:
            raise OptionsError(
                f"unknown run option(s) {', '.join(unknown)}; the options are: {', '.join(names)}"
            )
        if "capture" in kw and kw["capture"] is None:
            kw["capture"] = ()
        base = {f: getattr(options, f) for f in names} if options is not None else {}
        return cls(**{**base, **kw})
