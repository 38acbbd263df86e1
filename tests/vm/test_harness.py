"""The VM harness itself, without booting a VM: fetch, initramfs, qemu flags, timeouts, and that
the host never collects the inside tests. Fast; no root needed except where noted."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import vmkernel
import vmpytest
from vmkernel import Kernel, VMError

ABI = "6.1.0-99-amd64"


@pytest.fixture
def fake_kernel(tmp_path) -> Kernel:
    """A kernel tree with a modules.dep like Debian's and dummy files (enough to build an
    initramfs and a qemu command line, not to boot)."""
    root = tmp_path / "vm" / ABI / "root"
    mods = root / "lib" / "modules" / ABI
    dep = {
        "kernel/drivers/virtio/virtio_pci.ko": [
            "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
            "kernel/drivers/virtio/virtio.ko",
            "kernel/drivers/virtio/virtio_ring.ko",
        ],
        "kernel/drivers/virtio/virtio_pci_legacy_dev.ko": [],
        "kernel/drivers/virtio/virtio.ko": [],
        "kernel/drivers/virtio/virtio_ring.ko": [],
        "kernel/net/9p/9pnet_virtio.ko": [
            "kernel/net/9p/9pnet.ko",
            "kernel/drivers/virtio/virtio.ko",
            "kernel/drivers/virtio/virtio_ring.ko",
        ],
        "kernel/net/9p/9pnet.ko": [],
        "kernel/fs/9p/9p.ko": ["kernel/net/9p/9pnet.ko", "kernel/fs/netfs/netfs.ko"],
        "kernel/fs/netfs/netfs.ko": [],
        "kernel/fs/overlayfs/overlay.ko": [],
        "kernel/net/sched/sch_netem.ko": [],
    }
    for m in dep:
        (mods / m).parent.mkdir(parents=True, exist_ok=True)
        (mods / m).write_bytes(b"\x7fELF " + m.encode())
    (mods / "modules.dep").write_text("".join(f"{m}: {' '.join(d)}\n" for m, d in dep.items()))
    (root / "boot").mkdir()
    (root / "boot" / f"vmlinuz-{ABI}").write_bytes(b"not a kernel")
    (root.parent / "READY").write_text("test\n")
    return Kernel(ABI, root)


def test_module_load_order_puts_dependencies_first_once(fake_kernel):
    names = [p.name for p in vmkernel.module_load_order(fake_kernel, vmkernel.BOOT_MODULES)]
    assert names == [
        "virtio_ring.ko",
        "virtio.ko",
        "virtio_pci_legacy_dev.ko",
        "virtio_pci.ko",
        "9pnet.ko",
        "9pnet_virtio.ko",
        "netfs.ko",
        "9p.ko",
        "overlay.ko",
    ]
    with pytest.raises(VMError, match="no module 'sch_nope'"):
        vmkernel.module_load_order(fake_kernel, ["sch_nope"])


@pytest.mark.skipif(not Path(vmkernel.BUSYBOX).is_file(), reason="needs busybox-static")
def test_initramfs_is_a_newc_archive_with_init_busybox_and_modules(fake_kernel, tmp_path):
    img = vmkernel.build_initramfs(fake_kernel, tmp_path / "initramfs.img")
    listing = subprocess.run(
        [vmkernel.BUSYBOX, "cpio", "-t"],
        stdin=img.open("rb"),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert {"init", "bin/busybox", "mods/9p.ko", "mods/overlay.ko", "newroot"} <= set(listing)
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(
        [vmkernel.BUSYBOX, "cpio", "-i", "-d"],
        stdin=img.open("rb"),
        cwd=out,
        check=True,
        capture_output=True,
    )
    init = (out / "init").read_text()
    assert os.stat(out / "init").st_mode & stat.S_IXUSR
    assert init.startswith("#!/bin/busybox sh")
    # modules are insmod-ed in dependency order, and PID 1 itself switches root
    assert "for m in virtio_ring.ko virtio.ko" in init
    assert "exec switch_root /newroot" in init
    assert (out / "mods" / "9p.ko").read_bytes() == b"\x7fELF kernel/fs/9p/9p.ko"
    assert "/wlower" not in init  # no cwd given: no fourth share


@pytest.mark.skipif(not Path(vmkernel.BUSYBOX).is_file(), reason="needs busybox-static")
def test_the_working_dir_is_mounted_at_its_own_path_after_the_guests_tmp(fake_kernel, tmp_path):
    """A checkout under /tmp (hidden by the guest's tmpfs) is still there inside."""
    img = vmkernel.build_initramfs(fake_kernel, tmp_path / "initramfs.img", "/tmp/my ci")
    init = subprocess.run(
        [vmkernel.BUSYBOX, "cpio", "-i", "--to-stdout", "init"],
        stdin=img.open("rb"),
        capture_output=True,
        check=True,
    ).stdout.decode()
    tmp_at = init.index("tmpfs /newroot/tmp")
    mount_at = init.index("mount -t 9p -o $o,ro,cache=loose workdir /wlower")
    overlay_at = init.index("/newroot'/tmp/my ci' || fail")
    assert tmp_at < mount_at < overlay_at < init.index("exec switch_root")


def test_qemu_command_shares_root_read_only_and_results_read_write(fake_kernel, tmp_path):
    cmd = vmkernel.qemu_command(
        fake_kernel, tmp_path / "i", tmp_path / "r", tmp_path / "c", 2048, 2
    )
    assert cmd[cmd.index("-accel") + 1] == "tcg"
    shares = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-virtfs"]
    assert shares[0].startswith("local,path=/,mount_tag=hostroot,") and "readonly=on" in shares[0]
    assert f"path={fake_kernel.modules}," in shares[1] and "readonly=on" in shares[1]
    assert f"path={tmp_path / 'r'},mount_tag=results" in shares[2]
    assert "readonly" not in shares[2]
    assert len(shares) == 3
    cmd = vmkernel.qemu_command(
        fake_kernel, tmp_path / "i", tmp_path / "r", tmp_path / "c", 2048, 2, "/tmp/a,b"
    )
    shares = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-virtfs"]
    assert shares[3].startswith("local,path=/tmp/a,,b,mount_tag=workdir,")
    assert "readonly=on" in shares[3]


def _fake_tool(bindir: Path, name: str, script: str) -> None:
    bindir.mkdir(exist_ok=True)
    p = bindir / name
    p.write_text("#!/bin/sh\n" + textwrap.dedent(script))
    p.chmod(0o755)


def test_fetch_fails_clearly_when_the_package_cannot_be_downloaded(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    _fake_tool(
        bindir,
        "apt-get",
        """\
        echo "E: Failed to fetch http://deb.debian.org/...: Could not resolve host" >&2
        exit 100
    """,
    )
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("MESHEMU_VM_DIR", str(tmp_path / "vm"))
    monkeypatch.setenv("MESHEMU_VM_KERNEL", ABI)
    with pytest.raises(
        VMError, match=f"cannot download the VM kernel package 'linux-image-{ABI}'"
    ) as err:
        vmkernel.fetch()
    assert "Could not resolve host" in str(err.value)
    assert list((tmp_path / "vm").iterdir()) == []  # no half-done kernel left
    with pytest.raises(VMError, match="no VM kernel"):
        vmkernel.kernel()


def test_fetch_does_nothing_when_the_kernel_is_there(fake_kernel, tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    _fake_tool(bindir, "apt-get", "exit 100\n")
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("MESHEMU_VM_DIR", str(tmp_path / "vm"))
    monkeypatch.setenv("MESHEMU_VM_KERNEL", ABI)
    assert vmkernel.fetch() == fake_kernel
    assert (tmp_path / "vm" / "current").read_text().strip() == ABI
    monkeypatch.delenv("MESHEMU_VM_KERNEL")
    assert vmkernel.kernel() == fake_kernel


def test_bad_kernel_name_is_refused(monkeypatch):
    monkeypatch.setenv("MESHEMU_VM_KERNEL", "6.1; rm -rf /")
    with pytest.raises(VMError, match="MESHEMU_VM_KERNEL must be"):
        vmkernel.current_abi()


def _pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not Path(vmkernel.BUSYBOX).is_file(), reason="needs busybox-static")
def test_a_hung_vm_is_killed_at_the_timeout_and_nothing_is_left(fake_kernel, tmp_path, monkeypatch):
    _fake_tool(tmp_path / "bin", "qemu", "exec sleep 1000\n")
    monkeypatch.setenv("MESHEMU_VM_QEMU", str(tmp_path / "bin" / "qemu"))
    res = vmkernel.run_in_vm("true", timeout_s=1.5, k=fake_kernel)
    assert res.returncode is None and res.boot_s is None
    assert 1.5 <= res.total_s < 10
    assert _pid_gone(res.qemu_pid)
    assert not os.path.exists(res.workdir)
    assert "VM console" in res.tail()


@pytest.mark.skipif(not Path(vmkernel.BUSYBOX).is_file(), reason="needs busybox-static")
def test_results_come_back_from_the_results_share(fake_kernel, tmp_path, monkeypatch):
    """A stand-in qemu that 'runs' run.sh on the host: the plumbing around the VM."""
    fake = tmp_path / "bin" / "qemu"
    fake.parent.mkdir()
    fake.write_text(
        textwrap.dedent(f"""\
        #!{sys.executable}
        import re, subprocess, sys
        args = " ".join(sys.argv)
        results = re.search(r"path=([^,]+),mount_tag=results", args).group(1)
        console = re.search(r"-serial file:(\\S+)", args).group(1)
        open(console, "w").write("{vmkernel.MARK} ready 1.0\\n")
        script = open(results + "/run.sh").read().replace("{vmkernel.RESULTS_MOUNT}", results)
        p = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
        open(results + "/output.log", "w").write(p.stdout + p.stderr)
        open(results + "/rc", "w").write(str(p.returncode))
        """)
    )
    fake.chmod(0o755)
    monkeypatch.setenv("MESHEMU_VM_QEMU", str(fake))
    keep = tmp_path / "keep"
    res = vmkernel.run_in_vm(
        'echo "hi $WHO"; echo data > $MESHEMU_VM_RESULTS/x.txt; exit 3',
        timeout_s=30,
        cwd=tmp_path,
        env={"WHO": "it's me"},
        k=fake_kernel,
        keep=keep,
    )
    assert res.returncode == 3
    assert res.output == "hi it's me\n"
    assert res.files["x.txt"] == b"data\n"
    assert res.boot_s is not None
    assert (keep / "x.txt").exists() and (keep / "console.log").exists()
    assert not os.path.exists(res.workdir)


def test_host_never_collects_the_inside_tests():
    env = {k: v for k, v in os.environ.items() if k != "MESHEMU_IN_VM"}
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/vm",
        ],
        cwd=vmkernel.REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    ids = [ln for ln in p.stdout.splitlines() if "::" in ln]
    assert ids and not [i for i in ids if i.startswith(vmpytest.INSIDE_DIR)]
    # and every inside test is there as a host case
    inside = vmpytest.inside_test_ids()
    assert inside.ids, inside.error
    for i in inside.ids:
        assert any(i.removeprefix(vmpytest.INSIDE_DIR + "/") in h for h in ids), i


def test_inside_tests_refuse_to_run_on_the_host():
    env = {k: v for k, v in os.environ.items() if k != "MESHEMU_IN_VM"}
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            vmpytest.INSIDE_DIR + "/test_netem_raw.py",
        ],
        cwd=vmkernel.REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert p.returncode != 0
    assert "run only inside the test VM" in p.stdout + p.stderr or "no tests ran" in p.stdout
