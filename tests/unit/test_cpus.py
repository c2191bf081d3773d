"""CPU counts for process and thread defaults honour the container's CPU quota."""

import os

from app.cpus import cgroup_cpu_limit, usable_cpus


def write(root, name, text):
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_in_cpus(tmp_path):
    write(tmp_path, "cpu.max", "150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    write(tmp_path, "cpu.max", "max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_cgroup_v1_quota_and_no_cgroup_at_all(tmp_path):
    write(tmp_path, "cpu/cpu.cfs_quota_us", "200000\n")
    write(tmp_path, "cpu/cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(tmp_path) == 2.0
    write(tmp_path, "cpu/cpu.cfs_quota_us", "-1\n")
    assert cgroup_cpu_limit(tmp_path) is None
    assert cgroup_cpu_limit(tmp_path / "absent") is None


def test_the_quota_caps_the_affinity_mask_rounding_up(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(tmp_path / "absent") == affinity
    write(tmp_path, "cpu.max", "50000 100000\n")  # half a CPU still runs one process
    assert usable_cpus(tmp_path) == 1
    write(tmp_path, "cpu.max", f"{(affinity + 8) * 100000} 100000\n")  # a quota above the mask
    assert usable_cpus(tmp_path) == affinity
