"""How far one-way delays between hosts can be trusted: the trust rule of a run over several
hosts (pure).

A packet's one-way delay is its receive time on the receiver's host clock minus its send
time on the sender's host clock (:mod:`meshemu.traffic.transport`), so between two hosts it
carries the offset of the receiver's clock to the sender's. The driver measures each host's
clock offset to its own at the start and at the end of the run
(:meth:`meshemu.live.cluster.engine.ClusterEmulation.measure_clocks`: the sample with the
shortest round trip, whose half bounds the error; Cristian's algorithm, F. Cristian,
"Probabilistic clock synchronization", Distributed Computing 3, 1989). For a flow from host
``s`` to host ``d`` that gives, at each measurement,

    relative offset  o = offset[d] - offset[s]      (the bias of every one-way delay)
    uncertainty      e = error[s] + error[d]

and its **offset bound** is the largest ``|o| + e`` of the two measurements (a clock that
drifts steadily stays within the larger end between them). A flow whose bound exceeds the
threshold (``--owd-trust-ms``, :data:`DEFAULT_THRESHOLD_MS`) has its one-way delays marked
``untrusted``: the summary gives none, says why and names the fix (synchronise the hosts'
clocks with chrony or PTP). Flows within one host use one clock: ``one host``.

The figures are not corrected by the measured offset: the offset is known only to within
its uncertainty, and a correction would hide a badly synchronised set-up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Offset bound (ms) above which one-way delays between hosts are refused. 1 ms is the
#: emulator's own tolerance on a link's delay (its tests hold delays to the plan within 1 ms);
#: chrony on a LAN keeps hosts within tens of microseconds, PTP within a microsecond.
DEFAULT_THRESHOLD_MS = 1.0

#: Values of the ``owd`` column of ``owd_trust.csv``.
TRUSTED, UNTRUSTED, ONE_HOST = "trusted", "untrusted", "one host"

#: The fix named when one-way delays are refused.
FIX = (
    "synchronise the hosts' clocks (chrony, or PTP with linuxptp; `chronyc tracking` shows a "
    "host's offset) and run again, or raise --owd-trust-ms"
)


@dataclass(frozen=True)
class FlowTrust:
    """How far one flow's one-way delays can be trusted (see the module docstring); the
    ``_ms`` figures are None within one host, ``offset_end_ms`` and ``drift_ms`` also when
    the end was not measured."""

    flow_id: int
    src: str
    dst: str
    src_host: int
    dst_host: int
    offset_start_ms: float | None
    offset_end_ms: float | None
    error_ms: float | None
    drift_ms: float | None
    bound_ms: float | None
    threshold_ms: float
    owd: str

    @property
    def crosses(self) -> bool:
        """True when its ends are on different hosts."""
        return self.src_host != self.dst_host

    def row(self) -> list[Any]:
        """Its row of ``owd_trust.csv``."""

        def f(x: float | None) -> str:
            return "" if x is None else f"{x:.4f}"

        return [
            self.flow_id,
            self.src,
            self.dst,
            self.src_host,
            self.dst_host,
            f(self.offset_start_ms),
            f(self.offset_end_ms),
            f(self.error_ms),
            f(self.drift_ms),
            f(self.bound_ms),
            f"{self.threshold_ms:g}",
            self.owd,
        ]


def _relative(
    sample: Mapping[str, Mapping[str, float]], s: int, d: int
) -> tuple[float, float] | None:
    """(relative offset, uncertainty) in ms of host ``d``'s clock to host ``s``'s."""
    a, b = sample.get(str(s)), sample.get(str(d))
    if a is None or b is None:
        return None
    return b["offset_ms"] - a["offset_ms"], a["error_ms"] + b["error_ms"]


def flow_trust(
    flows: Sequence[Any],
    host_of: Mapping[str, int],
    clock: Mapping[str, Mapping[str, Mapping[str, float]]],
    threshold_ms: float = DEFAULT_THRESHOLD_MS,
) -> list[FlowTrust]:
    """The trust of every flow (objects with ``flow_id``, ``src``, ``dst``).

    Parameters
    ----------
    host_of : mapping of str to int
        Node name -> host index.
    clock : mapping
        ``{"start": {host: {"offset_ms", "error_ms"}}, "end": {...}}`` as the run's
        ``summary.json`` ``cluster.clock`` holds it (host keys are strings).
    threshold_ms : float
        The largest offset bound whose one-way delays are trusted.

    A cross-host flow without a start measurement of both hosts is ``untrusted``.
    """
    if not threshold_ms >= 0:
        raise ValueError(f"the one-way-delay trust threshold must be >= 0 ms; got {threshold_ms}")
    out = []
    for fl in flows:
        s, d = int(host_of[fl.src]), int(host_of[fl.dst])
        if s == d:
            out.append(
                FlowTrust(
                    fl.flow_id,
                    fl.src,
                    fl.dst,
                    s,
                    d,
                    None,
                    None,
                    None,
                    None,
                    None,
                    threshold_ms,
                    ONE_HOST,
                )  # fmt: skip
            )
            continue
        start = _relative(clock.get("start", {}), s, d)
        end = _relative(clock.get("end", {}), s, d)
        ends = [x for x in (start, end) if x is not None]
        bound = max((abs(o) + e for o, e in ends), default=None)
        ok = bound is not None and start is not None and bound <= threshold_ms
        out.append(
            FlowTrust(
                fl.flow_id,
                fl.src,
                fl.dst,
                s,
                d,
                None if start is None else start[0],
                None if end is None else end[0],
                max((e for _, e in ends), default=None),
                None if start is None or end is None else end[0] - start[0],
                bound,
                threshold_ms,
                TRUSTED if ok else UNTRUSTED,
            )
        )
    return out


def trust_summary(trust: Sequence[FlowTrust]) -> tuple[dict[str, Any], list[str]]:
    """The ``owd_trust`` section of the traffic summary and the lines to print."""
    cross = [t for t in trust if t.crosses]
    bad = [t for t in cross if t.owd == UNTRUSTED]
    threshold = trust[0].threshold_ms if trust else DEFAULT_THRESHOLD_MS
    bounds = [t.bound_ms for t in cross if t.bound_ms is not None]
    worst = max(cross, key=lambda t: -1.0 if t.bound_ms is None else t.bound_ms, default=None)
    s: dict[str, Any] = {
        "threshold_ms": threshold,
        "flows_between_hosts": len(cross),
        "untrusted_flows": [t.flow_id for t in bad],
        "offset_bound_ms": max(bounds) if bounds else None,
        "verdict": UNTRUSTED if bad else TRUSTED,
        "fix": FIX if bad else None,
        "flows": {
            str(t.flow_id): {
                "hosts": [t.src_host, t.dst_host],
                "offset_start_ms": t.offset_start_ms,
                "offset_end_ms": t.offset_end_ms,
                "error_ms": t.error_ms,
                "drift_ms": t.drift_ms,
                "bound_ms": t.bound_ms,
                "owd": t.owd,
            }
            for t in trust
        },
    }
    if not cross or worst is None:
        return s, []

    def figs(t: FlowTrust) -> str:
        o = t.offset_start_ms if t.offset_end_ms is None else t.offset_end_ms
        drift = "not measured" if t.drift_ms is None else f"{t.drift_ms:+.3f} ms"
        bound = "unknown" if t.bound_ms is None else f"{t.bound_ms:.3f} ms"
        off = "unknown" if o is None else f"{o:+.3f}"
        err = "?" if t.error_ms is None else f"{t.error_ms:.3f}"
        return (
            f"hosts {t.src_host} and {t.dst_host}: offset {off} ms +- {err} ms, drift "
            f"{drift} from start to end, bound {bound}"
        )

    if bad:
        w = max(bad, key=lambda t: float("inf") if t.bound_ms is None else t.bound_ms)
        line = (
            f"one-way delay UNTRUSTED for {len(bad)} of {len(cross)} flow(s) between hosts "
            f"(flows {', '.join(str(t.flow_id) for t in bad[:8])}{' ...' if len(bad) > 8 else ''}):"
            f" the clocks of {figs(w)}, above the {threshold:g} ms threshold; their one-way "
            f"delays are left out of the summary (owd_trust.csv); {FIX}"
        )
    else:
        line = (
            f"one-way delay trusted for {len(cross)} flow(s) between hosts: worst clock "
            f"{figs(worst)}, within the {threshold:g} ms threshold (owd_trust.csv)"
        )
    return s, [line]
