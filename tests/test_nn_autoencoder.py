"""The state autoencoder: shapes on odd grids, padding, roll equivariance, saturation, AD."""

from __future__ import annotations

import pytest
import torch

from appa.nn import AutoencoderConfig, StateAutoencoder, get_preset
from appa.nn.layers import pole_pad, saturate


def randomize(module: torch.nn.Module, seed: int = 0, std: float = 0.2) -> None:
    """Replaces every parameter by noise so no small or zero initialisation hides a bug."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std / max(1, p[0].numel()) ** 0.5)


def small_config(**kw) -> AutoencoderConfig:
    base = dict(in_channels=3, grid=(32, 64), channels=[8, 12, 16], blocks=[1, 1, 1])
    base.update(latent_channels=4)
    base.update(kw)
    return AutoencoderConfig(**base)


def test_release_shapes_on_meta():
    cfg = get_preset("appa-release").autoencoder
    with torch.device("meta"):
        ae = StateAutoencoder(cfg)
    x = torch.empty(2, 71, 721, 1440, device="meta")
    z = ae.encode(x)
    assert tuple(z.shape) == (2, 128, 23, 47)
    assert tuple(ae.decode(z).shape) == (2, 71, 721, 1440)
    assert cfg.factor == 32
    assert cfg.padding == (7, 8, 32, 32)


def test_paper_shapes_on_meta():
    cfg = get_preset("paper").autoencoder
    with torch.device("meta"):
        ae = StateAutoencoder(cfg)
    z = ae.encode(torch.empty(1, 2, 71, 721, 1440, device="meta"))  # (B, T, C, H, W)
    assert tuple(z.shape) == (1, 2, *cfg.latent_shape)
    assert cfg.latent_shape == (144, 23, 45)


@pytest.mark.parametrize("H", [32, 33])
@pytest.mark.parametrize("lat_padding", ["zeros", "pole"])
def test_odd_and_even_grids_round_trip(H, lat_padding):
    torch.manual_seed(0)
    cfg = small_config(grid=(H, 64), lat_padding=lat_padding)
    ae = StateAutoencoder(cfg).eval()
    randomize(ae)
    x = torch.randn(2, 3, H, 64)
    z = ae.encode(x)
    assert z.shape == (2, 4, 8, 16) if H == 32 else (2, 4, 9, 16)
    assert z.shape[-3:] == cfg.latent_shape
    y = ae.decode(z)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


def test_pad_then_crop_is_identity_and_pole_rows_are_turned():
    cfg = small_config(grid=(33, 64), lat_padding="pole", lon_margin=1)
    ae = StateAutoencoder(cfg)
    x = torch.randn(1, 3, 33, 64)
    top, bottom, left, right = cfg.padding
    assert (top, bottom) == (1, 2) and (left, right) == (4, 4)
    p = ae.pad(x)
    assert p.shape == (1, 3, 36, 72)
    torch.testing.assert_close(ae.crop(p), x, rtol=0, atol=0)
    # one row beyond the first row is the second row seen from the other side of the pole
    inner = p[..., top : top + 33, :]
    torch.testing.assert_close(p[..., top - 1, left:-right], x[..., 1, :].roll(32, dims=-1))
    torch.testing.assert_close(p[..., top + 33, left:-right], x[..., 31, :].roll(32, dims=-1))
    # the circular margins wrap the longitudes
    torch.testing.assert_close(inner[..., :left], x[..., -left:])
    torch.testing.assert_close(inner[..., -right:], x[..., :right])


def test_pole_half_padding_mirrors_across_the_pole_between_rows():
    x = torch.randn(2, 6, 8)
    p = pole_pad(x, 2, 1, "pole-half")
    assert p.shape == (2, 9, 8)
    # rows -1, -2 are rows 0, 1 turned by half a revolution; row H is row H-1 turned
    torch.testing.assert_close(p[:, 1], x[:, 0].roll(4, -1))
    torch.testing.assert_close(p[:, 0], x[:, 1].roll(4, -1))
    torch.testing.assert_close(p[:, -1], x[:, -1].roll(4, -1))
    torch.testing.assert_close(p[:, 2:-1], x)


def test_pole_pad_rejects_bad_input():
    with pytest.raises(ValueError, match="even number"):
        pole_pad(torch.zeros(1, 4, 5), 1, 1, "pole")
    with pytest.raises(ValueError, match="over the pole"):
        pole_pad(torch.zeros(1, 3, 4), 3, 0, "pole")


@pytest.mark.parametrize("lat_padding", ["zeros", "pole", "pole-half"])
def test_longitude_roll_commutes_with_encode_and_decode(lat_padding):
    torch.manual_seed(1)
    cfg = small_config(grid=(33, 64), lat_padding=lat_padding)
    ae = StateAutoencoder(cfg).eval()
    randomize(ae, seed=3)
    x = torch.randn(2, 3, 33, 64)
    f = cfg.factor
    z = ae.encode(x)
    z_rolled = ae.encode(x.roll(f, dims=-1))
    torch.testing.assert_close(z_rolled, z.roll(1, dims=-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        ae.decode(z.roll(1, dims=-1)), ae.decode(z).roll(f, dims=-1), rtol=1e-5, atol=1e-5
    )
    # a roll by a non-multiple of the factor is not an exact symmetry (the test can fail)
    assert not torch.allclose(ae.encode(x.roll(f // 2, dims=-1)), z.roll(1, dims=-1), atol=1e-3)
    assert not torch.allclose(ae.encode(x.roll(1, dims=-1)), z, atol=1e-3)


def test_stride_sets_the_factor():
    cfg = small_config(grid=(33, 64), channels=[8, 16], blocks=[1, 1], stride=4)
    assert cfg.factor == 4 and cfg.latent_shape == (4, 9, 16)
    ae = StateAutoencoder(cfg).eval()
    randomize(ae, seed=2)
    x = torch.randn(1, 3, 33, 64)
    z = ae.encode(x)
    assert z.shape == (1, 4, 9, 16) and ae.decode(z).shape == x.shape
    torch.testing.assert_close(ae.encode(x.roll(4, -1)), z.roll(1, -1), rtol=1e-5, atol=1e-5)


def test_saturation_bounds_latents():
    z = torch.linspace(-60, 60, 1001, dtype=torch.float64)
    for kind in ("softclip", "softclip2", "tanh"):
        s = saturate(z, kind, 5.0)
        assert s.abs().max() < 5.0
        assert (s.diff() > 0).all()  # strictly monotonic
    torch.testing.assert_close(saturate(z, "softclip", 2.0), z / (1 + z.abs() / 2))
    small = torch.tensor([1e-3])
    torch.testing.assert_close(saturate(small, "softclip2", 5.0), small, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="unknown saturation"):
        saturate(z, "clamp", 1.0)  # type: ignore[arg-type]
    ae = StateAutoencoder(small_config(saturation_bound=0.5)).eval()
    randomize(ae, std=5.0)
    assert ae.encode(torch.randn(1, 3, 32, 64) * 10).abs().max() < 0.5


def test_bf16_autocast_is_close_to_float32():
    ae = StateAutoencoder(small_config()).eval()
    randomize(ae, seed=5)
    x = torch.randn(2, 3, 32, 64)
    with torch.no_grad():
        z, y = ae(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            zl, yl = ae(x)
    assert torch.isfinite(zl).all() and torch.isfinite(yl).all()
    assert (zl.float() - z).norm() / z.norm() < 0.05
    assert (yl.float() - y).norm() / y.norm() < 0.05


def test_latent_noise_only_when_asked():
    ae = StateAutoencoder(small_config(latent_noise=0.1))
    randomize(ae)
    z = torch.randn(1, *ae.latent_shape)
    ae.eval()
    torch.testing.assert_close(ae.decode(z), ae.decode(z))
    ae.train()
    assert not torch.allclose(ae.decode(z), ae.decode(z))
    torch.testing.assert_close(ae.decode(z, noise=False), ae.eval().decode(z))


def test_bad_shapes_are_named():
    ae = StateAutoencoder(small_config())
    with pytest.raises(ValueError, match="state must have shape"):
        ae.encode(torch.zeros(1, 4, 32, 64))
    with pytest.raises(ValueError, match="latent must have shape"):
        ae.decode(torch.zeros(1, 4, 9, 16))
    with pytest.raises(ValueError, match="same length"):
        small_config(blocks=[1, 1])
    with pytest.raises(ValueError, match="even number of longitudes"):
        small_config(grid=(32, 63))


def test_jvp_and_vjp_through_encoder_and_decoder():
    torch.manual_seed(0)
    ae = StateAutoencoder(small_config()).double().eval()
    randomize(ae)
    ae.double()
    z = torch.randn(1, *ae.latent_shape, dtype=torch.float64)
    v = torch.randn_like(z)
    y, jv = torch.func.jvp(ae.decode, (z,), (v,))
    eps = 1e-6
    fd = (ae.decode(z + eps * v) - ae.decode(z - eps * v)) / (2 * eps)
    torch.testing.assert_close(jv, fd, rtol=1e-5, atol=1e-7)
    # VJP consistent with the JVP: <u, J v> = <J^T u, v>
    u = torch.randn_like(y)
    _, pull = torch.func.vjp(ae.decode, z)
    (jtu,) = pull(u)
    torch.testing.assert_close((u * jv).sum(), (jtu * v).sum(), rtol=1e-9, atol=1e-9)
    x = torch.randn(1, 3, 32, 64, dtype=torch.float64)
    _, jx = torch.func.jvp(ae.encode, (x,), (torch.randn_like(x),))
    assert jx.shape == (1, *ae.latent_shape)


def test_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    ae = StateAutoencoder(small_config()).train()
    randomize(ae)
    ck = StateAutoencoder(small_config(checkpointing=True)).train()
    ck.load_state_dict(ae.state_dict())
    x = torch.randn(2, 3, 32, 64)
    grads = []
    for model in (ae, ck):
        model.zero_grad()
        _, y = model(x)
        y.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_context_autoencoder_starts_unconditioned_then_uses_static_fields_and_dates():
    """Context (static fields, dates) enters through zero-initialised embeddings: a fresh
    conditioned network is the unconditioned one with the same weights; once trained (here:
    randomised), its output depends on both."""
    import pandas as pd

    from appa.dates import date_features

    cfg = small_config(static_channels=2, date_context=True)
    assert cfg.context_channels == 6
    torch.manual_seed(0)
    ae = StateAutoencoder(cfg).eval()
    plain = StateAutoencoder(small_config()).eval()
    shared = {k: v for k, v in ae.state_dict().items() if k in plain.state_dict()}
    plain.load_state_dict(shared)
    static = torch.randn(2, 32, 64)
    ae.set_static(static)
    times = pd.date_range("2000-03-01", periods=4, freq="6h").values
    date = date_features(times).reshape(2, 2, 4)
    x = torch.randn(2, 2, 3, 32, 64)
    with torch.no_grad():
        z = ae.encode(x, date)
        assert torch.allclose(ae.decode(z, date), plain.decode(z), atol=1e-6)

        randomize(ae)
        ae.set_static(static)
        out = ae.decode(z, date)
        later = date_features(times + pd.Timedelta("3h").to_numpy()).reshape(2, 2, 4)
        assert (ae.decode(z, later) - out).abs().max() > 1e-3
        ae.set_static(static.flip(-1))
        assert (ae.decode(z, date) - out).abs().max() > 1e-3
        assert (ae.encode(x, date) - z).abs().max() > 1e-3

    # local solar time maps: the UTC hour's phase turned by each cell's longitude
    context = ae.context(date.reshape(4, 4), 4)
    hours = pd.DatetimeIndex(times).hour.to_numpy()[:, None]
    lon = torch.arange(64) * 360.0 / 64
    phase = 2 * torch.pi * (torch.as_tensor(hours) / 24.0 + lon / 360.0)
    assert torch.allclose(context[:, 4, 5], phase.sin().float(), atol=1e-5)
    assert torch.allclose(context[:, 5, 5], phase.cos().float(), atol=1e-5)
    assert torch.equal(context[:, :2], static.flip(-1).expand(4, -1, -1, -1))

    with pytest.raises(ValueError, match="conditioned on dates"):
        ae.decode(z)
    with pytest.raises(ValueError, match="date features must have shape"):
        ae.decode(z, date[0])
    with pytest.raises(ValueError, match="static fields must have shape"):
        ae.set_static(torch.zeros(3, 32, 64))
    with pytest.raises(ValueError, match="NaN"):
        ae.set_static(torch.full((2, 32, 64), float("nan")))
    with pytest.raises(ValueError, match="static_channels=0"):
        plain.set_static(static)
    # the static fields travel with the weights
    assert torch.equal(ae.state_dict()["static"], static.flip(-1))


def test_band_limit_projects_the_named_channels_of_the_decoded_state():
    """With ``band_limit``, decoded channels 0 and 2 lie in the span of the harmonics of degree
    <= T (projecting again changes nothing, and they hold no zonal wavenumber above T); channel
    1 is the plain decoder's. Unset projections are an error, not zeros; they travel in the
    state dict."""
    import numpy as np

    from appa.data.grids import equiangular_grid
    from appa.data.spectral import band_limit_projection

    cfg = small_config(band_limit=10, band_limited=[0, 2])
    torch.manual_seed(0)
    ae = StateAutoencoder(cfg).eval()
    plain = StateAutoencoder(small_config()).eval()
    randomize(ae)
    plain.load_state_dict({k: v for k, v in ae.state_dict().items() if k in plain.state_dict()})
    z = torch.randn(2, *ae.latent_shape)
    with pytest.raises(RuntimeError, match="never set"):
        ae.decode(z)
    latitude, _ = equiangular_grid("64x32")
    Q = torch.as_tensor(band_limit_projection(latitude, 10), dtype=torch.float32)
    ae.set_band_limit(Q)
    with torch.no_grad():
        out, free = ae.decode(z), plain.decode(z)
        assert torch.equal(out[:, 1], free[:, 1])
        assert (out[:, [0, 2]] - free[:, [0, 2]]).abs().max() > 1e-3
        torch.testing.assert_close(ae.band_limit(out), out, atol=1e-5, rtol=0)
        power = torch.fft.rfft(out, dim=-1).abs()
        assert power[:, [0, 2], :, 11:].max() < 1e-4 * power[:, [0, 2]].max()
        assert power[:, 1, :, 11:].max() > 1e-2 * power[:, 1].max()
    copy = StateAutoencoder(cfg).eval()
    copy.load_state_dict(ae.state_dict())
    assert torch.equal(copy.band_limit.matrices, Q)

    with pytest.raises(ValueError, match="must have shape"):
        ae.set_band_limit(Q[:5])
    with pytest.raises(ValueError, match="no band limit"):
        plain.set_band_limit(Q)
    with pytest.raises(ValueError, match="go together"):
        small_config(band_limit=10)
    with pytest.raises(ValueError, match="distinct channel indices"):
        small_config(band_limit=10, band_limited=[0, 3])
    with pytest.raises(ValueError, match="exceeds"):
        small_config(band_limit=40, band_limited=[0])
    with pytest.raises(ValueError, match="exceeds"):
        small_config(band_limit=32, band_limited=[0])  # 32 latitudes
    assert np.isfinite(Q.numpy()).all()
