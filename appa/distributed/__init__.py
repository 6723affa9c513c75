"""Ray orchestration (Train, Data, actors). No math of its own; Ray is imported lazily."""

from appa.distributed.train import fit_on_ray, init_ray, run_training

__all__ = ["fit_on_ray", "init_ray", "run_training"]
