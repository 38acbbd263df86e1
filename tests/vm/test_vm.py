"""Host side of the netem tests: each test in ``tests/vm/inside`` reported as a host test.

The VM boots once per session (``vm_run`` in conftest.py); see vmkernel.py for how.
"""

from __future__ import annotations

import os

import pytest
from vmpytest import COLLECTION_FAILED, inside_test_ids

pytestmark = pytest.mark.vm

#: Exit statuses of the inside pytest that mean "the tests ran": all passed / some failed.
PYTEST_RAN = (0, 1)


def test_inside_vm(inside_test: str, inside_results: dict[str, dict]) -> None:
    """One inside test: passes, fails (with the inside failure text) or skips as it did."""
    if inside_test == COLLECTION_FAILED:
        pytest.fail(inside_test_ids().error, pytrace=False)
    r = inside_results.get(inside_test)
    if r is None:
        pytest.fail(
            f"{inside_test} did not run in the VM (it reported {len(inside_results)} tests)",
            pytrace=False,
        )
    outcome, text = r["outcome"], r["longrepr"]
    if outcome == "skipped":
        pytest.skip(f"skipped inside the VM: {text}")
    if outcome == "xfailed":
        pytest.xfail(f"xfailed inside the VM: {text}")
    if outcome not in ("passed", "xpassed"):
        pytest.fail(f"{outcome} inside the VM ({r['duration']:.1f} s):\n{text}", pytrace=False)


def test_vm_ran_the_inside_tests_and_left_nothing_behind(vm_run) -> None:
    """The inside pytest ran to the end, qemu is gone and so is the VM's temp dir."""
    assert vm_run.returncode in PYTEST_RAN, (
        f"inside pytest exited with {vm_run.returncode} (None: never finished)\n{vm_run.tail()}"
    )
    assert vm_run.boot_s is not None
    assert not os.path.exists(f"/proc/{vm_run.qemu_pid}") or _is_zombie_free(vm_run.qemu_pid)
    assert not os.path.exists(vm_run.workdir)


def test_every_collected_inside_test_reported_a_result(inside_results) -> None:
    collected = set(inside_test_ids().ids)
    assert collected, inside_test_ids().error
    assert set(inside_results) == collected


def _is_zombie_free(pid: int) -> bool:
    """True when ``pid`` now belongs to some other process (pids are reused)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"qemu-system" not in f.read()
    except FileNotFoundError:
        return True
