"""Link shapers without root: netem command generation, validation, registry, the test
double (tests/doubles.py)."""

from __future__ import annotations

import logging
import math
import struct

import pytest
from doubles import FakeShaper

from meshemu.errors import LinkParamsError, ShaperError
from meshemu.linux import netlink
from meshemu.live import delayline as dl
from meshemu.live import shapers as sh
from meshemu.live.shapers import (
    LinkEnds,
    LinkParams,
    make_shaper,
    netem_args,
    netem_limit,
    netem_qdisc_cmd,
)


def _opt(cmd: list[str], key: str) -> str:
    """The value after ``key`` in a netem command (``loss`` is followed by ``random``)."""
    i = cmd.index(key) + 1
    return cmd[i + 1] if cmd[i] == "random" else cmd[i]


# ---- netem commands -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "delay_s, expect",
    [
        (0.010, "10000.000us"),
        (0.0123456789, "12345.679us"),
        (0.0, "0.000us"),
        (2.5, "2500000.000us"),
    ],
)
def test_netem_delay_in_microseconds_with_ns_resolution(delay_s, expect):
    assert _opt(netem_args(LinkParams(delay_s, 1e9)), "delay") == expect


def test_netem_add_command_has_every_option():
    p = LinkParams(0.010, 50e6, queue_packets=200, loss=0.01)
    cmd = netem_qdisc_cmd("isl3", p, "add")
    assert cmd[:7] == ["qdisc", "add", "dev", "isl3", "root", "handle", "1:"]
    assert cmd[7] == "netem"
    assert _opt(cmd, "rate") == "50000000bit"
    assert _opt(cmd, "loss") == "1%"
    assert int(_opt(cmd, "limit")) == netem_limit(p)


def test_netem_change_is_a_change_not_delete_and_add():
    cmd = netem_qdisc_cmd("isl3", LinkParams(0.025, 1e9), "change")
    assert cmd[1] == "change" and "del" not in cmd and "delete" not in cmd
    # every option is repeated, so a change cannot leave an old rate/loss behind
    for key in ("delay", "rate", "limit", "loss"):
        assert key in cmd


def test_netem_down_is_total_loss_and_up_restores_configured_loss():
    p = LinkParams(0.005, 1e8, loss=0.2, up=False)
    assert _opt(netem_args(p), "loss") == "100%"
    assert _opt(netem_args(LinkParams(0.005, 1e8, loss=0.2)), "loss") == "20%"
    assert _opt(netem_args(LinkParams(0.005, 1e8)), "loss") == "0%"


@pytest.mark.parametrize("rate", [0, math.inf])
def test_netem_unlimited_rate_is_rate_zero(rate):
    assert _opt(netem_args(LinkParams(0.001, rate)), "rate") == "0bit"


def test_netem_limit_covers_queue_plus_bandwidth_delay_product():
    p = LinkParams(0.020, 1.2e9, queue_packets=100)
    bdp = 1.2e9 * 0.020 / (8 * sh.NETEM_BDP_PACKET_BYTES)
    assert netem_limit(p) == 100 + math.ceil(bdp)
    # a longer or faster link holds more packets in flight
    assert netem_limit(LinkParams(0.040, 1.2e9, queue_packets=100)) > netem_limit(p)
    assert netem_limit(LinkParams(0.0, 1e6, queue_packets=7)) == 7
    assert netem_limit(LinkParams(0.01, 0, queue_packets=7)) == 7 + math.ceil(
        0.01 * sh.NETEM_UNLIMITED_PPS
    )


def test_netem_bad_action_names_the_valid_ones():
    with pytest.raises(ShaperError, match="'replace'.*add, change"):
        netem_qdisc_cmd("e0", LinkParams(0.001, 1e6), "replace")


def test_netem_create_and_change_commands_group_by_namespace():
    e1 = LinkEnds(1, 100, "a-eth0", 200, "b-eth0")
    e2 = LinkEnds(2, 100, "a-eth1", 300, "c-eth0")
    p = LinkParams(0.003, 1e7)
    ip_cmds, tc = sh.netem_create_cmds([(e1, p), (e2, p)])
    assert ip_cmds[0] == [
        "link",
        "add",
        "a-eth0",
        "numtxqueues",
        "1",
        "numrxqueues",
        "1",
        "netns",
        "100",
        "up",
        "type",
        "veth",
        "peer",
        "name",
        "b-eth0",
        "numtxqueues",
        "1",
        "numrxqueues",
        "1",
        "netns",
        "200",
    ]
    assert len(ip_cmds) == 2
    assert sorted(tc) == [100, 200, 300]
    assert [c[3] for c in tc[100]] == ["a-eth0", "a-eth1"]
    assert all(c[1] == "add" for cmds in tc.values() for c in cmds)
    ch = sh.netem_change_cmds([(e2, LinkParams(0.004, 1e7))])
    assert sorted(ch) == [100, 300] and ch[300][0][:4] == ["qdisc", "change", "dev", "c-eth0"]
    text = sh.batch_text(tc[100])
    assert text.count("\n") == 2 and text.startswith("qdisc add dev a-eth0 root handle 1: netem")


# What iproute2 6.1 sends for `tc qdisc add dev IF root handle 1: netem delay 12345.678us
# rate 20000000bit limit 1167 loss random 2%` (strace -e write=all, ifindex 3, seq 0x6b06a1fb).
TC_NETEM_ADD = bytes.fromhex(
    "60000000240005 06fba1066b00000000"
    "000000000300000000000100ffffffff"
    "000000000a0001006e6574656d000000"
    "300002007af102008f04000052b81e05"
    "000000000000000000000000140006 00"
    "a0252600000000000000000000000000".replace(" ", "")
)


def _split_netem(msg: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """(tcmsg, TCA_KIND attr, struct tc_netem_qopt, nested netem attributes) of a message."""
    tcmsg, kind = msg[16:36], msg[36:48]
    opt_len = struct.unpack_from("=H", msg, 48)[0]
    return tcmsg, kind, msg[52:76], msg[76 : 48 + opt_len]


def test_netem_netlink_message_matches_what_tc_sends():
    p = LinkParams(
        0.012345678,
        20e6,
        queue_packets=1167 - netem_limit(LinkParams(0.012345678, 20e6, queue_packets=1)) + 1,
        loss=0.02,
    )
    assert netem_limit(p) == 1167
    mine = sh.netem_qdisc_msg(3, p, "add", seq=0x6B06A1FB)
    assert struct.unpack_from("=IHHI", mine) == (
        len(mine),
        36,
        0x1 | 0x400 | 0x200,
        0x6B06A1FB,
    )  # tc also asks for an ack
    t_tc, k_tc, q_tc, n_tc = _split_netem(TC_NETEM_ADD)
    t_me, k_me, q_me, n_me = _split_netem(mine)
    assert (t_me, k_me) == (t_tc, k_tc)
    # limit, loss, gap, duplicate, jitter as tc; the 32-bit latency in psched ticks
    # (64 ns) is superseded by TCA_NETEM_LATENCY64 (exact ns), which tc 6.1 does not send
    assert q_me[4:] == q_tc[4:]
    assert struct.unpack_from("=I", q_me)[0] == 12345678 >> 6
    assert n_tc == bytes.fromhex("14000600a0252600" + "00" * 12)  # TCA_NETEM_RATE 2.5 MB/s
    assert n_me == bytes.fromhex("0c000a00") + struct.pack("=q", 12345678) + n_tc


def test_netem_netlink_change_and_edge_values():
    ch = sh.netem_qdisc_msg(5, LinkParams(0.001, 0, up=False), "change", seq=1)
    assert struct.unpack_from("=HH", ch, 4) == (36, 0x1)  # no create flag
    _, _, qopt, nested = _split_netem(ch)
    assert struct.unpack_from("=III", qopt)[2] == 0xFFFFFFFF  # down: loss 100 %
    assert nested[12:16] == bytes.fromhex("14000600") and nested[16:20] == b"\0" * 4  # rate 0
    fast = sh.netem_qdisc_msg(5, LinkParams(0.001, 100e9), "change")  # 12.5 GB/s > 2^32
    _, _, _, nested = _split_netem(fast)
    assert struct.unpack_from("=I", nested, 16)[0] == 0xFFFFFFFF
    assert nested[32:36] == bytes.fromhex("0c000800")  # TCA_NETEM_RATE64
    assert struct.unpack_from("=Q", nested, 36)[0] == 12_500_000_000
    with pytest.raises(ShaperError, match="'replace'.*add, change"):
        sh.netem_qdisc_msg(5, LinkParams(0.001, 0), "replace")


def _qdisc_reply(
    ifindex: int, kind: bytes, parent: int, packets: int, nbytes: int, drops: int
) -> bytes:
    body = (
        struct.pack("=BxxxiIII", 0, ifindex, 0x10000, parent, 1)
        + netlink.rta(netlink.TCA_KIND, kind + b"\0")
        + netlink.rta(
            netlink.TCA_STATS, struct.pack("=QIIIIIII", nbytes, packets, drops, 0, 0, 0, 0, 0)
        )
    )
    return struct.pack("=IHHII", 16 + len(body), 36, 2, 1, 0) + body


def test_netem_stats_come_from_root_netem_qdiscs_of_a_dump():
    data = (
        _qdisc_reply(4, b"netem", 0xFFFFFFFF, 10, 980, 2)
        + _qdisc_reply(1, b"noqueue", 0xFFFFFFFF, 0, 0, 0)
        + _qdisc_reply(5, b"netem", 0x10000, 7, 7, 7)  # not a root qdisc
        + _qdisc_reply(6, b"netem", 0xFFFFFFFF, 2**32 - 1, 2**40, 0)
    )
    assert sh.parse_netem_stats(data) == ({4: (10, 980, 2), 6: (2**32 - 1, 2**40, 0)}, False)
    done = struct.pack("=IHHIIi", 20, 3, 2, 1, 0, 0)
    assert sh.parse_netem_stats(done) == ({}, True)
    err = struct.pack("=IHHIIi", 36, 2, 0, 1, 0, -1) + b"\0" * 16
    with pytest.raises(ShaperError, match="RTM_GETQDISC dump"):
        sh.parse_netem_stats(err)


def test_userspace_commands_put_one_end_of_each_pair_in_the_delay_line_namespace():
    e = LinkEnds(7, 100, "x0", 200, "y0")
    cmds = sh.userspace_create_cmds([e], "meshemu-r1-dl")
    assert cmds == [
        sh.veth_cmd("x0", 100, dl.dl_ifname(7, "a"), "meshemu-r1-dl"),
        sh.veth_cmd("y0", 200, dl.dl_ifname(7, "b"), "meshemu-r1-dl"),
    ]
    assert all(len(dl.dl_ifname(2**32 - 1, s)) <= sh.IFNAME_MAX for s in "ab")


@pytest.mark.parametrize(
    "params, segs",
    [
        # as many 1,514-byte frames as serialise in 100 us: 10 Gbit/s -> 82, capped at 64
        (LinkParams(0.005, 10e9), 64),
        (LinkParams(0.005, 1e9), 8),  # 100 us x 1 Gbit/s / 12,112 bits
        (LinkParams(0.005, 100e6), 1),  # under one frame in 100 us: no super-frames
        (LinkParams(0.005, 0), 64),  # unlimited rate
        (LinkParams(0.005, 1e9, loss=0.01), 1),  # losses per frame: no super-frames
        (LinkParams(0.005, 10e9, queue_packets=20), 10),  # at most half the queue
        (LinkParams(0.005, 10e9, queue_packets=1), 1),
    ],
)
def test_gso_super_frames_are_capped_by_serialisation_time(params, segs):
    assert sh.gso_max_segs(params) == segs


def test_gso_segment_cap_goes_on_the_nodes_ends_only():
    from meshemu.spec.linkmodel import DirectionModel

    acc = LinkParams(0.005, 1e9, ab=DirectionModel(0.004, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0))
    assert sh.gso_max_segs(acc) == 1  # an access model draws its loss per frame
    e = LinkEnds(7, 100, "x0", 200, "y0")
    cmds = sh.userspace_create_cmds([e], "meshemu-r1-dl", {7: 8})
    for cmd, (name, pid, end) in zip(cmds, [("x0", 100, "a"), ("y0", 200, "b")], strict=True):
        plain = sh.veth_cmd(name, pid, dl.dl_ifname(7, end), "meshemu-r1-dl")
        at = cmd.index("gso_max_segs")
        assert cmd[at + 1] == "8" and cmd[:at] + cmd[at + 2 :] == plain
        assert at < cmd.index("peer")  # the first device of the pair: the node's end


def test_gso_says_once_when_a_change_outgrows_the_cap_set_at_creation(caplog):
    if sh.delayline_binary() is None:
        pytest.fail("the compiled delay line is not built; run ./install.sh")
    s = sh.UserspaceShaper("r1", delayline="c", gso=True)
    s._gso_segs.update({3: 8, 4: 8})  # as create_links records them at 1 Gbit/s
    with caplog.at_level(logging.WARNING):
        s._warn_gso_cap([(3, LinkParams(0.005, 2e9)), (4, LinkParams(0.005, 1e9))])
        assert caplog.records == []  # as fast or faster: super-frames stay short enough
        # a link going down (its row may carry no rate, queue or loss): no warning
        s._warn_gso_cap([(4, LinkParams(0.005, 0.0, loss=1.0, up=False))])
        assert caplog.records == []
        for _ in range(2):
            s._warn_gso_cap([(3, LinkParams(0.005, 100e6))])
    (rec,) = caplog.records  # once a link
    assert "link 3" in rec.getMessage() and "8 segments" in rec.getMessage()
    assert "--shaper-gso off" in rec.getMessage()


def test_gso_needs_the_compiled_delay_line():
    with pytest.raises(ShaperError, match="GSO passthrough needs the compiled delay line"):
        sh.UserspaceShaper("r1", delayline="python", gso=True)
    assert sh.delayline_argv("c", "r1", 2, 1, gso=True)[-1] == "--gso"
    assert "--gso" not in sh.delayline_argv("c", "r1", 2, 1)


# ---- validation ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"delay_s": -0.001}, "delay_s"),
        ({"delay_s": math.nan}, "delay_s"),
        ({"delay_s": math.inf}, "delay_s"),
        ({"rate_bps": -1.0}, "rate_bps"),
        ({"rate_bps": math.nan}, "rate_bps"),
        ({"rate_bps": 1.0}, "rate_bps"),
        ({"loss": 1.5}, "loss"),
        ({"loss": -0.1}, "loss"),
        ({"queue_packets": 0}, "queue_packets"),
        ({"queue_packets": 10.5}, "queue_packets"),
        ({"up": "yes"}, "up"),
    ],
)
def test_link_params_reject_impossible_values_quoting_them(kw, needle):
    args = {"delay_s": 0.01, "rate_bps": 1e6, **kw}
    with pytest.raises(LinkParamsError, match=needle) as ei:
        LinkParams(**args)
    assert isinstance(ei.value, ValueError) and isinstance(ei.value, ShaperError)
    assert repr(kw[needle if needle in kw else next(iter(kw))]) in str(ei.value)


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"link_id": -1}, "link_id"),
        ({"pid_a": 0}, "pid_a"),
        ({"if_a": "much-too-long-name"}, "if_a"),
        ({"if_b": "has space"}, "if_b"),
        ({"if_b": ""}, "if_b"),
        ({"pid_b": 10, "if_b": "e0"}, "both ends"),
    ],
)
def test_link_ends_reject_bad_ids_and_names(kw, needle):
    args = {"link_id": 1, "pid_a": 10, "if_a": "e0", "pid_b": 11, "if_b": "e1", **kw}
    with pytest.raises(LinkParamsError, match=needle):
        LinkEnds(**args)


def test_link_params_unlimited():
    assert LinkParams(0.0, 0).unlimited and LinkParams(0.0, math.inf).unlimited
    assert not LinkParams(0.0, 1e9).unlimited


# ---- registry -----------------------------------------------------------------------------
def test_registry_names():
    assert set(sh.SHAPERS) == {"netem", "userspace"}
    for name, cls in sh.SHAPERS.items():
        assert cls.name == name and issubclass(cls, sh.LinkShaper)


def test_unknown_shaper_lists_the_valid_choices():
    with pytest.raises(ShaperError, match=r"'warp'.*auto, netem, userspace"):
        make_shaper("warp", "r1")


def test_the_test_double_is_not_offered():
    with pytest.raises(
        ShaperError, match=r"'fake'.*please specify one of: auto, netem, userspace$"
    ):
        make_shaper("fake", "r1")


def test_netem_without_kernel_support_suggests_userspace(monkeypatch):
    monkeypatch.setattr(sh, "netem_available", lambda: False)
    with pytest.raises(ShaperError, match="--shaper userspace"):
        make_shaper("netem", "r1")


@pytest.mark.parametrize("has_netem, cls", [(True, sh.NetemShaper), (False, sh.UserspaceShaper)])
def test_auto_picks_netem_when_available_and_says_so(monkeypatch, caplog, has_netem, cls):
    monkeypatch.setattr(sh, "netem_available", lambda: has_netem)
    with caplog.at_level(logging.INFO, logger="meshemu.live.shapers"):
        s = make_shaper("auto", "r1")
    assert type(s) is cls
    assert any(cls.name in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
    s.close()  # nothing was created: close is a no-op, and idempotent
    s.close()


def test_run_id_is_checked():
    with pytest.raises(ShaperError, match="'a/b'"):
        make_shaper("userspace", "a/b")
    with pytest.raises(ShaperError, match="'a/b'"):
        FakeShaper("a/b")


def test_userspace_worker_count_is_checked():
    with pytest.raises(ShaperError, match="workers.*0"):
        sh.UserspaceShaper("r1", workers=0)


# ---- the test double -----------------------------------------------------------------------------
def _link(i: int) -> tuple[LinkEnds, LinkParams]:
    return LinkEnds(i, 100 + i, f"e{i}a", 200 + i, f"e{i}b"), LinkParams(0.001 * (i + 1), 1e9)


def test_fake_shaper_records_calls_and_keeps_state():
    f = FakeShaper("r1")
    assert isinstance(f, sh.LinkShaper)
    f.create_links([_link(0), _link(1)])
    new = LinkParams(0.02, 5e8, up=False)
    f.update([(1, new)])
    assert f.params(1) == new and f.params(0) == _link(0)[1]
    assert f.counters() == {0: (0, 0, 0), 1: (0, 0, 0)}
    f.remove_links([0])
    assert f.link_ids == [1]
    f.close()
    assert [c[0] for c in f.calls] == [
        "create_links",
        "update",
        "counters",
        "remove_links",
        "close",
    ]
    assert f.calls[1][1] == [(1, new)] and f.closed and f.link_ids == []


def test_fake_shaper_rejects_what_the_real_ones_reject():
    f = FakeShaper()
    f.create_links([_link(0)])
    with pytest.raises(LinkParamsError, match="already exists"):
        f.create_links([_link(0)])
    with pytest.raises(LinkParamsError, match=r"unknown link id\(s\) \[9\]"):
        f.update([(9, LinkParams(0.0, 0))])
    with pytest.raises(LinkParamsError, match="unknown"):
        f.remove_links([5])
    with pytest.raises(LinkParamsError, match="pairs"):
        f.create_links([("not", "a link")])
    assert f.link_ids == [0]


# ---- delay-line control protocol ----------------------------------------------------------
def test_control_messages_round_trip():
    msg = dl.encode_links(
        dl.OP_UPDATE,
        [(3, 0.0123456789, math.inf, 50, 0.25, False), (4, 0.001, 5e7, 1000, 0.0, True)],
    )
    op, n = dl.HDR.unpack_from(msg)
    assert (op, n) == (dl.OP_UPDATE, 2)
    recs = list(dl.LINK_REC.iter_unpack(msg[dl.HDR.size :]))
    assert recs == [(3, 12_345_679, 0.0, 50, 0.25, 0), (4, 1_000_000, 5e7, 1000, 0.0, 1)]
    ids = dl.encode_ids(dl.OP_REMOVE, [1, 2, 2**32 - 1])
    assert dl.HDR.unpack_from(ids) == (dl.OP_REMOVE, 3)
    assert [i for (i,) in dl.ID_REC.iter_unpack(ids[dl.HDR.size :])] == [1, 2, 2**32 - 1]


def test_bpf_filter_program_shape():
    fprog, buf = dl._bpf_ifindex_filter(2, 1)
    n = int.from_bytes(fprog[:2], "little")
    assert n == 5 and len(buf.raw) >= n * 8
