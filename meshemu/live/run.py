"""``meshemu run`` as a pipeline of small stages with typed values between them::

    validate(scenario, options) -> RunInputs     every option, profile, plug-in and path
                                                 checked; nothing written, nothing built
    make_plan(inputs)           -> RunPlan       every snapshot of the run (pure, in memory),
                                                 profile resolved, captures checked
    Network.build(inputs, plan) -> Network       run directory, route feed, plan recorder,
                                                 Mininet nodes and links, captures, traffic
    StepLoop(network).run(clock)                 one step per clock tick: apply what changed
    collect(inputs, plan, net)  -> RunResult     summary.json, plots, report

The whole schedule is computed before the network is built (it is cheap: ~2 ms per step for
1,584 satellites), so the emulator knows every link that will ever exist and creates them all
at build time; a link absent from a step is simply down. Forwarding tables for every
destination are computed by a child process running ahead of the clock
(:class:`~meshemu.live.feed.RouteFeed`).

Step k is applied at wall time ``start + k * step_s / time_scale``
(:class:`~meshemu.live.clock.Clock`). Each step's apply time and lag go to ``steps.csv``; a
step that starts more than half a step late logs a warning. SIGINT, SIGTERM and SIGHUP
raise :class:`~meshemu.errors.Interrupted` (:func:`~meshemu.signals.handle_signals`);
everything built is torn down before it propagates.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import json
import logging
import math
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from meshemu.errors import MeshemuError, OptionsError, ProfileError, ResourceError
from meshemu.geometry.linkstate import Snapshot
from meshemu.geometry.schedule import LinkSchedule
from meshemu.live.clock import Clock
from meshemu.live.feed import RouteFeed
from meshemu.live.guard import FidelityGuard, verdict
from meshemu.live.options import RunOptions
from meshemu.live.resources import check_capacity
from meshemu.plan import PlanRecorder, endpoint_ids, load_scheme
from meshemu.report.files import CONVERGENCE, DISRUPTION, SHAPER, STEPS, open_csv
from meshemu.report.record import node_positions_ecef_km
from meshemu.routing import ComputedScheme, scheme_kind
from meshemu.routing.hold import with_hold
from meshemu.signals import handle_signals, signals_deferred
from meshemu.spec.options import TimeSpan, check_out_dir, make_out_dir
from meshemu.spec.profile import Profile, load_profile, resolve
from meshemu.spec.scenario import Scenario, load_scenario

log = logging.getLogger(__name__)

#: Share of the available memory the run's snapshots may take.
SNAPSHOT_MEMORY_SHARE = 0.5
#: From this many nodes, two route processes share the destinations (routing to every node
#: costs about 1 s per step at 4,400 nodes).
ROUTE_WORKERS_FROM_NODES = 2000
#: Routing a step may take this share of the step's wall time before the run warns that it
#: will not keep up.
ROUTING_SHARE_OF_STEP = 0.8
#: How long daemon routing may take to route every node to the endpoints before the clock
#: starts (s), plus as much per node (flooding and SPF grow with the network).
INITIAL_CONVERGENCE_TIMEOUT_S = 120.0
INITIAL_CONVERGENCE_PER_NODE_S = 0.25


def say(text: str) -> None:
    """A progress line for the person running ``meshemu run`` (stdout, flushed)."""
    print(text, flush=True)


@dataclass
class RunResult:
    """What :func:`run_emulation` did."""

    run_dir: Path
    summary: dict
    files: list[Path] = field(default_factory=list)


# ---------------------------------------------------------------------------- 1. validate
@dataclass(frozen=True)
class RunInputs:
    """Everything a run needs, checked; nothing is written or built yet.

    ``shaper`` is the shaper object (constructing one creates nothing on the machine; ``auto``
    is resolved); its owner closes it.
    """

    scenario: Scenario
    options: RunOptions
    span: TimeSpan
    scheme: ComputedScheme
    shaper: Any
    profile: Profile | None
    out: Path
    run_id: str


def validate(scenario: Scenario | str | Path, options: RunOptions) -> RunInputs:
    """Check every input of a run before any work starts.

    Raises
    ------
    NotRootError, ScenarioError, OptionsError, RoutingError, ProfileError, ShaperError
        The first bad input, in one line.
    """
    from meshemu.linux.limits import require_root
    from meshemu.live.shapers import make_shaper

    require_root("meshemu run")
    if not isinstance(scenario, Scenario):
        scenario = load_scenario(scenario)
    span = options.span
    scheme = load_scheme(options.routing)
    if options.cluster is not None and scheme_kind(scheme) == "daemon":
        raise OptionsError(
            f"routing {scheme.name} runs daemons in the nodes, which does not work over "
            f"several hosts yet; use a computed scheme (shortest-delay, fewest-hops, ecmp)",
            field="--cluster",
        )
    if scheme_kind(scheme) == "daemon":
        if options.route_hold_us:
            raise OptionsError(
                f"route hold applies to computed schemes; {scheme.name} runs daemons, whose "
                f"own protocol decides when routes move (give --route-hold-us 0)",
                field="--route-hold-us",
            )
        scheme.check_installed()  # type: ignore[attr-defined]  # names the Debian package
    else:
        scheme = with_hold(scheme, options.route_hold_us)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = check_out_dir(options.out_dir or Path("runs") / f"run-{scenario.name}-{stamp}")
    out = out.absolute()  # the agents in the nodes read their configuration from there
    profile = load_profile(options.traffic) if options.wants_traffic else None  # type: ignore[arg-type]
    run_id = uuid.uuid4().hex[:6]
    workers: dict[str, object] = {}
    if options.shaper_workers != 1:
        workers["workers"] = options.shaper_workers
    if options.shaper_gso is not None:
        workers["gso"] = options.shaper_gso
    # over several hosts each host makes its own (userspace) shaper; the driver's is unused
    name = "userspace" if options.cluster is not None else options.shaper
    shaper = make_shaper(name, run_id, **workers)  # unknown, or netem without it
    return RunInputs(scenario, options, span, scheme, shaper, profile, out, run_id)


# ---------------------------------------------------------------------------- 2. plan
@dataclass(frozen=True)
class RunPlan:
    """The whole run computed ahead: every snapshot, the links that ever exist, the
    endpoints of ``paths.csv``, the resolved profile (None: no traffic) and the captures."""

    sched: LinkSchedule
    snapshots: list[Snapshot]
    link_keys: np.ndarray
    ends: np.ndarray
    profile: Profile | None
    captures: list[tuple[str, str | None]]
    plan_s: float

    @property
    def n_steps(self) -> int:
        return len(self.snapshots)


def make_plan(inputs: RunInputs) -> RunPlan:
    """Plan the run in memory (pure; writes nothing).

    Raises
    ------
    ResourceError
        The scenario, or the run's snapshots, do not fit this machine.
    ProfileError, EmulationError
        The profile does not fit the scenario, or a capture names an unknown node or link.
    """
    from meshemu.live.capture import parse_specs

    t0 = time.perf_counter()
    sc, span = inputs.scenario, inputs.span
    sched = LinkSchedule(sc, span.step_s)
    nodes = sched.nodes
    check_capacity(len(nodes), sched.n_sats, len(sc.ground))
    profile = inputs.profile
    if profile is not None:
        try:
            resolve(profile, nodes.names, nodes.kind)
        except ProfileError as exc:
            if not inputs.options.traffic_optional:
                raise
            say(
                f"no traffic: the default workload does not fit scenario {sc.name} ({exc}); "
                f"give --traffic PROFILE for one that does"
            )
            profile = None
    snapshots = _snapshots(sched, span)
    link_keys = np.unique(np.concatenate([s.key for s in snapshots]))
    captures = parse_specs(list(inputs.options.capture), nodes.names, link_keys)
    plan_s = time.perf_counter() - t0
    log.info(
        "plan: %d nodes, %d links over the run, %d steps (%.2f s)",
        len(nodes),
        link_keys.size,
        len(snapshots),
        plan_s,
    )
    return RunPlan(sched, snapshots, link_keys, endpoint_ids(sc, nodes), profile, captures, plan_s)


def _link_ends(plan: RunPlan) -> dict[int, tuple[str, str]]:
    """Link id -> the names of its a and b nodes (for the fidelity guard's rows)."""
    names = plan.sched.nodes.names
    n = len(names)
    return {i: (names[int(k) // n], names[int(k) % n]) for i, k in enumerate(plan.link_keys)}


def _snapshots(sched: LinkSchedule, span: TimeSpan) -> list[Snapshot]:
    """Every snapshot of the run, refusing (after the first) a run whose snapshots would not
    fit in :data:`SNAPSHOT_MEMORY_SHARE` of the available memory."""
    from meshemu.linux.limits import mem_available_bytes

    it = sched.snapshots(span.duration_s, start_s=span.start_s)
    first = next(it)
    per_step = 512 + sum(v.nbytes for v in vars(first).values() if isinstance(v, np.ndarray))
    need = per_step * span.n_steps
    avail = mem_available_bytes()
    if need > SNAPSHOT_MEMORY_SHARE * avail:
        raise ResourceError(
            f"{span.n_steps:,} steps of {len(first.key):,} links would hold "
            f"{need / 2**30:.1f} GiB of link state, more than "
            f"{SNAPSHOT_MEMORY_SHARE:.0%} of the {avail / 2**30:.1f} GiB "
            f"available; use a larger --step or a shorter --duration"
        )
    return [first, *it]


# ---------------------------------------------------------------------------- 3. build
class Network:
    """The built run: the run directory's files being written, the route feed, the live
    network, captures and traffic. :meth:`close` tears all of it down (in reverse order of
    creation, signals deferred) and is safe to call after a partial :meth:`build`."""

    def __init__(self, inputs: RunInputs, plan: RunPlan):
        self.inputs, self.plan = inputs, plan
        self.emu: Any = None
        self.agents: Any = None
        self.recorder: PlanRecorder | None = None
        self.feed: RouteFeed | None = None
        self.pcaps: list[Path] = []
        self.t_build = self.t_stop = 0.0
        self._stack = contextlib.ExitStack()
        self._steps_f: Any = None
        self.steps_w: Any = None
        self.guard: FidelityGuard | None = None
        self.fib: Any = None
        self.control: Any = None
        self.clock_start = 0.0
        self.initial_convergence_s: float | None = None

    @classmethod
    def build(cls, inputs: RunInputs, plan: RunPlan) -> Network:
        """Write the run directory's first files and build the network (see class doc).

        On any failure (a signal included) what was built is torn down before the error
        propagates.
        """
        net = cls(inputs, plan)
        try:
            net._build()
        except BaseException:
            net.close()
            raise
        return net

    def _build(self) -> None:
        from meshemu.live.emulation import Emulation, RunLinks

        inputs, plan, st = self.inputs, self.plan, self._stack
        out, nodes = inputs.out, plan.sched.nodes
        shaper = inputs.shaper
        st.callback(self._stop_emulation)
        make_out_dir(out)
        workers = 2 if len(nodes) >= ROUTE_WORKERS_FROM_NODES and (os.cpu_count() or 1) > 1 else 1
        self.feed = RouteFeed(
            plan.snapshots, inputs.scheme, np.arange(len(nodes), dtype=np.int32), workers=workers
        )
        st.callback(self.feed.close)
        self.recorder = PlanRecorder(out, nodes, plan.ends)
        st.callback(self.recorder.close)
        self._steps_f, self.steps_w = open_csv(out, STEPS)
        st.callback(self._steps_f.close)
        self.tables0 = self.feed.get(0)
        daemons = inputs.scheme if scheme_kind(inputs.scheme) == "daemon" else None
        if inputs.options.cluster is not None:
            self._build_cluster()
            return
        self.emu = Emulation(
            nodes.names,
            list(nodes.kind),
            shaper,
            out,
            inputs.run_id,
            ipv6=bool(getattr(daemons, "ipv6", False)),
            daemons=daemons,
            detect=inputs.options.detect,
            delay_tolerance_s=inputs.options.delay_tolerance_us * 1e-6,
            route_aggregation={"on": True, "off": False}.get(inputs.options.route_aggregation),
        )
        if shaper.has_guard:  # this shaper measures how far behind the plan it is
            self.guard = FidelityGuard(shaper, out, _link_ends(plan), inputs.options.guard_ms)
            st.callback(self.guard.close)
        why = ""
        if inputs.options.shaper == "auto":
            why = (
                " picked by auto: the kernel has netem"
                if shaper.name == "netem"
                else " picked by auto: the kernel has no netem"
            )
        say(
            f"building {len(nodes)} nodes and {plan.link_keys.size} links "
            f"(shaper: {shaper.name}{why}) ..."
        )
        t0 = time.perf_counter()
        # the route processes bank steps on what the build leaves, not on a core of its own
        self.feed.yield_cpu(True)
        try:
            self.emu.build(
                RunLinks.from_snapshots(plan.snapshots),
                plan.snapshots[0],
                self.tables0,
                quiet=self.feed.paused,
            )
        finally:
            self.feed.yield_cpu(False)
        self.t_build = time.perf_counter() - t0
        say(f"built in {self.t_build:.1f} s")
        if daemons is not None:
            from meshemu.live.fib import FibWatcher

            self.fib = FibWatcher(self.emu, plan.ends.tolist())
            st.callback(self.fib.stop)
            self._initial_convergence()
            from meshemu.live.control import ControlMonitor

            self.control = ControlMonitor(self.emu, daemons, out)
            st.callback(self.control.close)  # (before the daemons stop: LIFO)
            if inputs.options.cli:
                self.emu.daemon_runner.install_shell_functions()
        self.paths0 = self.recorder.record(
            plan.snapshots[0],
            self.tables0,
            positions_ecef_km=node_positions_ecef_km(plan.sched, plan.snapshots[0].t_s),
        )
        if plan.captures:
            from meshemu.live.capture import Captures

            caps = Captures(self.emu, plan.captures, out)
            st.callback(lambda: self.pcaps.extend(caps.stop()))
        if inputs.options.on_built:
            inputs.options.on_built(self.emu)
        self._start_traffic()

    def _start_traffic(self, **over_hosts: Any) -> None:
        """The profile's agents in their nodes (``over_hosts``: a run over several hosts'
        ``supervisor`` and ``trust``, :func:`~meshemu.traffic.runtime.start_traffic`)."""
        inputs, plan = self.inputs, self.plan
        if plan.profile is None:
            return
        from meshemu.traffic.runtime import start_traffic

        self.agents = start_traffic(
            plan.profile,
            inputs.scenario,
            self.emu,
            plan.sched,
            plan.snapshots,
            inputs.out,
            inputs.span.duration_s / inputs.options.time_scale,
            self.tables0,
            **over_hosts,
        )
        self._stack.callback(self.agents.stop)
        self.agents.step(0, plan.snapshots[0].t_s, self.paths0, self.tables0)

    def _build_cluster(self) -> None:
        """``--cluster``: partition the nodes, build every host's share, start the traffic
        agents on their nodes' hosts (no captures; the fidelity guard reads every host's
        shaper)."""
        from meshemu.live.cluster.engine import ClusterEmulation, cluster_hosts, connect
        from meshemu.live.emulation import RunLinks
        from meshemu.partition import link_weights, partition_nodes

        inputs, plan = self.inputs, self.plan
        opts, nodes, out = inputs.options, plan.sched.nodes, inputs.out
        assert opts.cluster is not None
        ray = connect(opts.cluster)
        n_hosts = opts.hosts or len(cluster_hosts(ray))
        keys, weights = link_weights(
            [s.key for s in plan.snapshots], [s.up for s in plan.snapshots]
        )
        k = nodes.n_sats
        order = np.lexsort((nodes.slot[:k], nodes.plane[:k], nodes.shell[:k]))
        part = partition_nodes(
            len(nodes),
            keys,
            max(1, min(n_hosts, len(nodes))),
            weights=weights,
            sat_order=order,
            method=opts.partition,
        )
        part.write(out, nodes.names)
        say(
            f"partition ({part.method}): {part.counts()} nodes on {part.n_hosts} hosts, "
            f"{part.n_cut} of {keys.size} links between hosts"
        )
        self.emu = ClusterEmulation(
            opts.cluster,
            list(nodes.names),
            list(nodes.kind),
            part,
            "userspace",
            out,
            inputs.run_id,
            inputs.span.step_s / opts.time_scale,
            shaper_workers=opts.shaper_workers,
        )
        say(
            f"building {len(nodes)} nodes and {plan.link_keys.size} links over "
            f"{part.n_hosts} hosts ..."
        )
        t0 = time.perf_counter()
        self.emu.build(RunLinks.from_snapshots(plan.snapshots), plan.snapshots[0], self.tables0)
        self.t_build = time.perf_counter() - t0
        say(f"built in {self.t_build:.1f} s")
        self.guard = FidelityGuard(self.emu.shaper, out, _link_ends(plan), opts.guard_ms)
        self._stack.callback(self.guard.close)
        self.paths0 = self.recorder.record(  # type: ignore[union-attr]
            plan.snapshots[0],
            self.tables0,
            positions_ecef_km=node_positions_ecef_km(plan.sched, plan.snapshots[0].t_s),
        )
        if opts.on_built:
            opts.on_built(self.emu)
        emu = self.emu
        self._start_traffic(
            supervisor=emu.agents, trust=lambda flows: emu.owd_trust(flows, opts.owd_trust_ms)
        )

    def _initial_convergence(self) -> None:
        """Start the clock only once the daemons have routed every node to every endpoint
        it can reach at t = 0 (as the reference scheme's first tables say)."""
        nh = np.asarray(self.tables0.next_hop)
        col = {int(d): j for j, d in enumerate(np.asarray(self.tables0.destinations))}
        expect = {
            (i, int(d))
            for d in self.plan.ends
            for i in range(nh.shape[0])
            if i != int(d) and nh[i, col[int(d)], 0] >= 0
        }
        say(f"waiting for {self.inputs.scheme.name} to route {len(expect)} node-endpoint pairs ...")
        limit = INITIAL_CONVERGENCE_TIMEOUT_S + INITIAL_CONVERGENCE_PER_NODE_S * nh.shape[0]
        took = self.fib.wait_until_routed(expect, limit)
        if took is None:
            log.warning(
                "%s did not route every node to every endpoint within %.0f s; starting anyway",
                self.inputs.scheme.name,
                limit,
            )
        else:
            say(f"{self.inputs.scheme.name} converged in {took:.1f} s")
        self.initial_convergence_s = took

    def _stop_emulation(self) -> None:
        if self.emu is None:
            self.inputs.shaper.close()
            return
        t0 = time.perf_counter()
        self.emu.stop()
        self.t_stop = time.perf_counter() - t0

    def flush(self) -> None:
        """Flush the files written as the run goes."""
        self._steps_f.flush()
        if self.guard is not None:
            self.guard.flush()
        if self.recorder is not None:
            self.recorder.flush()

    def close(self) -> None:
        """Tear everything down (idempotent); signals wait until it is done."""
        with signals_deferred():
            self._stack.close()


# ---------------------------------------------------------------------------- 4. step
class StepLoop:
    """Applies steps ``1 .. n-1`` of the plan as the clock ticks; one ``steps.csv`` row each.

    Attributes
    ----------
    rows : list of tuple
        The ``steps.csv`` rows of steps 1.. (for the summary's timing figures).
    last : int
        The last step applied.
    """

    def __init__(self, net: Network):
        self.net = net
        self.rows: list[tuple] = []
        self.routing_estimate_s = math.nan
        self.last = 0
        self.stepping = False  # the CLI's stepping thread outlived its join

    def last_poll(self) -> None:
        """The fidelity guard's last poll: the time after the last step. Called by the
        pipeline once stepping is over (from the thread that owns the network, never while
        the stepping thread may still talk to the shaper)."""
        guard = self.net.guard
        if guard is not None and not guard.closed and not self.stepping:
            guard.poll(self.last, self.net.plan.snapshots[self.last].t_s)
            guard.flush()

    def run(self, clock: Clock) -> None:
        net, plan = self.net, self.net.plan
        snaps = plan.snapshots
        self.routing_estimate_s = check_real_time(net, clock.period_s)
        clock.start()
        net.clock_start = clock.started_at or time.monotonic()
        if net.control is not None:
            net.control.start(snaps[0].t_s)
        # step 0 is the state the network was built in; the clock starts now
        feed = net.feed
        assert feed is not None
        net.steps_w.writerow(
            (
                0,
                snaps[0].t_s,
                0.0,
                round(time.time(), 6),
                0.0,
                round(net.t_build * 1e3, 3),
                0,
                0,
                0.0,
                round(feed.routing_cost_s(0) * 1e3, 3),
                0.0,
                0.0,
                0.0,
            )
        )
        for k in range(1, plan.n_steps):
            tick = clock.wait_for(k)
            if tick is None:
                return
            tables, diff = net.feed.get_step(k)  # type: ignore[union-attr]
            t_routes = time.monotonic()
            wait_s = t_routes - tick.began  # the route process was behind
            st = net.emu.apply(snaps[k], tables, diff)
            apply_s = time.monotonic() - t_routes
            t_record = time.monotonic()
            paths = net.recorder.record(  # type: ignore[union-attr]
                snaps[k],
                tables,
                route_changes=len(st.route_diff),
                positions_ecef_km=node_positions_ecef_km(plan.sched, snaps[k].t_s),
            )
            if net.agents is not None:
                net.agents.step(k, snaps[k].t_s, paths, tables)
            if net.guard is not None:
                net.guard.poll(k, snaps[k].t_s)
            if net.control is not None:
                net.control.poll(snaps[k].t_s)
            record_s = time.monotonic() - t_record
            row = (
                k,
                snaps[k].t_s,
                round(tick.wall_s, 6),
                round(tick.unix_s, 6),
                round(tick.lag_s * 1e3, 3),
                round(apply_s * 1e3, 3),
                st.n_link_updates,
                st.n_route_changes,
                round(wait_s * 1e3, 3),
                round(net.feed.routing_cost_s(k) * 1e3, 3),  # type: ignore[union-attr]
                round(st.links_s * 1e3, 3),
                round(st.routes_s * 1e3, 3),
                round(record_s * 1e3, 3),
            )
            net.steps_w.writerow(row)
            self.rows.append(row)
            if k % 10 == 0:
                net.flush()
            if clock.is_late(tick):
                log.warning(
                    "step %d started %.0f ms late (apply took %.0f ms): the emulation "
                    "is falling behind real time",
                    k,
                    tick.lag_s * 1e3,
                    apply_s * 1e3,
                )
            hook = net.inputs.options.on_step
            if hook:
                hook(k, snaps[k], net.emu)
            self.last = k

    def run_with_cli(self, clock: Clock) -> None:
        """Step in a background thread while Mininet's CLI holds the terminal; the run ends
        when the CLI exits. An error of the stepping thread is raised after that."""
        from mininet.cli import CLI
        from mininet.log import lg

        lg.propagate = False  # it prints through its own handler; no second copy
        error: list[BaseException] = []

        def guarded() -> None:
            try:
                self.run(clock)
            except BaseException as exc:  # surfaced after the CLI exits
                error.append(exc)
                return
            if not clock.stopped:
                k = self.last
                say(
                    f"\n*** schedule ended at step {k} (t = {self.net.plan.snapshots[k].t_s:g}"
                    f" s); the network stays as it is until 'exit'"
                )

        th = threading.Thread(target=guarded, name="meshemu-clock", daemon=True)
        th.start()
        say("*** Mininet CLI: the geometry keeps updating; 'exit' ends the run")
        try:
            CLI(self.net.emu.mininet)
        finally:
            clock.stop()
            th.join(timeout=5 * clock.period_s + 5)
            self.stepping = th.is_alive()
        if error:
            raise error[0]


def check_real_time(net: Network, period_s: float) -> float:
    """Before the clock starts: the route processes' CPU seconds per step
    (:meth:`RouteFeed.estimate_s`); a warning with a step and a time scale that would keep
    up when routing takes more than the step lasts and the steps routed ahead (during the
    build) will run out before the run ends."""
    assert net.feed is not None
    feed = net.feed
    est = feed.estimate_s()
    if not math.isfinite(est) or est <= ROUTING_SHARE_OF_STEP * period_s:
        return est
    opts, span = net.inputs.options, net.inputs.span
    n_steps = span.n_steps
    ahead = feed.steps_ready()
    # step k is needed k periods after the clock starts and routed (k - ahead) x est after
    behind_from = math.floor(ahead * est / (est - ROUTING_SHARE_OF_STEP * period_s)) + 1
    if behind_from >= n_steps:
        log.info(
            "routing takes %.2f CPU-s per step, more than a step lasts, but the %d steps routed "
            "ahead last the run's %d steps",
            est,
            ahead,
            n_steps,
        )
        return est
    need = est / ROUTING_SHARE_OF_STEP
    step = math.ceil(need * opts.time_scale * 10) / 10
    scale = math.floor(span.step_s / need * 100) / 100
    log.warning(
        "routing (%s) takes %.2f CPU-s per step, more than the %.2f s a step lasts: with %d "
        "steps routed ahead, the run will fall behind real time from about step %d of %d. "
        "Use --step %g or --time-scale %g to keep up",
        net.inputs.scheme.name,
        est,
        period_s,
        ahead,
        behind_from,
        n_steps,
        step,
        scale,
    )
    return est


# ---------------------------------------------------------------------------- 5. collect
def collect(inputs: RunInputs, plan: RunPlan, net: Network, loop: StepLoop) -> RunResult:
    """Write ``summary.json``, the plots and the report; the :class:`RunResult`."""
    out, sc, opts, span = inputs.out, inputs.scenario, inputs.options, inputs.span
    rec = net.recorder
    assert rec is not None
    summary = rec.summary(sc, inputs.scheme.name, span.duration_s, span.step_s, span.start_s)
    summary["route_hold_us"] = float(inputs.options.route_hold_us)
    summary["catalogues"] = [c.as_dict() for c in plan.sched.constellation.catalogues]
    rows = loop.rows
    arr = np.array([r[5] for r in rows]) if rows else np.zeros(1)
    lag = np.array([r[4] for r in rows]) if rows else np.zeros(1)
    wait = np.array([r[8] for r in rows]) if rows else np.zeros(1)
    cost = np.array([r[9] for r in rows if math.isfinite(r[9])] or [math.nan])
    summary.update(
        {
            "kind": "run",
            "run_id": inputs.run_id,
            "shaper": inputs.shaper.name,
            "time_scale": opts.time_scale,
            "links_total": int(plan.link_keys.size),
            "timing": {
                "plan_s": round(plan.plan_s, 3),
                "build_s": round(net.t_build, 3),
                "build_phases_s": {
                    k: round(v, 3) for k, v in getattr(net.emu, "timings", {}).items()
                },
                "build_memory_mib": {
                    k.removesuffix("_bytes"): round(v / 2**20, 1)
                    for k, v in getattr(net.emu, "memory", {}).items()
                },
                "stop_s": round(net.t_stop, 3),
                "apply_ms_p50": float(np.percentile(arr, 50)),
                "apply_ms_p99": float(np.percentile(arr, 99)),
                "apply_ms_max": float(arr.max()),
                "lag_ms_p99": float(np.percentile(lag, 99)),
                "lag_ms_max": float(lag.max()),
                "route_wait_ms_p99": float(np.percentile(wait, 99)),
                "route_wait_ms_max": float(wait.max()),
                "routing_ms_p50": float(np.percentile(cost, 50)),
                "routing_ms_p99": float(np.percentile(cost, 99)),
                "routing_s_estimate": loop.routing_estimate_s,
            },
            "fidelity": _fidelity(net, loop),
            **({"cluster": net.emu.summary()} if opts.cluster is not None else {}),
            "route_changes_total": int(sum(r[7] for r in rows)),
            "link_updates_total": int(sum(r[6] for r in rows)),
        }
    )
    files = [out / f for f in ("nodes.csv", "links.csv", "paths.csv", "positions.npz", STEPS.name)]
    if opts.cluster is not None:
        files += [out / "partition.csv", out / "partition.json", out / "hosts_steps.csv"]
    if net.fib is not None:
        files += _convergence(net, summary)
    if net.guard is not None:
        files.append(out / SHAPER.name)
    if net.agents is not None:
        summary["traffic"] = net.agents.summary()
        files += net.agents.files()
        files += _disruption(out, summary, opts.time_scale)
    files += net.pcaps
    if net.pcaps:
        summary["captures"] = [p.name for p in net.pcaps]
    if opts.plots:
        from meshemu.report import maps as plotmod

        assert net.recorder is not None  # set by Network.build

        files.append(
            plotmod.plot_map(
                out / "map.png",
                net.recorder.map_nodes(plan.snapshots[0].t_s),
                plan.snapshots[0],
                title=f"{sc.name} at t = 0 s",
            )
        )
        files.append(
            plotmod.plot_path_delays(
                out / "path_delay.png",
                out / "paths.csv",
                title=f"{sc.name}: planned path delay ({inputs.scheme.name})",
            )
        )
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    files.append(out / "summary.json")
    if net.agents is not None:
        from meshemu.report import report

        try:
            files += report(out, plots=opts.plots).files
        except MeshemuError as exc:  # the run's own files are written; say what is missing
            log.warning(
                "could not write the report of %s: %s (run `meshemu report %s` after fixing it)",
                out,
                exc,
                out,
            )
    return RunResult(out, summary, [f for f in files if f.exists()])


def _convergence(net: Network, summary: dict[str, Any]) -> list[Path]:
    """``fib.csv`` and ``convergence.csv`` of a daemon-routed run; their summary."""
    from meshemu.report import convergence as conv

    def read_table_rows(path: Path) -> list[dict[str, str]]:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))

    out, opts, span = net.inputs.out, net.inputs.options, net.inputs.span
    net.fib.stop()  # (the run's files are closed, so complete, by now)
    fib = net.fib.write(out, net.clock_start, span.start_s, opts.time_scale)
    names = net.plan.sched.nodes.names
    daemon_opts = getattr(net.inputs.scheme, "options", None)  # DaemonOptions
    events = conv.analyse(
        read_table_rows(out / "links.csv"),
        read_table_rows(fib),
        read_table_rows(out / "nodes.csv"),
        [names[e] for e in net.plan.ends],
        span.start_s + span.duration_s,
        metric="delay" if getattr(daemon_opts, "metric", "") == "delay" else "hops",
    )
    summary["convergence"] = conv.summarize(events)
    summary["convergence"]["initial_s"] = net.initial_convergence_s
    written = [fib, conv.write_events(out / CONVERGENCE.name, events)]
    if net.control is not None:
        summary["control"], summary["daemon_usage"] = net.control.summary()
        written += [out / n for n in ("control.csv", "daemon_usage.csv", "daemons.csv")]
    return written


def _disruption(out: Path, summary: dict[str, Any], time_scale: float) -> list[Path]:
    """``disruption.csv``: what the workloads saw around each topology event; its summary."""
    from meshemu.report import disruption

    effects = disruption.run_effects(out, time_scale)
    if effects is None:
        return []
    summary["disruption"] = disruption.summarize(effects)
    return [disruption.write_effects(out / DISRUPTION.name, effects)]


def _fidelity(net: Network, loop: StepLoop) -> dict[str, Any]:
    """The fidelity guard's summary (its last poll was at the end of the steps)."""
    if net.guard is None:
        return {"shaper": net.inputs.shaper.name, "ok": None, "verdict": verdict(True, 0, 0, 0)}
    return net.guard.summary()


# ---------------------------------------------------------------------------- the pipeline
def run_emulation(
    scenario: Scenario | str | Path, options: RunOptions | None = None, **keywords: Any
) -> RunResult:
    """Build the emulated network, drive it through the plan, tear it down.

    Parameters
    ----------
    scenario : Scenario, str or Path
        A scenario, or a path / shipped name.
    options : RunOptions, optional
        How to run (defaults: 60 s in steps of 1 s, shaper ``auto``, the default traffic).
    **keywords
        Fields of :class:`~meshemu.live.options.RunOptions` (``duration_s=30``,
        ``shaper="userspace"``, ``on_step=...``), replacing those of ``options``.

    Raises
    ------
    MeshemuError
        A bad input (before anything is written or built), or a failure of the run (after
        the teardown). :class:`~meshemu.errors.Interrupted` on SIGINT, SIGTERM or SIGHUP,
        after the teardown.
    """
    opts = RunOptions.from_keywords(options, **keywords)
    inputs = validate(scenario, opts)
    with handle_signals():
        try:
            plan = make_plan(inputs)
        except BaseException:
            inputs.shaper.close()
            raise
        net = Network.build(inputs, plan)
        loop = StepLoop(net)
        try:
            clock = Clock(inputs.span.step_s / opts.time_scale)
            if opts.cli:
                loop.run_with_cli(clock)
            else:
                loop.run(clock)
            loop.last_poll()
            if net.agents is not None:
                net.agents.finish()
        finally:
            net.close()
    return collect(inputs, plan, net, loop)
