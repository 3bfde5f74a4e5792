"""The exec runner: runs the function's executable once per call, as OpenFaaS's classic watchdog does.

Standard library only, plus ``easyfaas_runner_support``, ``easyfaas_runner_child`` and
``easyfaas_wire`` placed beside this file. Started as
``python -I -S -B easyfaas_exec_runner.py SOCKET`` or, by a zygote, as ``serve(SOCKET)``.
"""

from __future__ import annotations

import base64
import os
import selectors
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is not imported at run time: runners start faster without it
    import socket
    from typing import Any

    from easyfaas import runner_child as child  # the same files, as the type checker finds them
    from easyfaas import runner_support as support
    from easyfaas.runner_support import Frame
else:  # found through the sys.path line above
    import easyfaas_runner_child as child
    import easyfaas_runner_support as support

Kind = support.Kind
LOG_CAP = support.LOG_CAP
#: How many trailing stderr lines an ERROR carries as its ``stack``.
STACK_LINES = 50
_CHUNK = 1 << 16

_error = support.error


def header_variable(name: str) -> str:
    """``content-type`` → ``Http_Content_Type``: Go's canonical header form, '-' → '_', as the watchdog names them."""
    return "Http_" + "_".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def http_request(event: dict[str, Any]) -> tuple[bytes, dict[str, str], str]:
    """(stdin, environment, request content type) of one payload-2.0 event."""
    http = event["requestContext"]["http"]
    env = {"Http_Method": str(http.get("method", "")), "Http_Path": str(event.get("rawPath", http.get("path", "")))}
    query = event.get("rawQueryString") or ""
    if query:
        env["Http_Query"] = str(query)
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    if event.get("cookies"):
        headers["cookie"] = "; ".join(str(c) for c in event["cookies"])
    for key, value in headers.items():
        if "\0" not in value and "=" not in key:
            env[header_variable(key)] = value
    body = event.get("body") or ""
    data = base64.b64decode(body) if event.get("isBase64Encoded") else str(body).encode()
    return data, env, headers.get("content-type", "")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"


class Capped:
    """The first ``cap`` bytes of a stream, and how many more there were."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.parts: list[bytes] = []
        self.kept = 0
        self.dropped = 0

    def add(self, data: bytes) -> None:
        room = self.cap - self.kept
        if room > 0:
            self.parts.append(data[:room])
            self.kept += min(room, len(data))
        self.dropped += max(0, len(data) - room)

    def text(self) -> str:
        return b"".join(self.parts).decode("utf-8", "replace")


def run(argv: list[str], cwd: str, env: dict[str, str], stdin: bytes, timeout: float, log_cap: int) -> tuple[int, bytes, Capped]:
    """Run one process to its end: (returncode, stdout, capped stderr). Feeds stdin while reading
    both outputs, so a function may stream any amount through without a pipe deadlock."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    out: list[bytes] = []
    err = Capped(log_cap)
    view = memoryview(stdin)
    sel = selectors.DefaultSelector()
    if view:
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin, selectors.EVENT_WRITE)
    else:
        proc.stdin.close()
    sel.register(proc.stdout, selectors.EVENT_READ, out.append)
    sel.register(proc.stderr, selectors.EVENT_READ, err.add)
    deadline = time.monotonic() + timeout
    try:
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                proc.kill()
                break
            for key, _events in sel.select(remaining):
                if key.fileobj is proc.stdin:
                    try:
                        sent = os.write(proc.stdin.fileno(), view[:_CHUNK])
                    except BrokenPipeError:  # the function does not read its input: fine
                        sent = len(view)
                    view = view[sent:]
                    if not view:
                        sel.unregister(proc.stdin)
                        proc.stdin.close()
                    continue
                data = os.read(key.fd, _CHUNK)
                if data:
                    key.data(data)
                else:
                    sel.unregister(key.fileobj)
    finally:
        sel.close()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()
    return proc.wait(), b"".join(out), err


def exit_message(handler: str, code: int, lines: list[str]) -> str:
    """``handler exited with status N: <last stderr line>``, or ``… was killed by signal N (NAME)``."""
    if code < 0:
        message = f"{handler} was killed by signal {-code} ({_signal_name(-code)})"
    else:
        message = f"{handler} exited with status {code}"
    return message + ": " + lines[-1] if lines else message


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a streamed call's process and everything it started (its own process group:
    the other programs of a pipeline must not finish the job on a cut-off input)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        proc.kill()


class StreamBody(threading.Thread):
    """A streamed call's request body: its CHUNK frames, read from the connection and written
    to the process's stdin as they come, up to the empty CHUNK that ends them.

    Writes block: a process that reads slowly stops this thread, which stops reading the
    socket, which makes the engine wait (backpressure, never a buffer). Once the process has
    closed its stdin the rest of the body is read and dropped. Frames of other calls that
    arrive meanwhile are kept in ``backlog``, to be served after this call."""

    def __init__(self, frames: support.wire.FrameReader, rid: int, proc: subprocess.Popen[bytes]) -> None:
        super().__init__(name="stream-body", daemon=True)
        #: Where the CHUNKs come from: the runner's buffered reader of the connection.
        self.frames, self.rid, self.proc = frames, rid, proc
        self.backlog: list[Frame] = []
        self.aborted = False
        self.failure: BaseException | None = None

    def run(self) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        fd = stdin.fileno()
        is_open = True
        try:
            while True:
                frame = self.frames.next()  # the runner's buffered reader: it may hold these CHUNKs already
                kind, rid, meta, body = frame
                if kind != Kind.CHUNK or rid != self.rid:
                    if kind != Kind.CHUNK:  # a chunk of an older call is dropped, anything else served later
                        self.backlog.append(frame)
                    continue
                if not body:
                    if meta.get("abort"):  # the caller went away before sending the whole body
                        self.aborted = True
                        kill_group(self.proc)
                    return
                if not is_open:
                    continue
                view = memoryview(body)
                try:
                    while view:
                        view = view[os.write(fd, view) :]
                except OSError:  # EPIPE: the process closed its stdin, it wants no more input
                    is_open = False
                    stdin.close()
        except BaseException as exc:
            self.failure = exc
            kill_group(self.proc)
        finally:
            if is_open:
                stdin.close()


class Runner(support.Runner):
    def __init__(self) -> None:
        super().__init__()
        self.function: dict[str, Any] | None = None
        self.executable = ""

    def load(self, meta: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self.function is not None:
            return Kind.LOAD_ERROR, _error("ReloadRefused", "this instance already loaded a function")
        started = time.perf_counter()
        code_dir = str(meta.get("code_dir", ""))
        handler = str(meta.get("handler", ""))
        path = os.path.join(code_dir, handler)
        if not os.path.isfile(path):
            return Kind.LOAD_ERROR, _error("HandlerNotFound", f"no executable {handler!r} in the function's code")
        if not os.access(path, os.X_OK):
            return Kind.LOAD_ERROR, _error("HandlerNotExecutable", f"{handler!r} is not executable (chmod +x it before packaging)")
        os.environ.update(meta.get("env") or {})
        # The platform's names win over the function's env: they describe this very instance.
        os.environ.update(child.function_env(meta))
        os.chdir(code_dir)
        self.executable = path
        self.function = meta
        return Kind.LOADED, {"init_ms": (time.perf_counter() - started) * 1000, "logs": ""}

    def invoke(self, meta: dict[str, Any], body: bytes) -> tuple[int, dict[str, Any], bytes]:
        if self.function is None:
            return Kind.ERROR, _error("NotLoaded", "no function is loaded"), b""
        started = time.perf_counter()
        deadline = float(meta.get("deadline") or 0) / 1000
        env = dict(os.environ)
        env["EASYFAAS_REQUEST_ID"] = str(meta.get("rid", ""))
        env["EASYFAAS_DEADLINE_MS"] = str(int(deadline * 1000))
        event = child.decode_event(body)
        http = False
        content_type = ""
        if child.is_http_event(event):
            http = True
            stdin, http_env, content_type = http_request(event)
            env.update(http_env)
        else:
            stdin = body
        timeout = child.call_timeout(meta)
        try:
            code, out, err = run([self.executable], os.getcwd(), env, stdin, timeout, int(meta.get("log_cap", LOG_CAP)))
        except OSError as exc:
            return Kind.ERROR, _error("Runtime.ExecError", f"cannot run {self.function['handler']!r}: {exc}"), b""
        logs = err.text()
        reply = child.reply_meta(started, logs, err.dropped)
        if code != 0:
            lines = [line for line in logs.split("\n") if line.strip()]  # not splitlines(): U+2028 is no line end here
            message = exit_message(self.function["handler"], code, lines)
            return Kind.ERROR, {**reply, "type": "Runtime.ExitError", "message": message, "stack": lines[-STACK_LINES:]}, b""
        if http:
            return Kind.RESULT, reply, support.dumps(self.http_response(out, content_type)).encode()
        if not child.is_json(out):
            reply["raw"] = True  # not JSON: the bytes as they are
            return Kind.RESULT, reply, out
        return Kind.RESULT, reply, out.strip()

    @staticmethod
    def http_response(out: bytes, request_type: str) -> dict[str, Any]:
        # The watchdog's rule: the function's `content_type` env var, else the request's type.
        content_type = os.environ.get("content_type") or request_type  # noqa: SIM112 - the watchdog spells it so
        try:
            text = out.decode("utf-8")
        except UnicodeDecodeError:
            content_type = content_type or "application/octet-stream"
            return {"statusCode": 200, "headers": {"Content-Type": content_type},
                    "body": base64.b64encode(out).decode(), "isBase64Encoded": True}  # fmt: skip
        return {"statusCode": 200, "headers": {"Content-Type": content_type or "text/plain; charset=utf-8"},
                "body": text, "isBase64Encoded": False}  # fmt: skip


    # -- streamed calls (docs/runtime-protocol.md, "Streamed calls") ----------------------------

    def invoke_stream(self, conn: socket.socket, rid: int, meta: dict[str, Any], head: bytes) -> list[Frame]:
        """One process per call, its stdin fed from the request's CHUNKs by a thread while this
        one sends its stdout back as CHUNKs and a third keeps the first ``log_cap`` bytes of its
        stderr. Nothing holds more than one chunk of a body; every write blocks until the other
        side has room. HEAD goes out with the first byte of output (or at a clean exit without
        any), so a process that fails before printing anything is an ERROR the caller sees as such."""
        send, encode = conn.sendall, support.wire.encode
        if self.function is None:
            send(encode(Kind.ERROR, rid, _error("NotLoaded", "no function is loaded")))
            return []
        handler = str(self.function["handler"])
        started = time.perf_counter()
        env = dict(os.environ)
        env["EASYFAAS_REQUEST_ID"] = str(meta.get("rid", ""))
        env["EASYFAAS_DEADLINE_MS"] = str(int(float(meta.get("deadline") or 0)))
        event = child.decode_event(head)
        content_type = ""
        if child.is_http_event(event):
            _, http_env, content_type = http_request(event)
            env.update(http_env)
        # The watchdog's rule, minus sniffing (a stream cannot be looked at in advance).
        content_type = os.environ.get("content_type") or content_type or "application/octet-stream"  # noqa: SIM112
        try:
            proc = subprocess.Popen(
                [self.executable], cwd=os.getcwd(), env=env, bufsize=0, start_new_session=True,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
        except OSError as exc:
            send(encode(Kind.ERROR, rid, _error("Runtime.ExecError", f"cannot run {handler!r}: {exc}")))
            return []
        assert proc.stdout is not None and proc.stderr is not None
        body = StreamBody(self.frames, rid, proc)
        body.start()
        err = Capped(int(meta.get("log_cap", LOG_CAP)))
        stderr = threading.Thread(target=_drain, args=(proc.stderr.fileno(), err.add), name="stderr", daemon=True)
        stderr.start()
        timed_out: list[bool] = []

        def expire() -> None:
            timed_out.append(True)
            kill_group(proc)

        timer = threading.Timer(child.call_timeout(meta), expire)
        timer.daemon = True
        timer.start()
        headed = False
        broken: BaseException | None = None
        try:
            out = proc.stdout.fileno()
            while True:
                data = os.read(out, _CHUNK)
                if not data:
                    break
                if body.aborted:  # cut off: what it still printed is not the answer
                    continue
                if not headed:
                    send(encode(Kind.HEAD, rid, {"status": 200, "headers": {"Content-Type": content_type}}))
                    headed = True
                send(encode(Kind.CHUNK, rid, None, data))
        except OSError as exc:  # the engine is gone: stop the process, then let serve() see it
            broken = exc
            kill_group(proc)
        code = proc.wait()
        timer.cancel()
        stderr.join()
        proc.stdout.close()
        proc.stderr.close()
        if broken is None and body.failure is None:
            logs = err.text()
            reply = child.reply_meta(started, logs, err.dropped)
            if code == 0 and not body.aborted:
                if not headed:
                    send(encode(Kind.HEAD, rid, {"status": 200, "headers": {"Content-Type": content_type}}))
                send(encode(Kind.RESULT, rid, reply))
            else:
                lines = [line for line in logs.split("\n") if line.strip()]
                if body.aborted:
                    message, error_type = f"{handler} was stopped: the request body was cut off", "Runtime.Aborted"
                elif timed_out:
                    message, error_type = f"{handler} was killed: the call timed out", "Runtime.Timeout"
                else:
                    message, error_type = exit_message(handler, code, lines), "Runtime.ExitError"
                send(encode(Kind.ERROR, rid, {**reply, "type": error_type, "message": message, "stack": lines[-STACK_LINES:]}))
        body.join()  # it ends with the body's last CHUNK (or with the connection)
        failure = broken or body.failure
        if failure is not None:
            raise failure
        return body.backlog


def _drain(fd: int, sink: Any) -> None:
    """Read ``fd`` to its end into ``sink``."""
    while True:
        data = os.read(fd, _CHUNK)
        if not data:
            return
        sink(data)


def serve(socket_path: str) -> None:
    """Listen on ``socket_path`` and serve until SHUTDOWN."""
    support.serve(Runner(), socket_path)


if __name__ == "__main__":
    support.main(serve, "easyfaas_exec_runner.py")
