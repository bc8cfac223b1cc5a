"""Plugin versions: stored by content, validated once, synced from the plugin folders, and the latest valid
version of each plugin (what a round freezes)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from arena.config import Settings
from arena.contract import plugins
from arena.contract.plugins import PluginSource
from arena.play import validation
from arena.store import Database, Plugin, PluginVersion, Team

UNREGISTERED_TEAM = "(unregistered)"


@dataclass
class SyncedPlugin:
    """What syncing found for one plugin: its label, version, and status (new, unchanged, invalid)."""

    label: str
    kind: str
    content_hash: str
    status: str
    errors: list[str] = field(default_factory=list)


def store_version(
    session: Session,
    source: PluginSource,
    team_name: str | None = None,
    path: str | None = None,
    name: str | None = None,
) -> tuple[PluginVersion, bool]:
    """The version of ``source`` (created, unvalidated, unless its content is known); whether it is new.

    The plugin is ``team_name``'s (default: the manifest's team) and called ``name`` (default: the
    manifest's name, else the folder's). The version becomes its plugin's current code (``seen_at``),
    and a withdrawn plugin returns.
    """
    manifest = source.manifest
    team_name = team_name or (manifest.team if manifest else UNREGISTERED_TEAM)
    name = name or (manifest.name if manifest else source.origin.rstrip("/").rsplit("/", 1)[-1])
    kind = manifest.kind if manifest else "unknown"
    team = session.scalar(select(Team).where(Team.name == team_name)) or Team(name=team_name)
    session.add(team)
    session.flush()
    plugin = session.scalar(select(Plugin).where(Plugin.team_id == team.id, Plugin.name == name))
    if plugin is None:
        plugin = Plugin(team=team, name=name, kind=kind)
        session.add(plugin)
        session.flush()
    plugin.withdrawn_at = None
    version = session.scalar(
        select(PluginVersion).where(
            PluginVersion.plugin_id == plugin.id, PluginVersion.content_hash == source.content_hash
        )
    )
    now = datetime.now(UTC)
    if version is not None:
        version.seen_at = now
        return version, False
    version = PluginVersion(
        plugin=plugin,
        content_hash=source.content_hash,
        commit=source.commit,
        source=source.origin[:500],
        path=path,
        archive=source.archive(),
        manifest=manifest.as_dict() if manifest else {},
        status="pending",
        valid=False,
        seen_at=now,
    )
    session.add(version)
    session.flush()
    return version, True


def apply_validation(version: PluginVersion, checked: validation.Validation) -> None:
    """Record a validation's outcome with the version: status, readable errors, declarations, smoke match."""
    version.valid = not checked.errors
    version.status = "valid" if version.valid else "invalid"
    version.errors = "\n".join(checked.errors) or None
    version.manifest = {k: v for k, v in version.manifest.items() if k != "declared"} | {"declared": checked.declared}
    version.checks = {"declared": checked.declared, "smoke": checked.smoke}
    version.log_tail = checked.log_tail or None
    version.evaluated_at = datetime.now(UTC)


def record_version(
    session: Session, source: PluginSource, settings: Settings, known: validation.Validation | None = None
) -> tuple[PluginVersion, bool]:
    """Store a plugin version (validated once, without a smoke match, unless ``known`` is its validation already)
    unless its content is known."""
    version, new = store_version(session, source)
    if new:
        apply_validation(version, known or validation.validate(source, settings.home / "plugin-cache"))
    return version, new


def record_plugins(
    db: Database, settings: Settings, known: Mapping[str, validation.Validation] | None = None
) -> list[SyncedPlugin]:
    """Discover every plugin (folders and entry points) and record the versions not seen before; ``known`` gives
    validations by content hash (another database of this machine validated that code: see arena.commands.checks)."""
    report = []
    known = known or {}
    for source in plugins.discover(settings.plugin_dirs):
        with db.session() as session:
            version, new = record_version(session, source, settings, known.get(source.content_hash))
            status = "invalid" if not version.valid else "new" if new else "unchanged"
            errors = version.errors.splitlines() if version.errors else []
            report.append(SyncedPlugin(source.label, version.plugin.kind, source.content_hash, status, errors))
    return report


def latest_valid_versions(session: Session) -> list[PluginVersion]:
    """The current valid version of every plugin still in the game (not withdrawn).

    That is the valid version its last sync saw most recently: a broken push leaves the previous
    version in place, and reverting a folder to earlier code brings that code back.
    """
    rows = session.scalars(
        select(PluginVersion)
        .join(Plugin, PluginVersion.plugin_id == Plugin.id)
        .where(PluginVersion.valid.is_(True), Plugin.withdrawn_at.is_(None))
        .order_by(
            PluginVersion.plugin_id, func.coalesce(PluginVersion.seen_at, PluginVersion.created_at), PluginVersion.id
        )
    )
    return list({version.plugin_id: version for version in rows}.values())
