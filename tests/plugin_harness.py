"""A tiny in-process arena for testing plugins: digits data, small trained models, a counting Target.

The real :class:`arena.Target` implementations live in ``arena/play/threats.py``; this one keeps everything in
one process so plugin tests stay fast and independent of the engine.
"""

from __future__ import annotations

import importlib.util
import tomllib
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import torch
from sklearn.datasets import load_digits
from torch import nn

from arena import Attack, Defense, QueryBudgetExceeded, Target, ThreatModelError, TrainContext

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
REQUIRED_FIELDS = ("name", "kind", "team", "summary")


def load_manifest(folder: Path) -> dict:
    """The plugin's ``plugin.toml``."""
    with open(folder / "plugin.toml", "rb") as f:
        return tomllib.load(f)


def load_module(folder: Path) -> ModuleType:
    """Import the plugin's module from its file under a unique module name."""
    manifest = load_manifest(folder)
    module = manifest.get("module", manifest["name"].replace("-", "_"))
    spec = importlib.util.spec_from_file_location(f"arena_test_plugin_{module}", folder / f"{module}.py")
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def load_plugin(kind: str, name: str) -> type[Attack] | type[Defense]:
    """The single class a built-in plugin registers through its hook."""
    module = load_module(PLUGINS / f"{kind}s" / name)
    (cls,) = getattr(module, f"arena_{kind}s")()
    return cls


def make_attack(name: str, **overrides: object) -> Attack:
    """A built-in attack, built with its manifest's ``[params]``, some of them overridden."""
    params = load_manifest(PLUGINS / "attacks" / name).get("params", {})
    return load_plugin("attack", name)(**(params | overrides))


def make_defense(name: str) -> Defense:
    """A built-in defense, built with its manifest's ``[params]``."""
    params = load_manifest(PLUGINS / "defenses" / name).get("params", {})
    return load_plugin("defense", name)(**params)


# --------------------------------------------------------------------------------------------------
# Data and models
# --------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits in [0, 1] as ``(x_train, y_train, x_test, y_test)``, a fixed 2:1 split."""
    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = order[:1200], order[1200:]
    return x[train], y[train], x[test], y[test]


def small_cnn() -> nn.Module:
    """The reference architecture of these tests: two 3x3 convolutions, pooling, a linear head."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    )


def small_mlp() -> nn.Module:
    """Another architecture, for substitutes: one hidden layer of 128 units."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def fit(model: nn.Module, epochs: int = 20, seed: int = 0) -> nn.Module:
    """Train ``model`` plainly on the digits training split; return it in eval mode."""
    x, y, _, _ = digits()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        for index in torch.randperm(len(x), generator=generator).split(128):
            loss = nn.functional.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model.eval()


@lru_cache(maxsize=1)
def reference_model() -> nn.Module:
    """A small CNN trained on digits, once per session (do not modify it in tests)."""
    torch.manual_seed(0)
    return fit(small_cnn())


@lru_cache(maxsize=1)
def substitute_model() -> nn.Module:
    """An MLP trained on digits with another seed: the substitute of another architecture."""
    torch.manual_seed(1)
    return fit(small_mlp(), seed=1)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``."""
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


def train_context(
    epochs: int, eps: float = 0.2, time_budget: float = 120.0, seed: int = 0
) -> tuple[TrainContext, list[str]]:
    """A digits :class:`TrainContext` on the CPU, and the list its log lines go to."""
    x, y, _, _ = digits()
    torch.manual_seed(seed)
    lines: list[str] = []
    ctx = TrainContext(
        track="digits",
        num_classes=10,
        input_shape=(1, 8, 8),
        norm="linf",
        eps=eps,
        x=x,
        y=y,
        make_model=small_cnn,
        device=torch.device("cpu"),
        seed=seed,
        time_budget=time_budget,
        epochs=epochs,
        log=lines.append,
    )
    return ctx, lines


# --------------------------------------------------------------------------------------------------
# The target
# --------------------------------------------------------------------------------------------------


class HarnessTarget(Target):
    """An in-process :class:`Target`: the secret model, a substitute, and counted queries.

    ``query_limit`` is the number of images :meth:`query` accepts in all (the arena gives
    ``budget.max_queries`` per sample of the batch); asking for more raises
    :class:`QueryBudgetExceeded` and answers nothing.
    """

    def __init__(
        self,
        secret: nn.Module,
        substitute: nn.Module,
        threat: str = "white-box",
        query_limit: int = 0,
    ) -> None:
        self.threat = threat
        self.num_classes = 10
        self.input_shape = (1, 8, 8)
        self.device = torch.device("cpu")
        self._secret = secret
        self._substitute = substitute
        self._limit = query_limit
        self._used = 0

    @property
    def model(self) -> nn.Module:
        if self.threat == "black-box":
            raise ThreatModelError("black-box attacks get no model: use query() or substitute")
        return self._secret

    @property
    def substitute(self) -> nn.Module:
        return self._substitute

    def query(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) > self.queries_left:
            raise QueryBudgetExceeded(f"{len(x)} images asked, {self.queries_left} left")
        self._used += len(x)
        with torch.no_grad():
            return self._secret(x).softmax(dim=1)

    @property
    def queries_used(self) -> int:
        return self._used

    @property
    def queries_left(self) -> int:
        return self._limit - self._used

    @property
    def train_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, _, _ = digits()
        return x, y

    @property
    def public_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        _, _, x, y = digits()
        return x, y
