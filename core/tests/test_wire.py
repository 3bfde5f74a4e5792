"""The runtime protocol's framing: round trips, partial reads, limits, stdlib-only."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

import pytest

from easyfaas import wire
from easyfaas.wire import Kind


def test_frame_round_trip_over_a_real_socket() -> None:
    left, right = socket.socketpair()
    body = "héllo ☃".encode() * 1000
    wire.send_frame(left, Kind.INVOKE, 42, {"rid": "abc", "deadline": 1.5}, body)
    kind, rid, meta, got = wire.recv_frame(right)
    assert (kind, rid, meta, got) == (Kind.INVOKE, 42, {"rid": "abc", "deadline": 1.5}, body)


def test_empty_meta_and_body_take_only_the_header() -> None:
    frame = wire.encode(Kind.PING, 7)
    assert len(frame) == wire.HEADER.size == 13
    assert wire.decode_header(frame) == (7, 0, 0, Kind.PING)


def test_recv_frame_reassembles_a_frame_sent_one_byte_at_a_time() -> None:
    left, right = socket.socketpair()
    frame = wire.encode(Kind.RESULT, 3, {"raw": True}, b"\x00\x01binary\xff")

    def trickle() -> None:
        for i in range(len(frame)):
            left.send(frame[i : i + 1])

    thread = threading.Thread(target=trickle)
    thread.start()
    assert wire.recv_frame(right) == (Kind.RESULT, 3, {"raw": True}, b"\x00\x01binary\xff")
    thread.join()


def test_eof_in_the_middle_of_a_frame_raises_eoferror() -> None:
    left, right = socket.socketpair()
    left.sendall(wire.encode(Kind.INVOKE, 1, {}, b"abcdef")[:-2])
    left.close()
    with pytest.raises(EOFError):
        wire.recv_frame(right)


def test_oversized_frames_are_refused_before_allocating() -> None:
    header = wire.HEADER.pack(1, 0, wire.MAX_FRAME + 1, Kind.INVOKE)
    with pytest.raises(wire.FrameError, match="exceeds"):
        wire.decode_header(header)


@pytest.mark.parametrize("meta", [b"not json", b"[1,2]"])
def test_bad_meta_is_a_frame_error(meta: bytes) -> None:
    with pytest.raises(wire.FrameError):
        wire.decode_meta(meta)


def test_wire_imports_only_the_standard_library() -> None:
    # Runners load wire.py by path inside sandboxes that have no site-packages.
    code = (
        "import sys, runpy; before = set(sys.modules); "
        f"runpy.run_path({wire.__file__!r}); "
        "new = set(sys.modules) - before; "
        "bad = [m for m in new if m.split('.')[0] not in sys.stdlib_module_names]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
