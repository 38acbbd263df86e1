"""Running ``ip`` and ``tc``: one command, or many as one ``-batch``, in any namespace.

Failures become :class:`meshemu.errors.CommandError` carrying the command and its stderr.
Bulk work goes over netlink (:mod:`meshemu.linux.netlink`); these are for what is simpler as
a command: creating veth pairs across namespaces, named namespaces, deleting links.
"""

from __future__ import annotations

import concurrent.futures
import subprocess
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from meshemu.errors import CommandError

T = TypeVar("T")

#: Threads :func:`parallel` uses at most (each mostly waits on a subprocess).
PARALLEL_MAX = 8


def batch_text(cmds: Iterable[Sequence[str]]) -> str:
    """Join commands into ``ip -batch`` / ``tc -batch`` input."""
    return "".join(" ".join(c) + "\n" for c in cmds)


def run(
    cmd: Sequence[str], stdin: str | None = None, check: bool = True, timeout_s: float | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command and capture its output (text).

    Parameters
    ----------
    cmd : sequence of str
    stdin : str, optional
        Its input.
    check : bool
        Raise when it fails; else return the failed process too.
    timeout_s : float, optional
        Kill it after this long.

    Raises
    ------
    CommandError
        The command is missing (exit 127), timed out (124), or (``check``) it exited
        non-zero; the error shows the command (and the first line of a batch) with its
        stderr.
    """
    try:
        p = subprocess.run(
            list(cmd), input=stdin, capture_output=True, text=True, timeout=timeout_s
        )
    except FileNotFoundError as exc:
        raise CommandError(cmd, 127, str(exc)) from None
    except subprocess.TimeoutExpired:
        raise CommandError(cmd, 124, f"timed out after {timeout_s} s") from None
    if check and p.returncode != 0:
        shown = list(cmd) + (
            [f"<<< {stdin.splitlines()[0]} ... ({stdin.count(chr(10))} lines)"] if stdin else []
        )
        raise CommandError(shown, p.returncode, p.stderr)
    return p


def in_netns(pid: int, cmd: Sequence[str]) -> list[str]:
    """``cmd`` prefixed to run in the network namespace of process ``pid``."""
    return ["nsenter", "-t", str(pid), "-n", *cmd]


def batch(
    tool: str,
    cmds: Sequence[Sequence[str]],
    pid: int | None = None,
    netns: str | None = None,
    force: bool = False,
    check: bool = True,
) -> subprocess.CompletedProcess[str] | None:
    """Run ``ip``/``tc`` commands as one ``-batch``.

    Parameters
    ----------
    tool : {"ip", "tc"}
    cmds : sequence of commands (without the tool's name)
    pid : int, optional
        Run in this process' network namespace (``nsenter``).
    netns : str, optional
        Run in this named namespace (``ip -n NAME``).
    force : bool
        ``-force``: carry on after a failed command.
    check : bool
        Raise :class:`CommandError` on failure (else return the process).

    Returns
    -------
    CompletedProcess or None
        None when ``cmds`` is empty (nothing is run).
    """
    if not cmds:
        return None
    argv = [
        tool,
        *(["-n", netns] if netns is not None else []),
        *(["-force"] if force else []),
        "-batch",
        "-",
    ]
    return run(
        in_netns(pid, argv) if pid is not None else argv, stdin=batch_text(cmds), check=check
    )


def parallel(fn: Callable[..., T], args: Iterable[Sequence[Any]]) -> list[T]:
    """``fn(*a)`` for each ``a``, a few at a time (each mostly waits on a subprocess)."""
    items = list(args)
    if len(items) <= 1:
        return [fn(*a) for a in items]
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(PARALLEL_MAX, len(items))) as ex:
        return list(ex.map(lambda a: fn(*a), items))
