"""`arena serve`: the production server, its processes sharing one sign-in key, and the pages' security headers."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ARENA = Path(sys.executable).parent / "arena"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_board_runs_several_processes_that_share_a_sign_in_and_send_a_csp(tmp_path: Path) -> None:
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "ARENA_HOME": str(tmp_path / "home")}
    added = subprocess.run(
        [str(ARENA), "team", "add", "red", "--repo", "/srv/red.git"], env=env, capture_output=True, text=True
    )
    token = next(line for line in added.stdout.splitlines() if line.startswith("board token")).rsplit(": ", 1)[1]
    port = free_port()
    server = subprocess.Popen(
        [str(ARENA), "serve", "--port", str(port), "--workers", "3"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                first = requests.get(f"{base}/", timeout=5)
                break
            except requests.ConnectionError:
                assert server.poll() is None and time.monotonic() < deadline, "the board did not start"
                time.sleep(0.3)
        assert first.status_code == 200 and "script-src 'self'" in first.headers["Content-Security-Policy"]
        assert first.headers["X-Content-Type-Options"] == "nosniff"
        browser = requests.Session()
        assert browser.post(f"{base}/signin", data={"token": token}, allow_redirects=False).status_code == 302
        pages = [browser.get(f"{base}/teams", timeout=5) for _ in range(12)]  # spread over the processes
        assert all(page.status_code == 200 and "signed in as red" in page.text for page in pages)
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
    assert output.count("Booting worker") == 3, output[-2000:]
