"""Classical baselines: climatology, persistence and ensemble optimal interpolation (EnOI),
scored by the same code as the sampled archives (the ``appa baseline`` job writes them as
archives: :mod:`appa.jobs.baseline`)."""

from appa.baselines.climatology import climatology_at, compute_climatology, persistence
from appa.baselines.enoi import EnOI, EnOIConfig, enoi_analyses, gaspari_cohn, great_circle_km

__all__ = [
    "EnOI",
    "EnOIConfig",
    "climatology_at",
    "compute_climatology",
    "enoi_analyses",
    "gaspari_cohn",
    "great_circle_km",
    "persistence",
]
