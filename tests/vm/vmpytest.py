"""Glue between the host's pytest run and the pytest run inside the VM.

``tests/vm/inside/`` holds tests that need ``sch_netem``; they are collected only inside the
VM (``MESHEMU_IN_VM=1``), never by the host's ``pytest tests``. On the host,
``test_vm.py::test_inside_vm`` is parametrized by their ids (:func:`inside_test_ids`, a
``pytest --collect-only`` subprocess at collection time) and each case asserts its own inside
result. Inside, ``inside/conftest.py`` writes ``results.json`` (node id -> outcome, failure
text, duration) to ``$MESHEMU_VM_RESULTS``, the VM's ``/results`` share.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import vmkernel

INSIDE_DIR = "tests/vm/inside"
#: How pytest is run inside the VM (from the repo root).
INSIDE_PYTEST_ARGS = [
    "-p",
    "no:cacheprovider",
    "-q",
    "-rfEs",
    INSIDE_DIR,
    f"--junitxml={vmkernel.RESULTS_MOUNT}/junit.xml",
]
#: Environment of the inside tests (and of their collection on the host).
INSIDE_ENV = {"MESHEMU_IN_VM": "1", "PYTHONDONTWRITEBYTECODE": "1"}
#: Id of the single case reported when the inside tests cannot even be collected.
COLLECTION_FAILED = "<collecting tests/vm/inside failed>"


@dataclass(frozen=True)
class InsideIds:
    """Node ids of the inside tests, or why they could not be collected."""

    ids: tuple[str, ...]
    error: str = ""


_inside_ids: InsideIds | None = None


def inside_test_ids() -> InsideIds:
    """The inside tests' node ids (``pytest --collect-only -q``), collected once per process."""
    global _inside_ids
    if _inside_ids is None:
        p = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "--collect-only",
                "-q",
                "-p",
                "no:cacheprovider",
                INSIDE_DIR,
            ],
            cwd=vmkernel.REPO,
            env={**os.environ, **INSIDE_ENV},
            capture_output=True,
            text=True,
        )
        ids = tuple(ln.strip() for ln in p.stdout.splitlines() if "::" in ln)
        if p.returncode != 0 or not ids:
            _inside_ids = InsideIds(
                (),
                f"`pytest --collect-only {INSIDE_DIR}` failed (exit "
                f"{p.returncode}):\n{p.stdout}\n{p.stderr}",
            )
        else:
            _inside_ids = InsideIds(ids)
    return _inside_ids


def inside_command() -> str:
    """The shell command the VM runs: load netem, run the inside tests."""
    argv = [sys.executable, "-m", "pytest", *INSIDE_PYTEST_ARGS]
    return "modprobe sch_netem && exec " + " ".join(vmkernel.sh_quote(a) for a in argv)
