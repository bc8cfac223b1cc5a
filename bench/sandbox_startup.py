"""What a sandbox costs to start: the zygote once, then each sandbox, with bubblewrap and with the fallback.

For comparison it also times the naive design: a fresh bubblewrap'd Python that imports torch and the
arena for every sandbox (what a sandbox would cost without the zygote). Where a GPU is visible it also times
a sandbox whose first act is a CUDA operation (its own CUDA context: what a fresh host pays on a GPU).

    python bench/sandbox_startup.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch

from arena.sandbox import Sandbox, namespaces, zygote


def echo_setup(_conn: Connection) -> Callable[[Any], Any]:
    """A sandbox that answers each request with itself."""
    return lambda request: request


def cuda_setup(_conn: Connection) -> Callable[[Any], Any]:
    """A sandbox that makes its CUDA context first, then answers each request with itself."""
    import torch

    torch.ones(1, device="cuda").sum().item()
    return lambda request: request


def time_sandboxes(repeat: int, setup_name: str = "echo_setup") -> tuple[float, float]:
    """Seconds to start the zygote (first sandbox), and the median of the next ``repeat`` sandboxes."""
    import sandbox_startup  # by its module's name: the sandbox imports it again

    setup = getattr(sandbox_startup, setup_name)

    started = time.perf_counter()
    with Sandbox(setup, (), time_limit=60, label="bench/echo") as box:
        box.call("ping")
    first = time.perf_counter() - started
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        with Sandbox(setup, (), time_limit=60, label="bench/echo") as box:
            box.call("ping")
        times.append(time.perf_counter() - started)
    return first, statistics.median(times)


def time_cold_bwrap(repeat: int) -> float:
    """Median seconds of a fresh bubblewrap'd Python importing torch and the arena (no zygote)."""
    view = namespaces.build_view([Path(namespaces.__file__).parents[1]], [], [])  # the whole arena package
    command = [str(namespaces.bwrap()), *view.bwrap_args(), "--unshare-pid", "--"]
    command += [sys.executable, "-c", "import torch, numpy, arena.play.match, arena.play.training"]
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(command, env=zygote.minimal_env(), check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    print(f"host: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    for mode in ("bubblewrap", "fallback"):
        os.environ[zygote.ISOLATION_ENV] = mode
        first, each = time_sandboxes(args.repeat)
        print(f"{mode:<10}  zygote and first sandbox {first:6.2f} s   each further sandbox {1000 * each:6.0f} ms")
        if torch.cuda.is_available():
            _, each = time_sandboxes(args.repeat, "cuda_setup")
            print(f"{mode:<10}  each further sandbox making its CUDA context {1000 * each:6.0f} ms")
    cold = time_cold_bwrap(max(3, args.repeat // 5))
    print(f"no zygote   a fresh bubblewrap'd Python importing torch and the arena: {cold:6.2f} s per sandbox")


if __name__ == "__main__":
    main()
