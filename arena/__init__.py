"""Arena: a tournament server for the attack-versus-defense game of adversarial machine learning.

Plugins import only from here: ``from arena import hookimpl, Attack, Defense``.
"""

import os

# OpenMP threads that spin while waiting starve the other processes of a round (attack, referee,
# workers) on a small machine; passive waiting costs nothing when the machine is idle.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from arena.estimators import expectation, spsa_descent, spsa_gradient  # noqa: E402
from arena.hookspecs import (  # noqa: E402 (after the OpenMP setting)
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
from arena.neighbors import neighbor_points  # noqa: E402

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
    "neighbor_points",
    "spsa_descent",
    "spsa_gradient",
    "__version__",
]
