"""Shared fixtures: an isolated arena home per test, and the shared MNIST data when present."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from models import TEST_SECRET, open_store
from services import fresh_postgres_database

from arena.config import Settings
from arena.store import Database

#: MNIST for tests and benchmarks lies beside the repository (never inside it)
SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist.npz"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with the most slow tests first (the Makefile's ``--no-loadscope-reorder`` keeps this order):
    xdist hands out whole files, and a long file handed out last runs alone while the other workers idle."""
    slow: dict[Path, int] = {}
    for item in items:
        slow[item.path] = slow.get(item.path, 0) + (item.get_closest_marker("slow") is not None)
    items.sort(key=lambda item: -slow[item.path])  # stable: a file's tests keep their order


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Torch on one thread for a test file (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny models
    train and run several times faster so, and far faster on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def arena_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ``ARENA_HOME`` (SQLite database, artifacts, secret) for one test; its rounds run one job at a time
    (the suite runs files side by side already; tests/test_local_parallel.py runs several)."""
    home = tmp_path / "arena-home"
    monkeypatch.setenv("ARENA_HOME", str(home))
    monkeypatch.setenv("ARENA_JOBS", "1")
    monkeypatch.delenv("ARENA_DATABASE_URL", raising=False)
    monkeypatch.delenv("ARENA_BROKER_URL", raising=False)
    return home


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Iterator[Database]:
    """Trained models and evaluation sets that the suite's rounds share across test files and xdist workers: a SQLite
    database beside the workers' temporary folders (one per run; tests/models.py)."""
    root = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    db = open_store(root)
    yield db
    db.dispose()


@pytest.fixture
def shared_models(arena_home: Path, model_store: Database) -> Database:
    """The test's arena under :data:`TEST_SECRET`, sharing its trained models with the suite's other rounds under it
    (pass it to ``cheating.play``): a defense, its twin and the substitute train once per run, not once per round."""
    arena_home.mkdir(parents=True, exist_ok=True)
    (arena_home / "secret").write_text(TEST_SECRET)
    return model_store


@pytest.fixture
def settings(arena_home: Path) -> Settings:
    """Settings pointing at the test's own arena home."""
    return Settings.from_env()


@pytest.fixture
def mnist_dir() -> Path:
    """The folder holding ``mnist.npz`` (``../shared/data``); skips where it is absent."""
    if not SHARED_MNIST.exists():
        pytest.skip(f"MNIST not found at {SHARED_MNIST}")
    return SHARED_MNIST.parent


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.service)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A freshly migrated database: a SQLite file, or a new database on the test PostgreSQL server."""
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'arena.db'}")
        db.upgrade()
        yield db
        db.dispose()
    else:
        with fresh_postgres_database() as url:
            db = Database(url)
            db.upgrade()
            yield db
            db.dispose()
