"""Where the arena keeps its state, read from the environment once per call (no global state).

========================  ==================================================  =========================
variable                  meaning                                             default
========================  ==================================================  =========================
``ARENA_HOME``            database, artifacts cache, secret, logs             ``./.arena``
``ARENA_DATABASE_URL``    SQLAlchemy URL (PostgreSQL at scale)                SQLite in ``ARENA_HOME``
``ARENA_DATA_DIR``        MNIST (``mnist.npz`` or the four IDX files)         ``ARENA_HOME/data``
``ARENA_PLUGIN_DIRS``     extra plugin folders, separated by ``os.pathsep``   the built-in ``plugins/``
``ARENA_BUILTINS``        built-in plugins to load, comma-separated names     all of them
``ARENA_BROKER_URL``      Celery broker (Redis); unset means local executor   unset
``ARENA_JOBS``            jobs the local executor runs side by side           a core each, 1.5 GiB each
========================  ==================================================  =========================
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, replace
from pathlib import Path


def _builtin_root() -> Path:
    """The built-in plugins: the checkout's ``plugins/`` beside the package (a checkout, ``pip install -e``),
    else the copy an installed package ships inside itself (``arena/builtin``, see pyproject.toml)."""
    package = Path(__file__).resolve().parent
    checkout = package.parent / "plugins"
    return checkout if (checkout / "attacks").is_dir() else package / "builtin"


#: the built-in attacks' and defenses' folders
BUILTIN_PLUGIN_DIRS = tuple(_builtin_root() / kind for kind in ("attacks", "defenses"))


class SettingsError(ValueError):
    """An environment variable of the arena's says something impossible."""


@dataclass(frozen=True)
class Settings:
    """The arena's settings for one process."""

    home: Path
    database_url: str
    data_dir: Path
    plugin_dirs: tuple[Path, ...]
    broker_url: str | None
    secret_home: Path | None = None  # where the secret lies when not in ``home`` (a check's scratch arena)
    jobs: int = 1  # jobs the local executor runs side by side (from the environment: :func:`default_jobs`)

    @classmethod
    def from_env(cls, environ: os._Environ[str] | dict[str, str] | None = None) -> Settings:
        """Read the settings from ``environ`` (default: the process environment)."""
        env = os.environ if environ is None else environ
        home = Path(env.get("ARENA_HOME", ".arena")).resolve()
        database_url = env.get("ARENA_DATABASE_URL") or f"sqlite:///{home / 'arena.db'}"
        data_dir = Path(env.get("ARENA_DATA_DIR") or home / "data").resolve()
        extra = tuple(Path(p).resolve() for p in env.get("ARENA_PLUGIN_DIRS", "").split(os.pathsep) if p)
        missing = [str(p) for p in extra if not p.is_dir()]
        if missing:
            raise SettingsError(f"ARENA_PLUGIN_DIRS names {', '.join(missing)}, which is not a folder")
        builtin = _builtins(env.get("ARENA_BUILTINS"))
        broker = env.get("ARENA_BROKER_URL") or None
        return cls(home, database_url, data_dir, builtin + extra, broker, jobs=_jobs(env.get("ARENA_JOBS")))

    def scratch(self) -> Settings:
        """The settings of ``arena plugin check``: a home of its own (``HOME/checks``, its own SQLite database
        and plugin cache), so that checks never reach the class's database or board. It shares the arena's
        secret: a model the arena trained has the same key there, and a check copies it instead of training it
        again (:mod:`arena.checks`)."""
        home = self.home / "checks"
        url = f"sqlite:///{home / 'arena.db'}"
        return replace(self, home=home, database_url=url, broker_url=None, secret_home=self.secret_home or self.home)

    def secret(self) -> bytes:
        """The arena's secret (seeds of defenses and twins derive from it); created on first use."""
        path = (self.secret_home or self.home) / "secret"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_hex(32))
            path.chmod(0o600)
        return bytes.fromhex(path.read_text().strip())


def default_jobs() -> int:
    """The jobs a machine runs side by side by default: one per core this process may use, at most one per
    1.5 GiB of memory (a job, its sandboxes and its warm attack processes)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(1, min(cores, int(memory / (1.5 * 2**30))))


def _jobs(value: str | None) -> int:
    if not value:
        return default_jobs()
    if not value.isdigit() or int(value) < 1:
        raise SettingsError(f"ARENA_JOBS must be a whole number of jobs, at least 1, not {value!r}")
    return int(value)


def _builtins(chosen: str | None) -> tuple[Path, ...]:
    """The built-in plugin folders: all of them, or the plugins named in ``chosen`` (``""``: none)."""
    folders = tuple(p for p in BUILTIN_PLUGIN_DIRS if p.is_dir())
    if chosen is None:
        return folders
    names = {name.strip() for name in chosen.split(",") if name.strip()}
    found = {p.name: p for folder in folders for p in folder.iterdir() if (p / "plugin.toml").is_file()}
    unknown = sorted(names - set(found))
    if unknown:
        raise SettingsError(f"ARENA_BUILTINS names unknown plugins {unknown}; built-in: {', '.join(sorted(found))}")
    return tuple(found[name] for name in sorted(names))
