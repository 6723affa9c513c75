"""The simplified exoplanet emission model: physical behaviour that must hold."""

from __future__ import annotations

import torch

from appa.npe import make_problem
from appa.npe.exoplanet import ExoplanetSimulator

SIM = ExoplanetSimulator(wavelengths=64)


def _mid() -> torch.Tensor:
    return ((SIM.prior.low + SIM.prior.high) / 2).float()[None].clone()


def _band(micron: float) -> int:
    return int((SIM.wavelength - micron).abs().argmin())


def test_shapes_finiteness_and_noise():
    task = make_problem("exoplanet")
    theta, x = task.sample_joint(200, seed=0)
    assert theta.shape == (200, 10) and x.shape == (200, 128)
    assert torch.isfinite(x).all()
    clean = task.model.noiseless(theta)
    resid = (x - clean) / task.model.noise_std
    assert abs(float(resid.std()) - 1.0) < 0.05 and abs(float(resid.mean())) < 0.05
    assert (clean >= 0).all()


def test_radius_dilution_and_temperature():
    a, b = _mid(), _mid()
    b[0, 3] = 2 * a[0, 3] if 2 * a[0, 3] <= 2.0 else a[0, 3] / 2
    ratio = SIM.noiseless(b) / SIM.noiseless(a)
    assert torch.allclose(ratio, torch.full_like(ratio, float((b[0, 3] / a[0, 3]) ** 2)), rtol=1e-4)
    hot = _mid()
    hot[0, 0] += 500
    assert (SIM.noiseless(hot) > SIM.noiseless(_mid())).all()


def test_absorbers_carve_their_bands_and_clouds_mute_them():
    base = _mid()
    base[0, 4:9] = -8.0  # almost no absorbers
    base[0, 1] = 0.5  # cooler upper atmosphere: absorption bands appear dark
    base[0, 9] = 2.0  # cloud deck at the bottom
    clear = SIM.noiseless(base)[0]
    for j, band, far in [(4, 2.7, 2.2), (5, 3.3, 1.05), (8, 4.3, 3.7)]:  # H2O, CH4, CO2
        t = base.clone()
        t[0, j] = -3.0
        ratio = SIM.noiseless(t)[0] / clear
        assert ratio[_band(band)] < 0.8, (j, band)
        # away from the molecule's bands the spectrum moves much less
        assert ratio[_band(far)] > ratio[_band(band)] + 0.15, (j, far)
    wet = base.clone()
    wet[0, 4] = -3.0
    cloudy = wet.clone()
    cloudy[0, 9] = -3.0  # grey deck high up: flat, featureless
    depth = lambda s: float(1 - s[_band(2.7)] / s[_band(2.2)])  # noqa: E731
    assert depth(SIM.noiseless(cloudy)[0]) < 0.5 * depth(SIM.noiseless(wet)[0])


def test_rejects_wrong_parameter_count():
    try:
        SIM.noiseless(torch.zeros(3, 9))
    except ValueError as error:
        assert "(B, 10)" in str(error)
    else:
        raise AssertionError("expected a ValueError")
