"""Classical baselines in the archive layout: climatology, persistence and ensemble optimal
interpolation (EnOI), scored by the same code as the sampled archives."""

from appa.baselines.archive import to_archive_layout, write_archive
from appa.baselines.climatology import climatology_at, compute_climatology, persistence
from appa.baselines.enoi import EnOI, gaspari_cohn, great_circle_km
from appa.baselines.jobs import BaselineJob, enoi_analyses, run_baseline

__all__ = [
    "BaselineJob",
    "EnOI",
    "climatology_at",
    "compute_climatology",
    "enoi_analyses",
    "gaspari_cohn",
    "great_circle_km",
    "persistence",
    "run_baseline",
    "to_archive_layout",
    "write_archive",
]
