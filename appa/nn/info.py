"""What a preset costs, measured on the meta device (no memory, no compute, instant): parameter
counts, shapes, tokens, FLOPs and the memory of a training step.

The training-step memory estimate is ``16 bytes x parameters`` (float32 weights, gradients and
the two Adam moments) plus the activations autograd saves for the backward pass of one bf16
forward at the given batch size, counted tensor by tensor with saved-tensor hooks. With
activation checkpointing, only the inputs of the checkpointed blocks are kept, plus one block's
activations while it is recomputed. Allocator fragmentation, temporary buffers and the
communication buffers of distributed training come on top.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from appa.nn.autoencoder import ResBlock, StateAutoencoder
from appa.nn.presets import NetworkPreset
from appa.nn.transformer import LatentDiT

__all__ = ["NetworkCost", "PresetInfo", "format_info", "model_info", "training_step_cost"]

GiB = 2**30


@dataclass
class NetworkCost:
    """Cost of one network's training step (forward + backward) at a batch size."""

    parameters: int
    flops: int  # forward + backward
    activation_bytes: int  # saved for backward, without checkpointing
    checkpointed_activation_bytes: int  # with checkpointing of every block
    checkpointing: bool  # whether the preset enables checkpointing
    batch_size: int

    @property
    def optimizer_bytes(self) -> int:
        """Float32 weights, gradients and two Adam moments."""
        return 16 * self.parameters

    @property
    def step_bytes(self) -> int:
        """Estimated memory of a training step with the preset's checkpointing setting."""
        act = self.checkpointed_activation_bytes if self.checkpointing else self.activation_bytes
        return self.optimizer_bytes + act


@dataclass
class PresetInfo:
    """Shapes and costs of a preset."""

    name: str
    description: str
    state_shape: tuple[int, int, int]
    latent_shape: tuple[int, int, int]
    compression: float
    window: int
    tokens: int
    autoencoder: NetworkCost
    denoiser: NetworkCost

    def as_dict(self) -> dict:
        """JSON-ready dictionary (costs include their derived byte counts)."""
        out = asdict(self)
        for key in ("autoencoder", "denoiser"):
            cost: NetworkCost = getattr(self, key)
            out[key]["optimizer_bytes"] = cost.optimizer_bytes
            out[key]["step_bytes"] = cost.step_bytes
        return out


def training_step_cost(
    model: nn.Module,
    step: Callable[[nn.Module], Tensor],
    blocks: list[nn.Module],
    checkpointing: bool,
    batch_size: int,
) -> NetworkCost:
    """Counts FLOPs and saved activations of ``step(model).backward()`` on the meta device.

    Arguments:
        model: A network on the meta device, in the dtype of the activations (bf16).
        step: Runs a forward pass and returns a scalar loss.
        blocks: The modules that activation checkpointing would wrap.
    """
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    # keyed by storage, so views and broadcasts of one buffer count once, at its real size
    saved: dict[int, tuple[Tensor, int, int]] = {}
    current = [-1]  # index of the block running, -1 outside blocks

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        key = storage._cdata
        if key not in params and key not in saved:
            saved[key] = (t, storage.nbytes(), current[0])
        return t

    block_inputs = [0]  # bytes of the inputs of every block: what checkpointing keeps

    def enter(i: int, args: tuple) -> None:
        current[0] = i
        block_inputs[0] += args[0].numel() * args[0].element_size()

    def leave(*_) -> None:
        current[0] = -1

    handles = []
    for i, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(lambda m, a, i=i: enter(i, a)))
        handles.append(block.register_forward_hook(leave))
    try:
        with FlopCounterMode(display=False) as counter:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = step(model)
            loss.backward()
    finally:
        for h in handles:
            h.remove()
    total = sum(size for _, size, _ in saved.values())
    per_block = [0] * len(blocks)
    outside = 0
    for _, size, owner in saved.values():
        if owner < 0:
            outside += size
        else:
            per_block[owner] += size
    checkpointed = outside + block_inputs[0] + (max(per_block) if per_block else 0)
    return NetworkCost(
        parameters=sum(p.numel() for p in model.parameters()),
        flops=int(counter.get_total_flops()),
        activation_bytes=total,
        checkpointed_activation_bytes=checkpointed,
        checkpointing=checkpointing,
        batch_size=batch_size,
    )


def model_info(preset: NetworkPreset, name: str = "", batch_size: int = 1) -> PresetInfo:
    """Shapes and training-step costs of both networks of ``preset`` (meta device, bf16)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ae_cfg = preset.autoencoder.model_copy(update={"checkpointing": False})
    dn_cfg = preset.denoiser.model_copy(update={"checkpointing": False})
    dtype = torch.bfloat16
    with torch.device("meta"):
        ae = StateAutoencoder(ae_cfg).to(dtype).train()
        dit = LatentDiT(dn_cfg).to(dtype).train()

    C, (H, W) = ae_cfg.in_channels, ae_cfg.grid
    c, h, w = ae_cfg.latent_shape
    T = dn_cfg.window

    def ae_step(model: nn.Module) -> Tensor:
        x = torch.empty(batch_size, C, H, W, device="meta", dtype=dtype)
        _, y = model(x)
        return (y - x).square().mean()

    def dit_step(model: nn.Module) -> Tensor:
        z = torch.empty(batch_size, T, c, h, w, device="meta", dtype=dtype)
        noise = torch.empty(batch_size, device="meta", dtype=dtype)
        date = torch.empty(batch_size, T, dn_cfg.date_features, device="meta", dtype=dtype)
        ctx = None
        if dn_cfg.context_channels:
            ctx = torch.empty(batch_size, dn_cfg.context_channels, h, w, device="meta", dtype=dtype)
        kwargs = {"date": date} if dn_cfg.date_features else {}
        return (model(z, noise, context=ctx, **kwargs) - z).square().mean()

    ae_blocks = [m for m in ae.modules() if isinstance(m, ResBlock)]
    ae_cost = training_step_cost(
        ae, ae_step, ae_blocks, preset.autoencoder.checkpointing, batch_size
    )
    dit_cost = training_step_cost(
        dit, dit_step, list(dit.blocks), preset.denoiser.checkpointing, batch_size
    )
    return PresetInfo(
        name=name,
        description=preset.description,
        state_shape=(C, H, W),
        latent_shape=(c, h, w),
        compression=ae_cfg.compression,
        window=T,
        tokens=dn_cfg.tokens((h, w)),
        autoencoder=ae_cost,
        denoiser=dit_cost,
    )


def _count(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(int(n))


def _flops(n: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n / 1e6:.2f} MFLOP"


def _bytes(n: float) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB / 10 else f"{n / 2**20:.1f} MiB"


def format_info(info: PresetInfo) -> str:
    """A short human-readable report."""
    C, H, W = info.state_shape
    c, h, w = info.latent_shape
    lines = [
        f"preset {info.name}: {info.description}",
        f"  state          {C} x {H} x {W}",
        f"  latent         {c} x {h} x {w}  (compression {info.compression:.1f}x)",
        f"  window         {info.window} states, {info.tokens} tokens",
    ]
    for label, cost in (("autoencoder", info.autoencoder), ("denoiser", info.denoiser)):
        ck = "on" if cost.checkpointing else "off"
        lines += [
            f"  {label:<14} {cost.parameters:,} parameters ({_count(cost.parameters)})",
            f"    train step   batch {cost.batch_size}: {_flops(cost.flops)} (fwd+bwd), "
            f"~{_bytes(cost.step_bytes)} with checkpointing {ck}",
            f"                 weights+grads+Adam {_bytes(cost.optimizer_bytes)}, activations "
            f"{_bytes(cost.activation_bytes)} ({_bytes(cost.checkpointed_activation_bytes)} "
            "checkpointed)",
        ]
    return "\n".join(lines)
