"""Streamed calls in runner_support's dispatch (issue #7): a runner that cannot stream answers a
streamed INVOKE with a clear ERROR and ignores its body; frames a streaming runner read past
its own call are served after it, in order."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from easyfaas import runner_support, wire
from easyfaas.wire import Kind

if TYPE_CHECKING:
    from easyfaas.runner_support import Frame  # a type alias, for type checkers only


class EchoRunner(runner_support.Runner):
    """INVOKE answers its body; no streaming (runner_support's default)."""

    def load(self, meta: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return Kind.LOADED, {}

    def invoke(self, meta: dict[str, Any], body: bytes) -> tuple[int, dict[str, Any], bytes]:
        return Kind.RESULT, {"raw": True}, body


class CountingRunner(EchoRunner):
    """Streams: reads the call's CHUNKs to the empty one, answers their total length."""

    def invoke_stream(self, conn: socket.socket, rid: int, meta: dict[str, Any], head: bytes) -> list[Frame]:
        backlog: list[Frame] = []
        total = 0
        while True:
            frame = self.frames.next()  # the connection's reader: it may hold these frames already
            kind, frame_rid, _meta, body = frame
            if kind != Kind.CHUNK or frame_rid != rid:
                backlog.append(frame)
                continue
            if not body:
                break
            total += len(body)
        conn.sendall(wire.encode(Kind.HEAD, rid, {"status": 200}))
        conn.sendall(wire.encode(Kind.CHUNK, rid, None, str(total).encode()))
        conn.sendall(wire.encode(Kind.RESULT, rid, {"ms": 0}))
        return backlog


def serving(runner: runner_support.Runner) -> Iterator[socket.socket]:
    ours, theirs = socket.socketpair()
    ours.settimeout(10)

    def serve() -> None:
        try:
            runner.serve_connection(theirs)
        except (EOFError, OSError):
            pass
        finally:
            theirs.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield ours
    ours.close()
    thread.join(10)


@pytest.fixture
def echo() -> Iterator[socket.socket]:
    yield from serving(EchoRunner())


@pytest.fixture
def counting() -> Iterator[socket.socket]:
    yield from serving(CountingRunner())


def test_a_runner_that_cannot_stream_refuses_with_an_error_and_keeps_serving(echo: socket.socket) -> None:
    wire.send_frame(echo, Kind.INVOKE_STREAM, 1, {"rid": "s"}, b"{}")
    for piece in (b"a" * 1000, b"b" * 1000, b""):
        wire.send_frame(echo, Kind.CHUNK, 1, None, piece)
    kind, rid, meta, _ = wire.recv_frame(echo)
    assert (kind, rid, meta["type"]) == (Kind.ERROR, 1, "StreamingUnsupported")
    assert "does not stream" in meta["message"]
    # The refused call's chunks were dropped, not taken for a protocol error: the connection serves on.
    wire.send_frame(echo, Kind.INVOKE, 2, {"rid": "n"}, b"plain")
    assert wire.recv_frame(echo) == (Kind.RESULT, 2, {"raw": True}, b"plain")


def test_frames_read_during_a_stream_are_served_after_it_in_order(counting: socket.socket) -> None:
    wire.send_frame(counting, Kind.INVOKE_STREAM, 1, {"rid": "s"}, b"{}")
    wire.send_frame(counting, Kind.CHUNK, 1, None, b"x" * 5000)
    wire.send_frame(counting, Kind.PING, 7)  # e.g. a call prefetched behind the stream
    wire.send_frame(counting, Kind.INVOKE, 2, {"rid": "n"}, b"after")
    wire.send_frame(counting, Kind.CHUNK, 1, None, b"y" * 3000)
    wire.send_frame(counting, Kind.CHUNK, 1, None, b"")
    replies = [wire.recv_frame(counting) for _ in range(5)]
    assert [(kind, rid) for kind, rid, _, _ in replies] == [
        (Kind.HEAD, 1), (Kind.CHUNK, 1), (Kind.RESULT, 1), (Kind.PONG, 7), (Kind.RESULT, 2),
    ]  # fmt: skip
    assert replies[1][3] == b"8000" and replies[4][3] == b"after"
    # And back to reading the socket once the backlog is served.
    wire.send_frame(counting, Kind.PING, 8)
    assert wire.recv_frame(counting)[:2] == (Kind.PONG, 8)
