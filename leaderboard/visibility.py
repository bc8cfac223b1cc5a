"""Whose eyes a round's results are for: the public sees published rounds, a team its own matches, the
instructor everything.

A round's scores stay embargoed until the instructor publishes it (``arena round publish``): its
rankings, matrix, game, history and exports show the public and the teams its progress only. A team
sees its own matches of an unpublished round (as attack or defense) on its plugins' pages and their
match pages. A result is public once a published round shows it (a cell of that round's matrix holds
its key): a later round's retry of the same match stays embargoed until that round is published.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from arena.store import Round, RoundMatch
from leaderboard import lookup
from leaderboard.signin import may_see, viewer


def sees_everything() -> bool:
    """Whether the viewer is the instructor, who sees unpublished rounds whole."""
    found = viewer()
    return found is not None and found.admin


def shows_results(round_: Round) -> bool:
    """Whether the viewer sees the scores of ``round_``: it is published, or the viewer is the instructor."""
    return round_.published or sees_everything()


def rounds(session: Session, number: str | None) -> tuple[list[Round], Round | None]:
    """Every round (newest first) and the one numbered ``number``; by default the newest whose scores
    the viewer sees (the newest round when there is none); 404 for an unknown number."""
    return lookup.rounds(session, number, prefer=shows_results)


def public_keys(session: Session, keys: Iterable[str]) -> set[str]:
    """Which of these result keys a published round shows."""
    wanted = set(keys)
    if not wanted:
        return set()
    query = (
        select(RoundMatch.result_key)
        .join(Round, Round.id == RoundMatch.round_id)
        .where(Round.published.is_(True), RoundMatch.result_key.in_(wanted))
    )
    return set(session.scalars(query))


def shows_result(session: Session, key: str, owners: set[int]) -> bool:
    """Whether the viewer sees the result under ``key``, whose plugins the teams ``owners`` own."""
    return may_see(owners) or bool(public_keys(session, [key]))
