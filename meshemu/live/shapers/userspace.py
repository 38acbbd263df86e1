"""The ``userspace`` shaper: each link through a delay-line process, on any kernel.

A link A<->B becomes ``A-eth <-veth-> dl<k>a`` and ``dl<k>b <-veth-> B-eth``, with the
delay line's ends in a namespace of the shaper's own, ``meshemu-<run_id>-dl``, where
delay-line workers forward each frame after the link's delay and transmission time
(:mod:`meshemu.live.delayline`). The shaper speaks to them over their stdin/stdout with the
delay line's binary control messages.

Two workers implement the same command line and protocol: the compiled one,
``meshemu/live/dlc/meshemu-delayline`` (C, built by ``install.sh``), used when it is built,
and the Python reference ``python -m meshemu.live.delayline``, used otherwise (with one
warning). ``MESHEMU_DELAYLINE=c`` or ``=python`` (or the shaper's ``delayline`` argument)
forces one (:func:`resolve_delayline`).
"""

from __future__ import annotations

import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO

from meshemu.errors import EmulationError, LinkParamsError, ShaperError, choices_message
from meshemu.linux import commands, ifaces, procs
from meshemu.linux.limits import require_root
from meshemu.live import delayline as dl
from meshemu.live import tunnels
from meshemu.live.shapers.base import (
    DL_SUFFIX,
    NS_PREFIX,
    WORKER_LINK,
    GuardRecord,
    LinkEnds,
    LinkParams,
    LinkShaper,
    veth_cmd,
)
from meshemu.live.tunnels import CutLink

log = logging.getLogger(__name__)

#: Sysctls of the delay line's namespace, written before its links exist.
NO_IPV6 = ("net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
#: Seconds to wait for a delay-line worker to answer a control message.
CONTROL_TIMEOUT_S = 60.0
#: The module the Python delay-line workers run (``python -m ...``); their argv names it.
DELAYLINE_MODULE = "meshemu.live.delayline"
#: The compiled worker's file name (its argv[0]), in :data:`DELAYLINE_C_DIR`.
DELAYLINE_BINARY = "meshemu-delayline"
#: Sources of the compiled worker, where ``install.sh`` (``make -C``) builds it.
DELAYLINE_C_DIR = Path(dl.__file__).resolve().parent / "dlc"
#: Environment variable forcing a delay-line implementation: ``c`` or ``python``.
DELAYLINE_ENV = "MESHEMU_DELAYLINE"
#: The delay-line implementations (``auto``: ``c`` when built, else ``python``).
DELAYLINE_IMPLS = ("auto", "c", "python")
_BUILD_HINT = "build it with ./install.sh (or: make -C meshemu/live/dlc)"
_warned: set[str] = set()


def delayline_binary() -> Path | None:
    """The compiled delay-line worker if it is built (an executable file), else None."""
    p = DELAYLINE_C_DIR / DELAYLINE_BINARY
    return p if p.is_file() and os.access(p, os.X_OK) else None


def _warn_once(key: str, msg: str, *args: object) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(msg, *args)


def resolve_delayline(requested: str | None = None) -> str:
    """Which delay-line worker a shaper runs: ``"c"`` or ``"python"``.

    Parameters
    ----------
    requested : str, optional
        ``auto``, ``c`` or ``python``; None: the :data:`DELAYLINE_ENV` environment variable,
        else ``auto`` (the compiled worker when it is built, else the Python one with one
        logged warning saying how to build it).

    Raises
    ------
    ShaperError
        An unknown name, or ``c`` when the compiled worker is not built.
    """
    name = requested if requested is not None else os.environ.get(DELAYLINE_ENV) or "auto"
    if name not in DELAYLINE_IMPLS:
        where = "delayline" if requested is not None else f"{DELAYLINE_ENV}"
        raise ShaperError(choices_message(f"{where} implementation", name, DELAYLINE_IMPLS))
    binary = delayline_binary()
    if name == "c" and binary is None:
        raise ShaperError(
            f"the compiled delay line {DELAYLINE_C_DIR / DELAYLINE_BINARY} is not built; "
            f"{_BUILD_HINT}, or use the Python one ({DELAYLINE_ENV}=python)"
        )
    if name == "python":
        return "python"
    if binary is None:
        _warn_once(
            "missing",
            "the compiled delay line %s is not built, so the userspace shaper uses the much "
            "slower Python delay line; %s",
            DELAYLINE_C_DIR / DELAYLINE_BINARY,
            _BUILD_HINT,
        )
        return "python"
    src = DELAYLINE_C_DIR / "delayline.c"
    if src.exists() and src.stat().st_mtime > binary.stat().st_mtime:
        _warn_once(
            "stale", "the compiled delay line %s is older than its source; %s", binary, _BUILD_HINT
        )
    return "c"


def delayline_argv(
    impl: str, run_id: str, workers: int, worker: int, gso: bool = False
) -> list[str]:
    """Command line of one delay-line worker (``impl`` ``"c"`` or ``"python"``)."""
    if impl == "c":
        head = [str(DELAYLINE_C_DIR / DELAYLINE_BINARY)]
    else:
        head = [sys.executable, "-m", DELAYLINE_MODULE]
    tail = ["--gso"] if gso else []
    return [*head, "--run-id", run_id, "--workers", str(workers), "--worker", str(worker), *tail]


#: With GSO passthrough a super-frame leaves whole when its last segment would have, so its
#: first segment arrives up to (segments - 1) frames' serialisation late; the nodes' ends
#: cap a super-frame at this much serialisation time (TCP itself sizes its TSO bursts to
#: about 1 ms of its pacing rate: tcp_tso_autosize in net/ipv4/tcp_output.c).
GSO_BURST_S = 100e-6
#: The most segments in a super-frame (a 64 KiB TSO burst is about 45 of 1,448 bytes).
GSO_MAX_SEGS = 64
_MTU_FRAME_BITS = 1514 * 8


def gso_max_segs(params: LinkParams) -> int:
    """Segments a super-frame may carry on a link with GSO passthrough: 1 (none) on links
    with loss or an access model, whose losses are drawn per frame; else as many as
    serialise in :data:`GSO_BURST_S` at the link's rate (unlimited rate:
    :data:`GSO_MAX_SEGS`), and at most half the drop-tail queue (a super-frame takes a
    place per segment, and one longer than the queue could never enter it)."""
    if params.loss > 0 or params.ab is not None or params.ba is not None:
        return 1
    segs = GSO_MAX_SEGS
    if params.rate_bps > 0:
        segs = min(segs, int(params.rate_bps * GSO_BURST_S / _MTU_FRAME_BITS))
    return max(1, min(segs, params.queue_packets // 2))


def userspace_create_cmds(
    links: Iterable[LinkEnds], dl_ns: int | str, gso_segs: dict[int, int] | None = None
) -> list[list[str]]:
    """``ip`` commands creating the two veth pairs of each userspace-shaped link;
    ``gso_segs`` (link id -> segments) caps the super-frames the nodes' ends send."""
    out = []
    for e in links:
        for end, ifname, pid in (("a", e.if_a, e.pid_a), ("b", e.if_b, e.pid_b)):
            cmd = veth_cmd(ifname, pid, dl.dl_ifname(e.link_id, end), dl_ns)
            if gso_segs is not None:
                at = cmd.index("type")  # before it: the node's end, not the peer
                cmd[at:at] = ["gso_max_segs", str(gso_segs[e.link_id])]
            out.append(cmd)
    return out


# ---- the shaper ---------------------------------------------------------------------------
class UserspaceShaper(LinkShaper):
    """Links through delay-line processes (:mod:`meshemu.live.delayline`) in
    ``meshemu-<run_id>-dl``.

    Parameters
    ----------
    run_id : str
    workers : int
        Delay-line processes sharing the links (by ingress interface, so each direction
        belongs to one of them). The compiled worker scales with cores, but the nodes'
        own processes (traffic, iperf3) and the kernel's forwarding need CPU too: leave
        them a core (with GSO passthrough, at most one worker fewer than the CPUs; more is
        warned about: on 2 cores, 2 workers carried TCP at 2.7 Gbit/s against 4.4 with 1,
        ``benchmarks/bench_dataplane.py``; without it, 2 workers were faster for TCP, 889
        against 572 Mbit/s, and slower for floods of small frames). The Python one does not
        scale (keep 1); see ``benchmarks/bench_delayline.py``.
    delayline : str, optional
        ``auto``, ``c`` or ``python``: which worker to run (:func:`resolve_delayline`;
        default: the ``MESHEMU_DELAYLINE`` environment variable, else ``auto``).
    gso : bool, optional
        GSO passthrough (compiled worker only; None, the default: on with the compiled
        worker, off with the Python one): the nodes' ends keep their segmentation and
        checksum offloads, so a TCP burst crosses the delay line as one super-frame of up to
        :func:`gso_max_segs` segments instead of one frame per segment. Serialisation, the
        drop-tail queue and the counters still count every segment; the super-frame leaves
        when its last segment would (its first arrives up to :data:`GSO_BURST_S` late); a
        loss takes the whole super-frame (so lossy links get none).
    """

    name = "userspace"
    has_guard = True

    def __init__(
        self,
        run_id: str,
        workers: int = 1,
        delayline: str | None = None,
        gso: bool | None = None,
    ):
        super().__init__(run_id)
        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 64:
            raise ShaperError(f"workers must be an integer in 1..64; got {workers!r}")
        self.workers = workers
        #: The delay-line implementation the workers run: ``"c"`` or ``"python"``.
        self.delayline = resolve_delayline(delayline)
        if gso and self.delayline != "c":
            raise ShaperError(
                "GSO passthrough needs the compiled delay line (the Python one passes "
                f"frames of at most one MTU); {_BUILD_HINT}, or turn GSO off"
            )
        #: GSO passthrough on (the compiled worker's ``--gso``).
        self.gso = self.delayline == "c" if gso is None else bool(gso)
        self._gso_segs: dict[int, int] = {}  # link id -> its nodes' ends' gso_max_segs
        self._gso_warned: set[int] = set()
        self.netns = f"{NS_PREFIX}{run_id}{DL_SUFFIX}"
        self._procs: list[subprocess.Popen[bytes]] = []
        self._closed = False
        self._lock = threading.Lock()

    # -- delay-line processes ----------------------------------------------------------------
    def _start(self) -> None:
        if self._procs:
            return
        if self._closed:
            raise ShaperError(f"shaper {self.run_id!r} is closed; make a new one")
        require_root("the userspace shaper")
        cpus = len(os.sched_getaffinity(0))
        if self.gso and self.workers > 1 and self.workers >= cpus:
            log.warning(
                "%d delay-line workers on %d CPU(s) leave none for the nodes' processes and "
                "the kernel's forwarding, which then slow the traffic down (with GSO "
                "passthrough on 2 cores, 2 workers carried TCP at 2.7 Gbit/s against 4.4 "
                "with 1: benchmarks/bench_dataplane.py); use --shaper-workers %d",
                self.workers,
                cpus,
                max(1, cpus - 1),
            )
        commands.run(["ip", "netns", "add", self.netns])
        try:
            # the delay line's ends carry frames for a packet socket only: no IPv6 state on
            # them (link-local addresses and their routes, multicast memberships, DAD)
            commands.run(["ip", "netns", "exec", self.netns, "sysctl", "-qw", *NO_IPV6])
            for i in range(self.workers):
                cmd = [
                    "ip",
                    "netns",
                    "exec",
                    self.netns,
                    *delayline_argv(self.delayline, self.run_id, self.workers, i, self.gso),
                ]
                self._procs.append(
                    subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
                )
            for p in self._procs:
                self._read_reply(p)
        except BaseException:
            self.close()
            raise
        log.info(
            "userspace shaper: %d %s delay-line worker(s) in netns %s (pids %s)",
            self.workers,
            "compiled" if self.delayline == "c" else "Python",
            self.netns,
            [p.pid for p in self._procs],
        )

    @property
    def pids(self) -> list[int]:
        """Process ids of the delay-line workers."""
        return [p.pid for p in self._procs]

    def _read_exact(self, p: subprocess.Popen[bytes], n: int) -> bytes:
        fd = _stdout(p).fileno()
        buf = b""
        deadline = time.monotonic() + CONTROL_TIMEOUT_S
        while len(buf) < n:
            r, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(fd, n - len(buf)) if r else None
            if not chunk:
                rc = p.poll()
                why = (
                    f"exited with status {rc}"
                    if rc is not None
                    else f"did not answer within {CONTROL_TIMEOUT_S:.0f} s"
                )
                raise EmulationError(
                    f"delay-line worker (pid {p.pid}, netns {self.netns}) "
                    f"{why}; see its messages on stderr"
                )
            buf += chunk
        return buf

    def _read_reply(self, p: subprocess.Popen[bytes]) -> bytes:
        status, n = dl.HDR.unpack(self._read_exact(p, dl.HDR.size))
        payload = self._read_exact(p, n) if n else b""
        if status != dl.ST_OK:
            raise ShaperError(f"delay line (pid {p.pid}): {payload.decode(errors='replace')}")
        return payload

    def _call(self, msg: bytes) -> list[bytes]:
        with self._lock:
            for p in self._procs:
                try:
                    _stdin(p).write(msg)
                except BrokenPipeError:
                    raise EmulationError(
                        f"delay-line worker (pid {p.pid}) is gone (exit status {p.poll()})"
                    ) from None
            return [self._read_reply(p) for p in self._procs]

    # -- LinkShaper --------------------------------------------------------------------------
    def create_links(self, links: Sequence[tuple[LinkEnds, LinkParams]]) -> None:
        links = list(links)
        self._check_new(links)
        if not links:
            return
        self._start()
        dl_pid = self._procs[0].pid
        segs = {e.link_id: gso_max_segs(p) for e, p in links} if self.gso else None
        self._gso_segs.update(segs or {})
        commands.batch("ip", userspace_create_cmds((e for e, _ in links), dl_pid, segs))
        for ends, params in links:
            self._links[ends.link_id] = (ends, params)
        jobs: dict[int, list] = defaultdict(list)
        for e, _ in links:
            # the nodes' ends send into the delay line: no checksum/segmentation offload, or
            # the frames arrive with partial checksums / as 64 KiB super-frames (with GSO
            # passthrough that is the point: each frame's virtio_net_hdr says how to finish
            # it). The delay line's own ends send what its packet socket gives them.
            jobs[e.pid_a].append((e.if_a, False, not self.gso))
            jobs[e.pid_b].append((e.if_b, False, not self.gso))
            jobs[dl_pid].append((dl.dl_ifname(e.link_id, "a"), True, False))
            jobs[dl_pid].append((dl.dl_ifname(e.link_id, "b"), True, False))
        ifaces.configure_interfaces(jobs)
        self._call(dl.encode_links(dl.OP_ADD, _recs(links)))
        acc = list(_access_recs((e.link_id, p) for e, p in links if p.ab or p.ba))
        if acc:
            self._call(dl.encode_access(acc))

    def create_cut_links(self, links: Sequence[tuple[int, str, CutLink, LinkParams]]) -> None:
        """Links to another host (:mod:`meshemu.live.tunnels`), as ``(pid, ifname, cut,
        params)``: the local node's end (interface ``ifname`` in the namespace of ``pid``) is a
        veth into the delay line as for any link; the delay line's other end is the VXLAN
        tunnel to the peer host, made in this host's namespace and moved into the delay
        line's. ``cut.side`` says which end of the link the local node is."""
        links = list(links)
        ids = [c.link_id for _, _, c, _ in links]
        if len(set(ids)) != len(ids) or any(i in self._links for i in ids):
            raise LinkParamsError(f"link ids must be new and unique; got {ids[:10]}")
        if not links:
            return
        self._start()
        dl_pid = self._procs[0].pid
        cmds: list[list[str]] = []
        jobs: dict[int, list] = defaultdict(list)
        for pid, ifname, c, _ in links:
            other = "b" if c.side == "a" else "a"
            mine, theirs = dl.dl_ifname(c.link_id, c.side), dl.dl_ifname(c.link_id, other)
            cmds.append(
                ["link", "add", ifname, "netns", str(pid), "mtu", str(c.mtu), "up"]
                + ["type", "veth", "peer", "name", mine, "netns", str(dl_pid), "mtu", str(c.mtu)]
            )
            cmds.append(tunnels.vxlan_add_cmd(c))
            cmds.append(tunnels.move_cmd(c, dl_pid, theirs))
            jobs[pid].append((ifname, False, True))
            jobs[dl_pid].append((mine, True, False))
            jobs[dl_pid].append((theirs, True, False))
        commands.batch("ip", cmds)
        for pid, ifname, c, params in links:
            # (both ends named for the local node: the peer's is on the other host)
            self._links[c.link_id] = (LinkEnds(c.link_id, pid, ifname, dl_pid, ifname), params)
        ifaces.configure_interfaces(jobs)
        self._call(
            dl.encode_links(
                dl.OP_ADD,
                (
                    (c.link_id, p.delay_s, p.rate_bps, p.queue_packets, p.loss, p.up)
                    for _, _, c, p in links
                ),
            )
        )

    def update(self, changes: Sequence[tuple[int, LinkParams]]) -> None:
        if not changes:
            return
        self._check_changes(changes)
        if self.gso:
            self._warn_gso_cap(changes)
        self._call(
            dl.encode_links(
                dl.OP_UPDATE,
                ((i, p.delay_s, p.rate_bps, p.queue_packets, p.loss, p.up) for i, p in changes),
            )
        )
        links = self._links
        acc = list(
            _access_recs(
                (i, p) for i, p in changes if (p.ab, p.ba) != (links[i][1].ab, links[i][1].ba)
            )
        )
        if acc:
            self._call(dl.encode_access(acc))
        for i, p in changes:
            links[i] = (links[i][0], p)

    def _warn_gso_cap(self, changes: Sequence[tuple[int, LinkParams]]) -> None:
        """Say so (once a link) when a change makes a link's super-frames longer than
        :data:`GSO_BURST_S` allows: the cap is set on the nodes' ends when the link is made
        (the built-in scenarios keep each link's rate and loss). A link going down is no
        such change: it carries nothing until it is up again."""
        for i, p in changes:
            if not p.up:
                continue
            made = self._gso_segs.get(i, 1)
            if i not in self._gso_warned and gso_max_segs(p) < made:
                self._gso_warned.add(i)
                frame_s = _MTU_FRAME_BITS / p.rate_bps if p.rate_bps > 0 else 0.0
                log.warning(
                    "link %d: its super-frames keep up to %d segments from when it was made, "
                    "more than its new rate or loss allows (first segment up to %.0f us "
                    "late; loss taking a whole super-frame); use --shaper-gso off if that "
                    "matters",
                    i,
                    made,
                    (made - 1) * frame_s * 1e6,
                )

    def remove_links(self, link_ids: Sequence[int]) -> None:
        ids = self._known(link_ids)
        if not ids:
            return
        self._call(dl.encode_ids(dl.OP_REMOVE, ids))
        # deleting the delay line's end of a veth pair deletes the node's end too
        commands.batch(
            "ip", [["link", "del", dl.dl_ifname(i, s)] for i in ids for s in "ab"], netns=self.netns
        )
        for i in ids:
            del self._links[i]

    def counters(self) -> dict[int, tuple[int, int, int]]:
        if not self._procs:
            return {}
        out: dict[int, list[int]] = {}
        for payload in self._call(dl.HDR.pack(dl.OP_COUNTERS, 0)):
            for lid, pk, by, dr in dl.CNT_REC.iter_unpack(payload):
                c = out.setdefault(lid, [0, 0, 0])
                c[0] += pk
                c[1] += by
                c[2] += dr
        return {k: (v[0], v[1], v[2]) for k, v in out.items()}

    def guard(self) -> list[GuardRecord]:
        """:meth:`worker_guard` as the shaper interface's :class:`GuardRecord` values (the
        fidelity guard of the run, ``meshemu/live/guard.py``): a worker's ring drops become
        ``behind_drops`` of a :data:`WORKER_LINK` record."""
        out = []
        for r in self.worker_guard():
            if r.is_worker:
                out.append(
                    GuardRecord(WORKER_LINK, -1, 0, r.lateness_p99_ns, r.lateness_max_ns, r.frames)
                )
            else:
                out.append(
                    GuardRecord(
                        r.link_id,
                        r.direction,
                        r.frames,
                        r.lateness_p99_ns,
                        r.lateness_max_ns,
                        queue_frames=r.queue_frames,
                    )
                )
        return out

    def worker_guard(self) -> list[dl.GuardRecord]:
        """The fidelity guard of every worker since the previous call.

        Returns
        -------
        list of GuardRecord
            One per link direction that sent frames since the previous call (frames sent,
            lateness p99 and max against the scheduled departures), then one per worker
            (``is_worker``: link id :data:`~meshemu.live.delayline.WORKER_LINK_ID`) whose
            ``frames`` are the frames the kernel dropped because that worker's receive ring
            was full (it could not keep up). Empty before the first link is created.
        """
        if not self._procs:
            return []
        out: list[dl.GuardRecord] = []
        for wid, payload in enumerate(self._call(dl.HDR.pack(dl.OP_GUARD, 0))):
            out.extend(dl.decode_guard(payload, wid))
        return out

    def close(self) -> None:
        self._closed = True
        for p in self._procs:
            try:
                _stdin(p).write(dl.HDR.pack(dl.OP_QUIT, 0))
                _stdin(p).close()
            except OSError:
                pass
        for p in self._procs:
            try:
                p.wait(timeout=3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            _stdout(p).close()
        self._procs = []
        self._links.clear()
        if os.path.exists(f"/run/netns/{self.netns}"):
            # the namespace goes with its last process; its veths take the nodes' ends along
            commands.run(["ip", "netns", "del", self.netns])


def _stdin(p: subprocess.Popen[bytes]) -> IO[bytes]:
    assert p.stdin is not None  # every worker starts with stdin=PIPE
    return p.stdin


def _stdout(p: subprocess.Popen[bytes]) -> IO[bytes]:
    assert p.stdout is not None  # and stdout=PIPE
    return p.stdout


def _access_recs(items: Iterable[tuple[int, LinkParams]]) -> Iterable[tuple]:
    """:data:`~meshemu.live.delayline.ACCESS_REC` fields of both directions of each link
    (direction 0: ``ab``, 1: ``ba``; zeros: none)."""
    for lid, p in items:
        for side, m in ((0, p.ab), (1, p.ba)):
            if m is None:
                yield (lid, side, 0, 0, 0, 0, 0.0, 1.0, 1.0, 0.0)
            else:
                yield (
                    lid,
                    side,
                    round(m.constant_s * 1e9),
                    round(m.frame_s * 1e9),
                    round(m.grant_min_s * 1e9),
                    round(m.grant_max_s * 1e9),
                    m.ge_p,
                    m.ge_r,
                    m.ge_loss_bad,
                    m.ge_loss_good,
                )


def _recs(links: Iterable[tuple[LinkEnds, LinkParams]]) -> Iterable[tuple]:
    for e, p in links:
        yield (e.link_id, p.delay_s, p.rate_bps, p.queue_packets, p.loss, p.up)


# ---- what crashed runs leave ----------------------------------------------------------------
def is_delayline_argv(argv: Sequence[str]) -> bool:
    """True when ``argv`` is a delay-line worker's: ``python -m meshemu.live.delayline`` or
    the compiled ``meshemu-delayline``."""
    return DELAYLINE_MODULE in argv or bool(argv) and os.path.basename(argv[0]) == DELAYLINE_BINARY


def delayline_procs() -> list[tuple[int, int | None, str]]:
    """(pid, parent pid, run_id) of every delay-line process on the machine (both kinds)."""
    out = []
    for pid, (_, argv) in procs.scan_processes().items():
        if not is_delayline_argv(argv):
            continue
        run = ""
        if "--run-id" in argv:
            i = argv.index("--run-id")
            run = argv[i + 1] if i + 1 < len(argv) else ""
        out.append((pid, procs.parent_pid(pid), run))
    return out


def delayline_netns_run(ns: str) -> str | None:
    """The run id of a userspace shaper's namespace name ``meshemu-<run_id>-dl``, else None."""
    if ns.startswith(NS_PREFIX) and ns.endswith(DL_SUFFIX) and len(ns) > len(NS_PREFIX + DL_SUFFIX):
        return ns[len(NS_PREFIX) : -len(DL_SUFFIX)]
    return None
