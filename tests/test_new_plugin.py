"""scripts/new-plugin scaffolds a runtime plugin whose runner serves the protocol as is."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from easyfaas import wire
from easyfaas.wire import Kind

ROOT = Path(__file__).resolve().parents[1]


def test_a_scaffolded_runtime_loads_and_echoes(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy2(ROOT / "scripts" / "new-plugin", root / "scripts" / "new-plugin")
    shutil.copytree(ROOT / "plugins" / "_template", root / "plugins" / "_template")
    out = subprocess.run([str(root / "scripts" / "new-plugin"), "my_lang"], capture_output=True, text=True, check=True)
    assert "class MyLangRuntime" in out.stdout
    dest = root / "plugins" / "runtimes" / "my_lang"
    assert not list(dest.rglob("*NAME*")), "a placeholder survived in a file name"
    assert "NAME" not in (dest / "src" / "easyfaas_runtime_my_lang" / "runtime.py").read_text().replace(
        "PLUGIN_NAME", ""
    )

    # The runtime class as the funclet uses it: runner files in one directory, its command.
    runner_dir, sock_path = tmp_path / "runner", str(tmp_path / "r.sock")
    script = (
        "import json, sys\n"
        "from easyfaas_runtime_my_lang import MyLangRuntime\n"
        "rt = MyLangRuntime()\n"
        "print(json.dumps({'files': {k: str(v) for k, v in rt.runner_files().items()},\n"
        f"                  'argv': rt.runner_command({str(runner_dir)!r}, {sock_path!r}), 'serial': rt.SERIAL}}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(dest / "src")}
    described = json.loads(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                          check=True).stdout)  # fmt: skip
    assert described["serial"] is True
    runner_dir.mkdir()
    for name, source in described["files"].items():
        (runner_dir / name).symlink_to(source)
    proc = subprocess.Popen(described["argv"], env={"PATH": "/usr/bin:/bin"})
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock_path):
            assert proc.poll() is None and time.monotonic() < deadline, "the runner did not listen"
            time.sleep(0.005)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(sock_path)
            wire.send_frame(sock, Kind.LOAD, 0, {"code_dir": str(tmp_path), "handler": "x", "env": {"A": "b=c"}})
            assert wire.recv_frame(sock)[0] == Kind.LOADED
            # Two calls sent back to back (as the controller prefetches), then a PING.
            sock.sendall(
                wire.encode(Kind.INVOKE, 1, {"rid": "a"}, b'{"n": 1}')
                + wire.encode(Kind.INVOKE, 2, {"rid": "b"}, b'"two"')
            )
            first, second = wire.recv_frame(sock), wire.recv_frame(sock)
            assert (first[0], first[1], first[3]) == (Kind.RESULT, 1, b'{"n": 1}')
            assert (second[0], second[1], second[3]) == (Kind.RESULT, 2, b'"two"')
            wire.send_frame(sock, Kind.LOAD, 0, {"code_dir": str(tmp_path)})
            kind, _, meta, _ = wire.recv_frame(sock)
            assert kind == Kind.LOAD_ERROR and meta["type"] == "ReloadRefused"
            wire.send_frame(sock, Kind.PING, 7)
            assert wire.recv_frame(sock)[:2] == (Kind.PONG, 7)
    finally:
        proc.kill()
        proc.wait()
