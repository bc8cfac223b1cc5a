"""Storage: SQLAlchemy models, the database handle and schema migrations."""

from arena.store.db import Database
from arena.store.models import (
    WAITING,
    Artifact,
    Base,
    Job,
    JobInput,
    Plugin,
    PluginVersion,
    Push,
    Result,
    Round,
    RoundEntry,
    RoundMatch,
    RoundStandings,
    Team,
    Token,
    TrackRow,
)

__all__ = [
    "Artifact",
    "Base",
    "Database",
    "Job",
    "JobInput",
    "Plugin",
    "PluginVersion",
    "Push",
    "Result",
    "Round",
    "RoundEntry",
    "RoundMatch",
    "RoundStandings",
    "Team",
    "Token",
    "TrackRow",
    "WAITING",
]
