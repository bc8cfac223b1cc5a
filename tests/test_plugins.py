"""The plugin contract: manifests, discovery, loading, validation, and the readable errors of each."""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from arena.config import Settings
from arena.contract.plugins import (
    ENTRY_POINT_PREFIX,
    LoadedPlugin,
    PluginError,
    PluginSource,
    discover,
    load,
    parse_manifest,
    read_folder,
    validate,
)

REPO = Path(__file__).resolve().parents[1]

ATTACK_MANIFEST = """\
name = "{name}"
kind = "attack"
team = "testers"
summary = "a test attack"
"""

DEFENSE_MANIFEST = """\
name = "{name}"
kind = "defense"
team = "testers"
summary = "a test defense"
"""

GOOD_ATTACK = """\
from arena import Attack, hookimpl


class Identity(Attack):
    norms = ("linf", "l2")
    threats = ("white-box", "gray-box", "black-box")
    targeted = False

    def run(self, target, x, y, budget):
        return x.clone()


@hookimpl
def arena_attacks():
    return [Identity]
"""

GOOD_DEFENSE = """\
from torch import nn

from arena import Defense, hookimpl


class Plain(Defense):
    def train(self, ctx):
        return nn.Flatten()


@hookimpl
def arena_defenses():
    return [Plain]
"""


def write_plugin(
    folder: Path, module_text: str, manifest: str | None = None, name: str = "probe", module: str | None = None
) -> Path:
    """Write ``plugin.toml`` (an attack manifest unless given) and the module into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plugin.toml").write_text(manifest if manifest is not None else ATTACK_MANIFEST.format(name=name))
    (folder / f"{module or name.replace('-', '_')}.py").write_text(module_text)
    return folder


def load_error(folder: Path, cache: Path) -> str:
    """The message of the :class:`PluginError` that loading the plugin in ``folder`` raises."""
    source = read_folder(folder)
    assert source.errors == []
    with pytest.raises(PluginError) as info:
        load(source, cache)
    assert validate(source, cache) == [str(info.value)]
    return str(info.value)


@pytest.fixture(autouse=True)
def _forget_plugin_modules() -> Iterator[None]:
    """Drop the modules a test imported for its plugins, so tests stay independent."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith(("arena_plugin_", "demo_arena_plugin")):
            del sys.modules[name]


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """Where :func:`load` extracts plugin code."""
    return tmp_path / "cache"


# --------------------------------------------------------------------------------------------------
# parse_manifest
# --------------------------------------------------------------------------------------------------


def manifest_error(text: str) -> str:
    """The message of the :class:`PluginError` that parsing ``text`` raises."""
    with pytest.raises(PluginError) as info:
        parse_manifest(text, "x/plugin.toml")
    message = str(info.value)
    assert message.startswith("x/plugin.toml: ")
    return message


def test_parse_manifest_reads_every_field() -> None:
    text = ATTACK_MANIFEST.format(name="my-pgd") + (
        'norms = ["linf"]\nthreats = ["black-box"]\ntargeted = true\n[params]\nsteps = 10\n'
    )
    manifest = parse_manifest(text)
    assert (manifest.name, manifest.kind, manifest.team, manifest.module) == ("my-pgd", "attack", "testers", "my_pgd")
    assert manifest.norms == ("linf",) and manifest.threats == ("black-box",) and manifest.targeted is True
    assert manifest.params == {"steps": 10}
    assert manifest.as_dict()["norms"] == ["linf"]
    minimal = parse_manifest(DEFENSE_MANIFEST.format(name="d") + 'module = "impl"\n')
    assert minimal.module == "impl" and minimal.norms is None and minimal.targeted is None and minimal.params == {}


@pytest.mark.parametrize("missing", ["name", "kind", "team", "summary"])
def test_parse_manifest_names_a_missing_field(missing: str) -> None:
    lines = [line for line in ATTACK_MANIFEST.format(name="a").splitlines() if not line.startswith(missing)]
    message = manifest_error("\n".join(lines))
    assert f"missing required field '{missing}'" in message
    assert message.count("missing required field") == 1


def test_parse_manifest_names_every_missing_field() -> None:
    message = manifest_error('name = "a"\n')
    for key in ("kind", "team", "summary"):
        assert f"missing required field '{key}'" in message
    assert "'name'" not in message


def test_parse_manifest_rejects_an_unknown_field() -> None:
    message = manifest_error(ATTACK_MANIFEST.format(name="a") + 'colour = "red"\n')
    assert "unknown field 'colour'" in message and "known: name, kind, team, summary" in message


@pytest.mark.parametrize("name", ["Bad_Name", "-leading-dash", "with space", "a" * 65, ""])
def test_parse_manifest_rejects_a_bad_name(name: str) -> None:
    message = manifest_error(ATTACK_MANIFEST.format(name=name))
    assert f"'name' = {name!r}" in message and "lowercase letters, digits and '-'" in message


def test_parse_manifest_rejects_a_name_with_a_trailing_newline() -> None:
    message = manifest_error(ATTACK_MANIFEST.format(name="a\\n"))
    assert "'name' = 'a\\n'" in message


@pytest.mark.parametrize("module", ["../../elsewhere/evil", "probe.py", "pkg.sub", "my-module"])
def test_parse_manifest_rejects_a_module_that_is_not_a_module_name(module: str) -> None:
    message = manifest_error(ATTACK_MANIFEST.format(name="a") + f'module = "{module}"\n')
    assert f"'module' = {module!r}: must be a Python module name" in message


def test_parse_manifest_rejects_a_non_string_field() -> None:
    message = manifest_error(ATTACK_MANIFEST.format(name="a").replace('team = "testers"', "team = 3"))
    assert "'team' must be a string" in message


@pytest.mark.parametrize("kind", ['"attacker"', '"Defense"', "3", '["attack"]'])
def test_parse_manifest_rejects_a_bad_kind(kind: str) -> None:
    message = manifest_error(ATTACK_MANIFEST.format(name="a").replace('"attack"', kind))
    assert "must be 'attack' or 'defense'" in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("norms", '["linf", "l3"]'),
        ("norms", '"linf"'),
        ("norms", "[]"),
        ("threats", '["grey-box"]'),
        ("threats", '"white-box"'),
    ],
)
def test_parse_manifest_rejects_unknown_norms_and_threats(key: str, value: str) -> None:
    message = manifest_error(ATTACK_MANIFEST.format(name="a") + f"{key} = {value}\n")
    assert f"'{key}' = " in message and "must be a non-empty list drawn from" in message


def test_parse_manifest_rejects_a_targeted_that_is_not_a_bool() -> None:
    message = manifest_error(ATTACK_MANIFEST.format(name="a") + 'targeted = "yes"\n')
    assert "'targeted' must be true or false" in message


def test_parse_manifest_rejects_params_that_are_not_a_table() -> None:
    message = manifest_error(ATTACK_MANIFEST.format(name="a") + "params = 3\n")
    assert "'params' must be a table" in message


def test_parse_manifest_rejects_invalid_toml() -> None:
    message = manifest_error('name = "a\nkind = attack\n')
    assert "not valid TOML" in message


# --------------------------------------------------------------------------------------------------
# read_folder, discover, content hash, archives
# --------------------------------------------------------------------------------------------------


def test_read_folder_without_a_manifest(tmp_path: Path) -> None:
    folder = tmp_path / "nothing"
    folder.mkdir()
    (folder / "nothing.py").write_text("x = 1\n")
    source = read_folder(folder)
    assert source.manifest is None
    assert source.errors == [f"{folder}: missing plugin.toml"]
    with pytest.raises(PluginError, match="missing plugin.toml"):
        load(source, tmp_path / "cache")


def test_read_folder_records_a_bad_manifest(tmp_path: Path) -> None:
    folder = write_plugin(tmp_path / "bad", GOOD_ATTACK, manifest='name = "bad"\n')
    source = read_folder(folder)
    assert source.manifest is None
    assert len(source.errors) == 1 and "missing required field 'kind'" in source.errors[0]
    assert source.label == str(folder)


def test_discover_flags_a_defense_under_attacks(tmp_path: Path) -> None:
    attacks = tmp_path / "attacks"
    write_plugin(attacks / "good", GOOD_ATTACK, name="good")
    write_plugin(
        attacks / "misplaced", GOOD_DEFENSE, manifest=DEFENSE_MANIFEST.format(name="misplaced"), name="misplaced"
    )
    found = {source.manifest.name: source for source in discover([attacks], entry_points=False)}
    assert set(found) == {"good", "misplaced"}
    assert found["good"].errors == []
    (error,) = found["misplaced"].errors
    assert "wrong kind" in error and "kind = 'defense'" in error and "attacks/" in error
    with pytest.raises(PluginError, match="wrong kind"):
        load(found["misplaced"], tmp_path / "cache")


def test_discover_walks_a_root_with_attacks_and_defenses(tmp_path: Path) -> None:
    write_plugin(tmp_path / "root" / "attacks" / "a", GOOD_ATTACK, name="a")
    write_plugin(
        tmp_path / "root" / "defenses" / "d", GOOD_DEFENSE, manifest=DEFENSE_MANIFEST.format(name="d"), name="d"
    )
    single = write_plugin(tmp_path / "single", GOOD_ATTACK, name="single")
    found = discover([tmp_path / "root", single], entry_points=False)
    assert sorted(s.manifest.name for s in found) == ["a", "d", "single"]
    assert all(s.errors == [] for s in found)


def test_content_hash_is_stable_and_ignores_caches(tmp_path: Path) -> None:
    folder = write_plugin(tmp_path / "probe", GOOD_ATTACK)
    first = read_folder(folder).content_hash
    assert read_folder(folder).content_hash == first
    assert len(first) == 64
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "probe.cpython-311.pyc").write_bytes(b"\x00compiled")
    (folder / "stale.pyc").write_bytes(b"\x00compiled")
    (folder / ".hidden").write_text("editor state")
    source = read_folder(folder)
    assert source.content_hash == first
    assert sorted(source.files) == ["plugin.toml", "probe.py"]
    copy = write_plugin(tmp_path / "elsewhere" / "copy", GOOD_ATTACK)
    assert read_folder(copy).content_hash == first


def test_content_hash_changes_with_one_byte_or_a_new_file(tmp_path: Path) -> None:
    folder = write_plugin(tmp_path / "probe", GOOD_ATTACK)
    first = read_folder(folder).content_hash
    (folder / "probe.py").write_text(GOOD_ATTACK.replace("x.clone()", "x.clone() "))
    second = read_folder(folder).content_hash
    assert second != first
    (folder / "helpers.py").write_text("")
    assert read_folder(folder).content_hash not in (first, second)


def test_content_hash_depends_on_file_names(tmp_path: Path) -> None:
    one = PluginSource(origin="a", files={"a.py": b"x", "b.py": b"y"})
    two = PluginSource(origin="b", files={"a.py": b"y", "b.py": b"x"})
    assert one.content_hash != two.content_hash


def test_archive_round_trips_with_the_same_hash(tmp_path: Path, cache: Path) -> None:
    folder = write_plugin(tmp_path / "probe", GOOD_ATTACK)
    (folder / "data").mkdir()
    (folder / "data" / "weights.bin").write_bytes(bytes(range(256)))
    source = read_folder(folder)
    archive = source.archive()
    assert archive == source.archive()  # deterministic: no timestamps
    copy = PluginSource.from_archive(archive, origin="git:abc", commit="abc")
    assert copy.files == source.files
    assert copy.content_hash == source.content_hash
    assert copy.manifest == source.manifest and copy.errors == [] and copy.commit == "abc"
    assert load(copy, cache).cls.__name__ == "Identity"


# --------------------------------------------------------------------------------------------------
# load(): every failure is a readable PluginError
# --------------------------------------------------------------------------------------------------


def test_load_a_valid_attack_and_defense(tmp_path: Path, cache: Path) -> None:
    attack = load(read_folder(write_plugin(tmp_path / "a", GOOD_ATTACK, name="a")), cache)
    assert isinstance(attack, LoadedPlugin)
    assert attack.cls.__name__ == "Identity" and attack.hooks == ["arena_attacks"]
    assert attack.manifest.name == "a"
    defense_folder = write_plugin(tmp_path / "d", GOOD_DEFENSE, manifest=DEFENSE_MANIFEST.format(name="d"), name="d")
    defense = load(read_folder(defense_folder), cache)
    assert defense.cls.__name__ == "Plain" and defense.hooks == ["arena_defenses"]
    assert validate(read_folder(defense_folder), cache) == []
    # loading the same content twice gives the same class (the module is imported once)
    assert load(read_folder(defense_folder), cache).cls is defense.cls


def test_the_manifests_params_are_the_only_place_that_states_them(tmp_path: Path, cache: Path) -> None:
    manifest = ATTACK_MANIFEST.format(name="probe") + "[params]\nsteps = 7\nrate = 0.5\n"
    plugin = load(read_folder(write_plugin(tmp_path / "probe", GOOD_ATTACK, manifest=manifest)), cache)
    assert (plugin.instantiate().steps, plugin.instantiate().params) == (7, {"steps": 7, "rate": 0.5})
    built = plugin.cls(steps=3)  # by hand: the rest from the plugin.toml beside the module
    assert (built.steps, built.rate, built.params) == (3, 0.5, {"steps": 3, "rate": 0.5})


def test_a_plugin_with_a_constructor_of_its_own_still_loads(tmp_path: Path, cache: Path) -> None:
    """As ``arena plugin new`` wrote defenses before: a default in the code the manifest does not state."""
    init = "    def __init__(self, lr=1e-3, **params):\n        super().__init__(lr=lr, **params)\n\n"
    module = GOOD_ATTACK.replace("    def run(", init + "    def run(")
    plugin = load(read_folder(write_plugin(tmp_path / "probe", module)), cache)
    assert plugin.instantiate().params == {"lr": 1e-3}


def test_load_reports_params_that_check_params_refuses(tmp_path: Path, cache: Path) -> None:
    check = "    def check_params(self):\n        if self.steps < 1:\n            raise ValueError('steps < 1')\n\n"
    manifest = ATTACK_MANIFEST.format(name="probe") + "[params]\nsteps = 0\n"
    module = GOOD_ATTACK.replace("    def run(", check + "    def run(")
    message = load_error(write_plugin(tmp_path / "probe", module, manifest=manifest), cache)
    assert "Identity(**params) raised ValueError" in message and "steps < 1" in message


def test_load_reports_a_syntax_error_with_file_and_line(tmp_path: Path, cache: Path) -> None:
    folder = write_plugin(tmp_path / "probe", "import torch\n\ndef broken(:\n    pass\n")
    message = load_error(folder, cache)
    assert "testers/probe" in message and "importing probe failed" in message
    assert "SyntaxError" in message and "probe.py:3" in message


def test_load_reports_a_missing_package(tmp_path: Path, cache: Path) -> None:
    folder = write_plugin(tmp_path / "probe", "import not_a_real_package_xyz\n" + GOOD_ATTACK)
    message = load_error(folder, cache)
    assert "ModuleNotFoundError" in message and "not_a_real_package_xyz" in message


def test_load_reports_an_exception_at_import(tmp_path: Path, cache: Path) -> None:
    folder = write_plugin(tmp_path / "probe", GOOD_ATTACK + "\nraise RuntimeError('boom at import')\n")
    message = load_error(folder, cache)
    assert "RuntimeError: boom at import" in message and "probe.py:" in message
    assert not any(name.startswith("arena_plugin_") and name.endswith("_probe") for name in sys.modules)


def test_sys_exit_at_import_does_not_end_the_process(tmp_path: Path, cache: Path) -> None:
    folder = write_plugin(tmp_path / "probe", "import sys\nsys.exit(3)\n" + GOOD_ATTACK)
    message = load_error(folder, cache)
    assert "SystemExit" in message


def test_load_names_an_unknown_hook_and_suggests_the_right_one(tmp_path: Path, cache: Path) -> None:
    folder = write_plugin(tmp_path / "probe", GOOD_ATTACK.replace("def arena_attacks", "def arena_attack"))
    message = load_error(folder, cache)
    assert "unknown hook 'arena_attack'" in message and "did you mean 'arena_attacks'" in message


def test_load_lists_the_hooks_when_nothing_is_close(tmp_path: Path, cache: Path) -> None:
    folder = write_plugin(tmp_path / "probe", GOOD_ATTACK + "\n@hookimpl\ndef arena_zzzzzzzz():\n    return []\n")
    message = load_error(folder, cache)
    assert "unknown hook 'arena_zzzzzzzz'" in message and "hooks are arena_attacks, arena_defenses" in message


def test_load_reports_a_missing_hook(tmp_path: Path, cache: Path) -> None:
    undecorated = GOOD_ATTACK.replace("@hookimpl\n", "")
    message = load_error(write_plugin(tmp_path / "probe", undecorated), cache)
    assert "missing hook" in message and "arena_attacks()" in message


def test_load_reports_a_module_of_the_wrong_kind(tmp_path: Path, cache: Path) -> None:
    message = load_error(write_plugin(tmp_path / "probe", GOOD_DEFENSE), cache)
    assert "wrong kind" in message and "says 'attack'" in message and "implements arena_defenses" in message


def test_load_reports_a_hook_that_raises(tmp_path: Path, cache: Path) -> None:
    module = GOOD_ATTACK.replace("return [Identity]", "raise KeyError('oops')")
    message = load_error(write_plugin(tmp_path / "probe", module), cache)
    assert "arena_attacks() raised KeyError" in message


@pytest.mark.parametrize(
    ("returned", "expected"),
    [
        ("[Identity, Identity]", "must return a list of exactly one class"),
        ("[]", "must return a list of exactly one class"),
        ("['Identity']", "not a subclass of arena.Attack"),
        ("[int]", "not a subclass of arena.Attack"),
        ("[Other]", "not a subclass of arena.Attack"),
    ],
)
def test_load_checks_what_the_hook_returns(tmp_path: Path, cache: Path, returned: str, expected: str) -> None:
    module = GOOD_ATTACK.replace("return [Identity]", f"return {returned}") + (
        "\n\nclass Other(Defense):\n    def train(self, ctx):\n        return None\n"
    )
    module = module.replace("from arena import Attack, hookimpl", "from arena import Attack, Defense, hookimpl")
    message = load_error(write_plugin(tmp_path / "probe", module), cache)
    assert expected in message


def test_load_rejects_an_attack_without_run(tmp_path: Path, cache: Path) -> None:
    module = GOOD_ATTACK.replace("def run(", "def attack(")
    message = load_error(write_plugin(tmp_path / "probe", module), cache)
    assert "Identity does not implement run" in message


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('norms = ["linf"]\n', "the manifest's norms ['linf'] disagree with Identity.norms"),
        ('threats = ["white-box"]\n', "the manifest's threats ['white-box'] disagree with Identity.threats"),
        ("targeted = true\n", "the manifest says targeted = true but Identity.targeted is False"),
    ],
)
def test_load_checks_the_manifest_against_the_class(tmp_path: Path, cache: Path, extra: str, expected: str) -> None:
    manifest = ATTACK_MANIFEST.format(name="probe") + extra
    message = load_error(write_plugin(tmp_path / "probe", GOOD_ATTACK, manifest=manifest), cache)
    assert expected in message


def test_load_accepts_manifest_declarations_that_agree(tmp_path: Path, cache: Path) -> None:
    extra = 'norms = ["l2", "linf"]\nthreats = ["black-box", "white-box", "gray-box"]\ntargeted = false\n'
    folder = write_plugin(tmp_path / "probe", GOOD_ATTACK, manifest=ATTACK_MANIFEST.format(name="probe") + extra)
    assert validate(read_folder(folder), cache) == []


def test_load_checks_the_class_declarations(tmp_path: Path, cache: Path) -> None:
    module = GOOD_ATTACK.replace('norms = ("linf", "l2")', 'norms = ("linf", "l1")')
    message = load_error(write_plugin(tmp_path / "probe", module), cache)
    assert "Identity.norms = ('linf', 'l1'): values must be in" in message


def test_load_reports_a_constructor_that_rejects_the_params(tmp_path: Path, cache: Path) -> None:
    manifest = ATTACK_MANIFEST.format(name="probe") + "[params]\nsteps = 7\n"
    module = GOOD_ATTACK.replace(
        "    def run(", "    def __init__(self) -> None:\n        super().__init__()\n\n    def run("
    )
    message = load_error(write_plugin(tmp_path / "probe", module, manifest=manifest), cache)
    assert "Identity(**params) raised TypeError" in message and "steps" in message


def test_load_reports_a_missing_module_file(tmp_path: Path, cache: Path) -> None:
    folder = write_plugin(tmp_path / "probe", GOOD_ATTACK, module="something_else")
    message = load_error(folder, cache)
    assert "module 'probe' not found" in message and "no probe.py" in message


def test_load_imports_a_package_module(tmp_path: Path, cache: Path) -> None:
    folder = tmp_path / "probe"
    (folder / "probe").mkdir(parents=True)
    (folder / "plugin.toml").write_text(ATTACK_MANIFEST.format(name="probe"))
    (folder / "probe" / "helpers.py").write_text("def copy(x):\n    return x.clone()\n")
    package = GOOD_ATTACK.replace("from arena import", "from .helpers import copy\nfrom arena import")
    (folder / "probe" / "__init__.py").write_text(package)
    assert load(read_folder(folder), cache).cls.__name__ == "Identity"


# --------------------------------------------------------------------------------------------------
# The built-in plugins, and plugins from installed packages
# --------------------------------------------------------------------------------------------------


def test_builtin_plugins_are_found_and_valid(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    monkeypatch.delenv("ARENA_PLUGIN_DIRS", raising=False)
    found = {source.manifest.name: source for source in discover(Settings.from_env().plugin_dirs, entry_points=False)}
    assert {"fgsm", "simba", "transfer", "undefended", "fgsm-adv-training"} <= set(found)
    for name in ("fgsm", "simba", "transfer"):
        assert found[name].manifest.kind == "attack"
    for name in ("undefended", "fgsm-adv-training"):
        assert found[name].manifest.kind == "defense"
    for source in found.values():
        assert source.errors == [], source.label
        assert validate(source, cache) == [], source.label


def install(site: Path, files: dict[str, str], entry_point: str, dist: str = "demo_arena_plugin") -> None:
    """A fake installed distribution in ``site``: ``files`` plus a dist-info declaring ``entry_point``."""
    for name, text in files.items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text(text)
    dist_info = site / f"{dist}-0.1.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist.replace('_', '-')}\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(f"[arena.contract.plugins]\n{entry_point}\n")


def entry_point_sources(name: str) -> list[PluginSource]:
    """The sources :func:`discover` finds for the installed entry point ``name``."""
    return [s for s in discover([], entry_points=True) if s.origin.startswith(f"{ENTRY_POINT_PREFIX}{name}=")]


def test_entry_point_plugin_is_found_and_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    site = tmp_path / "site-packages"
    manifest = ATTACK_MANIFEST.format(name="demo-arena-plugin")
    files = {"demo_arena_plugin/__init__.py": GOOD_ATTACK, "demo_arena_plugin/plugin.toml": manifest}
    install(site, files, "demo = demo_arena_plugin")
    monkeypatch.syspath_prepend(str(site))

    (source,) = entry_point_sources("demo")
    assert source.origin == f"{ENTRY_POINT_PREFIX}demo=demo_arena_plugin"
    assert source.errors == [] and source.manifest.name == "demo-arena-plugin"
    assert sorted(source.files) == ["__init__.py", "plugin.toml"]
    plugin = load(source, cache)
    assert plugin.cls.__name__ == "Identity" and plugin.cls.__module__ == "demo_arena_plugin"
    assert validate(source, cache) == []

    # a recorded version that no longer matches the installed package is refused, not silently replaced
    (site / "demo_arena_plugin" / "__init__.py").write_text(GOOD_ATTACK + "\n# changed\n")
    with pytest.raises(PluginError, match="the installed package differs from the recorded version"):
        load(source, cache)


def test_entry_point_naming_a_module_inside_a_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path
) -> None:
    site = tmp_path / "site-packages"
    files = {
        "demo_arena_plugin_sub/__init__.py": "",
        "demo_arena_plugin_sub/attack.py": GOOD_ATTACK,
        "demo_arena_plugin_sub/plugin.toml": ATTACK_MANIFEST.format(name="demo-sub"),
    }
    install(site, files, "demo-sub = demo_arena_plugin_sub.attack", dist="demo_arena_plugin_sub")
    monkeypatch.syspath_prepend(str(site))
    (source,) = entry_point_sources("demo-sub")
    assert source.errors == [] and sorted(source.files) == ["__init__.py", "attack.py", "plugin.toml"]
    assert load(source, cache).cls.__module__ == "demo_arena_plugin_sub.attack"


def test_entry_point_to_a_single_file_module_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site-packages"
    files = {"demo_arena_plugin_file.py": GOOD_ATTACK, "plugin.toml": ATTACK_MANIFEST.format(name="demo-file")}
    install(site, files, "demo-file = demo_arena_plugin_file", dist="demo_arena_plugin_file")
    monkeypatch.syspath_prepend(str(site))
    (source,) = entry_point_sources("demo-file")
    (error,) = source.errors
    assert "'demo_arena_plugin_file' must be a package" in error
    assert source.files == {}  # site-packages was not read as the plugin's folder


def test_entry_point_whose_package_fails_to_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site-packages"
    files = {
        "demo_arena_plugin_bad/__init__.py": "raise RuntimeError('broken package')\n",
        "demo_arena_plugin_bad/attack.py": GOOD_ATTACK,
        "demo_arena_plugin_bad/plugin.toml": ATTACK_MANIFEST.format(name="demo-bad"),
    }
    install(site, files, "demo-bad = demo_arena_plugin_bad.attack", dist="demo_arena_plugin_bad")
    monkeypatch.syspath_prepend(str(site))
    (source,) = entry_point_sources("demo-bad")
    (error,) = source.errors
    assert "entry point demo-bad: RuntimeError: broken package" in error


def test_entry_point_to_a_missing_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site-packages"
    site.mkdir()
    install(site, {}, "demo-gone = demo_arena_plugin_gone", dist="demo_arena_plugin_gone")
    monkeypatch.syspath_prepend(str(site))
    (source,) = entry_point_sources("demo-gone")
    assert source.errors == ["entry point demo-gone: module not found"]


# --------------------------------------------------------------------------------------------------
# Documentation
# --------------------------------------------------------------------------------------------------


def hook_names() -> list[str]:
    """The hooks declared in ``arena/rules/hookspecs.py``: its top-level functions named ``arena_*``."""
    tree = ast.parse((REPO / "arena" / "rules" / "hookspecs.py").read_text())
    return [node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("arena_")]


def test_every_hook_is_documented_in_plugins_md() -> None:
    hooks = hook_names()
    assert {"arena_attacks", "arena_defenses"} <= set(hooks)
    docs = REPO / "docs" / "plugins.md"
    assert docs.exists(), "docs/plugins.md is missing"
    headings = [line.lstrip("#").strip() for line in docs.read_text().splitlines() if re.match(r"#{1,6} ", line)]
    for hook in hooks:
        documented = any(
            re.fullmatch(rf"{hook}(\(\))?", heading) or re.search(rf"`{hook}(\(\))?`", heading) for heading in headings
        )
        assert documented, f"docs/plugins.md has no section heading for the hook {hook}"
