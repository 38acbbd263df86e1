"""`meshemu tle fetch`: CelesTrak groups downloaded from a real HTTP server on 127.0.0.1 that
plays CelesTrak's GP interface with the shared Starlink catalogue (../shared/data), and every
way a download fails, each leaving no file behind."""

from __future__ import annotations

import datetime as dt
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from sgp4.api import Satrec

from meshemu.cli import main
from meshemu.errors import FetchError, MeshemuError, OptionsError, SpecError
from meshemu.geometry.constellation import parse_tle_text
from meshemu.spec import celestrak
from meshemu.spec.celestrak import (
    DEFAULT_BASE_URL,
    FetchResult,
    fetch_group,
    group_url,
    latest_fetched,
    tle_cache_dir,
)

#: The shared test data, beside the project (never copied into it): ../shared/data/README.md
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
STARLINK_TLE = SHARED_DATA / "starlink-2026-05-21.tle"
#: Satellites in it, as its README says.
N_STARLINK = 10_359
T0 = dt.datetime(2026, 5, 21, 12, 0, 0, tzinfo=dt.UTC)
GP_PATH = "/NORAD/elements/gp.php"


@dataclass
class FakeCelesTrak:
    """The local server: its GP URL and the query of every request it answered."""

    url: str
    queries: list[dict[str, list[str]]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def starlink_bytes() -> bytes:
    if not STARLINK_TLE.is_file():
        pytest.skip(
            f"the shared Starlink catalogue {STARLINK_TLE} is missing "
            f"(see ../shared/data/README.md)"
        )
    return STARLINK_TLE.read_bytes()


@pytest.fixture(scope="module")
def celestrak_server(starlink_bytes: bytes) -> Iterator[FakeCelesTrak]:
    """CelesTrak on 127.0.0.1: GROUP=starlink -> the catalogue, GROUP=broken -> HTTP 500,
    GROUP=portal -> an HTML page, any other group -> "No GP data found" (as CelesTrak)."""
    fake = FakeCelesTrak("")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = parse_qs(parts.query)
            fake.paths.append(parts.path)
            fake.queries.append(query)
            group = query.get("GROUP", [""])[0]
            if group == "broken":
                self.send_error(500, "Internal Server Error")
                return
            body = {
                "starlink": starlink_bytes,
                "portal": b"<html><body>Please log in to use this Wi-Fi</body></html>",
            }.get(group, b"No GP data found")
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        fake.url = f"http://127.0.0.1:{httpd.server_address[1]}{GP_PATH}"
        yield fake
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def server(celestrak_server: FakeCelesTrak) -> FakeCelesTrak:
    """The local CelesTrak, with no request seen yet."""
    celestrak_server.queries.clear()
    celestrak_server.paths.clear()
    return celestrak_server


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test's own TLE cache directory (not created), and no URL from the environment."""
    directory = tmp_path / "cache"
    monkeypatch.setenv("MESHEMU_TLE_DIR", str(directory))
    monkeypatch.delenv("MESHEMU_CELESTRAK_URL", raising=False)
    return directory


def files_in(directory: Path) -> list[str]:
    """Every file under ``directory``, hidden temporary ones included."""
    return sorted(p.name for p in directory.rglob("*")) if directory.exists() else []


def oracle_newest_epoch(text: str) -> dt.datetime:
    """The newest epoch of a 3LE text by python-sgp4 (not meshemu's reading of the columns)."""
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    newest = None
    for l1, l2 in zip(lines[1::3], lines[2::3]):
        sat = Satrec.twoline2rv(l1, l2)
        jd = sat.jdsatepoch + sat.jdsatepochF
        epoch = dt.datetime(2000, 1, 1, 12, tzinfo=dt.UTC) + dt.timedelta(days=jd - 2451545.0)
        newest = epoch if newest is None else max(newest, epoch)
    assert newest is not None
    return newest


# ----------------------------------------------------------------------------- fetching


def test_fetch_writes_the_group_with_a_header(server, cache, starlink_bytes):
    res = fetch_group("starlink", base_url=server.url, now=T0)
    assert isinstance(res, FetchResult) and not res.reused
    assert res.path == cache / "starlink-20260521T120000Z.tle"
    assert res.group == "starlink" and res.fetched_at == T0
    assert res.url == f"{server.url}?GROUP=starlink&FORMAT=tle"
    # the request carried the group and the TLE format, to the GP path
    assert server.paths == [GP_PATH]
    assert server.queries == [{"GROUP": ["starlink"], "FORMAT": ["tle"]}]

    text = res.path.read_text()
    header = [ln for ln in text.splitlines() if ln.startswith("#")]
    assert text.splitlines()[: len(header)] == header  # the header comes first
    assert all(ln.startswith("# ") for ln in header)
    assert "# group: starlink" in header
    assert f"# source: {res.url}" in header
    assert "# fetched: 2026-05-21T12:00:00Z" in header

    # 3LE records: a name line and two TLE lines each, exactly as served (CRLF -> LF)
    body = text.splitlines()[len(header) :]
    assert body == starlink_bytes.decode().splitlines()
    assert len(body) % 3 == 0 and len(body) // 3 == N_STARLINK
    assert sum(ln.startswith("1 ") for ln in body) == N_STARLINK
    assert res.n_satellites == N_STARLINK
    newest = oracle_newest_epoch(text)
    assert abs((res.newest_epoch - newest).total_seconds()) < 0.01
    assert f"# newest epoch: {newest:%Y-%m-%dT%H:%M:%SZ}" in header
    # meshemu's own parser reads the file, header and all
    assert len(parse_tle_text(text, str(res.path))) == N_STARLINK
    assert files_in(cache) == [res.path.name]  # no temporary file left


def test_group_within_two_hours_is_reused_unless_forced(server, cache):
    first = fetch_group("starlink", base_url=server.url, now=T0)
    again = fetch_group("starlink", base_url=server.url, now=T0 + dt.timedelta(minutes=119))
    assert again.reused and again.path == first.path
    assert (again.url, again.fetched_at) == (first.url, first.fetched_at)
    assert (again.n_satellites, again.newest_epoch) == (first.n_satellites, first.newest_epoch)
    assert len(server.queries) == 1  # not downloaded again

    forced = fetch_group(
        "starlink", base_url=server.url, force=True, now=T0 + dt.timedelta(hours=1)
    )
    assert not forced.reused and forced.path == cache / "starlink-20260521T130000Z.tle"
    assert len(server.queries) == 2

    # two hours after the newest download, the group is downloaded again
    later = fetch_group("starlink", base_url=server.url, now=T0 + dt.timedelta(hours=3))
    assert not later.reused and len(server.queries) == 3
    assert len(files_in(cache)) == 3


def test_out_file_is_always_downloaded(server, cache, tmp_path):
    fetch_group("starlink", base_url=server.url, now=T0)
    out = tmp_path / "sub" / "mine.tle"
    res = fetch_group("starlink", out=out, base_url=server.url, now=T0 + dt.timedelta(minutes=5))
    assert not res.reused and res.path == out and len(server.queries) == 2
    assert res.n_satellites == N_STARLINK and out.read_text().startswith("# ")
    assert files_in(out.parent) == ["mine.tle"]


def test_other_groups_are_not_reused(server, cache):
    fetch_group("starlink", base_url=server.url, now=T0)
    with pytest.raises(FetchError):
        fetch_group("oneweb", base_url=server.url, now=T0)
    assert len(server.queries) == 2


def test_base_url_from_the_environment(server, cache, monkeypatch):
    monkeypatch.setenv("MESHEMU_CELESTRAK_URL", server.url)
    res = fetch_group("starlink", now=T0)
    assert res.url.startswith(server.url) and len(server.queries) == 1
    assert group_url("gps-ops") == f"{DEFAULT_BASE_URL}?GROUP=gps-ops&FORMAT=tle"
    assert group_url("a", "http://h/gp.php?KEY=1") == "http://h/gp.php?KEY=1&GROUP=a&FORMAT=tle"


# ----------------------------------------------------------------------------- the cache


def test_latest_fetched_picks_the_newest_by_name(server, cache):
    assert latest_fetched("starlink") is None  # no cache directory yet
    older = fetch_group("starlink", base_url=server.url, now=T0).path
    newest = fetch_group("starlink", base_url=server.url, now=T0 + dt.timedelta(days=1)).path
    # decoys: another group whose name starts the same, names that are not fetched files
    for name in (
        "starlink-extra-20990101T000000Z.tle",
        "starlink-20991301T000000Z.tle",  # month 13
        "starlink-latest.tle",
        ".starlink-20990101T000000Z.tle.1234abcd.part",
        "oneweb-20990101T000000Z.tle",
    ):
        (cache / name).write_text("x")
    older.touch()  # the name's time counts, not the file's
    assert latest_fetched("starlink") == newest
    assert latest_fetched("starlink", cache) == newest
    assert latest_fetched("starlink-extra", cache) == cache / "starlink-extra-20990101T000000Z.tle"
    assert latest_fetched("gps-ops", cache) is None
    with pytest.raises(OptionsError, match="not a CelesTrak group name"):
        latest_fetched("Starlink")


def test_tle_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MESHEMU_TLE_DIR", "~/tles")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert tle_cache_dir() == tmp_path / "tles"
    monkeypatch.delenv("MESHEMU_TLE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tle_cache_dir() == tmp_path / "xdg" / "meshemu" / "tle"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # ignored, as XDG says
    assert tle_cache_dir() == tmp_path / ".cache" / "meshemu" / "tle"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert tle_cache_dir() == tmp_path / ".cache" / "meshemu" / "tle"


# ----------------------------------------------------------------------------- failures


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections (bound, so nobody else takes it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts connections and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        yield s.getsockname()[1]


def test_unreachable_server(cache, closed_port):
    url = f"http://127.0.0.1:{closed_port}{GP_PATH}"
    with pytest.raises(FetchError) as err:
        fetch_group("starlink", base_url=url, now=T0)
    msg = str(err.value)
    assert msg.startswith(f"cannot reach 127.0.0.1:{closed_port} (Connection refused); ")
    assert "needs the internet" in msg and "`file:`" in msg and "\n" not in msg
    assert not isinstance(err.value, SpecError) and isinstance(err.value, MeshemuError)
    assert files_in(cache) == []


def test_server_that_never_answers(cache, silent_port):
    url = f"http://127.0.0.1:{silent_port}{GP_PATH}"
    with pytest.raises(FetchError, match=rf"cannot reach 127\.0\.0\.1:{silent_port} \(no answer"):
        fetch_group("starlink", base_url=url, now=T0, timeout_s=0.2)
    assert files_in(cache) == []


def test_unknown_group(server, cache):
    with pytest.raises(FetchError) as err:
        fetch_group("nosuch", base_url=server.url, now=T0)
    assert str(err.value) == (
        "group 'nosuch' has no satellites at CelesTrak; groups are listed at "
        "https://celestrak.org/NORAD/elements/"
    )
    assert server.queries == [{"GROUP": ["nosuch"], "FORMAT": ["tle"]}]
    assert files_in(cache) == []


def test_answer_without_tle_lines(server, cache):
    with pytest.raises(FetchError, match=r"no satellites .*holds no TLE lines; it starts '<html>"):
        fetch_group("portal", base_url=server.url, now=T0)
    assert files_in(cache) == []


def test_http_error(server, cache):
    with pytest.raises(FetchError, match=r"127\.0\.0\.1:\d+ answered HTTP 500 .*try again later"):
        fetch_group("broken", base_url=server.url, now=T0)
    assert files_in(cache) == []


def test_failure_leaves_an_earlier_out_file_alone(server, tmp_path):
    out = tmp_path / "kept.tle"
    out.write_text("earlier\n")
    with pytest.raises(FetchError):
        fetch_group("broken", out=out, base_url=server.url, now=T0)
    assert out.read_text() == "earlier\n" and files_in(tmp_path) == ["kept.tle"]


@pytest.mark.parametrize("group", ["Starlink", "star link", "", "gps_ops", "../etc", "a/b"])
def test_bad_group_names(server, cache, group):
    with pytest.raises(OptionsError, match=r"^GROUP: .* is not a CelesTrak group name") as err:
        fetch_group(group, base_url=server.url, now=T0)
    assert "https://celestrak.org/NORAD/elements/" in str(err.value)
    assert server.queries == [] and files_in(cache) == []


def test_bad_group_name_suggests_lower_case():
    with pytest.raises(OptionsError, match=r"'STARLINK' .*did you mean 'starlink'\?"):
        fetch_group("STARLINK")


@pytest.mark.parametrize("url", ["ftp://celestrak.org/gp.php", "celestrak.org/gp.php", "http://"])
def test_bad_base_url(server, cache, url):
    with pytest.raises(OptionsError, match=r"^--url: .* is not an http:// or https:// URL"):
        fetch_group("starlink", base_url=url, now=T0)


def test_naive_now_is_refused():
    with pytest.raises(OptionsError, match="timezone-aware"):
        fetch_group("starlink", now=dt.datetime(2026, 5, 21))


def test_unwritable_out_is_refused_before_downloading(server, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(
        OptionsError, match=r"^--out: cannot write .*x\.tle': .*file' is not a directory$"
    ):
        fetch_group("starlink", out=blocker / "x.tle", base_url=server.url, now=T0)
    with pytest.raises(OptionsError, match=r"^--out: .* is a directory; give a file name"):
        fetch_group("starlink", out=tmp_path, base_url=server.url, now=T0)
    assert server.queries == [] and files_in(tmp_path) == ["file"]


def test_unwritable_cache_dir_is_refused(server, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("MESHEMU_TLE_DIR", str(blocker / "tle"))
    with pytest.raises(OptionsError, match=r"^MESHEMU_TLE_DIR: cannot create"):
        fetch_group("starlink", base_url=server.url, now=T0)
    assert server.queries == []


def test_failed_write_leaves_no_partial_file(server, cache, monkeypatch):
    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(celestrak.os, "fsync", full_disk)
    with pytest.raises(OptionsError, match=r"cannot write .*starlink-.*No space left on device"):
        fetch_group("starlink", base_url=server.url, now=T0)
    assert files_in(cache) == []


# ----------------------------------------------------------------------------- the CLI


def test_cli_fetches_then_reuses(server, cache, capsys):
    assert main(["tle", "fetch", "starlink", "--url", server.url]) == 0
    out = capsys.readouterr().out
    (path,) = cache.iterdir()
    assert f"wrote {path}: CelesTrak group starlink" in out
    assert f"{N_STARLINK} satellites, newest TLE epoch 2026-05-21 " in out and " old)" in out
    assert "use it in a scenario: tle_files: [{group: starlink}]" in out

    assert main(["tle", "fetch", "starlink", "--url", server.url]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"reusing {path}: group starlink was fetched ")
    assert "--force" in out and len(server.queries) == 1

    assert main(["tle", "fetch", "starlink", "--url", server.url, "--force"]) == 0
    assert capsys.readouterr().out.startswith("wrote ") and len(server.queries) == 2


def test_cli_out_file(server, tmp_path, capsys):
    out = tmp_path / "starlink.tle"
    assert main(["tle", "fetch", "starlink", "--url", server.url, "--out", str(out)]) == 0
    assert f"tle_files: [{{file: {out}}}]" in capsys.readouterr().out
    assert out.is_file()


def test_cli_error_is_one_line(server, cache, capsys):
    assert main(["tle", "fetch", "nosuch", "--url", server.url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("meshemu: error: group 'nosuch' has no satellites at CelesTrak")
    assert err.count("\n") == 1 and files_in(cache) == []


# ----------------------------------------------------------------------------- end to end


def test_fetch_then_plan_the_shipped_starlink_real_scenario(server, cache, tmp_path, capsys):
    """`meshemu tle fetch starlink`, then `meshemu plan starlink-real` finds that catalogue
    (tle_files: [{group: starlink}]), infers its shells and plans paths between the cities."""
    from meshemu.spec.scenario import load_scenario

    with pytest.raises(SpecError, match=r"group: no fetched catalogue.*meshemu tle fetch starlink"):
        load_scenario("starlink-real")
    assert main(["tle", "fetch", "starlink", "--url", server.url]) == 0
    (fetched,) = cache.iterdir()
    sc = load_scenario("starlink-real")
    assert sc.tle_sources[0].path == fetched and sc.tle_sources[0].group == "starlink"
    assert len(sc.tle_sources[0].records) == N_STARLINK
    out = tmp_path / "plan"
    capsys.readouterr()
    assert main(["plan", "starlink-real", "--duration", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ISLs" in text and "endpoint pairs reachable" in text
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["catalogues"][0]["shells"]) >= 5
    reach = [p for p in summary["pairs"] if p["delay_ms_mean"] is not None]
    assert len(reach) == len(summary["pairs"]) > 0
