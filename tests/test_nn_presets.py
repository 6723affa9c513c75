"""Presets, parameter counts, ``appa model-info``, the losses and the network benchmark."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from appa.cli import app
from appa.config import ConfigError
from appa.nn import (
    LatentDiT,
    StateAutoencoder,
    WeightedMSE,
    ZonalSpectrumLoss,
    cell_area_weights,
    get_preset,
    level_weights,
    preset_names,
)
from appa.nn.info import model_info

ROOT = Path(__file__).resolve().parents[1]


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("name", "ae_target", "dit_target"),
    [("appa-release", 314e6, 223e6), ("paper", 500e6, 1e9)],
)
def test_parameter_counts_within_ten_percent(name, ae_target, dit_target):
    preset = get_preset(name)
    with torch.device("meta"):
        ae = StateAutoencoder(preset.autoencoder)
        dit = LatentDiT(preset.denoiser)
    assert abs(count(ae) / ae_target - 1) < 0.10
    assert abs(count(dit) / dit_target - 1) < 0.10


def test_release_shapes_match_appa():
    preset = get_preset("appa-release")
    assert preset.autoencoder.latent_shape == (128, 23, 47)
    assert preset.autoencoder.factor == 32
    assert (preset.denoiser.width, preset.denoiser.depth) == (1024, 16)


def test_overrides_and_errors_name_the_culprit():
    preset = get_preset("small", ["denoiser.depth=3", "autoencoder.latent_noise=0.1"])
    assert preset.denoiser.depth == 3 and preset.autoencoder.latent_noise == 0.1
    with pytest.raises(ConfigError, match="unknown network preset 'huge'"):
        get_preset("huge")
    with pytest.raises(ConfigError, match=r"denoiser\.dept"):
        get_preset("tiny", ["denoiser.dept=3"])
    with pytest.raises(ConfigError, match="latent_channels"):
        get_preset("tiny", ["autoencoder.latent_channels=7"])
    with pytest.raises(ConfigError, match="periodic_lon"):
        get_preset("tiny", ["autoencoder.lon_margin=1"])


def test_model_info_is_consistent_with_the_networks():
    preset = get_preset("tiny")
    info = model_info(preset, "tiny", batch_size=2)
    assert info.autoencoder.parameters == count(StateAutoencoder(preset.autoencoder))
    assert info.denoiser.parameters == count(LatentDiT(preset.denoiser))
    assert info.latent_shape == (8, 8, 16)
    assert info.compression == pytest.approx(5 * 32 * 64 / (8 * 8 * 16))
    assert info.tokens == 4 * 4 * 8
    one = model_info(preset, "tiny", batch_size=1)
    # activations and FLOPs scale with the batch, parameters do not
    assert info.denoiser.flops == pytest.approx(2 * one.denoiser.flops, rel=0.02)
    assert info.denoiser.activation_bytes == pytest.approx(
        2 * one.denoiser.activation_bytes, rel=0.05
    )
    assert info.denoiser.checkpointed_activation_bytes < info.denoiser.activation_bytes
    # the transformer's linear layers alone cost 6 FLOPs per parameter per token (fwd+bwd)
    linear = 6 * info.denoiser.parameters * info.tokens * 2
    assert 0.5 * linear < info.denoiser.flops < 3 * linear


def test_model_info_cli_for_every_preset():
    runner = CliRunner()
    for name in preset_names():
        result = runner.invoke(app, ["model-info", name, "--json"])
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)  # stderr may carry a Ray session's warnings
        assert data["name"] == name
        assert data["autoencoder"]["parameters"] > 0 and data["denoiser"]["parameters"] > 0
    text = runner.invoke(app, ["model-info", "paper", "-b", "2"])
    assert text.exit_code == 0 and "compression" in text.output and "tokens" in text.output
    bad = runner.invoke(app, ["model-info", "paper", "--set", "denoiser.heads=7"])
    assert bad.exit_code == 2
    assert "heads" in bad.output


def test_cell_area_weights_exact():
    lat = [-90.0, -45.0, 0.0, 45.0, 90.0]
    b = [-90.0, -67.5, -22.5, 22.5, 67.5, 90.0]
    exact = torch.tensor(
        [math.sin(math.radians(b[i + 1])) - math.sin(math.radians(b[i])) for i in range(5)],
        dtype=torch.float64,
    )
    exact = exact / exact.mean()
    torch.testing.assert_close(cell_area_weights(lat), exact)
    torch.testing.assert_close(cell_area_weights(lat[::-1]), exact.flip(0))
    # a fine grid: weights follow cos(latitude), normalised to mean 1
    fine = torch.linspace(-89.75, 89.75, 360, dtype=torch.float64)
    w = cell_area_weights(fine)
    cos = torch.cos(torch.deg2rad(fine))
    torch.testing.assert_close(w, cos / cos.mean(), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="monotonic"):
        cell_area_weights([0.0, 10.0, 5.0])
    with pytest.raises(ValueError, match="within"):
        cell_area_weights([0.0, 95.0])


def test_level_weights_and_weighted_mse():
    w = level_weights([None, 500.0, 1000.0, None], surface_weight=0.5)
    torch.testing.assert_close(w, torch.tensor([0.5, 2 / 3, 4 / 3, 0.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="positive"):
        level_weights([0.0, 500.0])
    lat = torch.linspace(-90, 90, 5)
    loss = WeightedMSE(lat, w)
    x = torch.randn(2, 3, 4, 5, 6)  # (B, T, C, H, W)
    # a uniform error e gives e^2
    torch.testing.assert_close(loss(x + 0.3, x), torch.full((2,), 0.09), rtol=1e-5, atol=0)
    # an error in one cell is weighted by its channel and row weights
    e = torch.zeros_like(x)
    e[0, 1, 2, 3, 4] = 1.0
    area = cell_area_weights(lat)
    expected = float(w[2] / w.mean() * area[3]) / (3 * 4 * 5 * 6)
    torch.testing.assert_close(loss(x + e, x)[0], torch.tensor(expected), rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="channel weights"):
        loss(torch.zeros(1, 3, 5, 6), torch.zeros(1, 3, 5, 6))
    with pytest.raises(ValueError, match="shapes differ"):
        loss(x, x[:1])


def test_zonal_spectrum_loss_exact_values():
    lat = torch.linspace(-80.0, 80.0, 9)
    loss = ZonalSpectrumLoss(lat, floor=1e-8)
    lon = torch.arange(16) * 2 * math.pi / 16
    # one channel holds wavenumbers 2 and 5; amplifying the 5 by a leaves the 2 alone: the
    # loss is the mean over the 8 wavenumbers of the squared log power ratios, 2 log a at k=5
    # and (nearly) log(f / f) = 0 where neither has power
    x = (torch.cos(2 * lon) + 0.1 * torch.sin(5 * lon)).expand(3, 1, 9, 16).clone()
    a = 3.0
    y = (torch.cos(2 * lon) + a * 0.1 * torch.sin(5 * lon)).expand(3, 1, 9, 16).clone()
    assert float(loss(x, x)) == 0.0
    expected = torch.tensor((2 * math.log(a)) ** 2 / 8)
    torch.testing.assert_close(loss(y, x), expected, rtol=1e-4, atol=0)
    # the power scale does not matter, only ratios
    torch.testing.assert_close(loss(10 * y, 10 * x), loss(y, x), rtol=1e-4, atol=0)
    # invalid points take their row's mean of valid points: a wild value there costs
    # nothing, and what is left is the spectrum that appa.metrics computes
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[:, :, 4, 3:9] = False
    wild = x.clone()
    wild[:, :, 4, 3:9] = 1e3
    assert float(loss(wild, x, mask)) == 0.0 and float(loss(wild, x)) > 1.0
    from appa.metrics.climate import zonal_power_spectrum

    nan = torch.where(mask, y, torch.nan).double().numpy()[None]
    truth = torch.where(mask, x, torch.nan).double().numpy()[None]
    ratio = zonal_power_spectrum(nan, lat.numpy()) / zonal_power_spectrum(truth, lat.numpy())
    floor = 1e-8 * zonal_power_spectrum(truth, lat.numpy())[:, 1:].sum()
    p, q = (zonal_power_spectrum(a, lat.numpy())[:, 1:] + floor for a in (truth, nan))
    expected = float(np.mean(np.log(q / p) ** 2))
    assert np.isfinite(ratio[:, 1:]).all()
    assert float(loss(y, x, mask)) == pytest.approx(expected, rel=1e-3)
    with pytest.raises(ValueError, match="shapes differ"):
        loss(x, x[:1])
    with pytest.raises(ValueError, match="floor"):
        ZonalSpectrumLoss(lat, floor=0.0)


def test_zonal_spectrum_loss_sees_what_the_mse_misses():
    """Removing the small scales costs the MSE little (they hold little variance) but the
    spectrum term much; the floor leaves wavenumbers the truth does not hold (rounding noise)
    out of it."""
    torch.manual_seed(0)
    lat = torch.linspace(-87.0, 87.0, 32)
    k = torch.arange(33)
    amplitude = torch.where(k <= 21, 1.0 / (1.0 + k.float()) ** 2, torch.zeros(()))
    spectrum = amplitude * torch.randn(8, 2, 32, 33, dtype=torch.complex64)
    x = torch.fft.irfft(spectrum, n=64, dim=-1)
    smoothed = torch.fft.irfft(torch.where(k < 12, spectrum, 0), n=64, dim=-1)
    mse = WeightedMSE(lat, None)
    spec = ZonalSpectrumLoss(lat, floor=1e-6)
    assert float(mse(smoothed, x).mean()) < 1e-3 * float(x.square().mean())
    assert float(spec(smoothed, x)) > 1.0
    # noise far below the floor beyond the truth's cut-off barely counts
    noisy = x + 1e-8 * torch.randn_like(x)
    assert float(spec(noisy, x)) < 1e-3


def test_gpu_benchmark_script_runs_on_cpu_with_tiny(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "bench_networks_gpu", ROOT / "benchmarks" / "bench_networks_gpu.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    quick = ["--preset", "tiny", "--device", "cpu", "--steps", "1", "--warmup", "0"]
    assert bench.main(quick) == 0
    rc = bench.main([*quick, "--no-baseline", "--checkpointing", "on", "--out", str(out)])
    assert rc == 0
    records = json.loads(out.read_text())
    assert {r["network"] for r in records} == {"autoencoder", "denoiser"}
    for r in records:
        assert r["step_s"] > 0 and r["flops"] > 0 and r["tflops_per_s"] > 0
        assert math.isfinite(r["loss"]) and r["checkpointing"]


def test_tiny_presets_learn():
    """A few Adam steps reduce both losses: nothing in the initialisation blocks learning."""
    torch.manual_seed(0)
    preset = get_preset("tiny")
    ae = StateAutoencoder(preset.autoencoder).train()
    loss_fn = WeightedMSE(torch.linspace(-87.2, 87.2, 32), None)
    coarse = torch.randn(4, 5, 4, 4)
    x = torch.nn.functional.interpolate(coarse, size=(32, 64), mode="bicubic")
    opt = torch.optim.Adam(ae.parameters(), lr=2e-3)
    losses = []
    for _ in range(20):
        _, y = ae(x)
        loss = loss_fn(y, x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]

    from appa.dates import date_features
    from appa.diffusion import EDMDenoiser, denoising_loss

    dit = LatentDiT(preset.denoiser).train()
    den = EDMDenoiser(dit)
    # a fixed pattern over (channel, latitude) under varied noise: the optimum, D = pattern,
    # needs no more than the latitude embedding (the network is equivariant in time and lon)
    z = torch.randn(8, 8, 1).expand(4, 4, 8, 8, 16)
    noise = torch.randn_like(z)
    sigma = torch.full((4,), 1.0)
    date = date_features(torch.arange(4.0, dtype=torch.float64).expand(4, 4))
    opt = torch.optim.Adam(dit.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = denoising_loss(den, z, sigma, noise=noise, date=date).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
