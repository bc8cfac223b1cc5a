"""Where a defense's fresh hosts run: the CPU, unless a GPU answers sooner than its CUDA start costs."""

from __future__ import annotations

import pytest
import torch

from arena import hosts
from arena.hosts import CUDA_START_SECONDS, device_for, timed


@pytest.fixture(autouse=True)
def no_timings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hosts, "_CPU_SECONDS", {})


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")
def test_without_a_gpu_every_host_runs_on_the_cpu() -> None:
    timed(b"a heavy model", 100 * CUDA_START_SECONDS)
    assert device_for(b"a heavy model") == "cpu"


def test_with_a_gpu_a_model_moves_there_only_once_the_cpu_proved_slower_than_a_cuda_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Measured on an H200: a fresh host's CUDA start cost more than a small model's whole classification on
    the CPU; Defense-GAN's search takes seconds there."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    small, heavy = b"small model", b"heavy model"
    assert device_for(small) == device_for(heavy) == "cpu"  # not timed yet: hosts.probe times it on the CPU
    timed(small, CUDA_START_SECONDS / 4)
    timed(heavy, 4 * CUDA_START_SECONDS)
    assert (device_for(small), device_for(heavy)) == ("cpu", "cuda")
    timed(small, 100 * CUDA_START_SECONDS)  # its first time stands: a defense cannot flip back and forth
    assert device_for(small) == "cpu"
