"""`meshemu report` and `meshemu compare` on small synthetic run directories, and the plan
recorder's files (``positions.npz``) that let the report draw its map without the scenario.

Every number checked here is computed by hand from the rows written by :func:`make_run`.
"""

import csv
import functools
import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest

from meshemu.cli import main
from meshemu.errors import MeshemuError
from meshemu.geometry.linkstate import KIND_NAMES
from meshemu.geometry.orbit import ecef_to_geodetic
from meshemu.geometry.schedule import LinkSchedule
from meshemu.plan import run_plan
from meshemu.report import (
    ReportError,
    compare,
    comparison,
    files,
    load_run,
    read_table,
    report,
    run_stats,
    sequence_stats,
)
from meshemu.report.maps import MapNodes, plot_map
from meshemu.report.record import PlanRecorder, _PositionLog, node_positions_ecef_km
from meshemu.spec.scenario import load_scenario

PLOTS = (
    "latency.png",
    "throughput.png",
    "latency_cdf.png",
    "iterations.png",
    "paths_map.png",
    "link_util.png",
)
U0 = 1_700_000_000.0  # unix time of step 0
NS = 1_000_000_000

# flow 1 ("probe", flow-wide seq in one message): seq 4 is lost; seq 6 is slow (150 ms) and
# arrives after seq 7, so seq 6 is the one reordered packet.
PROBE_OWD = {0: 20.0, 1: 21.0, 2: 22.0, 3: 23.0, 5: 25.0, 6: 150.0, 7: 27.0, 8: 28.0, 9: 29.0}


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


@functools.lru_cache(maxsize=1)
def default_schedule():
    return LinkSchedule(load_scenario("default"), 1.0)


@functools.lru_cache(maxsize=1)
def default_positions():
    """The default scenario's node positions at t = 0..4 s, as the recorder writes them."""
    lat, lon, alt = ecef_to_geodetic(node_positions_ecef_km(default_schedule(), np.arange(5.0)))
    return files.Positions(
        np.arange(5.0), lat.T.astype(np.float32), lon.T.astype(np.float32), alt.T.astype(np.float32)
    )


@pytest.fixture(scope="module")
def node_names():
    return default_schedule().nodes.names


def make_run(d, node_names, routing="shortest-delay", owd_shift_ms=0.0, scenario="default"):
    """A run directory of the shipped default scenario, 5 steps, two flows, one all-reduce job
    and five inference requests."""
    d.mkdir(parents=True)
    files.write_positions(d, default_positions())
    summary = {
        "scenario": scenario,
        "source": "",
        "routing": routing,
        "shaper": "userspace",
        "kind": "run",
        "steps": 5,
        "nodes": len(node_names),
        "duration_s": 4.0,
        "step_s": 1.0,
        "time_scale": 1.0,
        "timing": {
            "apply_ms_p50": 5.0,
            "apply_ms_p99": 7.94,
            "lag_ms_p99": 1.0,
            "build_s": 0.5,
            "stop_s": 0.1,
        },
        "route_changes_total": 3,
        "link_updates_total": 10,
        "traffic": {"lines": ["2 flows, 1 job, 5 inference requests"]},
    }
    (d / "summary.json").write_text(json.dumps(summary))
    write_csv(
        d / "nodes.csv",
        ["id", "name", "kind", "shell", "plane", "index"],
        [
            [i, n, "sat" if n.startswith("s0_") else "station", 0, 0, 0]
            for i, n in enumerate(node_names)
        ],
    )
    write_csv(
        d / "steps.csv",
        ["step", "t_s", "wall_s", "unix_s", "lag_ms", "apply_ms", "link_updates", "route_changes"],
        [
            [k, k, k, U0 + k, 0 if k == 0 else 1, [500, 2, 4, 6, 8][k], 2 * k, [0, 1, 0, 2, 0][k]]
            for k in range(5)
        ],
    )
    p1, p2 = "london s0_0_0 new_york", "london s0_0_1 s0_0_0 new_york"
    back = "new_york s0_0_0 london"  # unreachable from t = 3
    write_csv(
        d / "paths.csv",
        ["t_s", "src", "dst", "path", "hops", "delay_ms"],
        [[t, "london", "new_york", p1 if t < 2 else p2, 2, 20 + t] for t in range(5)]
        + [
            [t, "new_york", "london", back if t < 3 else "", 2, 21 if t < 3 else ""]
            for t in range(5)
        ],
    )
    write_csv(
        d / "flows.csv",
        ["flow_id", "name", "kind", "src", "dst"],
        [[1, "probe", "udp", "london", "new_york"], [2, "bulk", "tcp", "new_york", "london"]],
    )
    rows = []
    for seq in range(10):
        send = int((U0 + 0.5 + 0.1 * seq) * NS)
        if seq in PROBE_OWD:
            owd = PROBE_OWD[seq] + owd_shift_ms
            rows.append(
                [1, 0, seq, "london", "new_york", 100, send, send + int(owd * 1e6), owd, "x"]
            )
    # flow 2: seq restarts per message. msg 1 seq 1 sent but not received (logged, empty
    # receive); msg 2 seq 0 never logged (a loss at the head of a message); one row without
    # owd_ms (computed from the timestamps: 40 ms)
    for msg, seqs in ((0, (0, 1, 2)), (1, (0, 1, 2)), (2, (1, 2))):
        for seq in seqs:
            send = int((U0 + 1 + msg + 0.01 * seq) * NS)
            if (msg, seq) == (1, 1):
                rows.append([2, msg, seq, "new_york", "london", 1000, send, "", "", "x"])
            elif (msg, seq) == (2, 2):
                rows.append(
                    [2, msg, seq, "new_york", "london", 1000, send, send + 40 * 10**6, "", "x"]
                )
            else:
                rows.append(
                    [
                        2,
                        msg,
                        seq,
                        "new_york",
                        "london",
                        1000,
                        send,
                        send + 30 * 10**6,
                        30.0 + owd_shift_ms,
                        "x",
                    ]
                )
    write_csv(
        d / "packets.csv",
        [
            "flow_id",
            "msg_id",
            "seq",
            "src",
            "dst",
            "size_bytes",
            "send_unix_ns",
            "recv_unix_ns",
            "owd_ms",
            "extra",
        ],
        rows,
    )
    write_csv(
        d / "flow_throughput.csv",
        ["t_s", "flow_id", "rx_bytes", "mbps"],
        [
            [1, 1, 125000, 1.0],
            [2, 1, 250000, 2.0],
            [3, 1, 375000, 3.0],
            [1, 2, 1250000, 10.0],
            [2, 2, 2500000, 20.0],
        ],
    )
    write_csv(
        d / "flow_paths.csv",
        ["t_s", "flow_id", "src", "dst", "path", "delay_ms"],
        [
            [0, 1, "london", "new_york", p1, 20],
            [1, 1, "london", "new_york", p1, 21],
            [2, 1, "london", "new_york", p2, 22],
            [3, 1, "london", "new_york", p2, 23],
        ],
    )
    write_csv(
        d / "link_counters.csv",
        ["t_s", "a", "b", "packets", "bytes", "dropped"],
        [
            [t, a, b, 10 * t, t * rate, drop * t]
            for t in range(5)
            for a, b, rate, drop in (
                ("london", "s0_0_0", 125000, 0),
                ("s0_0_0", "new_york", 250000, 1),
                ("s0_0_0", "s0_0_1", 0, 0),
            )
        ],
    )
    write_csv(
        d / "iterations.csv",
        ["job", "algorithm", "iteration", "start_unix", "end_unix", "duration_ms", "predicted_ms"],
        [["ar1", "ring", i, U0 + i, U0 + i + 0.1, 100 + 10 * i, 100] for i in range(4)],
    )
    write_csv(
        d / "inference.csv",
        [
            "request_id",
            "user",
            "server",
            "send_unix",
            "done_unix",
            "latency_ms",
            "deadline_ms",
            "missed",
        ],
        [
            [0, "paris_users", "s0_0_0", U0, U0 + 0.01, 10, 25, 0],
            [1, "paris_users", "s0_0_0", U0, U0 + 0.02, 20, 25, 0],
            [2, "paris_users", "s0_0_0", U0, U0 + 0.03, 30, 25, 1],
            [3, "paris_users", "s0_0_0", U0, U0 + 0.04, 40, 25, "True"],
            [4, "paris_users", "s0_0_0", U0, "", "", 25, ""],
        ],
    )
    return d


@pytest.fixture
def run_dir(tmp_path, node_names):
    return make_run(tmp_path / "run-a", node_names)


def metric(table, section, name, m):
    return {r.key: r.value for r in table}[(section, name, m)]


# ----------------------------------------------------------------------------- statistics


def test_sequence_stats_flow_wide_gap_and_reordering():
    # seq 0..5, 3 lost, 2 arrives after 4
    s = sequence_stats(np.zeros(5), [0, 1, 4, 2, 5], [1.0, 2.0, 3.0, 4.0, 5.0])
    assert not s.per_message_seq
    assert (s.expected, s.received, s.lost, s.reordered, s.arrivals) == (6, 5, 1, 1, 5)
    assert s.loss_pct == pytest.approx(100 / 6)
    assert s.reorder_pct == pytest.approx(20.0)


def test_sequence_stats_arrival_order_is_receive_time_not_file_order():
    # written in seq order but received 0, 2, 1: one reordered
    s = sequence_stats(np.zeros(3), [0, 1, 2], [1.0, 3.0, 2.0])
    assert s.reordered == 1 and s.lost == 0


def test_sequence_stats_per_message_and_duplicates():
    msg = np.array(["a", "a", "a", "b", "b", "b"])
    seq = [0, 1, 1, 0, 2, 1]  # a: duplicate of 1; b: 1 after 2
    recv = [1.0, 2.0, 3.0, 1.5, 2.5, 3.5]
    s = sequence_stats(msg, seq, recv)
    assert s.per_message_seq
    assert (s.expected, s.received, s.lost, s.reordered, s.arrivals) == (5, 5, 0, 1, 6)


def test_sequence_stats_counts_each_sender_on_its_own():
    # request/response flow: a sends msgs 0, 1 with flow-wide seq 0..3; b answers msg 0 with
    # seq 0, 1 (its own counter), both of b's packets arriving before a's last two
    msg = [0, 0, 1, 1, 0, 0]
    seq = [0, 1, 2, 3, 0, 1]
    recv = [1.0, 2.0, 5.0, 6.0, 3.0, 4.0]
    sender = ["a", "a", "a", "a", "b", "b"]
    s = sequence_stats(msg, seq, recv, sender)
    assert (s.expected, s.received, s.lost, s.reordered, s.arrivals) == (6, 6, 0, 0, 6)
    assert not s.per_message_seq
    mixed = sequence_stats(msg, seq, recv)  # without senders b's packets look reordered
    assert (mixed.expected, mixed.reordered) == (4, 1)


def test_sequence_stats_unreceived_rows_count_as_lost():
    s = sequence_stats(np.zeros(4), [0, 1, 2, 3], [1.0, np.nan, 3.0, np.nan])
    assert (s.expected, s.received, s.lost) == (4, 2, 2)
    assert sequence_stats(np.zeros(0), [], []).expected == 0


def test_flow_statistics_equal_hand_computed(run_dir):
    st = run_stats(load_run(run_dir))
    probe, bulk = st.flows
    assert (probe.name, probe.src, probe.dst) == ("probe", "london", "new_york")
    # probe: 9 of 10 received, seq 6 reordered
    assert (probe.seq.expected, probe.seq.received, probe.seq.lost) == (10, 9, 1)
    assert probe.seq.loss_pct == pytest.approx(10.0)
    assert probe.seq.reordered == 1
    assert probe.seq.reorder_pct == pytest.approx(100 / 9)
    owd = sorted(PROBE_OWD.values())  # 20 21 22 23 25 27 28 29 150
    assert probe.owd_p[0] == pytest.approx(25.0)
    assert probe.owd_p[1] == pytest.approx(29 + 0.6 * (150 - 29))  # rank 0.95 * 8 = 7.6
    assert probe.owd_p[2] == pytest.approx(29 + 0.92 * (150 - 29))  # rank 7.92
    assert sorted(probe.owd_ms) == pytest.approx(owd)
    # emulated send time: t_s(step 0) + (send - unix_s(step 0)) * time_scale
    assert probe.t_s[0] == pytest.approx(0.5) and probe.t_s[-1] == pytest.approx(1.4)
    assert probe.throughput_mbps == pytest.approx(2.0)
    assert probe.path_changes == 1  # flow_paths.csv: changed at t = 2
    # bulk: messages 0, 1, 2 of seq 0..2; (1, 1) logged unreceived, (2, 0) never logged
    assert bulk.seq.per_message_seq
    assert (bulk.seq.expected, bulk.seq.received, bulk.seq.lost) == (9, 7, 2)
    assert bulk.seq.reordered == 0
    assert sorted(bulk.owd_ms) == pytest.approx([30] * 6 + [40])  # one OWD from timestamps
    assert bulk.throughput_mbps == pytest.approx(15.0)
    assert bulk.path_changes == 1  # no flow_paths rows: paths.csv, t = 3


def test_flows_with_untrusted_one_way_delays_have_none(run_dir):
    """A run over several hosts whose clocks were too far apart marked flow 1's one-way
    delays untrusted (owd_trust.csv): the report gives none for it, the rest as before."""
    from meshemu.report.files import OWD_TRUST

    row = {c: "" for c in OWD_TRUST.columns}
    rows = [
        {**row, "flow_id": 1, "src_host": 0, "dst_host": 1, "bound_ms": 3.2, "owd": "untrusted"},
        {**row, "flow_id": 2, "src_host": 1, "dst_host": 0, "bound_ms": 0.2, "owd": "trusted"},
    ]
    write_csv(
        run_dir / OWD_TRUST.name,
        OWD_TRUST.columns,
        [[r[c] for c in OWD_TRUST.columns] for r in rows],
    )
    probe, bulk = run_stats(load_run(run_dir)).flows
    assert probe.owd_ms.size == 0 and all(np.isnan(probe.owd_p))
    assert (probe.seq.received, probe.seq.lost) == (9, 1)  # loss needs no clock
    assert sorted(bulk.owd_ms) == pytest.approx([30] * 6 + [40])


def test_job_inference_and_clock_statistics(run_dir):
    st = run_stats(load_run(run_dir))
    ring, pooled = st.jobs
    assert (ring.job, ring.algorithm, ring.iterations) == ("ar1", "ring", 4)
    assert ring.mean_ms == pytest.approx(115.0)
    assert ring.p95_ms == pytest.approx(128.5)  # 120 + 0.85 * 10
    assert ring.predicted_mean_ms == pytest.approx(100.0)
    assert ring.error_pct == pytest.approx(15.0)
    assert pooled.job == "all jobs" and pooled.mean_ms == pytest.approx(115.0)
    inf = st.inference
    assert (inf.requests, inf.completed) == (5, 4)
    assert inf.p50_ms == pytest.approx(25.0)
    assert inf.p99_ms == pytest.approx(30 + 0.97 * 10)  # rank 0.99 * 3 = 2.97
    assert inf.deadline_misses == 3  # two marked, one never completed
    assert inf.miss_pct == pytest.approx(60.0)
    assert st.route_changes == 3 and st.apply_ms_p50 == 5.0 and st.apply_ms_p99 == 7.94


def test_apply_times_from_steps_csv_skip_the_build_step(run_dir):
    s = json.loads((run_dir / "summary.json").read_text())
    del s["timing"], s["route_changes_total"]
    (run_dir / "summary.json").write_text(json.dumps(s))
    st = run_stats(load_run(run_dir))
    assert st.apply_ms_p50 == pytest.approx(5.0)  # of 2, 4, 6, 8 (not step 0's 500)
    assert st.apply_ms_p99 == pytest.approx(6 + 0.97 * 2)
    assert st.route_changes == 3


def test_time_scale_stretches_emulated_time(run_dir):
    s = json.loads((run_dir / "summary.json").read_text())
    s["time_scale"] = 2.0
    (run_dir / "summary.json").write_text(json.dumps(s))
    probe = run_stats(load_run(run_dir)).flows[0]
    assert probe.t_s[0] == pytest.approx(1.0) and probe.t_s[-1] == pytest.approx(2.8)


def test_plan_directory_has_clock_free_metrics(run_dir):
    for name in ("steps.csv", "packets.csv", "flows.csv", "flow_paths.csv", "inference.csv"):
        (run_dir / name).unlink()
    s = json.loads((run_dir / "summary.json").read_text())
    for k in ("timing", "route_changes_total", "link_updates_total", "shaper", "time_scale"):
        del s[k]
    s["events"] = {"route_changes": 7}
    (run_dir / "summary.json").write_text(json.dumps(s))
    st = run_stats(load_run(run_dir))
    assert st.route_changes == 7 and st.link_updates is None
    assert np.isnan(st.apply_ms_p50) and st.flows[0].seq.expected == 0
    assert st.flows[0].name == "1"  # a flow of flow_throughput.csv without flows.csv
    res = report(run_dir)
    assert {f.name for f in res.files} == {
        "throughput.png",
        "iterations.png",
        "paths_map.png",
        "link_util.png",
        "summary.csv",
        "summary.md",
    }


def test_read_table_pads_short_rows_and_parses_booleans(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("a,b,c\n1,True,x,extra\n2\n")
    t = read_table(p, ("a",), ("d",), ("a", "b", "d"))
    assert t["a"].tolist() == [1.0, 2.0]
    assert t["b"][0] == 1.0 and np.isnan(t["b"][1])
    assert t["c"].tolist() == ["x", ""] and np.isnan(t["d"]).all()
    assert read_table(tmp_path / "missing.csv") is None
    (tmp_path / "empty.csv").write_text("")
    assert read_table(tmp_path / "empty.csv", ("a",)) is None


# ----------------------------------------------------------------------------- report


def test_report_writes_plots_and_tables(run_dir, capsys):
    res = report(run_dir)
    out = run_dir / "report"
    for name in PLOTS + ("summary.csv", "summary.md"):
        assert (out / name).stat().st_size > 0, name
        assert out / name in res.files
    assert res.skipped == []
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["section", "name", "metric", "value", "unit"]
    got = {(r["section"], r["name"], r["metric"]): r["value"] for r in rows}
    assert float(got[("flow", "probe", "owd_p50")]) == 25.0
    assert float(got[("flow", "probe", "loss_pct")]) == 10.0
    assert float(got[("traffic", "all flows", "loss_pct")]) == pytest.approx(100 * 3 / 19, abs=1e-6)
    assert float(got[("inference", "all", "deadline_misses")]) == 3
    assert float(got[("allreduce", "all jobs", "mean_ms")]) == 115.0
    assert metric(res.table, "run", "", "route_changes") == 3
    md = (out / "summary.md").read_text()
    assert "| probe" in md and "OWD p50 (ms)" in md and "deadline misses" in md


def test_report_cli_prints_table_and_files(run_dir, tmp_path, capsys):
    assert main(["report", str(run_dir), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "probe" in out and "25.00" in out
    assert "latency.png" in out and "summary.md" in out
    assert (tmp_path / "rep" / "latency.png").stat().st_size > 0


def test_run_without_traffic_skips_traffic_plots(run_dir):
    for name in (
        "flows.csv",
        "packets.csv",
        "flow_throughput.csv",
        "flow_paths.csv",
        "link_counters.csv",
        "iterations.csv",
        "inference.csv",
    ):
        (run_dir / name).unlink()
    res = report(run_dir)
    written = {f.name for f in res.files}
    assert written == {"paths_map.png", "summary.csv", "summary.md"}
    assert len(res.skipped) == 5
    assert any("no packets.csv" in s or "packets.csv" in s for s in res.skipped)
    assert "no traffic files" in res.stats.notes[0]
    md = (run_dir / "report" / "summary.md").read_text()
    assert "plots not written" in md and "link_util.png" in md


def test_some_traffic_files_missing_or_empty(run_dir):
    (run_dir / "flow_throughput.csv").unlink()
    (run_dir / "iterations.csv").write_text("")  # created, nothing logged
    (run_dir / "flows.csv").unlink()  # flows then come from packets.csv
    res = report(run_dir)
    written = {f.name for f in res.files}
    assert "throughput.png" not in written and "iterations.png" not in written
    assert "latency.png" in written and "link_util.png" in written
    probe = res.stats.flows[0]
    assert probe.name == "1" and probe.src == "london"
    # without flow_throughput.csv: received bytes * 8 / receive span
    recv = [(U0 + 0.5 + 0.1 * s) + PROBE_OWD[s] / 1e3 for s in PROBE_OWD]
    assert probe.throughput_mbps == pytest.approx(
        9 * 100 * 8 / (max(recv) - min(recv)) / 1e6, rel=1e-4
    )
    assert res.stats.jobs == []


def test_flows_sharing_a_name_get_their_id(run_dir):
    write_csv(
        run_dir / "flows.csv",
        ["flow_id", "name", "kind", "src", "dst"],
        [
            [1, "ring", "allreduce", "london", "new_york"],
            [2, "ring", "allreduce", "new_york", "london"],
        ],
    )
    res = report(run_dir)
    assert [f.name for f in res.stats.flows] == ["ring[1]", "ring[2]"]
    assert {r.name for r in res.table if r.section == "flow"} == {"ring[1]", "ring[2]"}


def test_map_drawn_when_the_scenario_does_not_exist(run_dir):
    s = json.loads((run_dir / "summary.json").read_text())
    s["scenario"], s["source"] = "no-such-scenario", "/nonexistent/no-such-scenario.yaml"
    (run_dir / "summary.json").write_text(json.dumps(s))
    res = report(run_dir)
    assert (run_dir / "report" / "paths_map.png").stat().st_size > 10_000
    assert not any(x.startswith("paths_map.png") for x in res.skipped)
    assert (run_dir / "report" / "latency.png").exists()


def test_map_skipped_without_positions(run_dir):
    (run_dir / "positions.npz").unlink()  # a run directory of an older meshemu
    res = report(run_dir)
    assert not (run_dir / "report" / "paths_map.png").exists()
    assert any(x.startswith("paths_map.png: no positions.npz") for x in res.skipped)
    assert (run_dir / "report" / "latency.png").exists()


def test_map_skipped_when_positions_do_not_match_the_nodes(run_dir):
    p = default_positions()
    files.write_positions(
        run_dir, files.Positions(p.t_s, p.lat_deg[:, :3], p.lon_deg[:, :3], p.alt_km[:, :3])
    )
    res = report(run_dir)
    assert not (run_dir / "report" / "paths_map.png").exists()
    assert any("positions.npz has 3 nodes but nodes.csv has 68" in x for x in res.skipped)


def test_bad_run_directories(tmp_path, run_dir):
    with pytest.raises(ReportError, match="does not exist"):
        report(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ReportError, match="is a file"):
        report(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no summary.json: is it a meshemu run directory"):
        report(tmp_path / "empty")
    (run_dir / "packets.csv").write_text("flow_id,seq\n1,2\n")
    with pytest.raises(ReportError, match="packets.csv: missing column.*msg_id"):
        report(run_dir)
    (run_dir / "packets.csv").unlink()
    (run_dir / "steps.csv").write_text("step,t_s,unix_s,apply_ms\n0,0,abc,1\n")
    with pytest.raises(ReportError, match=r"line 2: column unix_s .*'abc'"):
        report(run_dir)
    (run_dir / "summary.json").write_text("{not json")
    with pytest.raises(ReportError, match="not valid JSON"):
        report(run_dir)
    assert issubclass(ReportError, MeshemuError) and issubclass(ReportError, ValueError)


def test_cli_error_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("meshemu: error: ") and "no summary.json" in err


# ----------------------------------------------------------------------------- compare


def test_compare_two_runs(tmp_path, node_names, caplog):
    a = make_run(tmp_path / "run-a", node_names)
    b = make_run(tmp_path / "run-b", node_names, routing="min-hop", owd_shift_ms=10.0)
    with caplog.at_level(logging.WARNING):
        files = compare([a, b], tmp_path / "cmp")
    assert not any("differ" in r.message for r in caplog.records)
    assert [f.name for f in files] == ["compare.csv", "compare.md", "compare.png"]
    assert all(f.stat().st_size > 0 for f in files)
    with open(tmp_path / "cmp" / "compare.csv", newline="") as f:
        rows = {r[0]: r[1:] for r in csv.reader(f)}
    assert rows["metric"] == ["shortest-delay (run-a)", "min-hop (run-b)"]
    # pooled 16 packets: 20 21 22 23 25 27 28 29 | 30 x6 40 150 -> (29 + 30) / 2
    assert [float(x) for x in rows["OWD p50 (ms)"]] == [29.5, 39.5]
    assert [float(x) for x in rows["inference p99 (ms)"]] == [39.7, 39.7]
    assert [float(x) for x in rows["route changes"]] == [3, 3]
    assert [float(x) for x in rows["probe: OWD p50 (ms)"]] == [25.0, 35.0]
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "min-hop (run-b)" in md and "warning" not in md


def test_compare_warns_when_scenarios_differ(tmp_path, node_names, caplog):
    a = make_run(tmp_path / "a", node_names)
    b = make_run(tmp_path / "b", node_names, scenario="other")
    (b / "flows.csv").unlink()
    with caplog.at_level(logging.WARNING):
        cmp = comparison([a, b])
    assert any("differ in scenario" in w for w in cmp.warnings)
    assert any("differ in traffic profile" in w for w in cmp.warnings)
    assert any("differ in scenario" in r.message for r in caplog.records)


def test_compare_needs_two_run_directories(tmp_path, node_names, capsys):
    a = make_run(tmp_path / "a", node_names)
    with pytest.raises(ReportError, match="at least two"):
        compare([a], tmp_path / "cmp")
    (tmp_path / "notrun").mkdir()
    with pytest.raises(ReportError, match="no summary.json"):
        compare([a, tmp_path / "notrun"], tmp_path / "cmp")
    assert main(["compare", str(a)]) == 2
    assert "at least two" in capsys.readouterr().err


def test_compare_cli_prints_table(tmp_path, node_names, capsys):
    a = make_run(tmp_path / "a", node_names)
    b = make_run(tmp_path / "b", node_names, routing="min-hop")
    shutil.rmtree(b / "report", ignore_errors=True)
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "| metric" in out and "min-hop (b)" in out and "compare.png" in out


def test_transport_rtt_percentiles(run_dir):
    (run_dir / "rtt.csv").write_text(
        "flow_id,msg_id,src,dst,send_unix_ns,rtt_ms\n"
        + "".join(f"1,{i},a,b,{i},{v}\n" for i, v in enumerate([10, 20, 30, 40, 50]))
    )
    res = report(run_dir)
    assert metric(res.table, "traffic", "all flows", "rtt_p50") == pytest.approx(30.0)
    assert metric(res.table, "traffic", "all flows", "rtt_p99") == pytest.approx(49.6)
    assert "transport RTT" in (run_dir / "report" / "summary.md").read_text()


# ----------------------------------------------------------------------------- positions


@pytest.fixture(scope="module")
def plan_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("plan")
    run_plan(load_scenario("default"), 3, 1.0, "shortest-delay", out)
    return out


def test_plan_records_every_nodes_position(plan_dir):
    pos = files.read_positions(plan_dir)
    assert pos.t_s.tolist() == [0.0, 1.0, 2.0, 3.0] and pos.stride == 1
    assert pos.lat_deg.shape == pos.lon_deg.shape == pos.alt_km.shape == (4, 68)
    assert pos.lat_deg.dtype == np.float32
    sched = default_schedule()
    lat, lon, alt = ecef_to_geodetic(node_positions_ecef_km(sched, pos.t_s))
    np.testing.assert_allclose(pos.lat_deg, lat.T, atol=1e-4)
    np.testing.assert_allclose(pos.lon_deg, lon.T, atol=1e-4)
    np.testing.assert_allclose(pos.alt_km, alt.T, atol=1e-2)
    g = sched.scenario.ground[0]  # ground nodes follow satellites
    assert pos.lat_deg[0, sched.n_sats] == pytest.approx(g.lat_deg, abs=1e-4)
    assert 500 < float(pos.alt_km[0, 0]) < 2000  # a LEO satellite


def test_report_of_a_plan_reads_neither_scenario_nor_geometry(plan_dir, tmp_path):
    d = tmp_path / "plan"
    shutil.copytree(plan_dir, d)
    s = json.loads((d / "summary.json").read_text())
    s["scenario"], s["source"] = "no-such-scenario", str(tmp_path / "gone.yaml")
    (d / "summary.json").write_text(json.dumps(s))
    code = (
        "import sys\nfrom meshemu.cli import main\n"
        f"assert main(['report', {str(d)!r}]) == 0\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('meshemu.spec', "
        "'meshemu.geometry', 'meshemu.routing', 'meshemu.report.record', 'meshemu.live', "
        "'sgp4')))\n"
        "assert not bad, bad\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (d / "report" / "paths_map.png").stat().st_size > 10_000
    assert "skipped paths_map.png" not in res.stdout


def test_links_at_reads_the_step_nearest(plan_dir):
    run = load_run(plan_dir)
    with open(plan_dir / "links.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for t, want in ((0.0, "0"), (1.4, "1"), (2.6, "3"), (99.0, "3")):
        got = run.links_at(t)
        expected = [r for r in rows if r["t_s"] == want]
        assert got["t_s"].tolist() == [float(want)] * len(expected)
        assert got["a"].tolist() == [r["a"] for r in expected]
        assert got["kind_id"].tolist() == [KIND_NAMES.index(r["kind"]) for r in expected]


def test_links_csv_kinds_are_the_link_state_kinds():
    assert files.LINK_KINDS == KIND_NAMES


def test_position_log_thins_long_runs():
    log_ = _PositionLog(4, max_bytes=10 * (3 * 4 * 4 + 8))  # room for 10 steps
    for k in range(100):
        log_.add(k, float(k), np.full((4, 3), 7000.0))
    pos = log_.positions()
    assert pos.stride == 16 and pos.t_s.size <= 10
    assert pos.t_s[0] == 0.0 and np.all(pos.t_s % pos.stride == 0)
    assert np.all(np.diff(pos.t_s) == pos.stride)
    with pytest.raises(ReportError, match=r"expected \(4, 3\)"):
        log_.add(100, 100.0, np.zeros((3, 3)))


def test_recorder_without_positions_writes_none(tmp_path):
    sched = default_schedule()
    rec = PlanRecorder(tmp_path, sched.nodes, np.array([sched.n_sats], np.int32))
    rec.close()
    assert not (tmp_path / "positions.npz").exists()
    assert files.read_positions(tmp_path) is None
    with pytest.raises(ReportError, match="no positions were recorded"):
        rec.map_nodes()


def test_bad_positions_file(run_dir):
    (run_dir / "positions.npz").write_bytes(b"not a zip")
    with pytest.raises(ReportError, match="cannot read"):
        files.read_positions(run_dir)
    np.savez(run_dir / "positions.npz", t_s=np.zeros(2))
    with pytest.raises(ReportError, match="missing array"):
        files.read_positions(run_dir)
    res = report(run_dir)  # the map is skipped, the rest is written
    assert any(x.startswith("paths_map.png: ") for x in res.skipped)


def test_plot_map_accepts_the_old_schedule_call(tmp_path):
    sched = default_schedule()
    snap = sched.snapshot_at(0.0)
    old = plot_map(tmp_path / "old.png", sched, snap, title="old call")
    lat, lon, _ = ecef_to_geodetic(node_positions_ecef_km(sched, 0.0))
    new = plot_map(
        tmp_path / "new.png",
        MapNodes(sched.nodes.names, sched.nodes.kind, lat, lon),
        snap,
        title="old call",
    )
    assert old.read_bytes() == new.read_bytes()


def test_report_says_when_the_shaper_fell_behind(run_dir):
    from doubles import GuardedFakeShaper

    from meshemu.live.guard import FidelityGuard
    from meshemu.live.shapers.base import GuardRecord

    late = [GuardRecord(3, 1, 900, 2_500_000, 7_000_000)]
    shaper = GuardedFakeShaper("r", [[], late, late])
    guard = FidelityGuard(shaper, run_dir, {3: ("s0_1_2", "london")}, warn=lambda *a: None)
    for k in (1, 2, 3):
        guard.poll(k, float(k))
    guard.close()
    s = json.loads((run_dir / "summary.json").read_text())
    s["fidelity"] = guard.summary()
    (run_dir / "summary.json").write_text(json.dumps(s))
    report(run_dir)
    md = (run_dir / "report" / "summary.md").read_text()
    assert "fell behind the plan in 2 of 3 steps" in md
    assert "steps affected: 2, 3" in md
    row = [
        c.strip() for c in next(ln for ln in md.splitlines() if "s0_1_2 - london" in ln).split("|")
    ]
    assert row[1:7] == ["s0_1_2 - london", "b>a", "2", "2.50", "7.00", "2"]


def test_report_shows_routing_convergence(run_dir):
    from meshemu.report.convergence import Event, summarize

    events = [
        Event(10.0, "isl", 1, 0, 4, 0.05, True, 0.0, 0.01, 1.0),
        Event(20.0, "gsl", 1, 1, 9, 0.2, True, 0.02, 0.0, 1.0),
        Event(30.0, "isl", 1, 0, 0, 0.0, False, 0.0, 2.0, 1.0),
    ]
    s = json.loads((run_dir / "summary.json").read_text())
    s["convergence"] = summarize(events) | {"initial_s": 12.5}
    (run_dir / "summary.json").write_text(json.dumps(s))
    report(run_dir)
    md = (run_dir / "report" / "summary.md").read_text()
    assert "routing convergence: 3 topology events, first full routing 12.50 s" in md
    row = [
        c.strip() for c in next(ln for ln in md.splitlines() if ln.startswith("| isl ")).split("|")
    ]
    # isl: convergence 0.05 and 0.0 s -> p50 0.025 (shown 0.03), max 0.05; one not converged
    assert row[1:7] == ["isl", "2", "0.03", row[4], "0.05", "1"], row
    assert float(row[4]) == pytest.approx(0.05, abs=0.005)  # p99


def test_compare_daemon_runs_by_convergence(tmp_path, node_names):
    from meshemu.report.convergence import Event, summarize

    runs = []
    for name, conv_s in (("run-ospf", 0.05), ("run-isis", 0.4)):
        d = make_run(tmp_path / name, node_names, routing=name[4:])
        s = json.loads((d / "summary.json").read_text())
        s["convergence"] = summarize([Event(5.0, "isl", 1, 0, 3, conv_s, True, 0.0, 0.0, 1.0)])
        (d / "summary.json").write_text(json.dumps(s))
        runs.append(d)
    compare(runs, tmp_path / "cmp")
    with open(tmp_path / "cmp" / "compare.csv", newline="") as f:
        rows = {r[0]: r[1:] for r in csv.reader(f)}
    assert [float(x) for x in rows["routing convergence p50 (s)"]] == [0.05, 0.4]
    assert [float(x) for x in rows["events not converged"]] == [0, 0]
