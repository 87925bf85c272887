"""The package's layers import only downward (README, Layout).

Every `import offmarl.X` and `from offmarl.X import ...`, including imports inside
functions, is read from the source; a module may import its own layer and the layers
below it, never one above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "offmarl"

# Lowest first. Modules directly under offmarl/ are named by their file name.
LAYERS: list[set[str]] = [
    {"errors", "types", "config", "utils"},
    {"envs", "networks"},
    {"algos"},
    {"acting"},
    {"data"},
    {"evaluation"},
    {"runners"},
    {"pipelines"},
    {"cli", "__main__", "__init__"},
]
LAYER_OF = {name: level for level, names in enumerate(LAYERS) for name in names}


def _component(module: str) -> str | None:
    """The top-level component of a dotted offmarl module name ('offmarl.data.vault' -> 'data')."""
    parts = module.split(".")
    if parts[0] != "offmarl":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> set[str]:
    components = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        components |= {c for c in map(_component, names) if c is not None}
    return components


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_component_has_a_layer() -> None:
    found = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in SOURCES}
    assert found <= set(LAYER_OF), f"components without a layer: {sorted(found - set(LAYER_OF))}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_downward(path: Path) -> None:
    own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    upward = sorted(c for c in _imports(path) if LAYER_OF[c] > LAYER_OF[own])
    assert not upward, f"{path.relative_to(PACKAGE)} (layer {own!r}) imports higher layers {upward}"


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from offmarl.runners.saved import SavedRun\n")
    assert _imports(source) == {"runners"}
