"""Date features of the frames of a window: year phase and hour of day as sine/cosine pairs."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["DATE_FEATURES", "date_features"]

DATE_FEATURES = 4
# Mean tropical year in days, so the year phase does not jump at the turn of a leap year.
_YEAR_DAYS = 365.2422
# 2000-01-01T12:00 (J2000), near the start of a year; the phase origin is arbitrary but fixed.
_EPOCH = np.datetime64("2000-01-01T12:00", "s")


def date_features(times: np.ndarray | Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(sin, cos)`` of the year phase and ``(sin, cos)`` of the UTC hour of day.

    Arguments:
        times: ``numpy.datetime64`` array of any shape, or a tensor of hours since
            2000-01-01T12:00 UTC.

    Returns:
        ``(*times.shape, 4)``: ``[sin 2 pi y, cos 2 pi y, sin 2 pi u, cos 2 pi u]`` with ``y`` the
        fraction of a (tropical) year and ``u`` the fraction of a day since the epoch.
    """
    if isinstance(times, Tensor):
        hours = times.to(torch.float64)
    else:
        times = np.asarray(times)
        if not np.issubdtype(times.dtype, np.datetime64):
            raise TypeError(f"times must be datetime64 or a tensor of hours, got {times.dtype}")
        if np.isnat(times).any():
            raise ValueError("times contain NaT")
        seconds = (times.astype("datetime64[s]") - _EPOCH).astype(np.int64)
        hours = torch.as_tensor(seconds / 3600.0, dtype=torch.float64)
    year = 2 * torch.pi * torch.remainder(hours / (24 * _YEAR_DAYS), 1.0)
    # the epoch is at 12:00 UTC, so shift by half a day to make u the UTC hour / 24
    day = 2 * torch.pi * torch.remainder((hours + 12) / 24, 1.0)
    out = torch.stack([year.sin(), year.cos(), day.sin(), day.cos()], dim=-1)
    return out.to(dtype)
