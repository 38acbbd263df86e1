"""Send schedules of the workloads and the alpha-beta prediction of a collective (pure).

Collectives are plans: a list of :class:`Transfer` (who sends how many bytes to whom, after
having received which other transfers). The agents execute the plan; the prediction sums,
phase by phase, the slowest transfer of the phase:

.. math::

    T_{iter} = \\sum_{phase} \\max_{t \\in phase} \\Big( \\alpha + d_t
        + \\frac{8 B_t}{r_t} + \\sum_{h \\in path_t} \\frac{8 F}{R_h} \\Big)

the Hockney alpha-beta model (R. W. Hockney, "The communication challenge for MPP: Intel
Paragon and Meiko CS-2", Parallel Computing 20(3), 1994), as used for ring all-reduce by
Thakur, Rabenseifner & Gropp, "Optimization of collective communication operations in
MPICH", IJHPCA 19(1), 2005 (ring: ``2(p-1)`` steps of ``n/p`` bytes). Here

- ``d_t`` is the path's one-way propagation delay (sum of the link delays);
- ``B_t`` the bytes the transfer puts on a link: its payload plus
  :data:`meshemu.traffic.header.PER_PACKET_WIRE_BYTES` per packet (Ethernet, IP, UDP and
  meshemu headers: the userspace shaper serialises whole frames);
- ``r_t`` the rate it gets: ``min(pacing rate, fair share of the bottleneck)``, the fair
  share of a link being its rate divided by the number of the phase's transfers crossing it;
- the last sum is the store-and-forward time of one full frame ``F`` at every hop;
- ``alpha`` (:data:`OVERHEAD_S`, 0.5 ms) is the per-message software overhead of the agents
  (noticing the arrival of the last fragment, starting the next send), measured in
  ``tests/integration/test_traffic.py`` to be a few hundred microseconds.

The prediction ignores losses and retransmissions; the agents pace every transfer so that
there are none in a static topology. :func:`critical_path_s` gives a second figure, the
longest chain of dependent transfers with the same per-transfer times: it is what the
agents' dependency rules achieve when the transfers of a phase differ (a ring's chain does
not meet the slowest transfer at every step), and it equals the phase sum when they do not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from meshemu.traffic.header import ETH_BYTES, MAX_IP_BYTES, MAX_PAYLOAD, PER_PACKET_WIRE_BYTES

#: Per-message software overhead of the agents in the prediction (alpha), seconds.
OVERHEAD_S = 0.5e-3
#: Bytes of a full-size frame on a link (store-and-forward term).
FULL_FRAME_BYTES = MAX_IP_BYTES + ETH_BYTES
#: Collective algorithms.
ALGORITHMS = ("ring", "tree", "parameter_server")


@dataclass(frozen=True)
class Transfer:
    """One message of a collective's iteration.

    Attributes
    ----------
    index : int
        Position in the plan (message id within an iteration).
    src, dst : int
        Ranks (indices into the job's node list).
    nbytes : int
        Payload bytes.
    deps : tuple of int
        Transfers ``src`` must have *received* before it may send this one (none: it may
        send as soon as the iteration starts).
    phase : int
        Group of transfers that run at the same time in the prediction.
    """

    index: int
    src: int
    dst: int
    nbytes: int
    deps: tuple[int, ...]
    phase: int


def ring_plan(p: int, model_bytes: int) -> list[Transfer]:
    """Ring all-reduce: reduce-scatter then all-gather, ``2(p-1)`` steps.

    At step ``s`` rank ``r`` sends one chunk (``model_bytes / p``, rounded up) to rank
    ``r+1 mod p``, after having received rank ``r-1``'s chunk of step ``s-1``.
    Transfer index ``s * p + r``.
    """
    _check_p(p, 2)
    chunk = math.ceil(model_bytes / p)
    out = []
    for s in range(2 * (p - 1)):
        for r in range(p):
            deps = () if s == 0 else ((s - 1) * p + (r - 1) % p,)
            out.append(Transfer(s * p + r, r, (r + 1) % p, chunk, deps, s))
    return out


def tree_plan(p: int, model_bytes: int) -> list[Transfer]:
    """Binary-tree all-reduce rooted at rank 0 (children of ``i``: ``2i+1``, ``2i+2``).

    Reduce: every rank sends the whole model to its parent once it has its children's;
    broadcast: the parent sends the result to each child once it has it. Phases follow the
    tree's depth: the deepest reduce first, the deepest broadcast last.
    """
    _check_p(p, 2)
    depth = [0] * p
    for i in range(1, p):
        depth[i] = depth[(i - 1) // 2] + 1
    dmax = max(depth)
    out: list[Transfer] = []
    up: dict[int, int] = {}  # rank -> index of its reduce transfer
    for i in sorted(range(1, p), key=lambda i: -depth[i]):
        kids = [c for c in (2 * i + 1, 2 * i + 2) if c < p]
        t = Transfer(
            len(out), i, (i - 1) // 2, model_bytes, tuple(up[c] for c in kids), dmax - depth[i]
        )
        up[i] = t.index
        out.append(t)
    down: dict[int, int] = {}
    for i in sorted(range(1, p), key=lambda i: depth[i]):
        parent = (i - 1) // 2
        if parent == 0:
            deps = tuple(up[c] for c in (1, 2) if c < p)
        else:
            deps = (down[parent],)
        t = Transfer(len(out), parent, i, model_bytes, deps, dmax + depth[i] - 1)
        down[i] = t.index
        out.append(t)
    return out


def parameter_server_plan(p: int, model_bytes: int) -> list[Transfer]:
    """Parameter server at rank 0: every worker pushes its gradient (the whole model), the
    server sends the updated model back to each once it has all of them. Two phases."""
    _check_p(p, 2)
    push = [Transfer(w - 1, w, 0, model_bytes, (), 0) for w in range(1, p)]
    deps = tuple(t.index for t in push)
    pull = [Transfer(p - 2 + w, 0, w, model_bytes, deps, 1) for w in range(1, p)]
    return push + pull


_PLANS = {"ring": ring_plan, "tree": tree_plan, "parameter_server": parameter_server_plan}


def collective_plan(algorithm: str, p: int, model_bytes: int) -> list[Transfer]:
    """The plan of one iteration of ``algorithm`` (one of :data:`ALGORITHMS`)."""
    try:
        fn = _PLANS[algorithm]
    except KeyError:
        from meshemu.errors import ProfileError, choices_message

        raise ProfileError(choices_message("algorithm", algorithm, ALGORITHMS)) from None
    return fn(p, model_bytes)


def _check_p(p: int, lo: int) -> None:
    if p < lo:
        raise ValueError(f"a collective needs at least {lo} nodes; got {p}")


def n_fragments(nbytes: int, payload: int = MAX_PAYLOAD) -> int:
    """Packets a message of ``nbytes`` payload bytes needs (at least one)."""
    return max(1, math.ceil(nbytes / payload))


def wire_bytes(nbytes: int, payload: int = MAX_PAYLOAD) -> int:
    """Bytes a message puts on each link: payload plus per-packet headers (Ethernet incl.)."""
    return nbytes + n_fragments(nbytes, payload) * PER_PACKET_WIRE_BYTES


def transfer_time_s(
    delay_s: float,
    nbytes: int,
    rate_bps: float,
    hop_rates_bps: Sequence[float] = (),
    overhead_s: float = OVERHEAD_S,
) -> float:
    """Alpha-beta time of one message (see the module docstring).

    Parameters
    ----------
    delay_s : float
        Path propagation delay.
    nbytes : int
        Payload bytes (headers are added by :func:`wire_bytes`).
    rate_bps : float
        Rate the message is sent at (pacing or fair share, whichever is lower).
    hop_rates_bps : sequence of float
        Rate of every link on the path (store-and-forward of the last frame); 0/inf:
        no serialisation.
    """
    t = overhead_s + delay_s + wire_bytes(nbytes) * 8.0 / rate_bps
    frame = min(FULL_FRAME_BYTES, nbytes + PER_PACKET_WIRE_BYTES)
    for r in hop_rates_bps:
        if r and math.isfinite(r):
            t += frame * 8.0 / r
    return t


def fair_share_rates(
    plan: Sequence[Transfer],
    paths: Sequence[Sequence[int] | None],
    link_rate_bps: dict[int, float],
    pace_bps: Sequence[float] | np.ndarray,
) -> np.ndarray:
    """Rate each transfer gets: ``min(pace, min over its links of rate / sharers)``.

    Parameters
    ----------
    plan : sequence of Transfer
    paths : sequence of (sequence of link ids) or None
        Links each transfer crosses (None: unreachable; its rate is 0).
    link_rate_bps : dict
        Rate of each link id (0 or inf: unlimited).
    pace_bps : sequence of float
        The rate each transfer is paced at.

    Returns
    -------
    ndarray of float, shape (len(plan),)
        Sharing counts the transfers *of the same phase* crossing a link (in one direction
        or the other: the shaper serialises each direction separately, so this is a
        conservative count).
    """
    share: dict[tuple[int, int], int] = {}
    for t, links in zip(plan, paths):
        for lk in links or ():
            share[(t.phase, lk)] = share.get((t.phase, lk), 0) + 1
    out = np.zeros(len(plan))
    for i, (t, links) in enumerate(zip(plan, paths)):
        if links is None:
            continue
        r = float(pace_bps[i])
        for lk in links:
            lr = link_rate_bps.get(lk, math.inf)
            if lr and math.isfinite(lr):
                r = min(r, lr / share[(t.phase, lk)])
        out[i] = r
    return out


def predict_iteration_s(
    plan: Sequence[Transfer],
    delay_s: Sequence[float],
    rate_bps: Sequence[float] | np.ndarray,
    hop_rates_bps: Sequence[Sequence[float]] | None = None,
    overhead_s: float = OVERHEAD_S,
) -> float:
    """Alpha-beta time of one iteration: sum over phases of the slowest transfer.

    Returns ``nan`` when a transfer has no path (rate 0 or delay nan).
    """
    slowest: dict[int, float] = {}
    for i, t in enumerate(plan):
        if not rate_bps[i] > 0 or not math.isfinite(delay_s[i]):
            return math.nan
        hops = hop_rates_bps[i] if hop_rates_bps is not None else ()
        x = transfer_time_s(delay_s[i], t.nbytes, rate_bps[i], hops, overhead_s)
        slowest[t.phase] = max(slowest.get(t.phase, 0.0), x)
    return float(sum(slowest.values()))


def critical_path_s(
    plan: Sequence[Transfer],
    delay_s: Sequence[float],
    rate_bps: Sequence[float] | np.ndarray,
    hop_rates_bps: Sequence[Sequence[float]] | None = None,
    overhead_s: float = OVERHEAD_S,
) -> float:
    """Alpha-beta time of one iteration along the plan's dependencies (longest path).

    Every transfer starts when the transfers it depends on have arrived (all dep-free ones
    at 0) and lasts :func:`transfer_time_s`. Equal to :func:`predict_iteration_s` when the
    transfers of a phase are alike; shorter when they differ (a ring's chain of
    dependencies does not take the slowest transfer at every step). ``nan`` when a
    transfer has no path.
    """
    done: dict[int, float] = {}
    for i, t in sorted(enumerate(plan), key=lambda it: it[1].index):
        if not rate_bps[i] > 0 or not math.isfinite(delay_s[i]):
            return math.nan
        hops = hop_rates_bps[i] if hop_rates_bps is not None else ()
        begin = max((done[d] for d in t.deps), default=0.0)
        done[t.index] = begin + transfer_time_s(delay_s[i], t.nbytes, rate_bps[i], hops, overhead_s)
    return max(done.values(), default=0.0)


def poisson_arrivals(
    rate_per_s: float, duration_s: float, seed: int | np.random.Generator
) -> np.ndarray:
    """Arrival times (s, ascending, in ``[0, duration_s)``) of a Poisson process.

    Exponential inter-arrival times with mean ``1/rate_per_s`` from a seeded generator, so
    the same seed gives the same schedule.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if rate_per_s <= 0 or duration_s <= 0:
        return np.zeros(0)
    n = int(rate_per_s * duration_s + 10 * math.sqrt(rate_per_s * duration_s) + 10)
    t = np.cumsum(rng.exponential(1.0 / rate_per_s, n))
    while t[-1] < duration_s:  # practically never
        t = np.concatenate([t, t[-1] + np.cumsum(rng.exponential(1.0 / rate_per_s, n))])
    return t[t < duration_s]


def replay_schedule(
    times_s: Sequence[float], ip_bytes: Sequence[int], duration_s: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (from the first packet) and IP sizes of a capture's packets to resend.

    Sizes are clipped to what an agent packet can be (header included, at most
    :data:`meshemu.traffic.header.MAX_IP_BYTES`); packets past ``duration_s`` are dropped.
    Out-of-order timestamps are sorted.
    """
    from meshemu.traffic.header import HEADER_BYTES, IP_UDP_BYTES

    t = np.asarray(times_s, dtype=float)
    s = np.asarray(ip_bytes, dtype=np.int64)
    if t.size == 0:
        return t, s
    order = np.argsort(t, kind="stable")
    t = t[order] - t[order][0]
    s = np.clip(s[order], IP_UDP_BYTES + HEADER_BYTES, MAX_IP_BYTES)
    if duration_s is not None:
        keep = t < duration_s
        t, s = t[keep], s[keep]
    return t, s


def bulk_interval_s(rate_mbps: float, ip_bytes: int = MAX_IP_BYTES) -> float:
    """Time between packets of a constant-rate flow (the rate counts Ethernet frames)."""
    return (ip_bytes + ETH_BYTES) * 8.0 / (rate_mbps * 1e6)
