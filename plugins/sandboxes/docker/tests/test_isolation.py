"""Adversarial functions against the docker sandbox: each tries to break out and must fail.

Every test also checks that a brand-new sandbox still works afterwards.
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
from easyfaas_sandbox_docker import DockerSandbox

FunctionFactory = Callable[[str], str]
Healthy = Callable[[DockerSandbox], Awaitable[None]]

ZERO_CAPS = "0000000000000000"

IDENTITY = """
import os, socket

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
        "hostname": socket.gethostname(),
        "status": {k: status.get(k) for k in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")},
        "mounts": mounts,
        "root": sorted(os.listdir("/")),
        "env": dict(os.environ),
        "procs": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "ifaces": [name for _, name in socket.if_nameindex()],
        "dev": sorted(os.listdir("/dev")),
    }
"""

READER = """
import os

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


def _container_processes(runner_pid: int) -> list[psutil.Process]:
    """The container's init (docker-init, the runner's parent on the host) and everything under it."""
    init = psutil.Process(runner_pid).parent()
    assert init is not None
    return [init, *init.children(recursive=True)]


async def test_identity_privileges_and_view(
    bind: Any, assert_healthy: Healthy, driver: DockerSandbox, make_function: FunctionFactory
) -> None:
    instance = await bind(driver, make_function(IDENTITY))
    got = await instance.result()
    assert got["ids"][:4] == [65534, 65534, 65534, 65534]
    assert set(got["ids"][4]) <= {65534}  # no supplementary group beyond its own
    assert (
        got["procs"] == [1, got["procs"][1]] and len(got["procs"]) == 2
    )  # docker-init and the runner, nothing of the host
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
    for path in ("/", "/code", "/runner", "/usr"):
        assert "ro" in mounts[path], (path, mounts[path])
    assert {"ro", "nosuid", "nodev"} <= set(mounts["/code"])
    assert "rw" in mounts["/tmp"]
    assert "/dev/shm" not in mounts  # /tmp is the only writable place
    assert set(got["root"]) <= {
        ".dockerenv", "bin", "code", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "root", "run",
        "runner", "sbin", "sys", "tmp", "usr",
    }  # fmt: skip
    for absent in ("var", "boot", "work", "mnt", "srv", "home", "opt"):
        assert absent not in got["root"]
    assert set(got["env"]) <= {"PATH", "HOME", "TMPDIR", "LANG", "USER", "HOSTNAME"}
    assert got["ifaces"] == ["lo"]
    assert "shm" not in got["dev"]
    await assert_healthy(driver)


async def test_host_secrets_and_engine_state_are_invisible(
    bind: Any, assert_healthy: Healthy, driver: DockerSandbox, make_function: FunctionFactory, state_dir: Path
) -> None:
    root_entries = [f"/root/{e}" for e in os.listdir("/root") if e != ".pyenv"] if os.path.isdir("/root") else []
    instance = await bind(driver, make_function(READER))
    got = await instance.result(
        {
            "read": ["/etc/shadow", "/etc/gshadow", "/etc/passwd", *root_entries],
            "list": ["/root", str(state_dir), "/work", "/home", "/var", "/var/run", "/var/lib/docker"],
        }
    )
    assert got["/etc/shadow"] == "FileNotFoundError"
    assert got["/etc/gshadow"] == "FileNotFoundError"
    for path in (str(state_dir), "/work", "/home", "/var", "/var/run", "/var/lib/docker"):
        assert got[f"ls {path}"] == "FileNotFoundError", path
    # /root exists only as the way to the Python install when it lives there (pyenv).
    assert got["ls /root"] in ("FileNotFoundError", [".pyenv"])
    for entry in root_entries:
        assert got[entry] == "FileNotFoundError", entry
    users = {line.split(":")[0] for line in got["/etc/passwd"].splitlines()}
    assert users == {"root", "sandbox"}
    await assert_healthy(driver)


async def test_python_install_shows_only_what_the_runtime_asked_for(
    bind: Any, assert_healthy: Healthy, driver: DockerSandbox, make_function: FunctionFactory
) -> None:
    prefix = os.path.realpath(PythonRuntime().host_paths()[0])
    if prefix == "/usr" or prefix.startswith("/usr/"):
        pytest.skip("this host's Python lives under /usr, which is bound whole")
    parent = os.path.dirname(prefix)
    instance = await bind(driver, make_function(READER))
    got = await instance.result({"list": [parent]})
    assert got[f"ls {parent}"] == [os.path.basename(prefix)]
    await assert_healthy(driver)


async def test_other_functions_code_is_invisible(
    bind: Any, assert_healthy: Healthy, driver: DockerSandbox, make_function: FunctionFactory
) -> None:
    victim_code = make_function("def handler(event, context):\n    return 'victim'\n")
    Path(victim_code, "secret.txt").write_text("TOP-SECRET-OF-A")
    os.chmod(Path(victim_code, "secret.txt"), 0o644)
    victim = await bind(driver, victim_code, key="victim:1")
    attacker = await bind(driver, make_function(READER), key="attacker:1")
    got = await attacker.result(
        {
            "read": [f"{victim_code}/secret.txt", "/code/secret.txt"],
            "list": ["/code", victim_code, str(driver.state_dir / "mnt"), "/run/easyfaas"],
        }
    )
    assert got[f"{victim_code}/secret.txt"] == "FileNotFoundError"
    assert got["/code/secret.txt"] == "FileNotFoundError"
    assert got["ls /code"] == ["handler.py"]
    assert got[f"ls {victim_code}"] == "FileNotFoundError"
    assert got[f"ls {driver.state_dir / 'mnt'}"] == "FileNotFoundError"
    assert got["ls /run/easyfaas"] == ["runner.sock"]  # its own socket only
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
    monkeypatch.setenv("EASYFAAS_DOCKER_TEST_SECRET", "hunter2-engine-secret")
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
    instance = await bind(driver, make_function(source), env={"OWN": "mine"})
    got = await instance.result()
    assert "hunter2-engine-secret" not in str(got)
    assert "EASYFAAS_DOCKER_TEST_SECRET" not in got["env"]
    assert got["env"]["OWN"] == "mine"  # the function's own environment arrives through LOAD
    await assert_healthy(driver)


async def test_writes_outside_tmp_fail(
    bind: Any, assert_healthy: Healthy, driver: DockerSandbox, make_function: FunctionFactory
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
        for path in ("/evil-dir", "/code/evil-dir", "/run/easyfaas/evil-dir", "/root/evil-dir"):
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
        "/etc/hosts",
        "/usr/lib/evil",
        "/dev/evil",
        "/dev/shm/evil",
        "/run/easyfaas/evil",
        "/proc/sys/kernel/hostname",
        "/sys/kernel/evil",
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
    bind: Any, assert_healthy: Healthy, driver: DockerSandbox, make_function: FunctionFactory
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
    bind: Any, assert_healthy: Healthy, driver: DockerSandbox, make_function: FunctionFactory
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
    assert got["forked"] <= 14  # docker-init and the runner count against the 16
    procs = _container_processes(instance.info.pid)
    assert len(procs) == 16
    await instance.close()
    await driver.destroy(instance.id)
    _, alive = psutil.wait_procs(procs, timeout=10)
    assert alive == []
    await assert_healthy(driver)


async def test_memory_limit_ends_the_instance_as_oom_killed(
    bind: Any, assert_healthy: Healthy, next_event: Any, driver: DockerSandbox, make_function: FunctionFactory
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
    bind: Any, assert_healthy: Healthy, driver: DockerSandbox, make_function: FunctionFactory
) -> None:
    accepted: list[object] = []
    server = await asyncio.start_server(lambda r, w: accepted.append(w), "0.0.0.0", 0)
    host_port = server.sockets[0].getsockname()[1]
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind(b"\0easyfaas-docker-test-" + str(os.getpid()).encode())
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
        try:
            socket.getaddrinfo("example.com", 80)
            out["dns"] = "resolved"
        except OSError as e:
            out["dns"] = type(e).__name__
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
        targets += [[ip, host_port] for ip in host_ips if ip != "127.0.0.1"]
        got = await instance.result({"tcp": targets, "abstract": "\0easyfaas-docker-test-" + str(os.getpid())})
    finally:
        server.close()
        abstract.close()
    assert got.pop("own loopback") == "ok"
    assert got.pop(f"127.0.0.1:{host_port}") == "ECONNREFUSED"  # the container's own, empty loopback
    assert got.pop("abstract") == "ECONNREFUSED"  # abstract unix sockets belong to the net namespace
    assert got.pop("dns") == "gaierror"
    for target, outcome in got.items():
        assert outcome == "ENETUNREACH", (target, outcome)
    assert accepted == []
    await assert_healthy(driver)


async def test_cannot_signal_or_ptrace_anything_outside(
    bind: Any, assert_healthy: Healthy, driver: DockerSandbox, make_function: FunctionFactory
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

        attempt("kill host pid", lambda: os.kill(event["host"], signal.SIGKILL))
        attempt("kill dockerd", lambda: os.kill(event["dockerd"], signal.SIGKILL))
        attempt("kill everyone", lambda: os.kill(-1, signal.SIGKILL))
        attempt("ptrace host pid", lambda: ptrace(event["host"]))
        # The container's init ignores SIGKILL sent from inside its own pid namespace.
        attempt("kill init", lambda: os.kill(1, signal.SIGKILL))
        return out
    """
    dockerd = next((p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "dockerd"), 1)
    instance = await bind(driver, make_function(source))
    got = await instance.result({"host": os.getpid(), "dockerd": dockerd})
    assert got.pop("kill init") in ("ok", "EPERM")
    assert got == {
        "kill host pid": "ESRCH",
        "kill dockerd": "ESRCH",
        "kill everyone": "ESRCH",
        "ptrace host pid": "ESRCH",
    }
    assert psutil.pid_exists(dockerd)
    assert (await instance.result({"host": os.getpid(), "dockerd": dockerd}))[
        "kill host pid"
    ] == "ESRCH"  # still serving
    await assert_healthy(driver)


async def test_mounts_and_new_namespaces_are_refused(
    bind: Any, assert_healthy: Healthy, driver: DockerSandbox, make_function: FunctionFactory
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
    bind: Any, assert_healthy: Healthy, driver: DockerSandbox, make_function: FunctionFactory
) -> None:
    real_id = shutil.which("id")
    if real_id is None:
        pytest.skip("no id(1) binary on this host to make setuid")
    source = """
    import os, subprocess

    def handler(event, context):
        out = {}
        for binary in ("/code/id", event):
            run = subprocess.run([binary, "-u"], capture_output=True, text=True)
            out[binary] = {"euid": run.stdout.strip(), "rc": run.returncode, "stderr": run.stderr}
        with open("/proc/self/status") as f:
            out["nnp"] = [line.split()[1] for line in f if line.startswith("NoNewPrivs")][0]
        return out
    """
    code = make_function(source)
    shutil.copy(real_id, f"{code}/id")
    os.chown(f"{code}/id", 0, 0)
    os.chmod(f"{code}/id", 0o4755)  # setuid root
    host_setuid = next((p for p in ("/usr/bin/su", "/usr/bin/passwd", "/usr/bin/mount") if os.path.exists(p)), None)
    instance = await bind(driver, code)
    got = await instance.result(host_setuid or "/code/id")
    assert got["/code/id"]["rc"] == 0, got
    assert got["/code/id"]["euid"] == "65534"
    assert got["nnp"] == "1"
    if host_setuid:  # the host's own setuid binaries under /usr do not elevate either
        with open(f"/proc/{instance.info.pid}/status") as f:
            assert "Uid:\t65534" in f.read()
        assert got[host_setuid]["euid"] != "0"
    await assert_healthy(driver)


async def test_leftover_children_are_killed_on_destroy(
    bind: Any, assert_healthy: Healthy, driver: DockerSandbox, make_function: FunctionFactory
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
    procs = _container_processes(instance.info.pid)
    assert len(procs) >= 5  # init, runner, child, daemon, subprocess
    await instance.close()
    await driver.destroy(instance.id)
    _, alive = psutil.wait_procs(procs, timeout=10)
    assert alive == []
    await assert_healthy(driver)


async def test_orphans_are_reaped(
    bind: Any, assert_healthy: Healthy, driver: DockerSandbox, make_function: FunctionFactory
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
    assert len(states) == 2  # docker-init and the runner
    await assert_healthy(driver)


async def test_flooding_stdout_is_capped_and_survived(
    bind: Any, assert_healthy: Healthy, driver: DockerSandbox, make_function: FunctionFactory
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
    # What went to fd 1/2 directly is in Docker's log, which is capped on the host's disk.
    logs = await asyncio.to_thread(driver._api.inspect_container, f"easyfaas-{instance.id}")
    log_path = logs["LogPath"]
    assert os.path.getsize(log_path) <= 4 << 20
    await assert_healthy(driver)
