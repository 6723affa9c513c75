"""Dependencies flow one way (docs/architecture.md): a package imports only what lies below it."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "appa"
BASE = {"appa.config", "appa.dates", "appa.files"}
ALLOWED = {
    "diffusion": set(),
    "nn": {"appa.diffusion"} | BASE,
    "data": BASE,
    "observations": {"appa.diffusion", "appa.data"} | BASE,
    "metrics": {"appa.data"} | BASE,
    "assimilation": {
        "appa",  # the version, for provenance
        "appa.diffusion",
        "appa.nn",
        "appa.data",
        "appa.observations",
        "appa.io.checkpoints",
        "appa.metrics.climate",  # pure numpy statistics, for the prior's quality bars
    }
    | BASE,
    # Strong lensing: a task on the same prior interface (its job configs sit in jobs.py).
    "lensing": {"appa", "appa.diffusion", "appa.nn", "appa.io.checkpoints"} | BASE,
    # Classical baselines sit with the tasks: data and observations below them, no networks.
    "baselines": {"appa", "appa.data", "appa.observations"} | BASE,
}


def _appa_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("appa"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("appa"))
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_lower_layers(package):
    own = f"appa.{package}"
    for path in sorted((ROOT / package).rglob("*.py")):
        for module in _appa_imports(path):
            top = ".".join(module.split(".")[:2])
            allowed = top == own or top in ALLOWED[package]
            # a package may be allowed one module of another (appa.io.checkpoints, not archives)
            allowed = allowed or any(
                module.startswith(f"{a}.") or module == a for a in ALLOWED[package]
            )
            assert allowed, (
                f"{path.relative_to(ROOT.parent)} imports {module}: not allowed in {own}"
            )


def test_assimilation_does_not_import_ray():
    for path in (ROOT / "assimilation").rglob("*.py"):
        text = path.read_text()
        assert "import ray" not in text and "from ray" not in text, f"{path.name} imports ray"


def test_the_core_does_not_import_heavy_stacks():
    for path in (ROOT / "diffusion").rglob("*.py"):
        text = path.read_text()
        for name in ("ray", "xarray", "zarr", "fsspec"):
            assert f"import {name}" not in text, f"{path.name} imports {name}"
