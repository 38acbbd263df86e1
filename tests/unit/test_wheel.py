"""A wheel built from the repository, installed in a fresh venv, finds its shipped scenarios
and profiles and runs ``meshemu plan default`` from a directory outside the checkout."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_installs_and_plans_the_default_scenario(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(REPO),
        ],
        check=True,
        timeout=300,
    )
    (whl,) = wheels.glob("meshemu-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    for shipped in (
        "meshemu/spec/data/topologies/default.yaml",
        "meshemu/spec/data/topologies/generated-walker-48.tle",
        "meshemu/spec/data/traffic/default.yaml",
        "meshemu/spec/data/traffic/example.pcap",
    ):
        assert shipped in names, f"{shipped} missing from {whl.name}"

    # A fresh venv without meshemu; its dependencies come from this interpreter's
    # site-packages through a .pth file (a .pth entry's own .pth files, such as the editable
    # install's finder, are not processed, so `import meshemu` can only find the wheel).
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    py = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    deps = [sysconfig.get_paths()["purelib"], "/usr/lib/python3/dist-packages"]
    (site / "zz_meshemu_deps.pth").write_text("\n".join(deps) + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            str(whl),
        ],
        check=True,
        timeout=300,
    )

    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run(
        [str(py), "-c", "import meshemu; print(meshemu.__file__)"],
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(site) in where and str(REPO) not in where, where
    p = subprocess.run(
        [
            str(venv / "bin" / "meshemu"),
            "plan",
            "default",
            "--duration",
            "5",
            "--out",
            str(work / "plan"),
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    for f in ("nodes.csv", "links.csv", "paths.csv", "summary.json"):
        assert (work / "plan" / f).stat().st_size > 0, f
    s = subprocess.run(
        [str(venv / "bin" / "meshemu"), "scenarios"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert s.returncode == 0 and "starlink-shell1" in s.stdout, s.stdout + s.stderr
