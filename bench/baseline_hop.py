"""The "bare hop" baseline of perf-anchors.md §2: the same hop count as the engine, no engine.

An aiohttp+uvloop front turns each HTTP request into a JSON event and writes it as a frame
(``!II`` request id + length) on ONE multiplexed unix connection to ONE worker process. The
worker is a uvloop asyncio server: it decodes the frame, calls the examples/hello handler
synchronously, and writes the JSON result back. A reader task in the front resolves futures
by request id; the front ``json.loads`` the result and responds.

    python bench/baseline_hop.py --port 18080            # front + worker, until SIGTERM
    python bench/baseline_hop.py --bare --port 18080     # aiohttp+uvloop hello, no hop (ceiling)

Both processes run the bench's venv interpreter; access logs are off.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HELLO = Path(__file__).resolve().parent.parent / "examples" / "hello" / "handler.py"
FRAME = struct.Struct("!II")


class Context:
    function_name = "hello"
    function_version = "1"

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id


def load_handler():
    spec = importlib.util.spec_from_file_location("hello_handler", HELLO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.handler


# -- worker ------------------------------------------------------------------------------------


async def worker_main(socket_path: str) -> None:
    handler = load_handler()
    dumps, loads, pack, unpack = json.dumps, json.loads, FRAME.pack, FRAME.unpack

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                rid, n = unpack(await r.readexactly(8))
                ev = loads(await r.readexactly(n))
                out = dumps(handler(ev, Context(ev.get("requestContext", {}).get("requestId", "")))).encode()
                w.write(pack(rid, len(out)) + out)
        except (asyncio.IncompleteReadError, ConnectionError):
            w.close()

    server = await asyncio.start_unix_server(serve, socket_path)
    async with server:
        await server.serve_forever()


# -- front -------------------------------------------------------------------------------------


def front_app(socket_path: str):
    from aiohttp import web

    state: dict = {"writer": None, "pending": {}, "next": 0, "lock": asyncio.Lock()}
    pending: dict[int, asyncio.Future] = state["pending"]

    async def reader_task(r: asyncio.StreamReader) -> None:
        unpack = FRAME.unpack
        while True:
            rid, n = unpack(await r.readexactly(8))
            data = await r.readexactly(n)
            fut = pending.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_result(data)

    async def connection() -> asyncio.StreamWriter:
        if state["writer"] is None:
            async with state["lock"]:
                if state["writer"] is None:
                    r, w = await asyncio.open_unix_connection(socket_path)
                    state["reader"] = asyncio.create_task(reader_task(r))
                    state["writer"] = w
        return state["writer"]

    async def handle(request: web.Request) -> web.Response:
        w = await connection()
        body = await request.read()
        rid_text = uuid.uuid4().hex
        event = {
            "version": "2.0", "rawPath": "/" + request.match_info.get("path", ""),
            "rawQueryString": request.query_string,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "requestContext": {
                "http": {"method": request.method, "path": request.path, "sourceIp": request.remote or ""},
                "requestId": rid_text, "timeEpoch": int(time.time() * 1000),
            },
            "isBase64Encoded": False,
        }  # fmt: skip
        if request.query_string:
            event["queryStringParameters"] = dict(request.query)
        if body:
            event["body"] = body.decode("utf-8", "replace")
        payload = json.dumps(event).encode()
        state["next"] += 1
        rid = state["next"]
        fut = asyncio.get_running_loop().create_future()
        pending[rid] = fut
        w.write(FRAME.pack(rid, len(payload)) + payload)
        out = await fut
        value = json.loads(out)
        if isinstance(value, dict) and "statusCode" in value:
            return web.Response(status=int(value["statusCode"]), text=str(value.get("body", "")))
        return web.Response(body=out, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/function/{name}", handle)
    app.router.add_route("*", "/function/{name}/{path:.*}", handle)
    app.router.add_route("*", "/", handle)
    return app


def bare_app():
    from aiohttp import web

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="Hello, world!")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hello)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=18080)
    p.add_argument("--bare", action="store_true", help="no hop: aiohttp+uvloop answering Hello, world!")
    p.add_argument("--worker", metavar="SOCKET", help=argparse.SUPPRESS)
    args = p.parse_args()
    import uvloop

    if args.worker:
        uvloop.run(worker_main(args.worker))
        return
    from aiohttp import web

    if args.bare:
        uvloop.install()
        web.run_app(bare_app(), host="127.0.0.1", port=args.port, access_log=None, print=None)
        return
    tmp = tempfile.mkdtemp(prefix="efhop-")
    socket_path = os.path.join(tmp, "w.sock")
    worker = subprocess.Popen([sys.executable, __file__, "--worker", socket_path])
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(socket_path):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the worker did not start")
            time.sleep(0.01)
        print(f"worker {worker.pid}", flush=True)
        uvloop.install()
        web.run_app(front_app(socket_path), host="127.0.0.1", port=args.port, access_log=None, print=None)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(5)
        except subprocess.TimeoutExpired:
            worker.kill()
        for name in os.listdir(tmp):
            os.unlink(os.path.join(tmp, name))
        os.rmdir(tmp)


if __name__ == "__main__":
    main()
