"""A Ray instance on this machine alone, for the unit tests of the cluster engine
(``from localray import local_ray_session``; ``tests/`` is on ``sys.path``, see conftest.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any


@contextlib.contextmanager
def local_ray_session(module: ModuleType, temp_dir: Path) -> Iterator[Any]:
    """``ray`` initialised on 127.0.0.1 with one CPU and no dashboard, shut down at the end.
    The workers cannot import the test ``module``: its classes are shipped by value."""
    import ray

    ray.cloudpickle.register_pickle_by_value(module)
    ray.init(
        num_cpus=1,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=str(temp_dir),
        logging_level="ERROR",
        log_to_driver=False,
    )
    try:
        yield ray
    finally:
        ray.shutdown()
