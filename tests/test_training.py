"""The training loop: schedule, data order, EMA, exact resume, validation, logs, errors."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from training_utils import (
    Windows,
    smooth_fields,
    tiny_autoencoder_objective,
    tiny_diffusion_objective,
)

from appa.io import CheckpointError, list_checkpoints, load_checkpoint
from appa.io.cards import read_card
from appa.training import (
    EMA,
    AutoencoderLossConfig,
    DiffusionObjectiveConfig,
    LoopConfig,
    OptimizerConfig,
    StreamSampler,
    Trainer,
    TrainingError,
    learning_rate,
)


def test_learning_rate_warmup_and_cosine():
    cfg = OptimizerConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1)
    assert [learning_rate(cfg, s, 14) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert learning_rate(cfg, 4, 14) == pytest.approx(1.0)
    assert learning_rate(cfg, 9, 14) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway: cos = 0
    assert learning_rate(cfg, 14, 14) == pytest.approx(0.1)
    linear = cfg.model_copy(update={"decay": "linear"})
    assert learning_rate(linear, 9, 14) == pytest.approx(0.55)


def test_stream_sampler_epochs_ranks_and_resume():
    size, b, world = 10, 2, 2

    def take(rank: int, start: int, n: int) -> list[int]:
        it = iter(StreamSampler(size, b, seed=3, start=start, rank=rank, world=world))
        return [next(it) for _ in range(n)]

    r0, r1 = take(0, 0, 20), take(1, 0, 20)
    stream = []
    for k in range(10):  # interleave the ranks' slices back into the global stream
        stream += r0[2 * k : 2 * k + 2] + r1[2 * k : 2 * k + 2]
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    assert stream[:10] != stream[10:20]  # a new permutation each epoch
    # resuming at stream position 8 (two global batches done) continues the same stream
    assert take(0, 8, 6) == r0[4:10] and take(1, 8, 6) == r1[4:10]
    with pytest.raises(ValueError, match="multiple"):
        StreamSampler(size, b, 0, start=3, world=world)


def test_ema_exact_updates():
    p = torch.nn.Linear(1, 1, bias=False)
    p.weight.data.fill_(0.0)
    ema = EMA(p, decay=0.9)
    expected = 0.0
    for n, value in enumerate([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0]):
        p.weight.data.fill_(value)
        ema.update(p)
        d = min(0.9, (1 + n) / (10 + n))
        expected = expected + (1 - d) * (value - expected)
    assert ema.module.weight.item() == pytest.approx(expected, rel=1e-6)


def _ae_data(n: int = 12, seed: int = 0) -> Windows:
    return Windows(smooth_fields(n, 2, (8, 16), seed=seed), window=2)


def _trainer(task, data, run_dir, steps, val=None, **loop):
    cfg = LoopConfig(
        steps=steps,
        batch_size=2,
        seed=5,
        log_every=1,
        checkpoint_every=loop.pop("checkpoint_every", 2),
        progress=False,
        **loop,
    )
    optim = OptimizerConfig(lr=3e-3, warmup_steps=2, accumulation=2, grad_clip=0.5)
    return Trainer(task, data, cfg, optim, run_dir=run_dir, val_data=val)


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.objective.network.state_dict().items()}


def _same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("kind", ["autoencoder", "diffusion"])
def test_resume_is_bitwise_identical_to_uninterrupted_run(tmp_path: Path, kind: str):
    if kind == "autoencoder":
        make, data, extra = (lambda: tiny_autoencoder_objective(latent_noise=0.1)), _ae_data(), {}
    else:
        latents = Windows(smooth_fields(12, 4, (4, 8), seed=1), window=4, key="latent")
        make, data, extra = tiny_diffusion_objective, latents, {"ema_decay": 0.9}

    torch.manual_seed(0)
    straight = _trainer(make(), data, str(tmp_path / "a"), steps=6, **extra)
    straight.fit()

    torch.manual_seed(0)
    first = _trainer(make(), data, str(tmp_path / "b"), steps=6, checkpoint_every=3, **extra)
    first.loop.steps = 3  # stop early, as a killed run would (the LR schedule still spans 6)
    first.fit()
    assert [s for s, _ in list_checkpoints(str(tmp_path / "b" / "checkpoints"))] == [3]

    torch.manual_seed(123)  # different initial weights: the checkpoint must overwrite them
    resumed = _trainer(make(), data, str(tmp_path / "b"), steps=6, checkpoint_every=3, **extra)
    assert resumed.step == 3 and resumed.resumed_from.endswith("step-000000003")
    resumed.fit()

    _same(_weights(straight), _weights(resumed))
    if kind == "diffusion":
        _same(straight.ema.module.state_dict(), resumed.ema.module.state_dict())
    sa, sb = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    for i in sa:
        _same(sa[i], sb[i])
    # the resumed run's log continues the first one's rows exactly
    rows_a = list(csv.DictReader((tmp_path / "a" / "train.csv").open()))
    rows_b = list(csv.DictReader((tmp_path / "b" / "train.csv").open()))
    assert [r["step"] for r in rows_b] == [str(s) for s in range(1, 7)]
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]


def test_validation_metrics_and_checkpoint_contents(tmp_path: Path):
    torch.manual_seed(0)
    task = tiny_diffusion_objective()
    task.val_samples, task.val_steps = 2, 4
    latents = Windows(smooth_fields(10, 4, (4, 8), seed=2), window=4, key="latent")
    trainer = _trainer(
        task, latents, str(tmp_path), steps=2, val=latents, val_every=2, ema_decay=0.5
    )
    metrics = trainer.fit()
    assert {"val_sample_std_ratio", "val_sample_lag1", "val_data_lag1"} <= set(metrics)
    assert metrics["val_data_lag1"] > 0.5  # the smooth trajectories are strongly correlated
    bins = [k for k in metrics if k.startswith("val_loss_sigma_")]
    assert len(bins) == 3
    assert metrics["val_loss"] == pytest.approx(sum(metrics[k] for k in bins) / 3)
    # the EMA network is validated: its loss equals a direct evaluation with the EMA weights
    direct = trainer.validate()
    assert direct["loss"] == pytest.approx(metrics["val_loss"], rel=1e-6)
    rows = list(csv.DictReader((tmp_path / "val.csv").open()))
    assert len(rows) == 1 and float(rows[0]["val_loss"]) == pytest.approx(metrics["val_loss"])
    ckpt = load_checkpoint(str(tmp_path / "checkpoints"))
    assert ckpt.step == 2 and set(ckpt.tensors) == {"model", "ema"}
    card = read_card(ckpt.metadata, kind="diffusion")
    assert card.card.denoiser.width == 24
    assert card.run.loop.samples_seen == 2 * 2 * 2


def test_autoencoder_validation_rmse_per_channel(tmp_path: Path):
    torch.manual_seed(0)
    task = tiny_autoencoder_objective()
    data = _ae_data()
    trainer = _trainer(task, data, None, steps=1)
    assert trainer.validate() == {}  # no validation data
    trainer.val_data = data
    # the reported RMSE per channel equals a direct computation on the same items
    x = torch.stack([data[i]["state"] for i in range(4)]).reshape(-1, 2, 8, 16)
    task.module.eval()
    with torch.no_grad():
        _, x_hat = task.module(x)
    area = task.criterion.area[:, None]
    expected = ((x_hat - x).square() * area).mean(dim=(0, 2, 3)).sqrt()
    trainer.loop.val_batches = 2  # 2 batches x 2 windows x 2 states = the 4 windows above
    out = trainer.validate()
    assert out["rmse_a"] == pytest.approx(expected[0].item(), rel=1e-5)
    assert out["rmse_b"] == pytest.approx(expected[1].item(), rel=1e-5)
    assert out["rmse"] == pytest.approx(expected.mean().item(), rel=1e-5)


def test_autoencoder_spectral_term_adds_to_the_loss_and_is_validated():
    torch.manual_seed(0)
    task = tiny_autoencoder_objective()
    data = _ae_data()
    batch = {"state": torch.stack([data[i]["state"] for i in range(3)])}
    generator = torch.Generator().manual_seed(0)
    task.module.eval()  # deterministic: no latent noise
    mse_only = task.loss(task.module, batch, generator)
    task.spectral_weight = 0.5
    combined = task.loss(task.module, batch, generator)
    x = batch["state"].reshape(-1, 2, 8, 16)
    with torch.no_grad():
        _, x_hat = task.module(x)
    spectrum = task.spectrum(x_hat, x)
    assert float(spectrum) > 0
    torch.testing.assert_close(combined, mse_only + 0.5 * spectrum)
    # validation reports the term and counts it in the loss, whatever the weight
    trainer = _trainer(task, data, None, steps=1, val=data)
    trainer.loop.val_batches = 1
    with_weight = trainer.validate()
    task.spectral_weight = 0.0
    without = trainer.validate()
    assert with_weight["spectrum"] == pytest.approx(without["spectrum"]) and without["spectrum"] > 0
    assert with_weight["loss"] == pytest.approx(without["loss"] + 0.5 * without["spectrum"])
    with pytest.raises(ValueError, match="spectral_weight"):
        AutoencoderLossConfig(spectral_weight=-1.0)


class _OffsetReconstruction(torch.nn.Module):
    """A stand-in autoencoder whose reconstruction is the input plus ``offsets[k]`` on the
    ``k``-th state of each window (states arrive flattened, window by window), and ``spike``
    on a patch of each window's first state."""

    def __init__(self, offsets: list[float], spike: float = 0.0) -> None:
        super().__init__()
        self.offsets, self.spike = torch.tensor(offsets), spike

    def forward(self, x, dates=None):
        K = len(self.offsets)
        x_hat = x + self.offsets.repeat(x.shape[0] // K)[:, None, None, None]
        x_hat[::K, 0, :4] += self.spike  # rows 0-3 of channel 0 of each window's first state
        return None, x_hat


def test_autoencoder_tendency_term_sees_errors_that_come_and_go():
    """The MSE cannot tell a steady error from one that flips sign every state; the tendency
    term (the weighted MSE of reconstructed changes) can, exactly: 0 for the first, (2 c)^2
    for the second."""
    torch.manual_seed(0)
    task = tiny_autoencoder_objective()
    data = _ae_data()
    batch = {"state": torch.stack([data[i]["state"] for i in range(3)])}  # (3, K=2, 2, 8, 16)
    generator = torch.Generator().manual_seed(0)
    c = 0.3
    steady, flipping = _OffsetReconstruction([c, c]), _OffsetReconstruction([c, -c])
    plain = [task.loss(m, batch, generator) for m in (steady, flipping)]
    for loss in plain:  # per state
        torch.testing.assert_close(loss, torch.full((6,), c**2))
    task.tendency_weight = 2.0
    torch.testing.assert_close(task.loss(steady, batch, generator), torch.full((3,), c**2))
    torch.testing.assert_close(
        task.loss(flipping, batch, generator), torch.full((3,), c**2 + 2.0 * (2 * c) ** 2)
    )
    # a masked point (sea-surface temperature over land) leaves both terms
    spiked = _OffsetReconstruction([c, -c], spike=1e3)
    mask = torch.ones_like(batch["state"], dtype=torch.bool)
    mask[:, 0, 0, :4] = False  # where the spike sits: rows 0-3 of channel 0 of each first state
    torch.testing.assert_close(
        task.loss(spiked, dict(batch, mask=mask), generator),
        torch.full((3,), c**2 + 2.0 * (2 * c) ** 2),
    )
    assert (task.loss(spiked, batch, generator) > 1e3).all()
    # validation reports it for windows of 2 states, and counts it in the loss with its weight
    trainer = _trainer(task, data, None, steps=1, val=data)
    trainer.loop.val_batches = 1
    weighted = trainer.validate()
    task.tendency_weight = 0.0
    unweighted = trainer.validate()
    assert unweighted["tendency"] > 0
    assert weighted["tendency"] == pytest.approx(unweighted["tendency"])
    assert weighted["loss"] == pytest.approx(unweighted["loss"] + 2.0 * unweighted["tendency"])
    # flat batches of single states have no changes to compare
    task.tendency_weight = 1.0
    with pytest.raises(ValueError, match="at least 2 consecutive states"):
        task.loss(steady, {"state": batch["state"][:, 0]}, generator)
    with pytest.raises(ValueError, match="tendency_weight"):
        AutoencoderLossConfig(tendency_weight=-1.0)


def test_lognormal_training_noise_levels():
    from appa.diffusion import sample_lognormal_sigma

    g = torch.Generator().manual_seed(0)
    sigma = sample_lognormal_sigma(200_000, -1.2, 1.2, 1e-3, 1e3, g).double()
    log = sigma.log()
    assert abs(float(log.median()) + 1.2) < 0.01 and abs(float(log.std()) - 1.2) < 0.01
    clipped = sample_lognormal_sigma(1000, 0.0, 5.0, 0.1, 10.0, g)
    assert float(clipped.min()) == pytest.approx(0.1)
    assert float(clipped.max()) == pytest.approx(10.0)
    # a diffusion task draws them when asked, through its generator (reproducibly)
    task = tiny_diffusion_objective()
    latents = Windows(smooth_fields(6, 4, (4, 8), seed=2), window=4, key="latent")
    batch = torch.utils.data.default_collate([latents[i] for i in range(2)])
    task.train_sigma = "lognormal"
    a = task.loss(task.module, batch, torch.Generator().manual_seed(3))
    b = task.loss(task.module, batch, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="train_sigma"):
        DiffusionObjectiveConfig(train_sigma="uniform")


def test_known_frame_training_and_forecast_validation():
    torch.manual_seed(0)
    base = tiny_diffusion_objective()
    config = base.config.model_copy(update={"known_frames": True})
    settings = DiffusionObjectiveConfig(val_sigmas=3, known_probability=0.5)
    task = type(base)(config, settings, latent_mean=[0.0] * 4, latent_std=[1.0] * 4)
    latents = Windows(smooth_fields(10, 4, (4, 8), seed=2), window=4, key="latent")
    trainer = _trainer(task, latents, None, steps=2, val=latents, val_every=2)
    metrics = trainer.fit()
    forecast = [k for k in metrics if k.startswith("val_forecast_sigma_")]
    assert len(forecast) == 3 and metrics["val_forecast_loss"] > 0
    assert metrics["val_forecast_loss"] == pytest.approx(sum(metrics[k] for k in forecast) / 3)
    # the loss sees the known frames: it changes with them, as the same draws are used
    batch = torch.utils.data.default_collate([latents[i] for i in range(4)])
    for p in task.network.parameters():
        if not p.any():
            torch.nn.init.normal_(p, std=0.1)
    a = task.loss(task.module, batch, torch.Generator().manual_seed(0))
    task.known_probability = 0.0
    b = task.loss(task.module, batch, torch.Generator().manual_seed(0))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="known_frames"):
        type(base)(base.config, DiffusionObjectiveConfig(known_probability=0.5))
    with pytest.raises(ValueError, match="known_probability"):
        DiffusionObjectiveConfig(known_probability=1.5)


def test_autoencoder_learns(tmp_path: Path):
    torch.manual_seed(0)
    task = tiny_autoencoder_objective()
    data = _ae_data(24)
    cfg = LoopConfig(steps=60, batch_size=4, log_every=10, checkpoint_every=0, progress=False)
    optim = OptimizerConfig(lr=3e-3, warmup_steps=5)
    trainer = Trainer(task, data, cfg, optim, log_dir=tmp_path, val_data=data)
    before = trainer.validate()["loss"]
    trainer.fit()
    after = trainer.validate()["loss"]
    assert after < 0.3 * before, (before, after)


def test_resume_refuses_a_different_setup(tmp_path: Path):
    torch.manual_seed(0)
    _trainer(tiny_autoencoder_objective(), _ae_data(), str(tmp_path), steps=2).fit()
    task = tiny_autoencoder_objective()
    task.channel_weights = [1.0, 1.0]  # the fingerprint (task metadata) differs
    with pytest.raises(CheckpointError, match="channel_weights"):
        _trainer(task, _ae_data(), str(tmp_path), steps=4)
    with pytest.raises(CheckpointError, match="dataset_size"):
        _trainer(tiny_autoencoder_objective(), _ae_data(14), str(tmp_path), steps=4)


def test_non_finite_loss_stops_with_a_clear_error(tmp_path: Path):
    series = smooth_fields(6, 2, (8, 16))
    series[3, 0, 2, 2] = math.nan
    trainer = _trainer(tiny_autoencoder_objective(), Windows(series, 2), None, steps=5)
    with pytest.raises(TrainingError, match="non-finite loss"):
        trainer.fit()


@pytest.fixture
def process_group(tmp_path: Path):
    """A one-rank gloo process group, so the DDP and FSDP2 code paths run in this process."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_ddp_and_fsdp_paths_match_plain_training_and_resume(tmp_path, process_group, strategy):
    def run(run_dir, steps, strategy, stop=None):
        torch.manual_seed(0)
        cfg = LoopConfig(steps=steps, batch_size=2, seed=5, checkpoint_every=2, progress=False)
        optim = OptimizerConfig(lr=3e-3, warmup_steps=2, accumulation=2)
        trainer = Trainer(
            tiny_autoencoder_objective(), _ae_data(), cfg, optim, run_dir=run_dir, strategy=strategy
        )
        if stop is not None:
            trainer.loop.steps = stop
        trainer.fit()
        return trainer

    plain = run(str(tmp_path / "plain"), 4, "none")
    sharded = run(str(tmp_path / "sharded"), 4, strategy)
    a = load_checkpoint(str(tmp_path / "plain" / "checkpoints"))
    b = load_checkpoint(str(tmp_path / "sharded" / "checkpoints"))
    assert b.step == 4
    for k, v in a.tensors["model"].items():
        torch.testing.assert_close(b.tensors["model"][k], v, rtol=1e-5, atol=1e-6)
    del plain, sharded
    # interrupted at 2 and resumed under the same strategy: the same weights
    run(str(tmp_path / "resumed"), 4, strategy, stop=2)
    resumed = run(str(tmp_path / "resumed"), 4, strategy)
    assert resumed.resumed_from.endswith("step-000000002")
    c = load_checkpoint(str(tmp_path / "resumed" / "checkpoints"))
    for k, v in b.tensors["model"].items():
        assert torch.equal(c.tensors["model"][k], v), k


class _GaussianDenoiser(torch.nn.Module):
    """The exact denoiser of N(0, s^2 I) data: ``E[x | x_t] = s^2 / (s^2 + sigma^2) x_t``."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x_t, sigma, date=None):
        s2 = self.scale**2
        return s2 / (s2 + sigma.reshape(-1, 1, 1, 1, 1) ** 2) * x_t


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_generated_sample_statistics_with_an_exact_denoiser(scale: float):
    task = tiny_diffusion_objective()
    task.val_samples, task.val_steps = 8, 32
    g = torch.Generator().manual_seed(0)
    batch = {"latent": torch.randn(8, 4, 4, 4, 8, generator=g), "date": torch.zeros(8, 4, 4)}
    parts = task.validate_samples(_GaussianDenoiser(scale), batch, torch.Generator().manual_seed(1))
    means = {k: float(s) / float(c) for k, (s, c) in parts.items()}
    means.update({"loss_sigma_1": 0.0})
    out = task.finalize(means)
    # samples of N(0, scale^2) against N(0, 1) data: std ratio = scale, no lag-1 correlation
    assert out["sample_std_ratio"] == pytest.approx(scale, rel=0.08)
    assert out["sample_mean_error"] < 0.15 * scale
    assert abs(out["sample_lag1"]) < 0.1 and abs(out["data_lag1"]) < 0.1


def test_bf16_autocast_runs_and_tracks_float32():
    """bf16 autocast (the GPU default) on CPU: the same steps, losses within bf16 precision."""
    losses = {}
    for precision in ("float32", "bfloat16"):
        torch.manual_seed(0)
        trainer = _trainer(
            tiny_autoencoder_objective(), _ae_data(), None, steps=2, precision=precision
        )
        assert (trainer.autocast_dtype is None) == (precision == "float32")
        losses[precision] = trainer.fit()["loss"]
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=2e-2)
    assert losses["bfloat16"] != losses["float32"]  # autocast did change the arithmetic


@pytest.mark.slow
def test_compiled_training_steps_match_eager_ones(tmp_path: Path):
    """``loop.compile``: the same losses and weights as eager steps (to float rounding), and
    checkpoints of the plain module (no compiler prefixes in the names)."""
    latents = Windows(smooth_fields(12, 4, (4, 8), seed=1), window=4, key="latent")
    runs = {}
    for compile in (False, True):
        torch.manual_seed(0)
        trainer = _trainer(
            tiny_diffusion_objective(),
            latents,
            str(tmp_path / str(compile)),
            steps=3,
            compile=compile,
        )
        runs[compile] = (trainer.fit()["loss"], _weights(trainer))
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-4)
    for name, weight in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][name], weight, rtol=1e-4, atol=1e-5)
    saved = load_checkpoint(list_checkpoints(str(tmp_path / "True" / "checkpoints"))[-1][1])
    assert set(saved.tensors["model"]) == set(runs[False][1])
