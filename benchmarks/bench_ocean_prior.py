"""What the sea's prior and its reanalyses give, by variable and depth band.

With ``--prior`` and ``--truth`` (a held-out period): the autoencoder's reconstruction RMSE
(area-weighted over the sea's cells; physical units and units of each channel's standard
deviation) and the climate of unconditional prior trajectories against the data's
(:func:`appa.assimilation.quality.prior_quality`: mean error in data standard deviations,
standard-deviation ratio, lag-1 autocorrelation), each aggregated by variable over depth bands,
and the shelf's hypoxic bottom cells of the period as the autoencoder gives them back.
With ``--archive`` (a reanalysis of that truth), the ensemble mean's RMSE against the truth over
the sea, the ensemble spread and the spread/skill ratio (spread times ``sqrt((M + 1) / M)``
over the RMSE), by variable and depth band, beside the RMSE of the mean of each calendar day
over the truth's years before the archive's. With ``--autoencoder`` (a checkpoint alone, for
example one trained on other years), only its shelf-hypoxia figures. Prints JSON (also written
to ``--out``).

    python benchmarks/bench_ocean_prior.py --prior pipelines/priors/toy-sea-tiny \\
        --truth data/toy_sea.zarr --period 2003-01-01 2003-12-31
    python benchmarks/bench_ocean_prior.py --truth data/toy_sea.zarr \\
        --archive outputs/reanalysis_toy_sea_2003_09_floats.zarr
    python benchmarks/bench_ocean_prior.py --truth data/toy_sea.zarr \\
        --autoencoder runs/autoencoder-toy-sea/checkpoints --period 2003-06-01 2003-11-30
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import xarray as xr

from appa.data.grids import area_weights

BANDS = {"0-50 m": (0.0, 50.0), "50-200 m": (50.0, 200.0), "200-1000 m": (200.0, 1000.0)}


def _band(level: float | None) -> str:
    if level is None:
        return "surface"
    for name, (top, bottom) in BANDS.items():
        if top <= level < bottom:
            return name
    return f">{max(b for _, b in BANDS.values()):.0f} m"


def _grouped(channels: list[tuple[str, float | None]], values: np.ndarray) -> dict:
    """The mean of ``values`` (one per channel, NaN left out) by variable and band."""
    out: dict = {}
    for (name, level), value in zip(channels, values, strict=True):
        out.setdefault(name, {}).setdefault(_band(level), []).append(float(value))
    return {
        name: {
            band: (round(float(np.nanmean(v)), 4) if np.isfinite(v).any() else None)
            for band, v in bands.items()
        }
        for name, bands in out.items()
    }


def prior_figures(prior_path: Path, truth: str, period: tuple[str, str], samples: int) -> dict:
    from appa.assimilation import LatentPrior
    from appa.assimilation.quality import prior_quality
    from appa.data.sources import open_era5

    prior = LatentPrior.from_checkpoints(
        str(prior_path / "autoencoder"), str(prior_path / "diffusion")
    )
    ds = open_era5(truth, spec=prior.spec, time=slice(*period)).load()
    t0 = time.perf_counter()
    quality = prior_quality(prior, ds, samples=samples, window=prior.window, steps=32)
    seconds = time.perf_counter() - t0
    channels = prior.spec.channels
    standardised = np.array(list(quality.reconstruction.values()))
    climate = quality.climate
    # channels whose spread in the data is far below their normalisation (the std floor of
    # nearly constant deep water): ratios to it say nothing of the prior
    varying = climate.std_data > 0.1 * prior.statistics.std
    return {
        "check_s": round(seconds, 1),
        "reconstruction_rmse_standardised": _grouped(channels, standardised),
        "reconstruction_rmse_physical": _grouped(channels, standardised * prior.statistics.std),
        "samples": quality.samples,
        "sample_mean_error_in_data_std": _grouped(
            channels, np.where(varying, climate.mean_error, np.nan)
        ),
        "sample_std_ratio": _grouped(channels, np.where(varying, climate.std_ratio, np.nan)),
        "sample_lag1": _grouped(channels, np.where(varying, climate.lag1_samples, np.nan)),
        "data_lag1": _grouped(channels, np.where(varying, climate.lag1_data, np.nan)),
        "mean_reconstruction_rmse_standardised": round(float(standardised.mean()), 4),
        "shelf_bottom_oxygen": shelf_hypoxia_figures(
            str(prior_path / "autoencoder"), truth, period, ds
        ),
    }


def reconstruct(autoencoder: str, ds: xr.Dataset | None, truth: str, period: tuple[str, str]):
    """The truth's states over ``period`` (``ds`` when already read with the autoencoder's
    spec) through an autoencoder checkpoint alone (encode, then decode; NaN filled with each
    channel's mean, the standardised 0 it was trained with there). Returns the states read,
    the physical reconstruction ``(time, C, H, W)`` and the state spec."""
    import torch

    from appa.data import stack
    from appa.data.sources import open_era5
    from appa.training.encode import load_autoencoder

    model, meta = load_autoencoder(autoencoder)
    if model.config.date_context:
        raise SystemExit(f"{autoencoder}: a date-conditioned autoencoder; not supported here")
    spec, stats = meta["card"].spec_and_statistics()
    if ds is None:
        ds = open_era5(truth, spec=spec, time=slice(*period)).load()
    x, _ = stack(ds, spec)
    states = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    mean, _ = stats.tensors(states.dtype)
    filled = torch.where(torch.isnan(states), mean.expand_as(states), states)
    with torch.no_grad():
        coded = model.decode(model.encode(stats.standardize(filled)))
    return ds, stats.unstandardize(coded).numpy(), spec


def shelf_hypoxia_figures(
    autoencoder: str, truth: str, period: tuple[str, str], ds: xr.Dataset | None = None
) -> dict:
    """The shelf's hypoxic bottom cell-days of the period (bottom oxygen below 63 mmol m^-3 on
    floors above 100 m) as the truth has them and as the autoencoder gives them back: its
    reconstruction bounds what any posterior through the decoder can flag. Also the RMSE of
    the reconstructed bottom oxygen over all the shelf's cell-days (mmol m^-3). ``ds``: the truth
    over the period on the autoencoder's spec, when already read."""
    from appa.data.toy_sea import shelf_cells
    from appa.metrics.ocean import HYPOXIA_THRESHOLD, bottom_values

    ds, decoded, spec = reconstruct(autoencoder, ds, truth, period)
    static = xr.open_zarr(truth)
    levels = [float(v) for v in ds["level"].values]
    mask = static["sea_mask"].sel(level=levels).values.astype(bool)
    shelf = shelf_cells(mask, static["sea_floor_depth"].values)
    oxygen = [i for i, (name, _) in enumerate(spec.channels) if name == "oxygen"]
    true_bottom = bottom_values(ds["oxygen"].values.astype(np.float64), mask)
    coded_bottom = bottom_values(decoded[:, oxygen].astype(np.float64), mask)
    hypoxic = (true_bottom < HYPOXIA_THRESHOLD) & shelf
    # the decoder's error on every shelf bottom cell-day: a width for dressing the members'
    # bottom oxygen (appa evaluate-sea --sigma)
    error = (coded_bottom - true_bottom)[:, shelf]
    rmse = round(float(np.sqrt(np.nanmean(error**2))), 1)
    if not hypoxic.any():
        return {"shelf_bottom_rmse": rmse, "hypoxic_cell_days": 0}
    return {
        "shelf_bottom_rmse": rmse,
        "hypoxic_cell_days": int(hypoxic.sum()),
        "truth_median": round(float(np.median(true_bottom[hypoxic])), 1),
        "reconstruction_median": round(float(np.median(coded_bottom[hypoxic])), 1),
        "reconstruction_min": round(float(coded_bottom[hypoxic].min()), 1),
        "reconstruction_still_hypoxic": round(
            float((coded_bottom[hypoxic] < HYPOXIA_THRESHOLD).mean()), 3
        ),
        "reconstruction_hypoxic_cell_days": int(((coded_bottom < HYPOXIA_THRESHOLD) & shelf).sum()),
    }


def reanalysis_figures(archive: str, truth: str, variables: list[str]) -> dict:
    ens = xr.open_zarr(archive)
    store = xr.open_zarr(truth).sel(level=ens.level)
    true = store.sel(time=ens.time)
    # the simplest reference: the mean of each calendar day over the truth's earlier years
    first_year = int(ens.time.dt.year.min())
    past = store.sel(time=store.time.dt.year < first_year)
    climatology = None
    if past.sizes["time"]:
        days = ens.time.dt.dayofyear
        climatology = past.groupby("time.dayofyear").mean().sel(dayofyear=days)
        climatology = climatology.drop_vars("dayofyear").assign_coords(time=ens.time)
    members = ens.sizes["member"]
    w = xr.DataArray(area_weights(ens.latitude.values), dims="latitude")
    out: dict = {"members": members, "days": ens.sizes["time"]}
    for name in variables:
        x, y = ens[name].load(), true[name].load()
        sea = y.notnull()
        mean = x.mean("member")
        weight = (sea * w).astype(float)
        dims = ("time", "latitude", "longitude")
        mse = (((mean - y) ** 2).where(sea, 0.0) * weight).sum(dims) / weight.sum(dims)
        var = (x.var("member", ddof=1).where(sea, 0.0) * weight).sum(dims) / weight.sum(dims)
        clim = None
        if climatology is not None:
            error = (climatology[name].load() - y) ** 2
            clim = (error.where(sea, 0.0) * weight).sum(dims) / weight.sum(dims)
        rows: dict = {}
        levels = ens.level.values
        for band, (top, bottom) in BANDS.items():
            inside = (levels >= top) & (levels < bottom)
            if not inside.any():
                continue
            total = weight.sum(dims).values[inside]
            rmse = float(np.sqrt((mse.values[inside] * total).sum() / total.sum()))
            spread = float(np.sqrt((var.values[inside] * total).sum() / total.sum()))
            rows[band] = {
                "rmse": round(rmse, 4),
                "spread": round(spread, 4),
                "spread_skill": round(spread * np.sqrt((members + 1) / members) / rmse, 3),
            }
            if clim is not None:
                reference = np.sqrt((clim.values[inside] * total).sum() / total.sum())
                rows[band]["calendar_day_mean_rmse"] = round(float(reference), 4)
        total = weight.sum(dims).values
        rmse = float(np.sqrt((mse.values * total).sum() / total.sum()))
        spread = float(np.sqrt((var.values * total).sum() / total.sum()))
        rows["all levels"] = {
            "rmse": round(rmse, 4),
            "spread": round(spread, 4),
            "spread_skill": round(spread * np.sqrt((members + 1) / members) / rmse, 3),
        }
        out[name] = rows
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--truth", required=True)
    parser.add_argument("--prior", type=Path)
    parser.add_argument("--period", nargs=2, default=("2003-01-01", "2003-12-31"))
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--archive")
    parser.add_argument(
        "--autoencoder", help="an autoencoder checkpoint alone: only its shelf-hypoxia figures"
    )
    parser.add_argument("--variables", nargs="+", default=["temperature", "salinity", "oxygen"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    figures: dict = {}
    if args.prior is not None:
        figures["prior"] = prior_figures(args.prior, args.truth, tuple(args.period), args.samples)
    if args.autoencoder is not None:
        figures["autoencoder_shelf_bottom_oxygen"] = shelf_hypoxia_figures(
            args.autoencoder, args.truth, tuple(args.period)
        )
    if args.archive is not None:
        figures["reanalysis"] = reanalysis_figures(args.archive, args.truth, args.variables)
    text = json.dumps(figures, indent=1)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
