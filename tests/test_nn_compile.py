"""``torch.compile`` of the tiny presets on CPU gives the eager results (slow: compiles)."""

from __future__ import annotations

import pytest
import torch

from appa.dates import date_features
from appa.nn import LatentDiT, StateAutoencoder, get_preset


def randomize(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            fan_in = p[0].numel() if p.ndim > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) * 0.5 / fan_in**0.5)


@pytest.mark.slow
def test_compile_tiny_networks_matches_eager():
    torch.manual_seed(0)
    preset = get_preset("tiny")
    ae = StateAutoencoder(preset.autoencoder).eval()
    dit = LatentDiT(preset.denoiser).eval()
    randomize(ae)
    randomize(dit, seed=1)
    x = torch.randn(2, 5, 32, 64)
    z = torch.randn(2, 4, 8, 8, 16)
    c = torch.randn(2)
    date = date_features(torch.arange(4.0, dtype=torch.float64).expand(2, 4))

    ae_c = torch.compile(ae, fullgraph=True)
    dit_c = torch.compile(dit, fullgraph=True)
    with torch.no_grad():
        zc, yc = ae_c(x)
        ze, ye = ae(x)
        torch.testing.assert_close(zc, ze, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(yc, ye, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(
            dit_c(z, c, date=date), dit(z, c, date=date), rtol=1e-4, atol=1e-5
        )

    # training: compiled gradients equal eager gradients
    dit.train()
    grads = []
    for model in (dit, torch.compile(dit)):
        dit.zero_grad()
        model(z, c, date=date).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in dit.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-3, atol=1e-6)
