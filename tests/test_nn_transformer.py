"""The latent trajectory transformer: shapes, positional consistency, conditioning, attention
paths, AD (JVP, VJP, double backward) and its use inside the diffusion core."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from appa.dates import date_features
from appa.diffusion import (
    EDMDenoiser,
    GaussianObservation,
    MMPSDenoiser,
    WindowedDenoiser,
    denoising_loss,
)
from appa.nn import DenoiserConfig, LatentDiT, get_preset, known_frames_input, math_attention
from appa.nn.attention import LocalChunks, attention


def randomize(module: torch.nn.Module, seed: int = 0, std: float = 1.0) -> None:
    """Noise in every parameter: the adaLN-zero and zero output layers would otherwise make the
    network output exactly zero and every symmetry test pass trivially."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            fan_in = p.shape[-1] if p.ndim > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std / fan_in**0.5)


def config(**kw) -> DenoiserConfig:
    base = dict(channels=3, window=4, width=24, depth=2, heads=2, mod_features=16)
    base.update(patch=(2, 1, 2))
    base.update(kw)
    return DenoiserConfig(**base)


def inputs(B=2, T=4, C=3, H=3, W=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, C, H, W, generator=g, dtype=dtype)
    c = torch.randn(B, generator=g, dtype=dtype)
    hours = torch.arange(T, dtype=torch.float64)[None] + 1000 * torch.arange(B)[:, None]
    return x, c, date_features(hours, dtype=dtype)


@pytest.mark.parametrize("head_channels", [0, 5])
def test_output_shape_and_zero_init(head_channels):
    net = LatentDiT(config(head_channels=head_channels))
    x, c, date = inputs()
    out = net(x, c, date=date)
    assert out.shape == x.shape
    # adaLN-zero and a zero output layer: the untrained network returns zeros
    assert out.abs().max() == 0


def test_release_preset_on_meta():
    preset = get_preset("appa-release")
    with torch.device("meta"):
        net = LatentDiT(preset.denoiser)
        x = torch.empty(1, 24, 128, 23, 47)
        out = net(x, torch.empty(1), date=torch.empty(1, 24, 4))
    assert out.shape == x.shape


def test_time_roll_with_matching_dates_and_times_rolls_the_output():
    torch.manual_seed(0)
    net = LatentDiT(config(window=6)).eval()
    randomize(net)
    x, c, _ = inputs(T=6)
    hours = torch.tensor([[5.0, 6, 7, 8, 9, 10], [100, 101, 102, 103, 104, 105]])
    date = date_features(hours)
    times = hours - hours[:, :1]
    out = net(x, c, date=date, times=times)
    r = 2  # one time patch
    rolled = net(x.roll(r, dims=1), c, date=date.roll(r, dims=1), times=times.roll(r, dims=1))
    torch.testing.assert_close(rolled, out.roll(r, dims=1), rtol=1e-4, atol=1e-5)
    # shifting every time by a constant changes nothing (relative encoding)
    torch.testing.assert_close(net(x, c, date=date, times=times + 7), out, rtol=1e-4, atol=1e-5)
    # without the matching times the rolled window is a different trajectory
    assert not torch.allclose(net(x.roll(r, 1), c, date=date.roll(r, 1)), out.roll(r, 1), atol=1e-3)


@pytest.mark.parametrize("local_window,head", [(None, 0), ((1, None, 1), 0), (None, 4)])
def test_longitude_roll_commutes(local_window, head):
    cfg = config(context_channels=1, local_window=local_window, head_channels=head)
    net = LatentDiT(cfg.model_copy(update={"head_skip": bool(head)})).eval()
    randomize(net, seed=1)
    x, c, date = inputs()
    context = torch.randn(2, 1, 3, 8)
    out = net(x, c, date=date, context=context)
    shift = 2  # one longitude patch
    rolled = net(x.roll(shift, -1), c, date=date, context=context.roll(shift, -1))
    torch.testing.assert_close(rolled, out.roll(shift, -1), rtol=1e-4, atol=1e-5)


def test_conditioning_changes_the_output_and_static_context_broadcasts():
    net = LatentDiT(config(context_channels=2)).eval()
    randomize(net, seed=2)
    x, c, date = inputs()
    context = torch.randn(2, 2, 3, 8)
    out = net(x, c, date=date, context=context)
    per_frame = context[:, None].expand(2, 4, 2, 3, 8)
    torch.testing.assert_close(net(x, c, date=date, context=per_frame), out)
    assert not torch.allclose(net(x, c, date=date.roll(1, 1), context=context), out, atol=1e-4)
    assert not torch.allclose(net(x, c + 0.5, date=date, context=context), out, atol=1e-4)
    assert not torch.allclose(net(x, c, date=date, context=context + 1), out, atol=1e-4)


def test_known_frames_input():
    net = LatentDiT(config(known_frames=True)).eval()
    randomize(net, seed=3)
    x, c, date = inputs()
    frames = torch.randn_like(x)
    nothing = known_frames_input(torch.zeros(2, 4, dtype=torch.bool), frames)
    assert nothing.shape == (2, 4, 4, 3, 8) and not nothing.any()
    # nothing known is the joint prior's input: the default
    torch.testing.assert_close(net(x, c, date=date, known=nothing), net(x, c, date=date))
    mask = torch.tensor([[True, True, False, False], [True, False, False, False]])
    known = known_frames_input(mask, frames)
    assert torch.equal(known[:, :, 0, 0, 0], mask.float())
    torch.testing.assert_close(known[0, 1, 1:], frames[0, 1])
    # later frames carry the latest known frame (persistence), earlier ones nothing
    torch.testing.assert_close(known[1, 1:, 1:], frames[1, :1].expand(3, 3, 3, 8))
    torch.testing.assert_close(known[0, 2:, 1:], frames[0, 1:2].expand(2, 3, 3, 8))
    later = known_frames_input(torch.tensor([[False, True, False, False]]), frames[:1])
    assert not later[0, 0].any()
    out = net(x, c, date=date, known=known)
    assert not torch.allclose(out, net(x, c, date=date), atol=1e-4)
    # only the known frames' values matter
    changed = known_frames_input(mask, torch.where(mask[..., None, None, None], frames, 5.0))
    torch.testing.assert_close(net(x, c, date=date, known=changed), out)
    with pytest.raises(ValueError, match="known must have shape"):
        net(x, c, date=date, known=known[:, :, 1:])
    with pytest.raises(ValueError, match="known_frames is off"):
        LatentDiT(config())(x, c, date=date, known=known)
    with pytest.raises(ValueError, match="does not match"):
        known_frames_input(mask[:, :3], frames)


def test_bad_inputs_are_named():
    net = LatentDiT(config())
    x, c, date = inputs()
    with pytest.raises(ValueError, match="date must have shape"):
        net(x, c)
    with pytest.raises(ValueError, match="not divisible"):
        net(x[..., :7], c, date=date)
    with pytest.raises(ValueError, match="c_noise"):
        net(x, c[:1], date=date)
    with pytest.raises(ValueError, match="context given"):
        net(x, c, date=date, context=torch.zeros(2, 1, 3, 8))
    with pytest.raises(ValueError, match="divisible by heads"):
        config(width=25)


def test_math_path_matches_sdpa():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 8, generator=g) for _ in range(3))
    mask = torch.rand(10, 10, generator=g) > 0.5
    mask.fill_diagonal_(True)
    for m in (None, mask):
        expected = attention(q, k, v, m)
        torch.testing.assert_close(attention(q, k, v, m, math_path=True), expected)
        with math_attention():
            torch.testing.assert_close(attention(q, k, v, m), expected)
    net = LatentDiT(config(local_window=(0, 1, None))).eval()
    randomize(net, seed=3)
    x, c, date = inputs()
    out = net(x, c, date=date)
    with math_attention():
        torch.testing.assert_close(net(x, c, date=date), out, rtol=1e-5, atol=1e-6)


def test_local_window_limits_the_receptive_field():
    # one block, windows of +-0 time tokens: frames of different time patches never interact
    net = LatentDiT(config(depth=1, local_window=(0, None, None))).eval()
    randomize(net, seed=4)
    x, c, date = inputs()
    x.requires_grad_(True)
    net(x, c, date=date)[:, :2].sum().backward()
    assert x.grad[:, 2:].abs().max() == 0
    assert x.grad[:, :2].abs().max() > 0


def test_convolution_head_reaches_the_neighbouring_tokens_cells():
    # one block, attention within a time patch and one longitude token: the linear head keeps
    # a token's output on its own 2 cells; the 3 x 3 head also writes into the next token's
    # edge cells (circularly across the date line), and nowhere further
    x, c, date = inputs()
    reach = {}
    for head, skip in ((0, False), (4, False), (4, True)):
        cfg = config(depth=1, local_window=(0, 0, 0), head_channels=head, head_skip=skip)
        net = LatentDiT(cfg).eval()
        randomize(net, seed=5)
        x = x.detach().requires_grad_(True)
        net(x, c, date=date)[..., 0].sum().backward()  # output column 0, in token 0
        reach[head, skip] = x.grad.abs().amax(dim=(0, 1, 2, 3)) > 0  # (W,) input columns seen
    assert reach[0, False].tolist() == [True, True] + [False] * 6
    # column 0 mixes columns 7 (token 3) and 1 (token 0): tokens 3 and 0, columns 6-7, 0-1
    assert reach[4, False].tolist() == [True, True] + [False] * 4 + [True, True]
    # the skip's 3 x 3 input cells under the head's 3 x 3: columns 6 ... 2
    assert reach[4, True].tolist() == [True, True, True] + [False] * 3 + [True, True]
    with pytest.raises(ValueError, match="head_skip needs"):
        config(head_skip=True)


def test_jvp_vjp_and_double_backward_with_the_math_path():
    net = LatentDiT(config()).double().eval()
    randomize(net, seed=5)
    x, c, date = inputs(dtype=torch.float64)

    def f(x):
        return net(x, c, date=date)

    v = torch.randn_like(x)
    with math_attention():
        y, jv = torch.func.jvp(f, (x,), (v,))
        eps = 1e-6
        fd = (f(x + eps * v) - f(x - eps * v)) / (2 * eps)
        torch.testing.assert_close(jv, fd, rtol=1e-5, atol=1e-8)
        u = torch.randn_like(y)
        _, pull = torch.func.vjp(f, x)
        (jtu,) = pull(u)
        torch.testing.assert_close((u * jv).sum(), (jtu * v).sum())
        # double backward: a gradient of a gradient, as in a Hessian-vector product
        xr = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(f(xr).square().sum(), xr, create_graph=True)
        (hv,) = torch.autograd.grad((g * v).sum(), xr)
        assert torch.isfinite(hv).all() and hv.abs().max() > 0


def test_checkpointing_and_bf16_autocast():
    net = LatentDiT(config()).train()
    randomize(net, seed=6)
    ck = LatentDiT(config(checkpointing=True)).train()
    ck.load_state_dict(net.state_dict())
    x, c, date = inputs()
    grads = []
    for model in (net, ck):
        model(x, c, date=date).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    net.eval()
    with torch.no_grad():
        ref = net(x, c, date=date)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x, c, date=date)
    assert torch.isfinite(low).all()
    rel = (low.float() - ref).norm() / ref.norm()
    assert rel < 0.05


def test_inside_edm_windows_and_mmps():
    torch.manual_seed(0)
    net = LatentDiT(config(window=4))
    randomize(net, seed=7)
    denoiser = EDMDenoiser(net, sigma_data=1.0)
    x, _, date = inputs()
    sigma = torch.tensor([0.1, 3.0])
    loss = denoising_loss(denoiser, x, sigma, date=date)
    assert loss.shape == (2,)
    loss.mean().backward()
    assert all(p.grad is not None for p in net.parameters())

    # a trajectory of 8 frames through 4-frame windows; date features and times unfold with x
    hours = torch.arange(8, dtype=torch.float64).expand(2, 8)
    times = hours.float()
    traj = torch.randn(2, 8, 3, 3, 8)
    windowed = WindowedDenoiser(denoiser, window=4, stride=2)
    with torch.no_grad():
        out = windowed(traj, sigma, date=date_features(hours), times=times)
    assert out.shape == traj.shape and torch.isfinite(out).all()

    # MMPS takes a VJP of the denoiser (Tweedie covariance); one observed value per frame
    net.eval()
    index = torch.tensor([0, 17, 40, 71])

    def operator(z):
        return z.flatten(1)[:, index * 3]

    obs = GaussianObservation(torch.zeros(2, 4), operator, noise_variance=1e-2, linear=True)
    mmps = MMPSDenoiser(denoiser, obs, solver="cg", iterations=2)
    with math_attention():
        post = mmps(x, sigma, date=date)
    assert post.shape == x.shape and torch.isfinite(post).all()


def test_date_features_of_datetimes():
    times = np.array(["2000-01-01T00:00", "2000-01-01T06:00", "2000-07-02T18:00"], "datetime64[m]")
    d = date_features(times, dtype=torch.float64)
    assert d.shape == (3, 4)
    torch.testing.assert_close(d[:, :2].square().sum(-1), torch.ones(3, dtype=torch.float64))
    # hour of day: 00 UTC -> angle 0, 06 UTC -> pi/2, 18 UTC -> 3 pi/2
    torch.testing.assert_close(d[0, 2:], torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(
        d[1, 2:], torch.tensor([1.0, 0.0], dtype=torch.float64), atol=1e-12, rtol=0
    )
    torch.testing.assert_close(
        d[2, 2:], torch.tensor([-1.0, 0.0], dtype=torch.float64), atol=1e-12, rtol=0
    )
    # half a (365-day) calendar year apart: opposite year phase
    half = np.array(["2001-01-01T00:00"], "datetime64[m]")
    later = half + np.timedelta64(365 * 12, "h")
    a, b = date_features(half, torch.float64), date_features(later, torch.float64)
    torch.testing.assert_close(a[0, :2], -b[0, :2], atol=1e-5, rtol=0)
    with pytest.raises(TypeError):
        date_features(np.array([1.0, 2.0]))


@pytest.mark.parametrize("local_window", [(1, None, 1), (2, 1, None), (0, None, None)])
def test_block_local_attention_equals_masked_full_attention(local_window):
    net = LatentDiT(config(window=16, local_window=local_window)).eval()
    randomize(net, seed=8)
    x, c, date = inputs(T=16)
    coords = net._coords(1, 8, 3, 4, None, x.device)
    layout = net._layout(coords, (8, 3, 4), ordered=True)
    assert isinstance(layout, LocalChunks)  # the block-local path is taken
    assert layout.mask.shape[-1] == 3 * layout.mask.shape[-2]
    chunked = net(x, c, date=date)
    # explicit times take the full masked path
    full = net(x, c, date=date, times=torch.arange(16.0).expand(2, 16))
    torch.testing.assert_close(chunked, full, rtol=1e-4, atol=1e-5)
    with math_attention():
        torch.testing.assert_close(net(x, c, date=date), full, rtol=1e-4, atol=1e-5)
