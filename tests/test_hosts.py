"""Where a defense's fresh hosts run: the CPU, unless a GPU answers sooner than its CUDA start costs."""

from __future__ import annotations

import pytest
import torch

from arena.play.hosts import CUDA_START_SECONDS, MAX_TIMED_MODELS, Timings, device_for, timed
from arena.play.lru import LRU


@pytest.fixture
def timings() -> Timings:
    """A worker's timings, none yet."""
    return LRU(MAX_TIMED_MODELS)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")
def test_without_a_gpu_every_host_runs_on_the_cpu(timings: Timings) -> None:
    timed(timings, b"a heavy model", 100 * CUDA_START_SECONDS)
    assert device_for(b"a heavy model", timings) == "cpu"


def test_with_a_gpu_a_model_moves_there_only_once_the_cpu_proved_slower_than_a_cuda_start(
    monkeypatch: pytest.MonkeyPatch, timings: Timings
) -> None:
    """Measured on an H200: a fresh host's CUDA start cost more than a small model's whole classification on
    the CPU; Defense-GAN's search takes seconds there."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    small, heavy = b"small model", b"heavy model"
    assert (
        device_for(small, timings) == device_for(heavy, timings) == "cpu"
    )  # not timed yet: hosts.probe times it on the CPU
    timed(timings, small, CUDA_START_SECONDS / 4)
    timed(timings, heavy, 4 * CUDA_START_SECONDS)
    assert (device_for(small, timings), device_for(heavy, timings)) == ("cpu", "cuda")
    timed(timings, small, 100 * CUDA_START_SECONDS)  # its first time stands: a defense cannot flip back and forth
    assert device_for(small, timings) == "cpu"
