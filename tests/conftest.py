from __future__ import annotations

from pathlib import Path

import pytest

from tests.distributed_fixtures import project  # noqa: F401 (the two-process tests' shared smoke project)

# Real CMU motion capture (a walk in BVH, a kick in ASF/AMC); license and notice in its README.
CMU_DIR = Path(__file__).resolve().parent / "fixtures" / "cmu"
CMU_WALK = CMU_DIR / "12_01_walk.bvh"
CMU_KICK = (CMU_DIR / "11.asf", CMU_DIR / "11_01_kick.amc")


@pytest.fixture(scope="session")
def cmu_dir() -> Path:
    return CMU_DIR


@pytest.fixture(autouse=True)
def _one_torch_thread() -> None:
    # tiny models gain nothing from intra-op threads, and two threads on shared cores thrash; per test, since
    # a stage run inside a test sets the thread count from params
    import torch

    torch.set_num_threads(1)
