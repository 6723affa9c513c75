"""The ``appa lensing simulate | train | reconstruct | diagnose`` jobs, driven by one config
(:class:`LensingConfig`); each run function takes the config and writes under ``out``.

- ``simulate``: the galaxy stamps the prior trains on (Zarr, skipped when already there with the
  same settings) and held-out lenses: generated sources behind random SIE + shear lenses, seen
  through the PSF with Gaussian noise (``<out>/lenses.zarr``, one figure).
- ``train``: trains the diffusion prior on the stamps, writes ``<out>/prior`` (and, with
  ``train.export``, a float16 copy to commit).
- ``reconstruct``: posterior source samples (MMPS, or DPS) for an observed image (Zarr, NPY or
  FITS plus its lens parameters) or for held-out lenses, with the closed-form Gaussian baselines;
  samples, summaries and figures under ``<out>/reconstruct``.
- ``diagnose``: the prior's quality (morphology of its samples against the training set's), then
  over held-out lenses: fit (reduced chi-square), source error against the baselines, per-pixel
  coverage, spread/skill, DPS, the effect of wrong lens parameters, and the cost of a sample.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from appa.config import StrictModel
from appa.files import PRODUCT_ATTR, written_whole
from appa.lensing.prior import SIGMA_MAX, SIGMA_MIN

__all__ = [
    "DataConfig",
    "DiagnoseConfig",
    "LensRangesConfig",
    "LensingConfig",
    "PosteriorSamplingConfig",
    "PriorUNetConfig",
    "ReconstructConfig",
    "SetupConfig",
    "SimulateConfig",
    "TrainConfig",
    "divergence_bound",
    "finite_samples",
    "run_diagnose",
    "run_export",
    "run_reconstruct",
    "run_simulate",
    "run_train",
]


class SetupConfig(StrictModel):
    """The observation model: grids, PSF and noise (arcsec; surface-brightness units)."""

    source_size: int = Field(64, ge=8, description="source grid width (pixels)")
    source_pixel: float = Field(0.05, gt=0, description="source pixel (arcsec)")
    image_size: int = Field(64, ge=8, description="image width (pixels)")
    image_pixel: float = Field(0.1, gt=0, description="image pixel (arcsec)")
    supersample: int = Field(2, ge=1, description="sub-pixels per image pixel and axis")
    psf_fwhm: float | None = Field(0.15, gt=0, description="Gaussian PSF FWHM (arcsec)")
    noise_std: float = Field(0.1, gt=0, description="pixel noise standard deviation")


class DataConfig(StrictModel):
    """The generated galaxy stamps (Zarr stores) the prior trains and validates on."""

    train: Path = Path("outputs/lensing/galaxies-train.zarr")
    validation: Path = Path("outputs/lensing/galaxies-val.zarr")
    train_count: int = Field(24000, ge=16)
    validation_count: int = Field(1024, ge=16)
    train_seed: int = 1
    validation_seed: int = 2


class LensRangesConfig(StrictModel):
    """Uniform ranges of the simulated lenses' parameters."""

    theta_e: tuple[float, float] = (1.0, 1.4)
    q: tuple[float, float] = (0.55, 0.95)
    shear: float = Field(0.05, ge=0, lt=1, description="largest |gamma|")
    centre: float = Field(0.05, ge=0, description="largest lens offset (arcsec)")
    source_offset: float = Field(
        0.25, ge=0, description="largest source-centre offset from the optical axis (arcsec)"
    )


class SimulateConfig(StrictModel):
    lenses: int = Field(8, ge=1, description="held-out lenses to simulate")
    seed: int = Field(100, description="seed of held-out sources, lenses and noise")
    ranges: LensRangesConfig = Field(default_factory=LensRangesConfig)


class PriorUNetConfig(StrictModel):
    """The prior's U-Net (:class:`appa.nn.unet.UNetConfig`)."""

    channels: list[int] = Field(default_factory=lambda: [32, 48, 64, 96])
    attention: list[bool] = Field(default_factory=lambda: [False, False, False, True])
    blocks: int = Field(1, ge=1)
    embedding: int = Field(128, ge=8)
    groups: int = Field(8, ge=1)
    heads: int = Field(4, ge=1)
    patch: int = Field(1, ge=1)


class TrainConfig(StrictModel):
    """Training of the prior (:class:`appa.lensing.prior.TrainSettings`)."""

    steps: int = Field(4000, ge=1)
    batch: int = Field(32, ge=1)
    lr: float = Field(2e-4, gt=0)
    warmup: int = Field(200, ge=0)
    final_lr: float = Field(0.05, ge=0, le=1)
    ema: float = Field(0.999, ge=0, lt=1)
    sigma_log_mean: float = -0.7
    sigma_log_std: float = Field(1.5, gt=0)
    sigma_min: float = Field(SIGMA_MIN, gt=0)
    sigma_max: float = Field(SIGMA_MAX, gt=0)
    precision: Literal["bf16", "fp32"] = "bf16"
    validate_every: int = Field(500, ge=1)
    checkpoint_every: int = Field(1000, ge=1)
    seed: int = 0
    train_limit: int | None = Field(None, ge=16, description="use only the first N stamps")
    export: Path | None = Field(None, description="also write a float16 copy here (to commit)")
    unet: PriorUNetConfig = Field(default_factory=PriorUNetConfig)


class PosteriorSamplingConfig(StrictModel):
    """Posterior sampling (:class:`appa.lensing.posterior.SamplingConfig`)."""

    method: Literal["mmps", "dps"] = "mmps"
    sampler: Literal["pc", "ddpm", "ddim", "heun", "euler", "lms"] = "pc"
    steps: int = Field(64, ge=1)
    corrections: int = Field(1, ge=0)
    delta: float = Field(0.1, gt=0)
    iterations: int = Field(8, ge=1, description="conjugate-gradient iterations (MMPS)")
    zeta: float = Field(1.0, gt=0, description="DPS guidance strength")
    sigma_min: float | None = Field(None, gt=0, description="default: the prior's")
    sigma_max: float | None = Field(None, gt=0, description="default: the prior's")
    batch: int = Field(8, ge=1)


class ReconstructConfig(StrictModel):
    """Which image to reconstruct and how."""

    observation: Path | None = Field(
        None, description="observed image (.zarr, .npy, .fits); default: held-out lenses"
    )
    variable: str = Field("image", description="Zarr variable of the image")
    lenses: list[dict[str, Any]] | None = Field(
        None, description='lens specs for an observation file, e.g. [{"kind": "sie", ...}]'
    )
    noise_std: float | None = Field(None, gt=0, description="default: setup.noise_std")
    noise_map: Path | None = Field(None, description=".npy per-pixel noise std (H, W)")
    mask: Path | None = Field(None, description=".npy bool (H, W), True where observed")
    index: list[int] = Field(default_factory=lambda: [0], description="held-out lenses")
    samples: int = Field(16, ge=1)
    seed: int = 0
    baselines: list[Literal["gp", "empirical"]] = Field(default_factory=lambda: ["gp", "empirical"])
    sampling: PosteriorSamplingConfig = Field(default_factory=PosteriorSamplingConfig)


class DiagnoseConfig(StrictModel):
    """What ``diagnose`` measures."""

    prior_samples: int = Field(256, ge=8, description="prior draws for the quality checks")
    prior_steps: int = Field(64, ge=4)
    lenses: list[int] | None = Field(None, description="held-out lenses (default: all)")
    samples: int = Field(32, ge=2, description="posterior samples per lens")
    levels: list[float] = Field(default_factory=lambda: [0.5, 0.68, 0.9, 0.95])
    dps: bool = Field(True, description="also sample with DPS")
    dps_zeta: float = Field(1.0, gt=0)
    theta_e_errors: list[float] = Field(
        default_factory=lambda: [0.01, 0.03],
        description="relative errors of the Einstein radius to measure the effect of",
    )
    error_lenses: int = Field(2, ge=1, description="held-out lenses for the wrong-lens runs")
    error_samples: int = Field(8, ge=2)
    fit_lens: bool = Field(
        True, description="also fit the lens (Gaussian evidence) from the largest error"
    )
    fit_steps: int = Field(60, ge=1)
    fit_binning: int = Field(2, ge=1, description="source pixels binned for the lens fit")
    seed: int = 1
    parts: list[Literal["prior", "lenses", "wrong_lens", "fit"]] = Field(
        default_factory=lambda: ["prior", "lenses", "wrong_lens", "fit"],
        description="parts to run; each part's results are cached and reused, so parts can run "
        "in separate processes and a stopped diagnose resumes",
    )

    @field_validator("levels")
    @classmethod
    def _levels(cls, value: list[float]) -> list[float]:
        if not value or not all(0 < v < 1 for v in value):
            raise ValueError("levels must lie in (0, 1)")
        return value


class LensingConfig(StrictModel):
    """Settings of ``appa lensing``."""

    out: Path = Path("outputs/lensing")
    threads: int = Field(2, ge=1)
    prior: Path = Field(
        Path("pipelines/priors/lensing-galaxies-tiny"),
        description="prior checkpoint for reconstruct and diagnose",
    )
    setup: SetupConfig = Field(default_factory=SetupConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    simulate: SimulateConfig = Field(default_factory=SimulateConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    reconstruct: ReconstructConfig = Field(default_factory=ReconstructConfig)
    diagnose: DiagnoseConfig = Field(default_factory=DiagnoseConfig)


def _write_json(path: Path, data: Any) -> None:
    with written_whole(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2))


def run_train(cfg: LensingConfig) -> Path:
    """Trains the prior on ``data.train`` (validating on ``data.validation``); writes
    ``<out>/prior`` (checkpoints: the EMA weights a prior samples with plus the whole training
    state) and ``<out>/prior/history.json``; with ``train.export``, a float16 copy of the final
    EMA weights there. A stopped or killed run, started again, resumes from its newest
    checkpoint when the settings it was written with match (else it names the keys that
    differ). Returns the checkpoint path."""
    from appa.io.checkpoints import latest_checkpoint
    from appa.lensing.galaxies import read_galaxies
    from appa.lensing.prior import TrainSettings, export_prior, train_prior

    t = cfg.train
    torch.set_num_threads(cfg.threads)
    train, _, attrs = read_galaxies(cfg.data.train, 0, t.train_limit)
    validation, _, _ = read_galaxies(cfg.data.validation, 0, min(512, cfg.data.validation_count))
    if train.shape[-1] != cfg.setup.source_size:
        raise ValueError(
            f"{cfg.data.train}: stamps of {train.shape[-1]} pixels, setup.source_size is "
            f"{cfg.setup.source_size}"
        )
    settings = TrainSettings(
        **t.model_dump(
            exclude={"checkpoint_every", "train_limit", "export", "unet"},
        ),
        threads=cfg.threads,
    )
    unet = {"in_channels": 1, **t.unet.model_dump()}
    out = cfg.out / "prior"
    # what a checkpoint must have been written with to be resumed (not where it is exported)
    fingerprint = {
        "setup": cfg.setup.model_dump(mode="json"),
        "data": cfg.data.model_dump(mode="json"),
        "train": t.model_dump(mode="json", exclude={"export", "checkpoint_every"}),
    }
    print(
        f"lensing train: {train.shape[0]} stamps, {t.steps} steps of {t.batch}, "
        f"{cfg.threads} threads, {t.precision}"
    )
    _, result = train_prior(
        train,
        validation,
        unet,
        settings,
        pixel=cfg.setup.source_pixel,
        checkpoint_dir=out,
        checkpoint_every=t.checkpoint_every,
        config=cfg.model_dump(mode="json"),
        data={"path": str(cfg.data.train), "count": int(train.shape[0]), "attrs": attrs},
        fingerprint=fingerprint,
    )
    path = latest_checkpoint(str(out))
    if t.export is not None:
        export_prior(path, t.export)
        print(f"exported (float16): {t.export}")
    print(
        f"prior: {path} ({result.wall_seconds:.0f} s wall, {result.cpu_seconds:.0f} s CPU on "
        f"{result.threads} threads)"
    )
    return Path(path)


def run_export(cfg: LensingConfig) -> Path:
    """Exports the newest prior checkpoint under ``<out>/prior`` (EMA weights, float16, no
    training state) to ``train.export``, the folder to commit; returns its path."""
    from appa.lensing.prior import export_prior

    if cfg.train.export is None:
        raise ValueError("train.export is not set: where should the prior go?")
    path = export_prior(cfg.out / "prior", cfg.train.export)
    card = json.loads((Path(path) / "checkpoint.json").read_text())["metadata"]
    print(f"exported (float16): {path}: {card['state']}")
    return Path(path)


# --- observations ---------------------------------------------------------------------------


def make_operator(
    cfg: LensingConfig,
    lenses: list,
    source_center: tuple[float, float] = (0.0, 0.0),
    mask: torch.Tensor | None = None,
    binning: int = 1,
    dtype: torch.dtype = torch.float32,
):
    """The lensing operator of ``setup`` for these lenses (its source pixels ``binning`` times
    larger, for a coarse source grid)."""
    from appa.lensing.operator import LensingOperator, PixelGrid, gaussian_psf

    st = cfg.setup
    if st.source_size % binning:
        raise ValueError(f"binning {binning} does not divide setup.source_size {st.source_size}")
    # the PSF is drawn at the sub-pixel scale, where the operator convolves
    sub = st.image_pixel / st.supersample
    psf = None if st.psf_fwhm is None else gaussian_psf(st.psf_fwhm, sub, dtype=dtype)
    size = st.source_size // binning
    return LensingOperator(
        lenses,
        PixelGrid((size, size), st.source_pixel * binning, source_center),
        PixelGrid((st.image_size, st.image_size), st.image_pixel),
        psf=psf,
        supersample=st.supersample,
        mask=mask,
        dtype=dtype,
    )


def _draw_lenses(ranges: LensRangesConfig, n: int, g: torch.Generator) -> list[dict[str, float]]:
    def uniform(low: float, high: float) -> float:
        return float(low + (high - low) * torch.rand((), generator=g, dtype=torch.float64))

    rows = []
    for _ in range(n):
        shear = uniform(0.0, ranges.shear)
        shear_angle = uniform(0.0, np.pi)
        radius = ranges.source_offset * uniform(0.0, 1.0) ** 0.5
        angle = uniform(0.0, 2 * np.pi)
        rows.append(
            {
                "theta_e": uniform(*ranges.theta_e),
                "q": uniform(*ranges.q),
                "phi": uniform(0.0, np.pi),
                "lens_x0": uniform(-ranges.centre, ranges.centre),
                "lens_y0": uniform(-ranges.centre, ranges.centre),
                "gamma1": shear * float(np.cos(2 * shear_angle)),
                "gamma2": shear * float(np.sin(2 * shear_angle)),
                "source_x0": radius * float(np.cos(angle)),
                "source_y0": radius * float(np.sin(angle)),
            }
        )
    return rows


def lenses_of(row: dict[str, float]) -> list:
    """The SIE + external shear of a simulated lens's parameters."""
    from appa.lensing.lenses import SIE, ExternalShear

    x0, y0 = row["lens_x0"], row["lens_y0"]
    return [
        SIE(row["theta_e"], row["q"], row["phi"], x0, y0),
        ExternalShear(row["gamma1"], row["gamma2"], x0, y0),
    ]


LENS_FIELDS = (
    "theta_e",
    "q",
    "phi",
    "lens_x0",
    "lens_y0",
    "gamma1",
    "gamma2",
    "source_x0",
    "source_y0",
)


def _ensure_galaxies(path: Path, count: int, seed: int, cfg: LensingConfig) -> None:
    """Writes a galaxy store unless one with the same settings is already there."""
    import xarray as xr

    from appa.lensing.galaxies import write_galaxies

    size = cfg.setup.source_size
    if path.exists():
        with xr.open_zarr(path) as ds:
            same = (
                ds.sizes.get("galaxy") == count
                and ds.attrs.get("seed") == seed
                and ds.attrs.get("size") == size
            )
        if same:
            print(f"galaxies: {path} already holds {count} stamps of seed {seed}")
            return
    write_galaxies(path, count, seed, size=size, pixel=cfg.setup.source_pixel)
    print(f"galaxies: wrote {count} stamps (seed {seed}) to {path}")


def run_simulate(cfg: LensingConfig) -> Path:
    """Writes the training and validation stamps (unless present) and ``<out>/lenses.zarr``:
    held-out sources (seed ``simulate.seed``) behind random SIE + shear lenses, their clean and
    noisy images, noise level and lens parameters; and ``<out>/lenses.png``."""
    import xarray as xr

    from appa.lensing.galaxies import generate_galaxies

    torch.set_num_threads(cfg.threads)
    sim, st = cfg.simulate, cfg.setup
    if {sim.seed} & {cfg.data.train_seed, cfg.data.validation_seed}:
        raise ValueError(
            f"simulate.seed {sim.seed} is a training or validation seed: held-out sources must "
            "come from another"
        )
    _ensure_galaxies(cfg.data.train, cfg.data.train_count, cfg.data.train_seed, cfg)
    _ensure_galaxies(cfg.data.validation, cfg.data.validation_count, cfg.data.validation_seed, cfg)
    sources, _ = generate_galaxies(sim.lenses, seed=sim.seed, size=st.source_size)
    g = torch.Generator().manual_seed(sim.seed)
    rows = _draw_lenses(sim.ranges, sim.lenses, g)
    clean, noisy = [], []
    for source, row in zip(sources, rows, strict=True):
        operator = make_operator(cfg, lenses_of(row), (row["source_x0"], row["source_y0"]))
        image = operator(source[None])[0]
        clean.append(image)
        noisy.append(image + st.noise_std * torch.randn(image.shape, generator=g))
    data = {
        "source": (("lens", "sy", "sx"), sources.numpy()),
        "clean": (("lens", "y", "x"), torch.stack(clean).numpy()),
        "image": (("lens", "y", "x"), torch.stack(noisy).numpy()),
        "noise_std": (("lens",), np.full(sim.lenses, st.noise_std, dtype=np.float32)),
    }
    for key in LENS_FIELDS:
        data[key] = (("lens",), np.array([r[key] for r in rows]))
    attrs = {
        "setup": json.dumps(st.model_dump(mode="json")), "seed": sim.seed, PRODUCT_ATTR: "lenses",
    }  # fmt: skip
    path = cfg.out / "lenses.zarr"
    with written_whole(path, "lenses", overwrite=True) as tmp:
        xr.Dataset(data, attrs=attrs).to_zarr(tmp, mode="w", zarr_format=2, consolidated=True)
    _plot_lenses(cfg.out / "lenses.png", sources, torch.stack(noisy), cfg)
    print(f"lenses: {path} ({sim.lenses} held-out lenses, seed {sim.seed})")
    return path


def _plot_lenses(path: Path, sources, images, cfg: LensingConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from appa.lensing.diagnostics import save_figure

    n = min(6, len(sources))
    fig, axes = plt.subplots(2, n, figsize=(2.4 * n, 4.8), squeeze=False)
    st = cfg.setup
    for k in range(n):
        half_s = st.source_size * st.source_pixel / 2
        half_i = st.image_size * st.image_pixel / 2
        axes[0, k].imshow(
            sources[k], origin="lower", cmap="magma", extent=(-half_s, half_s, -half_s, half_s)
        )
        axes[1, k].imshow(
            images[k], origin="lower", cmap="magma", extent=(-half_i, half_i, -half_i, half_i)
        )
        axes[0, k].set_title(f"source {k}", fontsize=8)
        axes[1, k].set_title(f"lensed image {k}", fontsize=8)
    for ax in axes.flat:
        ax.tick_params(labelsize=6)
    save_figure(fig, path)


def read_lenses(path: Path) -> list[dict[str, Any]]:
    """The held-out lenses of ``simulate``: per lens its ``source``, ``clean`` and ``image``
    tensors, ``noise_std`` and lens parameters."""
    import xarray as xr

    if not path.exists():
        raise FileNotFoundError(f"held-out lenses not found: {path} (run 'appa lensing simulate')")
    with xr.open_zarr(path) as ds:
        ds = ds.load()
        out = []
        for k in range(ds.sizes["lens"]):
            row = {key: float(ds[key][k]) for key in LENS_FIELDS}
            row.update(
                source=torch.from_numpy(ds["source"][k].values),
                clean=torch.from_numpy(ds["clean"][k].values),
                image=torch.from_numpy(ds["image"][k].values),
                noise_std=float(ds["noise_std"][k]),
                index=k,
            )
            out.append(row)
    return out


def load_image(path: Path, variable: str = "image") -> torch.Tensor:
    """A 2-D image from ``.npy``, a Zarr store (``variable``) or FITS (primary HDU, needs
    astropy)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"observation not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        data = np.load(path, allow_pickle=False)
    elif suffix == ".zarr":
        import xarray as xr

        with xr.open_zarr(path) as ds:
            if variable not in ds:
                raise ValueError(f"{path}: no variable {variable!r}; it has {sorted(ds.data_vars)}")
            data = ds[variable].values
    elif suffix in (".fits", ".fit", ".fts"):
        try:
            from astropy.io import fits
        except ImportError:
            raise ImportError(
                f"{path}: reading FITS needs astropy (pip install astropy); or save the image "
                "as .npy"
            ) from None
        with fits.open(path) as hdus:
            data = hdus[0].data
            if data is None:
                raise ValueError(f"{path}: the primary HDU holds no image")
    else:
        raise ValueError(f"{path}: unknown image format {suffix!r}; use .npy, .zarr or .fits")
    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 2:
        raise ValueError(f"{path}: the image must be 2-D, got shape {data.shape}")
    return torch.from_numpy(np.ascontiguousarray(data))


# --- baselines --------------------------------------------------------------------------------


def gaussian_baselines(cfg: LensingConfig, names: list[str], binning: int = 1) -> dict[str, Any]:
    """The Gaussian priors of the baselines, fitted once on training stamps and cached under
    ``<out>/baselines`` (``gp``: a Matern-3/2 process, length by likelihood; ``empirical``: the
    stamps' mean and covariance); with ``binning``, of stamps averaged over that many pixels
    along each axis."""
    from appa.lensing.galaxies import read_galaxies
    from appa.lensing.operator import PixelGrid
    from appa.lensing.posterior import GaussianSource, empirical_gaussian, fit_gaussian_process

    st = cfg.setup
    cache = cfg.out / "baselines"
    out: dict[str, Any] = {}
    images = None
    for name in names:
        tag = name if binning == 1 else f"{name}-binned{binning}"
        mean_path, cov_path = cache / f"{tag}-mean.npy", cache / f"{tag}-cov.npy"
        if mean_path.exists() and cov_path.exists():
            mean, cov = np.load(mean_path), np.load(cov_path)
            out[name] = GaussianSource(torch.from_numpy(mean), torch.from_numpy(cov), name)
            continue
        if images is None:
            images, _, _ = read_galaxies(cfg.data.train, 0, min(4000, cfg.data.train_count))
            if binning > 1:
                images = torch.nn.functional.avg_pool2d(images[:, None], binning)[:, 0]
        size = st.source_size // binning
        grid = PixelGrid((size, size), st.source_pixel * binning)
        if name == "gp":
            lengths = [st.source_pixel * k for k in (1, 2, 4, 8)]
            source, info = fit_gaussian_process(images[:1000], grid, lengths)
            print(
                f"baseline gp: length {info['length']:g} arcsec, amplitude {info['amplitude']:.3g}"
            )
        else:
            source = empirical_gaussian(images)
        for path, value in ((mean_path, source.mean), (cov_path, source.cov)):
            with written_whole(path) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, value.numpy())
        source.name = name
        out[name] = source
    return out


def held_out_baseline(
    cfg: LensingConfig, row: dict[str, Any], baselines: dict[str, Any]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Posterior mean and standard deviation ``(Hs, Ws)`` (float64) of each Gaussian baseline
    for a held-out lens, cached under ``<out>/baselines/lens-<index>-<name>.npz`` with the lens
    and setup they belong to (a cache entry for other ones is recomputed)."""
    from appa.lensing.posterior import gaussian_source_moments

    key = json.dumps(
        {
            "setup": cfg.setup.model_dump(mode="json"),
            "lens": {k: row[k] for k in LENS_FIELDS},
            "image": float(row["image"].double().sum()),
        },
        sort_keys=True,
    )
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    operator = None
    for name, gaussian in baselines.items():
        path = cfg.out / "baselines" / f"lens-{row['index']}-{name}.npz"
        if path.exists():
            with np.load(path) as cached:
                if str(cached["key"]) == key:
                    out[name] = (torch.from_numpy(cached["mean"]), torch.from_numpy(cached["std"]))
                    continue
        if operator is None:
            operator = make_operator(cfg, lenses_of(row), (row["source_x0"], row["source_y0"]))
            matrix = operator.matrix()
            y = operator.flatten(row["image"].double())
        var = torch.tensor(row["noise_std"], dtype=torch.float64) ** 2
        mean, std = gaussian_source_moments(gaussian, matrix, y, var)
        mean, std = mean.reshape(operator.source_shape), std.reshape(operator.source_shape)
        with written_whole(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, mean=mean.numpy(), std=std.numpy(), key=np.array(key))
        out[name] = (mean, std)
    return out


# --- reconstruction ---------------------------------------------------------------------------


def _sampling(sampling: PosteriorSamplingConfig, prior) -> Any:
    from appa.lensing.posterior import SamplingConfig

    values = sampling.model_dump()
    values["sigma_min"] = values["sigma_min"] or prior.sigma_min
    values["sigma_max"] = values["sigma_max"] or prior.sigma_max
    return SamplingConfig(**values)


def _observations(cfg: LensingConfig) -> list[dict[str, Any]]:
    from appa.lensing.lenses import lenses_from_dicts

    rc = cfg.reconstruct
    if rc.observation is None:
        held_out = read_lenses(cfg.out / "lenses.zarr")
        bad = [i for i in rc.index if not 0 <= i < len(held_out)]
        if bad:
            raise ValueError(f"reconstruct.index {bad}: there are {len(held_out)} held-out lenses")
        out = []
        for i in rc.index:
            row = held_out[i]
            out.append(
                {
                    "name": f"lens-{i}",
                    "image": row["image"],
                    "noise_std": torch.tensor(row["noise_std"]),
                    "lenses": lenses_of(row),
                    "source_center": (row["source_x0"], row["source_y0"]),
                    "truth": row["source"],
                    "mask": None,
                }
            )
        return out
    if not rc.lenses:
        raise ValueError("reconstruct.observation needs reconstruct.lenses (the lens parameters)")
    image = load_image(rc.observation, rc.variable)
    size = cfg.setup.image_size
    if tuple(image.shape) != (size, size):
        raise ValueError(
            f"{rc.observation}: image of shape {tuple(image.shape)}, setup.image_size is {size}"
        )
    noise = torch.tensor(rc.noise_std or cfg.setup.noise_std)
    if rc.noise_map is not None:
        noise = torch.from_numpy(np.load(rc.noise_map).astype(np.float32))
        if tuple(noise.shape) != (size, size) or not (noise > 0).all():
            raise ValueError(f"{rc.noise_map}: need a positive ({size}, {size}) noise map")
    mask = None
    if rc.mask is not None:
        mask = torch.from_numpy(np.load(rc.mask)).to(torch.bool)
    elif not torch.isfinite(image).all():
        mask = torch.isfinite(image)  # NaN pixels are unobserved
    return [
        {
            "name": rc.observation.stem,
            "image": image,
            "noise_std": noise,
            "lenses": lenses_from_dicts(rc.lenses),
            "source_center": (0.0, 0.0),
            "truth": None,
            "mask": mask,
        }
    ]


def finite_samples(samples: torch.Tensor, bound: float | None = None) -> tuple[torch.Tensor, int]:
    """The samples whose every value is finite and, with ``bound``, at most ``bound`` in
    magnitude, and how many were dropped (a diverged sample is reported, never averaged in)."""
    flat = samples.flatten(1)
    keep = torch.isfinite(flat).all(1)
    if bound is not None:
        keep &= (flat.abs() <= bound).all(1)
    return samples[keep], int((~keep).sum())


def divergence_bound(prior) -> float:
    """Ten times the noise a sample starts from (``scale * sigma_max``, surface brightness): no
    galaxy comes near it (the training stamps' brightest pixel is a third of it), a sample
    beyond it has diverged."""
    return 10.0 * prior.scale * prior.sigma_max


def reconstruct_one(
    cfg: LensingConfig,
    prior,
    observation: dict[str, Any],
    samples: int,
    sampling: PosteriorSamplingConfig,
    seed: int,
    lenses: list | None = None,
) -> tuple[torch.Tensor, Any, float]:
    """Posterior samples ``(samples, Hs, Ws)`` for one observation (optionally under other
    lenses than its own), the operator and the seconds taken."""
    import time

    from appa.lensing.posterior import sample_source_posterior

    operator = make_operator(
        cfg, lenses or observation["lenses"], observation["source_center"], observation["mask"]
    )
    if prior.size != cfg.setup.source_size:
        raise ValueError(
            f"the prior makes {prior.size}-pixel sources, setup.source_size is "
            f"{cfg.setup.source_size}"
        )
    start = time.perf_counter()
    draws = sample_source_posterior(
        prior.denoiser,
        operator,
        observation["image"],
        observation["noise_std"] ** 2,
        samples,
        _sampling(sampling, prior),
        scale=prior.scale,
        event_shape=prior.event_shape,
        seed=seed,
    )
    return draws.detach(), operator, time.perf_counter() - start


def run_reconstruct(cfg: LensingConfig) -> Path:
    """Posterior source samples for ``reconstruct.observation`` (with ``reconstruct.lenses``) or
    the held-out lenses ``reconstruct.index``; per observation ``samples.npy``, ``summary.json``
    and ``reconstruction.png`` under ``<out>/reconstruct/<name>``."""
    from appa.lensing import diagnostics as dg
    from appa.lensing.posterior import gaussian_source_moments
    from appa.lensing.prior import GalaxyPrior

    torch.set_num_threads(cfg.threads)
    rc = cfg.reconstruct
    prior = GalaxyPrior.load(cfg.prior)
    baselines = gaussian_baselines(cfg, list(rc.baselines)) if rc.baselines else {}
    root = cfg.out / "reconstruct"
    for obs in _observations(cfg):
        draws, operator, seconds = reconstruct_one(
            cfg, prior, obs, rc.samples, rc.sampling, rc.seed
        )
        draws, dropped = finite_samples(draws, divergence_bound(prior))
        var = obs["noise_std"] ** 2
        image = obs["image"]
        mean = draws.mean(0)
        summary: dict[str, Any] = {
            "observation": obs["name"],
            "method": rc.sampling.method,
            "samples": rc.samples,
            "diverged_samples": dropped,
            "seconds": seconds,
            "samples_per_second": rc.samples / seconds,
            "reduced_chi_square": dg.reduced_chi_square(operator, mean, image, var),
        }
        estimates = {}
        matrix = operator.matrix() if baselines else None
        for name, gaussian in baselines.items():
            y = operator.flatten(torch.nan_to_num(image).double())
            noise = var if var.ndim == 0 else operator.flatten(var)
            b_mean, _ = gaussian_source_moments(gaussian, matrix, y, noise.double())
            b_mean = b_mean.reshape(operator.source_shape).float()
            estimates[name] = b_mean
            summary[f"{name}_reduced_chi_square"] = dg.reduced_chi_square(
                operator, b_mean, image, var
            )
        if obs["truth"] is not None:
            truth = obs["truth"]
            where = dg.galaxy_pixels(truth)
            summary["rmse"] = dg.source_rmse(mean, truth)
            summary["rmse_galaxy"] = dg.source_rmse(mean, truth, where)
            for name, est in estimates.items():
                summary[f"{name}_rmse"] = dg.source_rmse(est, truth)
                summary[f"{name}_rmse_galaxy"] = dg.source_rmse(est, truth, where)
        out = root / obs["name"]
        out.mkdir(parents=True, exist_ok=True)
        with written_whole(out / "samples.npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, draws.numpy())
        _write_json(out / "summary.json", summary)
        dg.plot_reconstruction(
            out / "reconstruction.png",
            image,
            draws,
            operator,
            obs["noise_std"],
            truth=obs["truth"],
            baselines=estimates,
            title=f"{obs['name']}: {rc.samples} {rc.sampling.method.upper()} samples",
        )
        print(json.dumps(summary, indent=2))
    return root


# --- diagnostics ------------------------------------------------------------------------------

PARTS = ("prior", "lenses", "wrong_lens", "fit")


def _mean_range(values: list[float]) -> dict[str, float]:
    return {
        "mean": float(np.mean(values)),
        "min": float(np.min(values)),
        "max": float(np.max(values)),
    }


def _prior_identity(prior) -> str:
    """The SHA-256 of the prior checkpoint's manifest (which holds its files' SHA-256)."""
    import hashlib

    from appa.io.checkpoints import MANIFEST

    return hashlib.sha256((Path(prior.path) / MANIFEST).read_bytes()).hexdigest()


class _PartCache:
    """Results of ``diagnose`` parts under ``<out>/diagnose/parts/<name>.json``, each with the key
    of what produced it (the prior's manifest, setup, data, diagnose and sampling settings); an
    entry of another key is recomputed. Parts can so run in separate processes
    (``diagnose.parts``) and a stopped ``diagnose`` resumes where it was."""

    def __init__(self, cfg: LensingConfig, prior) -> None:
        self.root = cfg.out / "diagnose" / "parts"
        self.root.mkdir(parents=True, exist_ok=True)
        self.key = json.loads(
            json.dumps(
                {
                    "prior": _prior_identity(prior),
                    "setup": cfg.setup.model_dump(mode="json"),
                    "data": cfg.data.model_dump(mode="json"),
                    "lenses": str(cfg.out / "lenses.zarr"),
                    "diagnose": cfg.diagnose.model_dump(mode="json", exclude={"parts", "lenses"}),
                    "sampling": cfg.reconstruct.sampling.model_dump(mode="json"),
                }
            )
        )

    def get(self, name: str) -> Any | None:
        path = self.root / f"{name}.json"
        if not path.exists():
            return None
        entry = json.loads(path.read_text())
        if entry.get("key") != self.key:
            return None
        print(f"diagnose: {name} from {path}")
        return entry["result"]

    def put(self, name: str, result: Any) -> Any:
        _write_json(self.root / f"{name}.json", {"key": self.key, "result": result})
        return result


def _held_out_observation(row: dict[str, Any], lenses: list | None = None) -> dict[str, Any]:
    return {
        "image": row["image"],
        "noise_std": torch.tensor(row["noise_std"]),
        "lenses": lenses if lenses is not None else lenses_of(row),
        "source_center": (row["source_x0"], row["source_y0"]),
        "mask": None,
    }


def _diagnose_prior(cfg: LensingConfig, prior, out: Path) -> dict[str, Any]:
    """Morphology of prior draws against the training stamps' (and ``prior_quality.png``)."""
    import time

    from appa.lensing import diagnostics as dg
    from appa.lensing.galaxies import read_galaxies

    d = cfg.diagnose
    start, cpu = time.perf_counter(), time.process_time()
    draws = prior.sample(d.prior_samples, steps=d.prior_steps, seed=d.seed)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    training, _, _ = read_galaxies(cfg.data.train, 0, min(4000, cfg.data.train_count))
    held, _, _ = read_galaxies(
        cfg.data.validation, 0, min(d.prior_samples, cfg.data.validation_count)
    )
    quality = dg.compare_morphology(draws, training, held)
    dg.plot_prior_quality(out / "prior_quality.png", draws, training, cfg.setup.source_pixel)
    print(json.dumps(quality, indent=2))
    return {
        "quality": quality,
        "samples": d.prior_samples,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "threads": cfg.threads,
    }


def _diagnose_lens(
    cfg: LensingConfig, prior, row: dict[str, Any], baselines: dict[str, Any], out: Path
) -> dict[str, Any]:
    """MMPS (and DPS) samples of one held-out lens against its truth and the Gaussian
    baselines; ``lens-<i>.png`` and the MMPS samples (``parts/lens-<i>-mmps.npy``)."""
    import time

    from appa.lensing import diagnostics as dg

    d = cfg.diagnose
    i = row["index"]
    mmps = cfg.reconstruct.sampling.model_copy(update={"method": "mmps"})
    dps = cfg.reconstruct.sampling.model_copy(update={"method": "dps", "zeta": d.dps_zeta})
    final_noise = prior.scale * (mmps.sigma_min or prior.sigma_min)
    obs = _held_out_observation(row)
    truth = row["source"]
    where = dg.galaxy_pixels(truth)
    var = obs["noise_std"] ** 2
    entry: dict[str, Any] = {"lens": i, "theta_e": row["theta_e"], "q": row["q"]}
    runs = {"mmps": mmps} | ({"dps": dps} if d.dps else {})
    for name, sampling in runs.items():
        cpu = time.process_time()
        samples, operator, seconds = reconstruct_one(
            cfg, prior, obs, d.samples, sampling, d.seed + 1000 * i
        )
        cpu_seconds = time.process_time() - cpu
        samples, dropped = finite_samples(samples, divergence_bound(prior))
        mean = samples.mean(0)
        entry[name] = {
            "diverged_samples": dropped,
            "reduced_chi_square": dg.reduced_chi_square(operator, mean, row["image"], var),
            "rmse": dg.source_rmse(mean, truth),
            "rmse_galaxy": dg.source_rmse(mean, truth, where),
            "coverage": dg.rank_coverage(samples, truth, d.levels, None, final_noise, seed=i),
            "coverage_galaxy": dg.rank_coverage(
                samples, truth, d.levels, where, final_noise, seed=i
            ),
            "spread_skill": dg.spread_skill(samples, truth),
            "spread_skill_galaxy": dg.spread_skill(samples, truth, where),
            "seconds": seconds,
            "samples_per_second": d.samples / seconds,
            "cpu_seconds_per_sample": cpu_seconds / d.samples,
            "threads": cfg.threads,
        }
        if name == "mmps":
            mmps_samples = samples
            with written_whole(out / "parts" / f"lens-{i}-mmps.npy") as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, samples.numpy())
    estimates = {}
    moments = held_out_baseline(cfg, row, baselines)
    for name in baselines:
        b_mean, b_std = moments[name]
        estimates[name] = b_mean.float()
        # Gaussian posteriors: the coverage of their central intervals is analytic
        u = 0.5 * (1 + torch.erf((truth.double() - b_mean) / (b_std * 2**0.5)))
        entry[name] = {
            "reduced_chi_square": dg.reduced_chi_square(
                operator, b_mean.float(), row["image"], var
            ),
            "rmse": dg.source_rmse(b_mean, truth),
            "rmse_galaxy": dg.source_rmse(b_mean, truth, where),
            "coverage_galaxy": {
                f"{lv:g}": float(((u[where] - 0.5).abs() <= lv / 2).double().mean())
                for lv in d.levels
            },
        }
    dg.plot_reconstruction(
        out / f"lens-{i}.png",
        row["image"],
        mmps_samples,
        operator,
        obs["noise_std"],
        truth=truth,
        baselines=estimates,
        title=f"held-out lens {i}: {d.samples} MMPS samples",
    )
    print(json.dumps(entry, indent=1))
    return entry


def _galaxy_scores(
    operator,
    samples: torch.Tensor,
    row: dict[str, Any],
    obs: dict[str, Any],
    where,
    levels: list[float],
    final_noise: float,
) -> dict[str, Any]:
    """Reduced chi-square of the posterior mean, its RMSE on galaxy pixels ``where`` and the
    per-pixel rank coverage there of ``samples`` ``(n, H, W)`` of held-out lens ``row``."""
    from appa.lensing import diagnostics as dg

    mean = samples.mean(0)
    return {
        "reduced_chi_square": dg.reduced_chi_square(
            operator, mean, row["image"], obs["noise_std"] ** 2
        ),
        "rmse_galaxy": dg.source_rmse(mean, row["source"], where),
        "coverage_galaxy": dg.rank_coverage(
            samples, row["source"], levels, where, final_noise, seed=row["index"]
        ),
    }  # fmt: skip


def _diagnose_wrong_lens(cfg: LensingConfig, prior, row: dict[str, Any]) -> list[dict[str, Any]]:
    """MMPS under the Einstein radius off by each of ``diagnose.theta_e_errors`` (and exact)."""
    from appa.lensing import diagnostics as dg

    d = cfg.diagnose
    i = row["index"]
    mmps = cfg.reconstruct.sampling.model_copy(update={"method": "mmps"})
    final_noise = prior.scale * (mmps.sigma_min or prior.sigma_min)
    obs = _held_out_observation(row)
    where = dg.galaxy_pixels(row["source"])
    rows = []
    for rel in [0.0, *d.theta_e_errors]:
        wrong = lenses_of({**row, "theta_e": row["theta_e"] * (1 + rel)})
        samples, operator, _ = reconstruct_one(
            cfg, prior, obs, d.error_samples, mmps, d.seed + 7 + 1000 * i, lenses=wrong
        )
        samples, dropped = finite_samples(samples, divergence_bound(prior))
        rows.append(
            {
                "lens": i,
                "theta_e_error": rel,
                "diverged_samples": dropped,
                **_galaxy_scores(operator, samples, row, obs, where, d.levels, final_noise),
            }
        )
        print(json.dumps(rows[-1]))
    return rows


def _diagnose_fit(cfg: LensingConfig, prior, row: dict[str, Any], coarse) -> dict[str, Any]:
    """The lens fitted from the image (Gaussian evidence on a coarse source grid), starting from
    the largest Einstein-radius error, then MMPS under the fitted lens."""
    import time

    from appa.lensing import diagnostics as dg
    from appa.lensing.fit import fit_lens

    d = cfg.diagnose
    i = row["index"]
    mmps = cfg.reconstruct.sampling.model_copy(update={"method": "mmps"})
    final_noise = prior.scale * (mmps.sigma_min or prior.sigma_min)
    rel = max(d.theta_e_errors, key=abs)
    centre = (row["source_x0"], row["source_y0"])
    operator = make_operator(
        cfg, lenses_of(row), centre, binning=d.fit_binning, dtype=torch.float64
    )
    truth = {
        "theta_e": row["theta_e"],
        "q": row["q"],
        "phi": row["phi"],
        "x0": row["lens_x0"],
        "y0": row["lens_y0"],
        "gamma1": row["gamma1"],
        "gamma2": row["gamma2"],
    }
    start = {**truth, "theta_e": row["theta_e"] * (1 + rel)}
    begin = time.perf_counter()
    fit = fit_lens(operator, coarse, row["image"], row["noise_std"] ** 2, start, steps=d.fit_steps)
    seconds = time.perf_counter() - begin
    obs = _held_out_observation(row, fit.lenses())
    samples, operator, _ = reconstruct_one(
        cfg, prior, obs, d.error_samples, mmps, d.seed + 7 + 1000 * i
    )
    samples, dropped = finite_samples(samples, divergence_bound(prior))
    where = dg.galaxy_pixels(row["source"])
    result = {
        "lens": i,
        "diverged_samples": dropped,
        "start_theta_e_error": rel,
        "fitted_theta_e_error": fit.params["theta_e"] / row["theta_e"] - 1,
        "fitted": fit.params,
        "truth": truth,
        "fit_seconds": seconds,
        **_galaxy_scores(operator, samples, row, obs, where, d.levels, final_noise),
    }
    print(json.dumps(result))
    return result


def _summary(per_lens: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and [min, max] over lenses of each method's figures."""
    summary: dict[str, Any] = {}
    for method in ["mmps", "dps", "gp", "empirical"]:
        rows = [e[method] for e in per_lens if method in e]
        if not rows:
            continue
        summary[method] = {
            key: _mean_range([r[key] for r in rows])
            for key in (
                "reduced_chi_square",
                "rmse",
                "rmse_galaxy",
                "spread_skill",
                "spread_skill_galaxy",
                "samples_per_second",
                "cpu_seconds_per_sample",
            )
            if key in rows[0]
        }
        if "diverged_samples" in rows[0]:
            summary[method]["diverged_samples"] = sum(r["diverged_samples"] for r in rows)
        for key in ("coverage", "coverage_galaxy"):
            if key in rows[0]:
                summary[method][key] = {
                    lv: _mean_range([r[key][lv] for r in rows]) for lv in rows[0][key]
                }
    return summary


def run_diagnose(cfg: LensingConfig) -> dict:
    """The prior's quality checks, then reconstructions of held-out lenses with MMPS (and DPS),
    the Gaussian baselines, wrong Einstein radii, the fitted lens and the cost of a sample.

    Each part's results are cached under ``<out>/diagnose/parts`` (see :class:`_PartCache`);
    with every part in ``diagnose.parts`` (the default), writes ``<out>/diagnose/
    diagnostics.json`` and figures beside it and returns the report."""
    from appa.lensing import diagnostics as dg
    from appa.lensing.prior import GalaxyPrior

    torch.set_num_threads(cfg.threads)
    d = cfg.diagnose
    out = cfg.out / "diagnose"
    out.mkdir(parents=True, exist_ok=True)
    prior = GalaxyPrior.load(cfg.prior)
    cache = _PartCache(cfg, prior)
    report: dict[str, Any] = {"prior": str(cfg.prior), "prior_step": prior.step}

    if "prior" in d.parts:
        quality = cache.get("prior") or cache.put("prior", _diagnose_prior(cfg, prior, out))
        report["prior_quality"] = quality["quality"]
        report["prior_sampling"] = {k: v for k, v in quality.items() if k != "quality"}

    held_out = read_lenses(cfg.out / "lenses.zarr")
    indices = d.lenses if d.lenses is not None else list(range(len(held_out)))
    bad = [i for i in indices if not 0 <= i < len(held_out)]
    if bad:
        raise ValueError(f"diagnose.lenses {bad}: there are {len(held_out)} held-out lenses")
    if "lenses" in d.parts:
        baselines = gaussian_baselines(cfg, ["gp", "empirical"])
        per_lens = []
        for i in indices:
            entry = cache.get(f"lens-{i}")
            if entry is None:
                entry = cache.put(
                    f"lens-{i}", _diagnose_lens(cfg, prior, held_out[i], baselines, out)
                )
            per_lens.append(entry)
        report["lenses"] = per_lens
        report["summary"] = _summary(per_lens)
        curves: dict[str, dict[str, list[float]]] = {}
        for entry in per_lens:
            for name in ("mmps", "dps"):
                for key, label in (("coverage", "all pixels"), ("coverage_galaxy", "galaxy")):
                    for lv, c in entry.get(name, {}).get(key, {}).items():
                        curves.setdefault(f"{name} ({label})", {}).setdefault(lv, []).append(c)
        dg.plot_coverage(
            out / "coverage.png",
            {name: {lv: float(np.mean(v)) for lv, v in c.items()} for name, c in curves.items()},
            title=f"per-pixel coverage over {len(per_lens)} held-out lenses",
        )

    # wrong lens: the Einstein radius off by a few percent
    if "wrong_lens" in d.parts:
        errors = []
        for i in indices[: d.error_lenses]:
            rows = cache.get(f"wrong-lens-{i}")
            if rows is None:
                rows = cache.put(f"wrong-lens-{i}", _diagnose_wrong_lens(cfg, prior, held_out[i]))
            errors.extend(rows)
        report["wrong_theta_e"] = errors

    if "fit" in d.parts and d.fit_lens and d.theta_e_errors:
        coarse = gaussian_baselines(cfg, ["empirical"], binning=d.fit_binning)["empirical"]
        fits = []
        for i in indices[: d.error_lenses]:
            fit = cache.get(f"fit-{i}")
            if fit is None:
                fit = cache.put(f"fit-{i}", _diagnose_fit(cfg, prior, held_out[i], coarse))
            fits.append(fit)
        report["fitted_lens"] = fits

    if set(PARTS) <= set(d.parts):
        _write_json(out / "diagnostics.json", report)
        print(json.dumps(report.get("summary", {}), indent=2))
    else:
        print(
            f"diagnose: parts {list(d.parts)} done (cached under {cache.root}); run with every "
            "part for diagnostics.json"
        )
    return report
