"""`arena demo` serves the board from its first seconds: the round shows on it as it plays, published at the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from test_serve import free_port

pytestmark = pytest.mark.slow

ARENA = Path(sys.executable).parent / "arena"


def test_the_demo_serves_the_round_while_it_plays(tmp_path: Path) -> None:
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "ARENA_HOME": str(tmp_path / "home"),
        "ARENA_BUILTINS": "fgsm,transfer,undefended",
        "OMP_NUM_THREADS": "1",
    }
    port = free_port()
    demo = subprocess.Popen(
        [str(ARENA), "demo", "--port", str(port), "--jobs", "2"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(demo.stdout), daemon=True)
    reader.start()
    base, seen = f"http://127.0.0.1:{port}", []
    try:
        deadline = time.monotonic() + 600
        while not any("the board stays on" in line for line in lines):
            assert demo.poll() is None, "".join(lines)[-3000:]
            assert time.monotonic() < deadline, "".join(lines)[-3000:]
            try:
                page = requests.get(base + "/", timeout=10).text
            except requests.ConnectionError:
                page = None
            seen.append("still running" in page if page else None)
            time.sleep(0.5)
        assert True in seen, "the board showed the round while it ran"
        assert seen.index(True) < len(seen) - 1
        shown = "".join(lines)
        assert f"the board shows the round as it plays: {base}/" in shown
        assert shown.index("the board shows the round") < shown.index("round published")
        until = time.monotonic() + 30  # the board's processes see the end within their refresh time (5 s)
        while "still running" in (page := requests.get(base + "/", timeout=10).text) and time.monotonic() < until:
            time.sleep(1)
        assert "still running" not in page
        assert "undefended" in page and "Worst-case robust" in page
    finally:
        os.killpg(demo.pid, signal.SIGINT)  # Ctrl+C in its terminal
        demo.wait(timeout=60)
        reader.join(timeout=10)
        demo.stdout.close()
