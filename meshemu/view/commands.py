"""``meshemu view RUN_DIR`` and ``meshemu run --view``: serve the page, print its URL.

``meshemu run --view`` computes the run's plan first (into a temporary directory: the
same scenario, span and routing, so the same geometry as the run's), serves it with the
run directory's measurements, and passes a :class:`~meshemu.view.live.LiveFeed` to the run
as its ``on_step`` and ``on_built`` hooks: the step loop only enqueues the step index.
After the run the page keeps being served until Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

from meshemu.errors import Interrupted
from meshemu.view.data import RunData
from meshemu.view.live import LiveFeed
from meshemu.view.server import ViewServer, check_libraries

#: Steps whose JSON is made before a live run's clock starts (later ones on first request).
PRE_ENCODE_STEPS = 1200


def _serve_until_interrupted(server: ViewServer) -> None:
    try:
        while True:
            time.sleep(3600)
    except (Interrupted, KeyboardInterrupt):
        print("view: stopped", flush=True)
    finally:
        server.close()


def view_from_cli(args: argparse.Namespace) -> int:
    """``meshemu view RUN_DIR [--host H] [--port N]``: serve until Ctrl-C."""
    check_libraries()
    data = RunData(args.run_dir)
    server = ViewServer(data, args.host, args.port)
    url = server.start()
    print(
        f"view of {data.measure_dir}: {len(data.names)} nodes, {len(data.link_a)} links, "
        f"{len(data.steps)} steps",
        flush=True,
    )
    print(f"view: {url}  (Ctrl-C stops)", flush=True)
    _serve_until_interrupted(server)
    return 0


def run_with_view(args: argparse.Namespace) -> int:
    """``meshemu run ... --view``: the run, followed live by the page."""
    from meshemu.linux.limits import require_root
    from meshemu.live.run import run_emulation
    from meshemu.live.runner import options_from_args, print_result
    from meshemu.plan import run_plan

    check_libraries()
    require_root("meshemu run")
    opts = options_from_args(args)
    plan_dir = Path(tempfile.mkdtemp(prefix="meshemu-view-plan-"))
    server: ViewServer | None = None
    feed = LiveFeed()
    try:
        t0 = time.perf_counter()
        run_plan(
            args.scenario,
            args.duration,
            args.step,
            args.routing,
            plan_dir,
            plots=False,
            start_s=args.start,
        )
        data = RunData(plan_dir, live=True, time_scale=args.time_scale)
        for k in range(min(len(data.steps), PRE_ENCODE_STEPS)):
            data.step_json(k)
        server = ViewServer(data, args.view_host, args.view_port, feed=feed)
        url = server.start()
        print(
            f"view: {url}  (live: the page follows the run; geometry planned in "
            f"{time.perf_counter() - t0:.1f} s)",
            flush=True,
        )

        def built(emu: object) -> None:
            data.attach_measurements(Path(emu.run_dir))  # type: ignore[attr-defined]
            feed.built()

        opts = dataclasses.replace(opts, on_step=feed, on_built=built)
        res = run_emulation(args.scenario, opts)
        feed.finish()
        print_result(res)
        print(f"view: the run is over; still serving {url}  (Ctrl-C stops)", flush=True)
        _serve_until_interrupted(server)
        server = None
        return 0
    finally:
        if server is not None:
            server.close()
        feed.close()
        shutil.rmtree(plan_dir, ignore_errors=True)


__all__ = ["run_with_view", "view_from_cli"]
