"""`serve`: run the vmpool service in the foreground until SIGTERM or SIGINT (``vmpool serve``).

On either signal it stops taking requests, kills its running sandboxes (paused ones stay on
disk for the next service) and returns. Logs go to stderr.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from ._service import SandboxManager
from ._service_http import ServiceServer, serve_in_thread
from ._service_paths import check_socket_path, default_socket

__all__ = ["serve"]

log = logging.getLogger("vmpool.service")


def _log_to_stderr() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("vmpool serve: %(asctime)s %(levelname)s %(message)s",
                                           "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger("vmpool")
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def serve(socket_path: Path | None = None, on_ready: Callable[[Path], None] | None = None) -> None:
    """Serve on `socket_path` (default: `vmpool._service_paths.default_socket`) until SIGTERM or
    SIGINT, then kill the running sandboxes and return. Must run in the main thread (it installs
    the signal handlers). SandboxException if the socket cannot be used (another service
    answers there, or its folder is not private)."""
    _log_to_stderr()
    path = check_socket_path((socket_path or default_socket()).absolute())
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("%s received: stopping", signal.Signals(signum).name)
        stop.set()

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGTERM, signal.SIGINT)}
    manager = SandboxManager()
    try:
        server = ServiceServer(path, manager)
        try:
            serve_in_thread(server)
            log.info("listening on %s", path)
            if on_ready is not None:
                on_ready(path)
            while not stop.wait(1.0):
                pass
        finally:
            server.shutdown()
            server.server_close()
    finally:
        manager.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    log.info("stopped")
