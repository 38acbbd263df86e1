"""The ``meshemu`` command line.

::

    meshemu plan    [SCENARIO] [--duration S] [--step S] [--start S] [--routing NAME] [--out DIR]
                    [--format auto|csv|parquet] [--no-plots]
    meshemu run     [SCENARIO] [--duration S] [--step S] [--start S] [--time-scale X]
                    [--shaper auto|netem|userspace] [--routing NAME] [--traffic PROFILE]
                    [--shaper-workers N] [--shaper-gso auto|on|off] [--capture NODE[:PEER]]
                    [--guard-ms MS] [--out DIR] [--cli]
                    [--view [--view-port N] [--view-host H]]
    meshemu view    RUN_DIR [--port N] [--host H]
    meshemu clean
    meshemu report  RUN_DIR [--out DIR] [--no-plots]
    meshemu compare RUN_DIR RUN_DIR... [--out DIR]
    meshemu validate [SCENARIO] [--user NAME] [--duration S] [--interval S] [--start S]
                    [--shaper auto|netem|userspace] [--out DIR] [--json FILE]
    meshemu scenarios
    meshemu tle fetch GROUP [--out FILE] [--url BASE] [--force]

SCENARIO is a YAML path or the name of a scenario shipped in ``topologies/`` (default:
``default``). GROUP is a CelesTrak group (``starlink``, ``oneweb``, ``gps-ops``, ...); the file
goes to the TLE cache (``$MESHEMU_TLE_DIR``, default ``~/.cache/meshemu/tle``) unless ``--out``
is given. Errors meshemu knows about print one line and exit with status 2. SIGINT,
SIGTERM and SIGHUP tear a run down and exit with 128 + the signal's number (130, 143, 129).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from meshemu.errors import Interrupted, MeshemuError

log = logging.getLogger("meshemu")


class Progress:
    """A one-line progress bar on stderr (only when stderr is a terminal or for long runs)."""

    def __init__(self, label: str, min_interval_s: float = 0.5):
        self.label = label
        self.t0 = time.monotonic()
        self.last = 0.0
        self.min_interval_s = min_interval_s
        self.tty = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last < self.min_interval_s:
            return
        if not self.tty and done < total and now - self.t0 < 2.0:
            return
        self.last = now
        frac = done / max(total, 1)
        eta = (now - self.t0) / frac * (1 - frac) if frac > 0 else 0
        bar = "#" * int(frac * 30)
        end = "\n" if done >= total or not self.tty else "\r"
        sys.stderr.write(
            f"{self.label} [{bar:<30}] {done}/{total} steps, "
            f"{now - self.t0:.1f} s elapsed, ~{eta:.0f} s left{end}"
        )
        sys.stderr.flush()


def _run_dir(base: str | None, kind: str, scenario: str) -> Path:
    if base:
        return Path(base)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{kind}-{Path(scenario).stem}-{stamp}"


def cmd_plan(args: argparse.Namespace) -> int:
    from meshemu.plan import run_plan
    from meshemu.spec.scenario import load_scenario

    scenario = load_scenario(args.scenario)
    out = _run_dir(args.out, "plan", args.scenario)
    t0 = time.perf_counter()
    res = run_plan(
        scenario,
        args.duration,
        args.step,
        args.routing,
        out,
        progress=Progress("plan"),
        plots=not args.no_plots,
        start_s=args.start,
        table_format=args.format,
        route_hold_us=args.route_hold_us,
    )
    s = res.summary
    print(
        f"plan of {s['scenario']}: {s['nodes']} nodes ({s['satellites']} satellites), "
        f"{s['steps']} steps of {s['step_s']:g} s, routing {s['routing']}, "
        f"{time.perf_counter() - t0:.1f} s"
    )
    print(
        f"  ISLs {s['isl_count_mean']:.0f}, GSLs {s['gsl_count_mean']:.1f} (mean per step); "
        f"link events: {s['events']}"
    )
    print(
        f"  geometry {s['timing']['geometry_ms_per_step']:.2f} ms/step, routing "
        f"{s['timing']['routing_ms_per_step']:.2f} ms/step"
    )
    reach = [p for p in s["pairs"] if p["delay_ms_mean"] is not None]
    if reach:
        worst = max(reach, key=lambda p: p["delay_ms_max"])
        print(
            f"  {len(reach)}/{len(s['pairs'])} endpoint pairs reachable; highest path delay "
            f"{worst['delay_ms_max']:.2f} ms ({worst['src']} -> {worst['dst']})"
        )
    print(f"wrote {res.out_dir}/: {', '.join(s['files'])}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from meshemu.runsize import check_emulable
    from meshemu.spec.scenario import load_scenario

    # a scenario too large to emulate is refused from its counts, before the root check
    # and before anything is built
    check_emulable(load_scenario(args.scenario))
    from meshemu.live.runner import run_from_cli

    return run_from_cli(args)


def cmd_view(args: argparse.Namespace) -> int:
    from meshemu.view.commands import view_from_cli

    return view_from_cli(args)


def cmd_clean(args: argparse.Namespace) -> int:
    from meshemu.linux.limits import require_root
    from meshemu.live.clean import clean

    require_root("meshemu clean")
    removed = clean()
    if removed:
        print(f"removed {len(removed)} leftover(s):")
        for r in removed:
            print(f"  {r}")
    else:
        print("nothing to clean")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from meshemu.report import report_from_cli

    return report_from_cli(args)


def cmd_compare(args: argparse.Namespace) -> int:
    from meshemu.report import compare_from_cli

    return compare_from_cli(args)


def cmd_validate(args: argparse.Namespace) -> int:
    from meshemu.linux.limits import require_root
    from meshemu.live.fidelity import format_figures, validate_access

    require_root("meshemu validate")
    res = validate_access(
        args.scenario,
        user=args.user,
        duration_s=args.duration,
        interval_s=args.interval,
        start_s=args.start,
        shaper=args.shaper,
        out_dir=args.out,
        json_path=args.json,
    )
    print(format_figures(res))
    return 0


def cmd_scenarios(args: argparse.Namespace) -> int:
    from meshemu.errors import ScenarioError
    from meshemu.spec.scenario import default_scenario_dir, list_scenarios, load_scenario

    for name in list_scenarios():
        try:
            sc = load_scenario(default_scenario_dir() / f"{name}.yaml")
        except ScenarioError as exc:
            print(f"{name:24s} (cannot load here: {exc})")
            continue
        n = sum(s.n_sats for s in sc.shells)
        tle = sum(len(t.records) for t in sc.tle_sources)
        what = f"{n:6d} Walker satellites" if n or not tle else f"{tle:6d} TLE element sets"
        if n and tle:
            what += f" + {tle} TLE element sets"
        print(f"{name:24s} {what}, {len(sc.ground)} ground nodes")
    return 0


def cmd_tle_fetch(args: argparse.Namespace) -> int:
    from meshemu.spec.celestrak import REUSE_WINDOW, fetch_group

    res = fetch_group(args.group, out=args.out, base_url=args.url, force=args.force)
    now = dt.datetime.now(dt.UTC)
    if res.reused:
        print(
            f"reusing {res.path}: group {res.group} was fetched {_age(now - res.fetched_at)} "
            f"ago, and CelesTrak asks for at most one download of a group every "
            f"{REUSE_WINDOW.total_seconds() / 3600:g} hours (--force downloads it again)"
        )
    else:
        print(f"wrote {res.path}: CelesTrak group {res.group} from {res.url}")
    print(
        f"  {res.n_satellites} satellites, newest TLE epoch "
        f"{res.newest_epoch:%Y-%m-%d %H:%M:%S} UTC ({_age(now - res.newest_epoch)} old)"
    )
    entry = f"file: {res.path}" if args.out else f"group: {res.group}"
    print(f"  use it in a scenario: tle_files: [{{{entry}}}]")
    return 0


def _age(age: dt.timedelta) -> str:
    """``age`` in the unit that reads best: s, min, h or days."""
    s = max(age.total_seconds(), 0.0)
    if s < 120:
        return f"{s:.0f} s"
    if s < 2 * 3600:
        return f"{s / 60:.0f} min"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def _add_tle_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``meshemu tle`` and its sub-command ``fetch`` to the commands ``sub``."""
    tle = sub.add_parser("tle", help="TLE files: download a CelesTrak group (no root)")
    tle_sub = tle.add_subparsers(dest="tle_command", metavar="{fetch}", required=True)
    sp = tle_sub.add_parser(
        "fetch",
        help="download a CelesTrak GP group in TLE (3LE) format",
        description="Download a CelesTrak GP group in TLE (3LE) format. A group fetched less "
        "than 2 h ago is reused from the cache (CelesTrak asks for no more) unless --force "
        "or --out is given.",
    )
    sp.add_argument("group", metavar="GROUP", help="starlink, oneweb, kuiper, gps-ops, ...")
    sp.add_argument(
        "--out",
        metavar="FILE",
        help="file to write (default: <cache>/<group>-<time>.tle; cache: $MESHEMU_TLE_DIR "
        "or ~/.cache/meshemu/tle)",
    )
    sp.add_argument(
        "--url",
        metavar="BASE",
        help="GP query URL (default: $MESHEMU_CELESTRAK_URL or "
        "https://celestrak.org/NORAD/elements/gp.php)",
    )
    sp.add_argument(
        "--force", action="store_true", help="download even if fetched less than 2 h ago"
    )
    sp.set_defaults(func=cmd_tle_fetch)


def _cluster_cmd(name: str) -> Any:
    """``meshemu cluster ...``'s handler ``name`` of :mod:`meshemu.live.cluster.commands`,
    imported when it runs (the CLI itself loads nothing of ``meshemu.live``)."""

    def run(args: argparse.Namespace) -> int:
        from meshemu.live.cluster import commands

        return int(getattr(commands, name)(args))

    return run


def add_cluster_parser(sub: argparse._SubParsersAction) -> None:
    """``meshemu cluster ...``."""
    sp = sub.add_parser("cluster", help="one run over several hosts: set up Ray (see README)")
    cs = sp.add_subparsers(dest="cluster_cmd", required=True)
    p = cs.add_parser("token", help="write a new random cluster token (0600)")
    p.add_argument("file")
    p.set_defaults(func=_cluster_cmd("cmd_token"))
    p = cs.add_parser("start", help="start Ray on this host (root)")
    p.add_argument("--host", type=int, required=True, help="this host's index (0 = head)")
    p.add_argument("--address", required=True, help="this host's address on the cluster network")
    p.add_argument("--join", metavar="HEAD:PORT", help="the head to join (not on the head)")
    p.add_argument("--port", type=int, default=6379, help="the head's port")
    p.add_argument("--token", required=True, help="the cluster's token file")
    p.set_defaults(func=_cluster_cmd("cmd_start"))
    for name, fn, what in (
        ("status", "cmd_status", "list the meshemu hosts of a cluster"),
        ("clean", "cmd_clean", "meshemu clean on every host of a cluster (root)"),
    ):
        p = cs.add_parser(name, help=what)
        p.add_argument("--join", metavar="HEAD:PORT", required=True)
        p.add_argument("--token", required=True)
        if name == "clean":
            p.add_argument("--run", metavar="RUN_ID", help="only this run's shares")
        p.set_defaults(func=_cluster_cmd(fn))
    p = cs.add_parser("stop", help="ray stop: every Ray process of this machine")
    p.set_defaults(func=_cluster_cmd("cmd_stop"))
    p = cs.add_parser("simulate", help="simulated hosts on this machine until Ctrl-C (root)")
    p.add_argument("--hosts", type=int, default=2)
    p.set_defaults(func=_cluster_cmd("cmd_simulate"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="meshemu",
        description="Laser inter-satellite mesh network "
        "emulator: SGP4 geometry driving a live Mininet network.",
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv debug)")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, duration: float) -> None:
        sp.add_argument(
            "scenario",
            nargs="?",
            default="default",
            help="scenario YAML path or shipped name (default: %(default)s)",
        )
        sp.add_argument(
            "--duration",
            type=_number,
            default=duration,
            help="emulated seconds (default: %(default)s)",
        )
        sp.add_argument("--step", type=_number, default=1.0, help="seconds per step (default: 1)")
        sp.add_argument(
            "--start",
            type=_number,
            default=0.0,
            help="start this many seconds after the scenario epoch (default: 0)",
        )
        sp.add_argument(
            "--routing",
            default="shortest-delay",
            help="routing scheme: a built-in name, FILE.py:Class or module:Class "
            "(default: %(default)s)",
        )
        sp.add_argument(
            "--route-hold-us",
            type=_number,
            default=0.0,
            metavar="US",
            help="route hold: keep a node's next hop while it is loop-free and its path at "
            "most this much longer than the best (one-way, us); cuts route changes on large "
            "constellations (default: %(default)s, off)",
        )
        sp.add_argument("--out", help="output directory (default: runs/<kind>-<scenario>-<time>)")

    sp = sub.add_parser("plan", help="compute geometry, links and routes over time (no root)")
    common(sp, 600.0)
    sp.add_argument(
        "--format",
        default="auto",
        choices=("auto", "csv", "parquet"),
        help="nodes, links and paths tables as CSV or Parquet; auto: Parquet from 1,000,000 "
        "rows of links and paths over the plan, CSV below (default: %(default)s)",
    )
    sp.add_argument("--no-plots", action="store_true", help="write no map.png or path_delay.png")
    sp.set_defaults(func=cmd_plan)

    sp = sub.add_parser("run", help="run a live emulation (root)")
    common(sp, 60.0)
    sp.add_argument(
        "--time-scale",
        type=_number,
        default=1.0,
        help="emulated seconds per wall-clock second (default: 1 = real time)",
    )
    sp.add_argument(
        "--shaper", default="auto", help="link shaper: auto, netem or userspace (default: auto)"
    )
    sp.add_argument(
        "--shaper-workers",
        type=int,
        default=1,
        metavar="N",
        help="userspace shaper: delay-line worker processes, each owning a share of the "
        "links (default: 1; leave the nodes a core: more than CPUs - 1 is warned about)",
    )
    sp.add_argument(
        "--shaper-gso",
        choices=("auto", "on", "off"),
        default="auto",
        help="userspace shaper: pass TCP's segmentation-offload super-frames through the "
        "delay line whole (much faster bulk TCP; each still serialised, queued and counted "
        "per segment); auto (the default): on with the compiled delay line",
    )
    sp.add_argument(
        "--capture",
        action="append",
        metavar="NODE[:PEER]",
        help="write a pcap of NODE's interfaces, or of its link to PEER, into the "
        "run directory (repeatable)",
    )
    sp.add_argument(
        "--traffic",
        default=None,
        help="traffic profile YAML path or name in traffic/ (default: the "
        "default mixed workload; 'none' for no traffic)",
    )
    sp.add_argument(
        "--cli", action="store_true", help="open Mininet's CLI while the geometry keeps updating"
    )
    sp.add_argument(
        "--detect",
        default="carrier",
        choices=("carrier", "silent"),
        help="with a daemon routing scheme (ospf, isis, bird-ospf): a failed link drops "
        "its carrier at both ends (default) or loses frames silently",
    )
    sp.add_argument(
        "--guard-ms",
        type=_number,
        default=0.5,
        help="fidelity guard: warn when a link's frames leave more than this late at p99 "
        "over a step (default: %(default)s ms)",
    )
    sp.add_argument(
        "--no-plots",
        action="store_true",
        help="write no map.png, path_delay.png or report plots (the tables are written)",
    )
    sp.add_argument(
        "--delay-tolerance-us",
        type=_number,
        default=1.0,
        metavar="US",
        help="push a link's delay to the shaper only when it moved more than this from what "
        "the shaper holds (default: %(default)s us)",
    )
    sp.add_argument(
        "--route-aggregation",
        default="auto",
        choices=("auto", "on", "off"),
        help="install the first routes as aggregate prefixes, /32s over them as they change "
        "(default: auto, on from 1,000 nodes)",
    )
    sp.add_argument(
        "--view",
        action="store_true",
        help="serve the browser view of the run as it goes (the URL is printed; it stays "
        "served after the run until Ctrl-C)",
    )
    sp.add_argument(
        "--view-port", type=int, default=8765, help="port of --view (default: %(default)s)"
    )
    sp.add_argument(
        "--view-host", default="127.0.0.1", help="address of --view (default: %(default)s)"
    )
    sp.add_argument(
        "--cluster",
        metavar="ADDRESS:PORT",
        help="spread the run over the hosts of the Ray cluster whose head is there (see "
        "README, Beyond one machine; meshemu cluster start)",
    )
    sp.add_argument(
        "--hosts",
        type=int,
        metavar="H",
        help="with --cluster: use hosts 0..H-1 (default: every host of the cluster)",
    )
    sp.add_argument(
        "--partition",
        default="auto",
        choices=("auto", "metis", "planes"),
        help="with --cluster: how nodes are assigned to hosts (default: %(default)s)",
    )
    sp.add_argument(
        "--owd-trust-ms",
        type=float,
        default=1.0,
        metavar="MS",
        help="with --cluster: one-way delays of flows between hosts are marked untrusted "
        "when the hosts' clock offset bound (offset + uncertainty, at start and end) is above "
        "this (default: %(default)s ms)",
    )
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser(
        "view",
        help="serve a browser view of a run or plan directory (globe, map, flows; no root)",
    )
    sp.add_argument("run_dir", help="directory written by 'meshemu run' or 'meshemu plan'")
    sp.add_argument("--port", type=int, default=8765, help="port (default: %(default)s; 0: any)")
    sp.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (default: %(default)s)"
    )
    sp.set_defaults(func=cmd_view)

    add_cluster_parser(sub)

    sp = sub.add_parser("clean", help="remove what a crashed run left behind (root)")
    sp.set_defaults(func=cmd_clean)

    sp = sub.add_parser("report", help="plots and summary table of a run directory")
    sp.add_argument("run_dir", help="directory written by 'meshemu run' (or 'meshemu plan')")
    sp.add_argument("--out", help="output directory (default: RUN_DIR/report)")
    sp.add_argument("--no-plots", action="store_true", help="the summary tables only, no PNG")
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser("compare", help="compare run directories side by side")
    sp.add_argument(
        "run_dirs",
        nargs="+",
        metavar="RUN_DIR",
        help="two or more directories written by 'meshemu run'",
    )
    sp.add_argument("--out", help="output directory (default: runs/compare-<time>)")
    sp.set_defaults(func=cmd_compare)

    sp = sub.add_parser(
        "validate",
        help="run an access scenario live with an idle RTT probe and set the measured "
        "figures beside the published ones (root)",
    )
    sp.add_argument(
        "scenario",
        nargs="?",
        default="starlink-access",
        help="an access scenario with slotted GSLs (default: starlink-access)",
    )
    sp.add_argument("--user", help="the probing user (default: the scenario's first)")
    sp.add_argument(
        "--duration", type=_number, default=120.0, help="emulated seconds (default: 120)"
    )
    sp.add_argument(
        "--interval", type=_number, default=0.1, help="seconds between probes (default: 0.1)"
    )
    sp.add_argument(
        "--start", type=_number, default=0.0, help="seconds after the epoch (default: 0)"
    )
    sp.add_argument(
        "--shaper", default="auto", choices=("auto", "netem", "userspace"), help="link shaper"
    )
    sp.add_argument("--out", help="run directory (default: runs/<kind>-<scenario>-<time>)")
    sp.add_argument("--json", help="also write the figures to this JSON file")
    sp.set_defaults(func=cmd_validate)

    sp = sub.add_parser("scenarios", help="list the shipped scenarios")
    sp.set_defaults(func=cmd_scenarios)
    _add_tle_parser(sub)
    return p


def _number(text: str) -> float:
    """A float; its range is checked with the other options (``TimeSpan``, ``RunOptions``)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose + 1, 2)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    from meshemu.signals import handle_signals

    try:
        with handle_signals():
            return args.func(args)
    except Interrupted as exc:
        print(f"meshemu: {exc}: done", file=sys.stderr)
        return 128 + exc.signum
    except MeshemuError as exc:
        print(f"meshemu: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("meshemu: interrupted", file=sys.stderr)
        return 130


def console() -> None:
    """The ``meshemu`` command: :func:`main`, then exit with its status.

    After a run over several hosts (Ray), the interpreter's own exit can deadlock in Ray's
    native threads, after ``ray.shutdown()`` and with every file written: the main thread
    joins Ray's io thread while that thread waits for the interpreter's runtime lock (seen
    in CI: a finished run that never exited). So once Ray has been loaded, the command
    flushes what it wrote and leaves with ``os._exit``. ``main`` itself, as called from
    Python, returns as usual."""
    rc = main()
    if "ray" in sys.modules:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)


if __name__ == "__main__":
    console()
