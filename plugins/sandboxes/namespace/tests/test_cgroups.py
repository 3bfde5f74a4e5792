"""cgroup detection and the v1/v2 file formats, on recorded mountinfo text and fake cgroup trees.

Pure v2 cannot be mounted beside this host's v1, so its files are checked on a plain directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from easyfaas_sandbox_namespace import _cgroups

HYBRID_MOUNTINFO = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_CGROUP = """\
9:name=systemd:/
8:pids:/
4:memory:/process_api/f63c
2:cpuacct:/
1:cpu:/
0::/
"""


def test_hybrid_host_uses_v1_with_own_cgroups() -> None:
    h = _cgroups.find_hierarchies(HYBRID_MOUNTINFO, HYBRID_CGROUP)
    assert h.v1_own["memory"] == "/sys/fs/cgroup/memory/process_api/f63c"
    assert h.v1_own["pids"] == "/sys/fs/cgroup/pids"
    assert "name=systemd" not in h.v1_mounts and "xattr" not in h.v1_mounts
    assert h.v2_mount == "/sys/fs/cgroup/unified"
    tree = _cgroups.open_tree("easyfaas-ns-x", mountinfo=HYBRID_MOUNTINFO, proc_cgroup=HYBRID_CGROUP)
    assert isinstance(tree, _cgroups.V1Tree)
    assert tree.dirs == [
        "/sys/fs/cgroup/cpu/easyfaas-ns-x",
        "/sys/fs/cgroup/cpuacct/easyfaas-ns-x",
        "/sys/fs/cgroup/memory/process_api/f63c/easyfaas-ns-x",
        "/sys/fs/cgroup/pids/easyfaas-ns-x",
    ]


def test_v1_joint_cpu_cpuacct_and_container_roots() -> None:
    mountinfo = (
        "40 31 0:37 /docker/abc /sys/fs/cgroup/cpu,cpuacct ro,nosuid - cgroup cgroup rw,cpu,cpuacct\n"
        "41 31 0:38 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "42 31 0:39 /docker/abc /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n"
    )
    proc_cgroup = "5:cpu,cpuacct:/docker/abc/inner\n4:memory:/docker/abc\n3:pids:/docker/abc\n"
    h = _cgroups.find_hierarchies(mountinfo, proc_cgroup)
    assert h.v1_own["cpu"] == h.v1_own["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct/inner"
    assert h.v1_own["memory"] == "/sys/fs/cgroup/memory"
    tree = _cgroups.open_tree("t", mountinfo=mountinfo, proc_cgroup=proc_cgroup)
    assert tree.dirs == ["/sys/fs/cgroup/cpu,cpuacct/inner/t", "/sys/fs/cgroup/memory/t", "/sys/fs/cgroup/pids/t"]
    assert _cgroups.open_tree("t", "/easyfaas", mountinfo=mountinfo, proc_cgroup=proc_cgroup).dirs[1] == (
        "/sys/fs/cgroup/memory/easyfaas/t"
    )


def test_mountinfo_escapes_are_decoded() -> None:
    assert _cgroups.unescape(r"/sys/fs/cgroup/with\040space") == "/sys/fs/cgroup/with space"


def test_no_cgroups_is_a_precise_error() -> None:
    with pytest.raises(_cgroups.CgroupUnavailableError, match="no cgroup v1 hierarchy for memory, pids, cpu"):
        _cgroups.open_tree("t", mountinfo="27 1 254:0 / / rw - ext4 /dev/vda rw\n", proc_cgroup="")


@pytest.fixture
def fake_v2(tmp_path: Path) -> tuple[str, str]:
    """A plain directory laid out like a pure cgroup v2 mount, the funclet in /system.slice/efaas."""
    mount = tmp_path / "cgroup"
    own = mount / "system.slice" / "efaas"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    (own / "cgroup.subtree_control").write_text("")
    mountinfo = f"30 23 0:26 / {mount} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
    return mountinfo, "0::/system.slice/efaas\n"


def test_pure_v2_is_chosen_and_delegates_controllers(fake_v2: tuple[str, str], tmp_path: Path) -> None:
    mountinfo, proc_cgroup = fake_v2
    tree = _cgroups.open_tree("easyfaas-ns-y", mountinfo=mountinfo, proc_cgroup=proc_cgroup)
    assert isinstance(tree, _cgroups.V2Tree)
    own = tmp_path / "cgroup" / "system.slice" / "efaas"
    base = own / "easyfaas-ns-y"
    assert tree.dirs == [str(base)]
    base.mkdir()
    (base / "cgroup.subtree_control").write_text("")  # the kernel would create it with the directory
    tree.setup()
    assert (own / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert (base / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"


def test_v2_limits_and_counters(fake_v2: tuple[str, str], tmp_path: Path) -> None:
    mountinfo, proc_cgroup = fake_v2
    tree = _cgroups.open_tree("easyfaas-ns-y", mountinfo=mountinfo, proc_cgroup=proc_cgroup)
    leaf = tmp_path / "cgroup" / "system.slice" / "efaas" / "easyfaas-ns-y" / "sb1"
    leaf.mkdir(parents=True)
    for name in ("memory.max", "memory.swap.max", "pids.max", "cpu.max", "memory.oom.group"):
        (leaf / name).write_text("max\n")
    (leaf / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n")
    (leaf / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n")
    (leaf / "memory.peak").write_text("7340032\n")
    (leaf / "pids.current").write_text("3\n")

    tree.set_memory("sb1", 128 << 20)
    tree.set_pids("sb1", 64)
    tree.set_cpu("sb1", 0.5)
    assert (leaf / "memory.max").read_text().startswith(str(128 << 20))
    assert (leaf / "pids.max").read_text().startswith("64")
    assert (leaf / "cpu.max").read_text() == "50000 100000"
    tree.set_cpu("sb1", 0)
    assert (leaf / "cpu.max").read_text().startswith("max 100000")
    assert tree.oom_kills("sb1") == 1
    assert tree.usage("sb1") == (7340032, 2.5, 3)
    assert tree.procs_files("sb1") == [str(leaf / "cgroup.procs")]


def test_v1_memory_limit_keeps_memsw_ordering(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    memory = tmp_path / "memory"
    leaf = memory / "t" / "sb"
    leaf.mkdir(parents=True)
    writes: list[str] = []
    for name in ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"):
        (leaf / name).write_text("")
    tree = _cgroups.V1Tree({"memory": str(memory), "pids": str(tmp_path / "pids"), "cpu": str(tmp_path / "cpu")}, "t")

    real_write = _cgroups._write

    def spy(path: str, value: str) -> None:
        writes.append(Path(path).name)
        real_write(path, value)

    monkeypatch.setattr(_cgroups, "_write", spy)
    tree.set_memory("sb", 128 << 20)  # from unlimited: lower the limit, then memsw
    tree.set_memory("sb", 256 << 20)  # raise: memsw first
    tree.set_memory("sb", 64 << 20)  # lower: limit first
    assert writes == [
        "memory.limit_in_bytes",
        "memory.memsw.limit_in_bytes",
        "memory.memsw.limit_in_bytes",
        "memory.limit_in_bytes",
        "memory.limit_in_bytes",
        "memory.memsw.limit_in_bytes",
    ]
    (leaf / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert tree.oom_kills("sb") == 2
