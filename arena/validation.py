"""Validating a plugin in its sandbox: import it, check its hooks and classes, report what it declares.

Validation imports the plugin's code, so it never runs in the arena's own process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from arena import plugins
from arena.plugins import PluginSource
from arena.sandbox import PluginFailure, Sandbox

TIME_LIMIT = 120.0


@dataclass
class Validation:
    """The outcome: readable errors (empty when valid) and the class's declarations."""

    errors: list[str]
    declared: dict[str, Any] = field(default_factory=dict)


def validate(source: PluginSource, cache_dir: Path) -> Validation:
    """Load ``source`` in a sandbox; every failure (even a crash at import) becomes a readable error."""
    if source.errors:
        return Validation(list(source.errors))
    try:
        with Sandbox(_setup, (source, cache_dir), time_limit=TIME_LIMIT, label=source.label) as box:
            errors, declared = box.call(("validate",))
    except PluginFailure as exc:
        return Validation([exc.reason])
    return Validation(errors, declared)


def _setup(_conn: Connection, source: PluginSource, cache_dir: Path):  # noqa: ANN202 (a sandbox handler)
    def handle(_request: object) -> tuple[list[str], dict[str, Any]]:
        try:
            loaded = plugins.load(source, cache_dir)
        except plugins.PluginError as exc:
            return [str(exc)], {}
        cls = loaded.cls
        declared: dict[str, Any] = {"randomized": bool(getattr(cls, "randomized", False))}
        if loaded.manifest.kind == "attack":
            declared |= {"norms": list(cls.norms), "threats": list(cls.threats), "targeted": bool(cls.targeted)}
        return [], declared

    return handle
