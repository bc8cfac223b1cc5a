"""Kernel namespaces for sandboxes: the bubblewrap view a zygote runs in, and each child's own namespaces.

Isolation comes in two layers (see :mod:`arena.sandbox.zygote`):

1. **The view** (:class:`View`), built once per zygote by bubblewrap (``bwrap``): a read-only file system
   holding only the system's libraries, the Python installation, the arena's code and the folders the
   arena hands over (a data set); the arena's home, the database and team folders are hidden under empty
   file systems; no network (only a loopback that is down), its own IPC and host name.
2. **Each child** (:func:`enter`, :func:`seal`): forked from the zygote, it takes a user id of its own
   (when the arena runs as root), enters new user, mount, pid, network, IPC and UTS namespaces, mounts
   private temporary directories and forks pid 1 of the new pid namespace (when pid 1 ends, everything
   in the namespace ends: nothing the plugin starts outlives it), which mounts a ``/proc`` that shows
   only that namespace and drops every capability for good (``no_new_privs``) before it runs the plugin.

This module uses only the standard library: run as a script (``python namespaces.py``), it checks without importing
the arena, that the host allows all of it.
"""

from __future__ import annotations

import ctypes
import glob
import os
import shutil
import signal
import stat
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CHILD_NAMESPACES = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS

MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x4000, 0x40000
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 4, 24, 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

#: a child of a zygote running as root takes the user id ``SANDBOX_UID_BASE + its pid``: a user of its
#: own, so that the process limit counts its processes only and no other sandbox's files are its own
SANDBOX_UID_BASE = 0x40000000

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/localtime",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/hosts",
)
GPU_DEVICES = ("/dev/nvidia*", "/dev/nvidia-caps/*")

_libc = ctypes.CDLL(None, use_errno=True)


class NamespaceError(OSError):
    """The host refused a step of the sandbox's set-up (a system call, a mount)."""


@dataclass(frozen=True)
class View:
    """What a bubblewrap zygote and its children see of the file system.

    ``readable`` paths are bound read-only at their own place; ``masked`` directories (inside a readable
    one) appear empty; ``masked_files`` appear as empty files; ``writable`` directories are the mount
    points of each child's private temporary file systems (besides ``/tmp`` and ``/dev/shm``).
    """

    readable: tuple[str, ...]
    masked: tuple[str, ...] = ()
    masked_files: tuple[str, ...] = ()
    writable: tuple[str, ...] = ()
    devices: tuple[str, ...] = field(default_factory=lambda: gpu_devices())

    def covers(self, other: View) -> bool:
        """Whether a zygote started with this view can serve a sandbox that asks for ``other``."""
        return all(set(getattr(other, name)) <= set(getattr(self, name)) for name in _VIEW_FIELDS)

    def union(self, other: View) -> View:
        """A view that covers both (without the paths that have gone since: bubblewrap would refuse them)."""
        merged = {name: set(getattr(self, name)) | set(getattr(other, name)) for name in _VIEW_FIELDS}
        merged = {name: {p for p in paths if os.path.lexists(p)} for name, paths in merged.items()}
        return replace(self, **{name: tuple(sorted(paths)) for name, paths in merged.items()})

    def bwrap_args(self) -> list[str]:
        """bubblewrap's options for this view (namespaces, mounts); the command follows them."""
        args = ["--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--new-session"]
        if os.getuid() == 0:  # the zygote keeps only what it needs to give each child a user of its own
            args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        for top in SYSTEM_DIRS:
            if os.path.islink(top):
                args += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                args += ["--ro-bind", top, top]
        args += [arg for path in ETC_FILES for arg in ("--ro-bind-try", path, path)]
        args += ["--ro-bind-try", "/sys", "/sys", "--dev", "/dev"]
        args += [arg for device in self.devices for arg in ("--dev-bind", device, device)]
        # The host's /proc, fully visible, so that each child may mount a /proc of its own pid namespace
        # over it (the kernel allows that only then); no plugin code runs before that mount.
        args += ["--bind", "/proc", "/proc", "--tmpfs", "/tmp"]
        bound = {"/tmp", "/dev", "/proc", "/sys", *SYSTEM_DIRS}  # folders with contents of their own
        created: set[str] = {"/"}
        for path in _outermost(self.readable):
            args += _parents(path, bound, created, ()) + ["--ro-bind", path, path]
            bound.add(path)
        for path in self.masked:
            args += ["--tmpfs", path]
        for path in self.readable:  # a readable folder inside a masked one (a data set inside the home)
            if any(_inside(path, mask) for mask in self.masked):
                args += _parents(path, bound, created, self.masked) + ["--ro-bind", path, path]
                bound.add(path)
        args += [arg for path in self.masked_files for arg in ("--ro-bind", "/dev/null", path)]
        for path in self.writable:
            visible = any(path == b or _inside(path, b) for b in bound) and os.path.isdir(path)
            if not visible or any(_inside(path, m) for m in self.masked):
                args += _parents(path, bound, created, self.masked) + ["--perms", "0755", "--dir", path]
                created.add(path)
        return args + ["--remount-ro", "/", "--chdir", "/"]


_VIEW_FIELDS = ("readable", "masked", "masked_files", "writable", "devices")


def gpu_devices() -> tuple[str, ...]:
    """The NVIDIA device files of this host (bound into the view so that CUDA works in the sandbox)."""
    return tuple(sorted(path for pattern in GPU_DEVICES for path in glob.glob(pattern)))


def build_view(readable: Iterable[Path], hidden: Iterable[Path], writable: Iterable[Path]) -> View:
    """The view of a zygote: the Python installation, ``sys.path`` and ``readable``; ``hidden`` masked.

    Every path is taken both as given and resolved (symbolic links), so code finds it either way.
    ``writable`` folders become each child's private temporary file systems; those under ``/tmp``
    need nothing (``/tmp`` is private already).
    """
    writable = [Path(p) for p in writable]
    for folder in writable:  # a mount point must exist before the home is masked, or be made inside the mask
        folder.mkdir(parents=True, exist_ok=True)
    python = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix]
    paths = _forms([*python, *search_path(), *map(str, readable)])
    readable_set = {p for p in paths if os.path.exists(p) and p != "/" and not _inside(p, "/tmp")}
    masked: set[str] = set()
    masked_files: set[str] = set()
    for path in _forms(map(str, hidden)):
        if not os.path.exists(path) or not any(_inside(path, r) for r in readable_set):
            continue  # not visible anyway
        (masked if os.path.isdir(path) else masked_files).add(path)
    writable_set = {p for p in _forms(map(str, writable)) if not _inside(p, "/tmp")}
    if os.getuid() == 0:  # a sandbox's own user must pass every folder above its mount points
        masked |= {c for p in writable_set | masked if (c := _closed_above(p, readable_set)) is not None}
        masked = {m for m in masked if not any(_inside(m, other) for other in masked)}
    masked_files = {f for f in masked_files if not any(_inside(f, m) for m in masked)}  # hidden with their folder
    return View(
        readable=tuple(sorted(readable_set)),
        masked=tuple(sorted(masked)),
        masked_files=tuple(sorted(masked_files)),
        writable=tuple(sorted(writable_set)),
    )


def search_path() -> list[str]:
    """The folders of ``sys.path`` a sandbox's view binds.

    Code the sandbox runs comes from the installation, the arena's package or a folder named on
    ``sys.path``; its '' (the working directory, maybe a home folder) is left out. As root, so is a
    folder that only its owner may enter (``python -m`` puts the working directory there): a sandbox's
    user could not use it, and bound with its own mode it would lock that user out of what lies below
    (an arena home, whose private mounts would then fail).
    """
    return [p for p in sys.path if p and (os.getuid() != 0 or _open_to_all(p))]


def _closed_above(path: str, bound: set[str]) -> str | None:
    """The outermost folder above ``path``, inside a bound one, that only its owner may enter (a 0700 folder
    holding an arena home): masked with an empty file system, where the mount points below are made anew.
    Its contents stay unreadable to a sandbox's user either way."""
    for parent in reversed(Path(path).parents):
        name = str(parent)
        if any(_inside(name, b) for b in bound) and not _open_to_all(name):
            return name
    return None


def _open_to_all(path: str) -> bool:
    """Whether every user may read ``path`` (and enter it, if a folder); True where it does not exist."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return True
    return bool(mode & 0o004) and (not stat.S_ISDIR(mode) or bool(mode & 0o001))


def _forms(paths: Iterable[str]) -> list[str]:
    """Each absolute path as given (normalised) and resolved."""
    found: list[str] = []
    for path in paths:
        absolute = os.path.normpath(os.path.abspath(path))
        found += [absolute, os.path.realpath(absolute)]
    return list(dict.fromkeys(found))


def _inside(path: str, folder: str) -> bool:
    """Whether ``path`` lies strictly inside ``folder``."""
    return path != folder and path.startswith(folder.rstrip("/") + "/")


def _outermost(paths: Iterable[str]) -> list[str]:
    """The paths not inside another one of them, sorted."""
    ordered = sorted(set(paths))
    return [p for p in ordered if not any(_inside(p, other) for other in ordered)]


def _parents(path: str, bound: set[str], created: set[str], masked: Iterable[str]) -> list[str]:
    """bubblewrap options creating ``path``'s missing parent folders, open to everyone (0755).

    bubblewrap would copy the host's modes, and a parent such as ``/root`` (0700) would lock the
    sandbox's own user out of the Python installation bound below it. A parent inside a bound folder
    exists already, unless a mask (an empty file system) covers it.
    """
    args: list[str] = []
    for parent in reversed(Path(path).parents):
        name = str(parent)
        hidden = any(name == m or _inside(name, m) for m in masked)
        if name in created or name in bound or (not hidden and any(_inside(name, b) for b in bound)):
            continue
        args += ["--perms", "0755", "--dir", name]
        created.add(name)
    return args


# --------------------------------------------------------------------------------------------------
# A child's own namespaces (system calls through ctypes: Python 3.11 has no os.unshare)
# --------------------------------------------------------------------------------------------------


def enter(private: Iterable[tuple[str, int]]) -> None:
    """In a zygote's child: own user (as root), new namespaces, a private tmpfs on each ``(path, bytes)``.

    The caller then forks: its child is pid 1 of the new pid namespace.
    """
    if os.getuid() == 0:
        uid = SANDBOX_UID_BASE + os.getpid()
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        _prctl(PR_SET_DUMPABLE, 1)  # changing user made /proc/self root's; the maps below need it ours
    uid, gid = os.getuid(), os.getgid()
    _check(_libc.unshare(CHILD_NAMESPACES), "unshare")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    for path, size in private:
        _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size},mode=0700")


def seal() -> None:
    """In pid 1 of the new namespace (the served process): die with the parent, a /proc of its own, no
    capabilities ever. What it forks inherits all of it."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    with open("/proc/sys/user/max_user_namespaces", "w") as f:  # no namespaces of its own inside
        f.write("0")
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for cap in range(last + 1):
        _prctl(PR_CAPBSET_DROP, cap)
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    _check(_libc.capset(ctypes.byref(header), (_CapData * 2)()), "capset")
    _prctl(PR_SET_NO_NEW_PRIVS, 1)


def die_with_parent() -> None:
    """Be killed when the parent process dies (the fallback's served process, whose parent is its proxy)."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _prctl(option: int, value: int = 0) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0), f"prctl({option})")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    result = _libc.mount(_c(source), _c(target), _c(fstype), ctypes.c_ulong(flags), _c(data))
    _check(result, f"mount {fstype or 'private'} on {target}")


def _c(text: str | None) -> bytes | None:
    return None if text is None else text.encode()


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise NamespaceError(code, f"{what}: {os.strerror(code)}")


def probe() -> None:
    """Enter a child's namespaces once and exit 0; print why not and exit 1 (run inside bubblewrap)."""
    try:
        enter([("/tmp", 1 << 20)])
        pid = os.fork()
        if pid == 0:
            try:
                seal()
            except OSError as exc:
                print(f"{exc}", flush=True)
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        os._exit(os.waitstatus_to_exitcode(status))
    except OSError as exc:
        print(f"{exc}", flush=True)
        os._exit(1)


def bwrap() -> str | None:
    """The path of bubblewrap, or None where it is not installed."""
    return shutil.which("bwrap")


if __name__ == "__main__":
    probe()
