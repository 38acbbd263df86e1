"""Routing daemons in the nodes: written, started, watched, stopped (issue 11).

For a daemon scheme (:class:`meshemu.routing.daemons.DaemonScheme`) the emulator installs
no routes. :class:`DaemonRunner` writes each node's configuration into its state directory,
starts the scheme's processes in the node's namespace (``node.popen``, so they carry the
run's environment marker and ``meshemu clean`` finds them), waits until every node's daemon
answers, checks each step that none died, changes link costs live, and stops them.

State directories: ``/run/meshemu/<run_id>/<node id>/`` (short, so that control sockets fit
in a socket address; owned by the daemon's user, e.g. FRR's ``frr``). The run directory
links to them as ``daemons/<node>/`` while the run lasts; when it ends, the configuration
and logs are copied there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from meshemu.errors import EmulationError
from meshemu.live import addressing as adr
from meshemu.routing.daemons import DaemonLink, DaemonNode, DaemonScheme

log = logging.getLogger(__name__)

#: Where the daemons' state directories go (one per run, one per node inside).
STATE_ROOT = Path("/run/meshemu")
#: How long the daemons of all nodes may take to answer (s).
READY_TIMEOUT_S = 60.0
#: ... plus this much per node (they are started one after another).
READY_PER_NODE_S = 0.2
#: How long the daemons may take to exit after SIGTERM (then SIGKILL), plus per process.
STOP_GRACE_S = 5.0
STOP_PER_PROCESS_S = 0.02
#: How long one readiness check may take before it counts as "not yet".
READY_CHECK_TIMEOUT_S = 10.0
#: Lines of a daemon's log quoted when it fails.
LOG_TAIL = 8


def state_dir(run_id: str) -> Path:
    """The run's daemon state directory."""
    return STATE_ROOT / run_id


def daemon_nodes(
    names: Sequence[str],
    transit: Sequence[bool],
    plan: Any,
    kinds: Sequence[str],
    costs: Sequence[int],
) -> list[DaemonNode]:
    """Every node's :class:`DaemonNode` from the address plan.

    Parameters
    ----------
    plan : meshemu.live.addressing.AddressPlan
        Link ``k`` joins nodes ``plan.a[k] < plan.b[k]``.
    kinds : sequence of str
        ``isl`` / ``gsl`` per link.
    costs : sequence of int
        Each link's metric at t = 0.
    """
    n = len(names)
    links: list[list[DaemonLink]] = [[] for _ in range(n)]
    for k in range(plan.n_links):
        a, b = int(plan.a[k]), int(plan.b[k])
        ifname = plan.ifname(k)
        addr_a, addr_b = adr.link_addresses(k)
        links[a].append(DaemonLink(ifname, f"{addr_a}/31", addr_b, names[b], kinds[k], costs[k]))
        links[b].append(DaemonLink(ifname, f"{addr_b}/31", addr_a, names[a], kinds[k], costs[k]))
    return [
        DaemonNode(names[i], i, plan.node_address(i), bool(transit[i]), tuple(links[i]))
        for i in range(n)
    ]


class DaemonRunner:
    """The daemons of one run.

    Parameters
    ----------
    scheme : DaemonScheme
    nodes : list of DaemonNode
    mesh_nodes : list of meshemu.live.nodes.MeshNode
        By node id (``popen`` runs a command in the node's namespace).
    run_id : str
    run_dir : Path
    """

    def __init__(
        self,
        scheme: DaemonScheme,
        nodes: list[DaemonNode],
        mesh_nodes: Sequence[Any],
        run_id: str,
        run_dir: Path,
    ):
        self.scheme = scheme
        self.nodes = nodes
        self.mesh = mesh_nodes
        self.root = state_dir(run_id)
        self.run_dir = Path(run_dir)
        self.procs: list[list[tuple[str, subprocess.Popen[bytes]]]] = [[] for _ in nodes]
        self.costs: dict[tuple[int, str], int] = {
            (n.node_id, lk.ifname): lk.cost for n in nodes for lk in n.links
        }
        self._stopped = False

    def dir_of(self, node_id: int) -> Path:
        return self.root / str(node_id)

    # -- start -----------------------------------------------------------------------------
    def start(self, timeout_s: float = READY_TIMEOUT_S) -> float:
        """Write every configuration, start every daemon, wait until all answer; returns the
        seconds that took. EmulationError naming the node and daemon (with its log's last
        lines) when one exits or does not answer in time."""
        self.scheme.check_installed()
        t0 = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root.parent, 0o755)
        os.chmod(self.root, 0o755)
        (self.run_dir / "daemons").mkdir(exist_ok=True)
        uid = gid = -1
        if self.scheme.user:
            import pwd

            pw = pwd.getpwnam(self.scheme.user)
            uid, gid = pw.pw_uid, pw.pw_gid
        for node in self.nodes:
            d = self.dir_of(node.node_id)
            d.mkdir(exist_ok=True)
            for name, text in self.scheme.files(node, d).items():
                (d / name).write_text(text)
            if uid >= 0:
                os.chown(d, uid, gid)
                for f in d.iterdir():
                    os.chown(f, uid, gid)
            link = self.run_dir / "daemons" / node.name
            if not link.exists():
                link.symlink_to(d)
        for node in self.nodes:
            d = self.dir_of(node.node_id)
            for p in self.scheme.processes(node, d):
                log_f = open(d / f"{p.name}.out", "wb")
                proc = self.mesh[node.node_id].popen(
                    list(p.argv), stdin=subprocess.DEVNULL, stdout=log_f, stderr=subprocess.STDOUT
                )
                log_f.close()
                self.procs[node.node_id].append((p.name, proc))
        self._wait_ready(t0 + timeout_s + READY_PER_NODE_S * len(self.nodes))
        took = time.monotonic() - t0
        log.info("%s daemons of %d nodes ready in %.1f s", self.scheme.name, len(self.nodes), took)
        return took

    def _wait_ready(self, deadline: float) -> None:
        pending = list(range(len(self.nodes)))

        def ready(i: int) -> bool:
            node = self.nodes[i]
            self._check_node(i)
            argv = self.scheme.ready_argv(node, self.dir_of(i))
            if argv is None:
                return True
            p = self.mesh[i].popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                return p.wait(timeout=READY_CHECK_TIMEOUT_S) == 0
            except subprocess.TimeoutExpired:  # a loaded machine: not ready yet, ask again
                p.kill()
                p.wait()
                return False

        rounds = 0
        with ThreadPoolExecutor(max_workers=4) as pool:
            while pending:
                rounds += 1
                done = list(pool.map(ready, pending))
                pending = [i for i, ok in zip(pending, done) if not ok]
                if not pending:
                    return
                if time.monotonic() > deadline:
                    node = self.nodes[pending[0]]
                    raise EmulationError(
                        f"{self.scheme.name}: the daemons of {len(pending)} node(s) did not "
                        f"answer in time, e.g. node {node.name}:\n{self._log_tail(pending[0])}"
                    )
                time.sleep(min(2.0, 0.2 * rounds))  # back off: each check spawns a process

    # -- while running ---------------------------------------------------------------------
    def check(self) -> None:
        """EmulationError naming node, daemon and its log's last lines if one has died."""
        for i in range(len(self.nodes)):
            self._check_node(i)

    def _check_node(self, i: int) -> None:
        for name, proc in self.procs[i]:
            rc = proc.poll()
            if rc is not None and not self._stopped:
                raise EmulationError(
                    f"{self.scheme.name}: daemon {name} of node {self.nodes[i].name} exited "
                    f"with status {rc}; the last lines of its log:\n{self._log_tail(i, name)}"
                )

    def _log_tail(self, i: int, name: str | None = None) -> str:
        d = self.dir_of(i)
        files = sorted(d.glob(f"{name}*.log" if name else "*.log")) + sorted(
            d.glob(f"{name}.out" if name else "*.out")
        )
        out = []
        for f in files:
            with contextlib.suppress(OSError):
                lines = f.read_text(errors="replace").splitlines()[-LOG_TAIL:]
                if lines:
                    out.append(f"  {f}:\n" + "\n".join(f"    {ln}" for ln in lines))
        return "\n".join(out) or f"  (no log in {d})"

    def set_costs(self, changes: Sequence[tuple[int, str, int]]) -> int:
        """Change link costs live: (node id, interface, cost); returns how many changed."""
        touched: dict[int, list[tuple[str, int]]] = {}
        for i, ifname, cost in changes:
            old = self.costs.get((i, ifname))
            if old is None or not self.scheme.cost_changed(old, cost):
                continue
            self.costs[(i, ifname)] = cost
            touched.setdefault(i, []).append((ifname, cost))
        for i, items in touched.items():
            node, d = self.nodes[i], self.dir_of(i)
            reload = False
            for ifname, cost in items:
                argv = self.scheme.set_cost_argv(node, d, ifname, cost)
                if argv is None:
                    reload = True
                else:
                    self.mesh[i].popen(argv, stdout=subprocess.DEVNULL).wait(timeout=30)
            if reload:
                for name, text in self.scheme.files(node, d).items():
                    (d / name).write_text(text)
                argv = self.scheme.reload_argv(node, d)
                if argv:
                    self.mesh[i].popen(argv, stdout=subprocess.DEVNULL).wait(timeout=30)
        return sum(len(v) for v in touched.values())

    def install_shell_functions(self) -> None:
        """Make the daemon's shell work in each node's Mininet shell: ``s0_0_0 vtysh -c
        'show ip ospf neighbor'`` reaches that node's daemon (a shell function that adds
        the node's socket options)."""
        for node in self.nodes:
            argv = self.scheme.cli_argv(node, self.dir_of(node.node_id))
            if not argv:
                continue
            prog, args = argv[0], " ".join(f"'{a}'" for a in argv[1:])
            # (run when that node's shell starts: most nodes' never do)
            self.mesh[node.node_id].on_shell_start(f'{prog}() {{ command {prog} {args} "$@"; }}')

    # -- stop ------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop every daemon, copy configurations and logs into ``daemons/<node>/`` of the
        run directory and remove the state directory. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        procs = [p for plist in self.procs for _, p in plist]
        grace = STOP_GRACE_S + STOP_PER_PROCESS_S * len(procs)  # they all exit at once
        for sig_send in (lambda p: p.terminate(), lambda p: p.kill()):
            for p in procs:
                if p.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        sig_send(p)
            deadline = time.monotonic() + grace
            while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
                time.sleep(0.05)
            procs = [p for p in procs if p.poll() is None]
            if not procs:
                break
        if procs:
            raise EmulationError(
                f"{len(procs)} daemon process(es) did not exit after SIGKILL (e.g. pid "
                f"{procs[0].pid}); run `meshemu clean`"
            )
        for node in self.nodes:
            link = self.run_dir / "daemons" / node.name
            src = self.dir_of(node.node_id)
            if link.is_symlink():
                link.unlink()
            if src.is_dir():
                link.mkdir(parents=True, exist_ok=True)
                for f in src.iterdir():
                    if f.is_file() and f.suffix in (".conf", ".log", ".out"):
                        shutil.copy(f, link / f.name)
        shutil.rmtree(self.root, ignore_errors=True)
