"""Dataclass configs where an unknown key is an error, and ``--set key=value`` overrides.

Values given as strings (from the command line) are parsed into the field's declared type.
Nested configs are addressed with dots: ``--set method.tau_t=0.02``.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, Mapping


class ConfigError(ValueError):
    pass


def _parse_value(raw: Any, typ: Any, key: str) -> Any:
    if not isinstance(raw, str):
        return raw
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if raw.lower() in ("none", "null") and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        for a in non_none:
            try:
                return _parse_value(raw, a, key)
            except ConfigError:
                continue
        raise ConfigError(f"cannot parse {key}={raw!r} as {typ}")
    try:
        if typ is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if typ is int:
            return int(raw)
        if typ is float:
            return float(raw)
        if typ is str:
            return raw
        if origin in (list, tuple) or typ in (list, tuple):
            val = json.loads(raw) if raw.strip().startswith("[") else [v for v in raw.split(",") if v]
            inner = args[0] if args else str
            val = [_parse_value(v, inner, key) if isinstance(v, str) else v for v in val]
            return tuple(val) if (origin is tuple or typ is tuple) else val
        if typ is Any:
            return raw
        if typing.get_origin(typ) is typing.Literal:
            if raw not in typing.get_args(typ):
                raise ValueError(raw)
            return raw
    except (ValueError, json.JSONDecodeError):
        raise ConfigError(f"cannot parse {key}={raw!r} as {getattr(typ, '__name__', typ)}") from None
    return raw


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def from_dict(cls, data: Mapping[str, Any] | None, *, where: str = "config"):
    """Build dataclass ``cls`` from ``data``; an unknown key raises ConfigError."""
    data = dict(data or {})
    types = _field_types(cls)
    unknown = sorted(set(data) - set(types))
    if unknown:
        raise ConfigError(
            f"unknown {where} key(s): {', '.join(unknown)}; valid keys: {', '.join(sorted(types))}"
        )
    kwargs = {}
    for k, v in data.items():
        typ = types[k]
        if dataclasses.is_dataclass(typ) and isinstance(v, Mapping):
            kwargs[k] = from_dict(typ, v, where=f"{where}.{k}")
        else:
            kwargs[k] = _parse_value(v, typ, f"{where}.{k}")
    return cls(**kwargs)


def to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def apply_overrides(cfg, overrides: Mapping[str, Any], *, where: str = "config"):
    """Return a copy of dataclass ``cfg`` with dotted-key overrides applied (strict)."""
    nested: dict[str, dict[str, Any]] = {}
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            flat[key] = value
    types = _field_types(type(cfg))
    unknown = sorted((set(flat) | set(nested)) - set(types))
    if unknown:
        raise ConfigError(
            f"unknown {where} key(s): {', '.join(unknown)}; valid keys: {', '.join(sorted(types))}"
        )
    changes: dict[str, Any] = {}
    for k, v in flat.items():
        changes[k] = _parse_value(v, types[k], f"{where}.{k}")
    for k, sub in nested.items():
        child = getattr(cfg, k)
        if not dataclasses.is_dataclass(child):
            raise ConfigError(f"{where}.{k} is not a nested config; use {k}=value")
        changes[k] = apply_overrides(child, sub, where=f"{where}.{k}")
    return dataclasses.replace(cfg, **changes)


def parse_set_options(items: list[str] | None) -> dict[str, str]:
    """``["a=1", "m.b=x"]`` -> ``{"a": "1", "m.b": "x"}``; a malformed item is an error."""
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
