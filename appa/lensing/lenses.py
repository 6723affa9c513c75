"""Thin lens mass models with analytic deflections, batched and differentiable in torch.

Angles are in arcseconds on the sky, ``x`` to the right and ``y`` up; orientation angles ``phi``
are in radians, counter-clockwise from ``+x``. A lens maps image-plane positions ``theta`` to
source-plane positions ``beta = theta - alpha(theta)`` (the lens equation); several lenses in one
plane add their deflections.

Parameters are Python floats, 0-d tensors or ``(B,)`` tensors (one lens per batch element); a
``(B,)`` parameter broadcasts against coordinates of shape ``(B, H, W)`` or ``(H, W)``. Every
deflection is differentiable in the coordinates and in the parameters, so magnifications come
from autograd and lens parameters can be fitted by gradient descent.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor

__all__ = [
    "SIE",
    "SIS",
    "ExternalShear",
    "Lens",
    "PointMass",
    "convergence",
    "deflection",
    "lens_from_dict",
    "lenses_from_dicts",
    "lenses_to_dicts",
    "magnification",
    "ray_trace",
]

Param = float | Tensor

# Below this eccentricity f = sqrt(1 - q^2) the SIE uses a series in f: the closed form divides
# by f and loses every digit as q -> 1 (to f^6, the series is off by under 1e-11 for f < 0.05).
_SERIES_F = 0.05


def _param(value: Param, like: Tensor) -> Tensor:
    """``value`` as a tensor that broadcasts against coordinates ``like`` of shape ``(..., H, W)``
    (a ``(B,)`` parameter becomes ``(B, 1, 1)``)."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        return t
    if t.ndim == 1:
        return t.reshape(-1, 1, 1)
    raise ValueError(f"lens parameters must be scalars or (B,) tensors, got {tuple(t.shape)}")


def _check(name: str, value: Param, low: float, high: float, closed_high: bool = True) -> None:
    t = torch.as_tensor(value).detach()
    if t.ndim > 1:
        raise ValueError(f"{name} must be a scalar or a (B,) tensor, got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite, got {t.tolist()}")
    above = (t > high) if closed_high else (t >= high)
    if (t <= low).any() or above.any():
        bound = "]" if closed_high else ")"
        raise ValueError(f"{name} must lie in ({low:g}, {high:g}{bound}, got {t.tolist()}")


def _rotate(x: Tensor, y: Tensor, phi: Tensor) -> tuple[Tensor, Tensor]:
    """Coordinates in the frame whose ``x`` axis points along ``phi``."""
    c, s = torch.cos(phi), torch.sin(phi)
    return c * x + s * y, -s * x + c * y


def _unrotate(ax: Tensor, ay: Tensor, phi: Tensor) -> tuple[Tensor, Tensor]:
    c, s = torch.cos(phi), torch.sin(phi)
    return c * ax - s * ay, s * ax + c * ay


def _floor(like: Tensor) -> float:
    # distances below this are the lens centre itself: keeps 0/0 out of the deflection
    return torch.finfo(like.dtype).tiny ** 0.5


@dataclass(frozen=True)
class Lens(ABC):
    """Base class: a lens component in the lens plane, centred at ``(x0, y0)`` arcsec."""

    kind: ClassVar[str] = ""

    @abstractmethod
    def deflection(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Deflection ``(alpha_x, alpha_y)`` in arcsec at image-plane positions ``x, y``
        (arcsec, shape ``(..., H, W)``)."""

    @abstractmethod
    def convergence(self, x: Tensor, y: Tensor) -> Tensor:
        """Dimensionless surface density ``kappa`` at ``x, y`` (arcsec)."""

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": ..., <parameter>: float or list}``, JSON-able."""
        out: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            t = torch.as_tensor(getattr(self, f.name)).detach().cpu()
            out[f.name] = t.item() if t.ndim == 0 else t.tolist()
        return out

    def batch(self) -> int | None:
        """The batch size of ``(B,)`` parameters, or None when all are scalars."""
        sizes = {
            torch.as_tensor(getattr(self, f.name)).shape[0]
            for f in fields(self)
            if torch.as_tensor(getattr(self, f.name)).ndim == 1
        }
        if len(sizes) > 1:
            raise ValueError(f"{self.kind} parameters have different batch sizes {sorted(sizes)}")
        return sizes.pop() if sizes else None


@dataclass(frozen=True)
class SIE(Lens):
    """Singular isothermal ellipsoid.

    ``kappa = theta_e / (2 sqrt(q x'^2 + y'^2 / q))`` in the frame ``(x', y')`` aligned with the
    major axis at angle ``phi``: ``theta_e`` is the Einstein radius along the intermediate axis,
    so the critical curve encloses about ``pi theta_e^2`` for any ``q``. Deflection of Kormann
    et al. (1994) / Keeton (2001) in this normalisation.

    Arguments:
        theta_e: Einstein radius (arcsec, > 0).
        q: Axis ratio minor/major in ``(0, 1]`` (1 is the SIS).
        phi: Orientation of the major axis (radians).
        x0, y0: Centre (arcsec).
    """

    theta_e: Param
    q: Param = 1.0
    phi: Param = 0.0
    x0: Param = 0.0
    y0: Param = 0.0
    kind: ClassVar[str] = "sie"

    def __post_init__(self) -> None:
        _check("SIE theta_e", self.theta_e, 0.0, math.inf, closed_high=False)
        _check("SIE q", self.q, 0.0, 1.0)
        for name in ("phi", "x0", "y0"):
            _check(f"SIE {name}", getattr(self, name), -math.inf, math.inf, closed_high=False)

    def _frame(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        phi = _param(self.phi, x)
        xr, yr = _rotate(x - _param(self.x0, x), y - _param(self.y0, x), phi)
        return xr, yr, _param(self.q, x), phi

    def deflection(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        xr, yr, q, phi = self._frame(x, y)
        psi = torch.sqrt(q**2 * xr**2 + yr**2).clamp_min(_floor(x))
        a, b = xr / psi, yr / psi  # |f b| <= f < 1, so atanh stays finite
        f = torch.sqrt((1 - q**2).clamp_min(0))
        small = f < _SERIES_F
        f_safe = torch.where(small, torch.ones_like(f), f)
        f2 = f**2
        ax = torch.where(
            small,
            a * (1 - f2 * a**2 / 3 + f2**2 * a**4 / 5 - f2**3 * a**6 / 7),
            torch.atan(f_safe * a) / f_safe,
        )
        ay = torch.where(
            small,
            b * (1 + f2 * b**2 / 3 + f2**2 * b**4 / 5 + f2**3 * b**6 / 7),
            torch.atanh(f_safe * b) / f_safe,
        )
        scale = _param(self.theta_e, x) * torch.sqrt(q)
        return _unrotate(scale * ax, scale * ay, phi)

    def convergence(self, x: Tensor, y: Tensor) -> Tensor:
        xr, yr, q, _ = self._frame(x, y)
        psi = torch.sqrt(q**2 * xr**2 + yr**2).clamp_min(_floor(x))
        return _param(self.theta_e, x) * torch.sqrt(q) / (2 * psi)


@dataclass(frozen=True)
class SIS(Lens):
    """Singular isothermal sphere: ``alpha = theta_e r_hat``, ``kappa = theta_e / (2 r)``.

    Arguments:
        theta_e: Einstein radius (arcsec, > 0).
        x0, y0: Centre (arcsec).
    """

    theta_e: Param
    x0: Param = 0.0
    y0: Param = 0.0
    kind: ClassVar[str] = "sis"

    def __post_init__(self) -> None:
        _check("SIS theta_e", self.theta_e, 0.0, math.inf, closed_high=False)

    def deflection(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        dx, dy = x - _param(self.x0, x), y - _param(self.y0, x)
        r = torch.sqrt(dx**2 + dy**2).clamp_min(_floor(x))
        te = _param(self.theta_e, x)
        return te * dx / r, te * dy / r

    def convergence(self, x: Tensor, y: Tensor) -> Tensor:
        dx, dy = x - _param(self.x0, x), y - _param(self.y0, x)
        return _param(self.theta_e, x) / (2 * torch.sqrt(dx**2 + dy**2).clamp_min(_floor(x)))


@dataclass(frozen=True)
class PointMass(Lens):
    """Point mass: ``alpha = theta_e^2 r_vec / r^2`` (``kappa`` is a delta at the centre, zero
    elsewhere).

    Arguments:
        theta_e: Einstein radius (arcsec, > 0).
        x0, y0: Position (arcsec).
    """

    theta_e: Param
    x0: Param = 0.0
    y0: Param = 0.0
    kind: ClassVar[str] = "point"

    def __post_init__(self) -> None:
        _check("PointMass theta_e", self.theta_e, 0.0, math.inf, closed_high=False)

    def deflection(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        dx, dy = x - _param(self.x0, x), y - _param(self.y0, x)
        r2 = (dx**2 + dy**2).clamp_min(_floor(x) ** 2)
        te2 = _param(self.theta_e, x) ** 2
        return te2 * dx / r2, te2 * dy / r2

    def convergence(self, x: Tensor, y: Tensor) -> Tensor:
        return torch.zeros_like(x + y)


@dataclass(frozen=True)
class ExternalShear(Lens):
    """External shear of potential ``psi = (gamma1 (x^2 - y^2) + 2 gamma2 x y) / 2`` about
    ``(x0, y0)``: ``alpha = (gamma1 x + gamma2 y, gamma2 x - gamma1 y)``. The shear's strength is
    ``sqrt(gamma1^2 + gamma2^2)`` and its angle ``atan2(gamma2, gamma1) / 2``.

    Arguments:
        gamma1, gamma2: Shear components (dimensionless, each in ``(-1, 1)``).
        x0, y0: Reference point (arcsec); moving it shifts the source plane rigidly.
    """

    gamma1: Param = 0.0
    gamma2: Param = 0.0
    x0: Param = 0.0
    y0: Param = 0.0
    kind: ClassVar[str] = "shear"

    def __post_init__(self) -> None:
        _check("ExternalShear gamma1", self.gamma1, -1.0, 1.0, closed_high=False)
        _check("ExternalShear gamma2", self.gamma2, -1.0, 1.0, closed_high=False)

    def deflection(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        dx, dy = x - _param(self.x0, x), y - _param(self.y0, x)
        g1, g2 = _param(self.gamma1, x), _param(self.gamma2, x)
        return g1 * dx + g2 * dy, g2 * dx - g1 * dy

    def convergence(self, x: Tensor, y: Tensor) -> Tensor:
        return torch.zeros_like(x + y)


_KINDS: dict[str, type[Lens]] = {c.kind: c for c in (SIE, SIS, PointMass, ExternalShear)}


def _broadcast(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    if not (x.is_floating_point() and y.is_floating_point()):
        raise TypeError("lens coordinates must be floating-point tensors")
    return torch.broadcast_tensors(x, y)


def deflection(lenses: Sequence[Lens], x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Total deflection of lenses in one plane (their sum), arcsec; shapes as ``x, y`` (broadcast
    with ``(B, 1, 1)`` parameters)."""
    x, y = _broadcast(x, y)
    ax, ay = torch.zeros_like(x), torch.zeros_like(y)
    for lens in lenses:
        dx, dy = lens.deflection(x, y)
        ax, ay = ax + dx, ay + dy
    return ax, ay


def ray_trace(lenses: Sequence[Lens], x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Source-plane positions ``beta = theta - alpha(theta)`` (arcsec) of image positions."""
    x, y = _broadcast(x, y)
    ax, ay = deflection(lenses, x, y)
    return x - ax, y - ay


def convergence(lenses: Sequence[Lens], x: Tensor, y: Tensor) -> Tensor:
    """Total convergence ``kappa`` of the lenses at ``x, y``."""
    x, y = _broadcast(x, y)
    total = torch.zeros_like(x)
    for lens in lenses:
        total = total + lens.convergence(x, y)
    return total


def magnification(lenses: Sequence[Lens], x: Tensor, y: Tensor) -> Tensor:
    """Signed magnification ``1 / det(d beta / d theta)`` at image positions ``x, y`` (the
    Jacobian of the lens equation by autograd); infinite on critical curves."""
    x, y = _broadcast(x, y)
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        y = y.detach().requires_grad_(True)
        bx, by = ray_trace(lenses, x, y)
        dbx_dx, dbx_dy = torch.autograd.grad(bx.sum(), (x, y), retain_graph=True)
        dby_dx, dby_dy = torch.autograd.grad(by.sum(), (x, y))
    return 1.0 / (dbx_dx * dby_dy - dbx_dy * dby_dx)


def lens_from_dict(spec: Mapping[str, Any]) -> Lens:
    """A lens from ``{"kind": "sie" | "sis" | "point" | "shear", <parameters>}``."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind not in _KINDS:
        raise ValueError(f"unknown lens kind {kind!r}; choose one of {sorted(_KINDS)}")
    cls = _KINDS[kind]
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(spec) - names)
    if unknown:
        raise ValueError(f"{kind} lens: unknown parameters {unknown}; it takes {sorted(names)}")
    values = {k: torch.as_tensor(v) if isinstance(v, list) else v for k, v in spec.items()}
    try:
        return cls(**values)
    except TypeError as error:
        raise ValueError(f"{kind} lens: {error}") from None


def lenses_from_dicts(specs: Sequence[Mapping[str, Any]]) -> list[Lens]:
    """Lenses from a list of :func:`lens_from_dict` specs."""
    return [lens_from_dict(s) for s in specs]


def lenses_to_dicts(lenses: Sequence[Lens]) -> list[dict[str, Any]]:
    """JSON-able specs of lenses (inverse of :func:`lenses_from_dicts`)."""
    return [lens.to_dict() for lens in lenses]
