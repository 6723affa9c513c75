"""The training loop: pure torch (torch.distributed when initialised), no Ray.

One :class:`Trainer` runs any :class:`~appa.training.objectives.Objective` on one process or
on every rank of a process group (DDP, or FSDP2 ``fully_shard``). It owns

- AdamW with warm-up and decay (:func:`~appa.training.config.learning_rate`), gradient
  accumulation and clipping, bf16 autocast on GPU, an optional EMA of the weights;
- the data order (:class:`~appa.training.components.StreamSampler`) and per-step seeds
  (:func:`appa.seeds.derive_seed`), which make a resumed run continue exactly;
- checkpoints (:mod:`appa.io.checkpoints`, with the objective's card: :mod:`appa.io.cards`)
  every ``checkpoint_every`` steps and at the end, resumed from automatically;
- metrics: ``train.csv`` and ``val.csv`` in the log folder, a rich progress bar on rank 0, and
  callbacks (the Ray layer reports through one).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from appa.config import differing_keys
from appa.io.cards import CardError, CheckpointCard, LoopRecord, RunRecord, read_card
from appa.io.checkpoints import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    load_module_state,
    save_checkpoint,
)
from appa.seeds import derive_seed
from appa.training.components import EMA, CSVLog, StreamSampler
from appa.training.config import LoopConfig, OptimizerConfig, learning_rate
from appa.training.objectives import Objective

__all__ = ["Trainer", "TrainingError"]

Callback = Callable[[int, dict[str, float]], None]


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, incompatible checkpoint...)."""


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _to(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()
    }


class Trainer:
    """Trains ``objective`` on ``train_data``.

    Arguments:
        objective: What is trained (network, loss, validation, card).
        train_data: Map-style dataset of dict items (collated by the default collate).
        loop: Loop settings.
        optim: Optimiser settings.
        run_dir: Folder of the run's checkpoints (``<run_dir>/checkpoints``), local path or
            fsspec URL; None keeps no checkpoints.
        log_dir: Local folder of the CSV logs (default ``run_dir`` when it is local).
        val_data: Validation dataset, or None.
        run: How the run was set up (the job config and what its data says of itself),
            stored in every checkpoint's card.
        fingerprint: JSON-able facts a checkpoint must match to be resumed from (defaults to
            the objective's card: network configs, statistics, loss settings).
        device: Defaults to CUDA (this rank's device) when available, else CPU.
        strategy: ``"auto"`` (DDP when a process group of several ranks exists, else none),
            ``"none"``, ``"ddp"`` or ``"fsdp"`` (FSDP2 ``fully_shard`` of each top-level child
            and the root).
        resume: Continue from the newest checkpoint under ``run_dir`` when there is one.
        callbacks: ``f(step, metrics)`` called on every rank at each log and validation step.
    """

    def __init__(
        self,
        objective: Objective,
        train_data: Dataset,
        loop: LoopConfig,
        optim: OptimizerConfig,
        run_dir: str | None = None,
        log_dir: str | Path | None = None,
        val_data: Dataset | None = None,
        run: RunRecord | None = None,
        fingerprint: Mapping[str, Any] | None = None,
        device: torch.device | str | None = None,
        strategy: str = "auto",
        resume: bool = True,
        callbacks: Iterable[Callback] = (),
    ) -> None:
        self.objective, self.loop, self.optim = objective, loop, optim
        self.train_data, self.val_data = train_data, val_data
        self.rank, self.world = _rank_world()
        if device is None:
            if torch.cuda.is_available():
                device = torch.device("cuda", torch.cuda.current_device())
            else:
                device = torch.device("cpu")
        self.device = torch.device(device)
        self.run_dir = None if run_dir is None else str(run_dir).rstrip("/")
        if log_dir is None and self.run_dir is not None and "://" not in self.run_dir:
            log_dir = self.run_dir
        self.log_dir = None if log_dir is None else Path(log_dir)
        self.run = run if run is not None else RunRecord()
        if fingerprint is None:
            fingerprint = objective.card().model_dump(mode="json")
        self.fingerprint = dict(fingerprint)
        self.callbacks = list(callbacks)
        if loop.precision == "bfloat16" or (
            loop.precision == "auto" and self.device.type == "cuda"
        ):
            self.autocast_dtype: torch.dtype | None = torch.bfloat16
        else:
            self.autocast_dtype = None

        # the network's weights must be identical on every rank (seed before building it);
        # DDP broadcasts rank 0's anyway, FSDP shards each rank's own copy
        objective.module.to(self.device)
        if strategy == "auto":
            strategy = "ddp" if self.world > 1 else "none"
        if strategy not in ("none", "ddp", "fsdp"):
            raise ValueError(f"unknown strategy {strategy!r}; choose auto, none, ddp or fsdp")
        if strategy != "none" and not (dist.is_available() and dist.is_initialized()):
            raise ValueError(f"strategy {strategy!r} needs an initialised process group")
        self.strategy = strategy
        self.ema = EMA(objective.network, loop.ema_decay) if loop.ema_decay is not None else None
        if self.ema is not None and strategy == "fsdp":
            raise ValueError("EMA of FSDP-sharded weights is not supported yet; use ddp")
        self.model = self._wrap(objective.module)
        # the compiled callable shares the wrapped module's parameters; state dicts, EMA and
        # validation keep using the plain module
        self._step_model = torch.compile(self.model) if loop.compile else self.model
        self.optimizer = torch.optim.AdamW(
            [p for p in objective.module.parameters() if p.requires_grad],
            lr=optim.lr,
            betas=optim.betas,
            eps=optim.eps,
            weight_decay=optim.weight_decay,
        )
        self.step = 0
        self.samples_seen = 0
        self.resumed_from: str | None = None
        self.last_metrics: dict[str, float] = {}
        if resume and self.run_dir is not None:
            latest = latest_checkpoint(self.checkpoint_dir)
            if latest is not None:
                self._restore(latest)
        self._train_log: CSVLog | None = None
        self._val_log: CSVLog | None = None
        if self.rank == 0 and self.log_dir is not None:
            resume_step = self.step if self.resumed_from else None
            self._train_log = CSVLog(self.log_dir / "train.csv", resume_step)
            self._val_log = CSVLog(self.log_dir / "val.csv", resume_step)

    # -- set-up -----------------------------------------------------------------------------

    def _wrap(self, module: nn.Module) -> nn.Module:
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            return DistributedDataParallel(module, device_ids=ids)
        if self.strategy == "fsdp":
            from torch.distributed.fsdp import fully_shard

            from appa.nn import DiTBlock, ResBlock

            # one FSDP unit per residual or transformer block (their parameters are gathered
            # one block at a time), the rest with the root
            for sub in list(module.modules()):
                if isinstance(sub, DiTBlock | ResBlock):
                    fully_shard(sub)
            fully_shard(module)
            return module
        return module

    @property
    def checkpoint_dir(self) -> str:
        if self.run_dir is None:
            raise ValueError("this trainer has no run_dir")
        return f"{self.run_dir}/checkpoints"

    def _loader(self) -> DataLoader:
        per_step = self.loop.batch_size * self.world
        sampler = StreamSampler(
            len(self.train_data),
            self.loop.batch_size,
            self.loop.seed,
            start=self.samples_seen - self.samples_seen % per_step,
            rank=self.rank,
            world=self.world,
        )
        return DataLoader(
            self.train_data,
            batch_size=self.loop.batch_size,
            sampler=sampler,
            num_workers=self.loop.loader_workers,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            persistent_workers=self.loop.loader_workers > 0,
        )

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _sync(self, last: bool):
        """Gradient all-reduce only on the last micro-batch of a step."""
        if self.strategy == "ddp" and not last:
            return self.model.no_sync()
        if self.strategy == "fsdp":
            self.model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    # -- checkpoints ------------------------------------------------------------------------

    def _full_state(self, state: Any) -> Any:
        """Gathers sharded tensors (DTensor) into whole CPU tensors; a collective under FSDP."""
        if isinstance(state, Tensor):
            if hasattr(state, "full_tensor"):
                state = state.full_tensor()
            return state.detach().cpu()
        if isinstance(state, dict):
            return {k: self._full_state(v) for k, v in state.items()}
        if isinstance(state, list | tuple):
            return type(state)(self._full_state(v) for v in state)
        return state

    def save(self) -> str | None:
        """Writes a checkpoint of the current step (rank 0 writes; every rank must call)."""
        if self.run_dir is None:
            return None
        model_state = self._full_state(self.objective.network.state_dict())
        optim_state = self._full_state(self.optimizer.state_dict())
        path = None
        if self.rank == 0:
            tensors = {"model": model_state}
            if self.ema is not None:
                tensors["ema"] = self.ema.module.state_dict()
            tensors.update(self.objective.tensor_groups())
            rng: dict[str, Any] = {"torch": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state_all()
            path = save_checkpoint(
                self.checkpoint_dir,
                self.step,
                tensors,
                metadata=CheckpointCard(
                    card=self.objective.card(),
                    fingerprint=self.fingerprint,
                    run=self.run.model_copy(
                        update={
                            "metrics": self.last_metrics,
                            "loop": LoopRecord(
                                step=self.step,
                                samples_seen=self.samples_seen,
                                seed=self.loop.seed,
                                batch_size=self.loop.batch_size,
                                accumulation=self.optim.accumulation,
                                world_size=self.world,
                                dataset_size=len(self.train_data),
                                ema_updates=None if self.ema is None else self.ema.updates,
                            ),
                        }
                    ),
                ).dump(),
                states={"optimizer": optim_state, "rng": rng},
                keep=self.loop.keep_checkpoints,
            )
        if self.world > 1:
            dist.barrier()
        return path

    def _restore(self, path: str) -> None:
        ckpt = load_checkpoint(path)
        try:
            card = read_card(ckpt.metadata, path, kind=self.objective.kind)
        except CardError as error:
            raise CheckpointError(str(error)) from None
        if card.exported_from is not None or card.run.loop is None:
            raise CheckpointError(f"{path}: an exported copy holds no training state to resume")
        differ = differing_keys(json_round(card.fingerprint), json_round(self.fingerprint))
        if differ:
            raise CheckpointError(
                f"{path}: written for a different set-up; it differs in {differ[:8]} "
                "(start a new run folder, or restore the settings)"
            )
        saved = card.run.loop
        for key, now in (
            ("seed", self.loop.seed),
            ("batch_size", self.loop.batch_size),
            ("world_size", self.world),
            ("dataset_size", len(self.train_data)),
        ):
            was = getattr(saved, key)
            if was != now:
                raise CheckpointError(
                    f"{path}: {key} was {was}, now {now}; the data order would change"
                )
        source = f"{path}/model.safetensors"
        if self.strategy == "fsdp":
            # whole tensors in the file, shards in the model: each rank keeps its shard
            load_module_state(_Shapes(self.objective.network), ckpt.tensors["model"], source)
            with torch.no_grad():
                for name, t in self.objective.network.state_dict().items():
                    t.copy_(_shard_like(ckpt.tensors["model"][name], t))
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            state = ckpt.states["optimizer"]
            for i, entries in state["state"].items():
                state["state"][i] = {
                    k: _shard_like(v, params[i]) if v.ndim else v for k, v in entries.items()
                }
            self.optimizer.load_state_dict(state)
        else:
            load_module_state(self.objective.network, ckpt.tensors["model"], source)
            try:
                self.optimizer.load_state_dict(ckpt.states["optimizer"])
            except (ValueError, KeyError) as error:
                raise CheckpointError(f"{path}/state-optimizer.safetensors: {error}") from None
        if self.ema is not None:
            if "ema" not in ckpt.tensors:
                raise CheckpointError(f"{path}: no ema.safetensors but this run keeps an EMA")
            load_module_state(self.ema.module, ckpt.tensors["ema"], f"{path}/ema.safetensors")
            self.ema.updates = int(saved.ema_updates or 0)
        torch.set_rng_state(ckpt.states["rng"]["torch"])
        if torch.cuda.is_available() and "cuda" in ckpt.states["rng"]:
            torch.cuda.set_rng_state_all(ckpt.states["rng"]["cuda"])
        self.step = ckpt.step
        self.samples_seen = saved.samples_seen
        self.last_metrics = dict(card.run.metrics)
        self.resumed_from = ckpt.path

    # -- the loop ---------------------------------------------------------------------------

    def _reduce_mean(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        if self.world > 1:
            dist.all_reduce(t)
            t /= self.world
        return t.tolist()

    def _comm_device(self) -> torch.device:
        if self.world > 1 and dist.get_backend() == "nccl":
            return self.device
        return torch.device("cpu")

    def _emit(self, step: int, metrics: dict[str, float]) -> None:
        for callback in self.callbacks:
            callback(step, metrics)

    def train_step(self, batches: Iterable[dict[str, Any]]) -> tuple[float, float]:
        """One optimisation step over ``accumulation`` micro-batches; returns ``(loss,
        grad_norm)`` of this rank."""
        lr = learning_rate(self.optim, self.step, self.loop.steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        self.model.train()
        acc = self.optim.accumulation
        total = torch.zeros((), device=self.device)
        for micro, batch in enumerate(batches):
            # model-internal noise (latent noise of the decoder) and the objective's draws come from
            # seeds of (run, rank, step, micro-batch): a resumed run draws the same numbers
            seed = derive_seed(self.loop.seed, self.rank, self.step, micro)
            torch.manual_seed(seed)
            generator = torch.Generator(self.device).manual_seed(seed ^ 0x5EED)
            with self._sync(micro == acc - 1), self._autocast():
                batch = _to(batch, self.device)
                loss = self.objective.loss(self._step_model, batch, generator).mean() / acc
            loss.backward()
            total += loss.detach()
        params = [p for p in self.objective.module.parameters() if p.requires_grad]
        clip = self.optim.grad_clip if self.optim.grad_clip is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        loss_value = float(total)
        if not math.isfinite(loss_value) or not math.isfinite(float(grad_norm)):
            raise TrainingError(
                f"non-finite loss ({loss_value}) or gradient norm ({float(grad_norm)}) at step "
                f"{self.step} on rank {self.rank}; lower the learning rate or check the data"
            )
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.objective.network)
        self.step += 1
        self.samples_seen += self.loop.batch_size * acc * self.world
        return loss_value, float(grad_norm)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Validation metrics over ``val_batches`` batches per rank (EMA weights if kept)."""
        if self.val_data is None:
            return {}
        if self.ema is not None:
            # the EMA copy of the network, in the module the objective calls
            module = self._module_with(self.ema.module)
        else:
            module = self.objective.module
        was_training = module.training
        module.eval()
        b = self.loop.batch_size
        n = len(self.val_data)
        indices = list(range(self.rank, n, self.world))[: self.loop.val_batches * b]
        loader = DataLoader(
            torch.utils.data.Subset(self.val_data, indices), batch_size=b, drop_last=False
        )
        sums: dict[str, list[float]] = {}
        for i, batch in enumerate(loader):
            generator = torch.Generator(self.device).manual_seed(
                derive_seed(self.loop.seed, 0x7A1, self.rank, i)
            )
            batch = _to(batch, self.device)
            with self._autocast():
                parts = self.objective.validate_batch(module, batch, generator)
                if i == 0 and hasattr(self.objective, "validate_samples"):
                    parts = {**parts, **self.objective.validate_samples(module, batch, generator)}
            for k, (s, c) in parts.items():
                acc = sums.setdefault(k, [0.0, 0.0])
                acc[0] += float(s)
                acc[1] += float(c)
        module.train(was_training)
        names = sorted(sums)
        flat = [v for k in names for v in sums[k]]
        if self.world > 1:
            t = torch.tensor(flat, dtype=torch.float64, device=self._comm_device())
            dist.all_reduce(t)
            flat = t.tolist()
        means = {k: flat[2 * i] / max(flat[2 * i + 1], 1.0) for i, k in enumerate(names)}
        return self.objective.finalize(means)

    def _module_with(self, network: nn.Module) -> nn.Module:
        if self.objective.module is self.objective.network:
            return network
        # the module wraps the network as an attribute (EDMDenoiser.backbone): a shallow copy
        # of the wrapper pointing at the other network
        import copy

        wrapper = copy.copy(self.objective.module)
        wrapper._modules = dict(wrapper._modules)
        for name, child in self.objective.module.named_children():
            if child is self.objective.network:
                wrapper._modules[name] = network
                return wrapper
        raise TrainingError("the objective's network is not a direct child of its module")

    def fit(self) -> dict[str, float]:
        """Trains until ``loop.steps``; returns the last logged metrics (and validation)."""
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        loop = self.loop
        show = loop.progress and self.rank == 0
        if self.step >= loop.steps:
            return dict(self.last_metrics)
        data = iter(self._loader())
        window: list[float] = []
        t0 = time.perf_counter()
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            disable=not show,
            transient=False,
        )
        with progress:
            bar = progress.add_task(
                f"{self.objective.kind}", total=loop.steps, completed=self.step, info=""
            )
            while self.step < loop.steps:
                batches = [next(data) for _ in range(self.optim.accumulation)]
                loss, grad_norm = self.train_step(batches)
                window.append(loss)
                progress.update(bar, completed=self.step, info=f"loss {loss:.4g}")
                if self.step % loop.log_every == 0 or self.step == loop.steps:
                    mean_loss, mean_norm = self._reduce_mean([sum(window) / len(window), grad_norm])
                    window = []
                    self.last_metrics = {
                        "step": self.step,
                        "loss": mean_loss,
                        "grad_norm": mean_norm,
                        "lr": self.optimizer.param_groups[0]["lr"],
                        "samples": self.samples_seen,
                        "seconds": round(time.perf_counter() - t0, 3),
                    }
                    if self._train_log is not None:
                        self._train_log.write(self.last_metrics)
                    self._emit(self.step, dict(self.last_metrics))
                if loop.val_every and (self.step % loop.val_every == 0 or self.step == loop.steps):
                    val = {f"val_{k}": v for k, v in self.validate().items()}
                    if val:
                        if self._val_log is not None:
                            self._val_log.write({"step": self.step, **val})
                        if show:
                            shown = val.get("val_loss", float("nan"))
                            progress.console.print(f"step {self.step}: val_loss {shown:.4g}")
                        self.last_metrics = {**self.last_metrics, **val}
                        self._emit(self.step, {"step": self.step, **val})
                if loop.checkpoint_every and (
                    self.step % loop.checkpoint_every == 0 or self.step == loop.steps
                ):
                    self.save()
        return dict(self.last_metrics)


def _shard_like(full: Tensor, like: Tensor) -> Tensor:
    """``full`` distributed as ``like`` is (a DTensor's mesh and placements), else moved to its
    device."""
    if hasattr(like, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(
            full.to(like.device, like.dtype), like.device_mesh, like.placements
        )
    return full.to(like.device)


class _Shapes(nn.Module):
    """A stand-in whose ``state_dict`` has a module's global (unsharded) shapes, so the strict
    key and shape check runs before sharded loading."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self._shapes = {
            k: torch.empty(tuple(v.shape), device="meta") for k, v in module.state_dict().items()
        }

    def state_dict(self, *args, **kwargs):  # type: ignore[override]
        return dict(self._shapes)

    def load_state_dict(self, state, strict=True, assign=False):  # type: ignore[override]
        return None


def json_round(value: Any) -> Any:
    """A JSON round trip (tuples to lists) so documents compare as stored."""
    import json

    return json.loads(json.dumps(value))
