"""The CPU latency request (meshemu/linux/pmqos.py) with the device replaced by a file."""

import os
import struct

from meshemu.linux import pmqos


def test_request_writes_its_value_holds_the_file_and_releases_it(tmp_path, monkeypatch):
    dev = tmp_path / "cpu_dma_latency"
    dev.write_bytes(b"")
    monkeypatch.setattr(pmqos, "PATH", str(dev))
    monkeypatch.delenv("MESHEMU_CPU_LATENCY", raising=False)
    r = pmqos.CpuLatencyRequest(0)
    assert r.hold() and r.held
    fd = r._fd
    assert struct.unpack("=i", dev.read_bytes())[0] == 0
    assert r.hold()  # idempotent: the same request
    assert r._fd == fd
    r.release()
    assert not r.held
    try:
        os.fstat(fd)
        raise AssertionError("the descriptor is still open")
    except OSError:
        pass
    r.release()  # idempotent


def test_request_is_skipped_when_off_or_without_the_device(tmp_path, monkeypatch):
    monkeypatch.setattr(pmqos, "PATH", str(tmp_path / "missing"))
    assert not pmqos.CpuLatencyRequest(0).hold()
    assert pmqos.current_target_us() is None
    dev = tmp_path / "cpu_dma_latency"
    dev.write_bytes(b"")
    monkeypatch.setattr(pmqos, "PATH", str(dev))
    monkeypatch.setenv("MESHEMU_CPU_LATENCY", "off")
    assert not pmqos.CpuLatencyRequest(0).hold()
    assert dev.read_bytes() == b""
