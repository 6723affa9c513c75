"""Training of neural posterior estimators: data from a simulator or stored ``(theta, x)`` pairs
(Zarr or HDF5), noise added on the fly, validation early stopping, ensembles, checkpoints.

Checkpoints are those of :mod:`appa.io.checkpoints` (safetensors, one group per member, and a
manifest with each member's prior, observation shape and estimator config); loading never
unpickles anything.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from appa.config import StrictModel
from appa.files import PRODUCT_ATTR, written_whole
from appa.io.checkpoints import (
    CheckpointError,
    load_checkpoint,
    load_module_state,
    save_checkpoint,
)
from appa.npe.estimators import Ensemble, NeuralPosterior, build_estimator

__all__ = [
    "NPE_KIND",
    "GaussianNoise",
    "NPETrainingConfig",
    "TrainResult",
    "load_estimator",
    "load_pairs",
    "save_estimator",
    "save_pairs",
    "train_ensemble",
    "train_estimator",
]

NoiseFn = Callable[[Tensor, torch.Generator], Tensor]
NPE_KIND = "npe-estimator"


class NPETrainingConfig(StrictModel):
    """Optimisation settings. ``max_epochs`` bounds the run; training stops when the validation
    loss has not improved for ``patience`` epochs and the best weights are restored."""

    batch_size: int = Field(128, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    max_epochs: int = Field(500, ge=1)
    patience: int = Field(20, ge=1)
    lr_schedule: Literal["constant", "plateau"] = Field(
        "constant",
        description="plateau: halve the rate once more than patience // 4 epochs pass without "
        "improving the best validation loss",
    )
    validation_fraction: float = Field(0.1, gt=0, lt=1)
    clip_norm: float = Field(5.0, gt=0)
    seed: int = 0
    threads: int = Field(1, ge=0, description="torch threads while training (0: leave as is)")
    progress: bool = False


@dataclass
class TrainResult:
    """Loss curves (per epoch) and the best validation loss."""

    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)
    best_epoch: int = 0
    best_validation: float = math.inf
    seconds: float = 0.0


class GaussianNoise:
    """Adds ``N(0, std^2)`` noise to each batch of observations on the fly (fresh noise every
    epoch); ``std`` is a scalar or a tensor broadcastable to one observation."""

    def __init__(self, std: float | Tensor) -> None:
        std = torch.as_tensor(std, dtype=torch.float32)
        if not torch.isfinite(std).all() or (std < 0).any():
            raise ValueError("noise std must be finite and non-negative")
        self.std = std

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        return x + self.std.to(x) * z


def _check_pairs(theta: Tensor, x: Tensor, dim: int, x_shape: tuple[int, ...]) -> None:
    if theta.ndim != 2 or theta.shape[1] != dim:
        raise ValueError(f"theta must be (N, {dim}), got {tuple(theta.shape)}")
    if tuple(x.shape[1:]) != tuple(x_shape) or x.shape[0] != theta.shape[0]:
        raise ValueError(f"x must be ({theta.shape[0]}, *{tuple(x_shape)}), got {tuple(x.shape)}")
    for name, t in (("theta", theta), ("x", x)):
        if not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).reshape(t.shape[0], -1).any(dim=1).sum())
            raise ValueError(f"{name} has NaN or infinite values in {bad} of {t.shape[0]} rows")


def train_estimator(
    estimator: NeuralPosterior,
    theta: Tensor,
    x: Tensor,
    cfg: NPETrainingConfig | None = None,
    noise: NoiseFn | None = None,
    simulator: Callable[[Tensor, torch.Generator], Tensor] | None = None,
) -> TrainResult:
    """Trains ``estimator`` on pairs ``theta (N, dim)``, ``x (N, *x_shape)`` in place.

    The validation split is drawn from ``cfg.seed``. With ``noise``, fresh noise is added to
    every training batch and a fixed draw to the validation set; the transforms are fitted on
    noisy observations. With ``simulator`` (``theta -> x``), ``x`` may be None and is simulated.
    """
    import time

    from rich.progress import Progress

    cfg = cfg or NPETrainingConfig()
    if x is None:
        if simulator is None:
            raise ValueError("give x or a simulator")
        x = simulator(theta, torch.Generator().manual_seed(cfg.seed + 7919))
    theta, x = torch.as_tensor(theta).float(), torch.as_tensor(x).float()
    _check_pairs(theta, x, estimator.dim, estimator.x_shape)
    inside = estimator.theta_transform.inside(theta)
    if not inside.all():
        raise ValueError(
            f"{int((~inside).sum())} training parameters lie outside the prior support"
        )
    N = theta.shape[0]
    n_val = max(1, round(cfg.validation_fraction * N))
    if N - n_val < 2:
        raise ValueError(f"too few pairs to train ({N})")
    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    try:
        g = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        perm = torch.randperm(N, generator=g)
        val, train = perm[:n_val], perm[n_val:]
        theta_v, x_v = theta[val], x[val]
        if noise is not None:
            x_v = noise(x_v, torch.Generator().manual_seed(cfg.seed + 1))
            estimator.fit_transforms(theta[train], noise(x[train], g))
        else:
            estimator.fit_transforms(theta[train], x[train])
        # validation losses of the diffusion model draw noise: fix it so epochs are comparable
        val_seed = cfg.seed + 2
        optimizer = torch.optim.AdamW(
            estimator.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
        )
        result = TrainResult()
        scheduler = (
            torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, factor=0.5, patience=max(1, cfg.patience // 4), threshold=0.0
            )
            if cfg.lr_schedule == "plateau"
            else None
        )
        best_state = copy.deepcopy(estimator.state_dict())
        stale = 0
        with Progress(disable=not cfg.progress, transient=True) as progress:
            bar = progress.add_task("training", total=cfg.max_epochs)
            for epoch in range(cfg.max_epochs):
                estimator.train()
                order = train[torch.randperm(train.numel(), generator=g)]
                total, count = 0.0, 0
                for batch in order.split(cfg.batch_size):
                    xb = x[batch] if noise is None else noise(x[batch], g)
                    loss = estimator.loss(theta[batch], xb).mean()
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"non-finite training loss at epoch {epoch}")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(estimator.parameters(), cfg.clip_norm)
                    optimizer.step()
                    total += float(loss.detach()) * batch.numel()
                    count += batch.numel()
                estimator.eval()
                with torch.no_grad(), torch.random.fork_rng(devices=[]):
                    torch.manual_seed(val_seed)
                    v = float(
                        torch.cat(
                            [
                                estimator.loss(theta_v[i : i + 4096], x_v[i : i + 4096])
                                for i in range(0, n_val, 4096)
                            ]
                        ).mean()
                    )
                result.train_loss.append(total / count)
                result.validation_loss.append(v)
                result.learning_rate.append(float(optimizer.param_groups[0]["lr"]))
                if scheduler is not None:
                    scheduler.step(v)
                if v < result.best_validation:
                    result.best_validation, result.best_epoch = v, epoch
                    best_state = copy.deepcopy(estimator.state_dict())
                    stale = 0
                else:
                    stale += 1
                progress.update(bar, advance=1, description=f"epoch {epoch} val {v:.3f}")
                if stale >= cfg.patience:
                    break
        estimator.load_state_dict(best_state)
        estimator.eval()
    finally:
        torch.set_num_threads(old_threads)
    result.seconds = time.perf_counter() - start
    return result


def train_ensemble(
    make: Callable[[], NeuralPosterior],
    theta: Tensor,
    x: Tensor,
    members: int,
    cfg: NPETrainingConfig | None = None,
    noise: NoiseFn | None = None,
) -> tuple[Ensemble, list[TrainResult]]:
    """Trains ``members`` estimators from ``make()`` with seeds ``cfg.seed + k`` (each its own
    initialisation and validation split) and returns their :class:`Ensemble`."""
    cfg = cfg or NPETrainingConfig()
    if members < 1:
        raise ValueError(f"members must be >= 1, got {members}")
    trained, results = [], []
    for k in range(members):
        torch.manual_seed(cfg.seed + k)  # reproducible initialisation
        est = make()
        results.append(
            train_estimator(est, theta, x, cfg.model_copy(update={"seed": cfg.seed + k}), noise)
        )
        trained.append(est)
    return Ensemble(trained), results


# ---------------------------------------------------------------------------------------------
# stored pairs


def _format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".zarr") or (path.is_dir() and (path / "zarr.json").exists()):
        return "zarr"
    if name.endswith((".h5", ".hdf5", ".hdf")):
        return "hdf5"
    raise ValueError(f"{path}: stored pairs must be a .zarr store or an .h5/.hdf5 file")


def save_pairs(path: str | Path, theta: Tensor, x: Tensor, attrs: dict | None = None) -> Path:
    """Writes ``theta (N, dim)`` and ``x (N, *x_shape)`` to a Zarr store or an HDF5 file,
    atomically (written beside the target, then renamed). Replaces a store of pairs, never
    anything else (:class:`~appa.files.OutputExistsError`)."""
    path = Path(path)
    kind = _format(path)
    theta_np = torch.as_tensor(theta).float().numpy()
    x_np = torch.as_tensor(x).float().numpy()
    if theta_np.ndim != 2 or x_np.shape[0] != theta_np.shape[0]:
        raise ValueError(f"need theta (N, dim) and x (N, ...), got {theta_np.shape}, {x_np.shape}")
    meta = json.dumps(attrs or {})
    with written_whole(path, "pairs", overwrite=True) as tmp:
        if kind == "zarr":
            import zarr

            root = zarr.open_group(str(tmp), mode="w")
            # zarr 3 names it create_array, zarr 2 create_dataset
            create = getattr(root, "create_array", None) or root.create_dataset
            for name, array in (("theta", theta_np), ("x", x_np)):
                create(name, data=array, chunks=(min(len(array), 65536), *array.shape[1:]))
            root.attrs.update({"appa_npe": meta, PRODUCT_ATTR: "pairs"})
        else:
            import h5py

            with h5py.File(tmp, "w") as f:
                f.create_dataset("theta", data=theta_np)
                f.create_dataset("x", data=x_np)
                f.attrs["appa_npe"] = meta
                f.attrs[PRODUCT_ATTR] = "pairs"
    return path


def load_pairs(path: str | Path) -> tuple[Tensor, Tensor, dict]:
    """Reads ``(theta, x, attrs)`` written by :func:`save_pairs` (or any store with arrays
    ``theta`` ``(N, dim)`` and ``x`` ``(N, ...)``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"stored pairs not found: {path}")
    kind = _format(path)
    if kind == "zarr":
        import zarr

        root = zarr.open_group(str(path), mode="r")
        missing = [k for k in ("theta", "x") if k not in root]
        if missing:
            raise ValueError(f"{path}: missing arrays {missing} (need 'theta' and 'x')")
        theta, x = np.asarray(root["theta"][...]), np.asarray(root["x"][...])
        attrs = json.loads(root.attrs.get("appa_npe", "{}"))
    else:
        import h5py

        with h5py.File(path, "r") as f:
            missing = [k for k in ("theta", "x") if k not in f]
            if missing:
                raise ValueError(f"{path}: missing datasets {missing} (need 'theta' and 'x')")
            theta, x = f["theta"][...], f["x"][...]
            attrs = json.loads(f.attrs.get("appa_npe", "{}"))
    if theta.ndim != 2 or x.shape[0] != theta.shape[0]:
        raise ValueError(
            f"{path}: theta must be (N, dim) and x (N, ...); got {theta.shape}, {x.shape}"
        )
    return torch.from_numpy(theta).float(), torch.from_numpy(x).float(), attrs


# ---------------------------------------------------------------------------------------------
# checkpoints


def save_estimator(
    path: str | Path, estimator: NeuralPosterior | Ensemble, extra: dict | None = None
) -> Path:
    """Saves the estimator as a checkpoint of :mod:`appa.io.checkpoints` under ``path``: one
    tensor group per member and, in the manifest, each member's rebuild spec (prior,
    observation shape, estimator config) and ``extra``. Written atomically; the previous
    checkpoint there is replaced."""
    members = list(estimator.members) if isinstance(estimator, Ensemble) else [estimator]
    tensors = {f"member{k}": m.state_dict() for k, m in enumerate(members)}
    metadata = {"kind": NPE_KIND, "members": [m.spec() for m in members], "extra": extra or {}}
    # each member's spec builds its network: an edit after the weights were written is refused
    save_checkpoint(str(path), 0, tensors, metadata=metadata, keep=1, network=["kind", "members"])
    return Path(path)


def load_estimator(path: str | Path) -> tuple[NeuralPosterior | Ensemble, dict]:
    """Loads what :func:`save_estimator` wrote: the estimator (an :class:`Ensemble` when it has
    several members, in eval mode) and the ``extra`` dictionary. Raises
    :class:`~appa.io.checkpoints.CheckpointError` for a missing, corrupt or foreign checkpoint."""
    ckpt = load_checkpoint(str(path))
    if ckpt.metadata.get("kind") != NPE_KIND:
        raise CheckpointError(
            f"{ckpt.path} is not an NPE estimator (kind {ckpt.metadata.get('kind')!r})"
        )
    members = []
    for k, spec in enumerate(ckpt.metadata["members"]):
        m = build_estimator(spec["prior"], tuple(spec["x_shape"]), spec["estimator"])
        group = f"member{k}"
        if group not in ckpt.tensors:
            raise CheckpointError(f"{ckpt.path}: no {group}.safetensors")
        load_module_state(m, ckpt.tensors[group], f"{ckpt.path}/{group}.safetensors")
        members.append(m.eval())
    estimator = members[0] if len(members) == 1 else Ensemble(members)
    return estimator, dict(ckpt.metadata.get("extra", {}))
