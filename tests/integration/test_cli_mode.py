"""`meshemu run --cli`: Mininet's CLI works while the geometry keeps stepping."""

import csv
import queue
import subprocess
import sys
import threading
import time

import pytest

pytestmark = pytest.mark.root
MESHEMU = [sys.executable, "-m", "meshemu.cli"]


class Output:
    """Collects a child's output in a thread so the test can wait for a given text."""

    def __init__(self, stream):
        self.text = ""
        self._q: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for chunk in iter(lambda: stream.read(1), ""):
            self._q.put(chunk)
        self._q.put(None)

    def wait_for(self, needle: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while needle not in self.text:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                chunk = self._q.get(timeout=left)
            except queue.Empty:
                return False
            if chunk is None:
                return needle in self.text
            self.text += chunk
        return True


def test_cli_mode_pings_while_steps_apply(tmp_path):
    out = tmp_path / "run"
    p = subprocess.Popen(
        MESHEMU
        + [
            "run",
            "--cli",
            "--duration",
            "8",
            "--traffic",
            "none",
            "--shaper",
            "userspace",
            "--out",
            str(out),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        got = Output(p.stdout)
        # the build time depends on the machine: wait for the CLI, not for a fixed time
        assert got.wait_for("mininet>", 180), got.text
        # node 66 (0-based 65) is new_york in the default scenario; see nodes.csv
        p.stdin.write("london ping -c 3 -i 0.5 10.0.0.66\n")
        p.stdin.flush()
        assert got.wait_for("packets transmitted", 60), got.text
        # the clock keeps going while the CLI is open; it says when the schedule is done
        assert got.wait_for("*** schedule ended at step 8", 60), got.text
        p.stdin.write("exit\n")
        p.stdin.flush()
        p.wait(timeout=60)
        got.wait_for("\0never\0", 5)  # drain what is left
        text = got.text
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, text
    with open(out / "nodes.csv", newline="") as f:
        assert next(r for r in csv.DictReader(f) if r["id"] == "65")["name"] == "new_york"
    assert "3 received" in text, text
    with open(out / "steps.csv", newline="") as f:
        steps = list(csv.DictReader(f))
    assert [int(r["step"]) for r in steps] == list(range(9))  # all applied while the CLI was open
    assert text.count("64 bytes from 10.0.0.66") == 3  # printed once, not twice


@pytest.mark.parametrize(
    ("routing", "command", "answer"),
    [
        ("ospf", "s0_0_0 vtysh -c 'show ip ospf neighbor'", "Full/-"),
        ("bird-ospf", "s0_0_0 birdc show ospf neighbors", "Full/PtP"),
    ],
)
def test_cli_reaches_the_nodes_routing_daemon(tmp_path, routing, command, answer):
    """With a daemon scheme, `NODE vtysh ...` / `NODE birdc ...` in the CLI talk to that
    node's own daemon (its neighbours are up)."""
    p = subprocess.Popen(
        MESHEMU
        + ["run", "--cli", "--duration", "4", "--traffic", "none", "--shaper", "userspace"]
        + ["--routing", routing, "--out", str(tmp_path / "run")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        got = Output(p.stdout)
        assert got.wait_for("mininet>", 240), got.text
        p.stdin.write(command + "\n")
        p.stdin.flush()
        assert got.wait_for(answer, 60), got.text
        # wait for the next prompt: until the command is done, Mininet hands what is typed
        # to it (an 'exit' typed too early loses its 'e' to vtysh)
        deadline = time.monotonic() + 60
        while got.text.split(answer, 1)[1].count("mininet>") < 1:
            assert time.monotonic() < deadline, got.text
            got.wait_for("\0never\0", 0.2)
        p.stdin.write("exit\n")
        p.stdin.flush()
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            got.wait_for("\0never\0", 2)
            pytest.fail(f"the run did not end after 'exit':\n{got.text}")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
            # a killed run leaves its daemons: remove them so later tests start clean
            subprocess.run(MESHEMU + ["clean"], capture_output=True, timeout=300)
    assert p.returncode == 0, got.text
