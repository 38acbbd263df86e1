"""Resource checks of the live emulation, refused before anything is planned or built."""

from __future__ import annotations

import pytest

from meshemu.errors import ResourceError
from meshemu.live import addressing as adr
from meshemu.live import resources


def test_check_capacity_refuses_memory_and_addressing_limits(monkeypatch):
    monkeypatch.setattr(resources, "mem_available_bytes", lambda: 64 * 2**30)
    resources.check_capacity(1594, 1584, 10)  # Starlink shell 1 fits 64 GiB
    need = resources.estimate_memory_bytes(1594, 2 * 1584 + 4 * 10, 1594 * 1594)
    monkeypatch.setattr(resources, "mem_available_bytes", lambda: int(need / 0.85) - 2**20)
    with pytest.raises(ResourceError, match="GiB"):
        resources.check_capacity(1594, 1584, 10)
    monkeypatch.setattr(resources, "mem_available_bytes", lambda: 1 << 50)
    with pytest.raises(ResourceError, match=str(adr.MAX_NODES)):
        resources.check_capacity(adr.MAX_NODES + 1, adr.MAX_NODES + 1, 0)
