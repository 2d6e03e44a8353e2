"""The layering (issue #15, item 6: the core stays small), read from the source with `ast`:
the shared core `gensar/` and `infra/` import no part, `gensar/` does not import `infra/`
(infra builds on the core, not the other way round), and no part imports the `cli` package,
which sits above everything. Imports inside functions count too."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("streams", "identifiers", "learner", "serving", "model", "evaluation", "demo", "bench", "cli")
CORE = ("gensar", "infra")
# What each core folder may not import: every part, and for gensar/ also infra/.
FORBIDDEN = {"gensar": set(PARTS) | {"infra"}, "infra": set(PARTS)}


def _package(path: Path) -> list[str]:
    """The dotted package a module lives in, as a list ('gensar/x.py' -> ['gensar'])."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return parts[:-1]  # 'gensar/__init__.py' -> ['gensar'] too


def imported_modules(source: str, path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a module, wherever it is (top level,
    functions, branches), relative imports resolved, and `importlib.import_module` /
    `__import__` calls with a literal name."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = _package(path)
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names if alias.name != "*"]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("import_module", "__import__"):
                found.append((node.lineno, node.args[0].value))
    return found


def _violations(folders: tuple[str, ...], forbidden) -> list[str]:
    bad = []
    for folder in folders:
        files = sorted((ROOT / folder).rglob("*.py"))
        assert files, f"no Python files under {folder}/"
        for path in files:
            for line, module in imported_modules(path.read_text(), path):
                top = module.split(".")[0]
                if top in forbidden(folder):
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


def test_the_core_imports_no_part():
    bad = _violations(CORE, FORBIDDEN.__getitem__)
    assert not bad, "the core (gensar/, infra/) must not import a part:\n" + "\n".join(bad)


def test_no_part_imports_the_cli():
    parts = CORE + tuple(p for p in PARTS if p != "cli")
    bad = _violations(parts, lambda folder: {"cli"})
    assert not bad, "nothing but the entry point may import cli/:\n" + "\n".join(bad)


def test_the_gensar_command_is_the_cli_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["gensar"] == "cli.main:app"
    assert "cli*" in project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert not (ROOT / "gensar" / "cli.py").exists()


@pytest.mark.parametrize("source, module", [
    ("def f():\n    from streams.cli import app\n", "streams.cli"),
    ("import os\nif os:\n    import model.vocab as v\n", "model.vocab"),
    ("from . import broker\n", "infra.broker"),
    ("from ..broker import KafkaBroker\n", "infra.broker.KafkaBroker"),
    ("import importlib\nimportlib.import_module('serving.app')\n", "serving.app"),
    ("__import__('demo')\n", "demo"),
])
def test_the_scan_sees_lazy_relative_and_dynamic_imports(source, module):
    path = ROOT / "infra" / "sub" / "example.py" if source.startswith("from ..") else ROOT / "infra" / "example.py"
    assert module in {name for _, name in imported_modules(source, path)}
