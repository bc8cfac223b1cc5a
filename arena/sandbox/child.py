"""The sandboxed process's side: confine itself, load the code it runs, answer requests until told to stop.

It runs in the process the zygote's proxy forked (:mod:`arena.sandbox.zygote`), inside the sandbox's
namespaces; nothing here trusts the plugin code it then runs.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import pickle
import resource
import signal
import socket
import sys
import tempfile
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NoReturn

from arena.config import GIB, with_process_defaults
from arena.contract.plugins import describe_error
from arena.sandbox import wire

#: the variables a sandbox inherits; LD_LIBRARY_PATH because CUDA's container images find the driver's libraries by it
KEEP_ENV = (
    "PATH",
    "LANG",
    "LC_ALL",
    "LD_LIBRARY_PATH",
    "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "MKL_NUM_THREADS",
)
#: the user name a sandbox's process goes by (its user id has no entry in /etc/passwd)
SANDBOX_USER = "arena-sandbox"
#: exit status of a proxy whose sandbox could not be set up (the arena's fault, not the plugin's)
EX_SETUP = 71
#: exit status of a sandbox's served process (pid 1 of its namespace) that exceeded its CPU-time limit
EX_CPU = 128 + signal.SIGXCPU  # as a shell reports death by SIGXCPU
NO_NETWORK = (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ECONNREFUSED, errno.EADDRNOTAVAIL)


def minimal_env() -> dict[str, str]:
    """The only variables a zygote (and so every sandbox) starts with: no secret of the arena."""
    return with_process_defaults({key: os.environ[key] for key in KEEP_ENV if key in os.environ})


def serve(conn: Connection, config: dict[str, Any]) -> NoReturn:
    """Confine this process, load the code to run, then answer requests until told to stop."""
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 (the process's own stdout)
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    try:
        _confine(config)
        setup, args = pickle.loads(conn.recv_bytes())  # from the arena
    except BaseException as exc:  # the arena's fault: the plugin has not run yet
        traceback.print_exc()
        with contextlib.suppress(OSError):
            conn.send(wire.setup_error(describe_error(exc)))
        os._exit(EX_SETUP)
    try:
        conn.send(wire.READY)
        handler = setup(conn, *args)
        while not isinstance(request := conn.recv(), wire.Stop):
            conn.send(wire.reply(handler(request)))
    except BaseException as exc:  # the plugin's failure, reported to the parent, never raised further
        traceback.print_exc()
        with contextlib.suppress(OSError):
            conn.send(wire.error(describe_error(exc) + _hint(exc, config)))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _confine(config: dict[str, Any]) -> None:
    """Minimal environment, private working directory, and the limits of :class:`Limits`."""
    workdir = config["workdir"]
    env = minimal_env()
    os.environ.clear()
    os.environ.update(env, HOME=workdir, TMPDIR=workdir, USER=SANDBOX_USER, LOGNAME=SANDBOX_USER)
    tempfile.tempdir = workdir
    os.chdir(workdir)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu = math.ceil(used.ru_utime + used.ru_stime) + config["cpu_seconds"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
    if config["memory"] is not None:
        data = _vm_data() + config["memory"]
        resource.setrlimit(resource.RLIMIT_DATA, (data, data))
    processes = config["limits"]["processes"]
    if config["sandboxed"]:  # a user of its own (or a user namespace of its own): the count is this sandbox's
        resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))
    elif os.getuid() != 0:  # the fallback shares the arena's user: allow what it runs already, and more
        total = _tasks_of(os.getuid()) + processes
        resource.setrlimit(resource.RLIMIT_NPROC, (total, total))


def _vm_data() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmData:"):
            return int(line.split()[1]) * 1024
    return 0


def _tasks_of(uid: int) -> int:
    """Processes and threads the user runs now (the fallback's process limit counts them all)."""
    total = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = dict(line.split(":", 1) for line in Path(entry.path, "status").read_text().splitlines())
                if int(fields["Uid"].split()[0]) == uid:
                    total += int(fields["Threads"])
    return total


def _hint(exc: BaseException, config: dict[str, Any]) -> str:
    """Which limit of the sandbox an error most likely ran into, for the plugin's authors."""
    text = str(exc)
    if isinstance(exc, MemoryError) or "can't allocate memory" in text or "not enough memory" in text:
        return f" (the sandbox's memory limit is {config['memory'] / GIB:.1f} GiB)" if config["memory"] else ""
    if isinstance(exc, BlockingIOError) or "can't start new thread" in text:
        return f" (the sandbox allows {config['limits']['processes']} processes and threads)"
    if isinstance(exc, socket.gaierror) or isinstance(exc, OSError) and exc.errno in NO_NETWORK:
        return " (sandboxes have no network)"
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:
        return " (a sandbox writes only to its temporary directory)"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOENT, errno.EACCES) and config["sandboxed"]:
        return " (note: a sandbox sees only its own code, the installed packages and the data the arena hands it)"
    return ""
