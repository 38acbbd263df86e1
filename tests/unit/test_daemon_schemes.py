"""Daemon routing schemes (issue 11), the pure part: registry, configuration files, options,
the missing-package error, and the convergence analysis of a run's files."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest

from meshemu.errors import RoutingError
from meshemu.report.convergence import analyse, summarize
from meshemu.routing import get_scheme, scheme_kind
from meshemu.routing.daemons import DaemonLink, DaemonNode, DaemonProcess, DaemonScheme

SAT = DaemonNode(
    "s0_0_0",
    0,
    "10.0.0.1",
    True,
    (
        DaemonLink("isl0", "10.64.0.0/31", "10.64.0.1", "s0_0_1", "isl", 10),
        DaemonLink("gsl5", "10.64.0.10/31", "10.64.0.11", "london", "gsl", 10),
    ),
)
GROUND = DaemonNode(
    "london",
    9,
    "10.0.0.10",
    False,
    (DaemonLink("gsl5", "10.64.0.11/31", "10.64.0.10", "s0_0_0", "gsl", 10),),
)


@pytest.mark.parametrize("name", ["ospf", "isis", "bird-ospf"])
def test_daemon_schemes_are_registered_and_plan_like_their_reference(name):
    s = get_scheme(name)
    assert scheme_kind(s) == "daemon" and s.name == name
    assert s.reference.name == "fewest-hops"
    assert get_scheme(f"{name}").options.metric == "hops"


def _check_config(scheme: DaemonScheme, node: DaemonNode, tmp_path: Path) -> None:
    """The daemon's own parser accepts the files (FRR: -C, BIRD: -p)."""
    files = scheme.files(node, tmp_path)
    for fname, text in files.items():
        (tmp_path / fname).write_text(text)
    for fname in files:
        prog = fname.removesuffix(".conf")
        if prog == "bird":
            argv = ["bird", "-p", "-c", str(tmp_path / fname)]
        else:
            argv = [f"/usr/lib/frr/{prog}", "-C", "-f", str(tmp_path / fname)]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, (argv, r.stdout, r.stderr)


@pytest.mark.parametrize("name", ["ospf", "isis", "bird-ospf"])
def test_configurations_parse_with_the_daemons_own_checker(name, tmp_path):
    s = get_scheme(name)
    s.check_installed()  # install.sh installs frr and bird2
    tmp_path.chmod(0o777)
    for node in (SAT, GROUND):
        d = tmp_path / node.name
        d.mkdir()
        d.chmod(0o777)
        _check_config(s, node, d)


def test_configuration_content():
    ospf = get_scheme("ospf").files(SAT, Path("/x"))["ospfd.conf"]
    assert "ospf router-id 10.0.0.1" in ospf and "interface isl0" in ospf
    assert "ip ospf network point-to-point" in ospf and "ip ospf cost 10" in ospf
    assert "max-metric" not in ospf
    assert (
        "max-metric router-lsa administrative"
        in get_scheme("ospf").files(GROUND, Path("/x"))["ospfd.conf"]
    )
    isis = get_scheme("isis").files(GROUND, Path("/x"))["isisd.conf"]
    assert "set-overload-bit" in isis and "net 49.0001.0000.0000.000a.00" in isis
    bird = get_scheme("bird-ospf").files(GROUND, Path("/x"))["bird.conf"]
    assert "stub router yes" in bird and 'interface "gsl5"' in bird


def test_metrics_and_bad_options():
    from meshemu.routing.daemons.frr import FRROSPF

    d = FRROSPF(metric="delay", delay_unit_us=100)
    assert d.reference.name == "shortest-delay"
    assert d.link_cost("isl", 0.0193) == 193 and d.link_cost("isl", 0.0) == 1
    assert d.cost_changed(193, 220) and not d.cost_changed(193, 200)
    assert FRROSPF(metric="fixed", isl_cost=5, gsl_cost=50).link_cost("gsl", 0.01) == 50
    for bad, words in (
        ({"metric": "speed"}, "unknown metric 'speed'; please specify one of: hops, fixed, delay"),
        ({"hello_s": 0}, "hello_s must be an integer in"),
        ({"hello_s": 4, "dead_s": 4}, "dead_s (4) must be larger than hello_s (4)"),
    ):
        with pytest.raises(RoutingError, match=words.replace("(", r"\(").replace(")", r"\)")):
            FRROSPF(**bad)


class NoSuchDaemon(DaemonScheme):
    name = "nosuch"
    packages = ("nosuch-routing",)
    binaries = ("/nonexistent/nosuchd",)

    def files(self, node, state_dir):
        return {}

    def processes(self, node, state_dir):
        return [DaemonProcess("nosuchd", ("/nonexistent/nosuchd",), "")]

    def cli_argv(self, node, state_dir):
        return []

    def set_cost_argv(self, node, state_dir, ifname, cost):
        return None


def test_missing_daemon_names_the_package():
    with pytest.raises(
        RoutingError, match=r"nosuch needs /nonexistent/nosuchd.*apt-get install nosuch-routing"
    ):
        NoSuchDaemon().check_installed()


# ----------------------------------------------------------------------------- convergence


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(text.strip().splitlines()))


NODES = _rows(
    """id,name,kind
0,a,sat
1,b,sat
2,c,sat
3,g,station"""
)
# a ring a-b-c-a with g on a; at t = 2 the link a-b goes down
LINKS = _rows(
    """t_s,a,b,kind,up
0,a,b,isl,1
0,b,c,isl,1
0,a,c,isl,1
0,a,g,gsl,1
1,a,b,isl,1
1,b,c,isl,1
1,a,c,isl,1
1,a,g,gsl,1
2,b,c,isl,1
2,a,c,isl,1
2,a,g,gsl,1
3,b,c,isl,1
3,a,c,isl,1
3,a,g,gsl,1"""
)


def test_convergence_time_loops_and_blackholes_from_files():
    fib = _rows(
        """t_s,node,dest,next_hops
0,a,b,b
0,c,b,b
0,g,b,a
0,b,g,a
0,c,g,a
0,a,g,g
0,b,a,a
0,c,a,a
0,g,a,a
2.3,a,b,
2.5,a,b,c
2.6,b,g,c"""
    )
    (ev,) = analyse(LINKS, fib, NODES, ["b", "g"], end_s=4.0)
    assert (ev.t_s, ev.kind, ev.links_down, ev.links_up) == (2.0, "isl", 1, 0)
    assert ev.fib_changes == 3 and ev.converged
    assert ev.convergence_s == pytest.approx(0.6)
    # a->b over a dead link until 2.3, no route until 2.5; b->g over the dead link until 2.6
    assert ev.blackhole_s == pytest.approx(0.6)
    assert ev.loop_s == 0.0
    assert ev.stretch == pytest.approx((2 / 2 + 2 / 2) / 2)  # b<->g: 2 hops, as the fewest
    s = summarize([ev])
    assert s["isl"]["convergence_s_p50"] == pytest.approx(0.6) and s["all"]["not_converged"] == 0


def test_convergence_sees_a_loop_and_a_protocol_that_never_converges():
    fib = _rows(
        """t_s,node,dest,next_hops
0,a,b,b
0,c,b,b
0,g,b,a
2.2,a,b,c
2.2,c,b,a"""
    )
    (ev,) = analyse(LINKS, fib, NODES, ["b"], end_s=4.0)
    assert not ev.converged and ev.loop_s == pytest.approx(1.8)


def test_stretch_with_the_delay_metric_is_against_the_least_delay():
    """a-b is direct but long (10 ms); a-c-b takes 2 ms. Routing g->b over a-b is the fewest
    hops (stretch 1) but 11 ms against the least delay's 3 ms."""
    links = _rows(
        """t_s,a,b,kind,up,delay_ms
0,a,b,isl,1,10
0,b,c,isl,0,1
0,a,c,isl,1,1
0,a,g,gsl,1,1
1,a,b,isl,1,10
1,b,c,isl,1,1
1,a,c,isl,1,1
1,a,g,gsl,1,1"""
    )
    fib = _rows(
        """t_s,node,dest,next_hops
0,g,b,a
0,a,b,b
0,c,b,a
0,b,g,a
0,a,g,g
0,c,g,a"""
    )
    (hops,) = analyse(links, fib, NODES, ["b", "g"], end_s=2.0)
    (delay,) = analyse(links, fib, NODES, ["b", "g"], end_s=2.0, metric="delay")
    assert hops.stretch == pytest.approx(1.0)
    assert delay.stretch == pytest.approx(11 / 3, abs=1e-4)  # (rounded to 4 places)
