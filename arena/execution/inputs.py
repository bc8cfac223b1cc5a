"""A match's inputs as a worker reads them: trained models, evaluation sets and plugin versions, each read
from its database once per process (one cache per database: ids and keys mean nothing across databases).

They never change once written (an artifact's key names its content; a plugin version is its code), so a
worker that plays thousands of matches against the same few defenses keeps them instead of reading
megabytes (an MNIST evaluation set is 3 MB) and parsing archives for every match. The cache keeps at most
:data:`CACHE_BYTES` of artifacts, the least recently used dropped first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from arena.contract.plugins import PluginSource
from arena.store import Artifact, PluginVersion

#: bytes of artifacts a process keeps
CACHE_BYTES = 512 * 1024**2


@dataclass(frozen=True)
class Plugin:
    """A plugin version's code, and the declarations a match reads from its manifest."""

    source: PluginSource
    declared: dict


def source_of(version: PluginVersion) -> PluginSource:
    """The plugin's code exactly as recorded with its version."""
    return PluginSource.from_archive(version.archive, version.source, version.commit)


class Inputs:
    """This process's cache of immutable inputs (thread-safe)."""

    def __init__(self, budget: int = CACHE_BYTES) -> None:
        self.budget = budget
        self._artifacts: OrderedDict[str, tuple[str, bytes]] = OrderedDict()  # key -> (kind, data)
        self._plugins: dict[int, Plugin] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def artifacts(self, session: Session, keys: list[str]) -> dict[str, bytes]:
        """The data of the artifacts named by ``keys`` that exist, by their kind."""
        with self._lock:
            found = {key: self._artifacts[key] for key in keys if key in self._artifacts}
            for key in found:
                self._artifacts.move_to_end(key)
        missing = [key for key in keys if key not in found]
        if missing:
            rows = session.execute(select(Artifact.key, Artifact.kind, Artifact.data).where(Artifact.key.in_(missing)))
            for key, kind, data in rows:
                found[key] = (kind, data)
                self._keep(key, kind, data)
        return {kind: data for kind, data in found.values()}

    def plugin(self, session: Session, version_id: int) -> Plugin:
        """The code and declarations of plugin version ``version_id``."""
        with self._lock:
            known = self._plugins.get(version_id)
        if known is None:
            version = session.get(PluginVersion, version_id)
            known = Plugin(source_of(version), dict(version.manifest.get("declared", {})))
            with self._lock:
                self._plugins[version_id] = known
        return known

    def _keep(self, key: str, kind: str, data: bytes) -> None:
        if len(data) > self.budget:
            return
        with self._lock:
            if key in self._artifacts:
                return
            self._artifacts[key] = (kind, data)
            self._bytes += len(data)
            while self._bytes > self.budget:
                _, (_, dropped) = self._artifacts.popitem(last=False)
                self._bytes -= len(dropped)
