"""Small toy-Earth worlds for the tests: a few days of toy Earth (a short spin-up) and the demo's
kind of observation network over them (random stations of 2 m temperature and sea-level
pressure, a polar orbiter sounding 500 hPa temperature)."""

from __future__ import annotations

from pathlib import Path

# the demo's network (pipelines/configs/demo.yaml), as ObserveConfig fields
DEMO_NETWORK = {
    "seed": 1,
    "stations": {
        "density": 0.25,
        "variables": ["2m_temperature", "mean_sea_level_pressure"],
        "error_std": {"2m_temperature": 0.5, "mean_sea_level_pressure": 100.0},
    },
    "satellite": {"variables": ["temperature"], "levels": [500], "error_std": {"temperature": 1.0}},
}


def toy_world(
    folder: Path,
    days: int,
    start: str = "2003-03-01",
    observed: tuple[str, str] | None = None,
) -> tuple[str, str]:
    """Writes ``days`` days of toy Earth from ``start`` to ``folder/truth.zarr`` and the demo's
    network observing them (``observed``: only these dates, inclusive) to ``folder/obs``;
    returns both paths."""
    from appa.data.toy_earth import ToyEarthConfig, write_toy_earth
    from appa.observations.simulators import ObserveConfig, observe_store

    truth = folder / "truth.zarr"
    config = ToyEarthConfig(years=days / 365, spinup_days=5, seed=3, start=start)
    write_toy_earth(config, truth, progress=False)
    network = dict(DEMO_NETWORK)
    if observed is not None:
        network["start"], network["end"] = observed
    obs, _ = observe_store(str(truth), ObserveConfig.model_validate(network), str(folder / "obs"))
    return str(truth), str(obs)
