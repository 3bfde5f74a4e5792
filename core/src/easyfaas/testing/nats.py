"""A real ``nats-server`` with JetStream for tests, on a free loopback port with its own store
directory; ``nats_unavailable()`` says why one cannot run here (tests skip with that reason)."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from easyfaas.testing import free_port

__all__ = ["NatsServer", "nats_unavailable"]


def nats_unavailable() -> str | None:
    """Why a JetStream ``nats-server`` cannot be started here, or ``None``."""
    binary = shutil.which("nats-server") or next(
        (p for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if Path(p).exists()), None
    )
    if binary is None:
        return "nats-server is not installed (Debian: apt-get install nats-server; CI: .ci/install-nats)"
    try:
        import nats  # noqa: F401 - only whether the client is installed
    except ImportError:
        return "the nats-py client is not installed"
    return None


class NatsServer:
    """``nats-server -js`` on 127.0.0.1; ``restart()`` keeps the port and the store directory."""

    def __init__(self, store_dir: Path, *, port: int | None = None) -> None:
        self.store_dir = store_dir
        self.port = port or free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.log_path = store_dir.parent / f"nats-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> NatsServer:
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        self.store_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [binary, "-js", "-sd", str(self.store_dir), "-a", "127.0.0.1", "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}:\n{self.log()}")
            # Ready once the client port accepts and JetStream says so in the log.
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                if "Server is ready" in self.log():
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nats-server did not start in {timeout:.0f}s:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, *, kill: bool = False, timeout: float = 20.0) -> None:
        """SIGTERM (or SIGKILL with ``kill``) and wait; the store directory stays."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def restart(self, *, kill: bool = False, down_for: float = 0.0) -> None:
        # Truncate the log: ``start`` waits for a new "Server is ready" line.
        self.stop(kill=kill)
        time.sleep(down_for)
        self.log_path.write_bytes(b"")
        self.start()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
