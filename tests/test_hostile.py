"""The hostile plugin suite: each plugin fails only its own validation, with a clear reason; nothing else is hurt.

Every plugin is validated as a pushed submission is: loaded in a sandbox, then played in a smoke match
against the arena's baseline (:mod:`arena.play.validation`). The arena's home lies inside a folder the
sandbox may read (its data folder), so the tests see the home's secrets hidden, not merely absent.
Tests that need what only bubblewrap gives (no network, a hidden file system, a pid namespace, a
bounded process count for root) are skipped with the fallback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile import SPY, none_running, write_attack, write_defense

from arena.config import Settings
from arena.contract import plugins
from arena.play import validation
from arena.play.validation import SmokeKit, Validation
from arena.rules.data import bundled_data_files, load_digits
from arena.sandbox import LOG_TAIL_CHARS, isolation
from arena.store import Database

SECRET = "hostile-suite-s3cr3t"
SAMPLES = validation.SMOKE_TRACK.eval_size
bubblewrap_only = pytest.mark.skipif(
    isolation().mode != "bubblewrap", reason="needs bubblewrap (the fallback cannot give this isolation)"
)


@dataclasses.dataclass(frozen=True)
class Suite:
    """Where the hostile plugins play: the arena's folders, its baseline, and paths worth stealing."""

    root: Path  # the data folder: readable in the sandbox, and holding the arena's home
    home: Path
    plugins: Path
    kit: SmokeKit

    def check(
        self, name: str, body: str, threats: tuple[str, ...] = ("white-box",), time_limit: float = 0, **params: object
    ) -> Validation:
        """Validate the attack ``name`` whose ``run`` is ``body``, as a push would (with another time limit)."""
        folder = write_attack(self.plugins, name, body, threats=threats, params=params or None, helpers=SPY)
        kit = self.kit
        if time_limit:
            kit = dataclasses.replace(kit, track=dataclasses.replace(kit.track, time_limit=time_limit))
        return validation.validate(plugins.read_folder(folder), kit.cache_dir, kit)

    def check_defense(self, name: str, body: str) -> Validation:
        """Validate the defense ``name`` whose ``train`` is ``body``."""
        folder = write_defense(self.plugins, name, body)
        return validation.validate(plugins.read_folder(folder), self.kit.cache_dir, self.kit)

    def still_fine(self) -> None:
        """A well-behaved plugin still validates after whatever came before."""
        checked = self.check("fine", "return (x + 0.05).clamp(0, 1)")
        assert checked.errors == [] and checked.smoke is not None and checked.smoke["status"] == "ok"


@pytest.fixture(scope="module")
def suite() -> Iterator[Suite]:
    """An arena whose home (database, secret, another team's code) lies inside its readable data folder.

    The folder is outside /tmp (which every sandbox replaces by its own), so that hiding is tested.
    """
    root = Path(tempfile.mkdtemp(prefix="arena-hostile-", dir="/var/tmp"))
    root.chmod(0o755)  # a data folder is everyone's to read (the sandbox runs as a user of its own)
    home = root / "home"
    with pytest.MonkeyPatch.context() as patch, contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, root, ignore_errors=True)
        patch.setenv("ARENA_HOME", str(home))
        patch.setenv("ARENA_DATA_DIR", str(root))
        patch.setenv("ARENA_SANDBOX_MEMORY", "1G")
        patch.setenv("ARENA_SANDBOX_PROCESSES", "128")
        patch.delenv("ARENA_DATABASE_URL", raising=False)
        patch.delenv("ARENA_PLUGIN_DIRS", raising=False)
        settings = Settings.from_env()
        db = Database(settings.database_url)
        db.upgrade()
        settings.secret()
        other = home / "repos" / "rival.git" / "plugins" / "defenses" / "secret-sauce"
        other.mkdir(parents=True)
        (other / "sauce.py").write_text("WEIGHTS = 'the rival team's code'\n")
        (root / "public.txt").write_text("data the arena hands over\n")
        track = dataclasses.replace(validation.SMOKE_TRACK, time_limit=6.0)
        kit = validation.smoke_kit(db, settings, track)
        yield Suite(root, home, root / "plugins", kit)


# --------------------------------------------------------------------------------------------------
# The network, the file system, the environment
# --------------------------------------------------------------------------------------------------


@bubblewrap_only
@pytest.mark.parametrize(
    ("call", "said"),
    [
        pytest.param("socket.create_connection(('127.0.0.1', 6379), timeout=3)", "Network is unreachable", id="local"),
        pytest.param("socket.create_connection(('1.1.1.1', 443), timeout=3)", "Network is unreachable", id="internet"),
        pytest.param("socket.getaddrinfo('pypi.org', 443)", "gaierror", id="dns"),
    ],
)
def test_a_socket_reaches_nothing(suite: Suite, call: str, said: str) -> None:
    checked = suite.check("netcat", f"import socket\n{call}\nreturn x")
    assert said in checked.errors[0] and "(sandboxes have no network)" in checked.errors[0]


@bubblewrap_only
@pytest.mark.parametrize(
    "target",
    [
        pytest.param("home/secret", id="secret"),
        pytest.param("home/arena.db", id="database"),
        pytest.param("home/repos/rival.git/plugins/defenses/secret-sauce/sauce.py", id="another-team"),
    ],
)
def test_reading_outside_its_folder_fails(suite: Suite, target: str) -> None:
    path = suite.root / target
    assert path.is_file()  # it is there, for the arena
    checked = suite.check("reader", "return x + 0 * len(open(self.path, 'rb').read())", path=str(path))
    assert "FileNotFoundError" in checked.errors[0] and target.rsplit("/", 1)[-1] in checked.errors[0]


@bubblewrap_only
def test_no_data_set_is_readable(suite: Suite) -> None:
    """The data folder and the data sets packages carry are hidden: data reach plugins only from the arena."""
    data = suite.check("data-reader", "return x + 0 * len(open(self.path).read())", path=str(suite.root / "public.txt"))
    assert "FileNotFoundError" in data.errors[0] and "public.txt" in data.errors[0]
    digits = str(next(path for path in bundled_data_files() if path.name == "digits.csv.gz"))
    read = suite.check("size", "print('read', len(open(self.path, 'rb').read()), flush=True)\nreturn x", path=digits)
    assert "PermissionError" in read.errors[0] if read.errors else "read 0" in read.log_tail
    loader = suite.check("loader", "import sklearn.datasets\nsklearn.datasets.load_digits()\nreturn x")
    assert loader.errors, "scikit-learn's digits could be loaded in the sandbox"


def test_the_training_split_reaches_an_attack_from_the_arena(suite: Suite) -> None:
    checked = suite.check("trainer", "print('train', tuple(target.train_data[0].shape), flush=True)\nreturn x")
    assert checked.errors == [] and f"train ({len(load_digits().y_train)}, 1, 8, 8)" in checked.log_tail


def test_the_public_held_out_split_reaches_an_attack_from_the_arena(suite: Suite) -> None:
    checked = suite.check("looker", "print('public', tuple(target.public_data[0].shape), flush=True)\nreturn x")
    assert checked.errors == [] and f"public ({len(load_digits().y_test)}, 1, 8, 8)" in checked.log_tail


def test_the_environment_holds_no_secret(suite: Suite, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_TOKEN", SECRET)
    monkeypatch.setenv("ARENA_BROKER_URL", f"redis://:{SECRET}@localhost:6379/0")
    spy = f"""
    import glob
    seen = []
    for path in glob.glob("/proc/*/environ"):
        try:
            seen += [path] if "{SECRET}" in open(path, errors="replace").read() else []
        except OSError:
            pass
    print(f"environment spy: {{sorted(os.environ)}} {{seen}}", flush=True)
    return x if not seen else None
    """
    looked = suite.check("env-spy", spy)
    assert looked.errors == [] and "'SECRET_TOKEN'" not in looked.log_tail and SECRET not in looked.log_tail
    used = suite.check("env-user", "return x + len(os.environ['SECRET_TOKEN'])")
    assert "KeyError: 'SECRET_TOKEN'" in used.errors[0]


@bubblewrap_only
@pytest.mark.parametrize("target", ["repo", "home", "data", "etc"])
def test_writing_outside_its_temporary_directory_fails(suite: Suite, target: str) -> None:
    folder = {
        "repo": Path(validation.__file__).parent,
        "home": suite.home,
        "data": suite.root,
        "etc": Path("/etc"),
    }[target]
    path = folder / f"pwned-{random.randrange(10**9)}"
    checked = suite.check("writer", "open(self.path, 'w').write('pwned')\nreturn x", path=str(path))
    assert checked.errors, "the write succeeded"
    assert any(cause in checked.errors[0] for cause in ("Read-only file system", "Permission denied", "No such file"))
    assert not path.exists()


def test_its_temporary_directory_is_writable_and_private(suite: Suite) -> None:
    body = """
    import tempfile
    path = os.path.join(tempfile.gettempdir(), "scratch")
    open(path, "w").write("notes")
    print(f"wrote {path}", flush=True)
    return x
    """
    checked = suite.check("scribbler", body)
    assert checked.errors == [] and "wrote " in checked.log_tail


# --------------------------------------------------------------------------------------------------
# Limits: memory, time, CPU, processes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("chunks = []\nwhile True:\n    chunks.append(bytearray(64 << 20))", id="python"),
        pytest.param("chunks = []\nwhile True:\n    chunks.append(torch.ones(16 << 20))", id="torch"),
    ],
)
def test_unbounded_allocation_stops_at_the_memory_limit(suite: Suite, body: str) -> None:
    checked = suite.check("glutton", body)
    assert "(the sandbox's memory limit is 1.0 GiB)" in checked.errors[0]
    suite.still_fine()


@pytest.mark.slow
def test_an_infinite_loop_stops_at_the_time_limit(suite: Suite) -> None:
    checked = suite.check("spinner", "while True:\n    pass")
    assert "time-out: exceeded the limit of 6 s" in checked.errors[0]
    suite.still_fine()


@pytest.mark.slow
def test_a_busy_loop_stops_at_the_cpu_limit(suite: Suite, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARENA_SANDBOX_CPU", "0.05")  # 0.05 CPU seconds per second of a 40 s clock: 2 s, and 1 more
    checked = suite.check("burner", "while True:\n    pass", time_limit=40)
    assert "exceeded its CPU-time limit of 3 s (SIGXCPU)" in checked.errors[0]


@pytest.mark.slow
def test_a_busy_loop_that_ignores_sigxcpu_still_stops(suite: Suite, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plugin runs as pid 1 of its namespace and may ignore SIGXCPU; the hard CPU limit (forced) ends it."""
    monkeypatch.setenv("ARENA_SANDBOX_CPU", "0.05")
    body = "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass"
    started = time.monotonic()
    checked = suite.check("stubborn", body, time_limit=40)
    assert "killed by signal SIGKILL" in checked.errors[0] or "SIGXCPU" in checked.errors[0], checked.errors
    assert time.monotonic() - started < 30  # the CPU limit, not the 40 s clock


@pytest.mark.skipif(
    isolation().mode != "bubblewrap" and os.getuid() == 0,
    reason="the fallback cannot bound the processes of root: a fork bomb would hurt the host",
)
@pytest.mark.parametrize("kind", ["sleepers", "python"])
def test_a_fork_bomb_stops_at_the_process_limit(suite: Suite, kind: str) -> None:
    marker = f"{1000 + random.random():.9f}"
    body = {
        "sleepers": f"while True:\n    if os.fork() == 0:\n        os.execv('/bin/sleep', ['sleep', '{marker}'])",
        "python": "while True:\n    os.fork()",
    }[kind]
    checked = suite.check("bomb", body)
    assert (
        "BlockingIOError" in checked.errors[0]
        and "(the sandbox allows 128 processes and threads)" in (checked.errors[0])
    )
    assert none_running(marker)  # nothing it started outlives it
    suite.still_fine()


# --------------------------------------------------------------------------------------------------
# Crashes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "said"),
    [
        pytest.param("os._exit(3)", "exited with status 3 before replying", id="exit"),
        pytest.param("import ctypes\nctypes.string_at(0)", "killed by signal SIGSEGV", id="segfault"),
        pytest.param("raise KeyboardInterrupt", "KeyboardInterrupt", id="interrupt"),
        pytest.param("raise SystemExit(0)", "SystemExit", id="system-exit"),
    ],
)
def test_a_crash_fails_only_its_own_validation(suite: Suite, body: str, said: str) -> None:
    checked = suite.check("crasher", body)
    assert said in checked.errors[0] and "hostile/crasher" in checked.errors[0]
    suite.still_fine()


def test_a_crash_at_import_is_an_invalid_plugin(suite: Suite) -> None:
    folder = write_attack(suite.plugins, "import-crash", "return x")
    module = folder / "import_crash.py"
    module.write_text("import os\nos._exit(9)\n" + module.read_text())
    checked = validation.validate(plugins.read_folder(folder), suite.kit.cache_dir, suite.kit)
    assert "exited with status 9" in checked.errors[0]


# --------------------------------------------------------------------------------------------------
# Black-box: the defended model is out of reach
# --------------------------------------------------------------------------------------------------


def test_black_box_target_model_is_refused(suite: Suite) -> None:
    checked = suite.check("peeker", "return target.model(x)", threats=("black-box",))
    assert "ThreatModelError" in checked.errors[0] and "not available" in checked.errors[0]


@pytest.mark.slow
def test_black_box_garbage_collector_finds_no_defended_model(suite: Suite) -> None:
    import io

    import torch

    model = torch.load(io.BytesIO(suite.kit.defense_artifact), map_location="cpu", weights_only=False)
    first = next(model.parameters()).detach()
    params = {"shape": list(first.shape), "total": float(first.double().sum()), "modules": True}
    checked = suite.check(
        "gc-spy", "spy(target, self.shape, self.total, self.modules)\nreturn x", ("black-box",), 120, **params
    )
    assert checked.errors == [] and "found []" in checked.log_tail


@bubblewrap_only
def test_black_box_sees_no_other_process(suite: Suite) -> None:
    body = """
    me = os.getpid()  # pid 1: the plugin runs as the first process of its namespace
    others = sorted(int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, me))
    print(f"process spy: pid {me}, others {others}", flush=True)
    if others:
        raise RuntimeError(f"FOUND processes {others}")
    return x
    """
    checked = suite.check("ps-spy", body, threats=("black-box",))
    assert checked.errors == [] and "process spy: pid 1, others []" in checked.log_tail


# --------------------------------------------------------------------------------------------------
# Malformed outputs, the budget, the log
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "said"),
    [
        pytest.param("return x[:, :, :4]", f"shape ({SAMPLES}, 1, 4, 8), expected ({SAMPLES}, 1, 8, 8)", id="shape"),
        pytest.param("return (x * 255).to(torch.uint8)", "dtype torch.uint8", id="dtype"),
        pytest.param("return x.to('meta')", "a tensor on meta, expected cpu", id="device"),
        pytest.param("return torch.full_like(x, float('nan'))", f"NaN or infinite values in {SAMPLES}", id="nan"),
        pytest.param("return x / 0.0 + 1", f"NaN or infinite values in {SAMPLES}", id="inf"),
        pytest.param("return [x]", "returned list, not a torch.Tensor", id="not-a-tensor"),
    ],
)
def test_a_malformed_output_fails_the_smoke_match(suite: Suite, body: str, said: str) -> None:
    checked = suite.check("malformed", body)
    assert said in checked.errors[0] and checked.errors[0].startswith("smoke match: against arena/undefended")


def test_exceeding_eps_is_projected_and_counted(suite: Suite) -> None:
    checked = suite.check("greedy", "return 1 - x")
    assert checked.errors == []
    assert checked.smoke is not None and checked.smoke["metrics"]["violations"] == SAMPLES


def test_megabytes_of_output_keep_only_the_tail(suite: Suite) -> None:
    body = "for i in range(40_000):\n    print(f'line {i:07d} ' + 'x' * 100)\nprint('the end', flush=True)\nreturn x"
    checked = suite.check("chatty", body)
    assert checked.errors == []
    assert len(checked.log_tail) <= LOG_TAIL_CHARS and checked.log_tail.rstrip().endswith("the end")


# --------------------------------------------------------------------------------------------------
# Hostile defenses
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "said"),
    [
        pytest.param("return 'not a model'", "train() returned str, expected a torch.nn.Module", id="not-a-model"),
        pytest.param(
            "model = ctx.make_model()\nnn.init.constant_(model.classifier[-1].bias, float('nan'))\nreturn model",
            "NaN or infinite logits",
            id="nan-logits",
        ),
        pytest.param("os._exit(5)", "exited with status 5", id="exit"),
    ],
)
def test_a_hostile_defense_fails_its_training(suite: Suite, body: str, said: str) -> None:
    checked = suite.check_defense("saboteur", body)
    assert checked.errors[0].startswith("smoke match: training on smoke:") and said in checked.errors[0]


@bubblewrap_only
def test_a_defense_cannot_phone_home(suite: Suite) -> None:
    body = "import socket\nsocket.create_connection(('127.0.0.1', 5432), timeout=3)\nreturn ctx.make_model()"
    checked = suite.check_defense("phoner", body)
    assert "Network is unreachable" in checked.errors[0]
