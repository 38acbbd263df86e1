"""The import rule: the pure stages never load Mininet, pyroute2, ``meshemu.live`` or
``meshemu.linux`` (see ARCHITECTURE.md).

Each case imports a pure package and every module under it in a fresh interpreter, so that
nothing imported by another test (or by pytest plug-ins) hides a violation, then lists what
that interpreter loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: The pure stages: what ``meshemu plan`` and ``meshemu report`` need, no root, no kernel.
PURE = [
    "meshemu.errors",
    "meshemu.spec",
    "meshemu.geometry",
    "meshemu.routing",
    "meshemu.plan",
    "meshemu.partition",
    "meshemu.report",
    "meshemu.traffic.schedule",
    "meshemu.traffic.header",
    "meshemu.traffic.config",
    "meshemu.traffic.clocks",
    "meshemu.signals",
    "meshemu.view",
]

#: Module name prefixes a pure stage must not load.
FORBIDDEN = ("mininet", "pyroute2", "meshemu.live", "meshemu.linux")

#: Imports each named module and, for a package, every module under it; prints sys.modules.
_PROBE = """
import importlib, json, pkgutil, sys
for name in sys.argv[1:]:
    mod = importlib.import_module(name)
    if hasattr(mod, "__path__"):
        for info in pkgutil.walk_packages(mod.__path__, name + "."):
            importlib.import_module(info.name)
print(json.dumps(sorted(sys.modules)))
"""


def loaded_modules(*names: str) -> list[str]:
    """Modules loaded by a fresh interpreter that imports ``names`` (and their submodules)."""
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, *names],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"importing {names} failed:\n{proc.stderr}"
    mods: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return mods


def forbidden(mods: list[str]) -> list[str]:
    """The modules of ``mods`` that a pure stage must not load."""
    return [m for m in mods if any(m == p or m.startswith(p + ".") for p in FORBIDDEN)]


@pytest.mark.parametrize("package", PURE)
def test_pure_stage_loads_no_kernel_or_live_code(package: str) -> None:
    mods = loaded_modules(package)
    assert package in mods
    assert forbidden(mods) == [], f"{package} loads {forbidden(mods)}"


def test_all_pure_stages_together() -> None:
    mods = loaded_modules(*PURE)
    assert forbidden(mods) == []


def test_probe_sees_forbidden_modules() -> None:
    # the check itself works: linux/ is reported when it is loaded
    mods = loaded_modules("meshemu.linux")
    assert "meshemu.linux" in forbidden(mods)
