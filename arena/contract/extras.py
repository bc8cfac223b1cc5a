"""What the built-in plugins import beyond the arena's own dependencies, and a start-up check that says, one line
per plugin, which built-in cannot load here and the command that fixes it (never a silent absence from a round).

``torchattacks`` (the built-in ``autoattack``'s APGD, APGD-T and Square) cannot be a dependency of the package: its
3.5.1 metadata requires ``torchvision`` (whose every build pins a torch build of its own, so pip would replace the
pinned torch) and ``requests~=2.25.1``, while its code imports neither (only torch, numpy and, for two attacks,
scipy). The Makefile and the Dockerfile install it without its dependencies; any other install is told how.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path

from arena.config import BUILTIN_PLUGIN_DIRS

#: what ``pip install --no-deps`` must add for the built-ins (the Makefile and the Dockerfile install the same)
NO_DEPS = {"torchattacks": "torchattacks==3.5.1"}


def fix(module: str) -> str:
    """The command that installs ``module`` into this Python."""
    if module in NO_DEPS:
        return f'{sys.executable} -m pip install --no-deps "{NO_DEPS[module]}"'
    return f"{sys.executable} -m pip install {module}"


def missing_imports(folder: Path) -> list[str]:
    """The top-level modules the plugin folder's Python files import (absolute imports) that this Python lacks."""
    names: set[str] = set()
    for path in sorted(folder.rglob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError):
            continue  # the plugin's own error: its validation says so
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return sorted(name for name in names if name != "arena" and importlib.util.find_spec(name) is None)


def unloadable(dirs: Iterable[Path]) -> list[str]:
    """One line per built-in plugin among ``dirs`` (the settings' plugin folders) that cannot load here."""
    lines = []
    for folder in _builtin_folders(dirs):
        missing = missing_imports(folder)
        if missing:
            fixes = "; ".join(fix(module) for module in missing)
            lines.append(
                f"warning: the built-in plugin {folder.name} cannot load here ({', '.join(missing)} not installed), "
                f"so it plays in no round: {fixes}"
            )
    return lines


def _builtin_folders(dirs: Iterable[Path]) -> list[Path]:
    """The built-in plugin folders among ``dirs`` (a built-in kind's folder stands for every plugin in it)."""
    folders = []
    for directory in dirs:
        if directory in BUILTIN_PLUGIN_DIRS:
            folders += sorted(p for p in directory.iterdir() if (p / "plugin.toml").is_file())
        elif directory.parent in BUILTIN_PLUGIN_DIRS and (directory / "plugin.toml").is_file():
            folders.append(directory)
    return folders
