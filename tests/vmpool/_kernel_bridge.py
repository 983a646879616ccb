"""The kernel bridge (vmpool/_guest_kernel.py) run as a real subprocess of the test venv's
python, spoken to over pipes: shared by test_kernel_bridge and test_charts."""

from __future__ import annotations

import itertools
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import vmpool

BRIDGE = Path(vmpool.__file__).resolve().parent / "_guest_kernel.py"
ANSWER_TIMEOUT_S = 60.0  # a kernel start on a loaded 2-core machine


class BridgeProcess:
    """One bridge; every stdout line must be JSON (anything else is collected in `garbage`)."""

    def __init__(self, cwd: str | None = None, env: dict[str, str] | None = None) -> None:
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, str(BRIDGE)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, cwd=cwd,
                                     env=env if env is not None else dict(os.environ))
        self.answers: dict[str | None, queue.Queue[dict[str, Any]]] = {}
        self.garbage: list[bytes] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _queue(self, rid: str | None) -> queue.Queue[dict[str, Any]]:
        with self._lock:
            return self.answers.setdefault(rid, queue.Queue())

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                self.garbage.append(raw)
                continue
            self._queue(line.get("id")).put(line)

    def send_raw(self, raw: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(raw + b"\n")
        self.proc.stdin.flush()

    def send(self, op: str, **fields: Any) -> str:
        rid = "r%d" % next(self._ids)
        self.send_raw(json.dumps({"op": op, "id": rid, **fields}).encode())
        return rid

    def next(self, rid: str | None, timeout: float = ANSWER_TIMEOUT_S) -> dict[str, Any]:
        try:
            return self._queue(rid).get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no answer for %r within %.0f s; bridge log:\n%s" % (
                rid, timeout, self.stderr())) from None

    def lines(self, rid: str, timeout: float = ANSWER_TIMEOUT_S) -> list[dict[str, Any]]:
        """Every line of a request, up to its end or failed line."""
        deadline = time.monotonic() + timeout
        out = [self.next(rid, max(deadline - time.monotonic(), 0.01))]
        while out[-1]["type"] not in ("end", "failed"):
            out.append(self.next(rid, max(deadline - time.monotonic(), 0.01)))
        return out

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        return self.next(self.send(op, **fields))

    def execute(self, code: str, wait: float = ANSWER_TIMEOUT_S, **fields: Any) -> list[dict[str, Any]]:
        """Every line of an execution (`fields` go into the request, e.g. timeout)."""
        return self.lines(self.send("execute", code=code, **fields), wait)

    def stdout_of(self, code: str, **fields: Any) -> str:
        lines = self.execute(code, **fields)
        assert not [line for line in lines if line["type"] in ("error", "failed")], lines
        return "".join(line["text"] for line in lines if line["type"] == "stdout")

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-5000:]

    def close(self, timeout: float = 30.0) -> int:
        """EOF on stdin; the exit status."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._reader.join(5)
