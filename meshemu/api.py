"""What meshemu offers to Python users (everything else is internal).

Example::

    from meshemu.api import RunOptions, load_scenario, run_plan, run_emulation

    sc = load_scenario("default")                  # or a path to your YAML
    run_plan(sc, duration_s=600, out_dir="runs/plan")          # no root needed
    res = run_emulation(sc, duration_s=30, shaper="auto",     # root
                        routing="shortest-delay", traffic="default", out_dir="runs/demo")
    print(res.summary["timing"])

    # or the same options as one value, reusable across runs:
    opts = RunOptions(duration_s=30, shaper="userspace", traffic=None)
    run_emulation(sc, opts, out_dir="runs/demo2")
"""

from pathlib import Path
from typing import Any

from meshemu.errors import (
    CommandError,
    EmulationError,
    Interrupted,
    MeshemuError,
    NotRootError,
    OptionsError,
    ProfileError,
    ResourceError,
    RoutingError,
    ScenarioError,
    ShaperError,
    SpecError,
    TLEError,
)
from meshemu.geometry.linkstate import Snapshot, SnapshotDiff, diff
from meshemu.geometry.schedule import LinkSchedule
from meshemu.live import runner as _runner
from meshemu.live.runner import RunOptions, RunResult
from meshemu.plan import run_plan
from meshemu.routing import (
    ForwardingTables,
    RoutingScheme,
    get_scheme,
    register,
    route_diff,
    trace_path,
)
from meshemu.runsize import check_emulable
from meshemu.spec.scenario import Scenario, list_scenarios, load_scenario


def run_emulation(
    scenario: Scenario | str | Path, options: RunOptions | None = None, **keywords: Any
) -> RunResult:
    """The live emulation (:func:`meshemu.live.run.run_emulation`, whose parameters these
    are), after :func:`meshemu.runsize.check_emulable` has refused a scenario too large to
    emulate (before the root check and before anything is built)."""
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    check_emulable(sc)
    return _runner.run_emulation(sc, options, **keywords)


__all__ = [
    "CommandError",
    "EmulationError",
    "Interrupted",
    "MeshemuError",
    "NotRootError",
    "OptionsError",
    "ProfileError",
    "ResourceError",
    "RoutingError",
    "ScenarioError",
    "ShaperError",
    "SpecError",
    "TLEError",
    "RunOptions",
    "RunResult",
    "Snapshot",
    "SnapshotDiff",
    "diff",
    "run_plan",
    "ForwardingTables",
    "RoutingScheme",
    "get_scheme",
    "register",
    "route_diff",
    "trace_path",
    "run_emulation",
    "check_emulable",
    "Scenario",
    "list_scenarios",
    "load_scenario",
    "LinkSchedule",
]
