"""``meshemu clean``: remove what crashed (or SIGKILLed) runs left behind.

A run is *live* while the process that wrote its lock file
(:data:`meshemu.live.emulation.LOCK_DIR`/``<run_id>.lock``) runs; everything of a run that is not
live is a leftover:

* node shells: processes whose argv holds ``meshemu-run=<run_id>``
  (:data:`meshemu.live.emulation.RUN_MARKER`; Mininet shells of other programs are never touched),
  every other process inside those shells' network namespaces, and every process whose
  environment has ``MESHEMU_RUN=<run_id>`` (:data:`meshemu.live.emulation.ENV_MARKER`: whatever
  was started with ``node.cmd``/``node.popen``, which may outlive the shells: a node shell
  dies with its pty when the emulator is killed, a ``nohup``-ed traffic agent does not);
  once they are gone the kernel frees the namespaces and the interfaces in them;
* delay-line processes and the shaper's ``meshemu-<run_id>-dl`` namespaces
  (:func:`meshemu.live.shapers.cleanup_leftovers`);
* other named namespaces ``meshemu-<run_id>-*`` that no process uses;
* interfaces in the root namespace named like meshemu's (``isl<k>``, ``gsl<k>``,
  ``dl<k>a``/``dl<k>b``): only when cleaning every run, as they carry no run id;
* the lock files;
* the routing daemons' state directories ``/run/meshemu/<run_id>/`` (their processes, in
  the nodes' namespaces and carrying the environment marker, went with the node shells).

Nothing here is specific to one run unless ``run_id`` is given.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from pathlib import Path

from meshemu.errors import CommandError, EmulationError
from meshemu.linux import commands, procs
from meshemu.linux.limits import require_root
from meshemu.live.emulation import ENV_MARKER, LOCK_DIR, RUN_MARKER, lock_is_live, read_lock
from meshemu.live.nodes import NODE_PROGRAMS
from meshemu.live.shapers import NS_PREFIX, cleanup_leftovers
from meshemu.live.shapers.userspace import delayline_netns_run

log = logging.getLogger(__name__)

#: Root-namespace interface names meshemu (or its shapers) use.
ROOT_IFACE_RE = re.compile(r"^(isl\d+|gsl\d+|dl\d+[ab])$")


def _run_of_argv(argv: list[str]) -> str | None:
    for a in argv:
        if a.startswith(RUN_MARKER):
            return a[len(RUN_MARKER) :]
    return None


def find_runs() -> dict[str, dict]:
    """Every run with a lock file, a node shell or a marked process: run id -> ``{"live": bool,
    "lock": path or None, "shells": [pid, ...], "procs": [pid, ...], "netns": {inode, ...}}``
    (``procs``: other processes with the run's :data:`~meshemu.live.emulation.ENV_MARKER`)."""
    runs: dict[str, dict] = {}

    def entry(rid: str) -> dict:
        return runs.setdefault(rid, _empty())

    if LOCK_DIR.is_dir():
        for p in sorted(LOCK_DIR.glob("*.lock")):
            e = entry(p.name[: -len(".lock")])
            e["lock"] = p
            info = read_lock(p)
            e["live"] = bool(info and lock_is_live(info))
    for pid, (ino, argv) in procs.scan_processes().items():
        rid = _run_of_argv(argv)
        if rid is not None and argv and os.path.basename(argv[0]) in NODE_PROGRAMS:
            e = entry(rid)
            e["shells"].append(pid)
            e["netns"].add(ino)
    for pid, rid in procs.pids_with_env(ENV_MARKER).items():
        e = entry(rid)
        if pid not in e["shells"]:
            e["procs"].append(pid)
    return runs


def _empty() -> dict:
    return {"live": False, "lock": None, "shells": [], "procs": [], "netns": set()}


def _named_netns() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def _root_ifaces() -> list[str]:
    """meshemu-like interface names in this process' (the root) namespace."""
    return [name for _, name in socket.if_nameindex() if ROOT_IFACE_RE.match(name)]


def clean(run_id: str | None = None, dry_run: bool = False) -> list[str]:
    """Remove leftovers of runs that are not live (see the module docstring).

    Parameters
    ----------
    run_id : str, optional
        Only this run. It must not be live.
    dry_run : bool
        Only report what would be removed.

    Returns
    -------
    list of str
        What was (or would be) removed, e.g. ``["process 4242 (node shell of run ab12cd)",
        "netns meshemu-ab12cd-dl", "lock /run/meshemu/ab12cd.lock"]``.

    Raises
    ------
    NotRootError
    EmulationError
        ``run_id`` is a live run.
    CommandError
        Something could not be removed.
    """
    require_root("meshemu clean")
    runs = find_runs()
    if run_id is not None:
        if runs.get(run_id, {}).get("live"):
            info = read_lock(runs[run_id]["lock"]) or {}
            raise EmulationError(
                f"run {run_id} is still running (process {info.get('pid')}); "
                f"stop it first (Ctrl-C or kill {info.get('pid')})"
            )
        runs = {run_id: runs.get(run_id, _empty())}
    dead = {rid: e for rid, e in runs.items() if not e["live"]}
    live_ids = {rid for rid, e in runs.items() if e["live"]}
    removed = _node_processes(dead, dry_run)  # 1.
    if dry_run:  # 2.
        removed += _shaper_dry_run(run_id, dead)
    else:
        for rid in sorted(dead):
            removed += cleanup_leftovers(rid)
        if run_id is None:
            removed += cleanup_leftovers()
    removed += _unused_netns(run_id, dead, live_ids, dry_run)  # 3.
    if run_id is None:  # 4.
        removed += _root_interfaces(dry_run)
    for _rid, e in sorted(dead.items()):  # 5.
        if e["lock"] is not None:
            removed.append(f"lock {e['lock']}")
            if not dry_run:
                Path(e["lock"]).unlink(missing_ok=True)
    removed += _daemon_state(run_id, live_ids, dry_run)  # 6.
    for item in removed:
        log.info("%s %s", "would remove" if dry_run else "removed", item)
    return removed


def _daemon_state(run_id: str | None, live_ids: set[str], dry_run: bool) -> list[str]:
    """Step 6: the routing daemons' state directories of runs that are not live."""
    import shutil

    from meshemu.live.daemons import STATE_ROOT

    if not STATE_ROOT.is_dir():
        return []
    out = []
    for d in sorted(STATE_ROOT.iterdir()):
        if not d.is_dir() or d.name in live_ids or (run_id is not None and d.name != run_id):
            continue
        out.append(f"routing daemon state {d}")
        if not dry_run:
            shutil.rmtree(d, ignore_errors=True)
    return out


def _node_processes(dead: dict[str, dict], dry_run: bool) -> list[str]:
    """Step 1: kill the node shells of dead runs and everything in their namespaces."""
    inodes: set[int] = set()
    shells: dict[int, str] = {}
    marked: dict[int, str] = {}
    for rid, e in dead.items():
        inodes |= e["netns"]
        shells.update((pid, rid) for pid in e["shells"])
        marked.update((pid, rid) for pid in e["procs"])
    running = procs.scan_processes()
    for pid in marked:
        if pid in running:
            inodes.add(running[pid][0])
    inodes.discard(os.stat("/proc/self/ns/net").st_ino)  # never sweep the root namespace
    victims = sorted(set(procs.pids_in_netns(inodes)) | set(shells) | set(marked))
    removed = []
    for pid in victims:
        argv = running.get(pid, (0, []))[1]
        prog = os.path.basename(argv[0]) if argv else "?"
        what = (
            f"node shell of run {shells[pid]}"
            if pid in shells
            else f"{prog} of run {marked[pid]}"
            if pid in marked
            else f"{prog} in a node namespace"
        )
        removed.append(f"process {pid} ({what})")
    if not dry_run and victims:
        procs.kill_and_wait(victims)
        for pid in victims:  # reap those that were our own children (tests)
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
    return removed


def _unused_netns(
    run_id: str | None, dead: dict[str, dict], live_ids: set[str], dry_run: bool
) -> list[str]:
    """Step 3: other named namespaces of dead runs that no process uses."""
    removed = []
    for ns in _named_netns():
        if not ns.startswith(NS_PREFIX) or delayline_netns_run(ns) is not None:
            continue
        rid = next((r for r in [*dead, *live_ids] if ns.startswith(f"{NS_PREFIX}{r}-")), None)
        if rid in live_ids or (run_id is not None and rid != run_id):
            continue
        try:
            ino = os.stat(f"/run/netns/{ns}").st_ino
        except OSError:
            continue
        if procs.pids_in_netns({ino}):
            continue
        removed.append(f"netns {ns}")
        if not dry_run:
            p = commands.run(["ip", "netns", "del", ns], check=False)
            if p.returncode != 0 and os.path.exists(f"/run/netns/{ns}"):
                raise CommandError(["ip", "netns", "del", ns], p.returncode, p.stderr)
    return removed


def _root_interfaces(dry_run: bool) -> list[str]:
    """Step 4: meshemu-named interfaces in the root namespace (they carry no run id)."""
    removed = []
    for name in _root_ifaces():
        removed.append(f"interface {name} (root namespace)")
        if not dry_run:
            p = commands.run(["ip", "link", "del", name], check=False)
            if p.returncode != 0 and "Cannot find device" not in p.stderr:
                raise CommandError(["ip", "link", "del", name], p.returncode, p.stderr)
    return removed


def _shaper_dry_run(run_id: str | None, dead: dict) -> list[str]:
    """What :func:`meshemu.live.shapers.cleanup_leftovers` would remove (approximately: its own
    rules for unknown runs are not reproduced)."""
    out = []
    for ns in _named_netns():
        rid = delayline_netns_run(ns)
        if rid is not None and rid in dead and (run_id is None or rid == run_id):
            out.append(f"netns {ns}")
    return out
