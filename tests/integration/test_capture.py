"""`meshemu run --capture`: pcaps of a node and of a link, dissected by Scapy."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
from scapy.utils import rdpcap

from meshemu.traffic.header import MeshemuHeader

pytestmark = pytest.mark.root
MESHEMU = [sys.executable, "-m", "meshemu.cli"]


def test_capture_node_and_link_hold_meshemu_packets(tmp_path):
    from meshemu.live.runner import run_emulation
    from meshemu.spec.scenario import load_scenario

    out = tmp_path / "run"
    res = run_emulation(
        load_scenario("default"),
        duration_s=8,
        shaper="userspace",
        traffic="default",
        out_dir=out,
        plots=False,
        capture=["s0_0_0", "s0_0_0:s0_0_1"],
    )
    with open(out / "flows.csv", newline="") as f:
        flows = {int(r["flow_id"]) for r in csv.DictReader(f)}
    for name in ("capture-s0_0_0.pcap", "capture-s0_0_0-s0_0_1.pcap"):
        assert out / name in res.files
        pkts = rdpcap(str(out / name))
        hdrs = [p[MeshemuHeader] for p in pkts if p.haslayer(MeshemuHeader)]
        assert len(hdrs) > 10, (name, len(pkts))
        assert {h.flow_id for h in hdrs} <= flows
    # the node capture sees at least what crosses one of its links
    n_node = len(rdpcap(str(out / "capture-s0_0_0.pcap")))
    assert n_node >= len(rdpcap(str(out / "capture-s0_0_0-s0_0_1.pcap")))


@pytest.mark.parametrize(
    "spec, message",
    [("nowhere", "unknown node 'nowhere'"), ("london:s0_7_7", "no link london-s0_7_7")],
)
def test_bad_capture_spec_fails_before_building(tmp_path, spec, message):
    r = subprocess.run(
        MESHEMU + ["run", "--capture", spec, "--duration", "2", "--out", str(tmp_path / "z")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "z").exists()
