"""Observations of latent trajectories through the decoder, one per window.

Posterior sampling denoises a trajectory as a batch of overlapping windows ``(B * W, K, c, h,
w)`` (:class:`appa.diffusion.WindowedDenoiser`), and each window conditions on its own
observations. :class:`WindowObservation` is the observation of that whole batch: row ``b * W +
w`` observes window ``w`` of member ``b`` through

- ``A_obs(u) = H(decode(u))``: the (standardised) :class:`appa.observations.ObservationOperator`
  of the observations falling on the window's frames, applied to the decoded standardised
  states. Only the frames holding observations are decoded (all of them, batched over frames,
  in one decoder call);
- optionally ``A_lat(u) = u[known frames]``: known latent states (the past of a filter cycle,
  the initial states of a forecast), observed with a small variance.

Windows hold different numbers of observations; every row is padded to a common count with
``y = 0``, operator rows identically zero and unit variance. The MMPS system
``(Sigma_y + A Sigma_t A^T) v = y - A(x_hat)`` is then block diagonal with a zero right-hand side
on the padding, so Krylov iterates, and the solution, are zero there: padding changes nothing
(tests check it against each window's unpadded observation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch import Tensor

from appa.assimilation.prior import LatentPrior
from appa.diffusion import GaussianObservation, WindowLayout
from appa.observations import ObservationOperator
from appa.observations.operator import VerticalRule

__all__ = ["WindowObservation"]

Frames = Literal["observed", "all"]


class WindowObservation:
    """The observation of a windowed latent trajectory batch (see the module docstring).

    Arguments:
        prior: The latent prior (codec, statistics, spec, grid).
        layout: The trajectory's windows (:class:`appa.diffusion.WindowLayout`).
        times: The trajectory's ``L`` times.
        table: Observations (:mod:`appa.observations` schema) or None. Each must belong to one
            of ``times`` within ``time_tolerance`` (the rule of
            :func:`appa.observations.screening.assign_times`, as the tasks' selection).
        observable: ``(L,)`` bool: frames whose observations are used (default all); the
            others' observations are dropped (e.g. the future of a filter cycle).
        known: ``(L,)`` bool: frames held as latent conditions (values given to
            :meth:`observation`); default none.
        condition_std: Standard deviation of known latents' "observation" (standardised
            latent units): small, so they are matched closely.
        frames: ``"observed"`` decodes only frames holding observations; ``"all"`` decodes every
            frame of every window (Appa's way; for benchmarks).
        representation_std: Per-channel standard deviation (standardised units) added in
            quadrature to every observation's error: what the decoder cannot represent.
        error_scale: Multiplies every observation's error standard deviation (after the
            representation error): inflation of an ensemble that is too confident.
        vertical: Which levels an observation reads (``exact`` or ``log_pressure``:
            :func:`appa.observations.operator.vertical_weights`).
    """

    def __init__(
        self,
        prior: LatentPrior,
        layout: WindowLayout,
        times: Sequence | np.ndarray,
        table: xr.Dataset | None = None,
        observable: Sequence[bool] | np.ndarray | None = None,
        known: Sequence[bool] | np.ndarray | None = None,
        condition_std: float = 1e-2,
        frames: Frames = "observed",
        time_tolerance: str | pd.Timedelta = "0s",
        representation_std: Sequence[float] | None = None,
        error_scale: float = 1.0,
        vertical: VerticalRule = "exact",
    ) -> None:
        times = pd.DatetimeIndex(np.atleast_1d(times))
        L = layout.length
        if len(times) != L:
            raise ValueError(f"{len(times)} times for a trajectory of {L} states")
        if frames not in ("observed", "all"):
            raise ValueError(f"frames must be 'observed' or 'all', got {frames!r}")
        if condition_std <= 0:
            raise ValueError(f"condition_std must be positive, got {condition_std}")
        observable = np.ones(L, bool) if observable is None else np.asarray(observable, bool)
        known = np.zeros(L, bool) if known is None else np.asarray(known, bool)
        if observable.shape != (L,) or known.shape != (L,):
            raise ValueError(f"observable and known must be ({L},) boolean masks")
        self.prior, self.layout, self.times, self.frames = prior, layout, times, frames
        self.known = known
        self.condition_var = float(condition_std) ** 2
        C, H, Wd = prior.state_shape
        chw = C * H * Wd
        index = layout.index.numpy()  # (W, K) frame of each window position
        W, K = index.shape
        self.num_windows, self.window = W, K

        # --- decoder observations: one operator over the whole trajectory, split by window
        rows_w: list[np.ndarray] = []
        idx_w: list[np.ndarray] = []
        wt_w: list[np.ndarray] = []
        y_w: list[np.ndarray] = []
        var_w: list[np.ndarray] = []
        gather: list[int] = []  # decoded frame slots -> position w * K + k in the window batch
        self.num_obs = 0
        if table is not None and table.sizes.get("obs", 0) > 0:
            op = ObservationOperator(
                table, prior.spec, prior.latitude, prior.longitude, times,
                stats=prior.statistics, time_tolerance=time_tolerance, vertical=vertical,
            )  # fmt: skip
            rows, flat, weights = (t.numpy() for t in op.entries())
            t_of_entry = flat // chw
            rest = flat % chw
            y_all = op.y.numpy()
            var_all = op.noise_variance.numpy()
            if representation_std is not None:
                rep = np.asarray(representation_std, dtype=np.float64)
                if rep.shape != (C,):
                    raise ValueError(f"representation_std must hold {C} values, got {rep.shape}")
                var_all = (var_all + rep[np.asarray(op.channel)] ** 2).astype(var_all.dtype)
            if error_scale <= 0:
                raise ValueError(f"error_scale must be positive, got {error_scale}")
            if error_scale != 1.0:
                var_all = (var_all * error_scale**2).astype(var_all.dtype)
            t_obs = np.asarray(op.time_index)
            self.num_obs = int(op.num_obs)
            for w in range(W):
                frames_w = index[w]
                usable = observable[frames_w]
                in_window = np.isin(t_obs, frames_w[usable])
                ids = np.flatnonzero(in_window)
                positions = sorted({int(t - frames_w[0]) for t in np.unique(t_obs[ids])})
                slot_of_pos = np.full(K, -1, dtype=np.int64)
                if frames == "all":
                    slot_of_pos[:] = w * K + np.arange(K)
                else:
                    slot_of_pos[positions] = len(gather) + np.arange(len(positions))
                    gather.extend(w * K + k for k in positions)
                local = -np.ones(self.num_obs, dtype=np.int64)
                local[ids] = np.arange(ids.size)
                sel = np.flatnonzero(local[rows] >= 0)
                pos = t_of_entry[sel] - frames_w[0]
                slots = slot_of_pos[pos]
                rows_w.append(local[rows[sel]])
                idx_w.append(slots * chw + rest[sel])
                wt_w.append(weights[sel])
                y_w.append(y_all[ids])
                var_w.append(var_all[ids])
        self.m_obs = max((len(y) for y in y_w), default=0)
        M = self.m_obs
        self.obs_counts = [len(y) for y in y_w] if y_w else [0] * W
        y_pad = np.zeros((W, M), np.float32)
        var_pad = np.ones((W, M), np.float32)
        out_rows, out_idx, out_wt = [], [], []
        for w in range(len(y_w)):
            n = len(y_w[w])
            y_pad[w, :n] = y_w[w]
            var_pad[w, :n] = var_w[w]
            out_rows.append(w * M + rows_w[w])
            out_idx.append(idx_w[w])
            out_wt.append(wt_w[w])
        cat = np.concatenate if out_rows else (lambda a: np.zeros(0))
        self._out_rows = torch.as_tensor(cat(out_rows), dtype=torch.long)
        self._out_idx = torch.as_tensor(cat(out_idx), dtype=torch.long)
        self._out_wt = torch.as_tensor(cat(out_wt), dtype=torch.float32)
        self._gather = torch.as_tensor(gather, dtype=torch.long)
        self._y = torch.as_tensor(y_pad)
        self._var = torch.as_tensor(var_pad)
        self.decoded_frames = len(gather) if frames == "observed" else W * K
        # the date of each decoded slot, for an autoencoder conditioned on dates
        slot_frames = index.reshape(-1)[gather] if frames == "observed" else index.reshape(-1)
        self._slot_dates = (
            prior.frame_dates(times[slot_frames], (len(slot_frames),)).cpu()
            if prior.codec_dates and self.m_obs
            else None
        )

        # --- known latents: per window, the flat positions (k, c, h, w) of its known frames
        c, h, w_ = prior.latent_shape
        lat = c * h * w_
        lat_idx = [
            (np.flatnonzero(known[index[w]])[:, None] * lat + np.arange(lat)[None]).reshape(-1)
            for w in range(W)
        ]
        self.m_lat = max(len(v) for v in lat_idx)
        self._lat_idx = torch.zeros(W, self.m_lat, dtype=torch.long)
        self._lat_mask = torch.zeros(W, self.m_lat)
        for w, v in enumerate(lat_idx):
            self._lat_idx[w, : len(v)] = torch.as_tensor(v)
            self._lat_mask[w, : len(v)] = 1.0

    @property
    def size(self) -> int:
        """Observations per row (padded): decoder observations plus known latent values."""
        return self.m_obs + self.m_lat

    def __call__(self, u: Tensor) -> Tensor:
        """``A(u)``: windows ``(B * W, K, c, h, w)`` -> ``(B * W, m_obs + m_lat)``."""
        R, K = u.shape[:2]
        W = self.num_windows
        if R % W or K != self.window or tuple(u.shape[2:]) != self.prior.latent_shape:
            raise ValueError(
                f"expected windows (B * {W}, {self.window}, {self.prior.latent_shape}), "
                f"got {tuple(u.shape)}"
            )
        B = R // W
        parts = []
        if self.m_obs:
            frames = u.reshape(B, W * K, *u.shape[2:])
            if self.frames == "observed":
                frames = frames[:, self._gather.to(u.device)]
            F = frames.shape[1]
            date = None
            if self._slot_dates is not None:
                date = self._slot_dates.to(u.device).repeat(B, 1)
            decoded = self.prior.decode_standardized(frames.reshape(B * F, *u.shape[2:]), date)
            decoded = decoded.reshape(B, -1)
            values = decoded[:, self._out_idx.to(u.device)] * self._out_wt.to(decoded)
            out = decoded.new_zeros(B, W * self.m_obs)
            out = out.index_add(1, self._out_rows.to(u.device), values)
            parts.append(out.reshape(R, self.m_obs))
        if self.m_lat:
            idx = self._lat_idx.to(u.device).repeat(B, 1)
            mask = self._lat_mask.to(u).repeat(B, 1)
            parts.append(u.reshape(R, -1).gather(1, idx) * mask)
        return torch.cat(parts, dim=1)

    def observation(self, batch: int, known_values: Tensor | None = None) -> GaussianObservation:
        """The :class:`~appa.diffusion.GaussianObservation` of ``batch`` members' windows.

        Arguments:
            batch: Members ``B`` (rows ``B * W``).
            known_values: Standardised latents ``(B, L, c, h, w)`` holding the known frames'
                values (others ignored); required when frames are known.
        """
        W = self.num_windows
        device = self.prior.device
        ys, vs = [], []
        if self.m_obs:
            ys.append(self._y.to(device).repeat(batch, 1))
            vs.append(self._var.to(device).repeat(batch, 1))
        if self.m_lat:
            if known_values is None:
                raise ValueError("this observation holds known frames: give known_values")
            expected = (batch, self.layout.length, *self.prior.latent_shape)
            if tuple(known_values.shape) != expected:
                raise ValueError(
                    f"known_values must be {expected}, got {tuple(known_values.shape)}"
                )
            windows = self.layout.unfold(known_values.to(device)).reshape(batch * W, -1)
            idx = self._lat_idx.to(device).repeat(batch, 1)
            mask = self._lat_mask.to(windows).repeat(batch, 1)
            ys.append(windows.gather(1, idx) * mask)
            vs.append(torch.where(mask > 0, self.condition_var, 1.0).to(windows))
        if not ys:
            raise ValueError("nothing is observed: sample from the prior instead")
        return GaussianObservation(
            y=torch.cat(ys, 1).float(),
            operator=self,
            noise_variance=torch.cat(vs, 1).float(),
            linear=False,
        )
