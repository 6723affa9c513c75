"""The ``appa`` command line. Each subcommand lives in the module that owns its job and is
registered here; heavy imports happen inside the commands so ``appa --help`` stays instant."""

from __future__ import annotations

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
    from appa.showcase import ShowcaseConfig, run_showcase

    try:
        cfg = load_config(ShowcaseConfig, config, overrides or [])
    except ConfigError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    run_showcase(cfg, out)


# --- appa npe: neural posterior estimation (appa.npe.pipeline) --------------------------------
npe_app = typer.Typer(help="Neural posterior estimation p(theta | x): train, sample, diagnose.")
app.add_typer(npe_app, name="npe")


def _npe_config(config: Path | None, overrides: list[str] | None):
    from appa.config import ConfigError, load_config
    from appa.npe.pipeline import NPEConfig

    try:
        return load_config(NPEConfig, config, overrides or [])
    except ConfigError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None


@npe_app.command("train")
def npe_train(config: ConfigOption = None, overrides: OverridesOption = None) -> None:
    """Train a posterior estimator (or an ensemble) and write <out>/checkpoint."""
    from appa.npe.pipeline import run_train

    run_train(_npe_config(config, overrides))


@npe_app.command("sample")
def npe_sample(config: ConfigOption = None, overrides: OverridesOption = None) -> None:
    """Draw posterior samples for one observation; writes samples.npy and a corner plot."""
    from appa.npe.pipeline import run_sample

    run_sample(_npe_config(config, overrides))


@npe_app.command("diagnose")
def npe_diagnose(config: ConfigOption = None, overrides: OverridesOption = None) -> None:
    """Coverage, SBC, TARP (and C2ST against sbibm references) with plots."""
    from appa.npe.pipeline import run_diagnose

    run_diagnose(_npe_config(config, overrides))


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    main()
