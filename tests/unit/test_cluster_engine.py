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

    def die(self) -> None:
        import os

        os._exit(1)


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    import sys

    from localray import local_ray_session

    with local_ray_session(sys.modules[__name__], tmp_path_factory.mktemp("ray")) as r:
        yield r


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
    # the worker process dies while running a call (ray.kill would be asynchronous: a call
    # sent right after it may still be answered); an actor's calls run in the order sent
    emu.workers[1].die.remote()
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


class RecordingWorker:
    """Records each step's share and answers as HostWorker.apply does."""

    def __init__(self) -> None:
        self.got: list[tuple] = []

    def apply(self, ids, rows, u, d, hops):
        self.got.append((ids.tolist(), u.tolist(), d.tolist()))
        return {
            "apply_s": 0.001,
            "links": int(ids.size),
            "routes": int(u.size),
            "links_s": 0.0,
            "routes_s": 0.0,
            "unix_s": time.time(),
        }

    def shares(self):
        return self.got


def test_each_host_gets_its_share_of_a_step(local_ray, tmp_path):
    """Over 2 hosts: each host is sent exactly the changed links it has an end of and the
    route changes of its own nodes; together they are the whole step."""
    from meshemu.geometry.schedule import LinkSchedule
    from meshemu.live.cluster.engine import ClusterEmulation
    from meshemu.live.links import LinkTable, RunLinks
    from meshemu.partition import link_weights, partition_nodes
    from meshemu.plan import load_scheme
    from meshemu.routing import route_diff
    from meshemu.spec.scenario import load_scenario

    sched = LinkSchedule(load_scenario("default"), 10.0)
    snaps = list(sched.snapshots(40.0))
    n = len(sched.nodes)
    scheme = load_scheme("shortest-delay")
    tables = [scheme.forwarding_tables(s, np.arange(n)) for s in snaps]
    keys, w = link_weights([s.key for s in snaps], [s.up for s in snaps])
    part = partition_nodes(n, keys, 2, weights=w, method="planes")
    emu = ClusterEmulation(
        "127.0.0.1:1",
        list(sched.nodes.names),
        list(sched.nodes.kind),
        part,
        "userspace",
        tmp_path,
        "t2",
        1.0,
    )
    emu._ray = ray
    actor = ray.remote(RecordingWorker).options(num_cpus=0)
    emu.workers = {0: actor.remote(), 1: actor.remote()}
    links = RunLinks.from_snapshots(snaps)
    emu.links = LinkTable(links, emu.names)
    emu.links.load(snaps[0])
    emu._tables = tables[0]
    emu._open_csv()
    ref = LinkTable(links, emu.names)
    ref.load(snaps[0])
    changed_routes = 0
    for k in range(1, len(snaps)):
        st = emu.apply(snaps[k], tables[k])
        want_ids = ref.advance(snaps[k]).ids
        diff = route_diff(tables[k - 1], tables[k])
        assert st.n_link_updates == want_ids.size
        changed_routes += st.n_route_changes
        shares = [ray.get(emu.workers[h].shares.remote())[-1] for h in (0, 1)]
        for h, (ids, u, _) in enumerate(shares):
            ends = [(int(links.key[i] // n), int(links.key[i] % n)) for i in ids]
            assert all(part.host[a] == h or part.host[b] == h for a, b in ends)
            assert all(part.host[x] == h for x in u)
        mine = [set(s[0]) for s in shares]
        assert mine[0] | mine[1] == set(want_ids.tolist())
        cut = {int(i) for i in want_ids if part.cut[np.searchsorted(part.link_keys, links.key[i])]}
        assert mine[0] & mine[1] == cut  # a cut link goes to both of its hosts
        assert len(shares[0][1]) + len(shares[1][1]) == st.n_route_changes
        assert st.n_route_changes == int(
            np.sum(
                np.asarray(diff.nodes)
                != np.asarray(tables[k].destinations)[np.asarray(diff.dest_index)]
            )
        )
    assert changed_routes > 0
    emu._csv.close()
    rows = (tmp_path / "hosts_steps.csv").read_text().splitlines()
    assert rows[0].split(",")[:5] == ["step", "host", "apply_ms", "call_ms", "done_ms"]
    assert len(rows) == 1 + 2 * (len(snaps) - 1)
    summary = emu.summary()
    assert summary["hosts"]["0"]["apply_ms_p99"] is not None
