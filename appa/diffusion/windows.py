"""Window composition: denoise a long trajectory with a denoiser trained on short windows.

A trajectory ``(B, L, *state)`` is cut into overlapping windows of ``K`` states with stride
``S``; the last window is aligned to the end of the trajectory, so any ``L >= K`` is covered
without padding (a trajectory shorter than ``K`` is a single window of length ``L``). All windows
are denoised as one batch ``(B * W, K, *state)``, then folded back:

- ``symmetric``: each state comes from the window where it lies farthest from an edge;
- ``causal``: each state comes from the earliest window holding it, where it has the most past;
- ``average``: each state is the mean over all windows holding it.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from appa.diffusion.denoisers import Denoiser

__all__ = ["StitchMode", "WindowLayout", "WindowedDenoiser"]

StitchMode = Literal["symmetric", "causal", "average"]


class WindowLayout:
    """The windows of a length-``length`` trajectory and the weights that fold them back.

    Arguments:
        length: Trajectory length ``L``.
        window: Window size ``K``.
        stride: Stride ``S`` (``1 <= S <= K``).
        mode: Stitching mode.
    """

    def __init__(self, length: int, window: int, stride: int, mode: StitchMode = "symmetric"):
        if not 1 <= stride <= window:
            raise ValueError(f"stride must lie in [1, window={window}], got {stride}")
        if mode not in ("symmetric", "causal", "average"):
            raise ValueError(f"unknown stitching mode {mode!r}")
        if length < 1:
            raise ValueError(f"trajectory length must be positive, got {length}")
        self.length, self.mode = length, mode
        self.window = min(window, length)
        K = self.window
        starts = list(range(0, length - K + 1, stride))
        if starts[-1] != length - K:
            starts.append(length - K)
        self.starts = starts
        # weights[w, k]: weight of position k of window w in the fold
        weights = torch.zeros(len(starts), K, dtype=torch.float64)
        if mode == "average":
            weights.fill_(1.0)
        else:
            for frame in range(length):
                best, best_score = -1, None
                for w, start in enumerate(starts):
                    offset = frame - start
                    if not 0 <= offset < K:
                        continue
                    if mode == "causal":
                        score = (offset,)  # earliest window = largest offset
                    else:  # farthest from an edge; ties go to the later window
                        score = (min(offset, K - 1 - offset), w)
                    if best_score is None or score > best_score:
                        best, best_score = w, score
                weights[best, frame - starts[best]] = 1.0
        self.weights = weights
        index = torch.tensor(starts)[:, None] + torch.arange(K)[None, :]
        self.index = index  # (W, K) frame index of each window position

    @property
    def num_windows(self) -> int:
        return len(self.starts)

    def unfold(self, x: Tensor) -> Tensor:
        """``(B, L, *state) -> (B, W, K, *state)``."""
        if x.shape[1] != self.length:
            raise ValueError(f"expected a trajectory of length {self.length}, got {x.shape[1]}")
        return x[:, self.index.to(x.device)]

    def fold(self, windows: Tensor) -> Tensor:
        """``(B, W, K, *state) -> (B, L, *state)`` by the stitching weights."""
        B, W, K = windows.shape[:3]
        if (W, K) != tuple(self.index.shape):
            raise ValueError(f"expected {tuple(self.index.shape)} windows, got {(W, K)}")
        state = windows.shape[3:]
        w = self.weights.to(windows).reshape(1, W, K, *([1] * len(state)))
        flat = (windows * w).reshape(B, W * K, *state)
        out = windows.new_zeros(B, self.length, *state)
        out.index_add_(1, self.index.reshape(-1).to(windows.device), flat)
        total = windows.new_zeros(self.length)
        total.index_add_(
            0, self.index.reshape(-1).to(windows.device), self.weights.to(windows).reshape(-1)
        )
        return out / total.reshape(1, -1, *([1] * len(state)))


class WindowedDenoiser(nn.Module):
    """Runs a window denoiser over a whole trajectory.

    The inner denoiser receives ``(B * W, K, *state)`` (windows of sample ``b`` are rows
    ``b * W ... b * W + W - 1``) and ``sigma`` repeated per window. A posterior denoiser whose
    observations differ per window is built on that batch layout (see :meth:`layout`).
    Conditioning tensors shaped ``(B, L, ...)`` (e.g. date features) are unfolded alongside;
    others are passed unchanged.

    Arguments:
        denoiser: Window denoiser.
        window: ``K``; stride: ``S``; mode: stitching mode.
    """

    def __init__(
        self, denoiser: Denoiser, window: int, stride: int, mode: StitchMode = "symmetric"
    ) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.window, self.stride, self.mode = window, stride, mode
        self._layouts: dict[int, WindowLayout] = {}

    def layout(self, length: int) -> WindowLayout:
        """The (cached) window layout for trajectories of length ``length``."""
        if length not in self._layouts:
            self._layouts[length] = WindowLayout(length, self.window, self.stride, self.mode)
        return self._layouts[length]

    def forward(self, x_t: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        B, L = x_t.shape[:2]
        layout = self.layout(L)
        W = layout.num_windows
        windows = layout.unfold(x_t).flatten(0, 1)
        window_cond = {
            key: layout.unfold(value).flatten(0, 1)
            if isinstance(value, Tensor) and value.ndim >= 2 and value.shape[:2] == (B, L)
            else value
            for key, value in cond.items()
        }
        sigma = torch.as_tensor(sigma, dtype=x_t.dtype, device=x_t.device).expand(B)
        out = self.denoiser(windows, sigma.repeat_interleave(W), **window_cond)
        return layout.fold(out.reshape(B, W, *out.shape[1:]))
