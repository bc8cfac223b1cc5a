"""Runs untrusted plugin code in a child process: time limit, captured log, nothing outlives it.

The child is forked from a *forkserver* that has imported torch and the arena but never loaded a
model, a database connection or a secret, so a child starts in a fraction of a second and inherits
nothing it should not see. The parent drives the child with requests over a pipe; while it waits for
a reply it answers the child's queries (the black-box ``query`` of :mod:`arena.threats`).

Everything the child sends is untrusted: the parent decodes it with :class:`_ChildUnpickler`, which
accepts plain data and numpy arrays only, so a hostile child cannot run code in the arena's process
through a crafted pickle.

Isolation here is the portable fallback: its own session (process group), a minimal environment,
a private working directory, no core dumps and an address-space limit on CPU-only hosts. It does not
stop network access or reading files: that needs the bubblewrap sandbox.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import pickle
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from arena.plugins import describe_error

LOG_TAIL_CHARS = 4000
KEEP_ENV = ("PATH", "LANG", "LC_ALL", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")
ADDRESS_SPACE_LIMIT = 32 * 1024**3
STOP = ("stop",)
#: the only globals a child's message may name (numpy arrays and scalars); everything else is plain data
ALLOWED_GLOBALS = frozenset(
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric")
    for name in ("_reconstruct", "scalar", "_frombuffer")
) | {("numpy", "ndarray"), ("numpy", "dtype")}

_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(["torch", "numpy", "sklearn.datasets", "arena.match", "arena.training"])

Handler = Callable[[Any], Any]
QueryHandler = Callable[[Any], Any]


class PluginFailure(Exception):
    """Plugin code failed (exception, crash, time-out, bad reply): the reason and the log tail."""

    def __init__(self, reason: str, log_tail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.log_tail = log_tail


class Sandbox:
    """A child process serving requests with ``setup(conn, *args)``'s handler, under one wall-clock limit.

    ``setup`` runs in the child and returns the function that answers each request; it may use
    ``conn`` to send ``("query", x)`` messages, which the parent answers with ``on_query``.

    >>> with Sandbox(make_handler, (spec,), time_limit=60, label="team/fgsm") as box:
    ...     reply = box.call(("batch", x, y), on_query=answer)
    """

    def __init__(self, setup: Callable[..., Handler], args: tuple[Any, ...], time_limit: float, label: str) -> None:
        self.label = label
        self.time_limit = time_limit
        self._workdir = Path(tempfile.mkdtemp(prefix="arena-sandbox-"))
        self._log = self._workdir / "log.txt"
        self._conn, child_conn = _context.Pipe()
        self._process = _context.Process(
            target=_child_main, args=(child_conn, str(self._log), str(self._workdir), setup, args), daemon=True
        )
        self._child_conn = child_conn
        self._deadline = 0.0

    def __enter__(self) -> Sandbox:
        self._deadline = time.monotonic() + self.time_limit
        _warn_fallback()
        with _main_hidden():
            _start_forkserver()
            self._process.start()
        self._child_conn.close()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def call(self, request: Any, on_query: QueryHandler | None = None) -> Any:
        """Send ``request``, answer queries until the reply comes; raise :class:`PluginFailure`."""
        try:
            self._conn.send(request)
        except (BrokenPipeError, ConnectionResetError, OSError):
            raise self._failure(self._last_words() or self._death_reason()) from None
        while True:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                self._kill()
                raise self._failure(f"time-out: exceeded the limit of {self.time_limit:.0f} s")
            try:
                ready = self._conn.poll(min(remaining, 1.0))
                if not ready:
                    if not self._process.is_alive() and not self._conn.poll(0):
                        raise self._failure(self._death_reason())
                    continue
                data = self._conn.recv_bytes()
            except (EOFError, ConnectionResetError, OSError):
                raise self._failure(self._death_reason()) from None
            try:
                message = _ChildUnpickler(io.BytesIO(data)).load()
            except Exception as exc:  # untrusted bytes: failing to decode them is the plugin's failure
                self._kill()
                raise self._failure(f"protocol violation: unreadable message ({exc})") from None
            kind = message[0] if isinstance(message, tuple) and message else None
            if kind == "reply":
                return message[1]
            if kind == "error":
                raise self._failure(message[1])
            if kind == "query" and on_query is not None:
                self._conn.send(on_query(message[1]))
                continue
            self._kill()
            raise self._failure(f"protocol violation: unexpected message of type {type(message).__name__}")

    @property
    def log_tail(self) -> str:
        """The last characters the child printed (stdout and stderr)."""
        try:
            with open(self._log, "rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - LOG_TAIL_CHARS))
                return log.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        """Stop the child, kill whatever it started, and remove its private directory."""
        if self._process.is_alive():
            with contextlib.suppress(OSError):
                self._conn.send(STOP)
            self._process.join(timeout=2)
        self._kill()
        self._conn.close()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def _kill(self) -> None:
        pid = self._process.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)  # the child leads its own group: its descendants die too
        self._process.join(timeout=5)

    def _last_words(self) -> str | None:
        """The error a child that died before reading its request had already sent, if any."""
        with contextlib.suppress(Exception):
            if self._conn.poll(0):
                message = _ChildUnpickler(io.BytesIO(self._conn.recv_bytes())).load()
                if isinstance(message, tuple) and len(message) == 2 and message[0] == "error":
                    return str(message[1])
        return None

    def _death_reason(self) -> str:
        self._process.join(timeout=5)
        code = self._process.exitcode
        if code is None:
            return "the plugin's process stopped answering"
        if code < 0:
            return f"the plugin's process was killed by signal {signal.Signals(-code).name}"
        return f"the plugin's process exited with status {code} before replying"

    def _failure(self, reason: str) -> PluginFailure:
        return PluginFailure(f"{self.label}: {reason}", self.log_tail)


class _ChildUnpickler(pickle.Unpickler):
    """Decodes a child's message: plain data and numpy arrays only, never a reference to code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"forbidden object {module}.{name}")


@functools.cache
def _warn_fallback() -> None:
    logging.getLogger(__name__).warning(
        "sandbox: portable fallback in use (no bubblewrap): plugin code runs in a child process with a "
        "minimal environment and a time limit, but can still read what the arena can read and reach the network"
    )


def _start_forkserver() -> None:
    """Start the forkserver (once; again if it died) with only :data:`KEEP_ENV` in its environment.

    Its children inherit its initial environment (``/proc/self/environ``), so the arena's secrets
    must never be in it.
    """
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update({k: saved[k] for k in KEEP_ENV if k in saved})
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def _main_hidden() -> Iterator[None]:
    """Start children without re-running the parent's main script (as multiprocessing would).

    The child needs nothing from the parent's ``__main__`` (a CLI, a worker, a test runner); running
    it again would cost time and could have side effects.
    """
    main = sys.modules["__main__"]
    saved = {name: main.__dict__[name] for name in ("__file__", "__spec__") if name in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.update(saved)


def _child_main(conn: Connection, log: str, workdir: str, setup: Callable[..., Handler], args: tuple) -> None:
    os.setsid()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 (the process's own stdout)
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    _confine(workdir)
    try:
        handler = setup(conn, *args)
        while (request := conn.recv()) != STOP:
            conn.send(("reply", handler(request)))
    except BaseException as exc:  # the plugin's failure, reported to the parent, never raised further
        traceback.print_exc()
        with contextlib.suppress(OSError):
            conn.send(("error", describe_error(exc)))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _confine(workdir: str) -> None:
    """The portable fallback: minimal environment, private directory, no core dumps, bounded memory."""
    kept = {k: os.environ[k] for k in KEEP_ENV if k in os.environ}
    os.environ.clear()
    os.environ.update(kept, HOME=workdir, TMPDIR=workdir)
    tempfile.tempdir = workdir
    os.chdir(workdir)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if not os.environ.get("CUDA_VISIBLE_DEVICES") and not Path("/dev/nvidia0").exists():
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))
