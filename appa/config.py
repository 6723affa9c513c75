"""Typed, validated configuration: pydantic models loaded from YAML with command-line overrides.

Overrides are ``dotted.key=value`` strings; values are parsed as YAML (``steps=32``,
``solver=gmres``, ``levels=[500,850]``). Unknown keys and bad values raise :class:`ConfigError`
naming the offending key.

Dates in configs are strings (YAML would read ``2000-01-01`` as a date object): ``DateText``
keeps them as written, so a period ``[2000-01-01, 2001-12-31]`` covers whole days as pandas
reads partial dates; ``Timestamp`` normalises them to ISO instants. Both refuse what pandas
cannot read.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import pandas as pd
import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError

__all__ = [
    "ConfigError",
    "DateText",
    "Duration",
    "Period",
    "StrictModel",
    "Timestamp",
    "apply_overrides",
    "differing_keys",
    "load_config",
]

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration file, key or value is invalid."""


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def _parse_date(value: Any) -> pd.Timestamp:
    try:
        return pd.Timestamp(str(value) if isinstance(value, datetime.date) else value)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{value!r} is not a date: {error}") from None


def _as_written(value: Any) -> Any:
    if isinstance(value, str | datetime.date):
        _parse_date(value)
        return str(value)
    return value


def _as_instant(value: Any) -> Any:
    if isinstance(value, str | datetime.date | pd.Timestamp):
        return _parse_date(value).isoformat()
    return value


def _ordered(period: tuple[str, str]) -> tuple[str, str]:
    if _parse_date(period[1]) < _parse_date(period[0]):
        raise ValueError(f"the period ends ({period[1]}) before it starts ({period[0]})")
    return period


DateText = Annotated[str, BeforeValidator(_as_written)]
Timestamp = Annotated[str, BeforeValidator(_as_instant)]
Period = Annotated[tuple[DateText, DateText], AfterValidator(_ordered)]


def _positive_duration(value: str) -> str:
    try:
        span = pd.Timedelta(value)
    except ValueError as error:
        raise ValueError(f"{value!r} is not a duration: {error}") from None
    if span <= pd.Timedelta(0):
        raise ValueError(f"must be a positive duration, got {value!r}")
    return value


# a positive duration as pandas reads it ("6h", "1D", "30min"), kept as written
Duration = Annotated[str, AfterValidator(_positive_duration)]


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A copy of ``data`` with ``key.sub=value`` overrides applied (values parsed as YAML)."""
    data = _deep_copy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw)
        except (yaml.YAMLError, ValueError) as error:  # ValueError: a date like 2003-13-01
            raise ConfigError(f"override {key}: cannot parse value {raw!r}: {error}") from None
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {key}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def _format_errors(model: type[BaseModel], error: ValidationError, source: str) -> str:
    lines = [f"invalid {model.__name__} config ({source}):"]
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "<root>"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        elif not item["loc"]:  # a check across fields: its input is the whole document
            lines.append(f"  {key}: {item['msg']}")
        else:
            lines.append(f"  {key}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def load_config(model: type[M], path: str | Path | None = None, overrides: Iterable[str] = ()) -> M:
    """Loads ``model`` from a YAML file (or its defaults when ``path`` is None) plus overrides."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, ValueError) as error:  # ValueError: a date like 2003-13-01
            raise ConfigError(f"{path}: not valid YAML: {error}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"{path}: the top level must be a mapping, got {type(loaded).__name__}"
            )
        data = loaded
    overrides = list(overrides)
    if overrides:
        source += " + overrides"
    data = apply_overrides(data, overrides)
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_errors(model, error, source)) from None


def differing_keys(a: Any, b: Any, path: str = "") -> list[str]:
    """Dotted key paths where two JSON documents differ (a run's saved settings against the
    settings it is resumed with, say); ``<root>`` when they differ as a whole."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}{k}")
            else:
                out.extend(differing_keys(a[k], b[k], f"{path}{k}."))
        return out
    return [] if a == b else [path.rstrip(".") or "<root>"]
