"""Every way to install runs every built-in (issue 25): the package lists every folder it ships, an installed package
carries the built-in plugins unchanged, and a built-in that cannot load here is named at start-up with its fix."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from arena.commands.cli import main
from arena.config import BUILTIN_PLUGIN_DIRS
from arena.contract import extras, plugins

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_the_package_lists_every_folder_it_ships() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    folders = {
        ".".join(path.relative_to(REPO).parts)
        for top in ("arena", "leaderboard")
        for path in [REPO / top, *(REPO / top).rglob("*")]
        if path.is_dir() and "__pycache__" not in path.parts and any(p.is_file() for p in path.iterdir())
    }
    assert folders - listed == set(), "add these folders to [tool.setuptools] packages in pyproject.toml"
    assert PYPROJECT["tool"]["setuptools"]["package-dir"]["arena.builtin"] == "plugins"
    assert listed - folders == {"arena.builtin"}


def test_the_makefile_and_the_dockerfile_install_what_the_builtins_need() -> None:
    for name in ("Makefile", "Dockerfile"):
        text = (REPO / name).read_text()
        for requirement in extras.NO_DEPS.values():
            assert re.search(rf'pip install [^\n]*--no-deps "{re.escape(requirement)}"', text), name
    dependencies = " ".join(PYPROJECT["project"]["dependencies"])
    assert "torchattacks" not in dependencies and "torchvision" not in dependencies


def test_a_builtin_that_cannot_load_is_named_at_start_up_with_its_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hide torchattacks as a plain ``pip install -e .`` leaves it: every command names autoattack, in one line."""
    assert extras.unloadable(BUILTIN_PLUGIN_DIRS) == [], "this environment has every built-in's imports"
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torchattacks" else real(name, *a)
    )
    monkeypatch.setenv("ARENA_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ARENA_BUILTINS", raising=False)
    out = CliRunner().invoke(main, ["plugin", "new", "attack", "mine", "--dir", str(tmp_path)])
    assert out.exit_code == 0, out.output
    warnings = [line for line in out.output.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: the built-in plugin autoattack cannot load here (torchattacks not installed), so it plays in no "
        f'round: {sys.executable} -m pip install --no-deps "torchattacks==3.5.1"'
    ]
    monkeypatch.setenv("ARENA_BUILTINS", "autoattack,fgsm")  # chosen by name: the same line
    chosen = CliRunner().invoke(main, ["plugin", "new", "attack", "more", "--dir", str(tmp_path)]).output
    assert [line for line in chosen.splitlines() if line.startswith("warning:")] == warnings
    monkeypatch.setenv("ARENA_BUILTINS", "fgsm,undefended")  # autoattack not chosen: nothing to say
    assert (
        "warning" not in CliRunner().invoke(main, ["plugin", "new", "attack", "other", "--dir", str(tmp_path)]).output
    )


def test_missing_imports_of_a_plugin_folder(tmp_path: Path) -> None:
    (tmp_path / "plugin.toml").write_text("")
    (tmp_path / "mine.py").write_text(
        "import os, torch\nfrom . import helpers\nfrom arena import Attack\nimport not_a_module_anywhere.sub\n"
        "def later():\n    from also_missing_here import thing\n"
    )
    (tmp_path / "broken.py").write_text("def (:\n")  # its validation says so; the check reads on
    assert extras.missing_imports(tmp_path) == ["also_missing_here", "not_a_module_anywhere"]
    assert extras.fix("not_a_module_anywhere") == f"{sys.executable} -m pip install not_a_module_anywhere"


@pytest.mark.slow
def test_an_installed_package_carries_the_builtins_unchanged(tmp_path: Path) -> None:
    """Build the wheel as `pip install .` does, unpack it, and find every built-in there with its checkout hash."""
    source = tmp_path / "source"  # a copy: building in the checkout would leave build/ there (and read stale files)
    for name in ("arena", "leaderboard", "plugins"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path)]
    command.append(str(source))
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("arena-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path / "site")
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    probe = (
        "import json; from arena import config; from arena.contract import plugins; "
        "print(json.dumps([str(config.BUILTIN_PLUGIN_DIRS[0]), "
        "{s.label: s.content_hash for s in plugins.discover(config.BUILTIN_PLUGIN_DIRS, entry_points=False)}]))"
    )
    env = {"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    where, installed = json.loads(done.stdout)
    assert Path(where) == (tmp_path / "site" / "arena" / "builtin" / "attacks").resolve()
    checkout = {s.label: s.content_hash for s in plugins.discover(BUILTIN_PLUGIN_DIRS, entry_points=False)}
    assert installed == checkout and "arena/autoattack" in installed
