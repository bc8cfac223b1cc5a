"""Every setting of the arena, read from the environment here and only here, once per call (no global state).

==============================  ==============================================  ===============================
variable                        meaning                                         default
==============================  ==============================================  ===============================
``ARENA_HOME``                  database, artifacts cache, secret, logs         ``./.arena``
``ARENA_DATABASE_URL``          SQLAlchemy URL (PostgreSQL at scale)            SQLite in ``ARENA_HOME``
``ARENA_DATA_DIR``              MNIST (``mnist.npz`` or the four IDX files)     ``ARENA_HOME/data``
``ARENA_PLUGIN_DIRS``           extra plugin folders, separated by os.pathsep   the built-in ``plugins/``
``ARENA_BUILTINS``              built-in plugins to load, comma-separated       all of them
``ARENA_JOBS``                  jobs the local executor runs side by side       a core each, 1.5 GiB each
``ARENA_BROKER_URL``            Celery broker (Redis); unset: local executor    unset
``ARENA_DAILY_LIMIT``           a team's versions evaluated per 24 hours        10
``ARENA_HOOK_MAX_BYTES``        the largest webhook delivery the board reads    1 MiB
``ARENA_BOARD_SECRET``          the key of the board's sign-in cookies          one per board process
``ARENA_SANDBOX``               ``auto``, ``bubblewrap`` or ``fallback``        ``auto``
``ARENA_SANDBOX_MEMORY``        a sandbox's writable memory (``8G``)            8 GiB
``ARENA_SANDBOX_PROCESSES``     a sandbox's processes and threads               512
``ARENA_SANDBOX_CPU``           CPU seconds per wall-clock second               the cores
``ARENA_SANDBOX_TMP``           a sandbox's temporary space (``1G``)            1 GiB
==============================  ==============================================  ===============================

Besides its own, the arena reads the usual ``OMP_NUM_THREADS`` and ``CUDA_VISIBLE_DEVICES`` (how ``arena
worker`` shares the cores and GPUs) and sets ``OMP_WAIT_POLICY=PASSIVE`` for the processes it starts
(:data:`PROCESS_DEFAULTS`)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

Environ = Mapping[str, str]

#: a team's versions evaluated per 24 hours, unless ``ARENA_DAILY_LIMIT`` or the team says otherwise
DAILY_LIMIT = 10
#: the largest webhook delivery read, in bytes (``ARENA_HOOK_MAX_BYTES``): a push of a few hundred commits fits
HOOK_MAX_BYTES = 1 << 20
#: how ``ARENA_SANDBOX`` may choose the sandbox's isolation
ISOLATIONS = ("auto", "bubblewrap", "fallback")
GIB = 1024**3
#: what the processes the arena starts (its command, workers, sandboxes) get unless the environment says otherwise:
#: OpenMP threads that spin while waiting starve the other processes of a round (attack, referee, workers) on a
#: small machine; passive waiting costs nothing when the machine is idle
PROCESS_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


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
    def from_env(cls, environ: Environ | None = None) -> Settings:
        """Read the settings from ``environ`` (default: the process environment)."""
        env = _env(environ)
        home = Path(env.get("ARENA_HOME", ".arena")).resolve()
        database_url = env.get("ARENA_DATABASE_URL") or f"sqlite:///{home / 'arena.db'}"
        data_dir = Path(env.get("ARENA_DATA_DIR") or home / "data").resolve()
        extra = tuple(Path(p).resolve() for p in env.get("ARENA_PLUGIN_DIRS", "").split(os.pathsep) if p)
        missing = [str(p) for p in extra if not p.is_dir()]
        if missing:
            raise SettingsError(f"ARENA_PLUGIN_DIRS names {', '.join(missing)}, which is not a folder")
        builtin = _builtins(env.get("ARENA_BUILTINS"))
        return cls(home, database_url, data_dir, builtin + extra, broker_url(env), jobs=_jobs(env.get("ARENA_JOBS")))

    def scratch(self) -> Settings:
        """The settings of ``arena plugin check``: a home of its own (``HOME/checks``, its own SQLite database
        and plugin cache), so that checks never reach the class's database or board. It shares the arena's
        secret: a model the arena trained has the same key there, and a check copies it instead of training it
        again (:mod:`arena.commands.checks`)."""
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


def with_process_defaults(environ: Environ) -> dict[str, str]:
    """``environ`` with :data:`PROCESS_DEFAULTS` wherever it sets none of its own: the environment of a process
    the arena starts."""
    return PROCESS_DEFAULTS | dict(environ)


def broker_url(environ: Environ | None = None) -> str | None:
    """``ARENA_BROKER_URL``: the Celery broker, or None (the local executor)."""
    return _env(environ).get("ARENA_BROKER_URL") or None


def daily_limit(environ: Environ | None = None) -> int:
    """``ARENA_DAILY_LIMIT``: how many versions of a team are evaluated per 24 hours (a team's own limit wins)."""
    text = _env(environ).get("ARENA_DAILY_LIMIT", str(DAILY_LIMIT))
    if not text.isdigit():
        raise SettingsError(f"ARENA_DAILY_LIMIT={text!r}: give a whole number")
    return int(text)


def hook_max_bytes(environ: Environ | None = None) -> int:
    """``ARENA_HOOK_MAX_BYTES``: the largest webhook delivery the board reads."""
    text = _env(environ).get("ARENA_HOOK_MAX_BYTES") or str(HOOK_MAX_BYTES)
    if not text.isdigit():
        raise SettingsError(f"ARENA_HOOK_MAX_BYTES={text!r}: give a whole number of bytes")
    return int(text)


def board_secret(environ: Environ | None = None) -> str | None:
    """``ARENA_BOARD_SECRET``: the key of the board's sign-in cookies, or None (one per board process)."""
    return _env(environ).get("ARENA_BOARD_SECRET") or None


def sandbox_isolation(environ: Environ | None = None) -> str:
    """``ARENA_SANDBOX``: the isolation asked for, one of :data:`ISOLATIONS`."""
    requested = _env(environ).get("ARENA_SANDBOX", "auto")
    if requested not in ISOLATIONS:
        raise SettingsError(f"ARENA_SANDBOX={requested!r}: use auto, bubblewrap or fallback")
    return requested


def sandbox_limits(environ: Environ | None = None) -> dict[str, float]:
    """The limits of a sandbox that ``ARENA_SANDBOX_MEMORY``, ``_PROCESSES``, ``_TMP`` and ``_CPU`` set, by the
    names of :class:`arena.sandbox.Limits`' fields (``memory``, ``processes``, ``tmp``, ``cpu``)."""
    env, values = _env(environ), {}
    for name, read in (("memory", _size), ("processes", _count), ("tmp", _size), ("cpu", _rate)):
        key = f"ARENA_SANDBOX_{name.upper()}"
        if env.get(key):
            values[name] = read(key, env[key])
    return values


def _env(environ: Environ | None) -> Environ:
    return os.environ if environ is None else environ


def _size(key: str, text: str) -> int:
    units = {"": 1, "K": 1024, "M": 1024**2, "G": GIB}
    number, unit = text.strip().upper().rstrip("B"), ""
    if number and number[-1] in units:
        number, unit = number[:-1], number[-1]
    try:
        value = int(float(number) * units[unit])
    except ValueError:
        raise SettingsError(f"{key}={text!r}: give a size such as 512M or 8G") from None
    if value <= 0:
        raise SettingsError(f"{key}={text!r}: must be positive")
    return value


def _count(key: str, text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise SettingsError(f"{key}={text!r}: give a positive whole number")
    return int(text)


def _rate(key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise SettingsError(f"{key}={text!r}: give a positive number")
    return value
