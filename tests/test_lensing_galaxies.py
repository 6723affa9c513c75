"""appa.lensing.galaxies: the procedural galaxy generator, its Zarr stores and the morphology
statistics the prior's quality checks use."""

import math

import pytest
import torch

from appa.lensing.galaxies import (
    PARAMETERS,
    adaptive_moments,
    background_rms,
    ellipticity,
    generate_galaxies,
    half_light_radius,
    morphology,
    radial_profile,
    read_galaxies,
    write_galaxies,
)


@pytest.fixture(scope="module")
def galaxies():
    return generate_galaxies(96, seed=3, batch=48)


def _gaussian(q=1.0, sigma=4.0, angle=0.0, size=64):
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    y, x = torch.meshgrid(t, t, indexing="ij")
    u = math.cos(angle) * x + math.sin(angle) * y
    v = -math.sin(angle) * x + math.cos(angle) * y
    return torch.exp(-(u**2 + (v / q) ** 2) / (2 * sigma**2))[None]


def test_galaxies_are_reproducible_positive_and_fade_at_the_border(galaxies):
    images, params = galaxies
    again, _ = generate_galaxies(96, seed=3, batch=48)
    assert torch.equal(images, again)
    other, _ = generate_galaxies(8, seed=4, batch=48)
    assert not torch.allclose(images[:8], other)
    assert images.shape == (96, 64, 64) and images.dtype == torch.float32
    assert torch.isfinite(images).all() and (images >= 0).all()
    border = torch.cat([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]], 1)
    assert border.abs().max() < 1e-6 * images.max()
    assert set(params) == set(PARAMETERS)
    # the taper only trims far wings: the stamps keep nearly all of the drawn flux
    kept = images.double().flatten(1).sum(1) / params["flux"]
    assert kept.median() > 0.97 and kept.min() > 0.8 and kept.max() < 1.001


def test_galaxies_are_diverse_not_a_template(galaxies):
    images, params = galaxies
    stats = morphology(images)
    shapes = stats["ellipticity"][torch.isfinite(stats["ellipticity"])]
    # a few bulge-dominated stamps lock the adaptive weight onto their cusp: no shape
    assert shapes.numel() > 0.85 * len(images) and shapes.std() > 0.15
    assert stats["half_light_radius"].max() > 2 * stats["half_light_radius"].min()
    assert (params["arms"] > 0).any() and (params["bar_fraction"] > 0).any()
    assert (params["clumps"] > 0).any() and (params["companion_fraction"] > 0).any()
    assert (params["bulge_fraction"] == 1).any()  # some pure spheroids
    # no two stamps are near copies of each other
    flat = images.flatten(1).double()
    flat = (flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True)
    correlation = flat @ flat.T / flat.shape[1]
    correlation.fill_diagonal_(0)
    assert correlation.max() < 0.97


def test_morphology_statistics_on_analytic_profiles():
    round_, flat = _gaussian(), _gaussian(q=0.5, angle=0.7)
    assert ellipticity(round_).item() == pytest.approx(0.0, abs=1e-9)
    # the adaptive moments of an elliptical Gaussian are its covariance: |e| = (1-q^2)/(1+q^2)
    assert ellipticity(flat).item() == pytest.approx(0.6, abs=1e-4)
    # a circular Gaussian holds half its light within sigma sqrt(2 ln 2)
    assert half_light_radius(round_).item() == pytest.approx(4 * math.sqrt(2 * math.log(2)), 0.05)
    profile = radial_profile(round_, bins=8)
    assert profile.shape == (1, 8) and (profile[0, 1:] < profile[0, :-1]).all()


def test_zarr_store_round_trip_and_errors(tmp_path, galaxies):
    path = write_galaxies(tmp_path / "galaxies.zarr", 10, seed=3, batch=48, pixel=0.05)
    images, params, attrs = read_galaxies(path, 2, 6)
    expected, _ = generate_galaxies(10, seed=3, batch=48)
    assert torch.equal(images, expected[2:6])
    assert params["flux"].shape == (4,) and attrs["pixel"] == 0.05 and attrs["seed"] == 3
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no half-written stores
    with pytest.raises(ValueError, match=r"\[5, 20\) out of range; it holds 10"):
        read_galaxies(path, 5, 20)
    with pytest.raises(FileNotFoundError, match="galaxy store not found"):
        read_galaxies(tmp_path / "missing.zarr")
    with pytest.raises(ValueError, match="at least one galaxy"):
        generate_galaxies(0, seed=1)


def _shifted_gaussian(q, sigma, angle, dx, dy, size=64):
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    y, x = torch.meshgrid(t - dy, t - dx, indexing="ij")
    u = math.cos(angle) * x + math.sin(angle) * y
    v = -math.sin(angle) * x + math.cos(angle) * y
    return torch.exp(-(u**2 + (v / q) ** 2) / (2 * sigma**2))


def test_adaptive_moments_recover_a_gaussians_centre_and_covariance():
    q, sigma, angle = 0.4, 3.0, 0.5
    image = _shifted_gaussian(q, sigma, angle, dx=2.3, dy=-1.7)[None]
    centroid, moments, converged = adaptive_moments(image)
    assert bool(converged.all())
    assert centroid[0].tolist() == pytest.approx([2.3, -1.7], abs=1e-6)
    c, s = math.cos(angle), math.sin(angle)
    major, minor = sigma**2, (q * sigma) ** 2
    mxx, myy = c * c * major + s * s * minor, s * s * major + c * c * minor
    expected = [mxx, myy, c * s * (major - minor)]
    assert moments[0].tolist() == pytest.approx(expected, rel=1e-5)
    # no light: NaN moments, not a shape
    _, empty, ok = adaptive_moments(torch.zeros(1, 16, 16))
    assert torch.isnan(empty).all() and not bool(ok.any())


def test_shapes_and_sizes_ignore_background_noise_that_unweighted_moments_see(galaxies):
    """Residual background of 1 % of the stamps' pixel std (a prior draw's texture) leaves the
    measured shapes and sizes where they were; unweighted second moments made galaxies rounder
    by a sixth at this level."""
    images, _ = galaxies
    g = torch.Generator().manual_seed(0)
    noisy = images + 0.01 * images.std() * torch.randn(images.shape, generator=g)
    clean, dirty = morphology(images), morphology(noisy)
    for key in ("ellipticity", "half_light_radius"):
        both = torch.isfinite(dirty[key]) & torch.isfinite(clean[key])
        assert both.sum() > 0.85 * len(images)
        shift = (dirty[key] - clean[key])[both].abs().median() / clean[key][both].abs().median()
        assert shift < 0.02, (key, float(shift))
    assert background_rms(images).max() < 1e-9 * images.std()
    # moments measured once and handed on give the same statistics and profiles
    measured = adaptive_moments(images)
    for key, value in morphology(images, measured).items():
        assert torch.equal(value.nan_to_num(-1), clean[key].nan_to_num(-1)), key
    assert torch.equal(radial_profile(images, centroid=measured[0]), radial_profile(images))
    assert background_rms(noisy).median() == pytest.approx(0.01 * float(images.std()), rel=0.1)


def test_adaptive_moments_agree_with_galsim_hsm(galaxies):
    """The same fixed point as GalSim's HSM from the same start, on the generator's stamps
    (companions and clumps included); HSM's own tolerance leaves a few 1e-3."""
    galsim = pytest.importorskip("galsim")
    images, _ = galaxies
    ours = ellipticity(images)
    theirs = []
    for image in images.double().numpy():
        shape = galsim.hsm.FindAdaptiveMom(galsim.Image(image, scale=1.0), strict=False)
        theirs.append(shape.observed_shape.e if shape.moments_status == 0 else float("nan"))
    theirs = torch.tensor(theirs, dtype=torch.float64)
    ok = torch.isfinite(theirs)
    assert ok.sum() >= 0.9 * len(images)
    difference = (ours[ok] - theirs[ok]).abs()
    assert difference.max() < 5e-3
    assert (difference < 1e-4).float().mean() > 0.95
