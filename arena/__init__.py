"""Arena: a tournament server for the attack-versus-defense game of adversarial machine learning.

Plugins import only from here: ``from arena import hookimpl, Attack, Defense``.
"""

from arena.play.estimators import expectation, spsa_descent, spsa_gradient
from arena.rules.hookspecs import (
    NORMS,
    THREATS,
    Attack,
    Budget,
    Defense,
    DefenseFailed,
    QueryBudgetExceeded,
    Target,
    ThreatModelError,
    TrainContext,
    hookimpl,
)
from arena.rules.neighbors import neighbor_points
from arena.rules.norms import l2_norms

__version__ = "0.1.0"

__all__ = [
    "NORMS",
    "THREATS",
    "Attack",
    "Budget",
    "Defense",
    "DefenseFailed",
    "QueryBudgetExceeded",
    "Target",
    "ThreatModelError",
    "TrainContext",
    "expectation",
    "hookimpl",
    "l2_norms",
    "neighbor_points",
    "spsa_descent",
    "spsa_gradient",
    "__version__",
]
