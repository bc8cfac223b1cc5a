"""The game's value and equilibrium: exact on small games, an equilibrium on large ones (the board's game page:
tests/board/test_board_pages.py)."""

from __future__ import annotations

import numpy as np
import pytest

from arena.results.game import solve


def test_matching_pennies_is_worth_a_half_with_even_mixes() -> None:
    game = solve(np.array([[1.0, 0.0], [0.0, 1.0]]))
    assert game.value == pytest.approx(0.5)
    assert game.rows == pytest.approx([0.5, 0.5]) and game.columns == pytest.approx([0.5, 0.5])


def test_a_saddle_point_is_played_pure() -> None:
    game = solve(np.array([[0.2, 0.3], [0.1, 0.05]]))
    assert game.value == pytest.approx(0.2)
    assert game.rows == pytest.approx([1.0, 0.0]) and game.columns == pytest.approx([1.0, 0.0])


def test_a_dominated_attack_gets_no_weight() -> None:
    """Rock-paper-scissors on success rates, plus an attack beaten by every other everywhere."""
    payoff = np.array([[0.5, 0.0, 1.0], [1.0, 0.5, 0.0], [0.0, 1.0, 0.5], [0.1, 0.1, 0.1]])
    game = solve(payoff)
    assert game.value == pytest.approx(0.5)
    assert game.rows == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0.0]) and game.columns == pytest.approx([1 / 3] * 3)


@pytest.mark.parametrize("shape", [(1, 5), (7, 1), (30, 20), (100, 100)])
def test_the_mixes_guarantee_the_value_on_random_games(shape: tuple[int, int]) -> None:
    payoff = np.random.default_rng(sum(shape)).random(shape)
    game = solve(payoff)
    assert game.rows.sum() == pytest.approx(1.0) and game.columns.sum() == pytest.approx(1.0)
    assert (game.rows @ payoff).min() >= game.value - 1e-7, "the attacks' mix earns the value against any defense"
    assert (payoff @ game.columns).max() <= game.value + 1e-7, "the defenses' mix holds every attack to it"


def test_a_game_needs_two_sides() -> None:
    with pytest.raises(ValueError, match="at least one strategy"):
        solve(np.zeros((0, 3)))
