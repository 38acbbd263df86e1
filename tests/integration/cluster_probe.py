"""Run the default scenario (on one host, or over a Ray cluster) and ping node pairs at every
step; write the minimum round trips as JSON. A helper of tests/integration/test_cluster.py,
run as the driver inside a simulated host:

    python cluster_probe.py OUT_DIR RESULT_JSON PAIRS [CLUSTER_ADDRESS]

PAIRS: ``a:b,c:d`` (node names); ``cut`` as the first pair picks the first link between
hosts of the run's partition that is up at every step (cluster runs only).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

RTT = re.compile(r"= ([\d.]+)/")


def main() -> None:
    out, result, pairs_arg = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    cluster = sys.argv[4] if len(sys.argv) > 4 else None
    from meshemu.live import addressing as adr
    from meshemu.live.run import run_emulation

    pairs: list[tuple[str, str]] = []
    rtts: dict[str, dict[int, float]] = {}

    def names_ids(emu):
        return {n: i for i, n in enumerate(emu.names)}

    def built(emu):
        ids = names_ids(emu)
        for p in pairs_arg.split(","):
            if p == "cut":
                part = json.loads((out / "partition.json").read_text())
                # an ISL (both ends satellites): up at every step of a +Grid
                a, b = next(c for c in part["cut"] if c[0].startswith("s") and c[1].startswith("s"))
                pairs.append((a, b))
            else:
                a, b = p.split(":")
                pairs.append((a, b))
        for a, b in pairs:
            assert a in ids and b in ids, (a, b)
            rtts[f"{a}:{b}"] = {}

    def step(k, snap, emu):
        ids = names_ids(emu)
        for a, b in pairs:
            argv = [
                "ping",
                "-n",
                "-q",
                "-c",
                "5",
                "-i",
                "0.03",
                "-W",
                "1",
                adr.node_address(ids[b]),
            ]
            if hasattr(emu, "node_exec"):
                rc, text = emu.node_exec(a, argv)
            else:
                p = subprocess.run(
                    ["nsenter", "-t", str(emu.node(a).pid), "-n", *argv],
                    capture_output=True,
                    text=True,
                )
                text = p.stdout
            m = RTT.search(text)
            rtts[f"{a}:{b}"][k] = float(m.group(1)) if m else float("nan")

    res = run_emulation(
        "default",
        duration_s=8.0,
        step_s=1.0,
        traffic="none",
        plots=False,
        shaper="userspace",
        out_dir=out,
        cluster=cluster,
        on_built=built,
        on_step=step,
    )
    result.write_text(
        json.dumps({"pairs": pairs, "rtt_ms": rtts, "summary": res.summary}, default=str)
    )


if __name__ == "__main__":
    main()
