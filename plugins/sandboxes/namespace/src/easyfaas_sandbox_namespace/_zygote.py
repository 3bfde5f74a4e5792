"""The zygote: a warm interpreter that forks ready-to-serve sandboxes (namespaces, cgroups, pivot_root).

Standard library only; the driver runs it as ``python -I -S -B _zygote.py CONTROL_FD``.
"""

from __future__ import annotations

import fcntl
import gc
import importlib
import importlib.util
import json
import os
import resource
import selectors
import signal
import socket
import stat
import struct
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn


def _load_linux() -> ModuleType:
    # -I keeps this file's directory off sys.path, and the package is not importable from the
    # runtime's interpreter anyway: load the sibling module by path.
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_linux.py")
    spec = importlib.util.spec_from_file_location("_easyfaas_ns_linux", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if TYPE_CHECKING or __name__ != "__main__":  # imported by the driver for its constants
    from easyfaas_sandbox_namespace import _linux as L
else:
    L = _load_linux()

__all__ = [
    "CODE_DIR",
    "RUNNER_DIR",
    "SOCKET_DIR",
    "SOCKET_NAME",
    "RunnerSpec",
    "SetupError",
    "Template",
    "Zygote",
    "main",
]

#: Where things appear inside every sandbox.
RUNNER_DIR = "/runner"
CODE_DIR = "/code"
SOCKET_DIR = "/run/easyfaas"
SOCKET_NAME = "runner.sock"

_NAMESPACES = L.CLONE_NEWNS | L.CLONE_NEWUTS | L.CLONE_NEWIPC | L.CLONE_NEWNET
_RO = L.MS_RDONLY | L.MS_NOSUID | L.MS_NODEV
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_SO_ACCEPTCON = 0x10000
_DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9))
_DEV_LINKS = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("shm", "/tmp"),  # POSIX semaphores (multiprocessing) want a tmpfs here
)


class SetupError(Exception):
    """A step of building a sandbox failed; the message names the step."""


def _send_line(fd: int, line: str) -> None:
    try:
        os.write(fd, (line.replace("\n", " ") + "\n").encode("utf-8", "replace"))
    except OSError:
        pass  # the driver stopped listening: it is destroying this sandbox


def _write(path: str, data: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def _close_fds_except(keep: set[int]) -> None:
    low = 3
    for fd in sorted(k for k in keep if k >= 3):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)


class RunnerSpec:
    """What the runner process needs, and nothing else: no host path, no zygote state."""

    __slots__ = ("command", "entry", "entry_takes_sock", "env", "gid", "seccomp", "uid")

    def __init__(self, config: dict[str, Any]) -> None:
        self.uid = int(config["uid"])
        self.gid = int(config["gid"])
        self.env: dict[str, str] = dict(config["env"])
        self.command: list[str] = list(config["command"])
        self.seccomp = L.seccomp_program() if config.get("seccomp", True) else None
        self.entry: Callable[..., Any] | None = None
        self.entry_takes_sock = False


class Template:
    """How every sandbox of this runtime is built; fixed for the zygote's life."""

    __slots__ = ("config", "last_cap", "runner")

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.runner = RunnerSpec(config)
        with open("/proc/sys/kernel/cap_last_cap") as f:
            self.last_cap = int(f.read())


class Zygote:
    """One per runtime. Serves fork requests over a SOCK_SEQPACKET control socket.

    Processes of one sandbox, and who does what::

        zygote (root, host namespaces; imported the runner, gc.freeze()d)
        └── init     pid 1 of a new pid namespace: joins the cgroups, unshares mount/net/uts/ipc,
            │        prepares what the runner inherits, then drops every capability (it keeps uid 0,
            │        so the function, another uid, cannot signal it) and reaps orphans
            ├── builder  pid 2, short-lived: mounts the root, pivot_roots (for init too: same mount
            │            namespace), sets the host name, brings up loopback, exits
            └── runner   pid 3: uid/gid of the sandbox, no capabilities, no_new_privs, seccomp, clean
                         environment; calls the runtime's Python entry or execs its command

    The builder exists for memory: the setup's pages die with it instead of being held by init and
    copied again by the runner.

    Messages to the driver go through a per-sandbox pipe whose write end the driver passes in:
    ``ok`` once the runner listens, ``err <text>`` if setup failed, ``exit <wait status>`` when the
    runner ended. The pipe reaching EOF means the init process is gone.
    """

    def __init__(self, control: socket.socket, config: dict[str, Any]) -> None:
        self.control = control
        self.template = Template(config)
        self.children: set[int] = set()
        self.pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def prepare(self) -> None:
        config = self.template.config
        for procs in config["cgroups"]:
            _write(procs, "0")
        L.set_name("efaas-zygote")
        os.chdir("/")
        os.umask(0o022)
        entry = config.get("entry")
        if entry:
            sys.path.insert(0, config["runner_dir"])
            module = importlib.import_module(entry[0])
            func = getattr(module, entry[1])
            code = getattr(func, "__code__", None)
            # A runner that accepts an already-listening socket makes readiness exact, without
            # polling. Checked without `inspect`, whose imports every sandbox would pay for.
            if code is not None:
                names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
                self.template.runner.entry_takes_sock = "sock" in names
            self.template.runner.entry = func
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.set_wakeup_fd(self.wake_w)
        # Freeze after every import: forked sandboxes then share those pages instead of
        # copying them when the collector walks the heap.
        gc.collect()
        gc.freeze()

    def serve(self) -> tuple[dict[str, Any], int] | None:
        """Serve until the driver leaves (``None``); in a forked child, return its (request, status fd)."""
        selector = selectors.DefaultSelector()
        selector.register(self.control, selectors.EVENT_READ)
        selector.register(self.wake_r, selectors.EVENT_READ)
        try:
            while True:
                for key, _ in selector.select():
                    if key.fileobj == self.wake_r:
                        _drain(self.wake_r)
                        self.reap()
                        continue
                    try:
                        msg, fds, _flags, _addr = socket.recv_fds(self.control, 65536, 4)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except ConnectionError:
                        msg, fds = b"", []
                    if not msg:
                        # The driver is gone (stopped or crashed): its sandboxes are unreachable.
                        for pid in self.children:
                            try:
                                os.kill(pid, signal.SIGKILL)
                            except ProcessLookupError:
                                pass
                        return None
                    child = self.handle(json.loads(msg), fds)
                    if child is not None:
                        return child
        finally:
            selector.close()

    def reap(self) -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)

    def reply(self, payload: dict[str, Any], fds: list[int] | None = None) -> None:
        socket.send_fds(self.control, [json.dumps(payload).encode()], fds or [])

    def handle(self, req: dict[str, Any], fds: list[int]) -> tuple[dict[str, Any], int] | None:
        seq = req.get("seq", 0)
        if req.get("op") != "fork" or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            self.reply({"seq": seq, "error": f"bad request {req.get('op')!r} with {len(fds)} descriptors"})
            return None
        status_w = fds[0]
        os.set_inheritable(status_w, False)  # an exec'd runner must not keep it
        try:
            # The next child becomes pid 1 of a fresh pid namespace. Resetting right after the
            # fork lets the zygote do it again: unshare refuses while pid_for_children differs.
            L.unshare(L.CLONE_NEWPID)
            try:
                pid = os.fork()
            except OSError:
                L.setns(self.pidns, L.CLONE_NEWPID)
                raise
            if pid != 0:
                L.setns(self.pidns, L.CLONE_NEWPID)
        except OSError as exc:
            os.close(status_w)
            self.reply({"seq": seq, "error": f"fork: {exc}"})
            return None
        if pid == 0:
            return req, status_w
        self.children.add(pid)
        os.close(status_w)
        # Opened before the child can be reaped (we reap only in this loop), so the pidfd is
        # race-free, unlike a bare pid that could be reused.
        pidfd = os.pidfd_open(pid)
        try:
            self.reply({"seq": seq, "pid": pid}, [pidfd])
        finally:
            os.close(pidfd)
        return None


def init_main(template: Template, req: dict[str, Any], status_w: int) -> NoReturn:
    """Pid 1 of a new sandbox: enter its namespaces, have it built, start the runner, then reap.

    A short-lived builder process does the setup (mounts, pivot_root, host name, loopback) for
    the namespaces it shares with init, and exits: its pages are freed, so neither init nor the
    runner carries the setup's memory, and init stays almost entirely shared with the zygote.
    """
    stage = "starting"
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        _close_fds_except({status_w})
        os.setsid()
        stage = "joining cgroups"
        for procs in req["cgroups"]:
            _write(procs, "0")
        stage = "unsharing namespaces"
        L.unshare(_NAMESPACES)
        stage = "building the root"
        builder = os.fork()
        if builder == 0:
            builder_main(template.config, req, status_w)
        _, status = os.waitpid(builder, 0)
        if status != 0:
            raise SetupError(f"the builder failed{_status_text(status)}")  # it reported why first
        del req
        # What the runner inherits is prepared here, before its fork, so the runner itself
        # writes (and so copies) as few pages as possible: it switches identity and serves.
        stage = "redirecting stdio"
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        host_runner_dir = template.config["runner_dir"]
        sys.path[:] = [RUNNER_DIR if p == host_runner_dir else p for p in sys.path]
        sys.path_importer_cache.pop(host_runner_dir, None)
        sys.argv[:] = [f"{RUNNER_DIR}/runner"]
        stage = "dropping the capability bounding set"
        L.drop_bounding_set(template.last_cap)
        spec = template.runner
        del template, host_runner_dir  # the function's frames lead back here: keep host paths out
        stage = "preparing the runner's environment"
        os.environ.clear()
        os.environ.update(spec.env)
        os.chdir("/tmp")
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        sock = None
        if spec.entry is not None and spec.entry_takes_sock:
            stage = "listening on the runner socket"
            old = os.umask(0o077)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(f"{SOCKET_DIR}/{SOCKET_NAME}")
            sock.listen(16)
            os.umask(old)
        L.set_no_new_privs()
        if spec.seccomp is not None:
            stage = "installing the seccomp filter"
            L.install_seccomp(spec.seccomp)  # init is filtered too: it needs none of those calls
        stage = "forking the runner"
        runner = os.fork()
        if runner == 0:
            runner_main(spec, status_w, sock)
        if sock is not None:
            sock.close()
        L.set_name("efaas-init")
        stage = "dropping privileges of init"
        L.drop_capabilities()  # keeps uid 0, so the function (another uid) cannot signal init
        if sock is None:
            stage = "waiting for the runner to listen"
            if not _wait_listening(f"{SOCKET_DIR}/{SOCKET_NAME}", runner):
                raise SetupError("the runner exited before it listened on its socket")
            _send_line(status_w, "ok")
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the driver, then exit
        _send_line(status_w, f"err {stage}: {exc}")
        os._exit(1)
    _reap(runner, status_w)


def builder_main(cfg: dict[str, Any], req: dict[str, Any], status_w: int) -> NoReturn:
    """Build the sandbox for the mount, UTS and net namespaces it shares with init, then exit."""
    stage = "building the root"
    try:
        build_root(cfg, req)
        stage = "configuring the host name and loopback"
        socket.sethostname(cfg.get("hostname", "sandbox"))
        _loopback_up()
    except BaseException as exc:  # noqa: BLE001 - report, init turns the exit into a failure
        _send_line(status_w, f"err {stage}: {exc}")
        os._exit(1)
    os._exit(0)


def _status_text(status: int) -> str:
    if os.WIFEXITED(status):
        return f" (exit code {os.WEXITSTATUS(status)})"
    if os.WIFSIGNALED(status):
        return f" (signal {os.WTERMSIG(status)})"
    return ""


def build_root(cfg: dict[str, Any], req: dict[str, Any]) -> None:
    """Assemble the sandbox's root on a small tmpfs and pivot_root into it."""
    root = cfg["root"]
    # Our mounts must not leak to the host; host mounts still reach us, which is how the
    # driver's later bind of the function code appears at /code.
    L.mount(None, "/", None, L.MS_REC | L.MS_SLAVE)
    # No nodev: the device nodes below live on this tmpfs.
    L.mount("tmpfs", root, "tmpfs", L.MS_NOSUID, "size=1m,nr_inodes=4096,mode=755")
    for kind, source, dest in cfg["layout"]:
        target = root + dest
        if kind == "symlink":
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.symlink(source, target)
        else:
            _bind_private(source, target, _RO, is_dir=kind == "dir")
    _bind_private(cfg["runner_dir"], root + RUNNER_DIR, _RO, is_dir=True)
    # /code stays a slave of the driver's shared anchor, so warmup's mount propagates in.
    target = root + CODE_DIR
    os.mkdir(target, 0o755)
    L.mount(req["code_dir"], target, None, L.MS_BIND)
    L.mount(None, target, None, L.MS_REMOUNT | L.MS_BIND | _RO)
    _bind_private(req["sock_dir"], root + SOCKET_DIR, L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC, is_dir=True)
    os.mkdir(root + "/tmp", 0o1777)
    L.mount("tmpfs", root + "/tmp", "tmpfs", L.MS_NOSUID | L.MS_NODEV, f"size={int(cfg['tmp_size'])},mode=1777")
    os.mkdir(root + "/proc", 0o555)
    L.mount("proc", root + "/proc", "proc", L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC)
    dev = root + "/dev"
    os.mkdir(dev, 0o755)
    for name, major, minor in _DEVICES:
        os.mknod(f"{dev}/{name}", stat.S_IFCHR | 0o666, os.makedev(major, minor))
        os.chmod(f"{dev}/{name}", 0o666)  # the umask took some bits
    for name, link in _DEV_LINKS:
        os.symlink(link, f"{dev}/{name}")
    etc = root + "/etc"
    os.makedirs(etc, 0o755, exist_ok=True)
    for name in ("passwd", "group", "hosts"):
        try:
            fd = os.open(f"{etc}/{name}", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError:
            continue  # an extra read-only path brought its own
        with os.fdopen(fd, "w") as f:
            f.write(cfg[name])
    os.chdir(root)
    L.pivot_root(".", ".")
    L.umount(".", L.MNT_DETACH)  # the old root, which pivot_root(".", ".") stacked on top
    os.chdir("/")
    L.mount(None, "/", None, L.MS_REMOUNT | L.MS_BIND | L.MS_RDONLY | L.MS_NOSUID)


def runner_main(spec: RunnerSpec, status_w: int, sock: socket.socket | None) -> NoReturn:
    """The function's process: switch to the unprivileged identity, then serve (or exec the runner)."""
    stage = "dropping privileges"
    try:
        L.set_name("efaas-runner")
        os.setgroups([])
        os.setresgid(spec.gid, spec.gid, spec.gid)
        os.setresuid(spec.uid, spec.uid, spec.uid)  # clears every capability: no uid is 0 any more
        path = f"{SOCKET_DIR}/{SOCKET_NAME}"
        if spec.entry is None:
            stage = "executing the runner"
            # Python ignores these; an ignored signal stays ignored across execve.
            for signum in (signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(signum, signal.SIG_DFL)
            os.execve(spec.command[0], spec.command, spec.env)  # the status pipe is close-on-exec
        elif sock is not None:
            stage = "warming the import machinery"
            _warm_import()
            _send_line(status_w, "ok")
            os.close(status_w)  # before any function code can run
            stage = "serving"
            spec.entry(path, sock=sock)
        else:
            stage = "warming the import machinery"
            _warm_import()
            os.close(status_w)
            stage = "serving"
            spec.entry(path)
    except BaseException as exc:  # noqa: BLE001 - report, then end this process only
        if stage != "serving":
            _send_line(status_w, f"err runner {stage}: {exc}")
        os._exit(1)
    os._exit(0)


def _warm_import() -> None:
    """Import a throwaway source module once, the way a runner imports a handler.

    A forked process copies each shared page on its first write, and importing from source
    writes to many (reference counts of the import machinery and the compiler). Doing it here,
    while the sandbox waits in the pool, makes those copies before the cold start needs them:
    LOAD then takes a fraction of the time, for the same memory.
    """
    name = f"_easyfaas_warm_{os.getpid()}"
    directory = f"/tmp/.{name}"
    os.mkdir(directory, 0o700)
    try:
        with open(f"{directory}/{name}.py", "w") as f:
            f.write("import json\n\ndef handler(event, context):\n    return json.dumps(json.loads(event))\n")
        sys.path.insert(0, directory)
        try:
            importlib.import_module(name).handler('{"event": [1, 2.5, "x", null]}', None)
        finally:
            sys.path.remove(directory)
            sys.path_importer_cache.pop(directory, None)
            sys.modules.pop(name, None)
    finally:
        for entry in os.listdir(directory):
            os.unlink(f"{directory}/{entry}")
        os.rmdir(directory)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _bind_private(source: str, target: str, flags: int, *, is_dir: bool) -> None:
    if is_dir:
        os.makedirs(target, 0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
    L.mount(source, target, None, L.MS_BIND)
    L.mount(None, target, None, L.MS_REMOUNT | L.MS_BIND | flags)
    # Cut propagation from the host: a mount appearing later under /usr/lib on the host
    # must not show up (possibly writable) in here.
    L.mount(None, target, None, L.MS_PRIVATE)


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = fcntl.ioctl(s, _SIOCGIFFLAGS, struct.pack("16sH14x", b"lo", 0))
        flags = struct.unpack("16sH14x", ifreq)[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


def _wait_listening(path: str, runner: int) -> bool:
    """Poll /proc/net/unix until ``path`` is a listening socket; False if the runner died first."""
    delay = 0.0005
    while True:
        with open("/proc/net/unix") as f:
            next(f)
            for line in f:
                fields = line.split()
                if len(fields) >= 8 and fields[7] == path and int(fields[3], 16) & _SO_ACCEPTCON:
                    return True
        pid, _ = os.waitpid(runner, os.WNOHANG)
        if pid:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.01)


def _reap(runner: int, status_w: int) -> NoReturn:
    """Reap every orphan of the namespace; report the runner's end, then end it all.

    When pid 1 exits the kernel kills whatever else is left in the namespace.
    """
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            os._exit(0)
        if pid == runner:
            _send_line(status_w, f"exit {status}")
            os._exit(0)


def main(argv: list[str]) -> None:
    control = socket.socket(fileno=int(argv[1]))
    msg, _fds, _flags, _addr = socket.recv_fds(control, 1 << 20, 0)
    try:
        zygote = Zygote(control, json.loads(msg))
        zygote.prepare()
    except BaseException as exc:
        socket.send_fds(control, [json.dumps({"seq": 0, "error": f"{type(exc).__name__}: {exc}"}).encode()], [])
        raise SystemExit(1) from exc
    del msg
    socket.send_fds(control, [json.dumps({"seq": 0, "pid": os.getpid()}).encode()], [])
    child = zygote.serve()
    if child is None:
        return
    # In a freshly forked sandbox. Let go of the zygote (its control socket, its state) so
    # nothing of it is reachable from the function's frames; init closes the descriptors.
    template, (req, status_w) = zygote.template, child
    control.detach()
    del zygote, child, control
    init_main(template, req, status_w)


if __name__ == "__main__":
    main(sys.argv)
    # Skip interpreter teardown: nothing to flush, and it would touch every frozen object.
    os._exit(0)
