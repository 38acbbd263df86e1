"""Workload profiles: shipped ones load, every bad field gets an error naming it."""

import copy
from pathlib import Path

import numpy as np
import pytest

from meshemu.errors import ProfileError
from meshemu.spec.profile import (
    AllReduceSpec,
    InferenceSpec,
    Profile,
    ReplaySpec,
    list_profiles,
    load_profile,
    read_pcap,
    resolve,
)

NAMES = ("s0", "s1", "c0", "c1", "c2", "gs", "usr", "dc")
KINDS = np.array(["sat", "sat", "compute", "compute", "compute", "station", "user", "datacenter"])
BASE = {
    "name": "t",
    "workloads": [
        {
            "kind": "allreduce",
            "algorithm": "ring",
            "nodes": "compute",
            "model_mb": 2,
            "iterations": 3,
            "compute_ms": 10,
        },
        {
            "kind": "inference",
            "users": "users",
            "rate_per_s": 5,
            "request_bytes": 2000,
            "response_bytes": 8000,
            "deadline_ms": 200,
        },
        {"kind": "bulk", "src": "gs", "dst": "dc", "rate_mbps": 5},
    ],
}
PCAP = Path(__file__).resolve().parents[2] / "traffic" / "example.pcap"


def with_(i, key, value):
    d = copy.deepcopy(BASE)
    if value is ...:
        del d["workloads"][i][key]
    else:
        d["workloads"][i][key] = value
    return d


@pytest.mark.parametrize("name", list_profiles())
def test_shipped_profiles_resolve_on_default_scenario(name):
    from meshemu.geometry.schedule import LinkSchedule
    from meshemu.spec.scenario import load_scenario

    nodes = LinkSchedule(load_scenario("default"), 1.0).nodes
    res = resolve(load_profile(name), nodes.names, nodes.kind)
    assert res.workloads


def test_default_profile_content():
    p = load_profile("default")
    ar = next(w for w in p.workloads if isinstance(w, AllReduceSpec))
    inf = next(w for w in p.workloads if isinstance(w, InferenceSpec))
    assert (ar.algorithm, ar.nodes, ar.model_mb, ar.compute_ms) == ("ring", "compute", 2, 500)
    assert 5 <= ar.iterations <= 10
    assert (inf.rate_per_s, inf.request_bytes, inf.response_bytes, inf.deadline_ms) == (
        5,
        2048,
        8192,
        200,
    )


def test_resolve_expands_keywords():
    res = resolve(Profile.from_dict(BASE), NAMES, KINDS)
    ar, inf, bulk = res.workloads
    assert ar.nodes == ("c0", "c1", "c2")
    assert inf.users == ("gs", "usr") and inf.servers == ("c0", "c1", "c2")
    assert ar.model_bytes == 2_000_000
    assert list(res.to_dict()["workloads"][0]["nodes"]) == ["c0", "c1", "c2"]


@pytest.mark.parametrize(
    "i,key,value,field,words",
    [
        (
            0,
            "algorithm",
            "butterfly",
            "workloads[0].algorithm",
            ["'butterfly'", "parameter_server, ring, tree"],
        ),
        (0, "algorithm", ..., "workloads[0].algorithm", ["required", "ring"]),
        (0, "model_mb", 0, "workloads[0].model_mb", ["> 0", "0"]),
        (0, "model_mb", "big", "workloads[0].model_mb", ["number", "'big'"]),
        (0, "iterations", 1.5, "workloads[0].iterations", ["integer", "1.5"]),
        (0, "iterations", 0, "workloads[0].iterations", [">= 1"]),
        (0, "compute_ms", -1, "workloads[0].compute_ms", [">= 0", "-1"]),
        (0, "nodes", "everyone", "workloads[0].nodes", ["'compute'", "'everyone'"]),
        (0, "nodes", ["c0"], "workloads[0].nodes", ["at least 2"]),
        (0, "nodes", ["c0", "c0"], "workloads[0].nodes", ["twice"]),
        (0, "rate_mbps", 0, "workloads[0].rate_mbps", ["> 0"]),
        (0, "colour", "red", "workloads[0].colour", ["'colour'", "algorithm"]),
        (
            0,
            "kind",
            "video",
            "workloads[0].kind",
            ["'video'", "allreduce, bulk, inference, replay"],
        ),
        (0, "start_s", -2, "workloads[0].start_s", [">= 0"]),
        (1, "target", "random", "workloads[1].target", ["'random'", "least_loaded, nearest"]),
        (1, "rate_per_s", -5, "workloads[1].rate_per_s", ["> 0", "-5"]),
        (1, "request_bytes", 0, "workloads[1].request_bytes", [">= 1"]),
        (1, "response_bytes", "8k", "workloads[1].response_bytes", ["integer", "'8k'"]),
        (1, "deadline_ms", 0, "workloads[1].deadline_ms", ["> 0"]),
        (1, "users", 5, "workloads[1].users", ["'users'", "5"]),
        (1, "duration_s", 0, "workloads[1].duration_s", ["> 0"]),
        (2, "dst", "gs", "workloads[2].dst", ["differ", "'gs'"]),
        (2, "src", 3, "workloads[2].src", ["node name", "3"]),
        (2, "rate_mbps", ..., "workloads[2].rate_mbps", ["required"]),
    ],
)
def test_bad_field_is_named(i, key, value, field, words):
    with pytest.raises(ProfileError) as ei:
        Profile.from_dict(with_(i, key, value), source="t.yaml")
    msg = str(ei.value)
    assert msg.startswith(f"t.yaml: {field}:"), msg
    for w in words:
        assert w in msg, (w, msg)


def test_top_level_errors():
    with pytest.raises(ProfileError, match="workloads: must be a non-empty list"):
        Profile.from_dict({"name": "x", "workloads": []})
    with pytest.raises(ProfileError, match="unknown key 'wrokloads'"):
        Profile.from_dict({"name": "x", "wrokloads": []})
    with pytest.raises(ProfileError, match="seed: must be an integer"):
        Profile.from_dict({**BASE, "seed": "x"})
    d = copy.deepcopy(BASE)
    d["workloads"][1]["name"] = "allreduce0"
    with pytest.raises(ProfileError, match="workloads\\[1\\].name: 'allreduce0' is used"):
        Profile.from_dict(d)
    with pytest.raises(ProfileError, match="no traffic profile 'nope'.*default"):
        load_profile("nope")


def test_bad_yaml(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("workloads: [\n")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile(p)


@pytest.mark.parametrize(
    "i,key,value,words",
    [
        (0, "nodes", ["c0", "zz"], ["workloads[0].nodes", "unknown node 'zz'", "gs"]),
        (1, "users", ["usr", "mars"], ["workloads[1].users", "'mars'"]),
        (1, "servers", ["usr"], ["workloads[1]", "both users and servers"]),
        (2, "dst", "nowhere", ["workloads[2].dst", "'nowhere'"]),
        (0, "model_mb", 9000, ["workloads[0].model_mb", "9000", "89 MB"]),
    ],
)
def test_resolve_errors(i, key, value, words):
    with pytest.raises(ProfileError) as ei:
        resolve(Profile.from_dict(with_(i, key, value)), NAMES, KINDS)
    for w in words:
        assert w in str(ei.value)


def test_compute_keyword_without_compute_nodes():
    kinds = np.where(KINDS == "compute", "sat", KINDS)
    with pytest.raises(ProfileError, match="'compute' means the scenario's compute satellites"):
        resolve(Profile.from_dict(BASE), NAMES, kinds)


def test_read_example_pcap():
    t, s = read_pcap(PCAP)
    assert len(t) == len(s) == 200
    assert t[0] == 0.0 and all(b >= a for a, b in zip(t, t[1:]))
    assert set(s) == {20 + 8 + 120, 20 + 8 + 600, 20 + 8 + 1200}


def test_replay_workload_reads_pcap_relative_to_profile(tmp_path):
    (tmp_path / "cap.pcap").write_bytes(PCAP.read_bytes())
    (tmp_path / "p.yaml").write_text(
        "workloads:\n  - {kind: replay, pcap: cap.pcap, src: gs, dst: dc}\n"
    )
    w = load_profile(tmp_path / "p.yaml").workloads[0]
    assert isinstance(w, ReplaySpec) and len(w.times_s) == 200
    assert load_profile(tmp_path / "p.yaml").to_dict()["workloads"][0]["packets"] == 200


@pytest.mark.parametrize(
    "content,words",
    [
        (None, ["no such pcap file"]),
        (b"", ["not a readable pcap", "cap.pcap"]),
        (b"this is not a capture at all, just text" * 3, ["not a readable pcap"]),
        ("truncated", ["cap.pcap"]),
        ("empty", ["holds no packets"]),
    ],
)
def test_bad_pcaps(tmp_path, content, words):
    p = tmp_path / "cap.pcap"
    if content == "truncated":
        p.write_bytes(PCAP.read_bytes()[: 24 + 16 + 30])  # header, a record cut short
    elif content == "empty":
        p.write_bytes(PCAP.read_bytes()[:24])  # a global header only
    elif content is not None:
        p.write_bytes(content)
    d = {"workloads": [{"kind": "replay", "pcap": "cap.pcap", "src": "gs", "dst": "dc"}]}
    with pytest.raises(ProfileError) as ei:
        Profile.from_dict(d, source="p.yaml", base_dir=tmp_path)
    msg = str(ei.value)
    assert msg.startswith("p.yaml: workloads[0].pcap:"), msg
    for w in words:
        assert w in msg, msg
