"""What every stdlib-only Python runner shares: the serve loop (one connection at a time),
the dispatch of LOAD, INVOKE, PING and SHUTDOWN frames, and the shape of error meta.

Standard library only, like ``wire``: a runtime lists this file in ``runner_files()`` as
``easyfaas_runner_support.py``, beside ``easyfaas_wire.py``, and its runner imports it from
there (see ``docs/runtime-protocol.md``). It loads nothing the Python runner does not load
anyway, and stays small: with ``-B`` and a read-only runner directory, every runner start
compiles it from source. What only runners whose function is a child process need lives in
``runner_child``.

A runner subclasses ``Runner`` (``load`` and ``invoke``) and calls ``serve``::

    class MyRunner(support.Runner):
        def load(self, meta): ...           # -> (Kind.LOADED | Kind.LOAD_ERROR, meta)
        def invoke(self, meta, body): ...   # -> (Kind.RESULT | Kind.ERROR, meta, body)

    def serve(socket_path):
        support.serve(MyRunner(), socket_path)
"""

from __future__ import annotations

import abc
import json
import os
import socket
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is not imported at run time: runners start faster without it
    from collections.abc import Callable
    from typing import Any

    Frame = tuple[int, int, dict[str, Any], bytes]  # (kind, request id, meta, body), as recv_frame returns

if TYPE_CHECKING or __name__ == "easyfaas.runner_support":  # in the engine, and for type checkers
    from easyfaas import wire
else:  # in a sandbox: easyfaas_wire.py lies beside this file, on the runner's sys.path
    import easyfaas_wire as wire

__all__ = ["LOG_CAP", "Kind", "Runner", "dumps", "error", "listen", "main", "serve", "wire"]

Kind = wire.Kind
#: Output kept of a LOAD, which carries no ``log_cap``, and of an INVOKE without one.
LOG_CAP = 1024 * 1024

#: JSON as the runners send it: compact, non-ASCII left as UTF-8.
dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class Runner(abc.ABC):
    """Answers the engine's frames on one connection: LOAD with ``load()``, INVOKE with
    ``invoke()``, PING with PONG; SHUTDOWN (or setting ``stop``) ends serving."""

    def __init__(self) -> None:
        self.stop = False

    @abc.abstractmethod
    def load(self, meta: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """LOADED or LOAD_ERROR, and its meta."""

    @abc.abstractmethod
    def invoke(self, meta: dict[str, Any], body: bytes) -> tuple[int, dict[str, Any], bytes]:
        """RESULT or ERROR, its meta and its body."""

    def close(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Called once, after serving has ended."""

    def invoke_stream(self, conn: socket.socket, rid: int, meta: dict[str, Any], head: bytes) -> list[Frame]:
        """Serve one streamed call (INVOKE_STREAM, then CHUNK frames; docs/runtime-protocol.md):
        read its body's CHUNKs with ``self.frames.next()`` up to the empty one, send HEAD, CHUNKs
        and RESULT or ERROR on ``conn``. Returns the frames of other calls read meanwhile, which
        are served next.

        By default streaming is refused with an ERROR: the call's CHUNKs are then ignored."""
        conn.sendall(wire.encode(Kind.ERROR, rid, error("StreamingUnsupported", "this runtime does not stream bodies")))
        return []

    def serve_connection(self, conn: socket.socket) -> None:
        #: This connection's frames, buffered: read every frame (a streamed call's CHUNKs
        #: too) with ``self.frames.next()``, never from ``conn`` itself.
        self.frames = wire.FrameReader(conn)
        recv, encode = self.frames.next, wire.encode
        while not self.stop:
            kind, rid, meta, body = recv()
            if kind == Kind.INVOKE:
                if "timeout" in meta:  # a prefetched call: its time starts now
                    meta["deadline"] = time.time() * 1000 + meta["timeout"]
                out_kind, out_meta, out_body = self.invoke(meta, body)
                conn.sendall(encode(out_kind, rid, out_meta, out_body))
            elif kind == Kind.LOAD:
                out_kind, out_meta = self.load(meta)
                conn.sendall(encode(out_kind, rid, out_meta))
            elif kind == Kind.PING:
                conn.sendall(encode(Kind.PONG, rid))
            elif kind == Kind.CHUNK:
                pass  # the body of a streamed call already answered (or refused): ignored
            elif kind == Kind.INVOKE_STREAM:
                backlog = self.invoke_stream(conn, rid, meta, body)
                self.frames.backlog.extend(backlog)
            elif kind == Kind.SHUTDOWN:
                self.stop = True
            else:
                raise wire.FrameError(f"unexpected message kind {kind}")


def listen(socket_path: str) -> socket.socket:
    """A unix socket listening at ``socket_path``, after removing a stale file there."""
    try:
        os.unlink(socket_path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(socket_path)
    sock.listen(16)
    return sock


def serve(runner: Runner, socket_path: str, sock: socket.socket | None = None, sndbuf: int = 0) -> None:
    """Listen on ``socket_path`` (unless a listening ``sock`` is given) and let ``runner`` serve
    one connection after another until it stops; then ``runner.close()``.

    ``sndbuf``, when set, is each connection's ``SO_SNDBUF``.
    """
    server = sock if sock is not None else listen(socket_path)
    while not runner.stop:
        conn, _ = server.accept()
        if sndbuf:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        try:
            runner.serve_connection(conn)
        except (EOFError, ConnectionError, wire.FrameError):
            pass  # the peer left or broke the protocol: wait for the next connection
        finally:
            conn.close()
    server.close()
    runner.close()


def main(serve: Callable[[str], None], script: str) -> None:
    """``script SOCKET``: serve on SOCKET, or exit with status 2 and a usage line."""
    if len(sys.argv) != 2:
        sys.stderr.write(f"usage: {script} SOCKET\n")
        raise SystemExit(2)
    serve(sys.argv[1])


def error(error_type: str, message: str, stack: list[str] | None = None, logs: str = "") -> dict[str, Any]:
    """LOAD_ERROR or ERROR meta."""
    return {"type": error_type, "message": message, "stack": stack or [], "logs": logs}
