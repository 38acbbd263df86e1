"""A netem-capable Debian kernel in a throw-away qemu VM, for the tests in ``tests/vm``.

The machine meshemu is developed on runs a kernel without ``sch_netem`` (see PLATFORM.md),
so the netem path is tested inside ``qemu-system-x86_64 -accel tcg`` booting Debian's stock
kernel, with this machine's own root filesystem shared in read-only over 9p (so the repo and
its venv are there unchanged) under a tmpfs overlay.

Two steps:

``fetch`` (run by ``install.sh --test``; idempotent, about a second when already done)
    ``apt-get download linux-image-<version>-amd64`` (the version the meta package
    ``linux-image-amd64`` depends on, or ``$MESHEMU_VM_KERNEL``), ``dpkg-deb -x`` it into
    ``$MESHEMU_VM_DIR/<version>/root`` (default ``<repo>/.vm``) and ``depmod -b`` it. Fails,
    with a message saying why, when the package cannot be had.
:func:`run_in_vm`
    Builds a tiny busybox initramfs in a fresh temp dir, boots the VM with three 9p shares
    (``hostroot``: ``/`` read-only; ``modules``: the kernel's ``lib/modules``; ``results``:
    the temp dir, read-write, mounted at ``/results`` inside), runs a shell command there as
    root in the host's current directory, powers off (``echo o > /proc/sysrq-trigger``) and
    returns the command's exit status, its output and the files it left in ``/results``.
    qemu is always killed and the temp dir always removed, also on timeout or Ctrl-C.

Command line::

    python tests/vm/vmkernel.py fetch
    python tests/vm/vmkernel.py run [--timeout S] [--keep DIR] -- 'modprobe sch_netem && tc ...'

Environment variables: ``MESHEMU_VM_DIR`` (where kernels go; default ``<repo>/.vm``),
``MESHEMU_VM_KERNEL`` (a kernel ABI name such as ``6.1.0-56-amd64`` instead of the current
one), ``MESHEMU_VM_MEMORY_MB`` (4096), ``MESHEMU_VM_CPUS`` (2), ``MESHEMU_VM_TIMEOUT``
(seconds, 600), ``MESHEMU_VM_QEMU`` (``qemu-system-x86_64``).

This file imports nothing from meshemu, so it works before meshemu is installed.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("meshemu.tests.vm")

REPO = Path(__file__).resolve().parents[2]
#: The meta package whose dependency names the current kernel.
META_PACKAGE = "linux-image-amd64"
#: Modules the initramfs loads, with their dependencies (from modules.dep), to mount 9p + overlay.
BOOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
BUSYBOX = "/bin/busybox"
#: Printed on the console by the VM's init at each stage (the host times the boot by them).
MARK = "meshemu-vm:"
RESULTS_MOUNT = "/results"
_ABI_RE = re.compile(r"^\d+\.\d+\.\d+-\d+-amd64$")


class VMError(Exception):
    """The VM kernel cannot be fetched, or the VM cannot be booted or did not finish."""


# ---- where things are ---------------------------------------------------------------------
def vm_dir() -> Path:
    """Where fetched kernels live: ``$MESHEMU_VM_DIR`` or ``<repo>/.vm``."""
    return Path(os.environ.get("MESHEMU_VM_DIR") or REPO / ".vm")


def _env_int(name: str, default: int, lo: int, hi: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        v = None
    if v is None or not lo <= v <= hi:
        raise VMError(f"${name} must be an integer in {lo}..{hi}; got {raw!r}")
    return v


@dataclass(frozen=True)
class Kernel:
    """A fetched kernel: ``<vm_dir>/<abi>/root`` holds the unpacked .deb."""

    abi: str
    root: Path

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.abi}"

    @property
    def modules(self) -> Path:
        """``lib/modules`` (the parent of ``<abi>/``), the 9p share mounted over the guest's."""
        return self.root / "lib" / "modules"

    @property
    def ready(self) -> bool:
        return (self.root.parent / "READY").is_file()


def _run(cmd: Sequence[str], what: str, **kw) -> subprocess.CompletedProcess:
    """Run a command; raise VMError quoting it and its output when it fails."""
    try:
        p = subprocess.run(list(cmd), capture_output=True, text=True, **kw)
    except FileNotFoundError:
        raise VMError(
            f"{what}: {cmd[0]!r} is not installed (install.sh --test installs it)"
        ) from None
    if p.returncode != 0:
        raise VMError(
            f"{what}: `{' '.join(cmd)}` failed (exit {p.returncode}):\n"
            f"{(p.stderr or p.stdout).strip()}"
        )
    return p


# ---- fetch --------------------------------------------------------------------------------
def current_abi() -> str:
    """The kernel ABI name (``6.1.0-56-amd64``) to use: ``$MESHEMU_VM_KERNEL``, or the one
    Debian's ``linux-image-amd64`` depends on now (per the local apt lists)."""
    pinned = os.environ.get("MESHEMU_VM_KERNEL")
    if pinned:
        if not _ABI_RE.match(pinned):
            raise VMError(
                f"$MESHEMU_VM_KERNEL must be a Debian kernel ABI name such as "
                f"'6.1.0-56-amd64'; got {pinned!r}"
            )
        return pinned
    p = subprocess.run(
        ["apt-cache", "depends", "--important", META_PACKAGE], capture_output=True, text=True
    )
    found = re.findall(r"Depends:\s*linux-image-(\S+)", p.stdout)
    abis = [a for a in found if _ABI_RE.match(a)]
    if p.returncode != 0 or not abis:
        raise VMError(
            f"cannot tell which kernel Debian's {META_PACKAGE!r} depends on "
            f"(`apt-cache depends {META_PACKAGE}` said: "
            f"{(p.stderr or p.stdout).strip() or 'nothing'}); this needs Debian's apt "
            f"sources (run `apt-get update`), or set MESHEMU_VM_KERNEL"
        )
    return abis[0]


def kernel(abi: str | None = None) -> Kernel:
    """The fetched kernel (``abi`` or the one ``fetch`` fetched last), ready to boot.

    Raises
    ------
    VMError
        Nothing fetched yet: says to run ``install.sh --test`` or ``vmkernel.py fetch``.
    """
    base = vm_dir()
    if abi is None:
        abi = os.environ.get("MESHEMU_VM_KERNEL") or _read(base / "current")
    k = Kernel(abi, base / abi / "root") if abi else None
    if k is None or not k.ready:
        raise VMError(
            f"no VM kernel{' ' + abi if abi else ''} in {base}; fetch one with "
            f"`sudo ./install.sh --test` or `python tests/vm/vmkernel.py fetch`"
        )
    return k


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def fetch(abi: str | None = None) -> Kernel:
    """Download, unpack and ``depmod`` Debian's kernel package unless already done.

    Returns
    -------
    Kernel

    Raises
    ------
    VMError
        apt cannot name or download the package, or unpacking it failed.
    """
    abi = abi or current_abi()
    base = vm_dir()
    k = Kernel(abi, base / abi / "root")
    if k.ready:
        log.info("VM kernel %s already in %s", abi, k.root.parent)
        _write_atomic(base / "current", abi + "\n")
        return k
    for tool in ("apt-get", "dpkg-deb", "depmod"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            raise VMError(
                f"fetching the VM kernel needs {tool!r}, which is not installed "
                f"(install.sh --test installs it)"
            )
    base.mkdir(parents=True, exist_ok=True)
    pkg = f"linux-image-{abi}"
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix=f".{abi}.", dir=base))
    try:
        # apt-get download runs its fetcher as user _apt, which must be able to write here
        os.chmod(tmp, 0o755)
        dl = tmp / "deb"
        dl.mkdir()
        try:
            shutil.chown(dl, user="_apt")
        except (LookupError, PermissionError):
            pass
        log.info("downloading %s", pkg)
        _download(pkg, dl)
        debs = list(dl.glob("*.deb"))
        if len(debs) != 1:
            raise VMError(f"apt-get download {pkg} left {len(debs)} .deb files in {dl}")
        root = tmp / "root"
        _run(["dpkg-deb", "-x", str(debs[0]), str(root)], f"unpacking {debs[0].name}")
        shutil.rmtree(dl)
        _run(["depmod", "-b", str(root), abi], "depmod")
        got = Kernel(abi, root)
        if not got.vmlinuz.is_file():
            raise VMError(f"{debs[0].name} has no {got.vmlinuz.relative_to(root)}")
        module_load_order(got, ["sch_netem", *BOOT_MODULES])  # checks they exist
        (tmp / "READY").write_text(f"{pkg} unpacked by tests/vm/vmkernel.py\n")
        final = base / abi
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_atomic(base / "current", abi + "\n")
    _prune(base, keep=abi)
    log.info("VM kernel %s ready in %s (%.1f s)", abi, base / abi, time.monotonic() - t0)
    return Kernel(abi, base / abi / "root")


def _download(pkg: str, dest: Path) -> None:
    """``apt-get download pkg`` into ``dest``; as root, retry once after ``apt-get update``
    (stale lists name a version the mirror no longer has). VMError saying so on failure."""
    cmd = ["apt-get", "download", "-q", pkg]
    try:
        _run(cmd, f"downloading {pkg}", cwd=dest)
        return
    except VMError as exc:
        first = str(exc)
    if os.geteuid() == 0:
        log.info("apt-get download failed; retrying after apt-get update")
        upd = subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
        retry = subprocess.run(cmd, cwd=dest, capture_output=True, text=True)
        if retry.returncode == 0:
            return
        first += (
            f"\nafter `apt-get update` (exit {upd.returncode}): "
            f"{(retry.stderr or retry.stdout).strip()}"
        )
    raise VMError(
        f"cannot download the VM kernel package {pkg!r} from Debian's apt sources; "
        f"the netem tests in tests/vm need it (they fail, not skip, without it).\n"
        f"{first}"
    )


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _prune(base: Path, keep: str) -> None:
    """Remove other kernels (400 MB each) and half-done fetches."""
    for d in base.iterdir():
        if not d.is_dir() or d.name == keep:
            continue
        old_kernel = _ABI_RE.match(d.name)
        # ".<abi>.XXXX": a fetch that was killed (an hour old, so not one running now)
        stale_tmp = (
            d.name.startswith(".")
            and "-amd64." in d.name
            and time.time() - d.stat().st_mtime > 3600
        )
        if old_kernel or stale_tmp:
            log.info("removing %s", d)
            shutil.rmtree(d, ignore_errors=True)


# ---- initramfs ----------------------------------------------------------------------------
def module_load_order(k: Kernel, wanted: Iterable[str]) -> list[Path]:
    """``.ko`` files to insmod, dependencies first, for the modules named in ``wanted``.

    Read from the kernel's ``modules.dep`` (written by ``depmod``), whose line for a module
    lists everything it needs, in an order where the last one must be loaded first.
    """
    moddir = k.modules / k.abi
    deps: dict[str, list[str]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()

    def name(rel: str) -> str:
        return Path(rel).name.split(".ko")[0].replace("-", "_")

    by_name = {name(m): m for m in deps}
    order: list[str] = []
    for w in wanted:
        rel = by_name.get(w.replace("-", "_"))
        if rel is None:
            raise VMError(
                f"kernel {k.abi} has no module {w!r} (not in {moddir}/modules.dep); "
                f"is it built in? check {k.root}/boot/config-{k.abi}"
            )
        for m in [*reversed(deps[rel]), rel]:
            if m not in order:
                order.append(m)
    return [moddir / m for m in order]


INIT_TEMPLATE = r"""#!/bin/busybox sh
# meshemu VM init: mount the host's / (9p, read-only) under a tmpfs overlay, the kernel's
# modules and the results share over it, switch_root, run /results/run.sh, power off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "{mark} init $(cut -d' ' -f1 /proc/uptime)" > /dev/ttyS0
fail() {{ echo "{mark} FAILED: $*" > /dev/ttyS0; echo o > /proc/sysrq-trigger; sleep 60; }}
for m in {modules}; do insmod "/mods/$m" || fail "insmod $m"; done
o=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o $o,ro,cache=loose hostroot /lower || fail "mount hostroot"
mount -t tmpfs -o mode=0755 tmpfs /upper
mkdir -p /upper/data /upper/work
mount -t overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work overlay \
    /newroot || fail "mount overlay"
mkdir -p /newroot/lib/modules /newroot{results} /newroot/tmp /newroot/run
mount -t 9p -o $o,ro,cache=loose modules /newroot/lib/modules || fail "mount modules"
mount -t 9p -o $o results /newroot{results} || fail "mount results"
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp
mount -t tmpfs -o mode=0755 tmpfs /newroot/run
{workdir}for d in proc sys dev; do mount --move /$d /newroot/$d; done
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /newroot/dev/shm
# PID 1 itself must change root (switch_root), not a child (chroot): kernel threads share
# PID 1's root, and module autoloading runs /sbin/modprobe from there.
exec switch_root /newroot /bin/sh -c '
echo "{mark} ready $(cut -d" " -f1 /proc/uptime)" > /dev/ttyS0
/bin/sh {results}/run.sh < /dev/null > {results}/output.log 2>&1
echo $? > {results}/rc
sync
echo "{mark} done rc=$(cat {results}/rc)" > /dev/ttyS0
echo o > /proc/sysrq-trigger
sleep 60'
"""


def _cpio_newc(entries: Sequence[tuple[str, int, bytes]]) -> bytes:
    """An uncompressed ``newc`` cpio archive (the initramfs format) of (path, mode, data)."""
    out = bytearray()
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        nb = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0]
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
        out += hdr + nb
        out += b"\0" * (-len(out) % 4)
        out += data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


#: The directory the command runs in gets its own share, mounted (under a tmpfs overlay, so
#: writes stay in the VM) at the same path after /tmp and /run: a checkout under /tmp or /run
#: would otherwise be hidden by the guest's own tmpfs there.
WORKDIR_TEMPLATE = r"""mkdir -p /wlower /wupper
mount -t 9p -o $o,ro,cache=loose workdir /wlower || fail "mount workdir"
mount -t tmpfs -o mode=0755 tmpfs /wupper
mkdir -p /wupper/data /wupper/work /newroot{cwd}
mount -t overlay -o lowerdir=/wlower,upperdir=/wupper/data,workdir=/wupper/work overlay \
    /newroot{cwd} || fail "mount workdir overlay"
"""


def _workdir_shared(cwd: str | None) -> bool:
    return cwd is not None and os.path.abspath(cwd) != "/"


def build_initramfs(k: Kernel, dest: Path, cwd: str | None = None) -> Path:
    """Write the initramfs (busybox, the boot modules, ``/init``) to ``dest``.

    ``cwd``, when given, is the host directory :func:`qemu_command` shares as ``workdir``;
    ``/init`` mounts it at the same path inside.
    """
    if not Path(BUSYBOX).is_file():
        raise VMError(
            f"{BUSYBOX} is missing; install Debian's busybox-static (install.sh --test does)"
        )
    kos = module_load_order(k, BOOT_MODULES)
    workdir = (
        WORKDIR_TEMPLATE.format(cwd=sh_quote(os.path.abspath(cwd))) if _workdir_shared(cwd) else ""
    )
    init = INIT_TEMPLATE.format(
        mark=MARK, results=RESULTS_MOUNT, workdir=workdir, modules=" ".join(p.name for p in kos)
    )
    d = stat.S_IFDIR | 0o755
    entries: list[tuple[str, int, bytes]] = [
        (name, d, b"")
        for name in ("bin", "dev", "proc", "sys", "lower", "upper", "newroot", "mods")
    ]
    entries.append(("bin/busybox", stat.S_IFREG | 0o755, Path(BUSYBOX).read_bytes()))
    entries.append(("init", stat.S_IFREG | 0o755, init.encode()))
    entries += [(f"mods/{p.name}", stat.S_IFREG | 0o644, p.read_bytes()) for p in kos]
    dest.write_bytes(_cpio_newc(entries))
    return dest


# ---- boot ---------------------------------------------------------------------------------
@dataclass
class VMRun:
    """What one VM run gave.

    Attributes
    ----------
    returncode : int or None
        Exit status of the command inside; None when it never finished.
    output : str
        Its stdout and stderr.
    console : str
        The VM's serial console (kernel messages, init's ``meshemu-vm:`` marks).
    files : dict of str -> bytes
        Files it left in ``/results`` (top level only).
    boot_s : float or None
        Seconds from starting qemu until the command started.
    total_s : float
        Seconds from starting qemu until it was gone.
    qemu_pid : int
    workdir : str
        The temp dir (removed when run_in_vm returns).
    """

    returncode: int | None
    output: str
    console: str
    files: dict[str, bytes] = field(default_factory=dict)
    boot_s: float | None = None
    total_s: float = 0.0
    qemu_pid: int = 0
    workdir: str = ""

    def tail(self, lines: int = 40) -> str:
        """The end of the console and of the output, for error messages."""
        con = "\n".join(self.console.splitlines()[-lines:])
        out = "\n".join(self.output.splitlines()[-lines:])
        return f"--- VM console (end) ---\n{con}\n--- command output (end) ---\n{out}"


def qemu_command(
    k: Kernel,
    initrd: Path,
    results: Path,
    console: Path,
    memory_mb: int,
    cpus: int,
    cwd: str | None = None,
) -> list[str]:
    """The qemu command line (pure; see PLATFORM.md for why each flag).

    ``cwd``, when given, is shared read-only as ``workdir`` (see :data:`WORKDIR_TEMPLATE`).
    """
    qemu = os.environ.get("MESHEMU_VM_QEMU") or "qemu-system-x86_64"
    return [
        qemu,
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        str(memory_mb),
        "-smp",
        str(cpus),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-monitor",
        "none",
        "-no-reboot",
        "-serial",
        f"file:{console}",
        "-kernel",
        str(k.vmlinuz),
        "-initrd",
        str(initrd),
        "-append",
        "console=ttyS0 quiet loglevel=3 panic=-1 mitigations=off",
        "-virtfs",
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs",
        f"local,path={k.modules},mount_tag=modules,security_model=none,readonly=on",
        "-virtfs",
        f"local,path={results},mount_tag=results,security_model=none",
    ] + (
        [
            # qemu's option syntax escapes a comma in a value by doubling it
            "-virtfs",
            f"local,path={os.path.abspath(cwd).replace(',', ',,')},mount_tag=workdir,"
            "security_model=none,readonly=on,multidevs=remap",
        ]
        if _workdir_shared(cwd)
        else []
    )


def run_in_vm(
    command: str,
    timeout_s: float | None = None,
    cwd: str | os.PathLike | None = None,
    env: dict[str, str] | None = None,
    keep: str | os.PathLike | None = None,
    k: Kernel | None = None,
) -> VMRun:
    """Boot the VM, run ``command`` (a shell command line) there as root, power off.

    Parameters
    ----------
    command : str
        Run by ``/bin/sh`` inside, in ``cwd``; ``/results`` is a host temp dir it may write to.
    timeout_s : float, optional
        For the whole run (boot included); default ``$MESHEMU_VM_TIMEOUT`` or 600.
    cwd : path, optional
        Host directory to start in (it is the same path inside); default the current one.
    env : dict, optional
        Extra environment variables for the command.
    keep : path, optional
        Copy the results dir (plus ``console.log``) there before it is removed.
    k : Kernel, optional
        Default: :func:`kernel`.

    Returns
    -------
    VMRun
        Also when the command failed or timed out (``returncode`` None); never leaves qemu
        running or the temp dir behind.

    Raises
    ------
    VMError
        No kernel fetched, qemu missing or it could not start.
    """
    k = k or kernel()
    timeout_s = timeout_s or _env_int("MESHEMU_VM_TIMEOUT", 600, 10, 24 * 3600)
    memory_mb = _env_int("MESHEMU_VM_MEMORY_MB", 4096, 256, 1 << 20)
    cpus = _env_int("MESHEMU_VM_CPUS", 2, 1, 64)
    cwd = os.path.abspath(cwd or os.getcwd())
    work = Path(tempfile.mkdtemp(prefix="meshemu-vm-"))
    qemu: subprocess.Popen | None = None
    t0 = time.monotonic()
    res = VMRun(returncode=None, output="", console="", workdir=str(work))
    try:
        results = work / "results"
        results.mkdir(mode=0o777)
        os.chmod(results, 0o777)
        console = work / "console.log"
        initrd = build_initramfs(k, work / "initramfs.img", cwd)
        exports = "".join(f"export {n}={sh_quote(v)}\n" for n, v in (env or {}).items())
        (results / "run.sh").write_text(
            "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
            f"export HOME=/root LANG=C.UTF-8 MESHEMU_VM_RESULTS={RESULTS_MOUNT}\n{exports}"
            f"cd {sh_quote(cwd)} || exit 125\n{command}\n"
        )
        cmd = qemu_command(k, initrd, results, console, memory_mb, cpus, cwd)
        log.info("booting %s: %s", k.abi, " ".join(cmd))
        try:
            qemu = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise VMError(
                f"{cmd[0]!r} is not installed; install Debian's qemu-system-x86 "
                f"(install.sh --test does)"
            ) from None
        res.qemu_pid = qemu.pid
        deadline = t0 + timeout_s
        done_at = None
        while qemu.poll() is None:
            now = time.monotonic()
            if res.boot_s is None and f"{MARK} ready" in _read_text(console):
                res.boot_s = now - t0
                log.info("VM up after %.1f s", res.boot_s)
            if done_at is None and (results / "rc").exists():
                done_at = now
            if now > deadline:
                log.error("VM run timed out after %.0f s; killing qemu", timeout_s)
                break
            if done_at is not None and now > done_at + 15:
                log.warning("VM did not power off 15 s after the command ended; killing qemu")
                break
            time.sleep(0.2)
        qemu_out = _stop(qemu)
        res.total_s = time.monotonic() - t0
        res.console = _read_text(console) + (f"\n--- qemu ---\n{qemu_out}" if qemu_out else "")
        res.output = _read_text(results / "output.log")
        rc = _read_text(results / "rc").strip()
        res.returncode = int(rc) if rc.lstrip("-").isdigit() else None
        if res.boot_s is None and f"{MARK} ready" in res.console:
            res.boot_s = res.total_s
        for p in results.iterdir():
            if p.is_file():
                res.files[p.name] = p.read_bytes()
        if keep:
            dest = Path(keep)
            dest.mkdir(parents=True, exist_ok=True)
            for p in results.iterdir():
                if p.is_file():
                    shutil.copy(p, dest / p.name)
            shutil.copy(console, dest / "console.log") if console.exists() else None
        return res
    finally:
        if qemu is not None and qemu.poll() is None:
            _stop(qemu)
        shutil.rmtree(work, ignore_errors=True)


def _stop(p: subprocess.Popen) -> str:
    """Kill qemu if it still runs (TERM, then KILL); return what it printed."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    out = p.stdout.read().decode(errors="replace") if p.stdout else ""
    if p.stdout:
        p.stdout.close()
    return out.strip()


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def sh_quote(s: str) -> str:
    return "'" + str(s).replace("'", "'\"'\"'") + "'"


# ---- command line -------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vmkernel.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fetch", help="download and unpack Debian's kernel (idempotent)")
    r = sub.add_parser("run", help="boot the VM and run a shell command in it")
    r.add_argument("--timeout", type=float, default=None, help="seconds (default 600)")
    r.add_argument("--keep", help="copy the results dir and console.log here")
    r.add_argument("command", nargs="+", help="shell command line (after --)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.cmd == "fetch":
            k = fetch()
            print(f"VM kernel {k.abi}: {k.vmlinuz}")
            return 0
        res = run_in_vm(" ".join(args.command), timeout_s=args.timeout, keep=args.keep)
    except VMError as exc:
        print(f"vmkernel.py: error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(res.output)
    boot = f"{res.boot_s:.1f} s" if res.boot_s is not None else "never"
    print(f"[vm: boot {boot}, total {res.total_s:.1f} s, exit {res.returncode}]", file=sys.stderr)
    if res.returncode is None:
        print(res.tail(), file=sys.stderr)
        return 124
    return res.returncode


if __name__ == "__main__":
    sys.exit(main())
