"""How many CPUs this process may really use: affinity, then a cgroup CPU quota.

Containers (App Platform's 1-vCPU instances, Docker ``--cpus``) often show
all of the host's cores to ``os.cpu_count()`` and the affinity mask while a
cgroup quota allows only a fraction of them. A thread pool sized to the host
then runs into the quota's throttling, so the model runtime sizes its pool
with :func:`available_cpus`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def available_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """min(cores in the affinity mask, ceil(cgroup quota / period)); at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def cgroup_cpu_quota(cgroup_root: Path = CGROUP_ROOT) -> float | None:
    """CPUs allowed by the cgroup (v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``), or None without a quota."""
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]  # v2: "max 100000" or "150000 100000"
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((cgroup_root / "cpu" / "cpu.cfs_quota_us").read_text())  # v1: -1 means no quota
        period_us = int((cgroup_root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None
