"""The run lock and the markers that let ``meshemu clean`` find what a run left behind.

Every live run holds ``LOCK_DIR/<run_id>.lock`` (JSON: the owner's pid and its start time,
the run directory, the node count) while it is built. Every node shell carries
``meshemu-run=<run_id>`` (:data:`RUN_MARKER`) in its argv, and everything started in a node
has ``MESHEMU_RUN=<run_id>`` (:data:`ENV_MARKER`) in its environment. A lock whose owner no
longer runs (:func:`lock_is_live` is False) marks a crashed run; :mod:`meshemu.live.clean`
removes such runs without touching other Mininet sessions or live runs.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from meshemu.errors import EmulationError
from meshemu.linux import procs

#: Directory of the run lock files (``<run_id>.lock``, JSON with the owner's pid).
LOCK_DIR = Path("/run/meshemu")
#: argv element marking a node shell of run ``<run_id>``: ``meshemu-run=<run_id>``.
RUN_MARKER = "meshemu-run="
#: Environment variable (value: the run id) of node shells and of everything started in a
#: node with ``node.cmd`` or ``node.popen``; it survives the shell (``nohup``, daemons), so
#: ``meshemu clean`` finds such processes after a crash.
ENV_MARKER = "MESHEMU_RUN"


def lock_path(run_id: str) -> Path:
    """Path of run ``run_id``'s lock file."""
    return LOCK_DIR / f"{run_id}.lock"


def write_lock(run_id: str, run_dir: Path, n_nodes: int) -> Path:
    """Record that run ``run_id`` is live, owned by this process.

    Parameters
    ----------
    run_id : str
    run_dir : Path
        The run directory (recorded for ``meshemu clean``'s messages).
    n_nodes : int

    Returns
    -------
    Path
        The lock file; remove it when the run is torn down.

    Raises
    ------
    EmulationError
        Another live process holds a lock with this run id.
    """
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    p = lock_path(run_id)
    info = {
        "run_id": run_id,
        "pid": os.getpid(),
        "start": procs.process_start_ticks(os.getpid()),
        "run_dir": str(run_dir),
        "nodes": n_nodes,
        "created": time.time(),
    }
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        other = read_lock(p)
        if other and lock_is_live(other):
            raise EmulationError(
                f"run id {run_id!r} is already in use by process "
                f"{other.get('pid')}; use another run id"
            ) from None
        p.unlink(missing_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f)
    return p


def read_lock(path: Path) -> dict[str, Any] | None:
    """The lock file's content, or None when unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def lock_is_live(info: dict[str, Any]) -> bool:
    """True when the process that wrote the lock still runs (same pid and start time)."""
    try:
        pid = int(info["pid"])
    except (KeyError, TypeError, ValueError):
        return False
    start = procs.process_start_ticks(pid)
    return start is not None and (info.get("start") is None or start == info.get("start"))
