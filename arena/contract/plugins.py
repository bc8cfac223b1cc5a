"""Plugin discovery, loading and validation.

A plugin is found as a folder (``plugin.toml`` plus a module), as an archive of such a folder stored
with a plugin version, or as an installed package that declares the ``arena.contract.plugins`` entry-point
group. Whatever the origin, it becomes a :class:`PluginSource` (its files and their content hash)
and is loaded into its own :class:`pluggy.PluginManager`; every problem becomes a readable message.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.metadata
import importlib.util
import inspect
import io
import re
import shutil
import sys
import tempfile
import tomllib
import traceback
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from arena.rules import hookspecs
from arena.rules.hookspecs import NORMS, PROJECT, THREATS, Attack, Defense

ENTRY_POINT_GROUP = "arena.contract.plugins"
MANIFEST = "plugin.toml"
MAX_PLUGIN_BYTES = 1024 * 1024
#: the team of the built-in plugins (plugins/): no class team may take its name
BUILTIN_TEAM = "arena"
KINDS = {"attack": (Attack, "arena_attacks"), "defense": (Defense, "arena_defenses")}
REQUIRED_FIELDS = ("name", "kind", "team", "summary")
OPTIONAL_FIELDS = ("module", "norms", "threats", "targeted", "params")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
ENTRY_POINT_PREFIX = "entry-point:"


class PluginError(Exception):
    """A plugin could not be read, loaded or validated; the message says why, for its authors."""


@dataclass(frozen=True)
class Manifest:
    """The parsed ``plugin.toml`` of a plugin."""

    name: str
    kind: str
    team: str
    summary: str
    module: str
    norms: tuple[str, ...] | None = None
    threats: tuple[str, ...] | None = None
    targeted: bool | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy, as stored with each plugin version."""
        data = {k: getattr(self, k) for k in (*REQUIRED_FIELDS, "module", "norms", "threats", "targeted")}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()} | {"params": self.params}


def parse_manifest(text: str, where: str = MANIFEST) -> Manifest:
    """Parse and check a manifest's text; raise :class:`PluginError` naming every problem."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PluginError(f"{where}: not valid TOML: {exc}") from None
    problems = [f"missing required field '{k}'" for k in REQUIRED_FIELDS if k not in raw]
    problems += [
        f"unknown field '{k}' (known: {', '.join(REQUIRED_FIELDS + OPTIONAL_FIELDS)})"
        for k in raw
        if k not in REQUIRED_FIELDS + OPTIONAL_FIELDS
    ]
    for key in ("name", "kind", "team", "summary", "module"):
        if key in raw and not isinstance(raw[key], str):
            problems.append(f"'{key}' must be a string")
    name = raw.get("name", "")
    if isinstance(name, str) and "name" in raw and not NAME_PATTERN.fullmatch(name):
        problems.append(f"'name' = {name!r}: use lowercase letters, digits and '-' (at most 64)")
    if "kind" in raw and raw["kind"] not in tuple(KINDS):  # a tuple: a TOML array or table is unhashable
        problems.append(f"'kind' = {raw['kind']!r}: must be 'attack' or 'defense'")
    module = raw.get("module")
    if isinstance(module, str) and not module.isidentifier():
        problems.append(f"'module' = {module!r}: must be a Python module name (no '.py', no path)")
    for key, allowed in (("norms", NORMS), ("threats", THREATS)):
        value = raw.get(key)
        if value is not None and (not isinstance(value, list) or not value or any(v not in allowed for v in value)):
            problems.append(f"'{key}' = {value!r}: must be a non-empty list drawn from {list(allowed)}")
    if "targeted" in raw and not isinstance(raw["targeted"], bool):
        problems.append("'targeted' must be true or false")
    if "params" in raw and not isinstance(raw["params"], dict):
        problems.append("'params' must be a table")
    if problems:
        raise PluginError(f"{where}: " + "; ".join(problems))
    module = raw.get("module") or name.replace("-", "_")
    return Manifest(
        name=name,
        kind=raw["kind"],
        team=raw["team"],
        summary=raw["summary"],
        module=module,
        norms=tuple(raw["norms"]) if "norms" in raw else None,
        threats=tuple(raw["threats"]) if "threats" in raw else None,
        targeted=raw.get("targeted"),
        params=dict(raw.get("params", {})),
    )


@dataclass
class PluginSource:
    """A plugin's code as found: its files, where they came from, and the hash naming them."""

    origin: str
    files: dict[str, bytes]
    manifest: Manifest | None = None
    errors: list[str] = field(default_factory=list)
    commit: str | None = None

    @property
    def content_hash(self) -> str:
        """SHA-256 over the sorted file names and contents: equal code, equal hash."""
        digest = hashlib.sha256()
        for name in sorted(self.files):
            digest.update(name.encode() + b"\0" + hashlib.sha256(self.files[name]).digest())
        return digest.hexdigest()

    @property
    def label(self) -> str:
        """``team/name`` when the manifest was read, else the origin."""
        return f"{self.manifest.team}/{self.manifest.name}" if self.manifest else self.origin

    def archive(self) -> bytes:
        """The files as a deterministic zip (fixed timestamps), as stored with a plugin version."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            for name in sorted(self.files):
                zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), self.files[name])
        return buffer.getvalue()

    @classmethod
    def from_archive(cls, data: bytes, origin: str, commit: str | None = None) -> PluginSource:
        """Rebuild a source from :meth:`archive` output."""
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            files = {name: zf.read(name) for name in zf.namelist()}
        return _with_manifest(cls(origin=origin, files=files, commit=commit))


def read_folder(path: Path, expected_kind: str | None = None) -> PluginSource:
    """Read a plugin folder; problems are recorded in ``errors``, never raised."""
    files: dict[str, bytes] = {}
    total = 0
    for file in sorted(path.rglob("*")):
        rel = file.relative_to(path)
        if not file.is_file() or _ignored(rel):
            continue
        data = file.read_bytes()
        total += len(data)
        files[rel.as_posix()] = data
    source = _with_manifest(PluginSource(origin=str(path), files=files))
    if total > MAX_PLUGIN_BYTES:
        source.errors.append(f"the folder holds {total} bytes; a plugin may hold {MAX_PLUGIN_BYTES} at most")
    if expected_kind and source.manifest and source.manifest.kind != expected_kind:
        source.errors.append(
            f"wrong kind: the manifest says kind = '{source.manifest.kind}' but the folder lies under {expected_kind}s/"
        )
    return source


def discover(dirs: Iterable[Path], entry_points: bool = True) -> list[PluginSource]:
    """Every plugin under ``dirs`` (folders of plugin folders) and, optionally, in installed packages."""
    found: list[PluginSource] = []
    for directory in dirs:
        if (directory / MANIFEST).exists():
            found.append(read_folder(directory))
            continue
        kind = directory.name[:-1] if directory.name in ("attacks", "defenses") else None
        for child in sorted(p for p in directory.iterdir() if p.is_dir() and not _ignored(Path(p.name))):
            if child.name in ("attacks", "defenses") and not (child / MANIFEST).exists():
                found.extend(discover([child], entry_points=False))
            else:
                found.append(read_folder(child, expected_kind=kind))
    if entry_points:
        found.extend(read_entry_point(ep) for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    return found


def read_entry_point(ep: importlib.metadata.EntryPoint) -> PluginSource:
    """Read the plugin an installed package declares: its module's folder, with its ``plugin.toml``."""
    origin = f"{ENTRY_POINT_PREFIX}{ep.name}={ep.value}"
    module_name = ep.value.split(":")[0].strip()
    try:  # finding a submodule imports its parent package: plugin code, which may fail
        spec = importlib.util.find_spec(module_name)
    except BaseException as exc:  # plugin code
        return PluginSource(origin=origin, files={}, errors=[f"entry point {ep.name}: {describe_error(exc)}"])
    if spec is None or spec.origin is None:
        return PluginSource(origin=origin, files={}, errors=[f"entry point {ep.name}: module not found"])
    if "." not in module_name and spec.submodule_search_locations is None:
        # a top-level single-file module: its folder is site-packages itself, not the plugin's own folder
        return PluginSource(
            origin=origin,
            files={},
            errors=[
                f"entry point {ep.name}: '{module_name}' must be a package (or a module inside one) with plugin.toml"
            ],
        )
    folder = Path(spec.origin).parent
    source = read_folder(folder)
    source.origin = origin
    return source


@dataclass
class LoadedPlugin:
    """A validated plugin: its source and the one class it registers."""

    source: PluginSource
    manifest: Manifest
    cls: type[Attack] | type[Defense]
    hooks: list[str]

    def instantiate(self) -> Attack | Defense:
        """A fresh instance built with the manifest's parameters."""
        return self.cls(**self.manifest.params)


def load(source: PluginSource, cache_dir: Path) -> LoadedPlugin:
    """Import a plugin's code, register it with pluggy and validate it; raise :class:`PluginError`."""
    if source.errors or source.manifest is None:
        raise PluginError("; ".join(source.errors) or "no manifest")
    manifest = source.manifest
    module = _import(source, cache_dir)
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    known = sorted(name for name in dir(hookspecs) if name.startswith("arena_"))
    for attr in dir(module):
        if attr.startswith("arena_") and callable(getattr(module, attr)) and attr not in known:
            hint = difflib.get_close_matches(attr, known, n=1)
            raise PluginError(
                f"{source.label}: unknown hook '{attr}'"
                + (f" (did you mean '{hint[0]}'?)" if hint else f"; hooks are {', '.join(known)}")
            )
    try:
        pm.register(module, name=source.label)
        pm.check_pending()
    except (pluggy.PluginValidationError, ValueError) as exc:
        raise PluginError(f"{source.label}: {exc}") from None
    hooks = [impl.name for impl in pm.get_hookcallers(module) or []]
    base, hook_name = KINDS[manifest.kind]
    wrong = [h for h in hooks if h != hook_name]
    if wrong:
        raise PluginError(
            f"{source.label}: wrong kind: the manifest says '{manifest.kind}' "
            f"but the module implements {', '.join(wrong)}"
        )
    if hook_name not in hooks:
        raise PluginError(f"{source.label}: missing hook: a {manifest.kind} plugin implements {hook_name}()")
    try:
        classes = [c for batch in getattr(pm.hook, hook_name)() for c in batch]
    except Exception as exc:  # plugin code: any failure is the plugin's, reported to its authors
        raise PluginError(f"{source.label}: {hook_name}() raised {describe_error(exc)}") from None
    if len(classes) != 1:
        raise PluginError(f"{source.label}: {hook_name}() must return a list of exactly one class, got {classes!r}")
    cls = classes[0]
    if not (inspect.isclass(cls) and issubclass(cls, base)):
        raise PluginError(f"{source.label}: {hook_name}() returned {cls!r}, not a subclass of arena.{base.__name__}")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise PluginError(f"{source.label}: {cls.__name__} does not implement {missing}")
    if base is Attack:
        _check_attack_declarations(source.label, manifest, cls)
    plugin = LoadedPlugin(source, manifest, cls, hooks)
    try:
        plugin.instantiate()
    except Exception as exc:  # plugin code
        raise PluginError(f"{source.label}: {cls.__name__}(**params) raised {describe_error(exc)}") from None
    return plugin


def validate(source: PluginSource, cache_dir: Path) -> list[str]:
    """The readable errors of a plugin (empty when it is valid)."""
    try:
        load(source, cache_dir)
    except PluginError as exc:
        return [str(exc)]
    return []


def _check_attack_declarations(label: str, manifest: Manifest, cls: type[Attack]) -> None:
    for key, allowed in (("norms", NORMS), ("threats", THREATS)):
        declared = tuple(getattr(cls, key))
        if not declared or any(v not in allowed for v in declared):
            raise PluginError(f"{label}: {cls.__name__}.{key} = {declared!r}: values must be in {list(allowed)}")
        in_manifest = getattr(manifest, key)
        if in_manifest is not None and set(in_manifest) != set(declared):
            raise PluginError(
                f"{label}: the manifest's {key} {list(in_manifest)} disagree with {cls.__name__}.{key} {list(declared)}"
            )
    if manifest.targeted is not None and manifest.targeted != cls.targeted:
        raise PluginError(
            f"{label}: the manifest says targeted = {str(manifest.targeted).lower()} "
            f"but {cls.__name__}.targeted is {cls.targeted}"
        )


def _import(source: PluginSource, cache_dir: Path) -> ModuleType:
    """Import the plugin's module under a name unique to its content (so artifacts can be unpickled)."""
    assert source.manifest is not None
    if source.origin.startswith(ENTRY_POINT_PREFIX):
        return _import_entry_point(source)
    module_name = source.manifest.module
    unique = f"arena_plugin_{source.content_hash[:16]}_{module_name}"
    if unique in sys.modules:
        return sys.modules[unique]
    folder = cache_dir / source.content_hash
    if not folder.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".extract-"))
        for name, data in source.files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        try:
            tmp.rename(folder)
        except OSError:  # another process extracted the same content first
            shutil.rmtree(tmp, ignore_errors=True)
            if not folder.exists():
                raise
    if (folder / module_name / "__init__.py").exists():
        path, search = folder / module_name / "__init__.py", [str(folder / module_name)]
    elif (folder / f"{module_name}.py").exists():
        path, search = folder / f"{module_name}.py", None
    else:
        raise PluginError(f"{source.label}: module '{module_name}' not found (no {module_name}.py in the folder)")
    spec = importlib.util.spec_from_file_location(unique, path, submodule_search_locations=search)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[unique] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:  # plugin code: SyntaxError, ImportError, SystemExit, anything
        del sys.modules[unique]
        raise PluginError(f"{source.label}: importing {module_name} failed: {describe_error(exc)}") from None
    return module


def _import_entry_point(source: PluginSource) -> ModuleType:
    name = source.origin.removeprefix(ENTRY_POINT_PREFIX).split("=", 1)[0]
    matches = [ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not matches:
        raise PluginError(f"{source.label}: entry point '{name}' is not installed here")
    installed = read_entry_point(matches[0])
    if installed.content_hash != source.content_hash:
        raise PluginError(f"{source.label}: the installed package differs from the recorded version")
    try:
        loaded = matches[0].load()
    except BaseException as exc:  # plugin code
        raise PluginError(f"{source.label}: importing entry point '{name}' failed: {describe_error(exc)}") from None
    return loaded if isinstance(loaded, ModuleType) else sys.modules[loaded.__module__]


def _with_manifest(source: PluginSource) -> PluginSource:
    text = source.files.get(MANIFEST)
    if text is None:
        source.errors.append(f"{source.origin}: missing {MANIFEST}")
        return source
    try:
        source.manifest = parse_manifest(text.decode("utf-8", errors="replace"), f"{source.origin}/{MANIFEST}")
    except PluginError as exc:
        source.errors.append(str(exc))
    return source


def _ignored(rel: Path) -> bool:
    return any(part.startswith(".") or part == "__pycache__" for part in rel.parts) or rel.suffix in (
        ".pyc",
        ".pyo",
    )


def describe_error(exc: BaseException) -> str:
    """``Type: message`` and the innermost frame, short enough for a leaderboard cell."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""
    if isinstance(exc, SyntaxError):
        where = f" (at {Path(exc.filename or '?').name}:{exc.lineno})"
    return f"{type(exc).__name__}: {exc}{where}"
