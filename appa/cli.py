"""The ``appa`` command line. Each subcommand lives in the module that owns its job and is
registered here; heavy imports happen inside the commands so ``appa --help`` stays instant."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

import appa

app = typer.Typer(
    name="appa",
    help="Appa: calibrated posterior ensembles p(x|y) with deep generative priors.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config file (defaults if omitted).")
]
OverridesOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key: --set key.sub=value (repeatable)."),
]


def _error_line(error: BaseException) -> str:
    """An error as one line: ``<path>: <reason>`` for an operating-system error on a file
    (permission denied, a file where a folder is expected...), else its message."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        where = str(error.filename)
        if error.filename2 is not None:
            where += f" -> {error.filename2}"
        return f"{where}: {error.strerror}"
    return str(error)


@contextmanager
def _reported(*errors: type[BaseException], status: int = 2) -> Iterator[None]:
    """Ends the command with one line, ``error: ...`` (:func:`_error_line`), and exit ``status``
    (2: bad input) on an error of these types, instead of a traceback."""
    try:
        yield
    except errors as error:
        typer.echo(f"error: {_error_line(error)}", err=True)
        raise typer.Exit(status) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"appa {appa.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Appa command line."""


@app.command()
def showcase(
    out: Annotated[Path, typer.Option(help="Output folder for the figure and summary.")] = Path(
        "outputs/showcase"
    ),
    config: ConfigOption = None,
    overrides: OverridesOption = None,
) -> None:
    """Posterior sampling on a 2-D Gaussian mixture: prior, posterior and exact posterior."""
    from appa.config import ConfigError, load_config
    from appa.jobs.showcase import ShowcaseConfig, run_showcase

    with _reported(ConfigError):
        cfg = load_config(ShowcaseConfig, config, overrides or [])
    run_showcase(cfg, out)


@app.command("model-info")
def model_info(
    preset: Annotated[
        str, typer.Argument(help="Network preset: tiny, small, appa-release or paper.")
    ],
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1)] = 1,
    overrides: OverridesOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Parameter counts, shapes, tokens and training-step memory of a preset (meta device)."""
    import json

    from appa.config import ConfigError
    from appa.nn.info import format_info
    from appa.nn.info import model_info as info_of
    from appa.nn.presets import get_preset

    with _reported(ConfigError):
        cfg = get_preset(preset, overrides or [])
    info = info_of(cfg, preset, batch_size=batch_size)
    typer.echo(json.dumps(info.as_dict(), indent=2) if as_json else format_info(info))


@app.command("toy-earth")
def toy_earth(
    out: Annotated[Path, typer.Option(help="Output Zarr store (written atomically).")],
    years: Annotated[float | None, typer.Option(help="Simulated years after spin-up.")] = None,
    grid: Annotated[str | None, typer.Option(help="Output grid NLONxNLAT: 64x32, 128x64.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the initial perturbation.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing store.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    plot: Annotated[Path | None, typer.Option(help="Also save a figure (PNG) here.")] = None,
    config: ConfigOption = None,
    overrides: OverridesOption = None,
) -> None:
    """Run the toy Earth (two-layer QG atmosphere) and write it in the canonical ERA5 layout."""
    from appa.config import ConfigError, load_config
    from appa.data.toy_earth import ToyEarthConfig, write_toy_earth

    extra = [
        f"{k}={v}" for k, v in (("years", years), ("grid", grid), ("seed", seed)) if v is not None
    ]
    with _reported(ConfigError, OSError):
        cfg = load_config(ToyEarthConfig, config, [*(overrides or []), *extra])
        path = write_toy_earth(cfg, out, progress=progress, overwrite=overwrite)
    typer.echo(f"wrote {path}")
    if plot is not None:
        from appa.data.plots import plot_snapshot

        typer.echo(f"figure: {plot_snapshot(path, plot)}")


@app.command("toy-sea")
def toy_sea(
    out: Annotated[Path, typer.Option(help="Output Zarr store (written atomically).")],
    years: Annotated[
        float | None, typer.Option(help="Simulated years after spin-up (days = years x 365.25).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of eddies, weather, chlorophyll.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing store.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    config: ConfigOption = None,
    overrides: OverridesOption = None,
) -> None:
    """Run the toy sea (a Black-Sea-like basin: temperature, salinity, oxygen, chlorophyll on
    depth levels, sea-surface height) and write it in the canonical layout."""
    from appa.config import ConfigError, load_config
    from appa.data.toy_sea import ToySeaConfig, generate_toy_sea

    extra = [f"seed={seed}"] if seed is not None else []
    if years is not None:
        if not years > 0:
            typer.echo(f"error: --years must be positive, got {years}", err=True)
            raise typer.Exit(2)
        extra.append(f"days={max(1, round(years * 365.25))}")
    with _reported(ConfigError, OSError):
        cfg = load_config(ToySeaConfig, config, [*(overrides or []), *extra])
        path = generate_toy_sea(cfg, out, progress=progress, overwrite=overwrite)
    typer.echo(f"wrote {path}")


@app.command()
def observe(
    truth: Annotated[Path, typer.Option(help="Gridded truth store (any ERA5 layout).")],
    out: Annotated[Path, typer.Option(help="Output observation store (written atomically).")],
    format: Annotated[
        str | None,
        typer.Option(
            help="zarr: an observation store (default); bufr: a folder of SYNOP and TEMP BUFR "
            "files, one per day, for appa ingest."
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing store.")] = False,
    config: ConfigOption = None,
    overrides: OverridesOption = None,
) -> None:
    """Simulate observations of a gridded truth: the atmosphere's stations, satellite,
    coarse-grained fields and radiosondes, or a sea's satellite fields and profiling floats."""
    from appa.config import ConfigError, load_config
    from appa.data.sources import SelectionError
    from appa.observations.schema import ObservationError
    from appa.observations.simulators import ObserveConfig, observe_store

    extra = [f"format={format}"] if format is not None else []
    with _reported(ConfigError, ObservationError, SelectionError, OSError):
        cfg = load_config(ObserveConfig, config, [*(overrides or []), *extra])
        path, n = observe_store(str(truth), cfg, str(out), overwrite=overwrite)
    if cfg.format == "bufr":
        files = sorted(p.name for p in Path(path).glob("*.bufr"))
        typer.echo(f"wrote {n} observations to {path} as {len(files)} BUFR files")
    else:
        typer.echo(f"wrote {n} observations to {path}")


@app.command()
def ingest(
    format: Annotated[
        str | None,
        typer.Argument(help="bufr, csv, isd-lite or swath (or give sources in the config)."),
    ] = None,
    sources: Annotated[list[str] | None, typer.Argument(help="Files of that format.")] = None,
    out: Annotated[str | None, typer.Option(help="Observation store (new, or extended).")] = None,
    period: Annotated[
        tuple[str, str] | None,
        typer.Option(help="START END of the state times to ingest (partition boundaries)."),
    ] = None,
    grid: Annotated[
        str | None, typer.Option(help="Gridded store of the state's grid and orography.")
    ] = None,
    config: ConfigOption = None,
    overrides: OverridesOption = None,
) -> None:
    """Real observations (BUFR, station tables, satellite swaths) into an observation store,
    with quality control; prints what was read, kept and rejected per platform."""
    from appa.config import ConfigError, load_config
    from appa.files import OutputExistsError
    from appa.jobs.ingest import IngestConfig, SourceConfig, run_ingest
    from appa.observations.schema import ObservationError

    extra = [f"out={out}"] if out else []
    extra += [f"grid={grid}"] if grid else []
    with _reported(ConfigError, ObservationError, OutputExistsError, OSError):
        if (format is None) != (not sources):
            raise ConfigError("give a FORMAT and its SOURCE files together")
        job = load_config(IngestConfig, config, [*(overrides or []), *extra])
        changes = {}
        if format is not None:
            try:
                source = SourceConfig(
                    format=format,
                    paths=list(sources or []),
                    **_source_settings(job, format),
                )
            except ValueError as error:
                raise ConfigError(f"{format}: {error}") from None
            changes["sources"] = [*job.sources, source]
        if period is not None:
            changes["period"] = tuple(period)
        job = IngestConfig.model_validate({**job.model_dump(), **changes})
        result = run_ingest(job, echo=typer.echo)
    typer.echo(
        f"ingest: {len(result.partitions)} partition(s) written to {result.store} "
        f"in {result.seconds:.1f} s"
    )


def _source_settings(job, format: str) -> dict:
    """A format's settings from the config's first source of that format (so a command line
    can name the files and the config the column mapping)."""
    for source in job.sources:
        if source.format == format:
            return {k: getattr(source, k) for k in ("columns", "stations", "swath")}
    return {}


train_app = typer.Typer(
    help="Train the autoencoder or the latent diffusion prior (Ray Train or in-process).",
    no_args_is_help=True,
)
app.add_typer(train_app, name="train")

AddressOption = Annotated[
    str | None,
    typer.Option("--address", help="Ray cluster address (default: start a local cluster)."),
]


def _train(kind: str, config: Path | None, overrides: list[str] | None, address: str | None):
    from appa.config import ConfigError, load_config
    from appa.jobs.train import TrainAutoencoderConfig, TrainDiffusionConfig, run_training

    model = TrainAutoencoderConfig if kind == "autoencoder" else TrainDiffusionConfig
    extra = [f"runner.address={address}"] if address else []
    with _reported(ConfigError, OSError, KeyError):
        job = load_config(model, config, [*(overrides or []), *extra])
        metrics = run_training(job)
    shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, int | float))
    typer.echo(f"{kind}: {shown}")
    typer.echo(f"checkpoints: {job.run_dir}/checkpoints")


@train_app.command("autoencoder")
def train_autoencoder(
    config: ConfigOption = None, overrides: OverridesOption = None, address: AddressOption = None
) -> None:
    """Train the state autoencoder on a gridded store (data.source) or a window store."""
    _train("autoencoder", config, overrides, address)


@train_app.command("diffusion")
def train_diffusion(
    config: ConfigOption = None, overrides: OverridesOption = None, address: AddressOption = None
) -> None:
    """Train the latent trajectory denoiser on a window store of latents."""
    _train("diffusion", config, overrides, address)


@app.command()
def encode(
    config: ConfigOption = None, overrides: OverridesOption = None, address: AddressOption = None
) -> None:
    """Encode a gridded or window store into a latent store (Ray Data actor pool, resumable)."""
    from appa.config import ConfigError, load_config
    from appa.io.checkpoints import CheckpointError
    from appa.jobs.encode import EncodeConfig, run_encode

    extra = [f"runner.address={address}"] if address else []
    with _reported(ConfigError, CheckpointError, OSError):
        job = load_config(EncodeConfig, config, [*(overrides or []), *extra])
        result = run_encode(job)
    typer.echo(
        f"encoded {result['encoded']} blocks, skipped {result['skipped']} already done; "
        f"latent std per channel {[round(v, 3) for v in result['latent_std']]}"
    )
    typer.echo(f"latents: {job.output}")


def _assimilate(
    task: str,
    config: Path | None,
    overrides: list[str] | None,
    start: str | None,
    end: str | None,
    members: int | None,
    out: str | None,
    address: str | None,
) -> None:
    from appa.assimilation.prior import PriorMismatchError
    from appa.config import ConfigError, load_config
    from appa.io.archive import ArchiveError
    from appa.io.checkpoints import CheckpointError
    from appa.jobs.assimilate import AssimilateConfig, run_assimilation
    from appa.observations.schema import ObservationError

    extra = [f"task={task}"]
    for key, value in (("start", start), ("end", end), ("members", members), ("output", out)):
        if value is not None:
            extra.append(f"{key}={value}")
    if address:
        extra.append(f"runner.address={address}")
    with _reported(
        ConfigError,
        ArchiveError,
        CheckpointError,
        PriorMismatchError,
        ObservationError,
        OSError,  # files and folders, and the Ray cluster's address
    ):
        job = load_config(AssimilateConfig, config, [*(overrides or []), *extra])
        archive, report = run_assimilation(job, echo=typer.echo)
    typer.echo(
        f"{task}: {sum(r.written for r in report.records)} units computed, "
        f"{report.skipped} already done, {len(report.failures)} failed attempts retried; "
        f"archive {archive.url}"
    )
    _echo_observations(archive)


def _echo_observations(archive) -> None:
    """The account of the job's observations, as its archive records it."""
    from appa.assimilation.screening import ObservationSummary

    summary = ObservationSummary.from_attributes(archive.open_dataset().attrs)
    for line in summary.lines() if summary is not None else []:
        typer.echo(line)


StartOption = Annotated[str | None, typer.Option(help="First state (date), overrides start.")]
EndOption = Annotated[str | None, typer.Option(help="Last state (date, inclusive).")]
MembersOption = Annotated[int | None, typer.Option(help="Ensemble members.")]
OutOption = Annotated[str | None, typer.Option(help="Output Zarr archive (path or URL).")]


def _assimilation_command(task: str, doc: str):
    def command(
        config: ConfigOption = None,
        overrides: OverridesOption = None,
        start: StartOption = None,
        end: EndOption = None,
        members: MembersOption = None,
        out: OutOption = None,
        address: AddressOption = None,
    ) -> None:
        _assimilate(task, config, overrides, start, end, members, out, address)

    command.__doc__ = doc
    return command


for _task, _doc in (
    (
        "reanalysis",
        "Reanalysis: joint posterior trajectories from start to end, given all observations.",
    ),
    ("filter", "Filtering: cycled analyses, each using only observations up to its valid time."),
    (
        "forecast",
        "Forecasts from a reanalysis archive or from observations; lead times in the archive.",
    ),
):
    app.command(_task)(_assimilation_command(_task, _doc))


@app.command()
def daily(
    config: ConfigOption = None,
    overrides: OverridesOption = None,
    address: AddressOption = None,
) -> None:
    """The daily reanalysis: extends its archive by every day whose observations are final,
    continuing the days already written; nothing to do is success."""
    from appa.assimilation.prior import PriorMismatchError
    from appa.config import ConfigError, load_config
    from appa.files import WriterBusyError
    from appa.io.archive import ArchiveError
    from appa.io.checkpoints import CheckpointError
    from appa.jobs.daily import DailyConfig, run_daily
    from appa.observations.schema import ObservationError

    extra = [f"runner.address={address}"] if address else []
    with _reported(
        ConfigError,
        ArchiveError,
        CheckpointError,
        PriorMismatchError,
        ObservationError,
        WriterBusyError,
        OSError,
    ):
        job = load_config(DailyConfig, config, [*(overrides or []), *extra])
        report = run_daily(job, echo=typer.echo)
    through = report.complete_through or "no day yet"
    if not report.days:
        typer.echo(
            f"daily: nothing to do: {job.output} is complete through {through}; waiting: "
            f"{report.waiting}"
        )
        return
    typer.echo(
        f"daily: {len(report.days)} day{'s' if len(report.days) > 1 else ''} appended "
        f"({report.days[0]} .. {report.days[-1]}), "
        f"{report.computed} units computed, {report.skipped} already done; {job.output} is "
        f"complete through {through}; next: {report.waiting}"
    )


@app.command()
def demo(config: ConfigOption = None, overrides: OverridesOption = None) -> None:
    """The toy-Earth demo: observe held-out days, reanalyse them with the committed tiny prior
    on Ray actors, score against the truth and the classical baselines, plot."""
    from appa.config import ConfigError, load_config
    from appa.io.archive import ArchiveError
    from appa.jobs.demo import DemoConfig, describe, run_demo
    from appa.observations.schema import ObservationError

    with _reported(ConfigError, OSError, ObservationError, ArchiveError):
        cfg = load_config(DemoConfig, config, overrides or [])
        result = run_demo(cfg, echo=typer.echo)
    typer.echo("the reanalysis's ensemble mean against the truth (RMSE, time mean):")
    for line in describe(result, cfg.observed_channels()):
        typer.echo(f"  {line}")
    typer.echo(f"figures: {', '.join(result.figures)}")
    typer.echo(f"scores: {result.table}; timings (s): {result.seconds}")


@app.command("export-checkpoint")
def export_checkpoint_command(
    source: Annotated[str, typer.Argument(help="A checkpoint folder or a run's checkpoints.")],
    destination: Annotated[str, typer.Argument(help="Folder that receives step-<N>/.")],
    group: Annotated[
        list[str] | None,
        typer.Option(
            "--group",
            "-g",
            help="Weight group to keep (default: model and ema); valid cells are always kept.",
        ),
    ] = None,
    valid_from: Annotated[
        str | None,
        typer.Option(
            help="An autoencoder's training store: add the cells where its data hold values "
            "(decoded states are NaN elsewhere), for checkpoints written without them."
        ),
    ] = None,
    period: Annotated[
        tuple[str, str] | None,
        typer.Option(help="With --valid-from: the training period (inclusive): START END."),
    ] = None,
) -> None:
    """Copy a checkpoint's weights without optimiser state (for committing or sharing)."""
    from appa.io.checkpoints import CheckpointError, export_checkpoint

    add = None
    if valid_from is not None:
        from appa.io.cards import CardError

        with _reported(CheckpointError, CardError, OSError, ValueError, KeyError):
            add = _valid_group(source, valid_from, period)
    elif period is not None:
        typer.echo("error: --period goes with --valid-from", err=True)
        raise typer.Exit(2)
    with _reported(CheckpointError, OSError):
        path = export_checkpoint(source, destination, group or None, add)
    typer.echo(f"exported: {path}")


def _valid_group(
    source: str, store: str, period: tuple[str, str] | None
) -> dict[str, dict[str, object]]:
    """The ``valid`` tensor group of the autoencoder checkpoint ``source``, from ``store``."""
    import torch

    from appa.data.datasets import WindowDataset
    from appa.io.cards import AutoencoderCard, read_card
    from appa.io.checkpoints import VALID_GROUP, inspect_checkpoint

    head = inspect_checkpoint(source)
    card = read_card(head.metadata, head.path, kind="autoencoder").card
    assert isinstance(card, AutoencoderCard)
    spec, _ = card.spec_and_statistics()
    data = WindowDataset(store, spec, window=1, period=period)
    valid = data.valid_cells()
    if valid is None:
        raise ValueError(f"{head.path}: its state spec masks no variable; nothing to add")
    if valid.shape != (card.autoencoder.in_channels, *card.autoencoder.grid):
        raise ValueError(
            f"{store}: states {valid.shape}, the autoencoder's "
            f"{(card.autoencoder.in_channels, *card.autoencoder.grid)}"
        )
    return {VALID_GROUP: {"cells": torch.from_numpy(valid.astype("uint8"))}}


@app.command("prior-check")
def prior_check(
    truth: Annotated[str, typer.Option(help="Gridded truth store (held-out period).")],
    period: Annotated[tuple[str, str], typer.Option(help="Held-out dates (inclusive): START END.")],
    prior: Annotated[
        Path,
        typer.Option(help="Folder with autoencoder/ and diffusion/ checkpoints."),
    ] = Path("pipelines/priors/toy-earth-tiny"),
    samples: Annotated[int, typer.Option(help="Prior trajectories drawn.")] = 32,
    window: Annotated[int, typer.Option(help="States per trajectory.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the first group of trajectories.")] = 0,
    steps: Annotated[int, typer.Option(help="Sampler steps (Heun).")] = 32,
) -> None:
    """Quality checks of a latent prior on held-out data: autoencoder RMSE per channel, and the
    moments, lag-1 autocorrelation and zonal spectra of decoded prior trajectories against the
    data's (tolerances: RMSE 0.1 standardised; mean within 0.1 std, std within 10 %, lag-1
    within 0.05, zonal power within a factor 2). Exits 1 when a check is outside them."""
    from appa.assimilation import LatentPrior
    from appa.assimilation.quality import prior_quality
    from appa.data.sources import open_era5

    model = LatentPrior.from_checkpoints(str(prior / "autoencoder"), str(prior / "diffusion"))
    ds = open_era5(truth, spec=model.spec, time=slice(*period)).load()
    quality = prior_quality(model, ds, samples=samples, window=window, seed=seed, steps=steps)
    typer.echo(quality.report())
    departures = quality.departures()
    for line in departures:
        typer.echo(f"outside tolerance: {line}")
    if departures:
        raise typer.Exit(1)
    typer.echo("every check within tolerance")


# --- appa npe: neural posterior estimation (appa.jobs.npe) --------------------------------
npe_app = typer.Typer(help="Neural posterior estimation p(theta | x): train, sample, diagnose.")
app.add_typer(npe_app, name="npe")


def _npe_config(config: Path | None, overrides: list[str] | None):
    from appa.config import ConfigError, load_config
    from appa.jobs.npe import NPEConfig

    with _reported(ConfigError):
        return load_config(NPEConfig, config, overrides or [])


@npe_app.command("train")
def npe_train(config: ConfigOption = None, overrides: OverridesOption = None) -> None:
    """Train a posterior estimator (or an ensemble) and write <out>/checkpoint."""
    from appa.jobs.npe import run_train

    run_train(_npe_config(config, overrides))


@npe_app.command("sample")
def npe_sample(config: ConfigOption = None, overrides: OverridesOption = None) -> None:
    """Draw posterior samples for one observation; writes samples.npy and a corner plot."""
    from appa.jobs.npe import run_sample

    run_sample(_npe_config(config, overrides))


@npe_app.command("diagnose")
def npe_diagnose(config: ConfigOption = None, overrides: OverridesOption = None) -> None:
    """Coverage, SBC, TARP (and C2ST against sbibm references) with plots."""
    from appa.jobs.npe import run_diagnose

    run_diagnose(_npe_config(config, overrides))


# --- appa lensing: source galaxies behind strong lenses (appa.jobs.lensing) --------------------
lensing_app = typer.Typer(
    help="Strong lensing: posterior source galaxies from lensed images with a diffusion prior."
)
app.add_typer(lensing_app, name="lensing")


def _lensing_config(config: Path | None, overrides: list[str] | None):
    from appa.config import ConfigError, load_config
    from appa.jobs.lensing import LensingConfig

    with _reported(ConfigError):
        return load_config(LensingConfig, config, overrides or [])


def _lensing_run(run, config: Path | None, overrides: list[str] | None):
    from appa.io.checkpoints import CheckpointError

    cfg = _lensing_config(config, overrides)
    with _reported(
        CheckpointError, FileNotFoundError, FileExistsError, ImportError, ValueError, status=1
    ):
        return run(cfg)


@lensing_app.command("simulate")
def lensing_simulate(config: ConfigOption = None, overrides: OverridesOption = None) -> None:
    """Generate the training galaxies (Zarr) and held-out lenses of generated sources."""
    from appa.jobs.lensing import run_simulate

    _lensing_run(run_simulate, config, overrides)


@lensing_app.command("train")
def lensing_train(config: ConfigOption = None, overrides: OverridesOption = None) -> None:
    """Train the galaxy diffusion prior; writes <out>/prior (and train.export, float16)."""
    from appa.jobs.lensing import run_train

    _lensing_run(run_train, config, overrides)


@lensing_app.command("export")
def lensing_export(config: ConfigOption = None, overrides: OverridesOption = None) -> None:
    """Copy the newest prior under <out>/prior to train.export (EMA, float16, with its card)."""
    from appa.jobs.lensing import run_export

    _lensing_run(run_export, config, overrides)


@lensing_app.command("reconstruct")
def lensing_reconstruct(config: ConfigOption = None, overrides: OverridesOption = None) -> None:
    """Posterior source samples for an observed lens image (Zarr/NPY/FITS + lens parameters)."""
    from appa.jobs.lensing import run_reconstruct

    _lensing_run(run_reconstruct, config, overrides)


@lensing_app.command("diagnose")
def lensing_diagnose(config: ConfigOption = None, overrides: OverridesOption = None) -> None:
    """Prior quality, fit, error against baselines, coverage, wrong lenses, cost."""
    from appa.jobs.lensing import run_diagnose

    _lensing_run(run_diagnose, config, overrides)


# --- appa evaluate / baseline / plot: WeatherBench2 scores, classical baselines, figures ------
@app.command()
def evaluate(
    archive: Annotated[Path, typer.Argument(help="Archive (Zarr, archive layout) to score.")],
    truth: Annotated[str, typer.Option(help="Truth store (path, URL or ERA5 preset).")],
    baseline: Annotated[
        list[str] | None,
        typer.Option(
            "--baseline", "-b", help="Another archive to score: NAME=ARCHIVE (repeatable)."
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write the table here (.nc or .zarr).")] = None,
    name: Annotated[
        str | None, typer.Option(help="Method name of ARCHIVE (default: stem).")
    ] = None,
    variable: Annotated[
        list[str] | None, typer.Option("--variable", "-v", help="Score only these (repeatable).")
    ] = None,
    by_time: Annotated[bool, typer.Option(help="Keep per-time scores in the table.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing score table.")] = False,
) -> None:
    """WeatherBench2 scores (RMSE, spread, spread/skill, fair CRPS, bias) against a truth."""
    from rich.console import Console

    from appa.data.sources import SelectionError
    from appa.files import claim_output
    from appa.metrics.report import evaluate_archives, summary_table, write_table
    from appa.metrics.wb2 import EvaluationError

    archives: dict[str, Path] = {name or archive.name.removesuffix(".zarr"): archive}
    for item in baseline or []:
        key, sep, path = item.partition("=")
        if not sep or not key or not path:
            typer.echo(f"error: --baseline {item!r} is not NAME=ARCHIVE", err=True)
            raise typer.Exit(2)
        archives[key] = Path(path)
    with _reported(EvaluationError, SelectionError, FileNotFoundError, FileExistsError):
        if out is not None:  # before the scores are computed
            claim_output(out, "scores", overwrite=overwrite)
        table = evaluate_archives(archives, truth, variables=variable, by_time=by_time)
    console = Console()
    # Piped output (logs, CI) would otherwise wrap at 80 columns.
    Console(width=max(console.width, 140)).print(summary_table(table))
    if out is not None:
        with _reported(FileExistsError):
            path = write_table(table, out, overwrite=overwrite)
        typer.echo(f"table: {path}")


@app.command("evaluate-sea")
def evaluate_sea_command(
    archive: Annotated[
        list[str], typer.Argument(help="Archives to score: ARCHIVE or NAME=ARCHIVE (several).")
    ],
    truth: Annotated[str, typer.Option(help="The sea's truth store (a toy-sea store).")],
    validation_start: Annotated[
        str, typer.Option(help="First day of the validation period (hypoxia threshold).")
    ],
    validation_end: Annotated[str, typer.Option(help="Last day of the validation period.")],
    test_start: Annotated[
        str | None, typer.Option(help="First held-out day (default: all outside validation).")
    ] = None,
    test_end: Annotated[str | None, typer.Option(help="Last held-out day.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write the scores here (.json, or NetCDF .nc).")
    ] = None,
    sigma: Annotated[
        float | None,
        typer.Option(help="Dress each member's bottom oxygen with a Gaussian (mmol m^-3)."),
    ] = None,
    figures: Annotated[
        Path | None, typer.Option(help="Write figures of --day into this directory.")
    ] = None,
    day: Annotated[str | None, typer.Option(help="Day of the figures.")] = None,
    observations: Annotated[
        Path | None, typer.Option(help="Observation store, for the figure of the day's data.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing score file.")] = False,
) -> None:
    """A sea's scores: ensemble-mean RMSE and spread/skill by depth band (mixed layer,
    pycnocline, deep) and the detection of shelf bottom hypoxia (threshold on the probability
    chosen on the validation period for the best F1; precision and recall on held-out days)."""
    from rich.console import Console

    from appa.files import claim_output
    from appa.metrics.ocean import evaluate_sea, sea_summary, write_sea_scores
    from appa.metrics.wb2 import EvaluationError

    archives: dict[str, Path] = {}
    for item in archive:
        key, sep, path = item.partition("=")
        if not sep:
            key, path = Path(item).name.removesuffix(".zarr"), item
        if not key or not path:
            typer.echo(f"error: archive {item!r} is not ARCHIVE or NAME=ARCHIVE", err=True)
            raise typer.Exit(2)
        if key in archives:
            typer.echo(f"error: two archives are named {key!r}: use NAME=ARCHIVE", err=True)
            raise typer.Exit(2)
        archives[key] = Path(path)
    if (test_start is None) != (test_end is None):
        typer.echo("error: give both --test-start and --test-end, or neither", err=True)
        raise typer.Exit(2)
    if figures is not None and day is None:
        typer.echo("error: --figures needs --day", err=True)
        raise typer.Exit(2)
    test = (test_start, test_end) if test_start is not None else None
    with _reported(EvaluationError, FileNotFoundError, FileExistsError, KeyError, ValueError):
        if out is not None:
            claim_output(out, "scores", overwrite=overwrite)
        table = evaluate_sea(
            archives, truth, (validation_start, validation_end), test=test, sigma=sigma
        )
    console = Console(width=max(Console().width, 140))
    for part in sea_summary(table):
        console.print(part)
    if "hypoxia_not_scored" in table.attrs:
        typer.echo(
            f"hypoxia detection not scored ({table.attrs['hypoxia_not_scored']}): the "
            "threshold is chosen on hypoxic days of the validation period"
        )
    if out is not None:
        with _reported(FileExistsError):
            path = write_sea_scores(table, out, overwrite=overwrite)
        typer.echo(f"scores: {path}")
    if figures is not None:
        from appa.data.sources import open_era5
        from appa.io.archive import open_archive
        from appa.metrics.plots import plot_bottom_oxygen, plot_sea_observations, plot_sea_section

        with _reported(FileNotFoundError, ValueError, KeyError):
            sea = open_era5(truth)
            if observations is not None:
                import pandas as pd

                from appa.observations import read_observations

                d = pd.Timestamp(day).normalize()
                table_obs = read_observations(observations, str(d), str(d + pd.Timedelta("1D")))
                path = plot_sea_observations(table_obs, d, figures / "observations.png")
                typer.echo(f"figure: {path}")
            for key, where in archives.items():
                ds = open_archive(where)
                threshold = float(table["hypoxia"].sel(system=key, score="threshold"))
                for variable in ("temperature", "oxygen"):
                    path = plot_sea_section(
                        ds, sea, variable, day, figures / f"{key}_section_{variable}.png"
                    )
                    typer.echo(f"figure: {path}")
                path = plot_bottom_oxygen(
                    ds, sea, day, figures / f"{key}_bottom_oxygen.png",
                    flag_threshold=threshold, sigma=sigma,
                )  # fmt: skip
                typer.echo(f"figure: {path}")


@app.command()
def baseline(
    kind: Annotated[
        str,
        typer.Argument(help="climatology, persistence, enoi, sea-climatology or sea-regression."),
    ],
    out: Annotated[Path, typer.Option(help="Output archive (Zarr, written atomically).")],
    truth: Annotated[str | None, typer.Option(help="Truth store (training period, grid).")] = None,
    start: Annotated[str | None, typer.Option(help="First analysis/initialisation time.")] = None,
    end: Annotated[str | None, typer.Option(help="Last analysis/initialisation time.")] = None,
    observations: Annotated[
        Path | None, typer.Option(help="Observation store (enoi, sea-regression).")
    ] = None,
    members: Annotated[int | None, typer.Option(help="Members (enoi, sea kinds).")] = None,
    lead_time: Annotated[
        list[str] | None,
        typer.Option("--lead-time", help="Forecast lead time, e.g. 6h (repeatable)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing archive.")] = False,
    config: ConfigOption = None,
    overrides: OverridesOption = None,
) -> None:
    """Classical baselines in the archive layout: climatology, persistence, EnOI; a sea's
    climatology and profile regression from its surface (and floats)."""
    from appa.config import ConfigError, load_config
    from appa.jobs.baseline import KINDS, BaselineConfig, run_baseline

    if kind not in KINDS:
        typer.echo(f"error: unknown baseline {kind!r}: {', '.join(KINDS)}", err=True)
        raise typer.Exit(2)
    member_key = "sea.members" if kind.startswith("sea-") else "enoi.members"
    options = (("truth", truth), ("start", start), ("end", end), (member_key, members))
    extra = [f"{k}={v}" for k, v in options if v is not None]
    if observations is not None:
        extra.append(f"observations={observations}")
    if lead_time:
        extra.append(f"lead_times=[{','.join(lead_time)}]")
    try:
        job = load_config(BaselineConfig, config, [*(overrides or []), *extra])
        path = run_baseline(kind, job, out, overwrite=overwrite)  # type: ignore[arg-type]
    except (ConfigError, ValueError, KeyError, OSError) as error:
        # ValueError covers ObservationError; KeyError covers SelectionError.
        typer.echo(f"error: {_error_line(error)}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {path}")


@app.command()
def verify(archive: Annotated[str, typer.Argument(help="Archive (path or URL).")]) -> None:
    """Read an archive back: a job's done units against the checksums recorded when they were
    written, every chunk of an archive written whole. Changes nothing; exits 1 naming the
    damage (rerunning the job computes damaged units again)."""
    from appa.io.archive import Archive, ArchiveError, open_archive, unreadable_chunks

    with _reported(ArchiveError, FileNotFoundError):
        open_archive(archive)
        try:
            units = Archive(archive)
        except ArchiveError:  # written whole (a baseline): no units, read every chunk
            units = None
        if units is not None:
            damage = [str(d) for d in units.check_units()]
            done = int(units.done_mask().sum())
            sound = f"{done} of {len(units.units)} units done, each reads back as written"
        else:
            bad = unreadable_chunks(archive, limit=None)
            damage = [f"{name} chunk {key} {why}" for name, key, why in bad]
            sound = "every chunk reads back"
    for line in damage:
        typer.echo(f"damaged: {line}")
    if damage:
        raise typer.Exit(1)
    typer.echo(f"{archive}: {sound}")


plot_app = typer.Typer(help="Figures: maps of an archive, metric curves of a table.")
app.add_typer(plot_app, name="plot")


@plot_app.command("maps")
def plot_maps_command(
    archive: Annotated[Path, typer.Argument(help="Archive (Zarr, archive layout).")],
    truth: Annotated[str, typer.Option(help="Truth store.")],
    variable: Annotated[str, typer.Option(help="Variable to map.")],
    time: Annotated[str, typer.Option(help="Valid time.")],
    out: Annotated[Path, typer.Option(help="Output PNG.")],
    level: Annotated[int | None, typer.Option(help="Pressure level (hPa).")] = None,
    lead_time: Annotated[str | None, typer.Option(help="Lead time (forecasts).")] = None,
    observations: Annotated[Path | None, typer.Option(help="Observation store.")] = None,
) -> None:
    """Truth, ensemble mean, error, spread and observations at one time."""
    import pandas as pd

    from appa.data.sources import open_era5
    from appa.io.archive import ArchiveError, open_archive, read_errors_named
    from appa.metrics.plots import plot_maps
    from appa.observations import read_observations

    obs = None
    if observations is not None:
        t = pd.Timestamp(time)
        obs = read_observations(observations, t - pd.Timedelta("1D"), t + pd.Timedelta("1D"))
    with _reported(ArchiveError, FileNotFoundError):
        with read_errors_named(archive, expected=(KeyError,)):
            path = plot_maps(
                open_archive(archive), open_era5(truth), variable, time, out,
                level=level, lead_time=lead_time, observations=obs,
            )  # fmt: skip
    typer.echo(f"figure: {path}")


@plot_app.command("curves")
def plot_curves_command(
    table: Annotated[Path, typer.Argument(help="Table of appa evaluate (.nc or .zarr).")],
    out: Annotated[Path, typer.Option(help="Output PNG.")],
    variable: Annotated[
        list[str], typer.Option("--variable", "-v", help="Variables (repeatable).")
    ],
    level: Annotated[int | None, typer.Option(help="Pressure level (hPa).")] = None,
) -> None:
    """RMSE, spread/skill and CRPS against lead time (or time) for every method."""
    import xarray as xr

    from appa.metrics.plots import plot_metric_curves

    ds = xr.open_dataset(table) if table.suffix == ".nc" else xr.open_zarr(table)
    typer.echo(f"figure: {plot_metric_curves(ds.load(), variable, out, level=level)}")


# --- appa submit / appa jobs: any command as a Ray Job on a standing cluster -----------------
# The config class of each command that has one, by command path (module, class): a submission's
# id hashes the loaded config, so the same job submitted twice gets the same id.
_CONFIG_CLASSES: dict[tuple[str, ...], tuple[str, str]] = {
    ("toy-earth",): ("appa.data.toy_earth", "ToyEarthConfig"),
    ("toy-sea",): ("appa.data.toy_sea", "ToySeaConfig"),
    ("observe",): ("appa.observations.simulators", "ObserveConfig"),
    ("showcase",): ("appa.jobs.showcase", "ShowcaseConfig"),
    ("train", "autoencoder"): ("appa.jobs.train", "TrainAutoencoderConfig"),
    ("train", "diffusion"): ("appa.jobs.train", "TrainDiffusionConfig"),
    ("encode",): ("appa.jobs.encode", "EncodeConfig"),
    ("reanalysis",): ("appa.jobs.assimilate", "AssimilateConfig"),
    ("filter",): ("appa.jobs.assimilate", "AssimilateConfig"),
    ("forecast",): ("appa.jobs.assimilate", "AssimilateConfig"),
    ("demo",): ("appa.jobs.demo", "DemoConfig"),
    ("baseline",): ("appa.jobs.baseline", "BaselineConfig"),
    ("daily",): ("appa.jobs.daily", "DailyConfig"),
}
# a command's own options that say where it runs, not what it computes
_PLACEMENT_PARAMS = {"address", "progress"}

JobsAddressOption = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="The cluster's job server, http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS).",
    ),
]
TokenFileOption = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        help="File holding the cluster's token (default: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, "
        "~/.ray/auth_token).",
    ),
]
# exit status when the submission or query itself fails (0/1/2 are the job's outcome)
_SUBMIT_ERROR = 3


class _NotACommandError(ValueError):
    """Arguments that do not name an appa command that can be submitted."""


def _parse_job(args: list[str]) -> tuple[tuple[str, ...], dict]:
    """The command path and parsed parameters of ``appa ARGS`` (without running it); a bad
    option raises Typer's usage error, as the command itself would."""
    command = typer.main.get_command(app)
    path: list[str] = []
    rest = list(args)
    while hasattr(command, "list_commands"):  # a group: the next word names its command
        if not rest or rest[0].startswith("-"):
            raise _NotACommandError(f"name a command: appa {' '.join([*path, 'COMMAND'])} ...")
        sub = command.get_command(typer.Context(command), rest[0])
        if sub is None or (not path and rest[0] in ("submit", "jobs")):
            raise _NotACommandError(f"no appa command {' '.join([*path, rest[0]])!r} to submit")
        path.append(rest.pop(0))
        command = sub
    with command.make_context(" ".join(["appa", *path]), rest) as ctx:
        return tuple(path), dict(ctx.params)


def _job_identity(args: list[str]) -> tuple[tuple[str, ...], str, tuple[str, str] | None]:
    """The command path, digest and period (if the job has one) of ``appa ARGS``."""
    import importlib

    from appa.config import load_config
    from appa.distributed.submit import job_digest
    from appa.io.archive import config_hash

    path, params = _parse_job(args)
    config_file, overrides = params.pop("config", None), list(params.pop("overrides", None) or [])
    cfg = None
    if path in _CONFIG_CLASSES:
        module, name = _CONFIG_CLASSES[path]
        model = getattr(importlib.import_module(module), name)
        if name == "AssimilateConfig":
            overrides.append(f"task={path[0]}")
        cfg = load_config(model, config_file, overrides)
        dumped = cfg.model_dump(mode="json", exclude={"runner"})
        digest = config_hash(dumped)
    else:
        # a command without a registered config class: its config file's bytes and overrides
        text = Path(config_file).read_text() if config_file is not None else ""
        digest = config_hash({"file": text, "overrides": overrides}) if config_file else None
    rest = sorted(
        f"{k}={v}" for k, v in params.items() if k not in _PLACEMENT_PARAMS and v is not None
    )
    start = params.get("start") or getattr(cfg, "start", None)
    end = params.get("end") or getattr(cfg, "end", None)
    period = (str(start), str(end)) if start is not None and end is not None else None
    if path == ("daily",):
        # a scheduler submits the same daily config every day: one job per calendar day (UTC),
        # so a resubmission the same day attaches and the next day's runs
        import pandas as pd

        today = str(pd.Timestamp.now(tz="UTC").date())
        period = (today, today)
    return path, job_digest(path, digest, rest), period


def _jobs_client(address: str | None, token_file: Path | None):
    """The job server's client, or exit 3 naming what is wrong."""
    import os

    from appa.distributed.submit import JobsError, connect, read_token

    if address is None:
        address = os.environ.get("RAY_API_SERVER_ADDRESS")
        if not address:
            typer.echo("error: give the cluster's job server: --address http://HEAD:8265", err=True)
            raise typer.Exit(_SUBMIT_ERROR)
        typer.echo(f"address {address} (from RAY_API_SERVER_ADDRESS)", err=True)
    with _reported(JobsError, status=_SUBMIT_ERROR):
        token, _ = read_token(token_file)
        return connect(address, token)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def submit(
    ctx: typer.Context,
    address: JobsAddressOption = None,
    token_file: TokenFileOption = None,
    wait: Annotated[
        bool, typer.Option(help="Follow the logs; exit 0/1/2: succeeded/failed/stopped.")
    ] = False,
    new: Annotated[
        bool,
        typer.Option(help="Submit again under a fresh id when the earlier job failed/stopped."),
    ] = False,
    env: Annotated[
        list[str] | None,
        typer.Option("--env", "-e", help="Environment variable of the job: KEY=VALUE."),
    ] = None,
    requirements: Annotated[
        Path | None,
        typer.Option(help="Pinned pip requirements installed for the job (default: the image's)."),
    ] = None,
    working_dir: Annotated[
        Path, typer.Option(help="Folder uploaded as the job's working directory.")
    ] = Path("."),
) -> None:
    """Submit any appa command to a Ray cluster as a Ray Job: appa submit COMMAND [its options]
    --address http://HEAD:8265. The same job submitted again attaches to the first one (its id
    derives from the command, its config and its period). Exits 3 when it cannot submit."""
    from appa.config import ConfigError
    from appa.distributed.submit import (
        JobsError,
        entrypoint,
        exit_code,
        follow,
        runtime_env,
        submission_id,
    )
    from appa.distributed.submit import submit as submit_job

    args = list(ctx.args)
    if not args:
        typer.echo("error: name the command to submit: appa submit COMMAND [options]", err=True)
        raise typer.Exit(_SUBMIT_ERROR)
    variables = {}
    for item in env or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            typer.echo(f"error: --env {item!r} is not KEY=VALUE", err=True)
            raise typer.Exit(_SUBMIT_ERROR)
        variables[key] = value
    try:
        path, digest, period = _job_identity(args)  # a bad command fails here, not on the cluster
        pins = None
        if requirements is not None:
            lines = requirements.read_text().splitlines()
            pins = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    except (typer.TyperException, _NotACommandError) as error:
        why = error.format_message() if hasattr(error, "format_message") else str(error)
        typer.echo(f"error: appa {' '.join(args)}: {why}", err=True)
        raise typer.Exit(_SUBMIT_ERROR) from None
    except (ConfigError, OSError) as error:
        typer.echo(f"error: {_error_line(error)}", err=True)
        raise typer.Exit(_SUBMIT_ERROR) from None
    if not working_dir.is_dir():
        typer.echo(f"error: --working-dir {working_dir}: not a folder", err=True)
        raise typer.Exit(_SUBMIT_ERROR)
    client = _jobs_client(address, token_file)
    job_id = submission_id(path, digest, period)
    metadata = {"appa_command": " ".join(args), "appa_version": appa.__version__}
    with _reported(JobsError, status=_SUBMIT_ERROR):
        done = submit_job(
            client,
            job_id,
            entrypoint(args),
            runtime_env(working_dir, variables, pins),
            new=new,
            metadata=metadata,
        )
        verb = "attached to" if done.attached else "submitted"
        typer.echo(f"{verb} {done.submission_id} ({done.status.lower()})")
        if not wait:
            return
        status = follow(client, done.submission_id, echo=typer.echo)
    typer.echo(f"{done.submission_id}: {status.lower()}")
    raise typer.Exit(exit_code(status))


jobs_app = typer.Typer(
    help="Jobs on a Ray cluster (appa submit): status, logs, stop, list.", no_args_is_help=True
)
app.add_typer(jobs_app, name="jobs")
JobIdArgument = Annotated[str, typer.Argument(help="Submission id (appa submit prints it).")]


def _jobs_call(what: str, function, *args):
    """A job client's call, or exit 3 with its one-line error."""
    from appa.distributed.submit import JobsError, call

    with _reported(JobsError, status=_SUBMIT_ERROR):
        return call(what, function, *args)


@jobs_app.command("status")
def jobs_status(
    job_id: JobIdArgument, address: JobsAddressOption = None, token_file: TokenFileOption = None
) -> None:
    """A job's status and message."""
    client = _jobs_client(address, token_file)
    details = _jobs_call(job_id, client.get_job_info, job_id)
    typer.echo(f"{job_id}: {str(details.status.value).lower()}: {details.message or ''}".strip())


@jobs_app.command("logs")
def jobs_logs(
    job_id: JobIdArgument,
    address: JobsAddressOption = None,
    token_file: TokenFileOption = None,
    follow_logs: Annotated[
        bool, typer.Option("--follow", "-f", help="Follow until the job ends; exit 0/1/2.")
    ] = False,
) -> None:
    """A job's logs so far (or followed to its end)."""
    from appa.distributed.submit import exit_code, follow

    client = _jobs_client(address, token_file)
    if follow_logs:
        status = _jobs_call(job_id, follow, client, job_id, typer.echo)
        typer.echo(f"{job_id}: {status.lower()}")
        raise typer.Exit(exit_code(status))
    typer.echo(_jobs_call(job_id, client.get_job_logs, job_id).rstrip("\n"))


@jobs_app.command("stop")
def jobs_stop(
    job_id: JobIdArgument, address: JobsAddressOption = None, token_file: TokenFileOption = None
) -> None:
    """Ask the cluster to stop a job."""
    from appa.distributed.submit import stop

    client = _jobs_client(address, token_file)
    stopped = _jobs_call(job_id, stop, client, job_id)
    typer.echo(f"{job_id}: {'stopping' if stopped else 'had already ended'}")


@jobs_app.command("list")
def jobs_list(address: JobsAddressOption = None, token_file: TokenFileOption = None) -> None:
    """Every submitted job the cluster knows: id, status, command."""
    client = _jobs_client(address, token_file)
    jobs = _jobs_call(str(client.get_address()), client.list_jobs)
    for job in sorted(jobs, key=lambda j: j.start_time or 0):
        if job.submission_id is None:  # a driver run on the cluster directly
            continue
        command = (job.metadata or {}).get("appa_command", job.entrypoint)
        typer.echo(f"{job.submission_id}  {str(job.status.value).lower():9}  {command}")


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    main()
