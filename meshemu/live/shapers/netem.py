"""The ``netem`` shaper: kernel shaping with a netem root qdisc on each end of a veth pair.

A veth pair goes straight between the two nodes (``ip`` commands built by :func:`veth_cmd`)
and each end gets a ``netem`` root qdisc holding delay, rate, queue limit and loss, set over
rtnetlink by :func:`netem_qdisc_msg` (the equivalent of the ``tc`` command
:func:`netem_qdisc_cmd`) and changed in place (``tc qdisc change``) as the links change.
Needs a kernel with ``sch_netem`` (see :func:`meshemu.live.shapers.netem_available`).
"""

from __future__ import annotations

import math
import os
import socket
from collections import defaultdict
from collections.abc import Iterable, Sequence

from meshemu.errors import CommandError, ShaperError, choices_message
from meshemu.linux import commands, ifaces, netlink
from meshemu.linux.ifaces import softnet_dropped
from meshemu.linux.limits import require_root, room_for_fds
from meshemu.linux.netns import in_namespaces
from meshemu.linux.pmqos import CpuLatencyRequest
from meshemu.live.shapers.base import (
    WORKER_LINK,
    GuardRecord,
    LinkEnds,
    LinkParams,
    LinkShaper,
    veth_cmd,
)
from meshemu.spec.linkmodel import DirectionModel

#: netem: packet size (bytes) used to turn a link's bandwidth-delay product into packets.
NETEM_BDP_PACKET_BYTES = 1500
#: netem: packet rate (pps) assumed for links without a rate limit, to size the qdisc for the
#: packets that are in propagation delay.
NETEM_UNLIMITED_PPS = 100_000
#: ``tc qdisc`` actions and whether each creates the qdisc (iproute2 tc/tc_qdisc.c).
QDISC_ACTIONS = {"add": True, "change": False}


# ---- pure command builders (unit-tested) --------------------------------------------------
def _fmt_us(seconds: float) -> str:
    """Seconds as tc's microsecond syntax with ns resolution ("12345.678us")."""
    return f"{seconds * 1e6:.3f}us"


def netem_limit(params: LinkParams, model: DirectionModel | None = None) -> int:
    """netem ``limit`` (packets) for a link.

    netem's limit counts every packet inside the qdisc, including those only waiting out the
    propagation delay, whereas :attr:`LinkParams.queue_packets` is the transmit queue. So the
    limit is the queue plus the packets one bandwidth-delay product holds
    (:data:`NETEM_BDP_PACKET_BYTES`-byte packets; :data:`NETEM_UNLIMITED_PPS` when unlimited).
    """
    delay = params.delay_s + (model.max_s if model is not None else 0.0)
    if params.unlimited:
        in_flight = delay * NETEM_UNLIMITED_PPS
    else:
        in_flight = params.rate_bps * delay / (8 * NETEM_BDP_PACKET_BYTES)
    return int(min(params.queue_packets + math.ceil(in_flight), 2**32 - 1))


def netem_access(
    params: LinkParams, model: DirectionModel | None
) -> tuple[float, float, tuple[int, int] | None, tuple[float, float, float, float] | None]:
    """netem's share of one direction's access model (:mod:`meshemu.spec.linkmodel`): the
    delay and its jitter, the slots and the Gilbert-Elliott loss.

    netem's own features carry the model:

    - the grant: ``delay D J`` with ``D`` = propagation + constant + the grant's mean and
      ``J`` its half range; netem without a distribution table draws the delay uniformly
      from ``[D - J, D + J]``, the grant's range. netem keeps its queue in send-time order,
      so packets closer together than the grant range may be reordered, where the delay
      line keeps a direction FIFO;
    - the frame: ``slot 0 FRAME``: packets leave only at slot starts; after a packet's delay
      the wait is uniform in ``[0, FRAME]`` when the delay is at least a frame (always, for a
      GSL of 1.8 ms or more) and packets are farther apart than a frame. Its slots start
      from the queue's own clock rather than a UTC-aligned frame grid;
    - ``loss gemodel`` for the Gilbert-Elliott loss, with the link's uniform loss folded
      into both states' loss (``1 - (1 - state loss)(1 - loss)``: netem has one loss model
      at a time, and losing a packet in either of two independent draws is the same). A
      link that is down is ``loss 100%`` without Gilbert-Elliott.

    Returns (delay_s, jitter_s, slot (min_ns, max_ns) or None, gemodel or None).
    """
    if model is None:
        return params.delay_s, 0.0, None, None
    half = (model.grant_max_s - model.grant_min_s) / 2
    delay = params.delay_s + model.constant_s + model.grant_min_s + half
    slot = (0, round(model.frame_s * 1e9)) if model.frame_s else None
    ge = None
    if model.gilbert_elliott and params.up:
        u = params.loss
        ge = (
            model.ge_p,
            model.ge_r,
            1 - (1 - model.ge_loss_bad) * (1 - u),
            1 - (1 - model.ge_loss_good) * (1 - u),
        )
    return delay, half, slot, ge


def _pct(x: float) -> str:
    return f"{x * 100:.6g}%"


def netem_args(params: LinkParams, model: DirectionModel | None = None) -> list[str]:
    """The ``netem ...`` part of a tc qdisc command for ``params`` on the end whose egress
    is the direction ``model`` describes (the access model, :func:`netem_access`).

    Every option is always given so that ``tc qdisc change`` sets all of them (netem keeps an
    omitted ``rate`` from before). ``up=False`` becomes ``loss 100%``.

    The rate goes into netem's own ``rate`` rather than an htb child because one qdisc then
    holds delay, rate and loss, so a single ``tc qdisc change`` updates them together, in
    place, without a traffic blip; netem computes each packet's departure as
    ``max(now, last departure) + len/rate + delay``, which is exactly the link model of the
    userspace delay line; it halves the qdisc count for 13,000 interfaces; and htb would
    need a per-class quantum tuned to the rate. ``rate 0bit`` means unlimited to netem.
    """
    rate = 0 if params.unlimited else int(round(params.rate_bps))
    loss = 100.0 if not params.up else params.loss * 100.0
    delay, jitter, slot, ge = netem_access(params, model)
    out = ["netem", "delay", _fmt_us(delay)] + ([_fmt_us(jitter)] if jitter else [])
    out += ["rate", f"{rate}bit", "limit"]
    out.append(str(netem_limit(params, model)))
    if slot is not None:
        out += ["slot", _fmt_us(slot[0] / 1e9), _fmt_us(slot[1] / 1e9)]
    if ge is not None:
        # iproute2 stores its third number in tc_netem_gemodel.h, which the kernel takes as
        # the bad state's *delivery* probability (meshemu.linux.netlink.netem_qdisc_msg)
        p, r, bad, good = ge
        return out + ["loss", "gemodel", _pct(p), _pct(r), _pct(1 - bad), _pct(good)]
    return out + ["loss", "random", f"{loss:.6g}%"]


def netem_qdisc_cmd(
    dev: str, params: LinkParams, action: str = "add", model: DirectionModel | None = None
) -> list[str]:
    """A ``tc`` command (without the leading ``tc``) setting the netem root qdisc of ``dev``.

    Parameters
    ----------
    dev : str
        Interface name.
    params : LinkParams
    action : {"add", "change"}
        ``add`` when creating the link, ``change`` for live updates (never delete + add).
    model : DirectionModel or None
        The access model of ``dev``'s egress direction (``params.ab`` on the ``a`` end,
        ``params.ba`` on the ``b`` end).

    Returns
    -------
    list of str
        e.g. ``["qdisc", "change", "dev", "isl3", "root", "handle", "1:", "netem", ...]``;
        ``" ".join(...)`` is a ``tc -batch`` line.
    """
    _check_action(action)
    return ["qdisc", action, "dev", dev, "root", "handle", "1:", *netem_args(params, model)]


def netem_create_cmds(
    links: Iterable[tuple[LinkEnds, LinkParams]],
) -> tuple[list[list[str]], dict[int, list[list[str]]]]:
    """Commands creating netem links: ``ip`` commands for the root namespace and ``tc``
    commands per node namespace (keyed by pid)."""
    ip_cmds = []
    tc_cmds: dict[int, list[list[str]]] = defaultdict(list)
    for ends, params in links:
        ip_cmds.append(veth_cmd(ends.if_a, ends.pid_a, ends.if_b, ends.pid_b))
        tc_cmds[ends.pid_a].append(netem_qdisc_cmd(ends.if_a, params, "add", params.ab))
        tc_cmds[ends.pid_b].append(netem_qdisc_cmd(ends.if_b, params, "add", params.ba))
    return ip_cmds, dict(tc_cmds)


def netem_change_cmds(changes: Iterable[tuple[LinkEnds, LinkParams]]) -> dict[int, list[list[str]]]:
    """``tc qdisc change`` commands per node namespace (pid) for live updates."""
    out: dict[int, list[list[str]]] = defaultdict(list)
    for ends, params in changes:
        out[ends.pid_a].append(netem_qdisc_cmd(ends.if_a, params, "change", params.ab))
        out[ends.pid_b].append(netem_qdisc_cmd(ends.if_b, params, "change", params.ba))
    return dict(out)


def _check_action(action: str) -> None:
    if action not in QDISC_ACTIONS:
        raise ShaperError(choices_message("tc qdisc action", action, list(QDISC_ACTIONS)))


def netem_qdisc_msg(
    ifindex: int,
    params: LinkParams,
    action: str = "add",
    seq: int = 0,
    model: DirectionModel | None = None,
) -> bytes:
    """The ``RTM_NEWQDISC`` netlink message equivalent to :func:`netem_qdisc_cmd`.

    Same options as ``tc qdisc {add|change} dev IF root handle 1: netem delay D rate R limit L
    loss random P`` (encoded by :func:`meshemu.linux.netlink.netem_qdisc_msg`); ``up=False``
    is loss 1. ``change`` carries no create flag, so the kernel changes the existing qdisc in
    place (``netem_change``). The shaper sends these rather than running ``tc``: a process
    per namespace per step costs ~5 ms each on hardware (4.5 s per step for 68 nodes under
    qemu TCG), a netlink message some microseconds.

    Parameters
    ----------
    ifindex : int
        Interface index in the namespace the message is sent to.
    params : LinkParams
    action : {"add", "change"}
    seq : int
        Netlink sequence number (failures are reported by it).
    model : DirectionModel or None
        The access model of the interface's egress direction (:func:`netem_access`).
    """
    _check_action(action)
    delay, jitter, slot, ge = netem_access(params, model)
    return netlink.netem_qdisc_msg(
        ifindex,
        int(round(delay * 1e9)),
        0 if params.unlimited else int(round(params.rate_bps)) // 8,
        netem_limit(params, model),
        1.0 if not params.up else params.loss,
        QDISC_ACTIONS[action],
        seq,
        slot_ns=slot,
        gemodel=ge,
        jitter_ns=int(round(jitter * 1e9)),
    )


def parse_netem_stats(data: bytes) -> tuple[dict[int, tuple[int, int, int]], bool]:
    """Root netem qdiscs in ``RTM_NEWQDISC`` messages (a ``RTM_GETQDISC`` dump):
    ifindex -> (packets, bytes, drops) from ``TCA_STATS`` (``struct tc_stats``); and
    whether ``NLMSG_DONE`` was among them. ShaperError on ``NLMSG_ERROR``."""
    try:
        qdiscs, done = netlink.parse_qdisc_dump(data)
    except CommandError as exc:
        raise ShaperError(f"{exc.cmd} failed: {exc.stderr}") from None
    return (
        {
            ifindex: stats
            for ifindex, parent, kind, stats in qdiscs
            if parent == netlink.TC_H_ROOT and kind == "netem" and stats is not None
        },
        done,
    )


def _stats_part(data: bytes) -> tuple[list[dict[int, tuple[int, int, int]]], bool]:
    stats, done = parse_netem_stats(data)
    return [stats], done


def qdisc_stats(sock: netlink.Netlink) -> dict[int, tuple[int, int, int]]:
    """ifindex -> (packets, bytes, drops) of every root netem qdisc in ``sock``'s namespace."""
    out: dict[int, tuple[int, int, int]] = {}
    for part in sock.dump(netlink.qdisc_dump_request(), _stats_part):
        out.update(part)
    return out


# ---- the shaper ---------------------------------------------------------------------------
class NetemShaper(LinkShaper):
    """Kernel shaping: a veth pair between the two nodes, a netem root qdisc on each end.

    The veth pairs are created by one ``ip -batch`` in the root namespace
    (``ip link add ... netns PID``). Everything after that goes over rtnetlink, without a
    process per namespace: for each node namespace the shaper opens one ``NETLINK_ROUTE``
    socket there (from a thread that ``setns``-es in, :func:`meshemu.linux.netns.in_namespaces`)
    and keeps it for its lifetime, and sends :func:`netem_qdisc_msg` messages on it, a
    whole step's worth per ``sendmsg``. Updates are ``RTM_NEWQDISC`` without a create flag
    (``tc qdisc change``): the qdisc, its handle, counters and queued packets stay.
    """

    name = "netem"
    has_guard = True

    def __init__(self, run_id: str):
        super().__init__(run_id)
        self._nl: dict[int, netlink.Netlink] = {}  # pid -> socket in its namespace
        self._ifindex: dict[tuple[int, str], int] = {}  # (pid, ifname) -> ifindex
        self._seq = 0
        self._softnet: int | None = softnet_dropped()
        # netem's departures are hrtimer wake-ups too: no slow idle exits while links exist
        self._cpu_latency = CpuLatencyRequest(0)

    def _open_namespaces(self, ends: Sequence[LinkEnds]) -> None:
        """Open a netlink socket in each new namespace, look up the interfaces' indexes
        and bring the ``b`` ends up (``ip link add`` brought the ``a`` ends up)."""
        wanted: dict[int, list[tuple[str, bool]]] = defaultdict(list)
        for e in ends:
            wanted[e.pid_a].append((e.if_a, False))
            wanted[e.pid_b].append((e.if_b, True))
        pids = list(wanted)
        new = [p for p in pids if p not in self._nl]
        room_for_fds(len(new), "the netem shaper")

        def work(i: int, pid: int) -> tuple[netlink.Netlink | None, list[int]]:
            sock = netlink.Netlink(f"netns of pid {pid}") if pid not in self._nl else None
            idx = []
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for ifname, up in wanted[pid]:
                    try:
                        idx.append(socket.if_nametoindex(ifname))
                        if up:
                            ifaces.set_up(s, ifname)
                    except OSError as exc:
                        if sock is not None:
                            sock.close()
                        raise CommandError(
                            f"{'ip link set up' if up else 'if_nametoindex'} "
                            f"{ifname} (netns of pid {pid})",
                            exc.errno or 1,
                            exc.strerror or str(exc),
                        ) from None
            return sock, idx

        results = in_namespaces(pids, work)
        for pid, (sock, idx) in zip(pids, results):
            if sock is not None:
                self._nl[pid] = sock
            for (ifname, _), k in zip(wanted[pid], idx):
                self._ifindex[(pid, ifname)] = k

    def _send_qdiscs(
        self, items: Iterable[tuple[int, str, LinkParams, DirectionModel | None]], action: str
    ) -> None:
        """Add or change the netem qdisc of each ``(pid, ifname, params, model)`` (``model``:
        the access model of the interface's egress), one netlink batch per namespace.
        CommandError (quoting the equivalent ``tc`` command) on failure."""
        per_pid: dict[int, list[bytes]] = defaultdict(list)
        what: dict[int, tuple[int, str, LinkParams, DirectionModel | None]] = {}
        for pid, ifname, params, model in items:
            self._seq = (self._seq + 1) & 0x7FFFFFFF
            what[self._seq] = (pid, ifname, params, model)
            per_pid[pid].append(
                netem_qdisc_msg(self._ifindex[(pid, ifname)], params, action, self._seq, model)
            )
        errors = []
        for pid, msgs in per_pid.items():
            errors += self._nl[pid].send_batch(netlink.pack_messages(msgs))
        if errors:
            seq, err, text = errors[0]
            pid, ifname, params, model = what[seq]
            raise CommandError(
                [
                    "nsenter",
                    "-t",
                    str(pid),
                    "-n",
                    "tc",
                    *netem_qdisc_cmd(ifname, params, action, model),
                ],
                err,
                f"{os.strerror(err)}{': ' + text if text else ''}"
                f"{f' (and {len(errors) - 1} more)' if len(errors) > 1 else ''}",
            )

    def create_links(self, links: Sequence[tuple[LinkEnds, LinkParams]]) -> None:
        require_root("the netem shaper")
        links = list(links)
        self._check_new(links)
        if not links:
            return
        self._cpu_latency.hold()
        ip_cmds, _ = netem_create_cmds(links)
        commands.batch("ip", ip_cmds)
        for ends, params in links:
            self._links[ends.link_id] = (ends, params)
        self._open_namespaces([e for e, _ in links])
        self._send_qdiscs(
            (
                (pid, ifn, p, m)
                for e, p in links
                for pid, ifn, m in ((e.pid_a, e.if_a, p.ab), (e.pid_b, e.if_b, p.ba))
            ),
            "add",
        )

    def update(self, changes: Sequence[tuple[int, LinkParams]]) -> None:
        changes = list(changes)
        self._check_changes(changes)
        if not changes:
            return
        items = []
        for i, p in changes:
            e = self._links[i][0]
            items += [(e.pid_a, e.if_a, p, p.ab), (e.pid_b, e.if_b, p, p.ba)]
        self._send_qdiscs(items, "change")
        for i, p in changes:
            self._links[i] = (self._links[i][0], p)

    def remove_links(self, link_ids: Sequence[int]) -> None:
        ids = self._known(link_ids)
        by_pid: dict[int, list] = defaultdict(list)
        for i in ids:
            e = self._links[i][0]
            by_pid[e.pid_a].append(["link", "del", e.if_a])
        commands.parallel(lambda pid, c: commands.batch("ip", c, pid=pid), by_pid.items())
        for i in ids:
            e = self._links[i][0]
            self._ifindex.pop((e.pid_a, e.if_a), None)
            self._ifindex.pop((e.pid_b, e.if_b), None)
            del self._links[i]

    def counters(self) -> dict[int, tuple[int, int, int]]:
        """Per link, both ends' netem qdisc statistics summed, read with one
        ``RTM_GETQDISC`` dump per node namespace (``tc -s qdisc show``, without the
        process): called every step by the traffic runtime."""
        by_pid: dict[int, dict[int, int]] = defaultdict(dict)  # pid -> ifindex -> link
        for lid, (e, _) in self._links.items():
            for pid, ifn in ((e.pid_a, e.if_a), (e.pid_b, e.if_b)):
                k = self._ifindex.get((pid, ifn))
                if k is not None:
                    by_pid[pid][k] = lid
        out: dict[int, list[int]] = {lid: [0, 0, 0] for lid in self._links}
        for pid, links in by_pid.items():
            for ifindex, stats in qdisc_stats(self._nl[pid]).items():
                owner = links.get(ifindex)
                if owner is not None:
                    c = out[owner]
                    c[0] += stats[0]
                    c[1] += stats[1]
                    c[2] += stats[2]
        return {k: (v[0], v[1], v[2]) for k, v in out.items()}

    def guard(self) -> list[GuardRecord]:
        """The kernel's part of the fidelity guard: packets it dropped since the last call
        because its input backlog was full (host-wide, :func:`softnet_dropped`). netem does
        not expose how late it sends, so there are no per-link lateness records."""
        now = softnet_dropped()
        last, self._softnet = self._softnet, now
        if last is None or now <= last:
            return []
        return [GuardRecord(WORKER_LINK, -1, 0, 0, 0, behind_drops=now - last)]

    def close(self) -> None:
        self._cpu_latency.release()
        socks, self._nl = list(self._nl.values()), {}
        self._ifindex.clear()
        for sock in socks:
            sock.close()
        if not self._links:
            return
        by_pid: dict[int, list] = defaultdict(list)
        for e, _ in self._links.values():
            # a veth dies with either namespace; delete it from whichever side still exists
            for pid, ifn in ((e.pid_a, e.if_a), (e.pid_b, e.if_b)):
                if os.path.exists(f"/proc/{pid}/ns/net"):
                    by_pid[pid].append(["link", "del", ifn])
                    break
        self._links.clear()
        errors = []

        def delete(pid: int, cmds: list) -> None:
            p = commands.batch("ip", cmds, pid=pid, force=True, check=False)
            assert p is not None
            real = [
                ln
                for ln in p.stderr.splitlines()
                if ln.strip()
                and "Cannot find device" not in ln
                and not ln.startswith("Command failed")
            ]
            if p.returncode != 0 and real:
                errors.append(
                    CommandError(
                        ["nsenter", "-t", str(pid), "-n", "ip", "-batch"],
                        p.returncode,
                        "\n".join(real),
                    )
                )

        commands.parallel(delete, by_pid.items())
        if errors:
            raise errors[0]
