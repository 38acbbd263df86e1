"""``meshemu view RUN_DIR``: serve the page of a finished run or plan, print its URL, serve
until Ctrl-C. (``meshemu run --view`` is :func:`meshemu.live.runner.run_with_view`: the
live side imports the view, never the other way round.)
"""

from __future__ import annotations

import argparse
import time

from meshemu.errors import Interrupted
from meshemu.view.data import RunData
from meshemu.view.server import ViewServer, check_libraries


def serve_until_interrupted(server: ViewServer) -> None:
    """Block until Ctrl-C (SIGINT, SIGTERM or SIGHUP), then stop ``server``."""
    try:
        while True:
            time.sleep(3600)
    except (Interrupted, KeyboardInterrupt):
        print("view: stopped", flush=True)
    finally:
        server.close()


def view_from_cli(args: argparse.Namespace) -> int:
    """``meshemu view RUN_DIR [--host H] [--port N]``: serve until Ctrl-C."""
    check_libraries()
    data = RunData(args.run_dir)
    server = ViewServer(data, args.host, args.port)
    url = server.start()
    print(
        f"view of {data.measure_dir}: {len(data.names)} nodes, {len(data.link_a)} links, "
        f"{len(data.steps)} steps",
        flush=True,
    )
    print(f"view: {url}  (Ctrl-C stops)", flush=True)
    serve_until_interrupted(server)
    return 0


__all__ = ["view_from_cli"]
