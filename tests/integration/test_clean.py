"""``meshemu clean`` after a SIGKILLed build (root).

Only this test's own run is ever removed (``clean(run_id)``); the machine-wide mode is
checked with ``dry_run=True`` so that other runs on the machine are left alone.
"""

from __future__ import annotations

import os
import signal
import uuid

import pytest
from test_emulator import (
    KINDS,
    NAMES,
    _require_root,
    leftovers,
    machine_state,
    ring,
    start_build_process,
)
from waits import wait_for

from meshemu.errors import EmulationError
from meshemu.linux import netns as nl
from meshemu.linux import procs
from meshemu.live import clean as cl
from meshemu.live import emulation as em
from meshemu.live.shapers import make_shaper

pytestmark = pytest.mark.root


def _delayline(leftover: str) -> bool:
    """A leftover that is a delay-line worker (Python or compiled)."""
    return "meshemu.live.delayline" in leftover or "meshemu-delayline" in leftover


def test_clean_after_sigkill_restores_the_machine(tmp_path):
    _require_root()
    run_id = f"mxcln{uuid.uuid4().hex[:6]}"
    before = machine_state()
    p, pids = start_build_process(tmp_path, run_id)
    try:
        inodes = {nl.netns_inode(pid) for pid in pids}
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)
        # the node shells die with their ptys (SIGHUP); what was nohup'ed or popen'ed in
        # the nodes lives on, and so does the shaper's namespace
        procs.wait_gone(pids, timeout_s=5)
        # the delay line exits by itself when its control pipe closes: let it finish, so
        # that what is left no longer changes on its own
        wait_for(lambda: not any(map(_delayline, leftovers(run_id, inodes))), timeout_s=5)
        left = leftovers(run_id, inodes)
        assert not any(map(_delayline, left)), left
        assert sum("in a node namespace" in x for x in left) == 2, left
        assert any(x.startswith("lock ") for x in left), left

        runs = cl.find_runs()
        assert runs[run_id]["live"] is False and len(runs[run_id]["procs"]) == 2
        would = cl.clean(dry_run=True)  # machine-wide, no action
        assert sum(f"of run {run_id}" in x for x in would) == 2, would
        assert sorted(leftovers(run_id, inodes)) == sorted(left)  # dry run touched nothing

        removed = cl.clean(run_id)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        cl.clean(run_id)
    assert sum(f"sleep of run {run_id}" in x for x in removed) == 2, removed
    assert any(x.startswith("lock ") for x in removed)
    assert any(f"meshemu-{run_id}-dl" in x or "delay line" in x for x in removed)
    assert leftovers(run_id, inodes) == []
    after = machine_state()
    assert after["links"] == before["links"]
    assert after["netns"] <= before["netns"]
    assert not (after["marked"] - before["marked"])
    assert cl.clean(run_id) == []  # nothing left to do


def test_clean_refuses_a_live_run(tmp_path):
    _require_root()
    run_id = f"mxcln{uuid.uuid4().hex[:6]}"
    snap, tab = ring()
    emu = em.Emulation(NAMES, KINDS, make_shaper("userspace", run_id), tmp_path, run_id)
    try:
        emu.build(snap.key, snap, tab)
        assert cl.find_runs()[run_id]["live"] is True
        with pytest.raises(EmulationError, match="still running"):
            cl.clean(run_id)
        assert not any(f"run {run_id}" in x for x in cl.clean(dry_run=True))
        assert emu.node("s0").shell.poll() is None  # untouched
    finally:
        emu.stop()


def test_clean_spares_other_mininet_shells(tmp_path):
    """A Mininet-like shell without meshemu's marker is not meshemu's."""
    _require_root()
    import subprocess

    p = subprocess.Popen(
        ["mnexec", "-dn", "bash", "--norc", "-is", "mininet:h1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    try:
        would = cl.clean(dry_run=True)
        assert not any(f"process {p.pid} " in x for x in would)
        assert p.pid not in {pid for e in cl.find_runs().values() for pid in e["shells"]}
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
