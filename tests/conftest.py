"""Shared test fixtures."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for the module's tests, restored afterwards.

    The networks and images of the tests are small: on a busy shared 2-core host OpenMP's spinning
    threads made them 10-40x slower.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def memory_meter():
    """One :class:`deqir.bench.common.IsolatedMemory` worker shared by the session (it takes a
    few seconds to start)."""
    from deqir.bench.common import IsolatedMemory

    with IsolatedMemory() as meter:
        yield meter
