"""The delay line's fidelity guard and worker selection without root: the GUARD_REC codec,
the lateness histogram (and that the compiled worker's agrees with it), and which worker
the userspace shaper runs."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from meshemu.errors import ShaperError
from meshemu.live import delayline as dl
from meshemu.live.shapers import UserspaceShaper
from meshemu.live.shapers import userspace as us


# ---- GUARD_REC ------------------------------------------------------------------------------
def test_guard_record_layout_and_decoding():
    assert dl.OP_GUARD == 6
    assert dl.GUARD_REC.format == "<IBQqqI" and dl.GUARD_REC.size == 33
    payload = dl.GUARD_REC.pack(7, 1, 12345, 40_000, 90_000, 42) + dl.GUARD_REC.pack(
        dl.WORKER_LINK_ID, 3, 17, 1_000, 2_000, 0
    )
    recs = dl.decode_guard(payload, worker=3)
    assert recs == [
        dl.GuardRecord(7, 1, 12345, 40_000, 90_000, 3, queue_frames=42),
        dl.GuardRecord(0xFFFFFFFF, 3, 17, 1_000, 2_000, 3),
    ]
    assert [r.is_worker for r in recs] == [False, True]
    assert dl.decode_guard(b"") == []
    with pytest.raises(ValueError, match="33-byte records"):
        dl.decode_guard(payload[:-1])
    with pytest.raises(AttributeError):
        recs[0].frames = 1  # type: ignore[misc]  (frozen)


def test_queue_backlog_counts_the_frames_not_yet_serialised():
    ends = [100, 200, 300, 400]
    assert [dl.queue_backlog(ends, t) for t in (0, 100, 250, 400, 999)] == [4, 3, 2, 0, 0]
    assert dl.queue_backlog([], 5) == 0


def test_c_worker_guard_record_is_the_python_layout():
    """The compiled worker's GUARD_REC_SIZE and field offsets are GUARD_REC's."""
    src = (Path(dl.__file__).parent / "dlc" / "delayline.c").read_text()
    assert f"#define GUARD_REC_SIZE {dl.GUARD_REC.size} " in src
    assert "memcpy(p + 29, &queue, 4);" in src and dl.GUARD_REC.format.endswith("I")


# ---- the lateness histogram -----------------------------------------------------------------
def _values() -> list[int]:
    rng = np.random.default_rng(1)
    v = [0, 1, 15, 16, 31, 32, 33, 63, 64, 1000, 2**20, 2**36 - 1, 2**36, 2**40]
    v += [int(x) for x in rng.integers(0, 2**37, 2000)]
    v += [int(x) for x in np.exp(rng.uniform(0, np.log(2**36), 5000))]
    return v


def test_lateness_buckets_are_ordered_and_at_most_a_sixteenth_wide():
    prev_b = prev_hi = -1
    for b in range(dl.LATENESS_BUCKETS):
        lo, hi = dl.lateness_bucket_bounds(b)
        assert lo == prev_hi + 1  # contiguous, no gaps or overlaps
        assert hi - lo + 1 <= max(1, lo / 16)  # <= 6.25 % of the lower edge (<= 10 %)
        assert dl.lateness_bucket(lo) == dl.lateness_bucket(hi) == b
        assert b > prev_b
        prev_b, prev_hi = b, hi
    assert prev_hi == 2**36 - 1
    for v in _values():
        b = dl.lateness_bucket(v)
        lo, hi = dl.lateness_bucket_bounds(b)
        assert lo <= min(v, 2**36 - 1) <= hi
    assert dl.lateness_bucket(-5) == 0
    assert dl.lateness_bucket(2**50) == dl.LATENESS_BUCKETS - 1


def test_lateness_p99_is_within_a_bucket_of_the_true_p99():
    rng = np.random.default_rng(2)
    for sample in (rng.exponential(20_000, 10_000), rng.uniform(0, 5e6, 777), np.full(50, 12345)):
        vals = [int(x) for x in sample]
        hist: dict[int, int] = {}
        for v in vals:
            b = dl.lateness_bucket(v)
            hist[b] = hist.get(b, 0) + 1
        p99 = dl.lateness_p99(hist, len(vals), max(vals))
        true = sorted(vals)[-(-99 * len(vals) // 100) - 1]  # the ceil(0.99 n)-th smallest
        assert true <= p99 <= max(vals)
        assert p99 <= true * (1 + 1 / 16) + 1
    assert dl.lateness_p99({}, 0, 0) == 0


def test_the_compiled_worker_histogram_agrees_with_the_python_one(tmp_path):
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc is missing; install.sh installs it (Debian's gcc, libc6-dev, make)")
    exe = tmp_path / "lateness"
    subprocess.run(
        [
            gcc,
            "-O2",
            "-std=c11",
            "-DDLC_LATENESS_SELFTEST",
            "-o",
            str(exe),
            str(us.DELAYLINE_C_DIR / "delayline.c"),
        ],
        check=True,
        capture_output=True,
    )
    vals = [*_values(), -7]
    out = subprocess.run(
        [str(exe)], input="\n".join(map(str, vals)), capture_output=True, text=True, check=True
    ).stdout.split("\n")
    hist: dict[int, int] = {}
    for v, line in zip(vals, out):
        b = dl.lateness_bucket(v)
        assert line == f"{b} {dl.lateness_bucket_bounds(b)[1]}", v
        hist[b] = hist.get(b, 0) + 1
    mx = max(max(vals), 0)
    assert out[len(vals)] == f"{dl.lateness_p99(hist, len(vals), mx)} {mx}"


# ---- which worker ---------------------------------------------------------------------------
@pytest.fixture
def dlc_dir(tmp_path, monkeypatch):
    """An empty stand-in for meshemu/live/dlc (no binary built), warnings not yet given."""
    monkeypatch.setattr(us, "DELAYLINE_C_DIR", tmp_path)
    monkeypatch.setattr(us, "_warned", set())
    monkeypatch.delenv(us.DELAYLINE_ENV, raising=False)
    return tmp_path


def _build_fake(d, age_s: float = 0.0):
    exe = d / us.DELAYLINE_BINARY
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    if age_s:
        t = time.time() - age_s
        os.utime(exe, (t, t))
    return exe


def test_without_the_binary_auto_falls_back_to_python_with_one_warning(dlc_dir, caplog):
    with caplog.at_level(logging.WARNING, logger=us.__name__):
        assert us.resolve_delayline() == "python"
        assert us.resolve_delayline("auto") == "python"
        assert UserspaceShaper("r1").delayline == "python"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "./install.sh" in warnings[0], warnings


def test_forcing_c_without_the_binary_names_the_fix(dlc_dir, monkeypatch):
    with pytest.raises(ShaperError, match=r"not built; build it with \./install\.sh"):
        us.resolve_delayline("c")
    monkeypatch.setenv(us.DELAYLINE_ENV, "c")
    with pytest.raises(ShaperError, match="install.sh"):
        UserspaceShaper("r1")


def test_the_built_binary_is_preferred_and_the_env_var_forces_either(dlc_dir, monkeypatch, caplog):
    src = dlc_dir / "delayline.c"
    src.write_text("/* source */\n")
    _build_fake(dlc_dir, age_s=60)  # built before its source last changed: stale
    with caplog.at_level(logging.WARNING, logger=us.__name__):
        assert us.resolve_delayline() == "c"
    assert any("older than its source" in r.getMessage() for r in caplog.records)
    caplog.clear()
    os.utime(src, (time.time() - 120, time.time() - 120))
    monkeypatch.setattr(us, "_warned", set())
    with caplog.at_level(logging.WARNING, logger=us.__name__):
        assert UserspaceShaper("r1").delayline == "c"
    assert not caplog.records
    monkeypatch.setenv(us.DELAYLINE_ENV, "python")
    assert UserspaceShaper("r1").delayline == "python"
    assert UserspaceShaper("r1", delayline="c").delayline == "c"  # the argument wins
    monkeypatch.setenv(us.DELAYLINE_ENV, "rust")
    with pytest.raises(ShaperError, match="MESHEMU_DELAYLINE implementation 'rust'.*c, python"):
        UserspaceShaper("r1")
    with pytest.raises(ShaperError, match="delayline implementation 'go'"):
        us.resolve_delayline("go")


def test_worker_command_lines_and_how_leftovers_are_recognised(dlc_dir):
    py = us.delayline_argv("python", "run1", 2, 1)
    c = us.delayline_argv("c", "run1", 2, 1)
    tail = ["--run-id", "run1", "--workers", "2", "--worker", "1"]
    assert py[1:] == ["-m", "meshemu.live.delayline", *tail]
    assert c == [str(dlc_dir / "meshemu-delayline"), *tail]
    assert us.is_delayline_argv(py) and us.is_delayline_argv(c)
    assert not us.is_delayline_argv(["/usr/bin/python3", "-m", "meshemu.cli", "run"])
    assert not us.is_delayline_argv([])


def test_the_real_build_is_found_where_install_sh_puts_it():
    exe = us.delayline_binary()
    if exe is None:
        pytest.fail("meshemu/live/dlc/meshemu-delayline is not built; run ./install.sh")
    assert exe.parent.name == "dlc" and os.access(exe, os.X_OK)
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--run-id" in out.stdout
    bad = subprocess.run([str(exe), "--run-id", "x", "--worker", "2"], capture_output=True)
    assert bad.returncode == 2 and b"--worker 2 not in 0..0" in bad.stderr
