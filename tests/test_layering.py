"""Dependencies flow one way (docs/architecture.md): a package imports only what lies below it."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "appa"
# Small modules every layer may use: strict configs and dates, whole-file writes, seeds.
BASE = ["config", "dates", "files", "seeds"]
# From the bottom up; a package imports the packages of the layers below its own and, within
# its layer, those listed before it (docs/architecture.md draws the same table).
LAYERS = [
    ["diffusion"],
    ["nn"],
    ["data", "observations"],
    ["io", "metrics"],
    ["assimilation", "baselines", "training", "npe", "lensing"],
    ["distributed"],
    ["jobs", "cli"],
]
# The tasks of one layer do not lean on each other (a baseline knows no network).
SIBLINGS_APART = {"assimilation", "baselines", "training", "npe", "lensing"}


def _allowed(package: str) -> set[str]:
    allowed = {"appa", *(f"appa.{b}" for b in BASE)}
    for layer in LAYERS:
        if package in layer:
            if package not in SIBLINGS_APART:
                allowed |= {f"appa.{p}" for p in layer[: layer.index(package)]}
            return allowed
        allowed |= {f"appa.{p}" for p in layer}
    raise KeyError(package)


PACKAGES = [p for layer in LAYERS for p in layer]


def test_every_package_has_a_layer():
    found = {p.stem for p in ROOT.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    found -= {"__init__", *BASE}
    assert sorted(found) == sorted(PACKAGES)


def _appa_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("appa"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("appa"))
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_lower_layers(package):
    own = f"appa.{package}"
    allowed = _allowed(package)
    where = ROOT / package
    paths = sorted(where.rglob("*.py")) if where.is_dir() else [ROOT / f"{package}.py"]
    for path in paths:
        for module in _appa_imports(path):
            top = ".".join(module.split(".")[:2])
            assert top == own or top in allowed, (
                f"{path.relative_to(ROOT.parent)} imports {module}: not allowed in {own}"
            )


def test_base_modules_import_no_other_package():
    for name in BASE:
        for module in _appa_imports(ROOT / f"{name}.py"):
            assert module == "appa", f"appa/{name}.py imports {module}"


def test_assimilation_does_not_import_ray():
    for path in (ROOT / "assimilation").rglob("*.py"):
        text = path.read_text()
        assert "import ray" not in text and "from ray" not in text, f"{path.name} imports ray"


def test_the_core_does_not_import_heavy_stacks():
    for path in (ROOT / "diffusion").rglob("*.py"):
        text = path.read_text()
        for name in ("ray", "xarray", "zarr", "fsspec"):
            assert f"import {name}" not in text, f"{path.name} imports {name}"


def test_baselines_know_no_network():
    for path in (ROOT / "baselines").rglob("*.py"):
        for module in _appa_imports(path):
            assert not module.startswith(("appa.nn", "appa.diffusion")), f"{path.name}: {module}"
