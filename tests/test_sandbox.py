"""The sandbox: untrusted code fails alone, within its time, without secrets, and leaves nothing behind."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile import RAISE_LINE, failing_setup, gone, hostile_setup, none_running, running, started

from arena.sandbox import KEEP_ENV, LOG_TAIL_CHARS, SANDBOX_USER, PluginFailure, Sandbox, isolation, namespaces, zygote

TESTS = Path(__file__).resolve().parent


def box(time_limit: float = 60.0, banner: str = "hello from the child") -> Sandbox:
    """A sandbox serving :func:`hostile.hostile_setup`'s requests."""
    return Sandbox(hostile_setup, (banner,), time_limit=time_limit, label="hostile/test")


def still_answers() -> bool:
    """Whether a fresh sandbox still round-trips (the parent survived what came before)."""
    with box() as fresh:
        return fresh.call(("echo", "again")) == ("echo", "again")


@pytest.fixture
def marker() -> Iterator[str]:
    """A unique argument for the ``sleep`` processes a test's sandbox starts; any left are killed at the end."""
    value = f"{1000 + random.random():.9f}"
    yield value
    for pid in running(value):
        os.kill(pid, signal.SIGKILL)


def test_a_reply_round_trips_and_prints_reach_the_log() -> None:
    with box(banner="setting up") as sandbox:
        assert sandbox.call(("echo", [1, 2.5, "three", None])) == ("echo", [1, 2.5, "three", None])
        assert sandbox.call(("echo", {"nested": (1, 2)})) == ("echo", {"nested": (1, 2)})
        tail = sandbox.log_tail
    assert "setting up" in tail
    assert "echo [1, 2.5, 'three', None]" in tail


def test_an_exception_names_its_type_message_and_line() -> None:
    with box() as sandbox, pytest.raises(PluginFailure) as failure:
        sandbox.call(("raise", 42))
    message = str(failure.value)
    assert message.startswith("hostile/test: ValueError: bad request 42")
    assert f"hostile.py:{RAISE_LINE}" in message and "in handle" in message
    assert "Traceback" in failure.value.log_tail and "ValueError: bad request 42" in failure.value.log_tail


def test_a_failing_setup_reports_its_error_even_when_the_child_is_already_gone() -> None:
    """The child sends its error and exits before the parent's first request: the error still arrives."""
    for delay in (0.0, 1.0):
        with Sandbox(failing_setup, (), time_limit=30, label="hostile/broken") as sandbox:
            time.sleep(delay)
            with pytest.raises(PluginFailure, match="ImportError: no module named 'missing_dependency'"):
                sandbox.call(("echo", 1))


def test_an_exit_status_fails_the_call_and_the_parent_survives() -> None:
    with box() as sandbox, pytest.raises(PluginFailure, match="exited with status 3 before replying"):
        sandbox.call(("exit", 3))
    assert still_answers()


def test_a_segfault_fails_the_call_and_the_parent_survives() -> None:
    with box() as sandbox, pytest.raises(PluginFailure, match="killed by signal SIGSEGV"):
        sandbox.call(("segfault", None))
    assert still_answers()


def test_an_infinite_loop_hits_the_time_limit_and_the_child_dies() -> None:
    with box(time_limit=2) as sandbox:
        started = time.monotonic()
        with pytest.raises(PluginFailure, match="time-out: exceeded the limit of 2 s"):
            sandbox.call(("loop", None))
        assert time.monotonic() - started < 10
        assert gone(sandbox.pid, timeout=2)
    assert still_answers()


def test_nothing_the_child_started_outlives_the_sandbox(marker: str) -> None:
    with box() as sandbox:
        sandbox.call(("spawn", (False, marker)))
        assert started(marker)
    assert gone(sandbox.pid) and none_running(marker)


def test_a_grandchild_is_killed_when_the_child_times_out(marker: str) -> None:
    with box(time_limit=3) as sandbox:
        sandbox.call(("spawn", (False, marker)))
        assert started(marker)
        with pytest.raises(PluginFailure, match="time-out"):
            sandbox.call(("loop", None))
        assert none_running(marker)


@pytest.mark.xfail(
    isolation().mode == "fallback",
    strict=True,
    reason="portable fallback: a grandchild in its own session (setsid) escapes the process-group kill; "
    "bubblewrap's pid namespace catches it",
)
def test_a_grandchild_in_its_own_session_does_not_outlive_the_sandbox(marker: str) -> None:
    with box() as sandbox:
        sandbox.call(("spawn", (True, marker)))
        assert started(marker)
    assert none_running(marker, timeout=2)


def test_a_sandbox_shows_no_age_from_before_its_request() -> None:
    """Sandboxes are prepared ahead (the zygote, a spare proxy), but what a plugin can read of its own age starts
    at the request: a defense that could read how long its host waited would tell the host of an attack's
    inputs from the clean one (``tests/cheats/idle-detector``)."""
    with box() as first:
        first.call(("echo", "the zygote runs, and a spare proxy waits"))
    time.sleep(2.0)
    private = ["/tmp", "/dev/shm"] if isolation().mode == "bubblewrap" else []  # the fallback shares the host's
    started = time.monotonic()
    with box() as sandbox:
        ages = sandbox.call(("ages", private))
    bound = time.monotonic() - started + 0.05  # /proc counts in ticks of 10 ms
    assert max(ages.values()) < bound, ages
    assert len(ages) >= 1 + 2 * len(private)


def test_a_sandbox_has_a_user_name() -> None:
    """Its user id has no entry in /etc/passwd, yet libraries ask its name: torch did so on a GPU, in training."""
    with box() as sandbox:
        assert sandbox.call(("user", None)) == SANDBOX_USER


def test_the_working_directory_is_private_and_removed() -> None:
    with box() as sandbox:
        seen = sandbox.call(("environment", None))
        written = sandbox.call(("write", "notes.txt"))
        cwd = seen["cwd"]
        assert seen["environ"]["HOME"] == seen["environ"]["TMPDIR"] == cwd
        assert Path(written).parent == Path(cwd)
        if isolation().mode == "bubblewrap":  # a file system of its own: nothing of it on the host
            assert cwd == "/tmp" and not Path(written).exists()
            with box() as other:
                assert other.call(("environment", None))["cwd"] == cwd
                with pytest.raises(PluginFailure, match="FileNotFoundError"):
                    other.call(("read", written))
        else:
            assert Path(cwd) != Path.cwd() and Path(written).exists()
            assert Path(cwd).stat().st_mode & 0o077 == 0  # nobody else may look in
    assert not Path(written).exists()


def test_megabytes_of_output_do_not_break_the_parent() -> None:
    lines = 40_000  # about 4.5 MB on stdout, and 40 kB more straight to file descriptor 2
    with box() as sandbox:
        assert sandbox.call(("flood", lines)) == "flooded"
        tail = sandbox.log_tail
        assert sandbox.call(("echo", "still here")) == ("echo", "still here")
    assert len(tail) <= LOG_TAIL_CHARS
    assert tail.rstrip().endswith("the end")


def test_a_crafted_pickle_cannot_run_code_in_the_parent(tmp_path: Path) -> None:
    """The child's messages are decoded without ever calling code they name."""
    marker = tmp_path / "pwned"
    code = f"import os; open({str(marker)!r}, 'w').write(str(os.getpid()))"
    with box() as sandbox, pytest.raises(PluginFailure, match="protocol violation.*forbidden object builtins.exec"):
        sandbox.call(("evil", code))
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------
# The environment, seen from a fresh arena process whose forkserver starts with the secrets set
# --------------------------------------------------------------------------------------------------

SECRET = "s3cr3t-token-do-not-leak"

PROBE = """
import json, sys
from arena.sandbox import Sandbox
from hostile import hostile_setup

if __name__ == "__main__":
    with Sandbox(hostile_setup, ("probe",), time_limit=60, label="hostile/probe") as box:
        seen = box.call(("environment", None))
    print("PROBE " + json.dumps(seen))
"""


@pytest.fixture(scope="module")
def child_view(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """What a sandboxed child sees when the arena's process (and so its forkserver) holds secrets."""
    script = tmp_path_factory.mktemp("probe") / "probe.py"
    script.write_text(PROBE)
    env = dict(os.environ)
    env.update(
        ARENA_DATABASE_URL=f"postgresql://arena:{SECRET}@db/arena",
        ARENA_HOME=str(script.parent),
        SECRET_TOKEN=SECRET,
        PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS.parent), env.get("PYTHONPATH", "")]),
    )
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("PROBE ")]
    return json.loads(line.removeprefix("PROBE "))


def test_the_child_environment_holds_no_secrets(child_view: dict) -> None:
    environ = child_view["environ"]
    assert not [key for key in environ if key.startswith("ARENA_")]
    assert "SECRET_TOKEN" not in environ
    assert not [key for key, value in environ.items() if SECRET in value]
    assert set(environ) <= set(KEEP_ENV) | {"HOME", "TMPDIR", "USER", "LOGNAME"}
    assert "PATH" in environ


def test_the_child_initial_environment_holds_no_secrets(child_view: dict) -> None:
    assert SECRET not in child_view["initial"]


def test_an_installation_under_tmp_is_named_as_the_reason_for_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each sandbox gets a private /tmp: a virtual environment there would vanish inside it."""
    monkeypatch.setattr(sys, "prefix", "/tmp/ci-clone/.venv")
    reason = zygote.installed_under_tmp()
    assert reason is not None and reason.startswith("the Python installation lies under /tmp (/tmp/ci-clone/.venv)")


@pytest.mark.skipif(os.getuid() != 0, reason="only a root arena runs its sandboxes as users of their own")
def test_a_folder_on_sys_path_that_only_its_owner_may_enter_is_not_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m` puts the working directory on sys.path; bound with mode 0700 it would lock a sandbox's user
    out of an arena home below it (its private mounts then fail with EACCES)."""
    private, shared = tmp_path / "private", tmp_path / "shared"
    private.mkdir(mode=0o700)
    shared.mkdir(mode=0o755)
    monkeypatch.syspath_prepend(str(private))
    monkeypatch.syspath_prepend(str(shared))
    assert str(shared) in namespaces.search_path() and str(private) not in namespaces.search_path()


def test_a_closed_folder_above_a_mount_point_is_masked(tmp_path: Path) -> None:
    """A 0700 folder holding an arena home, inside a bound one (a checkout, say): a sandbox's user could not
    pass it to reach its private mounts, so the view masks it and makes the mount points anew."""
    closed = tmp_path / "closed"
    (closed / "home" / "plugin-cache").mkdir(parents=True)
    closed.chmod(0o700)
    bound = {str(tmp_path)}
    assert namespaces._closed_above(str(closed / "home" / "plugin-cache"), bound) == str(closed)
    closed.chmod(0o755)
    assert namespaces._closed_above(str(closed / "home" / "plugin-cache"), bound) is None
    assert namespaces._closed_above(str(closed / "home" / "plugin-cache"), set()) is None, "not bound: made anew"
