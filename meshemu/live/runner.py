"""``meshemu run``: the command-line entry point and the names callers import.

The run itself is a pipeline of stages in :mod:`meshemu.live.run` (validate, plan, build,
step, collect), its options one value (:class:`~meshemu.live.options.RunOptions`) and its
real-time clock :class:`~meshemu.live.clock.Clock`.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

from meshemu.live.feed import RouteFeed
from meshemu.live.options import BuiltHook, RunOptions, StepHook
from meshemu.live.run import RunResult, run_emulation

#: Steps whose page JSON ``--view`` makes before the clock starts (later ones on first request).
VIEW_PRE_ENCODE_STEPS = 1200

__all__ = [
    "BuiltHook",
    "RouteFeed",
    "RunOptions",
    "RunResult",
    "StepHook",
    "run_emulation",
    "run_from_cli",
    "print_result",
    "run_with_view",
    "options_from_args",
]


def options_from_args(args: argparse.Namespace) -> RunOptions:
    """The :class:`RunOptions` of a ``meshemu run`` command line.

    Without ``--traffic`` the default workload runs where it fits (``traffic_optional``).
    """
    return RunOptions(
        duration_s=args.duration,
        step_s=args.step,
        start_s=args.start,
        time_scale=args.time_scale,
        shaper=args.shaper,
        shaper_workers=getattr(args, "shaper_workers", 1),
        shaper_gso={"on": True, "off": False}.get(getattr(args, "shaper_gso", "auto")),
        routing=args.routing,
        out_dir=args.out,
        traffic=args.traffic or "default",
        traffic_optional=args.traffic is None,
        capture=tuple(args.capture or ()),
        cli=args.cli,
        guard_ms=getattr(args, "guard_ms", 0.5),
        detect=getattr(args, "detect", "carrier"),
        plots=not getattr(args, "no_plots", False),
        delay_tolerance_us=getattr(args, "delay_tolerance_us", 1.0),
        route_hold_us=getattr(args, "route_hold_us", 0.0),
        route_aggregation=getattr(args, "route_aggregation", "auto"),
        cluster=getattr(args, "cluster", None),
        hosts=getattr(args, "hosts", None),
        partition=getattr(args, "partition", "auto"),
        owd_trust_ms=getattr(args, "owd_trust_ms", 1.0),
    )


def run_from_cli(args: argparse.Namespace) -> int:
    """``meshemu run`` entry point: run, then print the summary (with ``--view``, the
    browser view follows the run: :func:`meshemu.view.commands.run_with_view`)."""
    if getattr(args, "view", False):
        return run_with_view(args)
    print_result(run_emulation(args.scenario, options_from_args(args)))
    return 0


def print_result(res: RunResult) -> None:
    """The closing lines of ``meshemu run``: timing, fidelity, traffic, files."""
    s = res.summary
    t = s["timing"]
    print(
        f"run {s['run_id']} of {s['scenario']}: {s['nodes']} nodes, {s['links_total']} links, "
        f"{s['steps']} steps, shaper {s['shaper']}, routing {s['routing']}"
    )
    print(
        f"  build {t['build_s']:.1f} s, stop {t['stop_s']:.1f} s; apply per step p50 "
        f"{t['apply_ms_p50']:.1f} ms, p99 {t['apply_ms_p99']:.1f} ms; lag p99 "
        f"{t['lag_ms_p99']:.1f} ms"
    )
    print(
        f"  link updates {s['link_updates_total']}, route changes {s['route_changes_total']}; "
        f"link events {s['events']}"
    )
    fid = s.get("fidelity", {})
    print(f"  fidelity: {fid.get('verdict', 'not measured')}")
    for lk in fid.get("links", [])[:3]:
        print(
            f"    {lk['a']}-{lk['b']} ({lk['direction']}): lateness p99 up to "
            f"{lk['worst_p99_ms']:.2f} ms in {lk['steps']} step(s) (see shaper.csv)"
        )
    if "cluster" in s:
        c = s["cluster"]
        part = c["partition"]
        sub = ", ".join(f"{k}: {v:.3f} ms" for k, v in c["substrate_one_way_ms"].items())
        print(
            f"  cluster {c['address']}: {c['n_hosts']} hosts ({part['method']}), "
            f"{part['cut_links']} links between hosts; substrate one way {sub or 'none'}; "
            f"clock offsets within {c['clock_offset_bound_ms']:.2f} ms"
        )
        for h, x in c["hosts"].items():
            p99 = x["apply_ms_p99"]
            print(
                f"    host {h} ({x['address']}): {x['nodes']} nodes, build "
                f"{x['build_s'] or 0:.1f} s, apply p99 "
                f"{'-' if p99 is None else f'{p99:.1f}'} ms"
            )
    if "traffic" in s:
        for line in s["traffic"].get("lines", []):
            print(f"  {line}")
    names = [
        str(f.relative_to(res.run_dir)) if f.is_relative_to(res.run_dir) else str(f)
        for f in res.files
    ]
    print(f"wrote {res.run_dir}/: {', '.join(names)}")
    if (res.run_dir / "report" / "summary.md").exists():
        print(
            f"report: {res.run_dir}/report/summary.md (tables) and its PNG plots; "
            f"compare runs with `meshemu compare RUN_DIR RUN_DIR`"
        )


def run_with_view(args: argparse.Namespace) -> int:
    """``meshemu run ... --view``: the run, followed live by the browser view.

    The run's plan is computed first into a temporary directory (the same scenario, span and
    routing, hence the same geometry as the run's own) and served with the run directory's
    measurements as the run writes them; a :class:`~meshemu.view.live.LiveFeed` is the run's
    ``on_step`` and ``on_built`` hook, so the step loop only enqueues the step index and the
    serving happens in the server's threads. After the run the page is served until Ctrl-C.
    """
    from meshemu.linux.limits import require_root
    from meshemu.plan import run_plan
    from meshemu.view.commands import serve_until_interrupted
    from meshemu.view.data import RunData
    from meshemu.view.live import LiveFeed
    from meshemu.view.server import ViewServer, check_libraries

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
        for k in range(min(len(data.steps), VIEW_PRE_ENCODE_STEPS)):
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
        serve_until_interrupted(server)
        server = None
        return 0
    finally:
        if server is not None:
            server.close()
        feed.close()
        shutil.rmtree(plan_dir, ignore_errors=True)
