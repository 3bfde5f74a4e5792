"""``easyfaas.doctor``: the kernel report ``easyfaas doctor`` prints beside each driver's availability.

Checked against this host, and against recorded mountinfo text for the cgroup layouts.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from easyfaas import doctor


def test_kernel_report_is_plain_data_about_this_host() -> None:
    report = doctor.kernel_report()
    json.dumps(report)  # what `easyfaas doctor --json` prints
    assert set(report["namespaces"]) == set(doctor.NAMESPACES)
    assert report["root"] == (os.geteuid() == 0)
    if sys.platform.startswith("linux"):
        assert report["namespaces"]["pid"] == os.path.exists("/proc/self/ns/pid")
        assert report["pivot_root"] is True
    assert report["cgroups"]["version"] in ("v1", "v2", "hybrid", "none")
    assert isinstance(report["user_namespaces"]["unprivileged_allowed"], bool)


@pytest.mark.parametrize(
    ("mountinfo", "version", "v1"),
    [
        ("30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n", "v2", {}),
        (
            "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
            "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
            "40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n",
            "v1",
            {
                "cpu": "/sys/fs/cgroup/cpu,cpuacct",
                "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",
                "memory": "/sys/fs/cgroup/memory",
            },
        ),
        (
            "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
            "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
            "hybrid",
            {"memory": "/sys/fs/cgroup/memory"},
        ),
        ("27 1 254:0 / / rw - ext4 /dev/vda rw\n", "none", {}),
    ],
)
def test_cgroup_layouts(mountinfo: str, version: str, v1: dict[str, str]) -> None:
    cgroups = doctor._cgroups(mountinfo)
    assert cgroups["version"] == version
    assert cgroups["v1"] == v1


def test_format_report_names_every_topic() -> None:
    report = doctor.kernel_report()
    text = doctor.format_report(report)
    for topic in ("kernel", "running as root", "namespaces", "cgroups", "user namespaces", "pivot_root", "seccomp"):
        assert topic in text
    missing = dict(report, namespaces=dict.fromkeys(doctor.NAMESPACES, False))
    assert "the namespace sandbox needs ipc mnt net pid uts" in doctor.format_report(missing)
