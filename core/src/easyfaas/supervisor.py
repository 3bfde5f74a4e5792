"""``easyfaas up``: run the funclet and the controller as two processes and keep them running.

A child that dies is restarted (with backoff); one that exits with EX_CONFIG (78) is not —
its configuration will not get better. SIGTERM/SIGINT stop the controller first (it drains
in-flight calls), then the funclet (it destroys every sandbox).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["EX_CONFIG", "Child", "Supervisor"]

log = logging.getLogger(__name__)

EX_CONFIG = 78
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In each child: receive SIGTERM if the supervisor itself dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    argv: list[str]
    stop_timeout: float
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started: float = 0.0
    history: list[float] = field(default_factory=list)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, start_new_session=True, preexec_fn=_die_with_parent)
        self.started = time.monotonic()
        log.debug("started %s (pid %d)", self.name, self.proc.pid)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0fs; killing it", self.name, self.stop_timeout)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class Supervisor:
    def __init__(self, profile_path: Path | None, funclet_socket: Path) -> None:
        args = ["--profile", str(profile_path)] if profile_path else []
        self.funclet_socket = funclet_socket
        self.funclet = Child("funclet", [sys.executable, "-m", "easyfaas.funclet", *args], stop_timeout=20)
        self.controller = Child("controller", [sys.executable, "-m", "easyfaas.controller", *args], stop_timeout=40)
        self._stopping = False

    def request_stop(self, *_: object) -> None:
        self._stopping = True

    def start(self, controller_ready: Callable[[], bool], timeout: float = 60.0) -> None:
        """Start both children and return once the controller answers (``controller_ready``)."""
        self.funclet.start()
        self._wait(lambda: self.funclet_socket.exists(), self.funclet, timeout, "the funclet socket")
        self.controller.start()
        self._wait(controller_ready, self.controller, timeout, "the controller's API")

    def _wait(self, ready: Callable[[], bool], child: Child, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert child.proc is not None
            code = child.proc.poll()
            if code is not None:
                self.stop()
                raise SystemExit(code if code == EX_CONFIG else 1)
            if self._stopping:
                self.stop()
                raise SystemExit(0)
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"{what} did not come up within {timeout:.0f}s")
            time.sleep(0.05)

    def run(self) -> int:
        """Watch the children until asked to stop; return the exit code."""
        while not self._stopping:
            for child in (self.funclet, self.controller):
                assert child.proc is not None
                code = child.proc.poll()
                if code is None:
                    continue
                if code == EX_CONFIG:
                    log.error("%s exited with a configuration error; stopping", child.name)
                    self.stop()
                    return EX_CONFIG
                self._restart(child, code)
            time.sleep(0.1)
        self.stop()
        return 0

    def _restart(self, child: Child, code: int) -> None:
        now = time.monotonic()
        child.history = [t for t in child.history if now - t < 60] + [now]
        # Back off when a child keeps dying: 0.1 s, doubling per death in the last minute, at most 10 s.
        delay = min(10.0, 0.1 * 2 ** (len(child.history) - 1))
        log.warning("%s exited with code %s; restarting it in %.1fs", child.name, code, delay)
        time.sleep(delay)
        if child is self.funclet:
            with contextlib.suppress(FileNotFoundError):
                self.funclet_socket.unlink()
        child.restarts += 1
        child.start()

    def stop(self) -> None:
        self.controller.stop()
        self.funclet.stop()
