"""``meshemu run``: the live emulation, driven in real time (or scaled time) by the plan.

Data flow::

    LinkSchedule (snapshots, pure)  ->  routing process (forwarding tables, ahead of time)
          \\                                   |
           -> Emulation.build (Mininet nodes, shaped links, first routes)
           -> every step: Emulation.apply(snapshot, tables)  (only what changed)
           -> traffic agents in the nodes  ->  measurements in the run directory

The whole schedule is computed before the network is built (it is cheap: ~2 ms per step
for 1,584 satellites), so the emulator knows every link that will ever exist and creates
them all at build time; a link absent from a step is simply down. Forwarding tables for
every destination are computed by a separate process running ahead of the clock.

Step k is applied at wall time ``start + k * step_s / time_scale``. Each step's apply time
and lag are written to ``steps.csv``; a step that starts more than half a step late logs a
warning.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meshemu.errors import (EmulationError, MeshemuError, ProfileError, RoutingError,
                            Terminated)
from meshemu.geometry.linkstate import Snapshot
from meshemu.plan import PlanRecorder, endpoint_ids
from meshemu.routing import ForwardingTables, RoutingScheme, get_scheme
from meshemu.spec.scenario import Scenario, load_scenario
from meshemu.geometry.schedule import LinkSchedule

log = logging.getLogger(__name__)

StepHook = Callable[[int, Snapshot, "Emulation"], None]  # noqa: F821


@dataclass
class RunResult:
    """What :func:`run_emulation` did."""

    run_dir: Path
    summary: dict
    files: list[Path] = field(default_factory=list)


def _die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent dies (even by SIGKILL)."""
    import ctypes
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _routes_worker(snapshots: list[Snapshot], scheme: RoutingScheme, dests: np.ndarray,
                   q: mp.Queue) -> None:
    """Child process: forwarding tables for every step, in order, into ``q``."""
    _die_with_parent()
    try:
        for k, snap in enumerate(snapshots):
            t = scheme.forwarding_tables(snap, dests)
            q.put((k, t.destinations, t.next_hop, t.scheme))
        q.put(None)
    except Exception as exc:  # report to the parent, which raises it
        q.put(("error", f"{type(exc).__name__}: {exc}"))


class RouteFeed:
    """Forwarding tables per step, computed ahead of time by a child process."""

    def __init__(self, snapshots: list[Snapshot], scheme: RoutingScheme, dests: np.ndarray,
                 lookahead: int = 8):
        ctx = mp.get_context("fork")
        self.q: mp.Queue = ctx.Queue(maxsize=lookahead)
        self.proc = ctx.Process(target=_routes_worker, args=(snapshots, scheme, dests, self.q),
                                name="meshemu-routes", daemon=True)
        self.proc.start()

    def get(self, k: int, timeout_s: float = 600.0) -> ForwardingTables:
        item = self.q.get(timeout=timeout_s)
        if item is None or item[0] == "error":
            raise RoutingError(f"routing scheme failed at step {k}: "
                               f"{item[1] if item else 'no more steps'}")
        kk, dests, nh, name = item
        if kk != k:
            raise EmulationError(f"route feed out of order: wanted step {k}, got {kk}")
        return ForwardingTables(destinations=dests, next_hop=nh, scheme=name)

    def close(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
        self.proc.join(timeout=5)
        self.q.close()
        self.q.cancel_join_thread()


class _Signals:
    """SIGTERM (and SIGINT) raise :class:`Terminated` in the main thread while active."""

    def __enter__(self):
        self.old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.old[sig] = signal.signal(sig, self._handler)
        return self

    def _handler(self, signum, frame):
        raise Terminated(f"received {signal.Signals(signum).name}; tearing down")

    def __exit__(self, *exc):
        for sig, h in self.old.items():
            signal.signal(sig, h)
        return False


def _check_capacity(n_nodes: int, n_sats: int, n_ground: int) -> None:
    """Refuse a scenario that cannot fit before spending time planning it: addressing limits
    and memory, with the link count estimated as 2 ISLs per satellite plus a few GSLs per
    ground node (the plan's exact figures are checked again at build time)."""
    from meshemu.live import addressing as addressing
    from meshemu.live.emulation import check_memory
    n_links = 2 * n_sats + 4 * n_ground
    addressing.check_limits(n_nodes, n_links)
    check_memory(n_nodes, n_links, n_nodes * n_nodes)


def run_emulation(scenario: Scenario | str, duration_s: float = 60.0, step_s: float = 1.0,
                  time_scale: float = 1.0, shaper: str = "auto",
                  routing: str | RoutingScheme = "shortest-delay",
                  out_dir: Path | str | None = None, traffic: str | None = "default",
                  cli: bool = False, on_step: StepHook | None = None,
                  on_built: Callable[["Emulation"], None] | None = None,  # noqa: F821
                  plots: bool = True, start_s: float = 0.0,
                  capture: list[str] | None = None,
                  traffic_optional: bool = False) -> RunResult:
    """Build the emulated network, drive it through the plan, tear it down.

    Parameters
    ----------
    scenario : Scenario or str
        A scenario, or a path / shipped name.
    duration_s, step_s : float
        Emulated time span and step.
    time_scale : float
        Emulated seconds per wall-clock second (2 = twice as fast as real time).
    shaper : str
        ``auto`` (netem when the kernel has it, else userspace), ``netem``, ``userspace``.
    routing : str or RoutingScheme
    out_dir : path, optional
        Run directory (default ``runs/run-<scenario>-<time>``).
    traffic : str or None
        A traffic profile (path or name in ``traffic/``), ``None``/``"none"`` for no traffic.
    cli : bool
        Open Mininet's CLI; the geometry keeps updating in a background thread and the run
        ends when the CLI exits (or the duration is over, whichever is later).
    on_step : callable(k, snapshot, emulation), optional
        Called after each step is applied (from the stepping thread); used by tests.
    on_built : callable(emulation), optional
        Called once the network is built, before the clock starts.
    plots : bool
        Write ``map.png`` and ``path_delay.png``.
    start_s : float
        Start this many seconds after the scenario epoch.
    traffic_optional : bool
        If the profile does not fit the scenario (e.g. the default workload on a scenario
        without compute satellites), run without traffic and say so instead of failing.
    capture : list of str, optional
        Packet captures: ``NODE`` (all its interfaces) or ``NODE:PEER`` (one link); see
        :mod:`meshemu.live.capture`.
    """
    from meshemu.linux.limits import require_root
    from meshemu.live.emulation import Emulation, RunLinks
    from meshemu.live.shapers import make_shaper

    require_root("meshemu run")
    if isinstance(scenario, (str, Path)):
        scenario = load_scenario(scenario)
    if not (duration_s >= 0 and step_s > 0 and time_scale > 0 and start_s >= 0):
        raise EmulationError(f"need duration >= 0, step > 0, time scale > 0 and start >= "
                             f"0; got {duration_s}, {step_s}, {time_scale}, {start_s}")
    scheme = get_scheme(routing) if isinstance(routing, str) else routing
    run_id = uuid.uuid4().hex[:6]
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(out_dir) if out_dir else Path("runs") / f"run-{scenario.name}-{stamp}"

    # ---- plan (pure): every snapshot of the run
    t0 = time.perf_counter()
    sched = LinkSchedule(scenario, step_s)
    _check_capacity(len(sched.nodes), sched.n_sats, len(scenario.ground))
    if traffic and traffic != "none":
        # a bad profile fails here, before anything is built
        from meshemu.spec.profile import load_profile, resolve
        traffic = load_profile(traffic)
        try:
            resolve(traffic, sched.nodes.names, sched.nodes.kind)
        except ProfileError as exc:
            if not traffic_optional:
                raise
            print(f"no traffic: the default workload does not fit scenario {scenario.name} "
                  f"({exc}); give --traffic PROFILE for one that does", flush=True)
            traffic = None
    n_steps = int(np.floor(duration_s / step_s + 1e-9)) + 1
    snapshots = list(sched.snapshots(duration_s, start_s=start_s))
    link_keys = np.unique(np.concatenate([s.key for s in snapshots]))
    nodes = sched.nodes
    all_dests = np.arange(len(nodes), dtype=np.int32)
    ends = endpoint_ids(scenario, nodes)
    t_plan = time.perf_counter() - t0
    from meshemu.live.capture import Captures, parse_specs
    capture_specs = parse_specs(capture, nodes.names, link_keys)
    log.info("plan: %d nodes, %d links over the run, %d steps (%.2f s)", len(nodes),
             link_keys.size, n_steps, t_plan)

    out.mkdir(parents=True, exist_ok=True)
    feed = RouteFeed(snapshots, scheme, all_dests)
    recorder = PlanRecorder(out, nodes, ends)
    emu = None
    agents = None
    captures = None
    pcaps: list[Path] = []
    steps_f = open(out / "steps.csv", "w", newline="")
    steps_w = csv.writer(steps_f)
    steps_w.writerow(["step", "t_s", "wall_s", "unix_s", "lag_ms", "apply_ms", "link_updates",
                      "route_changes"])
    stats_rows: list[tuple] = []
    shaper_obj = None
    summary: dict = {}
    t_build = t_stop = 0.0
    try:
        with _Signals():
            shaper_obj = make_shaper(shaper, run_id)
            emu = Emulation(nodes.names, list(nodes.kind), shaper_obj, out, run_id,
                            queue_packets=(scenario.isl.queue_packets,
                                           scenario.gsl.queue_packets))
            first_tables = feed.get(0)
            t0 = time.perf_counter()
            why = ""
            if shaper == "auto":
                why = (" picked by auto: the kernel has netem" if shaper_obj.name == "netem"
                       else " picked by auto: the kernel has no netem")
            print(f"building {len(nodes)} nodes and {link_keys.size} links "
                  f"(shaper: {shaper_obj.name}{why}) ...", flush=True)
            emu.build(RunLinks.from_snapshots(snapshots), snapshots[0], first_tables)
            t_build = time.perf_counter() - t0
            print(f"built in {t_build:.1f} s", flush=True)
            paths0 = recorder.record(snapshots[0], first_tables)
            if capture_specs:
                captures = Captures(emu, capture_specs, out)
            if on_built:
                on_built(emu)
            if traffic and traffic != "none":
                from meshemu.traffic.runtime import start_traffic
                agents = start_traffic(traffic, scenario, emu, sched, snapshots, out,
                                       duration_s / time_scale, first_tables)
                agents.step(0, snapshots[0].t_s, paths0, first_tables)
            state = {"k": 0, "error": None}

            def stepper() -> None:
                start = time.monotonic()
                # step 0 is the state the network was built in; the clock starts now
                steps_w.writerow((0, snapshots[0].t_s, 0.0, round(time.time(), 6), 0.0,
                                  round(t_build * 1e3, 3), 0, 0))
                for k in range(1, n_steps):
                    due = start + k * step_s / time_scale
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    if state.get("stop"):
                        return
                    began = time.monotonic()
                    began_unix = time.time()
                    lag = began - due
                    tables = feed.get(k)
                    st = emu.apply(snapshots[k], tables)
                    apply_s = time.monotonic() - began
                    paths = recorder.record(snapshots[k], tables)
                    if agents is not None:
                        agents.step(k, snapshots[k].t_s, paths, tables)
                    row = (k, snapshots[k].t_s, round(began - start, 6), round(began_unix, 6),
                           round(lag * 1e3, 3), round(apply_s * 1e3, 3), st.n_link_updates,
                           st.n_route_changes)
                    steps_w.writerow(row)
                    stats_rows.append(row)
                    if k % 10 == 0:
                        steps_f.flush()
                        recorder.flush()
                    if lag > 0.5 * step_s / time_scale:
                        log.warning("step %d started %.0f ms late (apply took %.0f ms): the "
                                    "emulation is falling behind real time", k, lag * 1e3,
                                    apply_s * 1e3)
                    if on_step:
                        on_step(k, snapshots[k], emu)
                    state["k"] = k

            if cli:
                from mininet.cli import CLI
                from mininet.log import lg
                lg.propagate = False  # it prints through its own handler; no second copy

                def guarded() -> None:
                    try:
                        stepper()
                    except BaseException as exc:  # surfaced after the CLI exits
                        state["error"] = exc
                        return
                    if not state.get("stop"):
                        k = state["k"]
                        print(f"\n*** schedule ended at step {k} (t = {snapshots[k].t_s:g} s); "
                              "the network stays as it is until 'exit'", flush=True)

                th = threading.Thread(target=guarded, name="meshemu-clock", daemon=True)
                th.start()
                print("*** Mininet CLI: the geometry keeps updating; 'exit' ends the run")
                CLI(emu.mininet)
                state["stop"] = True
                th.join(timeout=5 * step_s)
                if state["error"]:
                    raise state["error"]
            else:
                stepper()
            if agents is not None:
                agents.finish()
    finally:
        steps_f.close()
        recorder.close()
        feed.close()
        if agents is not None:
            agents.stop()
        if captures is not None:
            pcaps = captures.stop()
        if emu is not None:
            t0 = time.perf_counter()
            emu.stop()
            t_stop = time.perf_counter() - t0
        elif shaper_obj is not None:
            shaper_obj.close()
    summary = recorder.summary(scenario, scheme.name, duration_s, step_s, start_s)
    arr = np.array([r[5] for r in stats_rows]) if stats_rows else np.zeros(1)
    lag = np.array([r[4] for r in stats_rows]) if stats_rows else np.zeros(1)
    summary.update({
        "kind": "run", "run_id": run_id, "shaper": shaper_obj.name if shaper_obj else shaper,
        "time_scale": time_scale, "links_total": int(link_keys.size),
        "timing": {"plan_s": round(t_plan, 3), "build_s": round(t_build, 3),
                   "stop_s": round(t_stop, 3),
                   "apply_ms_p50": float(np.percentile(arr, 50)),
                   "apply_ms_p99": float(np.percentile(arr, 99)),
                   "apply_ms_max": float(arr.max()),
                   "lag_ms_p99": float(np.percentile(lag, 99)),
                   "lag_ms_max": float(lag.max())},
        "route_changes_total": int(sum(r[7] for r in stats_rows)),
        "link_updates_total": int(sum(r[6] for r in stats_rows)),
    })
    files = [out / f for f in ("nodes.csv", "links.csv", "paths.csv", "steps.csv")]
    if agents is not None:
        summary["traffic"] = agents.summary()
        files += agents.files()
    files += pcaps
    if pcaps:
        summary["captures"] = [p.name for p in pcaps]
    if plots:
        from meshemu.report import maps as plotmod
        files.append(plotmod.plot_map(out / "map.png", sched, snapshots[0],
                                      title=f"{scenario.name} at t = 0 s"))
        files.append(plotmod.plot_path_delays(out / "path_delay.png", out / "paths.csv",
                                              title=f"{scenario.name}: planned path delay "
                                                    f"({scheme.name})"))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    files.append(out / "summary.json")
    if plots and agents is not None:
        from meshemu.report import report
        try:
            files += report(out).files
        except MeshemuError as exc:  # the run's own files are written; say what is missing
            log.warning("could not write the report of %s: %s (run `meshemu report %s` "
                        "after fixing it)", out, exc, out)
    return RunResult(out, summary, [f for f in files if f.exists()])


def run_from_cli(args) -> int:
    """``meshemu run`` entry point."""
    res = run_emulation(args.scenario, args.duration, args.step, args.time_scale, args.shaper,
                        args.routing, args.out, traffic=args.traffic or "default", cli=args.cli,
                        traffic_optional=args.traffic is None,
                        start_s=args.start, capture=args.capture)
    s = res.summary
    t = s["timing"]
    print(f"run {s['run_id']} of {s['scenario']}: {s['nodes']} nodes, {s['links_total']} links, "
          f"{s['steps']} steps, shaper {s['shaper']}, routing {s['routing']}")
    print(f"  build {t['build_s']:.1f} s, stop {t['stop_s']:.1f} s; apply per step p50 "
          f"{t['apply_ms_p50']:.1f} ms, p99 {t['apply_ms_p99']:.1f} ms; lag p99 "
          f"{t['lag_ms_p99']:.1f} ms")
    print(f"  link updates {s['link_updates_total']}, route changes {s['route_changes_total']}; "
          f"link events {s['events']}")
    if "traffic" in s:
        for line in s["traffic"].get("lines", []):
            print(f"  {line}")
    names = [str(f.relative_to(res.run_dir)) if f.is_relative_to(res.run_dir) else str(f)
             for f in res.files]
    print(f"wrote {res.run_dir}/: {', '.join(names)}")
    if (res.run_dir / "report" / "summary.md").exists():
        print(f"report: {res.run_dir}/report/summary.md (tables) and its PNG plots; "
              f"compare runs with `meshemu compare RUN_DIR RUN_DIR`")
    return 0
