"""The layout docs/architecture.md draws: arena/ by job, imports pointing one way, without a circle."""

from __future__ import annotations

import ast
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from arena.play.training import load_model
from arena.rules.tracks import TRACKS, ReferenceCNN

ARENA = Path(__file__).resolve().parents[1] / "arena"
#: arena's packages (and its one top-level module) from the bottom up: each imports only itself and those before it;
#: ``arena/__init__.py``, what plugins import, stands above them all
PACKAGES = [
    "config",
    "store",
    "rules",
    "contract",
    "sandbox",
    "play",
    "results",
    "plan",
    "classroom",
    "execution",
    "commands",
]
#: each package's modules in their order: a module imports only those before it
LAYERS = {
    "execution": ["inputs", "state", "jobs", "rounds", "pool", "local", "dispatch", "tasks", "follow", "workers"],
    "sandbox": ["wire", "namespaces", "child", "zygote", "box"],
}


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ARENA.parent).with_suffix("").parts)
    return name.removesuffix(".__init__")


def imports() -> dict[str, set[str]]:
    """Each module of the engine and the engine's modules it imports at its top level."""
    modules = {module_name(p): p for p in ARENA.rglob("*.py") if "migrations" not in p.parts}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "arena":
                found |= {
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names
                }
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.split(".")[0] == "arena"}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_no_module_of_the_engine_imports_itself_in_a_circle() -> None:
    graph, state, stack, circles = imports(), {}, [], []

    def visit(name: str) -> None:
        state[name] = "open"
        stack.append(name)
        for other in sorted(graph[name]):
            if state.get(other) == "open":
                circles.append(" -> ".join([*stack[stack.index(other) :], other]))
            elif other not in state:
                visit(other)
        state[name] = "done"
        stack.pop()

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert not circles


def test_each_package_imports_only_itself_and_the_packages_below_it() -> None:
    graph = imports()
    placed = {name: name.split(".")[1] for name in graph if name != "arena"}
    assert set(placed.values()) == set(PACKAGES), "a module outside the layout: " + str(
        set(placed.values()) - set(PACKAGES)
    )
    upward = [
        f"{name} imports {other}"
        for name, package in placed.items()
        for other in graph[name]
        if other != "arena" and PACKAGES.index(placed[other]) > PACKAGES.index(package)
    ]
    assert not upward


def test_an_artifact_saved_before_the_layout_loads() -> None:
    """A model saved whole names its classes' modules: ``arena.tracks.ReferenceCNN`` lives in ``arena.rules.tracks``."""
    saved = io.BytesIO()
    torch.save(TRACKS["digits"].make_reference(), saved, _use_new_zipfile_serialization=False)
    before = saved.getvalue().replace(b"arena.rules.tracks", b"arena.tracks")
    assert b"arena.rules.tracks" not in before
    model = load_model(before, torch.device("cpu"), None, Path("unused"))
    assert type(model) is ReferenceCNN


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_a_packages_modules_import_only_those_below_them(package: str) -> None:
    graph, order = imports(), LAYERS[package]
    assert {m.rsplit(".", 1)[1] for m in graph if m.startswith(f"arena.{package}.")} == set(order)
    for position, name in enumerate(order):
        inside = {m.rsplit(".", 1)[1] for m in graph[f"arena.{package}.{name}"] if m.startswith(f"arena.{package}.")}
        assert inside <= set(order[:position]), f"arena.{package}.{name} imports {inside - set(order[:position])}"


#: run in a fresh interpreter: import every module of both packages, then say what changed
IMPORT_ALL = textwrap.dedent("""
    import importlib, os, pkgutil, sys
    before = dict(os.environ)
    import arena, leaderboard
    for package in (arena, leaderboard):
        for found in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if "migrations" not in found.name:  # alembic's env.py runs a migration when imported
                importlib.import_module(found.name)
    import celery._state
    changed = sorted(k for k in before.keys() | os.environ.keys() if before.get(k) != os.environ.get(k))
    print(changed, len(list(celery._state._apps)), "celery" in sys.modules)
""")


def test_importing_any_module_sets_no_variable_and_builds_no_celery_app() -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", IMPORT_ALL], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.split("\n")[-2] == "[] 0 True"  # celery imported, but no app built, no variable set
