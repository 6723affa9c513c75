"""appa.lensing forward model: lens deflections, ray tracing, the linear operator and its adjoint,
flux and magnification against analytic values, symmetries, and caustics where installed."""

import math

import pytest
import torch

from appa.lensing import (
    SIE,
    SIS,
    ExternalShear,
    LensingOperator,
    PixelGrid,
    PointMass,
    convergence,
    gaussian_psf,
    lens_from_dict,
    lenses_from_dicts,
    lenses_to_dicts,
    magnification,
    ray_trace,
)

F64 = torch.float64


def _points():
    # a 9 x 9 grid off the lens centres (no point exactly on a singularity)
    t = torch.linspace(-2, 2, 9, dtype=F64)
    y, x = torch.meshgrid(t + 0.013, t + 0.007, indexing="ij")
    return x, y


def _gaussian_source(grid: PixelGrid, centre, sigma, dtype=F64):
    x, y = grid.coordinates(dtype=dtype)
    return torch.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / (2 * sigma**2))


def _lenses():
    return [SIE(1.2, 0.7, 0.4, 0.05, -0.02), ExternalShear(0.03, -0.02)]


@pytest.mark.parametrize(
    "lens",
    [
        SIE(1.2, 0.6, 0.4, 0.1, -0.05),
        SIE(1.0, 0.25, -1.0),
        SIE(1.0, 0.999, 0.3),  # the series branch near q = 1
        SIE(0.8, 1.0),
        SIS(1.1, 0.1, 0.2),
        PointMass(0.5, -0.3, 0.1),
        ExternalShear(0.05, -0.03),
    ],
    ids=["sie", "sie-flat", "sie-round", "sie-q1", "sis", "point", "shear"],
)
def test_deflection_is_a_gradient_field_with_twice_the_convergence_as_divergence(lens):
    x, y = _points()
    x.requires_grad_(True)
    y.requires_grad_(True)
    ax, ay = lens.deflection(x, y)
    dax_dx, dax_dy = torch.autograd.grad(ax.sum(), (x, y), retain_graph=True)
    day_dx, day_dy = torch.autograd.grad(ay.sum(), (x, y))
    kappa = lens.convergence(x.detach(), y.detach())
    assert torch.allclose(dax_dx + day_dy, 2 * kappa, atol=1e-9)
    assert torch.allclose(dax_dy, day_dx, atol=1e-9)  # curl-free: alpha is grad of a potential


def test_sie_reduces_to_sis_and_is_continuous_in_q():
    x, y = _points()
    sie, sis = SIE(1.3, 1.0, 0.7).deflection(x, y), SIS(1.3).deflection(x, y)
    for got, want in zip(sie, sis, strict=True):
        assert torch.allclose(got, want, atol=1e-12)
    # either side of the switch to the series (f = sqrt(1 - q^2) = 0.05)
    q_switch = math.sqrt(1 - 0.05**2)
    below = SIE(1.0, q_switch - 1e-9, 0.3).deflection(x, y)[0]
    above = SIE(1.0, q_switch + 1e-9, 0.3).deflection(x, y)[0]
    assert torch.allclose(below, above, atol=1e-8)
    # the Einstein radius along the intermediate axis: the SIE's deflection on its major axis
    # is sqrt(q) theta_e times atan(f/q)/f, on its minor axis sqrt(q) theta_e atanh(f)/f
    q = 0.5
    f = math.sqrt(1 - q * q)
    ax, _ = SIE(1.0, q).deflection(torch.tensor([[3.0]], dtype=F64), torch.zeros(1, 1, dtype=F64))
    assert ax.item() == pytest.approx(math.sqrt(q) * math.atan(f / q) / f, rel=1e-12)


def test_superposition_and_ray_trace():
    x, y = _points()
    lenses = [SIE(1.0, 0.8, 0.2), SIS(0.3, 1.0, 0.5), ExternalShear(0.02, 0.01)]
    bx, by = ray_trace(lenses, x, y)
    sx, sy = x.clone(), y.clone()
    for lens in lenses:
        ax, ay = lens.deflection(x, y)
        sx, sy = sx - ax, sy - ay
    assert torch.allclose(bx, sx) and torch.allclose(by, sy)
    kappa = convergence(lenses, x, y)
    assert torch.allclose(kappa, lenses[0].convergence(x, y) + lenses[1].convergence(x, y))


def test_magnification_of_an_sis_matches_the_analytic_value():
    # images of a source at beta on the axis sit at beta +/- theta_e; mu = r / (r - theta_e)
    r = torch.tensor([[0.4, 1.3, 2.5]], dtype=F64)
    mu = magnification([SIS(1.0)], r, torch.zeros_like(r))
    assert torch.allclose(mu, r / (r - 1.0), rtol=1e-10)


@pytest.mark.parametrize(
    "beta", [(0.3, 0.0), (0.5, 0.2), (1.6, 0.0)], ids=["two-near", "two-off-axis", "one-image"]
)
def test_flux_of_a_small_source_is_magnified_as_the_sis_says(beta):
    # SIS: total magnification 2 theta_e / |beta| inside the cut (two images), 1 + theta_e/|beta|
    # outside it (one image); averaged over the source's light, it is the exact flux ratio
    sg = PixelGrid((64, 64), 0.01, center=beta)
    src = _gaussian_source(sg, beta, 0.03)
    x, y = sg.coordinates()
    r = torch.sqrt(x**2 + y**2)
    mu = torch.where(r < 1.0, 2 / r, 1 + 1 / r)
    expected = float((src * mu).sum() / src.sum())
    op = LensingOperator([SIS(1.0)], sg, PixelGrid((128, 128), 0.05), supersample=4, dtype=F64)
    image = op(src[None])[0]
    ratio = float(image.sum() * 0.05**2 / (src.sum() * 0.01**2))
    assert ratio == pytest.approx(expected, rel=2e-3)


def test_flux_is_conserved_without_a_lens_and_through_the_psf():
    sg = PixelGrid((48, 48), 0.04)
    src = _gaussian_source(sg, (0.1, -0.15), 0.2)
    source_flux = float(src.sum() * 0.04**2)
    for psf in (None, gaussian_psf(0.3, 0.1, dtype=F64)):
        op = LensingOperator([], sg, PixelGrid((40, 40), 0.1), psf=psf, supersample=3, dtype=F64)
        flux = float(op(src[None])[0].sum() * 0.1**2)
        assert flux == pytest.approx(source_flux, rel=1e-3)


def test_operator_is_linear_with_autograd_adjoint():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(24, 24, generator=g) > 0.2
    op = LensingOperator(
        _lenses(),
        PixelGrid((20, 20), 0.1),
        PixelGrid((24, 24), 0.12),
        psf=gaussian_psf(0.2, 0.12, dtype=F64),
        supersample=2,
        mask=mask,
        dtype=F64,
    )
    u, w = torch.randn(2, 3, 20, 20, generator=g, dtype=F64)
    assert torch.allclose(op.observe(2.5 * u - w), 2.5 * op.observe(u) - op.observe(w))
    v = torch.randn(3, 24, 24, generator=g, dtype=F64)
    lhs = (op(u) * v).sum()
    rhs = (u * op.adjoint(v)).sum()
    assert lhs.item() == pytest.approx(rhs.item(), rel=1e-12)
    # second order through the operator (a gradient of a gradient) runs
    x = u.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(op(x).square().sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), x)
    assert torch.allclose(gg, 2 * op.adjoint(op(torch.ones_like(u))))
    # the dense matrix is the same map, on the observed pixels only
    A = op.matrix()
    assert A.shape == (int(mask.sum()), 400)
    assert torch.allclose(u.reshape(3, -1) @ A.T, op.observe(u))
    assert torch.equal(op.unflatten(op.flatten(v))[:, mask], v[:, mask])
    assert torch.isnan(op.unflatten(op.flatten(v))[:, ~mask]).all()


def test_rotating_lens_and_source_by_a_quarter_turn_rotates_the_image():
    sg, ig = PixelGrid((32, 32), 0.06), PixelGrid((40, 40), 0.1)
    g = torch.Generator().manual_seed(1)
    src = torch.rand(1, 32, 32, generator=g, dtype=F64)
    psf = gaussian_psf(0.25, 0.1, dtype=F64)
    lens = SIE(1.0, 0.6, 0.3, 0.1, -0.2)
    shear = ExternalShear(0.04, 0.02)
    # a quarter turn counter-clockwise sends (x, y) to (-y, x): the centre moves, phi grows by
    # pi/2 and the shear's angle too (gamma1, gamma2 -> -gamma1, -gamma2)
    turned = [SIE(1.0, 0.6, 0.3 + math.pi / 2, 0.2, 0.1), ExternalShear(-0.04, -0.02)]

    def quarter(a):
        return torch.rot90(a, 1, dims=(-1, -2))

    image = LensingOperator([lens, shear], sg, ig, psf=psf, supersample=2, dtype=F64)(src)
    image_turned = LensingOperator(turned, sg, ig, psf=psf, supersample=2, dtype=F64)(quarter(src))
    assert torch.allclose(quarter(image), image_turned, atol=1e-6)


def test_a_centred_source_behind_an_sis_gives_a_symmetric_ring():
    sg = PixelGrid((32, 32), 0.03)
    src = _gaussian_source(sg, (0.0, 0.0), 0.08)[None]
    image = LensingOperator([SIS(1.0)], sg, PixelGrid((48, 48), 0.06), supersample=2)(src)[0]
    assert torch.allclose(image, image.T, atol=1e-6)
    assert torch.allclose(image, image.flip(0), atol=1e-6)
    x, y = PixelGrid((48, 48), 0.06).coordinates(dtype=torch.float32)
    r = torch.sqrt(x**2 + y**2)
    assert r[image == image.max()].mean().item() == pytest.approx(1.0, abs=0.06)


def test_batched_lens_parameters_match_one_by_one_and_are_differentiable():
    sg, ig = PixelGrid((24, 24), 0.08), PixelGrid((32, 32), 0.1)
    g = torch.Generator().manual_seed(2)
    src = torch.rand(3, 24, 24, generator=g, dtype=F64)
    theta_e = torch.tensor([0.9, 1.0, 1.1], dtype=F64, requires_grad=True)
    q = torch.tensor([0.6, 0.8, 1.0], dtype=F64)
    op = LensingOperator([], sg, ig, psf=gaussian_psf(0.2, 0.1, dtype=F64), dtype=F64)
    batched = op(src, lenses=[SIE(theta_e, q, 0.2), ExternalShear(0.02, 0.0)])
    for b in range(3):
        one = LensingOperator(
            [SIE(float(theta_e[b].detach()), float(q[b]), 0.2), ExternalShear(0.02, 0.0)],
            sg,
            ig,
            psf=gaussian_psf(0.2, 0.1, dtype=F64),
            dtype=F64,
        )(src[b : b + 1])
        assert torch.allclose(batched[b], one[0], atol=1e-12)
    # gradient in the lens parameters against a central difference
    (grad,) = torch.autograd.grad(batched[1].square().sum(), theta_e)
    h = 1e-5

    def loss(te):
        return op(src[1:2], lenses=[SIE(te, 0.8, 0.2), ExternalShear(0.02, 0.0)]).square().sum()

    numeric = (loss(1.0 + h) - loss(1.0 - h)) / (2 * h)
    assert grad[1].item() == pytest.approx(numeric.item(), rel=1e-4)


def test_gaussian_psf_is_normalised_with_the_right_width():
    psf = gaussian_psf(0.3, 0.05, dtype=F64)
    assert psf.shape[0] % 2 == 1 and psf.sum().item() == pytest.approx(1.0)
    x, _ = PixelGrid(psf.shape, 0.05).coordinates()
    sigma = 0.3 / (2 * math.sqrt(2 * math.log(2)))
    variance = float((psf * x**2).sum())
    # a pixel-integrated Gaussian has variance sigma^2 + pixel^2 / 12
    assert variance == pytest.approx(sigma**2 + 0.05**2 / 12, rel=1e-3)


def test_lens_specs_round_trip():
    lenses = [SIE(1.1, 0.7, 0.3, 0.01, 0.02), ExternalShear(0.01, -0.02), PointMass(0.2, 1.0)]
    again = lenses_from_dicts(lenses_to_dicts(lenses))
    x, y = _points()
    assert torch.allclose(torch.stack(ray_trace(lenses, x, y)), torch.stack(ray_trace(again, x, y)))


def test_bad_inputs_name_the_culprit():
    with pytest.raises(ValueError, match="SIE q"):
        SIE(1.0, 1.5)
    with pytest.raises(ValueError, match="SIE theta_e"):
        SIE(-1.0)
    with pytest.raises(ValueError, match="gamma1"):
        ExternalShear(1.2, 0.0)
    with pytest.raises(ValueError, match="unknown lens kind 'nfw'"):
        lens_from_dict({"kind": "nfw"})
    with pytest.raises(ValueError, match=r"unknown parameters \['radius'\]"):
        lens_from_dict({"kind": "sis", "radius": 1.0})
    with pytest.raises(ValueError, match="odd"):
        LensingOperator([], PixelGrid((8, 8), 0.1), PixelGrid((8, 8), 0.1), psf=torch.ones(4, 4))
    with pytest.raises(ValueError, match="mask"):
        LensingOperator([], PixelGrid((8, 8), 0.1), PixelGrid((8, 8), 0.1), mask=torch.ones(8, 8))
    with pytest.raises(ValueError, match="pixel size"):
        PixelGrid((8, 8), 0.0)
    op = LensingOperator([], PixelGrid((8, 8), 0.1), PixelGrid((6, 6), 0.1))
    with pytest.raises(ValueError, match=r"source must be \(B, 8, 8\)"):
        op(torch.zeros(2, 6, 6))
    with pytest.raises(ValueError, match="NaN"):
        image = torch.zeros(6, 6)
        image[0, 0] = math.nan
        op.observation(image, 0.1)
    with pytest.raises(ValueError, match="noise variance map"):
        op.observation(torch.zeros(6, 6), torch.ones(5, 5))


def test_caustics_gives_the_same_images():
    caustics = pytest.importorskip("caustics")
    sg, ig = PixelGrid((64, 64), 0.05), PixelGrid((64, 64), 0.1)
    src = _gaussian_source(sg, (0.1, -0.05), 0.2) + 0.5 * _gaussian_source(sg, (-0.3, 0.2), 0.07)
    cases = [(None, 1), (gaussian_psf(0.15, 0.1, dtype=F64), 1), (None, 2)]
    # both blur the sub-pixels (a kernel of 13 and one of 15 sub-pixels, which leaves a crop)
    cases += [(gaussian_psf(0.15, 0.05, dtype=F64), 2), (gaussian_psf(0.2, 0.05, dtype=F64), 2)]
    for psf, up in cases:
        ours = LensingOperator(_lenses(), sg, ig, psf=psf, supersample=up, dtype=F64)(src[None])
        cosmology = caustics.FlatLambdaCDM(name="cosmology")
        sie = caustics.SIE(cosmology=cosmology, name="sie", x0=0.05, y0=-0.02, q=0.7, phi=0.4)
        sie.Rein = 1.2
        shear = caustics.ExternalShear(
            cosmology=cosmology, name="shear", x0=0.0, y0=0.0, gamma_1=0.03, gamma_2=-0.02
        )
        lens = caustics.SinglePlane(cosmology=cosmology, lenses=[sie, shear], z_l=0.5, z_s=1.5)
        source = caustics.Pixelated(name="src", image=src, x0=0.0, y0=0.0, pixelscale=0.05)
        options = {} if psf is None else {"psf": psf, "psf_mode": "conv2d"}
        simulator = caustics.LensSource(
            lens=lens, source=source, pixelscale=0.1, pixels_x=64, upsample_factor=up, **options
        )
        theirs = simulator()
        assert torch.allclose(ours[0], theirs.to(F64), atol=1e-5 * float(ours.max()))
