"""The browser view's server side without a browser: RunData against the plan files read
independently, the growing-file reader, the HTTP routes, the errors (missing run
directory, port in use, libraries missing) and the live feed's event stream."""

from __future__ import annotations

import csv
import json
import socket
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from meshemu.errors import ReportError, ViewError
from meshemu.plan import run_plan
from meshemu.report.files import FLOW_PATHS
from meshemu.view.data import GrowingTable, RunData
from meshemu.view.live import LiveFeed
from meshemu.view.server import ViewServer, check_libraries


@pytest.fixture(scope="module")
def plan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("viewplan") / "plan"
    run_plan("default", 12, out_dir=out, plots=False)
    return out


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_steps_hold_the_links_of_links_csv(plan_dir: Path) -> None:
    data = RunData(plan_dir)
    links = rows(plan_dir / "links.csv")
    per = Counter(float(r["t_s"]) for r in links if r["up"] == "1")
    meta = data.meta()
    assert meta["links_per_step"] == [per[t] for t in meta["steps"]]
    for k in (0, 5, len(meta["steps"]) - 1):
        st = data.step(k)
        want = {(r["a"], r["b"]) for r in links if float(r["t_s"]) == st["t_s"] and r["up"] == "1"}
        names = meta["nodes"]["name"]
        got = {(names[meta["links"]["a"][i]], names[meta["links"]["b"][i]]) for i in st["up"]}
        assert got == want
        assert len(st["lat"]) == len(names) == 68
    assert json.loads(data.step_json(3)) == data.step(3)


def test_routes_are_the_rest_of_the_recorded_paths(plan_dir: Path) -> None:
    data = RunData(plan_dir)
    t = float(data.steps[4])
    paths = [r["path"].split() for r in rows(plan_dir / "paths.csv") if float(r["t_s"]) == t]
    london = data.id_of["london"]
    got = {data.names[r["dest"]]: r for r in data.node(london, 4)["routes"]}
    for p in paths:
        if p[0] == "london":
            assert got[p[-1]]["path"] == [data.id_of[x] for x in p]
            assert data.names[got[p[-1]]["next_hop"]] == p[1]
    assert data.node(london, 4)["fib"] is None  # computed routing: no fib.csv
    planned = data.flows()["flows"]
    assert planned and all(f["kind"] == "planned path" for f in planned)
    assert len(planned) == 28  # 8 endpoints, unordered pairs


def test_link_series_is_down_where_links_csv_has_no_row(plan_dir: Path) -> None:
    data = RunData(plan_dir)
    lk = data.link(0)
    a, b = data.names[lk["a"]], data.names[lk["b"]]
    have = {
        float(r["t_s"]): float(r["delay_ms"])
        for r in rows(plan_dir / "links.csv")
        if (r["a"], r["b"]) == (a, b)
    }
    for t, d in zip(lk["t_s"], lk["delay_ms"]):
        assert (d is None) == (t not in have)
        if d is not None:
            assert d == pytest.approx(have[t], abs=1e-3)


def test_growing_table_reads_complete_lines_only(tmp_path: Path) -> None:
    path = tmp_path / FLOW_PATHS.name
    gt = GrowingTable(path, FLOW_PATHS)
    assert len(gt.table()["t_s"]) == 0  # no file yet
    path.write_text("t_s,flow_id,src,dst,path,delay_ms\n0,1,a,b,a b,1.5\n1,1,a,b,a")
    assert gt.table()["t_s"].tolist() == [0.0]
    with open(path, "a") as f:
        f.write(" c b,2.5\n")
    t = gt.table()
    assert t["t_s"].tolist() == [0.0, 1.0] and t["path"].tolist() == ["a b", "a c b"]
    path.write_text("t_s,flow_id,src,dst,path,delay_ms\n7,2,x,y,x y,\n")  # rewritten
    assert gt.table()["flow_id"].tolist() == ["2"]
    path.write_text("t_s,nope\n1,2\n")
    with pytest.raises(ReportError, match="missing column"):
        GrowingTable(path, FLOW_PATHS).table()


def test_bad_run_dirs_are_named(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="does not exist"):
        RunData(tmp_path / "nope")
    with pytest.raises(ReportError, match="not a run or plan directory"):
        RunData(tmp_path)


def test_missing_libraries_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ViewError, match=r"install\.sh"):
        check_libraries(tmp_path)


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_server_routes_and_port_in_use(plan_dir: Path) -> None:
    with ViewServer(RunData(plan_dir), port=0) as srv:
        url = srv.url
        st, body = get(url)
        assert st == 200 and b"/static/app.js" in body and b"http" not in body.split(b"<body>")[1]
        meta = json.loads(get(url + "api/meta")[1])
        assert meta["nodes"]["name"][0] == "s0_0_0"
        assert get(url + "api/step/0")[0] == 200
        assert get(url + f"api/step/{len(meta['steps'])}")[0] == 400
        assert get(url + "api/node/64?k=2")[0] == 200
        assert get(url + "api/link/0")[0] == 200
        assert get(url + "api/util/0")[0] == 200
        assert get(url + "lib/three/build/three.module.js")[0] == 200
        assert get(url + "lib/three/../../../server.py")[0] == 404
        assert get(url + "static/../server.py")[0] == 404
        assert get(url + "lib/left-pad/index.js")[0] == 404
        st, body = get(url + "api/events")  # a replay: "end" at once
        assert st == 200 and b"event: end" in body
        with pytest.raises(ViewError, match=rf"port {srv.port} .* in use.*--port"):
            ViewServer(RunData(plan_dir), port=srv.port).start()


def test_live_feed_streams_steps_and_the_end(plan_dir: Path) -> None:
    feed = LiveFeed()
    try:
        with ViewServer(RunData(plan_dir, live=True), port=0, feed=feed) as srv:
            with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
                s.sendall(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
                buf = b""
                while b'data: {"step":-1}' not in buf:
                    buf += s.recv(4096)
                assert feed.clients == 1
                feed.built()
                for k in (1, 2, 3):
                    feed(k, None, None)
                feed.finish()
                while b"event: end" not in buf:
                    chunk = s.recv(4096)
                    assert chunk, f"stream closed early: {buf!r}"
                    buf += chunk
            assert b'event: end\ndata: {"step":3}' in buf
            assert json.loads(get(srv.url + "api/live")[1]) == {"step": 3, "done": True}
    finally:
        feed.close()


def test_fib_of_a_daemon_run_is_the_last_change_at_or_before_the_step(
    plan_dir: Path, tmp_path: Path
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(plan_dir, run)
    (run / "fib.csv").write_text(
        "t_s,node,dest,next_hops\n"
        "0,london,s0_0_0,s0_0_2\n"
        "0,london,new_york,s0_0_2|s0_0_1\n"
        "3.5,london,s0_0_0,\n"
        "6,london,s0_0_0,s0_0_1\n"
    )
    data = RunData(run)
    london = data.id_of["london"]

    def fib_at(k: int) -> dict[str, list[str]]:
        got = data.node(london, k)["fib"]
        assert got is not None
        return {data.names[f["dest"]]: [data.names[x] for x in f["next_hops"]] for f in got}

    assert fib_at(2) == {"s0_0_0": ["s0_0_2"], "new_york": ["s0_0_2", "s0_0_1"]}
    assert fib_at(4)["s0_0_0"] == []  # no route between 3.5 and 6 s
    assert fib_at(7)["s0_0_0"] == ["s0_0_1"]
    assert data.flows()["has_fib"] is True


def test_cli_names_a_missing_run_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from meshemu.cli import main

    assert main(["view", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "meshemu plan" in err


def test_live_flow_stats_come_from_the_agents_files_as_they_grow(
    plan_dir: Path, tmp_path: Path
) -> None:
    """Before the run merges packets.csv and writes flow_throughput.csv, a flow's
    throughput per finished step and its mean one-way delay per step come from the
    agents' own files (only complete, well-formed lines; a sampled flow's rows weighted),
    and grow as the files do."""
    import shutil

    from meshemu.report.files import FLOWS, PACKETS, STEPS

    run = tmp_path / "run"
    shutil.copytree(plan_dir, run)
    (run / "traffic").mkdir()
    (run / FLOWS.name).write_text(
        FLOWS.header + "1,a,stream,london,s0_0_0\n2,b,stream,s0_0_0,london\n"
    )
    u0 = 1_700_000_000
    with open(run / STEPS.name, "w") as f:
        f.write(STEPS.header)
        for k in range(4):  # steps 0..3 started; 0..2 are over
            f.write(f"{k},{float(k)},{float(k)},{u0 + k},0.1,1.0,0,0,0,0\n")
    (run / "traffic" / "s0_0_0.json").write_text(json.dumps({"node": "s0_0_0", "sample": {"2": 3}}))

    def pkt(flow: int, seq: int, size: int, step: float, owd_ms: float) -> str:
        recv = int((u0 + step) * 1e9)
        send = recv - int(owd_ms * 1e6)
        return f"{flow},1,{seq},x,y,{size},{send},{recv},{owd_ms}\n"

    packets = run / "traffic" / "s0_0_0.packets.csv"
    packets.write_text(
        pkt(1, 0, 1000, 0.2, 10.0)
        + pkt(1, 1, 1000, 0.7, 20.0)
        + "1,1,2,x,y,oops,1,2,3\n"  # damaged: left out
        + pkt(2, 0, 500, 1.5, 5.0)
        + "1,1,3,x,y,1000,"  # cut short (no newline yet): waits
    )
    assert len(PACKETS.columns) == 9
    data = RunData(run)
    got = {f["flow_id"]: f for f in data.flows()["flows"]}
    assert got["1"]["throughput"]["t_s"] == [0.0, 1.0, 2.0]
    assert got["1"]["throughput"]["mbps"] == [0.016, 0.0, 0.0]  # 2000 B in 1 s
    assert got["2"]["throughput"]["mbps"] == [0.0, 0.012, 0.0]  # 500 B x 3 in 1 s
    assert got["1"]["latency"] == {"t_s": [0.0], "owd_ms": [15.0]}
    assert data.flows()["flow_stats"] == "agents"
    # the agent writes on: the cut line completes, a later packet lands in step 2
    with open(packets, "a") as f:
        f.write(pkt(1, 3, 1000, 0.9, 12.0).split(",", 6)[6])
        f.write(pkt(1, 4, 4000, 2.5, 30.0))
    got = {f["flow_id"]: f for f in data.flows()["flows"]}
    assert got["1"]["throughput"]["mbps"] == [0.024, 0.0, 0.032]
    assert got["1"]["latency"] == {"t_s": [0.0, 2.0], "owd_ms": [14.0, 30.0]}
    # once the run has written its own files, those are served
    (run / "flow_throughput.csv").write_text("t_s,flow_id,rx_bytes,mbps\n0,1,1,7.5\n")
    got = {f["flow_id"]: f for f in data.flows()["flows"]}
    assert got["1"]["throughput"] == {"t_s": [0.0], "mbps": [7.5]}


def test_link_queue_per_direction_and_step_from_shaper_csv(plan_dir: Path, tmp_path: Path) -> None:
    """A link's queue: shaper.csv's queue_frames per direction on the run's steps, 0 where
    the guard wrote no row for it, null beyond the last step the guard reached; none from
    a plan (no shaper.csv) or an older shaper.csv without the column."""
    import shutil

    from meshemu.report.files import SHAPER

    run = tmp_path / "run"
    shutil.copytree(plan_dir, run)
    data = RunData(run)
    assert data.link(0)["queue"] == {}
    a, b = data.names[int(data.link_a[0])], data.names[int(data.link_b[0])]
    steps = data.steps.tolist()
    lines = [
        f"1,{steps[1]:g},0,{a},{b},a>b,10,0.01,0.02,0,7",
        f"1,{steps[1]:g},0,{a},{b},b>a,3,0.01,0.02,0,0",
        f"2,{steps[2]:g},0,{b},{a},b>a,5,0.01,0.02,0,4",  # ends the other way round: a>b
        f"3,{steps[3]:g},-1,,,,0,0.01,0.02,0,0",  # a worker's own row
        f"3,{steps[3]:g},9,x,y,a>b,5,0.01,0.02,0,99",  # another link
    ]
    (run / SHAPER.name).write_text(SHAPER.header + "\n".join(lines) + "\n")
    q = data.link(0)["queue"]
    assert q[f"{a}>{b}"][:5] == [0, 7, 4, 0, None]
    assert q[f"{b}>{a}"][:5] == [0, 0, 0, 0, None]
    old = ",".join(SHAPER.columns[:-1])  # before queue_frames
    (run / SHAPER.name).write_text(
        old + "\n" + "\n".join(ln.rsplit(",", 1)[0] for ln in lines) + "\n"
    )
    assert RunData(run).link(0)["queue"] == {}
