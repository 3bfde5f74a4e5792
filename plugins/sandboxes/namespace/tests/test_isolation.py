"""Adversarial functions against the namespace sandbox: each tries to break out and must fail.

Every test then checks that a brand-new sandbox still works.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from easyfaas.wire import Kind
from easyfaas_runtime_python import PythonRuntime
from easyfaas_sandbox_namespace import NamespaceSandbox

pytestmark = pytest.mark.namespace

FunctionFactory = Callable[[str], str]
Healthy = Callable[[NamespaceSandbox], Awaitable[None]]

ZERO_CAPS = "0000000000000000"

IDENTITY = """
import os, socket, sys

def handler(event, context):
    status = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            status[key] = value.strip()
    mounts = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            mounts[fields[4]] = fields[5].split(",")
    return {
        "ids": [os.getuid(), os.geteuid(), os.getgid(), os.getegid(), os.getgroups()],
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "hostname": socket.gethostname(),
        "status": {k: status.get(k) for k in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")},
        "mounts": mounts,
        "root": sorted(os.listdir("/")),
        "env": dict(os.environ),
        "procs": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "ifaces": [name for _, name in socket.if_nameindex()],
        "own_fds_listable": len(os.listdir("/proc/self/fd")) > 0,
        "dev": sorted(os.listdir("/dev")),
        "sys_path": sys.path,
        "argv": sys.argv,
        "warm_modules": [m for m in sys.modules if "warm" in m],
        "tmp": os.listdir("/tmp"),
    }
"""

READER = """
import errno, os

def handler(event, context):
    out = {}
    for path in event.get("read", []):
        try:
            with open(path, "rb") as f:
                out[path] = f.read().decode("utf-8", "replace")
        except OSError as e:
            out[path] = type(e).__name__
    for path in event.get("list", []):
        try:
            out["ls " + path] = sorted(os.listdir(path))
        except OSError as e:
            out["ls " + path] = type(e).__name__
    return out
"""


def _sandbox_processes(runner_pid: int) -> list[psutil.Process]:
    """Init of the sandbox (the runner's parent, as seen from the host) and everything under it."""
    init = psutil.Process(runner_pid).parent()
    assert init is not None
    return [init, *init.children(recursive=True)]


async def test_identity_privileges_and_view(
    bind: Any, assert_healthy: Healthy, driver: NamespaceSandbox, make_function: FunctionFactory
) -> None:
    instance = await bind(driver, make_function(IDENTITY))
    got = await instance.result()
    assert got["ids"] == [65534, 65534, 65534, 65534, []]
    assert got["pid"] == 3 and got["ppid"] == 1  # pid 1 is the sandbox's reaper (2 built the root and left)
    assert got["procs"] == [1, 3]
    assert got["hostname"] == "sandbox"
    assert got["status"] == {
        "CapEff": ZERO_CAPS,
        "CapPrm": ZERO_CAPS,
        "CapInh": ZERO_CAPS,
        "CapBnd": ZERO_CAPS,
        "CapAmb": ZERO_CAPS,
        "NoNewPrivs": "1",
        "Seccomp": "2",
    }
    mounts = got["mounts"]
    for path in ("/", "/code", "/runner", "/usr/lib"):
        assert "ro" in mounts[path], (path, mounts[path])
    assert "rw" in mounts["/tmp"]
    assert set(got["root"]) <= {
        "code",
        "dev",
        "etc",
        "proc",
        "run",
        "runner",
        "tmp",
        "usr",
        "lib",
        "lib64",
        "lib32",
        "root",
        "opt",
        "home",
    }
    for absent in ("sys", "var", "boot", "work", "mnt", "srv"):
        assert absent not in got["root"]
    assert set(got["env"]) == {"PATH", "HOME", "TMPDIR", "LANG", "USER"}
    assert got["ifaces"] == ["lo"]
    assert got["own_fds_listable"]
    assert set(got["dev"]) == {"null", "zero", "full", "random", "urandom", "fd", "stdin", "stdout", "stderr", "shm"}
    # The pool-time warm-up import leaves no trace, and no host path of the engine shows.
    assert got["warm_modules"] == [] and got["tmp"] == []
    assert got["sys_path"][:2] == ["/code", "/runner"]
    assert not any(str(driver.state_dir) in p for p in got["sys_path"] + got["argv"])
    await assert_healthy(driver)


async def test_host_secrets_and_engine_state_are_invisible(
    bind: Any, assert_healthy: Healthy, driver: NamespaceSandbox, make_function: FunctionFactory, state_dir: Path
) -> None:
    root_entries = [f"/root/{e}" for e in os.listdir("/root") if e != ".pyenv"] if os.path.isdir("/root") else []
    instance = await bind(driver, make_function(READER))
    got = await instance.result(
        {
            "read": ["/etc/shadow", "/etc/gshadow", str(state_dir / "driver.json"), "/etc/passwd", *root_entries],
            "list": ["/root", str(state_dir), "/work", "/home", "/var"],
        }
    )
    assert got["/etc/shadow"] == "FileNotFoundError"
    assert got["/etc/gshadow"] == "FileNotFoundError"
    assert got[str(state_dir / "driver.json")] == "FileNotFoundError"
    assert got[f"ls {state_dir}"] == "FileNotFoundError"
    for path in ("/work", "/home", "/var"):
        assert got[f"ls {path}"] == "FileNotFoundError"
    # /root exists only as the way to the Python install when it lives there (pyenv).
    assert got["ls /root"] in ("FileNotFoundError", [".pyenv"])
    for entry in root_entries:
        assert got[entry] == "FileNotFoundError", entry
    users = {line.split(":")[0] for line in got["/etc/passwd"].splitlines()}
    assert users == {"root", "sandbox"}
    await assert_healthy(driver)


async def test_python_install_shows_only_what_the_runtime_asked_for(
    bind: Any, assert_healthy: Healthy, driver: NamespaceSandbox, make_function: FunctionFactory
) -> None:
    prefix = PythonRuntime().host_paths()[0]
    parent = os.path.dirname(prefix)
    instance = await bind(driver, make_function(READER))
    got = await instance.result({"list": [parent]})
    assert got[f"ls {parent}"] == [os.path.basename(prefix)]
    await assert_healthy(driver)


async def test_other_functions_code_is_invisible(
    bind: Any, assert_healthy: Healthy, driver: NamespaceSandbox, make_function: FunctionFactory
) -> None:
    victim_code = make_function("def handler(event, context):\n    return 'victim'\n")
    Path(victim_code, "secret.txt").write_text("TOP-SECRET-OF-A")
    os.chmod(Path(victim_code, "secret.txt"), 0o644)
    victim = await bind(driver, victim_code, key="victim:1")
    attacker = await bind(driver, make_function(READER), key="attacker:1")
    got = await attacker.result(
        {
            "read": [f"{victim_code}/secret.txt", "/code/secret.txt"],
            "list": ["/code", victim_code, str(driver.state_dir / "mnt")],
        }
    )
    assert got[f"{victim_code}/secret.txt"] == "FileNotFoundError"
    assert got["/code/secret.txt"] == "FileNotFoundError"
    assert got["ls /code"] == ["handler.py"]
    assert got[f"ls {victim_code}"] == "FileNotFoundError"
    assert "TOP-SECRET-OF-A" not in str(got)
    assert await victim.result() == "victim"  # the victim's own view is intact
    await assert_healthy(driver)


async def test_engine_environment_is_not_inherited(
    bind: Any,
    assert_healthy: Healthy,
    driver_factory: Any,
    make_function: FunctionFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EASYFAAS_NS_TEST_SECRET", "hunter2-engine-secret")
    driver = await driver_factory()
    source = """
    import os

    def handler(event, context):
        out = {"env": dict(os.environ)}
        for path in ("/proc/self/environ", "/proc/1/environ"):
            try:
                with open(path, "rb") as f:
                    out[path] = f.read().decode("utf-8", "replace")
            except OSError as e:
                out[path] = type(e).__name__
        return out
    """
    instance = await bind(driver, make_function(source))
    got = await instance.result()
    assert "hunter2-engine-secret" not in str(got)
    assert "EASYFAAS_NS_TEST_SECRET" not in got["env"]
    await assert_healthy(driver)


async def test_writes_outside_tmp_fail(
    bind: Any, assert_healthy: Healthy, driver: NamespaceSandbox, make_function: FunctionFactory
) -> None:
    source = """
    import errno, os

    def handler(event, context):
        out = {}
        for path in event:
            try:
                with open(path, "w") as f:
                    f.write("x")
                out[path] = "written"
            except OSError as e:
                out[path] = errno.errorcode.get(e.errno, str(e))
        for path in ("/evil-dir", "/code/evil-dir", "/run/easyfaas/evil-dir"):
            try:
                os.mkdir(path)
                out["mkdir " + path] = "made"
            except OSError as e:
                out["mkdir " + path] = errno.errorcode.get(e.errno, str(e))
        return out
    """
    targets = [
        "/evil",
        "/code/evil",
        "/code/handler.py",
        "/runner/evil",
        "/runner/easyfaas_runner.py",
        "/etc/passwd",
        "/etc/evil",
        "/usr/lib/evil",
        "/dev/evil",
        "/run/easyfaas/evil",
        "/proc/sys/kernel/hostname",
        "/tmp/fine",
    ]
    instance = await bind(driver, make_function(source))
    got = await instance.result(targets)
    assert got.pop("/tmp/fine") == "written"
    for path, outcome in got.items():
        assert outcome in ("EROFS", "EACCES", "EPERM", "ENOENT"), (path, outcome)
    # Nothing reached the host through the socket directory either.
    assert os.listdir(os.path.dirname(instance.info.socket_path)) == ["runner.sock"]
    await assert_healthy(driver)


async def test_tmp_is_private_and_capped(
    bind: Any, assert_healthy: Healthy, driver: NamespaceSandbox, make_function: FunctionFactory
) -> None:
    source = """
    import errno, os

    def handler(event, context):
        if event == "ls":
            return sorted(os.listdir("/tmp"))
        written = 0
        chunk = b"x" * (1 << 20)
        try:
            with open("/tmp/fill", "wb") as f:
                while written < (1 << 30):
                    f.write(chunk)
                    f.flush()
                    written += len(chunk)
        except OSError as e:
            return {"errno": errno.errorcode.get(e.errno), "written": written}
        return {"errno": None, "written": written}
    """
    instance = await bind(driver, make_function(source))
    got = await instance.result()
    assert got["errno"] == "ENOSPC"
    assert got["written"] <= 8 << 20  # the driver fixture caps /tmp at 8 MiB
    assert (await instance.result())["errno"] == "ENOSPC"  # and the instance lives on
    other = await bind(driver, make_function(source), key="other:1")
    assert await other.result("ls") == []  # another sandbox's /tmp is its own
    await assert_healthy(driver)


async def test_fork_bomb_hits_the_pids_limit(
    bind: Any, assert_healthy: Healthy, driver: NamespaceSandbox, make_function: FunctionFactory
) -> None:
    source = """
    import errno, os, time

    def handler(event, context):
        forked, failures, err = 0, 0, None
        while failures < 30:
            try:
                pid = os.fork()
            except OSError as e:
                failures += 1
                err = errno.errorcode.get(e.errno)
                time.sleep(0.002)
                continue
            if pid == 0:
                while True:  # every child multiplies too
                    try:
                        os.fork()
                    except OSError:
                        time.sleep(0.05)
            forked += 1
        return {"errno": err, "forked": forked}
    """
    instance = await bind(driver, make_function(source), pids_max=16)
    got = await instance.result()
    assert got["errno"] == "EAGAIN"
    assert got["forked"] <= 14  # init and the runner count against the 16
    procs = _sandbox_processes(instance.info.pid)
    assert len(procs) <= 16
    await instance.close()
    await driver.destroy(instance.id)
    _, alive = psutil.wait_procs(procs, timeout=10)
    assert alive == []
    await assert_healthy(driver)


async def test_memory_limit_ends_the_instance_as_oom_killed(
    bind: Any, assert_healthy: Healthy, next_event: Any, driver: NamespaceSandbox, make_function: FunctionFactory
) -> None:
    source = """
    def handler(event, context):
        hog = []
        while True:
            hog.append(b"x" * (8 << 20))
    """
    instance = await bind(driver, make_function(source), memory_mb=64, key="hog:3")
    with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
        await instance.invoke()
    event = await next_event(driver, instance.id)
    assert event.kind == "oom_killed"
    assert event.signal == 9
    assert "hog:3" in event.message and "exceeded its 64 MB memory limit" in event.message
    await instance.close()
    await driver.destroy(instance.id)  # already gone: ignored
    await assert_healthy(driver)


async def test_network_is_loopback_only(
    bind: Any, assert_healthy: Healthy, driver: NamespaceSandbox, make_function: FunctionFactory
) -> None:
    accepted: list[object] = []
    server = await asyncio.start_server(lambda r, w: accepted.append(w), "127.0.0.1", 0)
    host_port = server.sockets[0].getsockname()[1]
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind(b"\0easyfaas-ns-test-" + str(os.getpid()).encode())
    abstract.listen(1)
    host_ips = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs if a.family == socket.AF_INET]
    source = """
    import errno, socket

    def handler(event, context):
        out = {}
        for host, port in event["tcp"]:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(3)
            try:
                s.connect((host, port))
                out[f"{host}:{port}"] = "connected"
            except OSError as e:
                out[f"{host}:{port}"] = errno.errorcode.get(e.errno, type(e).__name__) if e.errno else type(e).__name__
            finally:
                s.close()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(event["abstract"].encode("latin-1"))
            out["abstract"] = "connected"
        except OSError as e:
            out["abstract"] = errno.errorcode.get(e.errno)
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        socket.create_connection(srv.getsockname(), timeout=3).close()
        out["own loopback"] = "ok"
        return out
    """
    try:
        instance = await bind(driver, make_function(source))
        targets = [["127.0.0.1", host_port], ["1.1.1.1", 53], ["10.255.255.1", 80]]
        targets += [[ip, host_port] for ip in host_ips if not ip.startswith("127.")]
        got = await instance.result({"tcp": targets, "abstract": "\0easyfaas-ns-test-" + str(os.getpid())})
    finally:
        server.close()
        abstract.close()
    assert got.pop("own loopback") == "ok"
    assert got.pop(f"127.0.0.1:{host_port}") == "ECONNREFUSED"  # the sandbox's own, empty loopback
    assert got.pop("abstract") == "ECONNREFUSED"  # abstract unix sockets belong to the net namespace
    for target, outcome in got.items():
        assert outcome == "ENETUNREACH", (target, outcome)
    assert accepted == []
    await assert_healthy(driver)


async def test_cannot_signal_or_ptrace_anything_outside(
    bind: Any, assert_healthy: Healthy, driver: NamespaceSandbox, make_function: FunctionFactory
) -> None:
    source = """
    import ctypes, errno, os, signal

    def handler(event, context):
        libc = ctypes.CDLL(None, use_errno=True)
        out = {}

        def attempt(name, fn):
            try:
                fn()
                out[name] = "ok"
            except OSError as e:
                out[name] = errno.errorcode.get(e.errno)

        def ptrace(pid):
            if libc.ptrace(16, pid, None, None) != 0:  # PTRACE_ATTACH
                raise OSError(ctypes.get_errno(), "ptrace")

        attempt("kill init", lambda: os.kill(1, signal.SIGKILL))
        attempt("term init", lambda: os.kill(1, signal.SIGTERM))
        attempt("kill host pid", lambda: os.kill(event, signal.SIGKILL))
        attempt("kill everyone", lambda: os.kill(-1, signal.SIGKILL))
        attempt("ptrace init", lambda: ptrace(1))
        attempt("ptrace host pid", lambda: ptrace(event))
        return out
    """
    instance = await bind(driver, make_function(source))
    got = await instance.result(os.getpid())
    assert got == {
        "kill init": "EPERM",
        "term init": "EPERM",
        "kill host pid": "ESRCH",
        "kill everyone": "ESRCH",
        "ptrace init": "EPERM",
        "ptrace host pid": "ESRCH",
    }
    assert (await instance.result(os.getpid()))["kill init"] == "EPERM"  # init survived: the instance works
    await assert_healthy(driver)


async def test_mounts_and_new_namespaces_are_refused(
    bind: Any, assert_healthy: Healthy, driver: NamespaceSandbox, make_function: FunctionFactory
) -> None:
    source = """
    import ctypes, errno, os

    def handler(event, context):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        out = {}

        def call(name, rc):
            out[name] = "ok" if rc == 0 else errno.errorcode.get(ctypes.get_errno())
            if rc == 0 and name.startswith("clone"):
                os._exit(0)  # only reached if the refusal failed, in the would-be child

        call("mount tmpfs", libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 0, None))
        call("remount /code rw", libc.mount(None, b"/code", None, 0x20 | 0x1000, None))
        call("umount /code", libc.umount2(b"/code", 2))
        call("unshare user", libc.unshare(0x10000000))
        call("unshare user+mount", libc.unshare(0x10000000 | 0x00020000))
        call("unshare mount", libc.unshare(0x00020000))
        call("unshare net", libc.unshare(0x40000000))
        call("clone user", libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0) if os.uname().machine == "x86_64" else -1)
        call("chroot", libc.chroot(b"/tmp"))
        call("sethostname", libc.sethostname(b"evil", 4))
        call("setuid 0", libc.setuid(0))
        return out
    """
    instance = await bind(driver, make_function(source))
    got = await instance.result()
    assert set(got.values()) == {"EPERM"}, got
    await assert_healthy(driver)


async def test_setuid_binary_grants_nothing(
    bind: Any, assert_healthy: Healthy, driver: NamespaceSandbox, make_function: FunctionFactory
) -> None:
    real_id = shutil.which("id")
    if real_id is None:
        pytest.skip("no id(1) binary on this host to make setuid")
    source = """
    import os, subprocess

    def handler(event, context):
        euid = subprocess.run(["/code/id", "-u"], capture_output=True, text=True)
        with open("/proc/self/status") as f:
            nnp = [line.split()[1] for line in f if line.startswith("NoNewPrivs")][0]
        return {"euid": euid.stdout.strip(), "rc": euid.returncode, "stderr": euid.stderr, "nnp": nnp}
    """
    code = make_function(source)
    shutil.copy(real_id, f"{code}/id")
    os.chown(f"{code}/id", 0, 0)
    os.chmod(f"{code}/id", 0o4755)  # setuid root
    instance = await bind(driver, code)
    got = await instance.result()
    assert got["rc"] == 0, got
    assert got["euid"] == "65534"
    assert got["nnp"] == "1"
    await assert_healthy(driver)


async def test_leftover_children_are_killed_on_destroy(
    bind: Any, assert_healthy: Healthy, driver: NamespaceSandbox, make_function: FunctionFactory
) -> None:
    source = """
    import os, subprocess, sys, time

    def handler(event, context):
        if os.fork() == 0:  # a plain child
            time.sleep(3600)
            os._exit(0)
        if os.fork() == 0:  # a daemon: new session, orphaned grandchild
            os.setsid()
            if os.fork() == 0:
                time.sleep(3600)
                os._exit(0)
            os._exit(0)
        subprocess.Popen([sys.executable, "-I", "-S", "-c", "import time; time.sleep(3600)"])
        time.sleep(0.5)
        return "left them running"
    """
    instance = await bind(driver, make_function(source))
    assert await instance.result() == "left them running"
    procs = _sandbox_processes(instance.info.pid)
    assert len(procs) >= 5  # init, runner, child, daemon, subprocess (plus the zombie intermediate)
    await instance.close()
    await driver.destroy(instance.id)
    _, alive = psutil.wait_procs(procs, timeout=10)
    assert alive == []
    await assert_healthy(driver)


async def test_orphans_are_reaped(
    bind: Any, assert_healthy: Healthy, driver: NamespaceSandbox, make_function: FunctionFactory
) -> None:
    source = """
    import os, time

    def handler(event, context):
        pid = os.fork()
        if pid == 0:
            if os.fork() == 0:
                time.sleep(0.2)  # dies as an orphan: pid 1 must reap it
                os._exit(0)
            os._exit(0)
        os.waitpid(pid, 0)
        time.sleep(1.0)
        states = {}
        for p in os.listdir("/proc"):
            if p.isdigit():
                with open(f"/proc/{p}/stat") as f:
                    states[int(p)] = f.read().rsplit(")", 1)[1].split()[0]
        return states
    """
    instance = await bind(driver, make_function(source))
    states = await instance.result()
    assert "Z" not in states.values(), states
    assert sorted(states) == ["1", "3"]
    await assert_healthy(driver)


async def test_flooding_stdout_is_capped_and_survived(
    bind: Any, assert_healthy: Healthy, driver: NamespaceSandbox, make_function: FunctionFactory
) -> None:
    source = """
    import os, sys

    def handler(event, context):
        chunk = "y" * (1 << 20)
        for _ in range(300):
            print(chunk)
        for _ in range(50):
            os.write(1, chunk.encode())
            os.write(2, chunk.encode())
        sys.stderr.write(chunk * 10)
        return "survived"
    """
    instance = await bind(driver, make_function(source))
    kind, meta, body = await instance.invoke()
    assert kind == Kind.RESULT and body == "survived"
    assert meta["truncated"] > 0
    assert len(meta.get("logs", "")) <= 1 << 20
    assert await instance.result() == "survived"
    await assert_healthy(driver)
