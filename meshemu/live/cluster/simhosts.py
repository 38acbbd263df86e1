"""Several "hosts" on one machine, for tests and ``meshemu cluster simulate``.

Each simulated host is a network namespace ``mxh<tag><i>`` with one interface, ``eth0``,
carrying its own address ``10.<net>.0.<i+1>/24`` on a bridge ``mxbr<tag>`` of the root
namespace (which has ``10.<net>.0.254``). A Ray node runs inside each (``ip netns exec``):
the head in host 0, workers in the others, each with the custom resource
``meshemu-host-<i>`` that pins a meshemu worker to it (:mod:`meshemu.live.cluster.engine`).

Ray's ports are bound in the host's namespace, whose only addresses are ``lo`` and the
cluster address; its token authentication is on (``RAY_AUTH_MODE=token``, the token in a
0600 file); its temporary directory (sessions, logs, sockets) is the host's own under
``/tmp/mxray-<tag>/``.

:meth:`SimulatedHosts.close` (also on failure and on ``with`` exit) kills every process in
each host's namespace by namespace inode (never by name: other Ray clusters on the machine
are not touched), cleans what meshemu runs in those hosts left (``meshemu clean`` of their
run ids), deletes the namespaces, the bridge and the temporary directories.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from meshemu.errors import EmulationError
from meshemu.linux import commands, procs

log = logging.getLogger(__name__)

#: The GCS port of the head (in host 0's namespace).
HEAD_PORT = 6379
#: The underlay MTU: a VXLAN tunnel adds 50 bytes, so links across hosts keep 1500.
UNDERLAY_MTU = 1600
#: Seconds to wait for every Ray node to join.
JOIN_TIMEOUT_S = 120.0
#: Prefix of the hosts' namespaces and of their temporary directories.
NS_PREFIX = "mxh"
TMP_PREFIX = "/tmp/mxray-"


def host_resource(i: int) -> str:
    """The Ray custom resource that pins work to host ``i``."""
    return f"meshemu-host-{i}"


def ray_env(token_path: Path | str) -> dict[str, str]:
    """The environment of every Ray process and driver: token authentication on."""
    env = dict(os.environ)
    env.update(
        {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token_path),
            "RAY_USAGE_STATS_ENABLED": "0",
        }
    )
    env.pop("RAY_AUTH_TOKEN", None)
    return env


@dataclass
class SimulatedHosts:
    """``n`` simulated hosts with a Ray cluster across them (see the module docstring).

    Use as a context manager, or call :meth:`start` and :meth:`close`.
    """

    n: int
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    net: int = 77
    ray_bin: str = field(default_factory=lambda: str(Path(sys.executable).with_name("ray")))
    started: list[int] = field(default_factory=list)
    inodes: dict[int, int] = field(default_factory=dict)
    run_ids: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        if not 1 <= self.n <= 200:
            raise EmulationError(f"simulated hosts: 1..200 hosts; got {self.n}")
        self.tmp = Path(f"{TMP_PREFIX}{self.tag}")
        self.token_path = self.tmp / "auth_token"

    # -- names -------------------------------------------------------------------------------
    def netns(self, i: int) -> str:
        return f"{NS_PREFIX}{self.tag}{i}"

    def address(self, i: int) -> str:
        return f"10.{self.net}.0.{i + 1}"

    @property
    def bridge(self) -> str:
        return f"mxbr{self.tag}"

    @property
    def head_address(self) -> str:
        """``ADDRESS:PORT`` of the Ray head (what ``meshemu run --cluster`` takes)."""
        return f"{self.address(0)}:{HEAD_PORT}"

    def exec_argv(self, i: int, argv: list[str]) -> list[str]:
        """``argv`` run inside host ``i``."""
        return ["ip", "netns", "exec", self.netns(i), *argv]

    @property
    def env(self) -> dict[str, str]:
        return ray_env(self.token_path)

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> SimulatedHosts:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Make the hosts and start Ray in them; on failure everything is removed."""
        try:
            self._network()
            self._ray()
            self.wait_joined()
        except BaseException:
            self.close()
            raise

    def _network(self) -> None:
        self.tmp.mkdir(mode=0o700, parents=True)
        self.token_path.write_text(secrets.token_hex(32))
        self.token_path.chmod(0o600)
        br = self.bridge
        commands.run(["ip", "link", "add", br, "type", "bridge"])
        commands.run(["ip", "link", "set", br, "mtu", str(UNDERLAY_MTU), "up"])
        commands.run(["ip", "addr", "add", f"10.{self.net}.0.254/24", "dev", br])
        for i in range(self.n):
            ns, peer = self.netns(i), f"mxv{self.tag}{i}"
            commands.run(["ip", "netns", "add", ns])
            self.started.append(i)
            self.inodes[i] = os.stat(f"/run/netns/{ns}").st_ino
            commands.run(
                ["ip", "link", "add", peer, "mtu", str(UNDERLAY_MTU), "type", "veth"]
                + ["peer", "name", "eth0", "mtu", str(UNDERLAY_MTU), "netns", ns]
            )
            commands.run(["ip", "link", "set", peer, "master", br, "up"])
            for cmd in (
                ["ip", "addr", "add", f"{self.address(i)}/24", "dev", "eth0"],
                ["ip", "link", "set", "eth0", "up"],
                ["ip", "link", "set", "lo", "up"],
            ):
                commands.run(self.exec_argv(i, cmd))

    def _ray_argv(self, i: int) -> list[str]:
        argv = [
            self.ray_bin,
            "start",
            "--node-ip-address",
            self.address(i),
            "--num-cpus",
            "1",
            "--resources",
            json.dumps({host_resource(i): 1}),
            "--object-store-memory",
            str(100 * 2**20),
            "--disable-usage-stats",
            "--temp-dir",
            str(self.tmp / f"h{i}"),
        ]
        if i == 0:
            argv += ["--head", "--port", str(HEAD_PORT), "--include-dashboard=false"]
        else:
            argv += ["--address", self.head_address]
        return argv

    def _ray(self) -> None:
        for i in range(self.n):
            p = subprocess.run(
                self.exec_argv(i, self._ray_argv(i)),
                env=self.env,
                capture_output=True,
                text=True,
                timeout=180,
            )
            if p.returncode != 0:
                raise EmulationError(
                    f"ray start in simulated host {i} ({self.netns(i)}) failed: "
                    f"{(p.stderr or p.stdout).strip()[-800:]}"
                )

    def python(self, i: int, code: str, timeout_s: float = 120.0) -> str:
        """Run Python ``code`` inside host ``i`` (the venv's interpreter); its stdout."""
        p = subprocess.run(
            self.exec_argv(i, [sys.executable, "-c", code]),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if p.returncode != 0:
            raise EmulationError(f"python in simulated host {i} failed: {p.stderr.strip()[-800:]}")
        return p.stdout

    def wait_joined(self, timeout_s: float = JOIN_TIMEOUT_S) -> list[str]:
        """Wait until the Ray cluster has ``n`` live nodes; their addresses."""
        code = (
            "import json, time, ray\n"
            f"ray.init(address={self.head_address!r}, logging_level='ERROR')\n"
            f"deadline = time.monotonic() + {timeout_s}\n"
            "while True:\n"
            "    alive = [x['NodeManagerAddress'] for x in ray.nodes() if x['Alive']]\n"
            f"    if len(alive) >= {self.n} or time.monotonic() > deadline:\n"
            "        break\n"
            "    time.sleep(0.2)\n"
            "print(json.dumps(sorted(alive)))\n"
        )
        alive: list[str] = json.loads(self.python(0, code, timeout_s + 60).strip().splitlines()[-1])
        if len(alive) < self.n:
            raise EmulationError(
                f"only {len(alive)} of {self.n} simulated hosts joined the Ray cluster "
                f"within {timeout_s:.0f} s: {alive}"
            )
        return alive

    def processes(self, i: int) -> list[int]:
        """Processes inside host ``i``'s namespace."""
        ino = self.inodes.get(i)
        return procs.pids_in_netns({ino}) if ino is not None else []

    def kill_host(self, i: int) -> list[int]:
        """SIGKILL every process in host ``i`` (a host that dies); the pids killed."""
        pids = self.processes(i)
        procs.kill_and_wait(pids)
        return pids

    def close(self) -> None:
        """Remove everything (idempotent): processes of the hosts, meshemu runs they left,
        namespaces, bridge, temporary directories."""
        errors: list[str] = []
        for i in list(self.started):
            with contextlib.suppress(Exception):
                self.kill_host(i)
        if self.run_ids:
            from meshemu.live.clean import clean

            for rid in sorted(self.run_ids):
                try:
                    clean(rid)
                except Exception as exc:  # noqa: BLE001 (report and go on)
                    errors.append(f"clean {rid}: {exc}")
        for i in list(self.started):
            p = commands.run(["ip", "netns", "del", self.netns(i)], check=False)
            if p.returncode != 0 and os.path.exists(f"/run/netns/{self.netns(i)}"):
                errors.append(f"netns {self.netns(i)}: {p.stderr.strip()}")
            self.started.remove(i)
        if os.path.exists(f"/sys/class/net/{self.bridge}"):
            commands.run(["ip", "link", "del", self.bridge], check=False)
        deadline = time.monotonic() + 10
        while self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)
            if time.monotonic() > deadline:
                errors.append(f"could not remove {self.tmp}")
                break
        if errors:
            raise EmulationError("simulated hosts: incomplete teardown: " + "; ".join(errors))
