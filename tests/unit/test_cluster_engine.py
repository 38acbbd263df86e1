"""The cluster driver's failure detection on a local Ray (no root, no network): a host
whose worker dies and a host that falls behind stop the step with a message naming the
host (meshemu.live.cluster.engine)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from meshemu.errors import EmulationError

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow


class Worker:
    def apply(self, delay_s: float) -> float:
        time.sleep(delay_s)
        return delay_s


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    import sys

    # the workers cannot import this test module: ship Worker by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(
        num_cpus=1,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
        logging_level="ERROR",
        log_to_driver=False,
    )
    try:
        yield ray
    finally:
        ray.shutdown()


def driver():
    from meshemu.live.cluster.engine import ClusterEmulation
    from meshemu.partition import partition_nodes

    part = partition_nodes(4, np.array([1, 6, 11], dtype=np.int64), 2, method="planes")
    emu = ClusterEmulation(
        "127.0.0.1:1", ["a", "b", "c", "d"], ["sat"] * 4, part, "userspace", ".", "t1", 1.0
    )
    emu._ray = ray
    actor = ray.remote(Worker).options(num_cpus=0)
    emu.workers = {0: actor.remote(), 1: actor.remote()}
    emu.info = {
        0: {"address": "10.9.0.1", "hostname": "alpha"},
        1: {"address": "10.9.0.2", "hostname": "beta"},
    }
    return emu


def test_answers_are_gathered(local_ray):
    emu = driver()
    refs = {h: w.apply.remote(0.0) for h, w in emu.workers.items()}
    assert emu._gather(refs, 30, "apply step 1") == {0: 0.0, 1: 0.0}


def test_a_dead_worker_is_named(local_ray):
    emu = driver()
    ray.get([w.apply.remote(0.0) for w in emu.workers.values()])
    ray.kill(emu.workers[1], no_restart=True)
    refs = {h: w.apply.remote(0.0) for h, w in emu.workers.items()}
    with pytest.raises(
        EmulationError,
        match=r"host 1 \(10\.9\.0\.2, beta\): its meshemu "
        r"worker died while it was to apply step 3",
    ):
        emu._gather(refs, 30, "apply step 3")
    assert emu._dead == {1}


def test_a_late_host_is_named(local_ray):
    emu = driver()
    ray.get([w.apply.remote(0.0) for w in emu.workers.values()])  # both started
    refs = {0: emu.workers[0].apply.remote(0.0), 1: emu.workers[1].apply.remote(5.0)}
    t0 = time.monotonic()
    with pytest.raises(
        EmulationError,
        match=r"host 1 \(10\.9\.0\.2, beta\) fell behind: it "
        r"did not apply step 2 within 1 s",
    ):
        emu._gather(refs, 1.0, "apply step 2")
    assert time.monotonic() - t0 < 4.0
