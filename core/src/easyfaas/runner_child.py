"""What the stdlib-only runners whose function is a child process share (exec, http,
lambda): one call's event, timeout and reply meta, the function's environment, and the
child's output and life.

Standard library only: a runtime lists this file in ``runner_files()`` as
``easyfaas_runner_child.py`` and its runner imports it from the runner directory, as it does
``easyfaas_runner_support`` (see ``docs/runtime-protocol.md``). It imports ``subprocess`` and
``threading``, which those runners load anyway; the Python runner does not use it.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is not imported at run time: runners start faster without it
    from typing import Any, NoReturn, TypeGuard

__all__ = [
    "PENDING_CAP",
    "OutputPump",
    "call_timeout",
    "decode_event",
    "exit_after",
    "function_env",
    "is_http_event",
    "is_json",
    "reply_meta",
    "seconds_from_env",
    "spawn",
    "watch",
]

#: A child's output kept between calls (shown with the next call) before the oldest is dropped.
PENDING_CAP = 4 * 1024 * 1024


def reply_meta(started: float, logs: str, dropped: int) -> dict[str, Any]:
    """The meta every reply to an INVOKE carries: ``ms`` since ``started`` (``time.perf_counter()``),
    then ``logs`` and ``truncated`` when there are any."""
    reply: dict[str, Any] = {"ms": (time.perf_counter() - started) * 1000}
    if logs:
        reply["logs"] = logs
    if dropped:
        reply["truncated"] = dropped
    return reply


def is_json(data: bytes) -> bool:
    """Whether ``data`` is JSON text; a RESULT body that is not is sent with ``raw: true``."""
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


def decode_event(body: bytes) -> Any:
    """The INVOKE body as JSON; ``None`` when it is empty or not JSON."""
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


def is_http_event(event: object) -> TypeGuard[dict[str, Any]]:
    """A payload-2.0 event, as the HTTP trigger builds them (Lambda function URLs)."""
    if not isinstance(event, dict) or event.get("version") != "2.0":
        return False
    context = event.get("requestContext")
    return isinstance(context, dict) and isinstance(context.get("http"), dict)


def call_timeout(meta: dict[str, Any]) -> float:
    """Seconds an INVOKE may take here: until its ``deadline`` and a second more, at least one;
    15 minutes without one. The engine kills the sandbox at the deadline: this only keeps a
    stray call finite."""
    deadline = float(meta.get("deadline") or 0) / 1000
    return max(1.0, deadline - time.time() + 1.0) if deadline else 900.0


def function_env(meta: dict[str, Any]) -> dict[str, str]:
    """The ``EASYFAAS_*`` variables that describe the function and instance a LOAD names."""
    return {
        "EASYFAAS_FUNCTION_NAME": str(meta.get("function", "")),
        "EASYFAAS_FUNCTION_VERSION": str(meta.get("version", "$LATEST")),
        "EASYFAAS_MEMORY_MB": str(meta.get("memory_mb", 128)),
        "EASYFAAS_FUNCTION_ARN": str(meta.get("arn", "")),
        "EASYFAAS_INSTANCE": str(meta.get("instance", "")),
    }


def seconds_from_env(name: str, default: float) -> float:
    """``float($name)``, or ``default`` when it is unset, empty or not a number."""
    try:
        return float(os.environ.get(name) or default)
    except ValueError:
        return default


class OutputPump:
    """A child's stdout+stderr, read by a thread so the child never blocks on a full pipe.

    Reads happen only under the lock, so ``take()`` after a reply sees everything the
    child wrote before replying: nothing sits in a read the lock does not cover.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self.lock = threading.Lock()
        self.parts: list[bytes] = []
        self.size = 0
        self.dropped = 0
        self.eof = False
        threading.Thread(target=self._pump, name="output", daemon=True).start()

    def _read_available(self) -> None:
        while not self.eof:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.eof = True
                return
            self.parts.append(data)
            self.size += len(data)
            while self.size > PENDING_CAP and len(self.parts) > 1:
                old = self.parts.pop(0)
                self.size -= len(old)
                self.dropped += len(old)

    def _pump(self) -> None:
        while not self.eof:
            select.select([self.fd], [], [])
            with self.lock:
                self._read_available()

    def take(self, cap: int) -> tuple[str, int]:
        """What arrived since the last take: (text, characters dropped), at most ``cap`` characters kept."""
        with self.lock:
            self._read_available()
            data, dropped = b"".join(self.parts), self.dropped
            self.parts, self.size, self.dropped = [], 0, 0
        text = data.decode("utf-8", "replace")
        if len(text) > cap:
            dropped += len(text) - cap
            text = text[:cap]
        return text, dropped


def spawn(argv: list[str], cwd: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], OutputPump]:
    """Start ``argv`` with stdin on /dev/null and stdout+stderr into an ``OutputPump``.
    Raises ``OSError`` when it cannot start."""
    read_fd, write_fd = os.pipe()
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=write_fd, stderr=write_fd)
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return proc, OutputPump(read_fd)


def exit_after(what: str, code: int) -> NoReturn:
    """End this runner, and so its instance, because ``what`` (the function's process) exited with ``code``."""
    sys.stderr.write(f"{what} exited with status {code}\n")
    sys.stderr.flush()
    os._exit(code if 0 < code < 256 else 1)


def watch(proc: subprocess.Popen[bytes], what: str) -> None:
    """The child is the function: when it ends, so does the instance (``exit_after``)."""
    threading.Thread(target=lambda: exit_after(what, proc.wait()), name="watch", daemon=True).start()
