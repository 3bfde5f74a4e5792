"""Shared helpers for the bench suites: engines, wrk, a raw keep-alive HTTP client, stats, output.

Every suite is a script (``python bench/<suite>.py [--quick] [--sandbox S] [--json OUT]``)
that prints its figures and, with ``--json``, writes them for ``bench/run`` to gather.
All load goes to 127.0.0.1. No timing thresholds are asserted anywhere: suites report.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
HELLO = ROOT / "examples" / "hello"
PY = sys.executable
#: The sandbox drivers a suite can be asked to measure (``--sandbox``).
SANDBOXES = ["process", "namespace", "docker"]

# --------------------------------------------------------------------------------------------
# command line


def _on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def scratch(prefix: str) -> Path:
    """A temp dir removed when the suite exits (also on SIGTERM from bench/run's time limit)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, True)
    return path


def parser(description: str) -> argparse.ArgumentParser:
    # bench/run stops a suite that overruns its limit with SIGTERM: unwind so engines and
    # baseline servers are stopped by their context managers instead of being orphaned.
    signal.signal(signal.SIGTERM, _on_sigterm)
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny sample sizes, proves the suite runs")
    p.add_argument(
        "--sandbox",
        action="append",
        choices=SANDBOXES,
        help="sandbox driver(s) to measure (default: process, plus namespace when available)",
    )
    p.add_argument("--json", type=Path, help="write the figures here as JSON")
    return p  # fmt: skip


def sandboxes(chosen: list[str] | None) -> tuple[list[str], dict[str, str]]:
    """The sandboxes to run, and why any wanted one is skipped.

    ``docker`` is only measured when asked for; a suite run on its own starts dockerd for it
    (and stops it at exit) as the docker driver's tests do, see ``start_dockerd``."""
    from easyfaas.testing import sandbox_unavailable

    wanted = chosen or ["process", "namespace"]
    run, skipped = [], {}
    for name in wanted:
        if name == "docker":
            proc, reason = start_dockerd()
            if proc is not None:
                atexit.register(stop_dockerd, proc)
            if reason is not None:
                skipped[name] = reason
                continue
        reason = sandbox_unavailable(name)
        if reason is None:
            run.append(name)
        else:
            skipped[name] = reason
    return run, skipped


DOCKERD_WAIT = 60.0


def start_dockerd(log_path: Path | None = None) -> tuple[subprocess.Popen[bytes] | None, str | None]:
    """Make sure a Docker engine answers, as plugins/sandboxes/docker/tests/conftest.py does:
    (the dockerd started here or None, None), or (None, why there is no engine).

    Started only when none answers, ``DOCKER_HOST`` is unset, we are root and ``dockerd`` exists:
    ``dockerd --iptables=false --bridge=none`` (containers have no network). Stop it with ``stop_dockerd``."""
    from easyfaas.testing import sandbox_unavailable

    reason = sandbox_unavailable("docker")
    if reason is None:
        return None, None
    if "plugin does not load" in reason:
        return None, reason
    if os.environ.get("DOCKER_HOST"):
        return None, f"{reason} (DOCKER_HOST is set, so no local dockerd is started)"
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        return None, f"{reason}; no dockerd binary to start (.ci/install-docker installs docker.io)"
    if os.geteuid() != 0:
        return None, f"{reason}; not root, so dockerd cannot be started here"
    if log_path is None:
        log_path = scratch("efbench-dockerd-") / "dockerd.log"
    log(f"starting dockerd (log: {log_path})")
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([dockerd, "--iptables=false", "--bridge=none"], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + DOCKERD_WAIT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-1500:]
            return None, f"dockerd exited with code {proc.returncode}: {tail}"
        if sandbox_unavailable("docker") is None:
            return proc, None
        time.sleep(0.2)
    stop_dockerd(proc)
    return None, f"dockerd did not answer within {DOCKERD_WAIT:.0f}s (log: {log_path})"


def stop_dockerd(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the dockerd ``start_dockerd`` started (it stops its containerd too), then wait."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(Exception):  # stderr may be a closed pipe by now: stop it all the same
        log("stopping the dockerd started for the bench")
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def emit(result: dict[str, Any], path: Path | None) -> None:
    text = json.dumps(result, indent=2, default=str)
    if path is not None:
        path.write_text(text)
    print(text)


def log(*args: Any) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *args, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# statistics


def pct(values: list[float], p: float) -> float:
    """Percentile by nearest rank on a sorted copy (p in 0..100)."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(p / 100 * len(s) + 0.5) - 1))
    return s[k]


def summary(values_ms: list[float]) -> dict[str, float]:
    if not values_ms:
        return {"n": 0}
    return {
        "n": len(values_ms),
        "min": round(min(values_ms), 3),
        "p50": round(pct(values_ms, 50), 3),
        "p95": round(pct(values_ms, 95), 3),
        "p99": round(pct(values_ms, 99), 3),
        "max": round(max(values_ms), 3),
        "mean": round(statistics.fmean(values_ms), 3),
    }


# --------------------------------------------------------------------------------------------
# machine


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"

    def version(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            return "missing"

    return {
        "nproc": os.cpu_count(), "model": model, "kernel": platform.release(), "memory": mem,
        "os": _os_release(), "python": platform.python_version(), "python_path": sys.executable,
        "wrk": version(["wrk", "-v"]), "hyperfine": version(["hyperfine", "--version"]),
        "loadavg": os.getloadavg(),
    }  # fmt: skip


def _os_release() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.platform()


# --------------------------------------------------------------------------------------------
# engines


@contextlib.contextmanager
def engine(sandbox: str, *, pool: int | dict[str, int] = 8, keep_alive: str = "600s", **extra: Any) -> Iterator[Any]:
    """A started ``RunningEngine`` in a fresh temp dir; stopped and removed afterwards.

    ``pool``: the generic pool of Python sandboxes, or a pool size per runtime."""
    from easyfaas.testing import RunningEngine

    tmp = Path(tempfile.mkdtemp(prefix=f"efbench-{sandbox}-"))
    eng = RunningEngine(tmp / "eng", sandbox=sandbox, pool=pool if isinstance(pool, dict) else {"python": pool},
                        controller={"keep_alive": keep_alive, **extra.pop("controller", {})}, **extra)  # fmt: skip
    try:
        eng.start(timeout=90)
        authorize(eng)
    except BaseException:
        with contextlib.suppress(Exception):
            eng.stop(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        yield eng
    finally:
        try:
            eng.stop(timeout=90)
        except Exception as exc:  # noqa: BLE001 - report, keep going
            log(f"engine stop failed: {exc}")
        shutil.rmtree(tmp, ignore_errors=True)


def authorize(eng: Any) -> None:
    """Use the management API's bearer token when the engine has one (``controller.auth``).

    Sets ``eng.token`` and ``eng.auth_headers`` and gives ``eng.client`` the token."""
    from easyfaas.client import EngineClient

    token_path = Path(eng.data_dir) / "data" / "token"
    eng.token = token_path.read_text().strip() if token_path.exists() else None
    eng.auth_headers = {"Authorization": f"Bearer {eng.token}"} if eng.token else {}
    if eng.token:
        with contextlib.suppress(Exception):
            eng.client.close()
        eng.client = EngineClient(eng.endpoint, token=eng.token)


def hello_dir(base: Path, **spec: Any) -> Path:
    """A function directory with the examples/hello handler, with spec overrides."""
    from easyfaas.testing import write_function

    return write_function(base, (HELLO / "handler.py").read_text(), **{"runtime": "python", **spec})


def deploy_many(eng: Any, fdir: Path, names: list[str], threads: int = 4) -> float:
    """Deploy ``fdir`` under each name with a few client threads; returns seconds taken."""
    from concurrent.futures import ThreadPoolExecutor

    from easyfaas.client import EngineClient, load_function_dir

    spec, archive = load_function_dir(fdir, {})
    clients = [EngineClient(eng.endpoint, token=getattr(eng, "token", None)) for _ in range(threads)]
    t0 = time.perf_counter()
    try:
        with ThreadPoolExecutor(threads) as ex:
            list(
                ex.map(
                    lambda i: clients[i % threads].deploy(names[i], {**spec, "name": names[i]}, archive),
                    range(len(names)),
                )
            )
    finally:
        for c in clients:
            c.close()
    return time.perf_counter() - t0


def pool_ready(eng: Any, runtime: str = "python") -> int:
    import httpx

    try:
        health = httpx.get(f"{eng.endpoint}/v1/health", timeout=5).json()
        return int(health["funclet"]["pool_ready"].get(runtime, 0))
    except (httpx.HTTPError, KeyError, ValueError):
        return -1


def wait_pool(eng: Any, target: int, timeout: float = 10.0, poll: float = 0.02, runtime: str = "python") -> float:
    """Wait until the funclet's generic pool of ``runtime`` holds ``target`` sandboxes; returns seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if pool_ready(eng, runtime) >= target:
            break
        time.sleep(poll)
    return time.perf_counter() - t0


# --------------------------------------------------------------------------------------------
# a raw HTTP/1.1 keep-alive client: as little client overhead as a Python client can have


class RawHttp:
    def __init__(self, host: str, port: int) -> None:
        self.addr = (host, port)
        self.sock: socket.socket | None = None
        self.buf = b""

    @classmethod
    def for_url(cls, url: str) -> RawHttp:
        host, port = url.split("//", 1)[1].rstrip("/").rsplit(":", 1)
        return cls(host, int(port))

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(self.addr)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.buf = sock, b""
        return sock

    def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
                ) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
        sock = self.sock or self._connect()
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
        for k, v in (headers or {}).items():
            head += f"{k}: {v}\r\n"
        sock.sendall(head.encode() + b"\r\n" + body)
        while b"\r\n\r\n" not in self.buf:
            chunk = sock.recv(65536)
            if not chunk:
                self.close()
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        raw_head, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = raw_head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        n = int(hdrs.get("content-length", "0"))
        while len(rest) < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection mid-body")
            rest += chunk
        self.buf = rest[n:]
        if hdrs.get("connection", "").lower() == "close":
            self.close()
        return status, hdrs, rest[:n]

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def sequential_latency(url: str, path: str, n: int, warmup: int = 50, method: str = "GET") -> dict[str, Any]:
    """p50/p99 of ``n`` sequential keep-alive requests (ms) with the raw client."""
    client = RawHttp.for_url(url)
    try:
        for _ in range(warmup):
            status, _, body = client.request(method, path)
            if status != 200:
                raise RuntimeError(f"{path}: HTTP {status}: {body[:300]!r}")
        times = []
        clock = time.perf_counter_ns
        for _ in range(n):
            t0 = clock()
            status, _, _ = client.request(method, path)
            times.append((clock() - t0) / 1e6)
            if status != 200:
                raise RuntimeError(f"{path}: HTTP {status}")
    finally:
        client.close()
    return summary(times)


# --------------------------------------------------------------------------------------------
# wrk


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"cannot parse duration {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(url: str, connections: int, duration: int = 10, threads: int = 2) -> dict[str, Any]:
    """``wrk -tT -cN -dDs --latency URL``; wrk needs connections >= threads, so c1 runs with -t1."""
    threads = max(1, min(threads, connections))
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    text = out.stdout
    result: dict[str, Any] = {"cmd": " ".join(cmd)}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    result["rps"] = float(m.group(1)) if m else float("nan")
    for p in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{p}%\s+(\S+)", text, re.M)
        result[f"p{p}_ms"] = _ms(m.group(1)) if m else float("nan")
    m = re.search(r"(\d+) requests in", text)
    result["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    result["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors:(.*)", text)
    result["socket_errors"] = m.group(1).strip() if m else ""
    if out.returncode != 0 or not result["requests"]:
        result["error"] = (out.stderr or text)[-500:]
    return result


# --------------------------------------------------------------------------------------------
# processes: CPU ticks and memory


def cpu_ticks(pids: list[int]) -> int:
    """utime+stime+cutime+cstime (fields 14-17 of /proc/PID/stat) summed over ``pids``."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15])
    return total


TICK = os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    import psutil

    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.Error:
        return float("nan")


def run_json(cmd: list[str], timeout: float) -> dict[str, Any]:
    """Run a suite script that writes JSON; return its figures or an error record."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([*cmd, "--json", str(out)], stdout=subprocess.DEVNULL, stderr=err, text=True)
        try:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.terminate()  # the suite unwinds: its engines and servers stop
                try:
                    proc.wait(45)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                return {"error": f"timed out after {timeout:.0f}s"}
            err.seek(0)
            if proc.returncode != 0:
                return {"error": f"exit {proc.returncode}: {err.read()[-2000:]}"}
            return json.loads(out.read_text())
        finally:
            out.unlink(missing_ok=True)
