"""One run over several simulated hosts (network namespaces on a bridge, a Ray node in
each): the hosts and the engine, the meshemu workers, cross-host links. Root; run under
``flock /tmp/meshemu-root.lock``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from meshemu.live.cluster.simhosts import SimulatedHosts

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("cluster tests need root (they create network namespaces); run as root")


def _ray_listeners_outside(hosts: SimulatedHosts) -> list[str]:
    """Listening TCP sockets of the root namespace held by the hosts' processes."""
    pids = {p for i in range(hosts.n) for p in hosts.processes(i)}
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if any(f"pid={p}," in line for p in pids)]


def test_simulated_hosts_start_ray_with_auth_and_leave_nothing(tmp_path: Path) -> None:
    _require_root()
    hosts = SimulatedHosts(2)
    with hosts:
        assert sorted(hosts.wait_joined()) == [hosts.address(0), hosts.address(1)]
        # each host's processes live in its own namespace; nothing listens in the root one
        assert hosts.processes(0) and hosts.processes(1)
        assert _ray_listeners_outside(hosts) == []
        listen = subprocess.run(
            hosts.exec_argv(0, ["ss", "-Hltn"]), capture_output=True, text=True
        ).stdout
        assert f"{hosts.address(0)}:" in listen or "*:6379" in listen
        # a driver with the wrong token is refused
        env = dict(hosts.env)
        env.pop("RAY_AUTH_TOKEN_PATH")
        env["RAY_AUTH_TOKEN"] = "0" * 64
        code = f"import ray; ray.init(address={hosts.head_address!r}); print('CONNECTED')"
        p = subprocess.run(
            hosts.exec_argv(1, [sys.executable, "-c", code]),
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert p.returncode != 0 and "CONNECTED" not in p.stdout
        assert "InvalidAuthToken" in p.stderr
        inodes = dict(hosts.inodes)
        names = [hosts.netns(i) for i in range(2)]
    from meshemu.linux import procs

    assert procs.pids_in_netns(set(inodes.values())) == []
    assert not any(os.path.exists(f"/run/netns/{n}") for n in names)
    assert not hosts.tmp.exists()
    assert not os.path.exists(f"/sys/class/net/{hosts.bridge}")


def test_simulated_hosts_torn_down_after_a_failed_start(monkeypatch) -> None:
    _require_root()
    hosts = SimulatedHosts(2)
    monkeypatch.setattr(hosts, "ray_bin", "/nonexistent/ray")
    with pytest.raises(Exception, match="ray start|No such file"):
        hosts.start()
    assert not any(os.path.exists(f"/run/netns/{hosts.netns(i)}") for i in range(2))
    assert not hosts.tmp.exists()
    assert not os.path.exists(f"/sys/class/net/{hosts.bridge}")
