"""What pyproject.toml promises: every imported package declared, a Qt-free base install."""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "napari_electrode_cae"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(requirements) -> set[str]:
    """Distribution names of requirement strings; "dask[distributed]" names both."""
    names = set()
    for requirement in requirements:
        names.add(re.split(r"[\s<>=!~\[;]", requirement, maxsplit=1)[0])
        names |= set(
            re.findall(r"\[([^\]]*)\]", requirement)[0].split(",") if "[" in requirement else []
        )
    return {n.strip().lower().replace("_", "-") for n in names}


def _imported_top_level_modules() -> set[str]:
    found = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"napari_electrode_cae"}


def test_every_imported_package_is_declared():
    declared = _names(PROJECT["dependencies"])
    for extra in PROJECT["optional-dependencies"].values():
        declared |= _names(extra)
    distributions = metadata.packages_distributions()
    missing = []
    for module in sorted(_imported_top_level_modules()):
        names = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        if not names & declared:
            missing.append(f"{module} ({', '.join(sorted(names))})")
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_the_base_install_brings_neither_napari_nor_a_qt_binding():
    base = _names(PROJECT["dependencies"])
    assert not base & {"napari", "pyqt5", "pyqt6", "pyside2", "pyside6"}
    assert "napari" in _names(PROJECT["optional-dependencies"]["gui"])


def test_the_version_has_one_source():
    from napari_electrode_cae import __version__

    assert "version" in PROJECT["dynamic"] and "version" not in PROJECT
    assert metadata.version("napari-electrode-cae") == __version__


def test_core_exports_names_not_modules():
    import types

    from napari_electrode_cae import core

    exported = {name: getattr(core, name) for name in core.__all__}
    assert not [n for n, v in exported.items() if isinstance(v, types.ModuleType)]
    assert "io" not in core.__all__ and "build_model" in core.__all__
