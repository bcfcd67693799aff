"""The layout rules of docs/architecture.md, checked on the source tree.

``lint-imports`` (run by ./dev test) checks the layers contract in
pyproject.toml; these tests check what it cannot: that the contract names
every package, that no package hides an import of another inside a function,
that importing a package loads no Kafka, Faust or web client, and the size
limits of modules and functions.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "tables", "streams", "agents", "api", "eventide")
"""The project's packages, bottom layer first."""
HEAVY = ("faust", "mode", "aiokafka", "confluent_kafka", "fastapi", "uvicorn")
SIZED = ("schemas", "tables", "streams", "agents")
"""Packages held to the size limits."""
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
REASON = "Kept in one piece"
"""A longer function says why in its docstring with these words."""


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_every_package_is_a_layer_of_the_contract():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    on_disk = {
        p.name
        for p in ROOT.iterdir()
        if (p / "__init__.py").is_file() and p.name not in ("tests", "benchmarks")
    }
    assert set(config["root_packages"]) == on_disk == set(PACKAGES)
    (layers,) = [c["layers"] for c in config["contracts"] if c["type"] == "layers"]
    named = {name.strip() for layer in layers for name in layer.split("|")}
    assert named == on_disk, f"packages missing from the layers contract: {on_disk - named}"


def _function_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of another project package inside a function."""
    own = path.relative_to(ROOT).parts[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for inner in ast.walk(node):
            names: list[str] = []
            if isinstance(inner, ast.Import):
                names = [a.name for a in inner.names]
            elif isinstance(inner, ast.ImportFrom) and inner.level == 0 and inner.module:
                names = [inner.module]
            found += [
                (inner.lineno, n)
                for n in names
                if n.split(".")[0] in PACKAGES and n.split(".")[0] != own
            ]
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_no_package_imports_another_inside_a_function(package):
    hidden = {
        f"{path.relative_to(ROOT)}:{line}": module
        for path in _modules(package)
        for line, module in _function_imports(path)
    }
    assert hidden == {}


@pytest.mark.parametrize("package", PACKAGES)
def test_importing_a_package_loads_no_kafka_faust_or_web_client(package):
    code = (
        f"import sys, {package}; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", f"import {package} loads {out.stdout.strip()}"


@pytest.mark.parametrize("package", SIZED)
def test_modules_and_functions_stay_small(package):
    too_long = []
    for path in _modules(package):
        source = path.read_text()
        where = path.relative_to(ROOT)
        if source.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{where}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION_LINES and REASON not in (ast.get_docstring(node) or ""):
                too_long.append(f"{where}:{node.lineno} {node.name}() is {length} lines")
    assert too_long == []
