"""The repeated game itself: each board of a round as a zero-sum game, its value and its equilibrium.

The attacker picks an attack, the defender a defense; the payoff is the attack's success rate against
that defense (over the samples the defense classifies correctly when clean, so mixing attacks is mixing
per-sample chances). A failed attack scores 0; a match the defense's own code lost scores 1; a pending
cell, a disputed one and one the arena could not play count as 0 and mark the game incomplete. The
mixed-strategy equilibrium (von Neumann's minimax) is two linear programs (scipy's HiGHS):

    value = max_p min_j sum_i p_i A_ij = min_q max_i sum_j A_ij q_j

``p`` (the attacks' mix) guarantees the attacker ``value`` against any defense; ``q`` (the defenses'
mix) holds every attack to it. A plugin with weight carries the equilibrium; one with none is dominated
by a mix of the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linprog

from arena.results.boards import Board

#: weights below this are reported as zero (the solver's tolerance)
TINY = 1e-9


@dataclass(frozen=True)
class Equilibrium:
    """The value of a zero-sum game (rows maximise) and an optimal mix for each side."""

    value: float
    rows: np.ndarray
    columns: np.ndarray


@dataclass
class Game:
    """One board's game: value, equilibrium mixes and best responses, by plugin label."""

    track: str
    threat: str
    value: float | None
    complete: bool
    attacks: list[dict[str, Any]] = field(default_factory=list)  # label, weight, best response (a defense)
    defenses: list[dict[str, Any]] = field(default_factory=list)  # label, weight, best response (an attack)


def solve(payoff: np.ndarray) -> Equilibrium:
    """The equilibrium of the zero-sum game ``payoff`` (rows maximise, columns minimise)."""
    a = np.asarray(payoff, dtype=float)
    rows, columns = a.shape
    if rows == 0 or columns == 0:
        raise ValueError("a game needs at least one strategy on each side")
    p = _maximin(a)
    q = _maximin(-a.T)
    value = float(p @ a @ q)
    return Equilibrium(value, p, q)


def _maximin(a: np.ndarray) -> np.ndarray:
    """The row player's optimal mix: maximise v subject to (p^T a)_j >= v for every column, p a distribution."""
    rows, columns = a.shape
    objective = np.zeros(rows + 1)
    objective[-1] = -1.0  # maximise v
    upper = np.hstack([-a.T, np.ones((columns, 1))])  # v - sum_i p_i a_ij <= 0
    equal = np.hstack([np.ones((1, rows)), np.zeros((1, 1))])
    bounds = [(0.0, None)] * rows + [(None, None)]
    result = linprog(
        objective, A_ub=upper, b_ub=np.zeros(columns), A_eq=equal, b_eq=[1.0], bounds=bounds, method="highs"
    )
    if not result.success:
        raise RuntimeError(f"the game's linear program failed: {result.message}")
    mix = np.clip(result.x[:rows], 0.0, None)
    mix[mix < TINY] = 0.0
    return mix / mix.sum()


def payoffs(board: Board) -> tuple[np.ndarray, bool]:
    """The board's payoff matrix (attacks x defenses) and whether every cell has its result."""
    matrix = np.zeros((len(board.attacks), len(board.defenses)))
    complete = True
    for i, cells in enumerate(board.matrix):
        for j, cell in enumerate(cells):
            if cell is None or cell.status == "pending" or cell.blame in ("disputed", "arena"):
                complete = False  # no result: 0 for the attacker, as an unplayed cell
            elif cell.status == "ok":
                matrix[i, j] = cell.success_rate or 0.0
            elif cell.blame == "defense":
                matrix[i, j] = 1.0
    return matrix, complete


def board_game(board: Board) -> Game:
    """The game of one board: its value, who carries the equilibrium, and each plugin's best response."""
    game = Game(board.track, board.threat, None, True)
    if not board.attacks or not board.defenses:
        return game
    matrix, game.complete = payoffs(board)
    equilibrium = solve(matrix)
    game.value = equilibrium.value
    attacks, defenses = [a.entry.label for a in board.attacks], [d.entry.label for d in board.defenses]
    game.attacks = [
        {"label": label, "weight": float(w), "best_response": defenses[int(np.argmin(matrix[i]))]}
        for i, (label, w) in enumerate(zip(attacks, equilibrium.rows, strict=True))
    ]
    game.defenses = [
        {"label": label, "weight": float(w), "best_response": attacks[int(np.argmax(matrix[:, j]))]}
        for j, (label, w) in enumerate(zip(defenses, equilibrium.columns, strict=True))
    ]
    return game
