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


def run_python(code: str) -> str:
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_the_batch_policy_holds_for_every_thread_of_the_process_and_those_it_starts_later():
    # in a child process: a policy set here would be inherited by every later test's processes
    out = run_python(
        "import os, threading\n"
        "from app.cpus import apply_cpu_policy\n"
        "assert os.sched_getscheduler(0) == os.SCHED_OTHER\n"
        "go, seen = threading.Event(), []\n"
        "def report(): go.wait(); seen.append(os.sched_getscheduler(0))\n"
        "before = threading.Thread(target=report); before.start()\n"
        "print(apply_cpu_policy('batch'), os.sched_getscheduler(0) == os.SCHED_BATCH)\n"
        "after = threading.Thread(target=report); after.start()\n"
        "go.set(); before.join(); after.join()\n"
        "print(seen == [os.SCHED_BATCH] * 2)\n"
        "print(apply_cpu_policy('normal'), os.sched_getscheduler(0) == os.SCHED_OTHER)\n")
    assert out.split() == ["True", "True", "True", "True", "True"]


def test_an_unknown_policy_is_refused():
    import pytest

    from app.cpus import apply_cpu_policy

    with pytest.raises(ValueError, match="unknown CPU policy"):
        apply_cpu_policy("realtime")
