"""CPU count: the affinity mask, capped by a cgroup v2 or v1 CPU quota."""

from __future__ import annotations

import os

import pytest

from nsfw_core.base.cpus import available_cpus, cgroup_cpu_quota

AFFINITY = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("cpu_max", "quota"), [("max 100000\n", None), ("150000 100000\n", 1.5),
                                                ("50000 100000\n", 0.5), ("garbage", None)])
def test_cgroup_v2_cpu_max(tmp_path, cpu_max, quota):
    (tmp_path / "cpu.max").write_text(cpu_max)
    assert cgroup_cpu_quota(tmp_path) == quota


@pytest.mark.parametrize(("quota_us", "quota"), [("-1", None), ("200000", 2.0), ("25000", 0.25)])
def test_cgroup_v1_cfs_quota(tmp_path, quota_us, quota):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(quota_us + "\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path) == quota


def test_no_cgroup_files_means_no_quota(tmp_path):
    assert cgroup_cpu_quota(tmp_path) is None
    assert available_cpus(tmp_path) == AFFINITY


def test_a_quota_caps_the_affinity_and_rounds_up(tmp_path):
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert available_cpus(tmp_path) == 1  # half a CPU still gets one thread
    (tmp_path / "cpu.max").write_text(f"{(AFFINITY + 3) * 100000} 100000\n")
    assert available_cpus(tmp_path) == AFFINITY  # a quota above the cores changes nothing
