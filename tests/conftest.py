import os

import pytest
import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# The suite's tensors are small: one intra-op thread avoids thread start-up and spin-wait costs
# that dominate at this size (measured 0.4 ms vs several ms per 1000x64 matmul on a busy
# 2-core machine) and keeps results bitwise reproducible.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Every test starts seeded and on one intra-op thread (code under test may change the
    thread count; it is restored to one after each test)."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ray_cluster():
    """One small local Ray cluster for the whole test session (started on first use)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200_000_000)
    yield ray
    ray.shutdown()
