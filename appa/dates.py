"""Date features of states: calendar-year phase and hour of day as sine/cosine pairs.

One definition for the data layer (window datasets) and the networks (their date inputs), so a
network sees at inference exactly the features it was trained with.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

__all__ = ["DATE_FEATURES", "date_features"]

DATE_FEATURES = 4


def date_features(
    times: Sequence | np.ndarray | pd.DatetimeIndex | Tensor, dtype: torch.dtype = torch.float32
) -> Tensor:
    """``[sin 2 pi y, cos 2 pi y, sin 2 pi h, cos 2 pi h]`` per time.

    ``y`` is the fraction of the calendar year elapsed (0 at 1 January 00:00 UTC, leap years
    included) and ``h`` the UTC hour of day over 24.

    Arguments:
        times: ``datetime64`` values of any shape (array, ``DatetimeIndex``, list), or a tensor
            of hours since 1970-01-01T00:00 UTC (the dataset's ``time`` unit divided by 3.6e12).

    Returns:
        ``(*times.shape, 4)`` in ``dtype``.
    """
    if isinstance(times, Tensor):
        seconds = torch.round(times.to(torch.float64) * 3600).to(torch.int64).cpu().numpy()
        values = seconds.astype("datetime64[s]")
    else:
        values = np.asarray(times)
        if values.dtype == object:
            values = pd.DatetimeIndex(values.ravel()).values.reshape(values.shape)
        if not np.issubdtype(values.dtype, np.datetime64):
            raise TypeError(f"times must be datetime64 or a tensor of hours, got {values.dtype}")
    if np.isnat(values).any():
        raise ValueError("times contain NaT")
    t = pd.DatetimeIndex(values.ravel())
    year_start = pd.to_datetime(t.year.astype(str) + "-01-01")
    year_end = pd.to_datetime((t.year + 1).astype(str) + "-01-01")
    phase = np.asarray((t - year_start) / (year_end - year_start), dtype=np.float64)
    hour = np.asarray(t.hour + t.minute / 60 + t.second / 3600, dtype=np.float64) / 24.0
    angles = torch.as_tensor(np.stack([phase, hour], axis=-1) * 2 * np.pi)
    out = torch.stack(
        [angles[:, 0].sin(), angles[:, 0].cos(), angles[:, 1].sin(), angles[:, 1].cos()], dim=-1
    )
    return out.reshape(*values.shape, DATE_FEATURES).to(dtype)
