"""Arena: a tournament server for the attack-versus-defense game of adversarial machine learning.

Plugins import only from here: ``from arena import hookimpl, Attack, Defense``.
"""

from arena.estimators import expectation, spsa_descent, spsa_gradient
from arena.hookspecs import (
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
    "spsa_descent",
    "spsa_gradient",
    "__version__",
]
