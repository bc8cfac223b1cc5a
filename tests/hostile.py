"""Hostile code for the sandbox and threat-model tests.

Two kinds of helpers live here:

* sandbox setups (:func:`hostile_setup`, :func:`failing_setup`): module-level functions, so the
  forkserver child can import them (``tests/`` is on ``sys.path`` under pytest);
* plugin writers (:func:`write_attack`, :func:`write_defense`, :data:`SPY`): plugin folders written into
  a test's ``tmp_path``, exactly as a (malicious) team would push them.
"""

from __future__ import annotations

import ctypes
import getpass
import os
import pickle
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------------------------------
# Sandbox setups: run in the child process
# --------------------------------------------------------------------------------------------------


class Evil:
    """Unpickling this runs ``code`` in the process that unpickles it."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return (exec, (self.code,))


def hostile_setup(conn: Connection, banner: str) -> Callable[[Any], Any]:
    """Print ``banner``, then serve ``(op, arg)`` requests, each a way to misbehave (or not)."""
    print(banner, flush=True)

    def handle(request: tuple[str, Any]) -> Any:
        op, arg = request
        if op == "echo":
            print(f"echo {arg!r}", flush=True)
            return ("echo", arg)
        if op == "pid":
            return os.getpid()
        if op == "raise":
            raise ValueError(f"bad request {arg}")  # the line the failure must name: RAISE_LINE
        if op == "exit":
            os._exit(arg)
        if op == "segfault":
            ctypes.string_at(0)
        if op == "loop":
            while True:
                pass
        if op == "sleep":
            time.sleep(arg)
            return "slept"
        if op == "spawn":  # a grandchild, in the child's own process group (or its own session): see running()
            new_session, marker = arg
            return subprocess.Popen(["sleep", marker], start_new_session=new_session).pid
        if op == "environment":
            with open("/proc/self/environ", "rb") as f:
                initial = f.read().decode(errors="replace")
            return {"environ": dict(os.environ), "initial": initial, "cwd": os.getcwd()}
        if op == "write":
            Path(arg).write_text("written by the sandbox")
            return str(Path(arg).resolve())
        if op == "read":
            return Path(arg).read_text()
        if op == "flood":
            for i in range(arg):
                print(f"line {i:07d} " + "x" * 100)
            sys.stdout.flush()
            os.write(2, b"X" * arg)  # unbuffered, straight to the file descriptor
            print("the end", flush=True)
            return "flooded"
        if op == "user":  # as libraries ask it (torch's compile caches on a GPU)
            return getpass.getuser()
        if op == "ages":  # how long ago, by what this process can read, its process and file systems began
            return observable_ages(arg)
        if op == "evil":  # raw bytes on the pipe: a pickle that runs code in whoever loads it
            conn.send_bytes(pickle.dumps(("reply", Evil(arg))))
            time.sleep(30)
            return None
        raise KeyError(op)

    return handle


def observable_ages(folders: list[str]) -> dict[str, float]:
    """Seconds since this process started (``/proc``) and since each folder was made (birth, change and
    modification times): what a plugin could read of how long its sandbox has waited."""
    ticks = os.sysconf("SC_CLK_TCK")
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    started = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
    ages = {"process": uptime - started}
    now = time.time()
    for folder in folders:
        info = os.stat(folder)
        ages[f"{folder} changed"] = now - info.st_ctime
        ages[f"{folder} modified"] = now - info.st_mtime
        born = _birth_time(folder)
        if born is not None:
            ages[f"{folder} born"] = now - born
    return ages


def _birth_time(path: str) -> float | None:
    """A file's birth time by ``statx`` (None where the file system keeps none)."""
    buffer = ctypes.create_string_buffer(256)
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, statx_btime = -100, 0x800
    if libc.statx(at_fdcwd, path.encode(), 0, statx_btime, buffer) != 0:
        return None
    mask = int.from_bytes(buffer.raw[0:4], "little")
    if not mask & statx_btime:
        return None
    seconds = int.from_bytes(buffer.raw[80:88], "little", signed=True)
    return seconds + int.from_bytes(buffer.raw[88:92], "little") / 1e9


RAISE_LINE = next(
    number for number, line in enumerate(Path(__file__).read_text().splitlines(), 1) if "RAISE_LINE" in line
)


def failing_setup(_conn: Connection) -> Callable[[Any], Any]:
    """A setup that fails before serving anything (as a plugin that cannot even be loaded)."""
    raise ImportError("no module named 'missing_dependency'")


# --------------------------------------------------------------------------------------------------
# Hostile attack plugins
# --------------------------------------------------------------------------------------------------

PLUGIN_MODULE = '''\
"""Test attack {name}: written by tests/hostile.py."""

import collections
import gc
import inspect
import io
import os
import sys
import time

import numpy as np
import torch

from arena import Attack, QueryBudgetExceeded, hookimpl

{helpers}

class Hostile(Attack):
    norms = ("linf", "l2")
    threats = {threats!r}

    def run(self, target, x, y, budget):
{body}


@hookimpl
def arena_attacks():
    return [Hostile]
'''

#: module-level helpers of the spy: look everywhere in the attack's process for the defended model
SPY = '''
def _matches(tensor, shape, total):
    """Whether ``tensor`` has the fingerprint (shape and sum) of the defended model's first layer."""
    return tuple(tensor.shape) == tuple(shape) and abs(float(tensor.detach().double().sum()) - total) < 1e-4


def _artifact(data, shape, total):
    """Whether ``data`` is a saved model (or state dict) holding the fingerprinted layer."""
    if not bytes(data[:4]) == b"PK\\x03\\x04":
        return False
    try:
        obj = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=False)
    except Exception:
        return False
    state = obj.state_dict() if isinstance(obj, torch.nn.Module) else obj if isinstance(obj, dict) else {}
    return any(isinstance(t, torch.Tensor) and _matches(t, shape, total) for t in state.values())


def _children(obj):
    """What ``obj`` refers to, as far as a curious attacker would follow."""
    if isinstance(obj, dict):
        return list(obj.values())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return list(obj)
    found = []
    if hasattr(obj, "__dict__") and isinstance(getattr(obj, "__dict__", None), dict):
        found.append(obj.__dict__)
    for slot in getattr(type(obj), "__slots__", ()) or ():
        if isinstance(slot, str) and hasattr(obj, slot):
            found.append(getattr(obj, slot))
    if inspect.isfunction(obj):
        found += [cell.cell_contents for cell in obj.__closure__ or () if cell.cell_contents is not None]
    if inspect.isframe(obj):
        found += [obj.f_locals, obj.f_globals]
    return found


def spy(target, shape, total, modules):
    """Everything of the defended model the process can reach: modules, parameters, artifact bytes."""
    allowed = {id(m) for m in target.substitute.modules()}
    roots = gc.get_objects()
    roots += [info.frame for info in inspect.stack(0)]
    roots += [vars(target)] + [vars(m) for m in list(sys.modules.values()) if hasattr(m, "__dict__")]
    seen, found, saw_substitute, loaded = set(), set(), False, {}
    queue = collections.deque((obj, 0) for obj in roots)  # breadth first: every object at its least depth
    while queue:
        obj, depth = queue.popleft()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.nn.Module):
            if id(obj) in allowed:
                saw_substitute = True
            elif modules:
                found.add(f"module {type(obj).__name__}")
        if isinstance(obj, torch.Tensor):
            if _matches(obj, shape, total):
                found.add("parameter")
            continue
        if isinstance(obj, (bytes, bytearray)):
            if len(obj) > 1000 and id(obj) not in loaded:
                loaded[id(obj)] = obj
                if _artifact(obj, shape, total):
                    found.add("artifact bytes")
            continue
        if isinstance(obj, (str, int, float, type)) or depth >= 4:
            continue
        try:
            queue.extend((child, depth + 1) for child in _children(obj))
        except Exception:
            pass
    if not saw_substitute:
        raise RuntimeError("SPY BROKEN: it did not even see the substitute")
    print(f"spy: {len(seen)} objects searched, {len(loaded)} byte strings, found {sorted(found)}", flush=True)
    if found:
        raise RuntimeError("FOUND " + ", ".join(sorted(found)))
'''


def write_attack(
    root: Path,
    name: str,
    body: str,
    threats: tuple[str, ...] = ("black-box",),
    params: dict[str, Any] | None = None,
    helpers: str = "",
) -> Path:
    """Write an attack plugin folder ``root/name`` whose ``run(self, target, x, y, budget)`` is ``body``."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    manifest = [
        f'name = "{name}"',
        'kind = "attack"',
        'team = "hostile"',
        f'summary = "test attack {name}"',
        f"threats = {_toml(list(threats))}",
    ]
    if params:
        manifest.append("\n[params]")
        manifest += [f"{key} = {_toml(value)}" for key, value in params.items()]
    (folder / "plugin.toml").write_text("\n".join(manifest) + "\n")
    module = PLUGIN_MODULE.format(
        name=name, threats=tuple(threats), helpers=helpers, body=textwrap.indent(textwrap.dedent(body), " " * 8)
    )
    (folder / f"{name.replace('-', '_')}.py").write_text(module)
    return folder


DEFENSE_MODULE = '''\
"""Test defense {name}: written by tests/hostile.py."""

import os
import time

import torch
from torch import nn

from arena import Defense, hookimpl


class Hostile(Defense):
    def train(self, ctx):
{body}


@hookimpl
def arena_defenses():
    return [Hostile]
'''


def write_defense(root: Path, name: str, body: str) -> Path:
    """Write a defense plugin folder ``root/name`` whose ``train(self, ctx)`` is ``body``."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    manifest = f'name = "{name}"\nkind = "defense"\nteam = "hostile"\nsummary = "test defense {name}"\n'
    (folder / "plugin.toml").write_text(manifest)
    module = DEFENSE_MODULE.format(name=name, body=textwrap.indent(textwrap.dedent(body), " " * 8))
    (folder / f"{name.replace('-', '_')}.py").write_text(module)
    return folder


def _toml(value: Any) -> str:
    """A TOML literal for a manifest parameter (numbers, booleans, strings, lists of those)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML literal for {type(value).__name__}")


def running(marker: str) -> list[int]:
    """The host's pids of the live ``sleep MARKER`` processes (a sandbox's pids mean nothing outside it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes() == b"sleep\0" + marker.encode() + b"\0" and alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def started(marker: str, timeout: float = 5.0) -> bool:
    """Wait up to ``timeout`` seconds for a ``sleep MARKER`` process (its command line appears only once
    its exec is done, a moment after the parent that spawned it may go on)."""
    deadline = time.monotonic() + timeout
    while not running(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def none_running(marker: str, timeout: float = 5.0) -> bool:
    """Wait up to ``timeout`` seconds until no ``sleep MARKER`` process is left (killing takes a moment)."""
    deadline = time.monotonic() + timeout
    while running(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (a killed orphan may stay one until reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def gone(pid: int, timeout: float = 5.0) -> bool:
    """Wait up to ``timeout`` seconds for ``pid`` to die (a SIGKILL is delivered asynchronously)."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
