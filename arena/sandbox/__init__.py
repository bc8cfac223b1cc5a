"""The sandbox: untrusted plugin code runs in a process of its own, isolated, limited, its output captured.

Imports point one way: ``namespaces`` (bubblewrap's view, each sandbox's namespaces) and ``child`` (the
sandboxed process's side) <- ``zygote`` (the preloaded process sandboxes are forked from) <- ``box``
(:class:`Sandbox`, the arena's side). What the rest of the arena uses is here.
"""

from arena.sandbox.box import LOG_TAIL_CHARS, Limits, PluginFailure, Sandbox, Watch
from arena.sandbox.child import KEEP_ENV, SANDBOX_USER
from arena.sandbox.zygote import Isolation, SandboxError, isolation

__all__ = [
    "KEEP_ENV",
    "LOG_TAIL_CHARS",
    "Isolation",
    "Limits",
    "PluginFailure",
    "SANDBOX_USER",
    "Sandbox",
    "SandboxError",
    "Watch",
    "isolation",
]
