"""Ray orchestration (Train, Data, actors). No math of its own; Ray is imported lazily, and so
are the submodules (a pool actor imports only :mod:`appa.distributed.pool`, not training)."""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "appa.distributed.runner": [
        "ClusterUnreachableError",
        "RayConfig",
        "check_cluster",
        "init_ray",
    ],
    "appa.distributed.train": ["fit_on_ray", "run_training"],
    "appa.distributed.pool": ["PoolReport", "UnitFailedError", "run_units"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'appa.distributed' has no attribute {name!r}")
    return getattr(import_module(_WHERE[name]), name)


def __dir__() -> list[str]:
    return __all__
