"""The ``userspace`` shaper: each link through a delay-line process, on any kernel.

A link A<->B becomes ``A-eth <-veth-> dl<k>a`` and ``dl<k>b <-veth-> B-eth``, with the
delay line's ends in a namespace of the shaper's own, ``meshemu-<run_id>-dl``, where
``python -m meshemu.live.delayline`` workers forward each frame after the link's delay and
transmission time (:mod:`meshemu.live.delayline`). The shaper speaks to them over their
stdin/stdout with the delay line's binary control messages.
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
from typing import IO

from meshemu.errors import EmulationError, ShaperError
from meshemu.linux import commands, ifaces, procs
from meshemu.linux.limits import require_root
from meshemu.live import delayline as dl
from meshemu.live.shapers.base import (
    DL_SUFFIX,
    NS_PREFIX,
    LinkEnds,
    LinkParams,
    LinkShaper,
    veth_cmd,
)

log = logging.getLogger(__name__)

#: Seconds to wait for a delay-line worker to answer a control message.
CONTROL_TIMEOUT_S = 60.0
#: The module the delay-line workers run (``python -m ...``); their argv names it.
DELAYLINE_MODULE = "meshemu.live.delayline"


def userspace_create_cmds(links: Iterable[LinkEnds], dl_ns: int | str) -> list[list[str]]:
    """``ip`` commands creating the two veth pairs of each userspace-shaped link."""
    out = []
    for e in links:
        out.append(veth_cmd(e.if_a, e.pid_a, dl.dl_ifname(e.link_id, "a"), dl_ns))
        out.append(veth_cmd(e.if_b, e.pid_b, dl.dl_ifname(e.link_id, "b"), dl_ns))
    return out


# ---- the shaper ---------------------------------------------------------------------------
class UserspaceShaper(LinkShaper):
    """Links through delay-line processes (:mod:`meshemu.live.delayline`) in
    ``meshemu-<run_id>-dl``.

    Parameters
    ----------
    run_id : str
    workers : int
        Delay-line processes sharing the links (by ingress interface). 1 is best on a small
        machine; see ``benchmarks/bench_delayline.py`` before raising it.
    """

    name = "userspace"

    def __init__(self, run_id: str, workers: int = 1):
        super().__init__(run_id)
        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 64:
            raise ShaperError(f"workers must be an integer in 1..64; got {workers!r}")
        self.workers = workers
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
        commands.run(["ip", "netns", "add", self.netns])
        try:
            for i in range(self.workers):
                cmd = [
                    "ip",
                    "netns",
                    "exec",
                    self.netns,
                    sys.executable,
                    "-m",
                    DELAYLINE_MODULE,
                    "--run-id",
                    self.run_id,
                    "--workers",
                    str(self.workers),
                    "--worker",
                    str(i),
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
            "userspace shaper: %d delay-line worker(s) in netns %s (pids %s)",
            self.workers,
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
        commands.batch("ip", userspace_create_cmds((e for e, _ in links), dl_pid))
        for ends, params in links:
            self._links[ends.link_id] = (ends, params)
        jobs: dict[int, list] = defaultdict(list)
        for e, _ in links:
            # the nodes' ends send into the delay line: no checksum/segmentation offload, or
            # the frames arrive with partial checksums / as 64 KiB super-frames. The delay
            # line's own ends only send what packet sockets give them (complete frames).
            jobs[e.pid_a].append((e.if_a, False, True))
            jobs[e.pid_b].append((e.if_b, False, True))
            jobs[dl_pid].append((dl.dl_ifname(e.link_id, "a"), True, False))
            jobs[dl_pid].append((dl.dl_ifname(e.link_id, "b"), True, False))
        ifaces.configure_interfaces(jobs)
        self._call(dl.encode_links(dl.OP_ADD, _recs(links)))

    def update(self, changes: Sequence[tuple[int, LinkParams]]) -> None:
        if not changes:
            return
        self._check_changes(changes)
        self._call(
            dl.encode_links(
                dl.OP_UPDATE,
                ((i, p.delay_s, p.rate_bps, p.queue_packets, p.loss, p.up) for i, p in changes),
            )
        )
        links = self._links
        for i, p in changes:
            links[i] = (links[i][0], p)

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


def _recs(links: Iterable[tuple[LinkEnds, LinkParams]]) -> Iterable[tuple]:
    for e, p in links:
        yield (e.link_id, p.delay_s, p.rate_bps, p.queue_packets, p.loss, p.up)


# ---- what crashed runs leave ----------------------------------------------------------------
def delayline_procs() -> list[tuple[int, int | None, str]]:
    """(pid, parent pid, run_id) of every delay-line process on the machine."""
    out = []
    for pid, argv in procs.processes_running(DELAYLINE_MODULE).items():
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
