"""A simplified emission-spectrum simulator for a gas-giant or brown-dwarf atmosphere.

Ten parameters (box-uniform prior):

=================  ===============  ==================================================
name               range            meaning
=================  ===============  ==================================================
``t_deep``         800 - 2500 K     temperature at the bottom of the grid (100 bar)
``t_ratio``        0.3 - 1.0        top-to-bottom temperature ratio (no inversions)
``log_g``          3.0 - 5.5        log10 surface gravity (cgs)
``radius``         0.6 - 2.0 R_Jup  planet radius (sets the dilution (R / d)^2)
``log_h2o`` ...    -8 - -2          log10 volume mixing ratios of H2O, CH4, NH3, CO, CO2
``log_p_cloud``    -3 - 2           log10 pressure (bar) of the top of a grey cloud deck
=================  ===============  ==================================================

What it computes, and what it leaves out (honestly: a toy with the right structure, not a
retrieval code):

- 40 layers log-spaced from 1e-5 to 100 bar; temperature linear in ``log P`` between
  ``t_ratio * t_deep`` at the top and ``t_deep`` at the bottom.
- Uniform abundances in a H2/He atmosphere (mean molecular mass 2.3); hydrostatic equilibrium,
  so the molecular optical depth above pressure ``P`` is ``sum_m sigma_m(lambda) X_m P /
  (mu m_u g)``, in closed form.
- Cross sections are sums of Gaussian bands at the positions of the main vibrational bands of
  each molecule between 0.9 and 5 microns, with rough strengths; no line lists, no temperature
  or pressure dependence of cross sections, no chemistry linking the abundances.
- H2-H2 collision-induced absorption, proportional to ``P^2 / g``, with a bump at 2.3 microns.
- A grey cloud deck whose optical depth grows as ``(P / P_cloud)^4``.
- Emission by a two-stream (two-point Gauss-Legendre in ``mu``) formal solution of the Planck
  source function over the layers, no scattering; the flux at 10 pc is
  ``pi F (R / d)^2``, reported in units of 1e-17 W m^-2 um^-1 on 128 log-spaced wavelength
  bins from 0.9 to 5 microns.
- Noise: independent Gaussian per bin with a fixed standard deviation (``noise_std``: 5% of a
  mid-prior spectrum plus a floor), as for a fixed instrument and exposure.

10^5 noiseless spectra take well under a minute on one CPU core.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from appa.npe.priors import BoxUniform

__all__ = ["ExoplanetSimulator", "plot_posterior_predictive"]

PARAMETERS = [
    ("t_deep", 800.0, 2500.0),
    ("t_ratio", 0.3, 1.0),
    ("log_g", 3.0, 5.5),
    ("radius", 0.6, 2.0),
    ("log_h2o", -8.0, -2.0),
    ("log_ch4", -8.0, -2.0),
    ("log_nh3", -8.0, -2.0),
    ("log_co", -8.0, -2.0),
    ("log_co2", -8.0, -2.0),
    ("log_p_cloud", -3.0, 2.0),
]

# (centre um, width um, peak cross section m^2/molecule): rough main bands in 0.9-5 um
BANDS: dict[str, list[tuple[float, float, float]]] = {
    "h2o": [
        (0.94, 0.03, 2e-27),
        (1.14, 0.04, 8e-27),
        (1.38, 0.06, 4e-26),
        (1.87, 0.08, 6e-26),
        (2.7, 0.15, 3e-25),
        (4.7, 0.6, 2e-26),
    ],
    "ch4": [
        (1.15, 0.03, 3e-27),
        (1.67, 0.05, 2e-26),
        (2.2, 0.08, 3e-26),
        (2.32, 0.06, 8e-26),
        (3.31, 0.12, 5e-25),
    ],
    "nh3": [(1.5, 0.06, 1e-26), (2.0, 0.06, 2e-26), (2.25, 0.05, 1e-26), (3.0, 0.12, 3e-25)],
    "co": [(1.57, 0.02, 2e-28), (2.35, 0.06, 6e-27), (4.67, 0.12, 6e-25)],
    "co2": [(1.6, 0.02, 1e-27), (2.0, 0.03, 1e-26), (2.7, 0.05, 1e-25), (4.3, 0.08, 4e-24)],
}
MOLECULES = ["h2o", "ch4", "nh3", "co", "co2"]

_H, _C, _KB = 6.62607015e-34, 2.99792458e8, 1.380649e-23
_AMU, _MU = 1.66053907e-27, 2.3
_RJUP, _PC = 7.1492e7, 3.0857e16
_FLUX_UNIT = 1e-17  # W m^-2 um^-1


class ExoplanetSimulator:
    """The simplified emission model; see the module docstring for its physics.

    Arguments:
        wavelengths: Number of log-spaced wavelength bins in [0.9, 5] um.
        layers: Number of pressure levels in [1e-5, 100] bar.
        relative_noise: Noise std as a fraction of the mid-prior spectrum.
    """

    def __init__(self, wavelengths: int = 128, layers: int = 40, relative_noise: float = 0.05):
        self.wavelength = torch.logspace(
            math.log10(0.9), math.log10(5.0), wavelengths, dtype=torch.float64
        )
        self.pressure_bar = torch.logspace(-5, 2, layers, dtype=torch.float64)
        lam = self.wavelength[:, None]
        sigma = []
        for m in MOLECULES:
            s = sum(p * torch.exp(-0.5 * ((lam - c) / w) ** 2) for c, w, p in BANDS[m])
            sigma.append(s[:, 0])
        self.cross_sections = torch.stack(sigma)  # (molecules, wavelengths) m^2
        # CIA coefficient so that tau ~ 1 near 3 bar for g = 25 m/s^2, bump at 2.3 um
        self.cia = 2.5e-10 * (1 + 2 * torch.exp(-0.5 * ((self.wavelength - 2.3) / 0.3) ** 2))
        self.prior = BoxUniform([p[1] for p in PARAMETERS], [p[2] for p in PARAMETERS])
        self.names = [p[0] for p in PARAMETERS]
        mid = ((self.prior.low + self.prior.high) / 2).float()[None]
        reference = self.noiseless(mid)[0]
        self.noise_std = (relative_noise * reference + 0.01 * reference.mean()).float()

    def noiseless(self, theta: Tensor, chunk: int = 4096) -> Tensor:
        """Spectra ``(B, wavelengths)`` for parameters ``(B, 10)``, in 1e-17 W m^-2 um^-1."""
        if theta.ndim != 2 or theta.shape[1] != len(PARAMETERS):
            raise ValueError(f"theta must be (B, {len(PARAMETERS)}), got {tuple(theta.shape)}")
        return torch.cat([self._spectra(t.double()) for t in theta.split(chunk)]).float()

    def _spectra(self, theta: Tensor) -> Tensor:
        t_deep, t_ratio, log_g, radius = theta[:, 0], theta[:, 1], theta[:, 2], theta[:, 3]
        vmr = 10.0 ** theta[:, 4:9]  # (B, 5)
        p_cloud = 10.0 ** theta[:, 9] * 1e5  # Pa
        g = 10.0**log_g / 100.0  # m/s^2
        P = self.pressure_bar * 1e5  # (L,) Pa
        logp = self.pressure_bar.log10()
        frac = (logp - logp[0]) / (logp[-1] - logp[0])  # 0 at top, 1 at bottom
        T = t_deep[:, None] * (t_ratio[:, None] + (1 - t_ratio[:, None]) * frac)  # (B, L)
        # optical depth at each level, (B, W, L); the big arrays are float32 (enough for a
        # spectrum with 5% noise, and twice as fast), coefficients are formed in float64
        kappa_mol = (vmr @ self.cross_sections / (_MU * _AMU * g[:, None])).float()  # per Pa
        P32 = P.float()
        tau = kappa_mol[:, :, None] * P32
        tau = tau + (self.cia[None, :, None] / g[:, None, None]).float() * (P32**2)
        tau = tau + ((P[None] / p_cloud[:, None]) ** 4).float()[:, None, :]
        # Planck B_lambda(T) at level temperatures, W m^-2 m^-1 sr^-1: (B, W, L)
        lam = self.wavelength.float()[None, :, None] * 1e-6
        x = (_H * _C / _KB) / (lam * T.float()[:, None, :])
        planck = (2 * _H * _C**2) / lam**5 / torch.expm1(x.clamp(max=80))
        layer_source = 0.5 * (planck[..., :-1] + planck[..., 1:])
        flux = torch.zeros(theta.shape[0], self.wavelength.numel(), dtype=torch.float32)
        for mu, weight in ((0.2113248654, 0.5), (0.7886751346, 0.5)):
            trans = torch.exp(-tau / mu)  # (B, W, L): transmission from each level to space
            # layer i between levels i and i+1 emits B(mean T) (trans_i - trans_{i+1})
            intensity = (layer_source * (trans[..., :-1] - trans[..., 1:])).sum(dim=-1)
            intensity = intensity + planck[..., -1] * trans[..., -1]  # bottom boundary
            # F = 2 pi int mu I dmu, two-point Gauss-Legendre on [0, 1]
            flux = flux + 2 * math.pi * weight * mu * intensity
        flux = flux.double()
        dilution = (radius * _RJUP / (10 * _PC)) ** 2
        return flux * dilution[:, None] * 1e-6 / _FLUX_UNIT

    def simulate(self, theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Noisy spectra ``(B, wavelengths)``."""
        clean = self.noiseless(theta)
        return clean + self.noise_std * torch.randn(clean.shape, generator=generator)


def plot_posterior_predictive(
    model: ExoplanetSimulator, x_obs: Tensor, samples: Tensor, path, truth: Tensor | None = None
):
    """Posterior predictive check: noiseless spectra of posterior draws (median and 5-95%
    band, plus the band widened by the noise) against the observed spectrum."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spectra = model.noiseless(samples)
    noisy = spectra + model.noise_std * torch.randn(spectra.shape)
    q = torch.quantile(spectra, torch.tensor([0.05, 0.5, 0.95]), dim=0)
    qn = torch.quantile(noisy, torch.tensor([0.05, 0.95]), dim=0)
    lam = model.wavelength.numpy()
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.fill_between(
        lam, qn[0], qn[1], color="tab:blue", alpha=0.15, label="90% predictive (with noise)"
    )
    ax.fill_between(lam, q[0], q[2], color="tab:blue", alpha=0.35, label="90% of model spectra")
    ax.plot(lam, q[1], color="tab:blue", lw=1, label="median model spectrum")
    ax.errorbar(
        lam,
        x_obs.numpy(),
        yerr=model.noise_std.numpy(),
        fmt=".",
        ms=3,
        color="k",
        elinewidth=0.5,
        label="observed",
    )
    if truth is not None:
        ax.plot(lam, model.noiseless(truth[None])[0], "r--", lw=0.8, label="true noiseless")
    ax.set_xlabel("wavelength (micron)")
    ax.set_ylabel("flux at 10 pc (1e-17 W m^-2 um^-1)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    inside = ((x_obs >= qn[0]) & (x_obs <= qn[1])).double().mean()
    return float(inside)
