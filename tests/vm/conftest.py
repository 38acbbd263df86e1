"""Host side of the VM tests: boot the netem-capable VM once, report each inside test.

See vmpytest.py for how inside tests become host tests and vmkernel.py for the VM. Set
``MESHEMU_VM_KEEP=DIR`` to keep the VM's console log, junit.xml and output there.
"""

from __future__ import annotations

import json
import logging
import os

import pytest
import vmkernel
import vmpytest

log = logging.getLogger("meshemu.tests.vm")

_SUMMARY = pytest.StashKey[str]()

if os.environ.get("MESHEMU_IN_VM") != "1":
    # they need sch_netem: only the pytest run inside the VM collects them
    collect_ignore = ["inside"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "inside_test" in metafunc.fixturenames:
        ids = list(vmpytest.inside_test_ids().ids) or [vmpytest.COLLECTION_FAILED]
        metafunc.parametrize(
            "inside_test", ids, ids=[i.removeprefix(vmpytest.INSIDE_DIR + "/") for i in ids]
        )


@pytest.fixture(scope="session")
def vm_run(request: pytest.FixtureRequest) -> vmkernel.VMRun:
    """Boot the VM once and run every inside test there; the finished :class:`VMRun`.

    Fails (never skips) when no kernel was fetched: CI must notice.
    """
    try:
        k = vmkernel.kernel()
    except vmkernel.VMError as exc:
        pytest.fail(str(exc), pytrace=False)
    res = vmkernel.run_in_vm(
        vmpytest.inside_command(),
        cwd=vmkernel.REPO,
        k=k,
        env=vmpytest.INSIDE_ENV,
        keep=os.environ.get("MESHEMU_VM_KEEP") or None,
    )
    boot = f"{res.boot_s:.1f} s" if res.boot_s is not None else "never"
    summary = (
        f"tests/vm: kernel {k.abi}, VM boot {boot}, whole VM run {res.total_s:.1f} s, "
        f"inside pytest exit status {res.returncode}"
    )
    log.info("%s", summary)
    request.config.stash[_SUMMARY] = summary
    return res


@pytest.fixture(scope="session")
def inside_results(vm_run: vmkernel.VMRun) -> dict[str, dict]:
    """Per inside node id: ``{"outcome": ..., "longrepr": ..., "duration": ...}``."""
    raw = vm_run.files.get("results.json")
    if raw is None:
        pytest.fail(
            f"the VM run wrote no results.json (exit status {vm_run.returncode}, "
            f"total {vm_run.total_s:.0f} s)\n{vm_run.tail()}",
            pytrace=False,
        )
    return json.loads(raw)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Say how long the VM took (once, when it was booted)."""
    summary = config.stash.get(_SUMMARY, None)
    if summary is not None:
        terminalreporter.write_line(summary)
