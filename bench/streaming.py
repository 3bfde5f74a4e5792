"""Streamed calls (issue #7): throughput of a body streamed through the engine vs a local pipe.

Not in ``bench/run``; stand-alone. One engine per sandbox (exec runtime), two ``streaming: true``
functions: ``examples/exec-stream`` with ``?op=count`` (``wc -c``: the body goes in, a number
comes back) and a copy whose handler is ``cat`` (the body goes in and comes back whole, through
a full-duplex aiohttp client that reads the reply while it sends). The same client-side source
(1 MiB blocks from memory) also feeds the same-run baselines: a local ``wc -c`` and a local
``cat`` through pipes, no engine. Engine and baseline alternate per round; figures are MiB/s of
body (median of the rounds) and the ratio engine/baseline, with the controller's RSS growth
(peak, psutil samples) during the engine's rounds.

    python bench/streaming.py [--quick] [--size MIB] [--rounds N] [--sandbox S]... [--json out.json]
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, emit, engine, log, machine, parser, sandboxes, scratch

MiB = 1 << 20
BLOCK = bytes(range(256)) * (MiB // 256)
EXAMPLE = ROOT / "examples" / "exec-stream"


async def _blocks(n: int) -> AsyncIterator[bytes]:
    for _ in range(n):
        yield BLOCK


def _through_engine(url: str, mib: int) -> tuple[float, int]:
    """Seconds to stream ``mib`` MiB to ``url`` and read the whole reply; bytes of reply."""
    import aiohttp

    async def call() -> tuple[float, int]:
        received = 0
        timeout = aiohttp.ClientTimeout(total=3600)
        started = time.perf_counter()
        async with aiohttp.ClientSession(timeout=timeout) as session, session.post(url, data=_blocks(mib)) as response:
            if response.status != 200:
                raise RuntimeError(f"{url}: HTTP {response.status}: {await response.text()}")
            async for piece in response.content.iter_chunked(MiB):
                received += len(piece)
        return time.perf_counter() - started, received

    return asyncio.run(call())


def _through_pipe(argv: list[str], mib: int) -> tuple[float, int]:
    """The baseline: the same blocks written into a local process's stdin, its stdout read."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    stdin = proc.stdin

    def feed() -> None:
        for _ in range(mib):
            stdin.write(BLOCK)
        stdin.close()

    writer = threading.Thread(target=feed)
    writer.start()
    received = 0
    while data := proc.stdout.read(MiB):
        received += len(data)
    writer.join()
    proc.wait()
    return time.perf_counter() - started, received


class PeakRss:
    def __init__(self, pid: int) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.before = self.proc.memory_info().rss
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return (self.peak - self.before) / MiB


def measure(sandbox: str, mib: int, rounds: int) -> dict[str, Any]:
    work = scratch("efbench-stream-")
    cat_dir = work / "stream-cat"
    cat_dir.mkdir()
    (cat_dir / "handler.sh").write_text("#!/bin/sh\nexec cat\n")
    (cat_dir / "handler.sh").chmod(0o755)
    with engine(sandbox, pool={"exec": 1}, extra={"runtimes": {"exec": {}}}) as eng:
        eng.deploy(EXAMPLE)
        eng.deploy(cat_dir, "stream-cat", runtime="exec", handler="handler.sh", memory=32, timeout=600, streaming=True)
        controller = eng.children()["controller"]
        cases = {
            "upload (wc -c)": (f"{eng.http_url}/function/exec-stream?op=count", ["wc", "-c"], False),
            "echo (cat)": (f"{eng.http_url}/function/stream-cat", ["cat"], True),
        }
        _through_engine(cases["upload (wc -c)"][0], 8)  # warm: the instance exists before timing
        _through_engine(cases["echo (cat)"][0], 8)
        out: dict[str, Any] = {}
        for case, (url, argv, echo) in cases.items():
            engine_rates, pipe_rates, growth = [], [], []
            for r in range(rounds):
                rss = PeakRss(controller)
                seconds, received = _through_engine(url, mib)
                growth.append(rss.stop())
                if echo and received != mib * MiB:
                    raise RuntimeError(f"{case}: {received} bytes came back, not {mib * MiB}")
                engine_rates.append(mib / seconds)
                seconds, received = _through_pipe(argv, mib)
                pipe_rates.append(mib / seconds)
                log(
                    f"{sandbox} {case} round {r + 1}: engine {engine_rates[-1]:.0f} MiB/s, local pipe {pipe_rates[-1]:.0f} MiB/s"
                )
            e, p = statistics.median(engine_rates), statistics.median(pipe_rates)
            out[case] = {
                "engine_mib_s": round(e, 1), "local_pipe_mib_s": round(p, 1), "ratio": round(e / p, 3),
                "controller_rss_growth_mib_max": round(max(growth), 1), "engine_rounds": [round(x, 1) for x in engine_rates],
                "pipe_rounds": [round(x, 1) for x in pipe_rates],
            }  # fmt: skip
        return out


def main() -> None:
    p = parser(__doc__.split("\n", 1)[0])
    p.add_argument("--size", type=int, help="MiB per call (default 256; 32 with --quick)")
    p.add_argument("--rounds", type=int, help="rounds per case (default 3; 1 with --quick)")
    args = p.parse_args()
    mib = args.size or (32 if args.quick else 256)
    rounds = args.rounds or (1 if args.quick else 3)
    run, skipped = sandboxes([s for s in (args.sandbox or ["process", "namespace"]) if s != "docker"])
    result: dict[str, Any] = {
        "suite": "streaming",
        "machine": machine(),
        "size_mib": mib,
        "rounds": rounds,
        "skipped": skipped,
    }
    for sandbox in run:
        log(f"streaming: {sandbox}, {mib} MiB × {rounds} rounds per case")
        result[sandbox] = measure(sandbox, mib, rounds)
    emit(result, args.json)


if __name__ == "__main__":
    main()
