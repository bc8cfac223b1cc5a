"""The zygote: a process that imported torch and the arena once and forks a sandboxed child per request.

Starting Python and importing torch takes seconds; forking a process that did so already takes
milliseconds. The arena starts one zygote per process (again when it dies, or when a sandbox needs
folders its view lacks), with a minimal environment and, where bubblewrap works, inside the view of
:mod:`arena.sandbox.namespaces`. The zygote never loads a model, a database connection or a secret, and never
runs plugin code.

A request hands the zygote four file descriptors: the request pipe (to the sandboxed code), the log
pipe (its stdout and stderr), a *lifeline* (the arena closes it to end the sandbox, or dies) and a
status pipe (where the zygote writes the child's exit code). The child forked for it is a *proxy*: it
enters the sandbox's namespaces and forks the process that serves the requests, pid 1 of the sandbox's
pid namespace; the proxy waits for it or for the lifeline to close, then kills whatever is left and exits
with the served process's status. Without bubblewrap (the *fallback*) the proxy does the same without
namespaces, serving from its child and killing the process group instead.

Over 400 lines: the arena's side and the zygote's own side of one socket protocol, kept in one file so that the
two ends change together.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import io
import json
import logging
import os
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NoReturn

from arena.config import sandbox_isolation
from arena.sandbox import namespaces, wire
from arena.sandbox.child import EX_CPU, EX_SETUP, minimal_env, serve
from arena.sandbox.namespaces import View

PRELOAD = ("torch", "numpy", "arena.play.match", "arena.play.training")
#: the zygote's malloc asks for transparent huge pages and keeps large blocks (up to 32 MiB: a batch's
#: activations) in its heap instead of fresh mappings: its children fork, fault and run faster (fewer
#: page-table entries to copy, fewer page faults and TLB misses); plugins never see the variable
MALLOC_TUNABLES = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=33554432"}
#: seconds a zygote may take to import torch and the arena (a loaded machine is slow)
START_TIMEOUT = 300.0
BOOT = (
    "import sys; sys.path[:] = {path!r}; from arena.sandbox.zygote import main; main({fd}, {preload!r}, {sandboxed!r})"
)

log = logging.getLogger("arena.sandbox")


class SandboxError(RuntimeError):
    """The arena could not start a sandbox (its own fault: bubblewrap, the host, a dead zygote)."""


@dataclass(frozen=True)
class Isolation:
    """How sandboxes are isolated here: ``bubblewrap``, or the weaker ``fallback`` and why."""

    mode: str
    reason: str = ""


def isolation() -> Isolation:
    """The isolation this process's sandboxes get (``ARENA_SANDBOX``: ``auto``, ``bubblewrap``, ``fallback``).

    ``auto`` (the default) uses bubblewrap when it is installed and the host lets it create the
    namespaces a sandbox needs, else the fallback, with a warning that says why.
    """
    requested = sandbox_isolation()
    if requested == "fallback":
        return Isolation("fallback", "ARENA_SANDBOX=fallback")
    problem = _bubblewrap_problem()
    if problem is None:
        return Isolation("bubblewrap")
    if requested == "bubblewrap":
        raise SandboxError(f"ARENA_SANDBOX=bubblewrap, but {problem}")
    return Isolation("fallback", problem)


def installed_under_tmp() -> str | None:
    """Why the sandbox cannot see this Python or the arena (None when it can): each sandbox gets a private,
    empty ``/tmp``, so an installation or a checkout under ``/tmp`` would vanish inside it."""
    for what, path in (("Python installation", sys.prefix), ("arena package", str(Path(__file__).parents[1]))):
        real = os.path.realpath(path)
        if real == "/tmp" or real.startswith("/tmp/"):
            return f"the {what} lies under /tmp ({real}), which each sandbox replaces: install it elsewhere"
    return None


@functools.cache
def _bubblewrap_problem() -> str | None:
    """Why bubblewrap cannot isolate sandboxes here (None when it can): a probe in a minimal view."""
    bwrap = namespaces.bwrap()
    if bwrap is None:
        return "bubblewrap is not installed (Debian: apt-get install bubblewrap)"
    under_tmp = installed_under_tmp()
    if under_tmp:
        return under_tmp
    view = namespaces.build_view([Path(namespaces.__file__).parent], [], [])
    command = [bwrap, *view.bwrap_args(), "--", sys.executable, "-I", "-S", namespaces.__file__]
    try:
        done = subprocess.run(command, env=minimal_env(), capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap failed to start: {exc}"
    if done.returncode != 0:
        said = (done.stdout + done.stderr).strip().splitlines()
        return f"bubblewrap cannot create a sandbox here: {said[-1] if said else f'status {done.returncode}'}"
    return None


# --------------------------------------------------------------------------------------------------
# The arena's side
# --------------------------------------------------------------------------------------------------


class OutputTail:
    """Drains a pipe in a thread and keeps its last ``keep`` bytes: a plugin may print without bound."""

    def __init__(self, fd: int, keep: int) -> None:
        self._fd, self._keep = fd, keep
        self._data = bytearray()
        self.total = 0
        self._lock = threading.Lock()
        self._open = True
        os.set_blocking(fd, False)
        self._thread = threading.Thread(target=self._run, name="sandbox-log", daemon=True)
        self._thread.start()

    def text(self) -> str:
        """Everything kept so far, up to the last byte written (read now, not left in the pipe)."""
        with self._lock:
            self._pump()
            return self._data.decode("utf-8", errors="replace")

    def since(self, mark: int) -> str:
        """What was written after the first ``mark`` bytes, as far as it is kept (also once closed)."""
        with self._lock:
            if self._open:
                self._pump()
            return self._data[max(0, len(self._data) - (self.total - mark)) :].decode("utf-8", errors="replace")

    def close(self) -> None:
        """Read what is left, stop the thread and close the pipe."""
        with self._lock:
            self._pump()
            self._open = False
            os.close(self._fd)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._open or not self._pump():
                    return
            select.select([self._fd], [], [], 0.5)

    def _pump(self) -> bool:
        """Read what the pipe holds (lock held); False at its end or once closed."""
        while self._open:
            try:
                chunk = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                return True
            if not chunk:
                return False
            self.total += len(chunk)
            self._data += chunk
            del self._data[: max(0, len(self._data) - self._keep)]
        return False


class Zygote:
    """A running zygote (see the module's docstring), in bubblewrap with ``view`` or in the fallback."""

    def __init__(self, view: View | None) -> None:
        self.view = view
        self.owner = os.getpid()
        self._lock = threading.Lock()
        self._sock, theirs = socket.socketpair()
        boot = BOOT.format(fd=theirs.fileno(), path=sys.path, preload=PRELOAD, sandboxed=view is not None)
        command = [sys.executable, "-c", boot]
        if view is not None:
            command = [str(namespaces.bwrap()), *view.bwrap_args(), "--", *command]
        out_r, out_w = os.pipe()
        try:
            self._process = subprocess.Popen(
                command,
                pass_fds=(theirs.fileno(),),
                env={**MALLOC_TUNABLES, **minimal_env()},
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=out_w,
                start_new_session=True,
            )
        finally:
            theirs.close()
            os.close(out_w)
        self.output = OutputTail(out_r, 4000)
        self._await_ready()

    def spawn(self, fds: list[int]) -> int:
        """Fork a proxy serving over ``fds`` (request, log, lifeline, status); return its pid."""
        with self._lock:
            try:
                socket.send_fds(self._sock, [b"s"], fds)
                reply = _recv_json(self._sock)
            except (OSError, EOFError) as exc:
                raise SandboxError(f"the sandbox zygote stopped answering ({exc}): {self.output.text()}") from None
        return int(reply["pid"])

    def alive(self) -> bool:
        """Whether the zygote still runs and belongs to this process (not inherited through a fork)."""
        return self.owner == os.getpid() and self._process.poll() is None

    def retire(self) -> None:
        """Accept no more requests; the zygote exits once its children are gone."""
        self._sock.close()

    def gone(self) -> bool:
        """Whether the zygote has exited (and been waited for)."""
        return self._process.poll() is not None

    def _await_ready(self) -> None:
        self._sock.settimeout(START_TIMEOUT)
        try:
            _recv_json(self._sock)
        except (OSError, EOFError):
            self._process.kill()
            self._process.wait()
            self._sock.close()
            raise SandboxError(f"the sandbox zygote did not start: {self.output.text()[-2000:]}") from None
        self._sock.settimeout(None)


_zygotes: dict[bool, Zygote] = {}  # by whether it runs in bubblewrap
_retired: list[Zygote] = []  # widened or replaced, still serving their last sandboxes
_zygotes_lock = threading.Lock()


def get_zygote(view: View | None) -> Zygote:
    """This process's zygote for ``view`` (None: the fallback), started or widened when needed."""
    with _zygotes_lock:
        current = _zygotes.get(view is not None)
        if current is not None and current.alive():
            if view is None or current.view.covers(view):  # type: ignore[union-attr]
                return current
            view = current.view.union(view)  # type: ignore[union-attr]
        if current is not None and current.owner == os.getpid():
            current.retire()
            _retired.append(current)
        _retired[:] = [z for z in _retired if not z.gone()]
        _zygotes[view is not None] = Zygote(view)
        return _zygotes[view is not None]


class Child:
    """A proxy forked by the zygote: its pid, and its exit code once the zygote reports it."""

    def __init__(self, pid: int, status_fd: int) -> None:
        self.pid = pid
        self._status_fd = status_fd
        self.exitcode: int | None = None

    def wait(self, timeout: float = 0.0) -> int | None:
        """The exit code (negative: killed by that signal) once known, waiting up to ``timeout`` seconds."""
        if self.exitcode is None and self._status_fd >= 0:
            ready, _, _ = select.select([self._status_fd], [], [], timeout)
            if ready:
                data = os.read(self._status_fd, 4)
                # no status at all: the zygote died before it could reap the proxy
                self.exitcode = struct.unpack("i", data)[0] if len(data) == 4 else -signal.SIGKILL
                os.close(self._status_fd)
                self._status_fd = -1
        return self.exitcode

    def alive(self) -> bool:
        """Whether the proxy still runs."""
        return self.wait() is None

    def kill(self) -> None:
        """Kill the proxy's process group (in bubblewrap, its pid namespace dies with it)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def close(self) -> None:
        """Release the status pipe."""
        if self._status_fd >= 0:
            os.close(self._status_fd)
            self._status_fd = -1


def _send_json(sock: socket.socket, message: dict[str, Any]) -> None:
    data = json.dumps(message).encode()
    sock.sendall(struct.pack("!I", len(data)) + data)


def _recv_json(sock: socket.socket) -> dict[str, Any]:
    header = _recv_exactly(sock, 4)
    return json.loads(_recv_exactly(sock, struct.unpack("!I", header)[0]))


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError("the zygote closed its socket")
        data += chunk
    return data


# --------------------------------------------------------------------------------------------------
# The zygote's side
# --------------------------------------------------------------------------------------------------


def main(fd: int, preload: tuple[str, ...], sandboxed: bool) -> None:
    """The zygote's loop: preload, then hand each request to a proxy and report each one's exit code.

    A *spare* proxy is forked ahead and waits for the next request, so that a request costs no fork of
    this (large) process; the proxy does everything a sandbox can observe (its namespaces, its file
    systems, the served process) only once the request has come.
    """
    for name in preload:
        __import__(name)
    _warm_up()
    gc.freeze()  # what the preload made stays shared: no child's collection touches (and copies) its pages
    control = socket.socket(fileno=fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _send_json(control, {"ready": True})
    children: dict[int, int] = {}  # proxy pid -> status pipe
    inherited = lambda: (control.fileno(), wake_r, wake_w, *children.values())  # noqa: E731 (closed in a spare)
    spare = _fork_spare(inherited(), sandboxed)
    while control.fileno() >= 0 or children:
        ready, _, _ = select.select([wake_r, control] if control.fileno() >= 0 else [wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 4096)
            _reap(children)
        if control.fileno() >= 0 and control in ready:
            try:
                _, fds, _, _ = socket.recv_fds(control, 16, 4)
            except OSError:
                fds = []
            if len(fds) != 4:
                control.close()
                spare[1].close()  # it exits
                continue
            pid = _hand_over(spare, fds[:3], inherited(), sandboxed)
            children[pid] = fds[3]
            _send_json(control, {"pid": pid})
            spare = _fork_spare(inherited(), sandboxed)  # while the arena goes on
    sys.exit(0)


def _fork_spare(inherited: tuple[int, ...], sandboxed: bool) -> tuple[int, socket.socket]:
    """Fork a proxy that waits for a request's request, log and lifeline pipes; its pid and socket."""
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        os.setsid()  # its own process group at once: the arena kills a sandbox by its group
        ours.close()
        for fd in inherited:
            os.close(fd)
        signal.set_wakeup_fd(-1)
        for number in (signal.SIGCHLD, signal.SIGINT):
            signal.signal(number, signal.SIG_DFL)
        try:
            _, fds, _, _ = socket.recv_fds(theirs, 16, 3)
        except OSError:
            fds = []
        if len(fds) != 3:  # the zygote is done
            os._exit(0)
        theirs.close()
        _proxy(fds[0], fds[1], fds[2], sandboxed)
    theirs.close()
    return pid, ours


def _hand_over(
    spare: tuple[int, socket.socket] | None, fds: list[int], inherited: tuple[int, ...], sandboxed: bool
) -> int:
    """Give a request's pipes to the spare proxy (to a fresh one if it died) and close them here; its pid."""
    try:
        for _ in range(2):
            pid, sock = spare if spare is not None else _fork_spare(inherited, sandboxed)
            spare = None
            with sock:
                try:
                    socket.send_fds(sock, [b"s"], fds)
                    return pid
                except OSError:  # the spare died (reaped as any child): fork another
                    continue
        raise SandboxError("no proxy took the request")  # the zygote dies; the arena starts another
    finally:
        for fd in fds:
            os.close(fd)


def _warm_up() -> None:
    """Run what every sandbox runs first (a model's round trip through ``torch.save``, a forward and a
    backward pass) once, on one thread and the CPU, so that torch's lazy initialisation is inherited
    instead of paid in each sandbox. Only the arena's own tiny model runs here, never plugin code.

    No backward pass where there is a GPU: autograd's first backward asks CUDA how many devices there are,
    which initialises the driver, and a process forked after that gets "CUDA error: initialization error"
    (seen on an H200: every sandbox failed so)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # no OpenMP pool in a process that forks
    try:
        nn = torch.nn
        model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
        saved = io.BytesIO()
        torch.save(model, saved)
        model = torch.load(io.BytesIO(saved.getvalue()), weights_only=False)
        x = torch.zeros(2, 1, 4, 4, requires_grad=not namespaces.gpu_devices())
        output = torch.softmax(model(x), dim=1).sum()
        if x.requires_grad:
            torch.autograd.grad(output, x)
    finally:
        torch.set_num_threads(threads)


def _reap(children: dict[int, int]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        status_fd = children.pop(pid, None)
        if status_fd is not None:
            with contextlib.suppress(OSError):  # the arena closed its end: nobody waits for this status
                os.write(status_fd, struct.pack("i", os.waitstatus_to_exitcode(status)))
            os.close(status_fd)


def _proxy(request: int, output: int, lifeline: int, sandboxed: bool) -> NoReturn:
    """Enter the sandbox, fork the served process, wait for it (or the lifeline), exit as it did.

    With bubblewrap the served process is pid 1 of the new pid namespace: when it ends, the kernel
    ends every process it started. Forking it costs milliseconds (the process imported torch), but a
    served process forked ahead would carry its age (``/proc/1/stat``), and a defense could tell a host
    that waited for an attack's inputs from one that did not (``tests/cheats/idle-detector``).
    """
    os.dup2(output, 1)
    os.dup2(output, 2)
    os.close(output)
    conn = Connection(request)
    try:
        config = conn.recv()  # from the arena: plain data
        if sandboxed:
            namespaces.enter(config["private"])
        pid = os.fork()
    except BaseException as exc:  # the arena's fault: report it as such
        _setup_failed(conn, exc)
    if pid == 0:
        os.close(lifeline)
        try:
            if sandboxed:
                namespaces.seal()
                # the kernel spares a namespace's pid 1 the signals it has no handler for, SIGXCPU among them
                signal.signal(signal.SIGXCPU, lambda *_: os._exit(EX_CPU))
            else:
                namespaces.die_with_parent()
        except BaseException as exc:
            _setup_failed(conn, exc)
        serve(conn, config)
    conn.close()
    _watch(pid, lifeline, sandboxed)


def _setup_failed(conn: Connection, exc: BaseException) -> NoReturn:
    try:
        conn.send(wire.setup_error(f"{type(exc).__name__}: {exc}"))
    finally:
        os._exit(EX_SETUP)


def _watch(pid: int, lifeline: int, sandboxed: bool) -> NoReturn:
    """Wait for the served process; when the lifeline closes first, kill it (and all it started)."""
    pidfd = os.pidfd_open(pid)
    ready, _, _ = select.select([pidfd, lifeline], [], [])
    if pidfd not in ready:
        if sandboxed:
            os.kill(pid, signal.SIGKILL)  # pid 1 of its namespace: every process in it dies too
        else:
            os.killpg(0, signal.SIGKILL)  # the fallback: the process group, this proxy included
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if sandboxed and code == EX_CPU:
        code = -signal.SIGXCPU
    if code < 0:  # die of the same signal, so the arena can say what killed the plugin
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if -code not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        time.sleep(1)
    os._exit(code if code >= 0 else 128 - code)
