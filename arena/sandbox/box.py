"""Runs untrusted plugin code in a sandbox: isolated, limited, its output captured, nothing outliving it.

A sandbox is a process forked from this process's *zygote* (:mod:`arena.sandbox.zygote`), which imported torch
and the arena once but never loaded a model, a database connection or a secret, so a sandbox starts in
milliseconds. Where bubblewrap works (``isolation().mode == "bubblewrap"``) the plugin's process

* sees a read-only file system holding only the system, the Python installation, the arena's code and
  the folders handed to it; the arena's home (database, secret, artifacts, other teams' code), the data
  folder and the data sets that installed packages carry (scikit-learn's digits) are hidden: a plugin
  gets data only from the arena; it writes only to private temporary file systems (``/tmp``, ``/dev/shm`` and the
  plugin cache), gone with it;
* has no network, runs as a user of its own (when the arena runs as root) with no capabilities, in a pid
  namespace of its own whose pid 1 is the arena's: when the sandbox ends, every process it started ends;
* starts with a minimal environment (no secret of the arena) and runs under limits of CPU time,
  memory, processes and wall-clock time (:class:`Limits`); GPUs stay usable.

Without bubblewrap (or with ``ARENA_SANDBOX=fallback``) the *fallback* keeps the minimal environment,
the private working directory, the limits and the wall clock, but plugin code can read what the arena
can read and reach the network; the arena says so loudly.

The parent drives the sandbox with requests over a pipe; while it waits for a reply it answers the
child's queries (the black-box ``query`` of :mod:`arena.play.threats`). Everything the child sends is
untrusted: :class:`_ChildUnpickler` accepts plain data and numpy arrays only. Its stdout and stderr are
drained by the parent, which keeps the last :data:`LOG_TAIL_CHARS` characters (plugins may print
without bound).

A failure of the plugin raises :class:`PluginFailure` (its match or validation fails); a failure of the
arena to set the sandbox up raises :class:`SandboxError` (the job is retried, the plugin not blamed).

Over 400 lines: a sandbox's start, calls and stop share its pipe, its limits and its log; they read best together.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import os
import pickle
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing.connection import Pipe
from pathlib import Path
from typing import Any, Protocol

from arena.config import BUILTIN_PLUGIN_DIRS, GIB, Environ, Settings, sandbox_limits
from arena.rules.data import bundled_data_files
from arena.sandbox import namespaces, wire
from arena.sandbox.child import KEEP_ENV
from arena.sandbox.zygote import Child, Isolation, OutputTail, SandboxError, get_zygote, isolation

__all__ = ["KEEP_ENV", "Isolation", "Limits", "PluginFailure", "Sandbox", "SandboxError", "Watch", "isolation"]

LOG_TAIL_CHARS = 4000
#: seconds the arena waits for a sandbox to be set up before it blames itself
READY_TIMEOUT = 120.0
#: the only globals a child's message may name (numpy arrays and scalars); everything else is plain data
ALLOWED_GLOBALS = frozenset(
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric")
    for name in ("_reconstruct", "scalar", "_frombuffer")
) | {("numpy", "ndarray"), ("numpy", "dtype")}

#: the threads that close sandboxes off their callers' critical path (:meth:`Sandbox.close_soon`)
_CLOSING = ThreadPoolExecutor(max_workers=2, thread_name_prefix="arena-closing")

Handler = Callable[[Any], Any]
#: what the parent does for a child's ``(name, payload)`` message: its reply is sent back
Service = Callable[[Any], Any]


class Watch(Protocol):
    """Keeps a call's time by whose code runs (see :class:`arena.play.watch.DefenseWatch`): the child's one-way
    ``("notice", payload)`` messages say when another party's code starts and ends in it."""

    def notice(self, payload: Any) -> None:
        """Record a notice of the child's (untrusted: a malformed one is ignored)."""

    def excused(self) -> float:
        """Seconds of the call so far that are not charged to the child's time limit."""

    def overdue(self) -> str | None:
        """Why the call must stop now (another party's code has run past its budget), or None."""


log = logging.getLogger(__name__)


class PluginFailure(Exception):
    """Plugin code failed (exception, crash, time-out, bad reply): the reason and the log tail."""

    def __init__(self, reason: str, log_tail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.log_tail = log_tail


@dataclass(frozen=True)
class Limits:
    """What one sandbox may use besides its wall-clock time (read from the environment by default).

    ``memory``: bytes of writable memory beyond what the zygote holds (``ARENA_SANDBOX_MEMORY``, e.g.
    ``8G``; not enforced on GPU hosts, where CUDA needs address space of its own); ``processes``:
    processes and threads (``ARENA_SANDBOX_PROCESSES``); ``tmp``: the size of each private temporary
    file system (``ARENA_SANDBOX_TMP``); ``cpu``: CPU seconds per second of the wall-clock limit
    (``ARENA_SANDBOX_CPU``, default: the number of cores, so it only stops what the clock would not).
    """

    memory: int = 8 * GIB
    processes: int = 512
    tmp: int = 1 * GIB
    cpu: float = float(os.cpu_count() or 1)

    @classmethod
    def from_env(cls, environ: Environ | None = None) -> Limits:
        """The limits set in ``environ`` (default: the process environment), else the defaults."""
        return cls(**sandbox_limits(environ))  # type: ignore[arg-type]


class Sandbox:
    """A sandboxed process serving requests with ``setup(conn, *args)``'s handler, under one wall-clock limit.

    ``setup`` runs in the child and returns the function that answers each request; it may use
    ``conn`` to ask the parent for a service, ``(name, payload)`` (``("query", x)``), which the parent
    answers with ``services[name](payload)`` while it waits for the reply to a request. The child
    may read the folders in ``readable`` and gets an empty private file system at each of ``writable``
    (a plugin cache), besides its private ``/tmp``.

    >>> with Sandbox(make_handler, (spec,), time_limit=60, label="team/fgsm") as box:
    ...     reply = box.call(("batch", x, y), services={"query": answer})
    """

    def __init__(
        self,
        setup: Callable[..., Handler],
        args: tuple[Any, ...],
        time_limit: float,
        label: str,
        readable: Iterable[Path] = (),
        writable: Iterable[Path] = (),
        limits: Limits | None = None,
    ) -> None:
        self.label = label
        self.time_limit = time_limit
        self._setup, self._args = setup, args
        self._readable, self._writable = [Path(p) for p in readable], [Path(p) for p in writable]
        self._limits = limits
        self._child: Child | None = None
        self._log: OutputTail | None = None
        self._final_log: str | None = None
        self._lifeline = -1
        self._workdir: Path | None = None
        self._deadline = 0.0
        self._cpu_seconds = 0

    @property
    def pid(self) -> int:
        """The host's pid of the sandbox's outermost process (killing its group ends the sandbox)."""
        assert self._child is not None, "the sandbox has not started"
        return self._child.pid

    def __enter__(self) -> Sandbox:
        mode = isolation()
        if mode.mode == "fallback":
            _warn_fallback(mode.reason)
        limits = self._limits or Limits.from_env()
        config = self._config(mode, limits)
        self._cpu_seconds = config["cpu_seconds"]
        view = self._view() if mode.mode == "bubblewrap" else None
        zygote = get_zygote(view)
        self._conn, theirs = Pipe()
        log_r, log_w = os.pipe()
        life_r, self._lifeline = os.pipe()
        status_r, status_w = os.pipe()
        try:
            pid = zygote.spawn([theirs.fileno(), log_w, life_r, status_w])
        except BaseException:
            for fd in (log_r, self._lifeline, status_r):
                os.close(fd)
            raise
        finally:
            theirs.close()
            for fd in (log_w, life_r, status_w):
                os.close(fd)
        self._child = Child(pid, status_r)
        self._log = OutputTail(log_r, LOG_TAIL_CHARS)
        try:
            self._conn.send(config)
            self._conn.send_bytes(pickle.dumps((self._setup, self._args)))
            self._await_ready()
        except BaseException:
            self.close()
            raise
        self._deadline = time.monotonic() + self.time_limit
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # over 60 lines: the one loop that waits for the reply and answers what comes meanwhile
    def call(
        self,
        request: Any,
        services: Mapping[str, Service] | None = None,
        watch: Watch | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send ``request``, answer the child's service requests until the reply comes; raise :class:`PluginFailure`.

        ``watch`` receives the child's notices and excuses the time another party's code ran in it, or stops
        the call when that code overruns (:class:`Watch`); ``timeout`` bounds this call below the sandbox's limit.
        """
        try:
            self._conn.send(request)
        except (BrokenPipeError, ConnectionResetError, OSError):
            raise self._failure(self._last_words() or self._death_reason()) from None
        started = time.monotonic()
        while True:
            now = time.monotonic()
            remaining = self._deadline + (watch.excused() if watch is not None else 0.0) - now
            if timeout is not None and now - started >= timeout:
                self._kill()
                raise self._failure(f"time-out: no answer within {timeout:.1f} s")
            if remaining <= 0:
                self._kill()
                raise self._failure(f"time-out: exceeded the limit of {self.time_limit:.0f} s")
            overdue = watch.overdue() if watch is not None else None
            if overdue is not None:
                self._kill()
                raise self._failure(overdue)
            if timeout is not None:
                remaining = min(remaining, started + timeout - now)
            try:
                ready = self._conn.poll(min(remaining, 1.0))
                if not ready:
                    if not self._alive() and not self._conn.poll(0):
                        raise self._failure(self._death_reason())
                    continue
                data = self._conn.recv_bytes()
            except (EOFError, ConnectionResetError, OSError):
                raise self._failure(self._death_reason()) from None
            try:
                kind, payload = wire.open_message(_ChildUnpickler(io.BytesIO(data)).load())
            except wire.ProtocolError as exc:
                self._kill()
                raise self._failure(str(exc)) from None
            except Exception as exc:  # untrusted bytes: failing to decode them is the plugin's failure
                self._kill()
                raise self._failure(f"protocol violation: unreadable message ({exc})") from None
            if kind == "reply":
                return payload
            if kind == "error":
                raise self._failure(str(payload))
            if kind == wire.NOTICE:
                if watch is not None:
                    watch.notice(payload)
                continue
            if services is not None and kind in services:
                self._conn.send(services[kind](payload))
                continue
            self._kill()
            raise self._failure(f"protocol violation: unexpected message {kind!r}")

    def renew(self) -> None:
        """Start the wall-clock limit afresh: a warm sandbox serves each match within its own limit."""
        self._deadline = time.monotonic() + self.time_limit

    def log_mark(self) -> int:
        """How many bytes the child has printed so far (see :meth:`log_since`)."""
        if self._log is None:
            return 0
        self._log.text()  # read what the pipe holds now
        return self._log.total

    def log_since(self, mark: int) -> str:
        """The last characters the child printed after :meth:`log_mark` gave ``mark``."""
        return self._log.since(mark)[-LOG_TAIL_CHARS:] if self._log is not None else ""

    @property
    def log_tail(self) -> str:
        """The last characters the child printed (stdout and stderr), also after the sandbox closed."""
        if self._final_log is not None:
            return self._final_log
        return self._log.text()[-LOG_TAIL_CHARS:] if self._log is not None else ""

    def close(self) -> None:
        """Stop the child, kill whatever it started, and release everything the sandbox held."""
        if self._child is None:
            return
        if self._alive():
            with contextlib.suppress(OSError):
                self._conn.send(wire.STOP)
            self._child.wait(2)
        self._kill()
        self._conn.close()
        if self._log is not None:
            self._log.close()
            self._final_log = self._log.text()[-LOG_TAIL_CHARS:]
        self._child.close()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def close_soon(self) -> None:
        """:meth:`close` in a background thread: the caller goes on while the child ends (5 to 10 ms)."""
        _CLOSING.submit(self.close)

    # ----------------------------------------------------------------------------------------------

    def _config(self, mode: Isolation, limits: Limits) -> dict[str, Any]:
        """What the child needs to confine itself: plain data, sent before the code it runs."""
        sandboxed = mode.mode == "bubblewrap"
        if sandboxed:
            workdir = "/tmp"
        else:
            self._workdir = Path(tempfile.mkdtemp(prefix="arena-sandbox-"))
            workdir = str(self._workdir)
        private = [("/tmp", limits.tmp), ("/dev/shm", limits.tmp)]
        private += [(str(p), limits.tmp) for p in self._writable if not str(p).startswith("/tmp/")]
        gpu = bool(namespaces.gpu_devices()) or bool(os.environ.get("CUDA_VISIBLE_DEVICES"))
        return {
            "sandboxed": sandboxed,
            "private": private,
            "workdir": workdir,
            "limits": asdict(limits),
            "memory": None if gpu else limits.memory,
            "cpu_seconds": math.ceil(self.time_limit * limits.cpu) + 1,
        }

    def _view(self) -> namespaces.View:
        """The folders the child may read, those hidden from it, and its private writable ones."""
        if os.getuid() == 0:  # the sandbox runs as a user of its own: what it is handed must be everyone's to read
            for path in self._readable:
                if path.exists() and not path.stat().st_mode & (0o005 if path.is_dir() else 0o004):
                    raise SandboxError(f"{path} is handed to the sandbox but only its owner may read it: chmod o+rX")
        for folder in self._writable:  # a mount point must exist (see namespaces.build_view)
            folder.mkdir(parents=True, exist_ok=True)
        present = tuple(p.exists() for p in self._readable)  # a view binds only what exists
        return _view_of(Settings.from_env(), tuple(self._readable), present, tuple(self._writable), tuple(sys.path))

    def _await_ready(self) -> None:
        """Wait until the child is confined and has loaded the code it runs; raise :class:`SandboxError`."""
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            try:
                if not self._conn.poll(0.5):
                    if not self._alive():
                        break
                    continue
                message = _ChildUnpickler(io.BytesIO(self._conn.recv_bytes())).load()
            except (EOFError, OSError, pickle.UnpicklingError):
                break
            if message == wire.READY:
                return
            if isinstance(message, tuple) and message[:1] == (wire.SETUP_ERROR,):
                raise SandboxError(f"{self.label}: the sandbox could not be set up: {message[1]}")
            break
        else:
            raise SandboxError(f"{self.label}: the sandbox was not ready within {READY_TIMEOUT:.0f} s")
        raise SandboxError(f"{self.label}: the sandbox died while starting ({self._death_reason()}): {self.log_tail}")

    def _alive(self) -> bool:
        return self._child is not None and self._child.alive()

    def _kill(self) -> None:
        # Once the proxy is gone, a sandbox in bubblewrap is gone whole (its pid namespace died with it);
        # in the fallback, processes it started may linger in its process group.
        if self._child is not None and (self._child.wait() is None or self._workdir is not None):
            self._child.kill()
        if self._lifeline >= 0:
            os.close(self._lifeline)  # the proxy kills what is left (a pid namespace, a process group)
            self._lifeline = -1
        if self._child is not None:
            self._child.wait(5)

    def _last_words(self) -> str | None:
        """The error a child that died before reading its request had already sent, if any."""
        with contextlib.suppress(Exception):
            if self._conn.poll(0):
                kind, payload = wire.open_message(_ChildUnpickler(io.BytesIO(self._conn.recv_bytes())).load())
                if kind == "error":
                    return str(payload)
        return None

    def _death_reason(self) -> str:
        code = self._child.wait(5) if self._child is not None else None
        if code is None:
            return "the plugin's process stopped answering"
        if code == -signal.SIGXCPU:
            return f"the plugin's process exceeded its CPU-time limit of {self._cpu_seconds} s (SIGXCPU)"
        if code < 0:
            return f"the plugin's process was killed by signal {signal.Signals(-code).name}"
        return f"the plugin's process exited with status {code} before replying"

    def _failure(self, reason: str) -> PluginFailure:
        return PluginFailure(f"{self.label}: {reason}", self.log_tail)


@functools.lru_cache(maxsize=64)
def _view_of(
    settings: Settings,
    readable: tuple[Path, ...],
    present: tuple[bool, ...],
    writable: tuple[Path, ...],
    search_path: tuple[str, ...],
) -> namespaces.View:
    """The view of a sandbox handed ``readable`` (``present``: which exist) and ``writable`` under ``settings``.

    Cached: resolving every path of the view costs milliseconds, and a worker starts sandboxes with the
    same few arguments again and again (``present`` and ``search_path``, which the view binds, are in the key).
    """
    del present, search_path  # only keys of the cache
    hidden = [settings.home, *(d for d in settings.plugin_dirs if d not in BUILTIN_PLUGIN_DIRS)]
    hidden += [settings.data_dir, *bundled_data_files()]  # data reach plugins only through the arena
    if settings.database_url.startswith("sqlite:///"):
        database = Path(settings.database_url.removeprefix("sqlite:///"))
        hidden += [database.with_name(database.name + suffix) for suffix in ("", "-wal", "-shm", "-journal")]
    package = Path(__file__).resolve().parents[1]  # the arena package, not only arena/sandbox
    return namespaces.build_view([package, *readable], hidden, writable)


class _ChildUnpickler(pickle.Unpickler):
    """Decodes a child's message: plain data and numpy arrays only, never a reference to code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"forbidden object {module}.{name}")


@functools.cache
def _warn_fallback(reason: str) -> None:
    log.warning(
        "sandbox: WEAKER FALLBACK in use (%s). Plugin code runs in a child process with a minimal environment, "
        "a private working directory and limits of time, CPU and memory, but it can read what the arena can read "
        "(the database, the secret, other teams' code) and reach the network, and a process it starts in a new "
        "session may outlive it. Install bubblewrap for the real sandbox.",
        reason,
    )
