"""The view's HTTP server (standard library :mod:`http.server`, one thread per request).

Routes (all ``GET``)::

    /                      the page (static/index.html)
    /static/<file>         the page's own script and style (meshemu/view/static/)
    /lib/<package>/<path>  the JavaScript libraries and Earth data, from the npm packages in
                           meshemu/view/web/node_modules (installed by install.sh)
    /api/meta              nodes, every link, step times, endpoints (RunData.meta)
    /api/step/<k>          positions, links up and endpoint paths at step k (RunData.step)
    /api/flows             flows: path timeline, throughput, one-way delay (RunData.flows)
    /api/node/<i>?k=<k>    a node at step k: links, routes toward the endpoints, FIB
    /api/link/<l>          a link over time: delay, rate, counters
    /api/util/<k>          every link's utilisation at step k (link_counters.csv)
    /api/live              {"step": k, "done": bool} of a live run
    /api/events            server-sent events of a live run: "step" and "end"

Everything the page loads comes from this server; it names no other host.
"""

from __future__ import annotations

import errno
import json
import logging
import mimetypes
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from meshemu.errors import ViewError
from meshemu.view.data import RunData
from meshemu.view.live import LiveFeed

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
#: Where install.sh runs ``npm ci`` (package.json and package-lock.json are in git).
WEB_DIR = HERE / "web"
NODE_MODULES = WEB_DIR / "node_modules"
#: The npm packages the page loads, with one file each that must be there.
LIBS = {
    "three": "build/three.module.js",
    "uplot": "dist/uPlot.esm.js",
    "topojson-client": "dist/topojson-client.js",
    "world-atlas": "land-50m.json",
}
#: Seconds between keep-alive comments on an idle event stream.
KEEPALIVE_S = 10.0


def check_libraries(node_modules: Path = NODE_MODULES) -> None:
    """Raise :class:`ViewError` naming the fix when a library the page needs is missing."""
    missing = [f"{p}/{f}" for p, f in LIBS.items() if not (node_modules / p / f).is_file()]
    if missing:
        raise ViewError(
            f"the view's JavaScript libraries are not installed (missing "
            f"{', '.join(missing)} in {node_modules}); run ./install.sh, or "
            f"'npm ci --prefix {WEB_DIR}' (needs nodejs and npm: apt-get install nodejs npm)"
        )


class ViewServer:
    """Serves one run's :class:`RunData` (and, live, a :class:`LiveFeed`) on ``host:port``.

    Parameters
    ----------
    data : RunData
    host : str
        Address to bind (default loopback only).
    port : int
        0 picks a free port (see :attr:`url`).
    feed : LiveFeed, optional
        A live run's progress (``meshemu run --view``).

    Raises
    ------
    ViewError
        (from :meth:`start`) the port is in use, the host cannot be bound, or the libraries
        are missing.
    """

    def __init__(
        self,
        data: RunData,
        host: str = "127.0.0.1",
        port: int = 8765,
        feed: LiveFeed | None = None,
    ):
        self.data, self.host, self.port, self.feed = data, host, port, feed
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.closing = threading.Event()

    @property
    def url(self) -> str:
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"http://{host}:{self.port}/"

    def start(self) -> str:
        """Bind and serve in a thread of its own; returns the URL."""
        check_libraries()
        handler = type("Handler", (_Handler,), {"view": self})
        try:
            httpd = ThreadingHTTPServer((self.host, self.port), handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ViewError(
                    f"port {self.port} on {self.host} is in use (another 'meshemu view'?); "
                    f"give another with --port N (or --view-port N), or stop the program "
                    f"that holds it (ss -ltnp 'sport = :{self.port}' names it)"
                ) from None
            raise ViewError(
                f"cannot serve on {self.host}:{self.port}: {exc.strerror or exc}; give an "
                f"address of this machine with --host (default 127.0.0.1)"
            ) from None
        httpd.daemon_threads = True
        self._httpd = httpd
        self.port = int(httpd.server_address[1])
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.25},
            name="meshemu-view",
            daemon=True,
        )
        self._thread.start()
        return self.url

    def close(self) -> None:
        """Stop serving (open event streams end within a keep-alive interval)."""
        self.closing.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ViewServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Handler(BaseHTTPRequestHandler):
    view: ViewServer
    protocol_version = "HTTP/1.1"
    server_version = "meshemu-view"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    # -- helpers ---------------------------------------------------------------------------
    def _send(self, body: bytes, ctype: str, status: int = 200, cache: str = "no-cache") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: Any, status: int = 200) -> None:
        self._send(json.dumps(obj, separators=(",", ":")).encode(), "application/json", status)

    def _error(self, status: HTTPStatus, text: str) -> None:
        self._json({"error": text}, int(status))

    def _file(self, root: Path, rel: str, cache: str) -> None:
        root = root.resolve()
        path = (root / rel).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            self._error(HTTPStatus.NOT_FOUND, f"no such file: {rel}")
            return
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if path.suffix in (".js", ".mjs"):
            ctype = "text/javascript"
        self._send(path.read_bytes(), ctype, cache=cache)

    # -- routes ----------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        query = parse_qs(url.query)
        data = self.view.data
        try:
            if not parts:
                self._file(STATIC_DIR, "index.html", "no-cache")
            elif parts[0] == "static":
                self._file(STATIC_DIR, "/".join(parts[1:]), "no-cache")
            elif parts[0] == "lib" and len(parts) > 2 and parts[1] in LIBS:
                self._file(NODE_MODULES / parts[1], "/".join(parts[2:]), "max-age=3600")
            elif parts[0] == "favicon.ico":
                self._send(b"", "image/x-icon", 204)
            elif parts == ["api", "meta"]:
                self._json(data.meta())
            elif parts[:2] == ["api", "step"] and len(parts) == 3:
                self._send(data.step_json(int(parts[2])), "application/json", cache="max-age=600")
            elif parts == ["api", "flows"]:
                self._json(data.flows())
            elif parts[:2] == ["api", "node"] and len(parts) == 3:
                k = int(query.get("k", ["0"])[0])
                self._json(data.node(int(parts[2]), k))
            elif parts[:2] == ["api", "util"] and len(parts) == 3:
                self._json(data.utilisation(int(parts[2])))
            elif parts[:2] == ["api", "link"] and len(parts) == 3:
                self._json(data.link(int(parts[2])))
            elif parts == ["api", "live"]:
                feed = self.view.feed
                self._json(feed.state() if feed else {"step": None, "done": True})
            elif parts == ["api", "events"]:
                self._events()
            else:
                self._error(HTTPStatus.NOT_FOUND, f"no such page: {url.path}")
        except (ValueError, IndexError) as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _events(self) -> None:
        """Server-sent events: ``step`` (data ``{"step": k}``) and ``end``; a replay has
        no events and gets ``end`` at once."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.close_connection = True
        feed = self.view.feed
        if feed is None:
            self.wfile.write(b'event: end\ndata: {"step":null}\n\n')
            return
        feed.attach(+1)
        try:
            seen: tuple[int, bool] = (-2, False)
            while not self.view.closing.is_set():
                step, done, closed = feed.wait_change(seen, KEEPALIVE_S)
                if closed:
                    return
                if (step, done) == seen:
                    self.wfile.write(b": keep-alive\n\n")
                else:
                    if step != seen[0]:
                        self.wfile.write(f'event: step\ndata: {{"step":{step}}}\n\n'.encode())
                    if done:
                        self.wfile.write(f'event: end\ndata: {{"step":{step}}}\n\n'.encode())
                    seen = (step, done)
                self.wfile.flush()
                if done:
                    return
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            feed.attach(-1)
