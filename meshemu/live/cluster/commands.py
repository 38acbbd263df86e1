"""``meshemu cluster``: set up the engine (Ray) on each host, look at it, clean it, or
simulate hosts on one machine.

    meshemu cluster token FILE                  a new random token (0600), to copy to every host
    meshemu cluster start --host 0 --address A --token FILE [--port 6379]      (the head)
    meshemu cluster start --host I --address B --join A:6379 --token FILE      (the others)
    meshemu cluster status --join A:6379 --token FILE
    meshemu cluster clean --join A:6379 --token FILE [--run ID]   meshemu clean on every host
    meshemu cluster stop                        ray stop on this machine
    meshemu cluster simulate --hosts N          N hosts as namespaces here, until Ctrl-C
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

from meshemu.errors import OptionsError

#: The head's default port (Ray's GCS port; :data:`meshemu.live.cluster.simhosts.HEAD_PORT`).
HEAD_PORT = 6379


def host_resource(i: int) -> str:
    from meshemu.live.cluster.simhosts import host_resource

    return host_resource(i)


def ray_env(token_path: Path) -> dict[str, str]:
    from meshemu.live.cluster.simhosts import ray_env

    return ray_env(token_path)


def _ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


def _token(args: argparse.Namespace) -> dict[str, str]:
    path = getattr(args, "token", None)
    if path is None:
        raise OptionsError(
            "must name the cluster's token file (make one with `meshemu cluster token FILE` "
            "and copy it to every host)",
            field="--token",
        )
    if not Path(path).is_file():
        raise OptionsError(f"no such file {path}", field="--token")
    os.environ.update(ray_env(Path(path).absolute()))
    return ray_env(Path(path).absolute())


def cmd_token(args: argparse.Namespace) -> int:
    p = Path(args.file)
    if p.exists():
        raise OptionsError(f"{p} exists; remove it first or name another file", field="FILE")
    p.write_text(secrets.token_hex(32))
    p.chmod(0o600)
    print(f"wrote {p} (mode 0600); copy it to every host of the cluster")
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    env = _token(args)
    argv = [
        _ray_bin(),
        "start",
        "--node-ip-address",
        args.address,
        "--resources",
        json.dumps({host_resource(args.host): 1}),
        "--disable-usage-stats",
    ]
    if args.join is None:
        if args.host != 0:
            raise OptionsError("the head (no --join) must be host 0", field="--host")
        argv += ["--head", "--port", str(args.port), "--include-dashboard=false"]
    else:
        argv += ["--address", args.join]
    return subprocess.run(argv, env=env).returncode


def cmd_status(args: argparse.Namespace) -> int:
    _token(args)
    from meshemu.live.cluster.engine import cluster_hosts, connect

    ray = connect(args.join)
    hosts = cluster_hosts(ray)
    for h in sorted(hosts):
        print(f"host {h}: {hosts[h]}")
    if not hosts:
        print("no meshemu hosts in this cluster (start them with `meshemu cluster start`)")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    _token(args)
    from meshemu.live.cluster.engine import cluster_hosts, connect

    ray = connect(args.join)
    hosts = cluster_hosts(ray)
    from meshemu.live.clean import clean

    task = ray.remote(clean)
    # --run RUN_ID: only that run's share on each host (RUN_ID + "h<i>"), else every leftover
    run = getattr(args, "run", None)
    refs = {
        h: task.options(resources={host_resource(h): 1}, num_cpus=0).remote(
            None if run is None else f"{run}h{h}"
        )
        for h in hosts
    }
    for h, ref in sorted(refs.items()):
        removed = ray.get(ref, timeout=300)
        print(f"host {h} ({hosts[h]}): " + (", ".join(removed) if removed else "nothing to clean"))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    return subprocess.run([_ray_bin(), "stop"]).returncode


def cmd_simulate(args: argparse.Namespace) -> int:
    import signal
    import threading

    from meshemu.linux.limits import require_root
    from meshemu.live.cluster.simhosts import SimulatedHosts

    require_root("meshemu cluster simulate")
    stop = threading.Event()
    with SimulatedHosts(args.hosts) as hosts:
        for s in (signal.SIGINT, signal.SIGTERM):  # (before the hosts are announced)
            signal.signal(s, lambda *_: stop.set())
        print(
            f"{args.hosts} simulated hosts up; the Ray head is {hosts.head_address}.\n"
            f"Run the driver in host 0, e.g.:\n"
            f"  sudo env RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={hosts.token_path} "
            f"ip netns exec {hosts.netns(0)} meshemu run default --cluster "
            f"{hosts.head_address} --duration 30\n"
            f"Ctrl-C removes the hosts.",
            flush=True,
        )
        while not stop.wait(0.5):
            pass
    return 0
