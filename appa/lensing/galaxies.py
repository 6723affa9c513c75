"""A procedural generator of galaxy stamps (one band, noise-free) and their morphology statistics.

Each stamp is a main galaxy plus, sometimes, a small companion:

- a Sersic bulge (index 1.5-5) and an exponential disc of random sizes, inclinations and
  orientations; about one galaxy in seven is a pure spheroid (no disc);
- discs carry a multiplicative texture (a smoothed log-normal random field: flocculent, lopsided
  light), and often spiral arms (1-3 logarithmic arms of random pitch, width and contrast), a
  Ferrers bar, and star-forming clumps strewn along the arms;
- a companion is a compact Sersic at 12-24 pixels from the centre.

``flux`` is the stamp's total (before the border fade): the companion takes
``companion_fraction`` of it, the main galaxy the rest.

Profiles are integrated over each pixel by oversampling; the stamp fades smoothly to zero at its
border (a source that leaves the source-plane grid would be cut by the lensing operator).
Fluxes are in arbitrary units of surface brightness times pixel area: a stamp's flux is the sum
of its pixels. Parameters are drawn from one ``torch.Generator``, so a seed fixes a data set.

Data sets are Zarr stores (xarray): ``image`` ``(galaxy, y, x)`` float32 and one variable per
drawn parameter along ``galaxy``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from appa.files import PRODUCT_ATTR, written_whole

__all__ = [
    "PARAMETERS",
    "adaptive_moments",
    "background_rms",
    "ellipticity",
    "generate_galaxies",
    "half_light_radius",
    "morphology",
    "radial_profile",
    "read_galaxies",
    "render_galaxies",
    "sample_galaxy_parameters",
    "write_galaxies",
]

# The drawn parameters (per galaxy), stored beside the images.
PARAMETERS = (
    "flux",
    "x0",
    "y0",
    "bulge_fraction",
    "bulge_n",
    "bulge_re",
    "bulge_q",
    "disc_scale",
    "disc_q",
    "angle",
    "arms",
    "arm_pitch",
    "arm_contrast",
    "arm_width",
    "arm_phase",
    "bar_fraction",
    "bar_length",
    "bar_q",
    "bar_angle",
    "clumps",
    "texture",
    "texture_scale",
    "companion_fraction",
    "companion_distance",
    "companion_angle",
    "companion_re",
    "companion_n",
    "companion_q",
)
_MAX_CLUMPS = 8


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=g, dtype=torch.float64)


def _log_uniform(n: int, low: float, high: float, g: torch.Generator) -> Tensor:
    return _uniform(n, math.log(low), math.log(high), g).exp()


def sample_galaxy_parameters(n: int, generator: torch.Generator) -> dict[str, Tensor]:
    """Draws the parameters of ``n`` galaxies: a dict of ``(n,)`` float64 tensors (names in
    :data:`PARAMETERS`; sizes and positions in pixels, angles in radians)."""
    g = generator
    p: dict[str, Tensor] = {}
    spheroid = torch.rand(n, generator=g) < 0.15
    p["flux"] = torch.exp(math.log(200.0) + 0.4 * torch.randn(n, generator=g, dtype=torch.float64))
    p["x0"] = (torch.randn(n, generator=g, dtype=torch.float64)).clamp(-3, 3)
    p["y0"] = (torch.randn(n, generator=g, dtype=torch.float64)).clamp(-3, 3)
    p["disc_scale"] = _log_uniform(n, 3.5, 9.0, g)
    cos_i = _uniform(n, 0.15, 1.0, g)
    p["disc_q"] = torch.sqrt(cos_i**2 * (1 - 0.15**2) + 0.15**2)  # intrinsic thickness 0.15
    p["angle"] = _uniform(n, 0.0, math.pi, g)
    p["bulge_fraction"] = torch.where(
        spheroid, torch.ones(n, dtype=torch.float64), _uniform(n, 0.0, 0.5, g) ** 1.5
    )
    p["bulge_n"] = _uniform(n, 1.5, 4.0, g)
    p["bulge_re"] = torch.where(
        spheroid, _log_uniform(n, 4.0, 11.0, g), p["disc_scale"] * _uniform(n, 0.25, 0.6, g)
    )
    p["bulge_q"] = torch.where(spheroid, _uniform(n, 0.35, 1.0, g), _uniform(n, 0.65, 1.0, g))
    has_arms = (~spheroid) & (torch.rand(n, generator=g) < 0.65)
    arms = torch.multinomial(torch.tensor([0.15, 0.7, 0.15]), n, replacement=True, generator=g) + 1
    p["arms"] = torch.where(has_arms, arms, torch.zeros_like(arms)).double()
    # the sign of the pitch is the arms' handedness: both occur, so mirror images are as likely
    handedness = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).double()
    p["arm_pitch"] = handedness * _uniform(n, math.radians(10), math.radians(35), g)
    p["arm_contrast"] = _uniform(n, 0.3, 0.95, g)
    p["arm_width"] = _uniform(n, 1.0, 4.0, g)
    p["arm_phase"] = _uniform(n, 0.0, 2 * math.pi, g)
    has_bar = (~spheroid) & (torch.rand(n, generator=g) < 0.3)
    p["bar_fraction"] = torch.where(has_bar, _uniform(n, 0.05, 0.25, g), torch.zeros(n).double())
    p["bar_length"] = p["disc_scale"] * _uniform(n, 0.8, 2.0, g)
    p["bar_q"] = _uniform(n, 0.2, 0.45, g)
    p["bar_angle"] = _uniform(n, 0.0, math.pi, g)
    rate = _uniform(n, 0.0, 6.0, g)
    clumps = torch.poisson(rate.float(), generator=g).clamp(max=_MAX_CLUMPS).double()
    p["clumps"] = torch.where(spheroid, torch.zeros_like(clumps), clumps)
    p["texture"] = torch.where(spheroid, torch.zeros(n).double(), _uniform(n, 0.0, 0.6, g))
    p["texture_scale"] = _uniform(n, 0.8, 3.0, g)
    has_companion = torch.rand(n, generator=g) < 0.3
    p["companion_fraction"] = torch.where(
        has_companion, _uniform(n, 0.04, 0.3, g), torch.zeros(n).double()
    )
    p["companion_distance"] = _uniform(n, 12.0, 24.0, g)
    p["companion_angle"] = _uniform(n, 0.0, 2 * math.pi, g)
    p["companion_re"] = _log_uniform(n, 1.0, 3.5, g)
    p["companion_n"] = _uniform(n, 0.8, 2.5, g)
    p["companion_q"] = _uniform(n, 0.4, 1.0, g)
    return p


def _sersic_b(n: Tensor) -> Tensor:
    # Ciotti & Bertin (1999) asymptotic expansion; better than 1e-4 for n > 0.36
    return 2 * n - 1 / 3 + 4 / (405 * n) + 46 / (25515 * n**2)


def _sersic(u: Tensor, v: Tensor, re: Tensor, n: Tensor, q: Tensor) -> Tensor:
    r = torch.sqrt(u**2 + (v / q) ** 2 + 1e-12) / re
    return torch.exp(-_sersic_b(n) * (r ** (1 / n) - 1))


def _normalised(image: Tensor) -> Tensor:
    total = image.flatten(1).sum(1).clamp_min(1e-30)
    return image / total[:, None, None]


def _smooth_field(n: int, size: int, scale: Tensor, g: torch.Generator) -> Tensor:
    """Unit-variance Gaussian random fields ``(n, size, size)`` smoothed with a Gaussian of
    standard deviation ``scale`` pixels (one per field)."""
    noise = torch.randn(n, size, size, generator=g, dtype=torch.float64)
    k = torch.fft.fftfreq(size, dtype=torch.float64)
    k2 = k[:, None] ** 2 + k[None, : size // 2 + 1] ** 2
    transfer = torch.exp(-2 * math.pi**2 * scale[:, None, None] ** 2 * k2)
    field = torch.fft.irfft2(torch.fft.rfft2(noise) * transfer, s=(size, size))
    return field / field.flatten(1).std(1)[:, None, None]


def render_galaxies(
    params: dict[str, Tensor], size: int = 64, oversample: int = 2, seed: int = 0
) -> Tensor:
    """Renders galaxies from :func:`sample_galaxy_parameters`: ``(n, size, size)`` float32.

    Arguments:
        params: ``(n,)`` parameter tensors.
        size: Stamp width in pixels (positions are relative to its centre).
        oversample: Sub-pixels per pixel along each axis (profiles are averaged over them).
        seed: Seed of the random parts that are not parameters (texture fields, clump places).
    """
    if size < 16 or oversample < 1:
        raise ValueError(f"need size >= 16 and oversample >= 1, got {size}, {oversample}")
    missing = [k for k in PARAMETERS if k not in params]
    if missing:
        raise ValueError(f"galaxy parameters missing: {missing}")
    g = torch.Generator().manual_seed(seed)
    p = {k: v.to(torch.float64)[:, None, None] for k, v in params.items()}
    n = params["flux"].shape[0]
    fine = size * oversample
    t = (torch.arange(fine, dtype=torch.float64) - (fine - 1) / 2) / oversample
    Y, X = torch.meshgrid(t, t, indexing="ij")
    X, Y = X[None], Y[None]

    # main galaxy frame: u along the major axis of the disc
    c, s = torch.cos(p["angle"]), torch.sin(p["angle"])
    dx, dy = X - p["x0"], Y - p["y0"]
    u, v = c * dx + s * dy, -s * dx + c * dy

    bulge = _normalised(_sersic(u, v, p["bulge_re"], p["bulge_n"], p["bulge_q"]))

    # the disc in its own plane: deproject the minor axis
    w = v / p["disc_q"]
    r = torch.sqrt(u**2 + w**2 + 1e-12)
    phi = torch.atan2(w, u)
    disc = torch.exp(-r / p["disc_scale"])
    arm_phase = phi - torch.log(r / p["disc_scale"] + 1e-6) / torch.tan(p["arm_pitch"])
    pattern = ((1 + torch.cos(p["arms"] * arm_phase + p["arm_phase"])) / 2) ** p["arm_width"]
    # arms fade in over the inner disc, where the bulge and bar dominate
    contrast = p["arm_contrast"] * (1 - torch.exp(-((r / p["disc_scale"]) ** 2)))
    has_arms = (p["arms"] > 0).double()
    disc = disc * (1 - has_arms * contrast * (1 - pattern))
    texture = _smooth_field(n, size, params["texture_scale"].double(), g)
    texture = torch.nn.functional.interpolate(
        texture[:, None], size=(fine, fine), mode="bilinear", align_corners=False
    )[:, 0]
    disc = disc * torch.exp(p["texture"] * texture - p["texture"] ** 2 / 2)
    disc = _normalised(disc)

    cb, sb = torch.cos(p["bar_angle"]), torch.sin(p["bar_angle"])
    ub, wb = cb * u + sb * w, -sb * u + cb * w
    bar_r2 = (ub**2 + (wb / p["bar_q"]) ** 2) / p["bar_length"] ** 2
    bar = _normalised((1 - bar_r2).clamp_min(0) ** 2 + 1e-30)

    clumps = torch.zeros_like(disc)
    counts = params["clumps"].long()
    for k in range(_MAX_CLUMPS):
        active = (counts > k).double()[:, None, None]
        # radius from the disc's r e^(-r/h) distribution; angle on an arm when there are arms
        gamma2 = -torch.log(torch.rand(2, n, generator=g, dtype=torch.float64)).sum(0)
        radius = p["disc_scale"] * gamma2.clamp(max=3.5)[:, None, None]
        arm = torch.randint(0, 3, (n,), generator=g)[:, None, None].double()
        jitter = 0.35 * torch.randn(n, generator=g, dtype=torch.float64)[:, None, None]
        free = 2 * math.pi * torch.rand(n, generator=g, dtype=torch.float64)[:, None, None]
        arms_count = p["arms"].clamp_min(1)
        on_arm = (
            torch.log(radius / p["disc_scale"] + 1e-6) / torch.tan(p["arm_pitch"])
            + (2 * math.pi * arm - p["arm_phase"]) / arms_count
            + jitter
        )
        angle = torch.where(p["arms"] > 0, on_arm, free)
        cu, cw = radius * torch.cos(angle), radius * torch.sin(angle)
        width = 0.6 + 0.9 * torch.rand(n, generator=g, dtype=torch.float64)[:, None, None]
        share = 0.005 + 0.025 * torch.rand(n, generator=g, dtype=torch.float64)[:, None, None]
        # the clump is round on the sky: its sky offset is the disc-plane offset projected
        du = u - cu
        dv = v - cw * p["disc_q"]
        blob = torch.exp(-(du**2 + dv**2) / (2 * width**2)) / (2 * math.pi * width**2)
        clumps = clumps + active * share * blob / oversample**2

    bt, bar_f = p["bulge_fraction"], p["bar_fraction"]
    disc_share = (1 - bt) * (1 - bar_f)
    main = _normalised(
        bt * bulge + disc_share * disc + (1 - bt) * bar_f * bar + disc_share * clumps
    )

    ca, sa = torch.cos(p["companion_angle"]), torch.sin(p["companion_angle"])
    cx = p["x0"] + p["companion_distance"] * ca
    cy = p["y0"] + p["companion_distance"] * sa
    cu_, cv_ = X - cx, Y - cy
    companion = _normalised(
        _sersic(
            ca * cu_ + sa * cv_,
            -sa * cu_ + ca * cv_,
            p["companion_re"],
            p["companion_n"],
            p["companion_q"],
        )
    )
    cf = p["companion_fraction"]
    image = p["flux"] * ((1 - cf) * main + cf * companion)

    # smooth fade to zero at the border: cos^2 taper between 0.78 and 0.97 of the half-width
    R = torch.sqrt(X**2 + Y**2) / (size / 2)
    ramp = ((R - 0.78) / (0.97 - 0.78)).clamp(0, 1)
    image = image * torch.cos(ramp * math.pi / 2) ** 2
    # components sum to one over the fine grid: the pooled sum keeps the flux
    image = torch.nn.functional.avg_pool2d(image[:, None], oversample)[:, 0] * oversample**2
    return image.float()


def generate_galaxies(
    n: int, seed: int, size: int = 64, oversample: int = 2, batch: int = 256
) -> tuple[Tensor, dict[str, Tensor]]:
    """``n`` galaxy stamps ``(n, size, size)`` float32 and their ``(n,)`` parameters, the same for
    the same ``seed`` and ``batch`` (each batch draws from its own seed derived from both)."""
    if n < 1:
        raise ValueError(f"need at least one galaxy, got n={n}")
    images, params = [], []
    for start in range(0, n, batch):
        count = min(batch, n - start)
        g = torch.Generator().manual_seed(seed * 1_000_003 + start)
        drawn = sample_galaxy_parameters(count, g)
        images.append(render_galaxies(drawn, size, oversample, seed=seed * 1_000_003 + start + 1))
        params.append(drawn)
    return torch.cat(images), {k: torch.cat([d[k] for d in params]) for k in params[0]}


def write_galaxies(
    path: str | Path,
    n: int,
    seed: int,
    size: int = 64,
    oversample: int = 2,
    pixel: float | None = None,
    batch: int = 256,
) -> Path:
    """Generates ``n`` galaxies and writes them whole as a Zarr store (xarray): ``image``
    ``(galaxy, y, x)`` float32 chunked by ``batch``, one ``(galaxy,)`` variable per parameter,
    and the generator's settings as attributes (``pixel``: the source-plane pixel size in arcsec
    that the stamps are meant for, if given)."""
    import xarray as xr

    images, params = generate_galaxies(n, seed, size, oversample, batch)
    data = {"image": (("galaxy", "y", "x"), images.numpy())}
    data.update({k: (("galaxy",), v.numpy()) for k, v in params.items()})
    attrs = {
        "generator": "appa.lensing.galaxies",
        PRODUCT_ATTR: "galaxies",
        "seed": int(seed),
        "size": int(size),
        "oversample": int(oversample),
        "batch": int(batch),
        "units": "surface brightness x pixel area (a stamp's flux is the sum of its pixels)",
    }
    if pixel is not None:
        attrs["pixel"] = float(pixel)
    dataset = xr.Dataset(data, attrs=attrs)
    encoding = {"image": {"chunks": (min(batch, n), size, size)}}
    path = Path(path)
    # replaces a galaxy store, never anything else
    with written_whole(path, "galaxies", overwrite=True) as tmp:
        dataset.to_zarr(tmp, mode="w", encoding=encoding, zarr_format=2, consolidated=True)
    return path


def read_galaxies(
    path: str | Path, start: int = 0, stop: int | None = None
) -> tuple[Tensor, dict[str, Tensor], dict]:
    """Reads galaxies ``[start, stop)`` of a store written by :func:`write_galaxies`: images
    ``(n, size, size)`` float32, ``(n,)`` parameters and the store's attributes."""
    import xarray as xr

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"galaxy store not found: {path}")
    with xr.open_zarr(path) as dataset:
        if "image" not in dataset:
            raise ValueError(f"{path}: not a galaxy store (no 'image' variable)")
        total = dataset.sizes["galaxy"]
        stop = total if stop is None else stop
        if not 0 <= start < stop <= total:
            raise ValueError(f"{path}: galaxies [{start}, {stop}) out of range; it holds {total}")
        part = dataset.isel(galaxy=slice(start, stop)).load()
        images = torch.from_numpy(np.asarray(part["image"].values, dtype=np.float32))
        params = {k: torch.from_numpy(part[k].values) for k in PARAMETERS if k in part}
        return images, params, dict(dataset.attrs)


def radial_profile(
    images: Tensor, bins: int = 16, r_max: float | None = None, centroid: Tensor | None = None
) -> Tensor:
    """Azimuthally averaged profiles about each image's adaptive centroid
    (:func:`adaptive_moments`, or ``centroid (n, 2)`` already measured): ``(n, bins)`` mean
    pixel values in rings of equal width out to ``r_max`` pixels (default: half the width)."""
    x = images.double()
    H, W = x.shape[-2:]
    cx, cy = (adaptive_moments(x)[0] if centroid is None else centroid).unbind(-1)
    yy = torch.arange(H, dtype=torch.float64)[:, None] - (H - 1) / 2
    xx = torch.arange(W, dtype=torch.float64)[None, :] - (W - 1) / 2
    r = torch.sqrt((xx - cx[:, None, None]) ** 2 + (yy - cy[:, None, None]) ** 2)
    r_max = min(H, W) / 2 if r_max is None else r_max
    index = (r / r_max * bins).floor().long().clamp(max=bins)  # bin `bins` is outside
    sums = torch.zeros(x.shape[0], bins + 1, dtype=torch.float64)
    counts = torch.zeros_like(sums)
    sums.scatter_add_(1, index.flatten(1), x.flatten(1))
    counts.scatter_add_(1, index.flatten(1), torch.ones_like(x.flatten(1)))
    return (sums / counts.clamp_min(1))[:, :bins]


def adaptive_moments(
    images: Tensor, iterations: int = 100, tolerance: float = 1e-6, start_sigma: float = 5.0
) -> tuple[Tensor, Tensor, Tensor]:
    """Adaptive second moments (Bernstein & Jarvis 2002, what GalSim's HSM ``FindAdaptiveMom``
    measures): the moments of the light weighted by the elliptical Gaussian that matches them,
    ``M = 2 Q_w(M)``, with the weight's centre at the weighted centroid.

    Unweighted moments give the outskirts an ``r^2`` say, so a faint background (a prior draw's
    residual texture, sky noise) makes every galaxy look rounder and larger; the matched weight
    measures the galaxy. Exact for Gaussian profiles.

    Arguments:
        images: ``(n, H, W)`` surface brightness (the sign of a pixel is kept: noise averages out).
        iterations: Most fixed-point iterations.
        tolerance: Relative change of ``M`` (pixels^2) at which an image has converged.
        start_sigma: Width (pixels) of the round weight the iterations start from, centred on
            the stamp.

    Returns:
        ``centroid (n, 2)`` as ``(x, y)`` pixels from the stamp's centre, ``moments (n, 3)`` as
        ``(Mxx, Myy, Mxy)`` in pixels^2, and ``converged (n,)``; an image without positive
        weighted light, or whose weight shrinks onto a single pixel, has NaN moments.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    x = images.double()
    H, W = x.shape[-2:]
    yy = torch.arange(H, dtype=torch.float64)[:, None] - (H - 1) / 2
    xx = torch.arange(W, dtype=torch.float64)[None, :] - (W - 1) / 2
    n = x.shape[0]
    # HSM's start: a round weight of 5 pixels at the stamp's centre (a galaxy with a companion
    # or bright clumps has several fixed points; this start is the field's convention)
    cx = torch.zeros(n, dtype=torch.float64)
    cy = torch.zeros(n, dtype=torch.float64)
    start = torch.full((n,), start_sigma**2, dtype=torch.float64)
    mxx, myy, mxy = start.clone(), start.clone(), torch.zeros_like(start)
    converged = torch.zeros_like(start, dtype=torch.bool)
    floor, limit = 0.25, float(max(H, W)) ** 2  # pixels^2: a weight within a pixel and the stamp
    for _ in range(iterations):
        det = (mxx * myy - mxy**2)[:, None, None]
        dx, dy = xx - cx[:, None, None], yy - cy[:, None, None]
        rho2 = (myy[:, None, None] * dx**2 - 2 * mxy[:, None, None] * dx * dy
                + mxx[:, None, None] * dy**2) / det  # fmt: skip
        weighted = x * torch.exp(-0.5 * rho2)
        flux = weighted.sum((-2, -1))
        safe = torch.where(flux > 0, flux, torch.ones_like(flux))
        ncx = cx + (weighted * dx).sum((-2, -1)) / safe
        ncy = cy + (weighted * dy).sum((-2, -1)) / safe
        ex, ey = xx - ncx[:, None, None], yy - ncy[:, None, None]
        nxx = 2 * (weighted * ex**2).sum((-2, -1)) / safe
        nyy = 2 * (weighted * ey**2).sum((-2, -1)) / safe
        nxy = 2 * (weighted * ex * ey).sum((-2, -1)) / safe
        # a weight that stays a proper (positive definite, inside the stamp) Gaussian
        nxx, nyy = nxx.clamp(floor, limit), nyy.clamp(floor, limit)
        bound = 0.999 * torch.sqrt(nxx * nyy)
        nxy = torch.maximum(torch.minimum(nxy, bound), -bound)
        change = ((nxx - mxx).abs() + (nyy - myy).abs() + 2 * (nxy - mxy).abs()) / (mxx + myy)
        converged = change < tolerance
        cx, cy, mxx, myy, mxy = ncx, ncy, nxx, nyy, nxy
        if bool(converged.all()):
            break
    # a weight shrunk to the floor has locked onto one bright pixel (a cusp or a clump), where
    # the iteration has no fixed point: no shape is measured, as HSM fails on these
    bad = ~(flux > 0) | (torch.minimum(mxx, myy) <= 1.001 * floor)
    moments = torch.stack([mxx, myy, mxy], dim=-1)
    moments[bad] = float("nan")
    return torch.stack([cx, cy], dim=-1), moments, converged & ~bad


def ellipticity(images: Tensor, moments: Tensor | None = None) -> Tensor:
    """``|e| = sqrt(e1^2 + e2^2)`` of the adaptive moments (:func:`adaptive_moments`, or
    ``moments (n, 3)`` already measured), ``e1 = (Mxx - Myy) / (Mxx + Myy)``,
    ``e2 = 2 Mxy / (Mxx + Myy)``: ``(n,)`` in ``[0, 1]`` (``(1 - q^2) / (1 + q^2)`` for an
    elliptical profile of axis ratio ``q``)."""
    m = adaptive_moments(images)[1] if moments is None else moments
    mxx, myy, mxy = m.unbind(-1)
    trace = mxx + myy
    return torch.sqrt(((mxx - myy) / trace) ** 2 + (2 * mxy / trace) ** 2)


def half_light_radius(images: Tensor, centroid: Tensor | None = None) -> Tensor:
    """Radius (pixels) about the light's adaptive centroid (:func:`adaptive_moments`, or
    ``centroid (n, 2)`` already measured) enclosing half the flux: ``(n,)``. Pixels keep their
    sign, so zero-mean background noise adds as much light as it takes away instead of pushing
    the radius out."""
    x = images.double()
    H, W = x.shape[-2:]
    cx, cy = (adaptive_moments(x)[0] if centroid is None else centroid).unbind(-1)
    flux = x.sum((-2, -1))
    yy = torch.arange(H, dtype=torch.float64)[:, None] - (H - 1) / 2
    xx = torch.arange(W, dtype=torch.float64)[None, :] - (W - 1) / 2
    r = torch.sqrt((xx - cx[:, None, None]) ** 2 + (yy - cy[:, None, None]) ** 2).flatten(1)
    order = r.argsort(dim=1)
    cumulative = torch.gather(x.flatten(1), 1, order).cumsum(1)
    inside = (cumulative < flux[:, None] / 2).sum(1)
    return torch.gather(r, 1, order)[torch.arange(x.shape[0]), inside.clamp(max=H * W - 1)]


def background_rms(images: Tensor) -> Tensor:
    """Root mean square of the pixels at least half the stamp's width from its centre (the
    corners, where every generated stamp is 0 to rounding after its border fade): ``(n,)``."""
    x = images.double()
    H, W = x.shape[-2:]
    yy = torch.arange(H, dtype=torch.float64)[:, None] - (H - 1) / 2
    xx = torch.arange(W, dtype=torch.float64)[None, :] - (W - 1) / 2
    corners = torch.sqrt(xx**2 + yy**2) >= min(H, W) / 2
    return x[:, corners].pow(2).mean(1).sqrt()


def morphology(
    images: Tensor, adaptive: tuple[Tensor, Tensor, Tensor] | None = None
) -> dict[str, Tensor]:
    """Per-image statistics the prior's quality checks compare: ``flux`` (sum of pixels),
    ``ellipticity``, ``half_light_radius`` (pixels) and ``peak`` (brightest pixel); ``(n,)``.
    ``adaptive``: :func:`adaptive_moments` of ``images`` when already measured."""
    centroid, moments, _ = adaptive_moments(images) if adaptive is None else adaptive
    return {
        "flux": images.double().flatten(1).sum(1),
        "ellipticity": ellipticity(images, moments),
        "half_light_radius": half_light_radius(images, centroid),
        "peak": images.double().flatten(1).max(1).values,
    }
