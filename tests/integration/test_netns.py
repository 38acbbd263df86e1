"""Sysctls written in many namespaces (:class:`meshemu.linux.netns.ProcSys`), as root.

What was written is read back through ``/proc`` by ``sysctl`` run in each namespace with
``nsenter``: another program, another procfs instance.
"""

from __future__ import annotations

import os

import pytest

from meshemu.errors import CommandError
from meshemu.linux import netns as nl

VALUES = {
    "net.ipv4.ip_forward": 1,
    "net.ipv4.conf.all.rp_filter": 0,
    "net.ipv4.icmp_msgs_burst": 4321,
    "net.ipv6.conf.default.disable_ipv6": 1,
}


def read_back(ns) -> dict[str, int]:
    out = ns.run(["sysctl", "-n", *VALUES]).stdout.split()
    return {k: int(v) for k, v in zip(VALUES, out, strict=True)}


def host_state() -> tuple[list[str], str]:
    with open("/proc/self/mountinfo") as f:
        mounts = sorted(f.read().splitlines())
    with open("/proc/sys/net/ipv4/icmp_msgs_burst") as f:
        return mounts, f.read()


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("detached", [True, False], ids=["detached-procfs", "via-/proc"])
def test_sysctls_land_in_every_namespace_and_nowhere_else(netns_factory, monkeypatch, detached):
    if not detached:  # a kernel without the new mount API, or one that refuses it

        def refuse() -> int:
            raise OSError(38, "fsopen(proc)")

        monkeypatch.setattr(nl, "_detached_proc", refuse)
    spaces = [netns_factory() for _ in range(5)]
    before_host, fds = host_state(), open_fds()
    # per_mount 2: 5 namespaces over 2 threads go through 3 procfs instances
    with nl.ProcSys(per_mount=2) as proc:
        nl.in_namespaces([ns.pid for ns in spaces], lambda i, pid: proc.write(VALUES), threads=2)
        assert proc.detached is detached
    for ns in spaces:
        assert read_back(ns) == VALUES
    assert host_state() == before_host  # no mount left, the host's own sysctls untouched
    assert open_fds() == fds


def test_a_bad_sysctl_names_itself(netns_factory):
    ns = netns_factory()
    fds = open_fds()
    with nl.ProcSys() as proc, pytest.raises(CommandError, match="net.ipv4.no_such_sysctl"):
        nl.in_namespaces(
            [ns.pid], lambda i, pid: proc.write({"net.ipv4.no_such_sysctl": 1}), threads=1
        )
    assert open_fds() == fds
    with pytest.raises(ValueError, match="per_mount"):
        nl.ProcSys(per_mount=0)
