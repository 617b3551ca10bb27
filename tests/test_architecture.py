"""The tree's arrows: library packages know nothing of Flower or the modes; no cycles."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "splitkd_flwr"

# Which packages each package may import (besides itself). Everything may import core.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "data": {"core"},
    "split": {"core"},
    "transport": {"core"},
    "simulation": {"core"},
    "hardware": {"core"},
    "default_models": {"core", "data", "split"},
    "calibration": {"core", "split", "simulation", "hardware"},
    "flower": {"core", "data", "split", "default_models", "hardware", "simulation"},
    "split_kd": {
        "core",
        "data",
        "split",
        "transport",
        "simulation",
        "hardware",
        "default_models",
        "flower",
        "privacy",
    },
    "koala": {"core", "data", "split", "default_models", "flower"},
    # The audit's attacks: torch on captured tensors, no Flower (split_kd fills a capture).
    "privacy": {"core", "split"},
}
LIBRARIES = ("core", "data", "split", "transport", "simulation", "hardware")


def _package_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    """Every module name ``path`` imports (at any depth, lazily imported ones included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        own = _package_of(path)
        targets = graph.setdefault(own, set())
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "splitkd_flwr" and len(parts) > 1:
                target = parts[1]
                if target != own and (PACKAGE / target).is_dir():
                    targets.add(target)
    return graph


def test_every_package_imports_only_what_its_layer_allows() -> None:
    # Prepare
    graph = _package_graph()
    # Execute
    forbidden = {
        (package, target)
        for package, targets in graph.items()
        if package in ALLOWED
        for target in targets - ALLOWED[package]
    }
    # Assert
    assert not forbidden, f"forbidden arrows (package -> package): {sorted(forbidden)}"
    assert set(ALLOWED) <= set(graph), "a package of the table no longer exists"


def test_no_import_cycle_between_packages() -> None:
    graph = _package_graph()
    visiting: list[str] = []
    done: set[str] = set()

    def visit(package: str) -> None:
        if package in visiting:
            cycle = visiting[visiting.index(package) :] + [package]
            pytest.fail(f"import cycle: {' -> '.join(cycle)}")
        if package in done:
            return
        visiting.append(package)
        for target in sorted(graph.get(package, ())):
            visit(target)
        visiting.pop()
        done.add(package)

    for package in sorted(graph):
        visit(package)


@pytest.mark.parametrize("library", LIBRARIES)
def test_library_packages_never_name_flower(library: str) -> None:
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in (PACKAGE / library).rglob("*.py")
        if any(name.split(".")[0] == "flwr" for name in _imports(path))
    ]
    assert not offenders


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("splitkd_flwr.simulation.case_study", ("torch", "flwr")),
        ("splitkd_flwr.simulation.planning", ("torch", "flwr")),
        ("splitkd_flwr.split", ("flwr",)),
        ("splitkd_flwr.transport", ("flwr",)),
        ("splitkd_flwr.hardware.monitor", ("flwr",)),
        ("splitkd_flwr.data.loading", ("flwr",)),
        ("splitkd_flwr.core.records", ("torch", "flwr")),
    ],
)
def test_importing_a_library_loads_neither_flower_nor_more_than_it_says(
    module: str, absent: tuple[str, ...]
) -> None:
    # A fresh interpreter: this test process has long imported everything.
    check = (
        f"import {module}, sys; "
        f"loaded = [m for m in {absent!r} if m in sys.modules]; "
        "assert not loaded, loaded"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
