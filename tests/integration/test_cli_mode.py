"""`meshemu run --cli`: Mininet's CLI works while the geometry keeps stepping."""

import csv
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.root
MESHEMU = [sys.executable, "-m", "meshemu.cli"]


def test_cli_mode_pings_while_steps_apply(tmp_path):
    out = tmp_path / "run"
    p = subprocess.Popen(MESHEMU + ["run", "--cli", "--duration", "8", "--traffic", "none",
                                    "--shaper", "userspace", "--out", str(out)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(4)
        # node 66 (0-based 65) is new_york in the default scenario; see nodes.csv
        p.stdin.write("london ping -c 3 -i 0.5 10.0.0.66\n")
        p.stdin.flush()
        time.sleep(6)
        p.stdin.write("exit\n")
        p.stdin.flush()
        text = p.communicate(timeout=60)[0]
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, text
    with open(out / "nodes.csv", newline="") as f:
        assert next(r for r in csv.DictReader(f) if r["id"] == "65")["name"] == "new_york"
    assert "3 received" in text, text
    with open(out / "steps.csv", newline="") as f:
        steps = list(csv.DictReader(f))
    assert len(steps) == 9            # steps 0..8 applied while the CLI was open
    assert text.count("64 bytes from 10.0.0.66") == 3   # printed once, not twice
