"""CelesTrak GP groups downloaded as TLE (3LE) files: ``meshemu tle fetch GROUP``.

Data flow::

    GROUP -> URL  <base>?GROUP=<group>&FORMAT=tle        (base: --url, $MESHEMU_CELESTRAK_URL,
                                                          or DEFAULT_BASE_URL)
          -> HTTP GET (urllib) -> check: at least one TLE line-1/line-2 pair
          -> <cache dir>/<group>-<YYYYmmddTHHMMSSZ>.tle   (or --out FILE), written atomically,
             opening with '# ' header lines (group, source URL, download time in ISO UTC)

The query interface (``GROUP``, ``FORMAT=tle``) is CelesTrak's GP interface, documented at
https://celestrak.org/NORAD/documentation/gp-data-formats.php; the groups are listed at
:data:`GROUPS_URL`. CelesTrak asks users not to download the same group more than once in
two hours, so :func:`fetch_group` returns a file of the group fetched less than
:data:`REUSE_WINDOW` ago from the cache directory (:func:`tle_cache_dir`) instead of
downloading, unless told to (``force``) or given an output file.

The downloaded text is only checked here (TLE lines are 69 characters long, line 1 starts
``"1 "``, line 2 ``"2 "``; the epoch is line 1's columns 19-32, a two-digit year and the
day of the year with its fraction, as in T.S. Kelso, "Frequently Asked Questions: Two-Line
Element Set Format", https://celestrak.org/columns/v04n03/, years 57-99 meaning 19xx as in
python-sgp4's ``twoline2rv``); the full parse, checksums included, is
:func:`meshemu.geometry.constellation.parse_tle_text`'s when a scenario loads the file, and
it skips the ``#`` header lines. Network failures are :class:`~meshemu.errors.FetchError`,
bad options (group name, URL, output path) :class:`~meshemu.errors.OptionsError`.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from meshemu import __version__
from meshemu.errors import FetchError, OptionsError
from meshemu.spec.options import check_out_dir, make_out_dir

log = logging.getLogger(__name__)

#: CelesTrak's GP query interface.
DEFAULT_BASE_URL = "https://celestrak.org/NORAD/elements/gp.php"
#: Where CelesTrak lists its groups (named in errors).
GROUPS_URL = "https://celestrak.org/NORAD/elements/"
#: Environment variable overriding :data:`DEFAULT_BASE_URL` (``--url`` overrides both).
URL_ENV = "MESHEMU_CELESTRAK_URL"
#: Environment variable naming the cache directory of fetched files.
DIR_ENV = "MESHEMU_TLE_DIR"
#: A group fetched less than this long ago is not downloaded again (CelesTrak's request).
REUSE_WINDOW = dt.timedelta(hours=2)
#: What a group name may be made of.
GROUP_RE = re.compile(r"[a-z0-9-]+")
#: The download time in a fetched file's name: ``starlink-20260521T120000Z.tle``.
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
#: Length of a TLE line 1 or line 2.
TLE_LINE_LENGTH = 69

_STAMP_RE = r"\d{8}T\d{6}Z"
_NO_DATA = "No GP data found"


@dataclass(frozen=True)
class FetchResult:
    """A TLE file of one CelesTrak group, just downloaded or reused.

    Attributes
    ----------
    path : Path
        The file.
    group : str
        The CelesTrak group (``starlink``).
    url : str
        Where it was downloaded from.
    fetched_at : datetime.datetime
        When it was downloaded (UTC, whole seconds).
    n_satellites : int
        Its element sets (line-1/line-2 pairs).
    newest_epoch : datetime.datetime
        The newest epoch among them (UTC).
    reused : bool
        True if an earlier download (less than :data:`REUSE_WINDOW` old) was returned
        instead of downloading again.
    """

    path: Path
    group: str
    url: str
    fetched_at: dt.datetime
    n_satellites: int
    newest_epoch: dt.datetime
    reused: bool = False


def fetch_group(
    group: str,
    out: Path | str | None = None,
    base_url: str | None = None,
    force: bool = False,
    now: dt.datetime | None = None,
    timeout_s: float = 30.0,
) -> FetchResult:
    """Download CelesTrak GP group ``group`` in TLE (3LE) format into a file.

    Parameters
    ----------
    group : str
        A CelesTrak group name (``starlink``, ``oneweb``, ``gps-ops``, ``stations``...).
    out : Path or str, optional
        The file to write. Default: ``<group>-<YYYYmmddTHHMMSSZ>.tle`` in
        :func:`tle_cache_dir`, where :func:`latest_fetched` finds it.
    base_url : str, optional
        The GP interface (default: ``$MESHEMU_CELESTRAK_URL`` or :data:`DEFAULT_BASE_URL`).
    force : bool
        Download even if the cache holds a file of the group fetched less than
        :data:`REUSE_WINDOW` ago (without ``out``, that file is returned otherwise).
    now : datetime.datetime, optional
        The current time (timezone-aware; default: the clock).
    timeout_s : float
        Seconds to wait for the server, per connection attempt and per read.

    Returns
    -------
    FetchResult
        ``reused`` says whether the file was already there.

    Raises
    ------
    OptionsError
        A bad group name, base URL or ``now``; an output path that cannot be written.
    FetchError
        The server cannot be reached, answers an HTTP error, or sends no TLE lines (an
        unknown group: CelesTrak answers "No GP data found").
    """
    check_group(group)
    url = group_url(group, resolve_base_url(base_url))
    fetched_at = _utc_now(now)
    if out is None and not force:
        recent = _recent_fetch(group, tle_cache_dir(), fetched_at)
        if recent is not None:
            log.debug("reusing %s, fetched at %s", recent.path, _iso(recent.fetched_at))
            return recent
    path, field = _target(group, out, fetched_at)
    text = _download(url, timeout_s)
    n_satellites, newest = _check_answer(text, group, url)
    header = _header(group, url, fetched_at, n_satellites, newest)
    make_out_dir(path.parent, field=field)
    _write_atomically(path, header + _normalized(text), field)
    return FetchResult(path, group, url, fetched_at, n_satellites, newest)


def latest_fetched(group: str, directory: Path | None = None) -> Path | None:
    """The newest file of ``group`` fetched into ``directory``, by the time in its name.

    Parameters
    ----------
    group : str
        A CelesTrak group name.
    directory : Path, optional
        Where to look (default: :func:`tle_cache_dir`).

    Returns
    -------
    Path or None
        None if there is none (or no such directory).

    Raises
    ------
    OptionsError
        ``group`` is not a group name.
    """
    check_group(group)
    files = _fetched_files(group, tle_cache_dir() if directory is None else directory)
    return files[-1][1] if files else None


def tle_cache_dir() -> Path:
    """Where fetched TLE files go: ``$MESHEMU_TLE_DIR``, else ``$XDG_CACHE_HOME/meshemu/tle``
    (when set to an absolute path, as the XDG base directory specification requires), else
    ``~/.cache/meshemu/tle``. Creates nothing."""
    env = os.environ.get(DIR_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "meshemu" / "tle"


def check_group(group: str) -> str:
    """Return ``group`` if it is a CelesTrak group name (:data:`GROUP_RE`).

    Raises
    ------
    OptionsError
        Quoting the name, with the lower-case spelling when that one would do.
    """
    if isinstance(group, str) and GROUP_RE.fullmatch(group):
        return group
    lower = group.lower() if isinstance(group, str) else ""
    hint = f" (did you mean {lower!r}?)" if GROUP_RE.fullmatch(lower) else ""
    raise OptionsError(
        f"{group!r} is not a CelesTrak group name{hint}: use lower-case letters, digits and "
        f"'-' (starlink, gps-ops, ...); groups are listed at {GROUPS_URL}",
        field="GROUP",
    )


def resolve_base_url(base_url: str | None = None) -> str:
    """The GP interface to ask: ``base_url``, else ``$MESHEMU_CELESTRAK_URL``, else
    :data:`DEFAULT_BASE_URL`.

    Raises
    ------
    OptionsError
        The chosen one is not an ``http://`` or ``https://`` URL with a host.
    """
    env = os.environ.get(URL_ENV)
    if base_url:
        url, field = base_url, "--url"
    elif env:
        url, field = env, URL_ENV
    else:
        url, field = DEFAULT_BASE_URL, "base URL"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise OptionsError(
            f"{url!r} is not an http:// or https:// URL; give one like {DEFAULT_BASE_URL}",
            field=field,
        )
    return url


def group_url(group: str, base_url: str = DEFAULT_BASE_URL) -> str:
    """The URL of ``group`` in TLE format: ``<base_url>?GROUP=<group>&FORMAT=tle``."""
    sep = "" if base_url.endswith(("?", "&")) else "&" if urlsplit(base_url).query else "?"
    return f"{base_url}{sep}{urlencode({'GROUP': group, 'FORMAT': 'tle'})}"


def _utc_now(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        now = dt.datetime.now(dt.UTC)
    elif now.tzinfo is None:
        raise OptionsError(f"must be timezone-aware (UTC); got {now!r}", field="now")
    return now.astimezone(dt.UTC).replace(microsecond=0)


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _target(group: str, out: Path | str | None, fetched_at: dt.datetime) -> tuple[Path, str]:
    """The file to write and the option it comes from; checked writable before downloading."""
    if out is None:
        directory = tle_cache_dir()
        check_out_dir(directory, field=DIR_ENV)
        return directory / f"{group}-{fetched_at.strftime(STAMP_FORMAT)}.tle", DIR_ENV
    path = Path(out)
    if path.is_dir():
        raise OptionsError(
            f"{str(path)!r} is a directory; give a file name ({path / (group + '.tle')})",
            field="--out",
        )
    if path.parent.exists() and not path.parent.is_dir():
        raise OptionsError(
            f"cannot write {str(path)!r}: {str(path.parent)!r} is not a directory", field="--out"
        )
    check_out_dir(path.parent, field="--out")
    return path, "--out"


def _fetched_files(group: str, directory: Path) -> list[tuple[dt.datetime, Path]]:
    """The fetched files of ``group`` in ``directory`` with their download times, oldest first."""
    if not directory.is_dir():
        return []
    name = re.compile(rf"{re.escape(group)}-({_STAMP_RE})\.tle")
    found = []
    for path in directory.glob(f"{group}-*.tle"):
        m = name.fullmatch(path.name)
        if m is None or not path.is_file():
            continue
        try:
            stamp = dt.datetime.strptime(m.group(1), STAMP_FORMAT)
        except ValueError:
            continue
        found.append((stamp.replace(tzinfo=dt.UTC), path))
    return sorted(found)


def _recent_fetch(group: str, directory: Path, now: dt.datetime) -> FetchResult | None:
    """A usable file of ``group`` fetched less than :data:`REUSE_WINDOW` before ``now``."""
    for stamp, path in reversed(_fetched_files(group, directory)):
        age = now - stamp
        if age < dt.timedelta(0):
            continue  # stamped in the future (the clock was set back): not trusted
        if age >= REUSE_WINDOW:
            return None
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        n_satellites, newest = _element_sets(text)
        if newest is None:
            continue  # not a TLE file after all (edited by hand): download again
        url = _header_fields(text).get("source", group_url(group))
        return FetchResult(path, group, url, stamp, n_satellites, newest, reused=True)
    return None


def _download(url: str, timeout_s: float) -> str:
    """GET ``url`` and return its body as text."""
    # imported here: urllib.request takes 40 ms to import, which loading a scenario (the
    # other user of this module, through latest_fetched) should not pay
    import http.client
    import urllib.request
    from urllib.error import HTTPError, URLError

    host = urlsplit(url).netloc
    request = urllib.request.Request(url, headers={"User-Agent": f"meshemu/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body: bytes = response.read()
    except HTTPError as exc:
        exc.close()
        raise FetchError(
            f"{host} answered HTTP {exc.code} ({exc.reason}) to {url}; try again later, or "
            f"copy a CelesTrak TLE file and point the scenario's `file:` at it"
        ) from None
    except URLError as exc:
        raise FetchError(_unreachable(host, exc.reason, timeout_s)) from None
    except (OSError, http.client.HTTPException) as exc:  # a timeout or reset while reading
        raise FetchError(_unreachable(host, exc, timeout_s)) from None
    return body.decode("utf-8", errors="replace")


def _unreachable(host: str, reason: object, timeout_s: float) -> str:
    if isinstance(reason, TimeoutError):
        why = f"no answer within {timeout_s:g} s"
    elif isinstance(reason, OSError) and reason.strerror:
        why = reason.strerror
    else:
        why = str(reason) or type(reason).__name__
    return (
        f"cannot reach {host} ({why}); meshemu tle fetch needs the internet, or copy a "
        f"CelesTrak TLE file and point the scenario's `file:` at it"
    )


def _check_answer(text: str, group: str, url: str) -> tuple[int, dt.datetime]:
    """The element sets in a downloaded answer and their newest epoch.

    Raises
    ------
    FetchError
        The answer holds no TLE line-1/line-2 pair.
    """
    n_satellites, newest = _element_sets(text)
    if newest is not None:
        return n_satellites, newest
    start = text.strip()[:60]
    why = ""
    if not start.startswith(_NO_DATA):
        why = f" (the answer of {urlsplit(url).netloc} holds no TLE lines; it starts {start!r})"
    raise FetchError(
        f"group {group!r} has no satellites at CelesTrak{why}; groups are listed at {GROUPS_URL}"
    )


def _element_sets(text: str) -> tuple[int, dt.datetime | None]:
    """Count the TLE line-1/line-2 pairs of ``text`` (with a readable epoch); their newest
    epoch, None if there is none."""
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    count = 0
    newest: dt.datetime | None = None
    for line1, line2 in zip(lines, lines[1:]):
        if not (_is_tle_line(line1, "1") and _is_tle_line(line2, "2")):
            continue
        epoch = _tle_epoch(line1)
        if epoch is None:
            continue
        count += 1
        newest = epoch if newest is None else max(newest, epoch)
    return count, newest


def _is_tle_line(line: str, number: str) -> bool:
    return len(line) == TLE_LINE_LENGTH and line.startswith(number + " ")


def _tle_epoch(line1: str) -> dt.datetime | None:
    """The epoch of a TLE line 1 (columns 19-20: year, 21-32: day of the year), or None."""
    try:
        two_digit_year = int(line1[18:20])
        day = float(line1[20:32])
    except ValueError:
        return None
    if not 1.0 <= day < 367.0:
        return None
    year = 1900 + two_digit_year if two_digit_year >= 57 else 2000 + two_digit_year
    return dt.datetime(year, 1, 1, tzinfo=dt.UTC) + dt.timedelta(days=day - 1.0)


def _header(
    group: str, url: str, fetched_at: dt.datetime, n_satellites: int, newest: dt.datetime
) -> str:
    """The ``# `` lines a fetched file opens with (``key: value`` after the first)."""
    lines = (
        f"CelesTrak GP group {group!r} in 3LE format, downloaded by meshemu tle fetch",
        f"group: {group}",
        f"source: {url}",
        f"fetched: {_iso(fetched_at)}",
        f"satellites: {n_satellites}",
        f"newest epoch: {_iso(newest)}",
    )
    return "".join(f"# {line}\n" for line in lines)


def _header_fields(text: str) -> dict[str, str]:
    """The ``# key: value`` lines at the top of ``text``."""
    fields = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        key, sep, value = line[1:].strip().partition(": ")
        if sep:
            fields[key] = value.strip()
    return fields


def _normalized(text: str) -> str:
    """``text`` with ``\\n`` line ends (CelesTrak sends ``\\r\\n``), as the header has."""
    return "".join(line + "\n" for line in text.splitlines())


def _write_atomically(path: Path, text: str, field: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it to ``path``: on any
    failure nothing is left, and an earlier ``path`` is untouched.

    Raises
    ------
    OptionsError
        The file system refused (naming ``field``, the option the path came from).
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OptionsError(
            f"cannot write {str(path)!r}: {exc.strerror or exc}", field=field
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
