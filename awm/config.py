"""Typed configuration: dataclasses validated on load, from YAML, flags or `key=value` overrides.

Every stage owns a dataclass. Fields carry their help text in ``metadata["help"]``; validation of
ranges lives in the dataclass's ``__post_init__`` and raises :class:`ConfigError`, which always
names the key, the value and what would have been valid.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from awm.errors import ConfigError

T = TypeVar("T")


def check(cond: bool, key: str, value: Any, valid: str, argument: str | None = None) -> None:
    """Raise ConfigError unless ``cond``; a one-liner for ``__post_init__`` range checks."""
    if not cond:
        raise ConfigError(key, value, valid, argument)


def help_field(help_text: str, default: Any = dataclasses.MISSING, argument: str | None = None, **kw: Any) -> Any:
    """A dataclass field whose ``metadata["help"]`` becomes its ``--help`` text; a list, tuple or
    dict default is copied for each instance (a shared mutable default would leak between configs).
    ``argument``: the command-line positional that sets it (errors name it, see ConfigError)."""
    meta = {"help": help_text, **({"argument": argument} if argument else {})}
    if isinstance(default, (list, tuple, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta, **kw)
    if default is not dataclasses.MISSING:
        kw["default"] = default
    return dataclasses.field(metadata=meta, **kw)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return f"a mapping with keys {', '.join(f.name for f in dataclasses.fields(tp))}"
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Convert ``value`` (from YAML or a CLI string) to ``tp`` or raise ConfigError."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        return _coerce_literal(tp, value, key)
    if origin in (Union, types.UnionType):
        return _coerce_union(tp, value, key)
    if origin in (list, tuple):
        return _coerce_sequence(tp, value, key)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, value, "a mapping")
        kt, vt = get_args(tp) or (Any, Any)
        return {_coerce(kt, k, key): _coerce(vt, v, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(key, value, _type_name(tp))
        return from_dict(tp, value, prefix=key + ".")
    scalar = _SCALARS.get(tp)
    return value if scalar is None else scalar(value, key)


def _coerce_literal(tp: Any, value: Any, key: str) -> Any:
    for c in get_args(tp):
        if value == c or (isinstance(value, str) and str(c) == value):
            return c
    raise ConfigError(key, value, _type_name(tp))


def _coerce_union(tp: Any, value: Any, key: str) -> Any:
    """``None``/``"null"`` where the union allows None, else the first member type that accepts it."""
    args = get_args(tp)
    is_null = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
    if is_null and type(None) in args:
        return None
    for a in args:
        if a is type(None):
            continue
        try:
            return _coerce(a, value, key)
        except ConfigError:
            continue
    raise ConfigError(key, value, _type_name(tp))


def _coerce_sequence(tp: Any, value: Any, key: str) -> list | tuple:
    """A list/tuple from a YAML sequence, a comma-separated CLI string or a single number."""
    args = [a for a in get_args(tp) if a is not Ellipsis]
    inner = args[0] if args else Any
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()] if value.strip() else []
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(key, value, _type_name(tp))
    items = [_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if get_origin(tp) is tuple else items


def _to_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
        return value.lower() in ("true", "yes", "1", "on")
    raise ConfigError(key, value, "true or false")


def _to_int(value: Any, key: str) -> int:
    """An int, a string like ``"1_000"`` or an integral float; never a bool (True is not 1 here)."""
    if isinstance(value, bool):
        raise ConfigError(key, value, "an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.replace("_", ""))
        except ValueError:
            pass
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ConfigError(key, value, "an integer")


def _to_float(value: Any, key: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(key, value, "a number")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise ConfigError(key, value, "a number")


def _to_str(value: Any, key: str) -> str:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(key, value, "a string")


def _to_path(value: Any, key: str) -> Path:
    if isinstance(value, (str, Path)):
        return Path(value)
    raise ConfigError(key, value, "a path")


_SCALARS: dict[Any, Any] = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str, Path: _to_path}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build ``cls`` from a mapping; unknown keys and bad values raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(prefix.rstrip(".") or "<root>", data, "a mapping")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    for k in data:
        if k not in names:
            raise ConfigError(prefix + str(k), data[k], "known keys are " + ", ".join(sorted(names)))
    kwargs = {k: _coerce(hints[k], v, prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        argument = next((f.metadata.get("argument") for f in dataclasses.fields(cls) if f.name == e.key), None)
        if argument and not e.argument:
            raise ConfigError(e.key, e.value, e.valid, argument) from None
        if prefix and not e.key.startswith(prefix):
            raise ConfigError(prefix + e.key, e.value, e.valid) from None
        raise


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, YAML/JSON-safe mapping of a config (paths as strings, tuples as lists)."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v) if f.init}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return conv(cfg)


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c = value`` inside nested dicts, creating levels as needed."""
    parts = dotted.split(".")
    cur = data
    for p in parts[:-1]:
        nxt = cur.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[p] = nxt
        cur = nxt
    cur[parts[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``key=value``; the value is parsed as YAML so ``lr=1e-4`` and ``scales=[2,4]`` work."""
    if "=" not in item:
        raise ConfigError(item, item, "overrides of the form key=value (dotted keys for nesting)")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):
        value = raw
    return key, value


def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
         base: dict[str, Any] | None = None) -> T:
    """Load ``cls`` from an optional YAML file, then a base mapping, then ``key=value`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError("config", str(path), "an existing YAML file")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError("config", str(path), "a YAML mapping at the top level")
        data.update(loaded)
    for k, v in (base or {}).items():
        set_dotted(data, k, v)
    for item in overrides or []:
        k, v = parse_override(item)
        set_dotted(data, k, v)
    return from_dict(cls, data)


def describe_keys(cls: type, prefix: str = "") -> list[str]:
    """One line per config key, nested sections dotted: ``key = default  (type) help``, for ``--help``."""
    hints, lines = _hints(cls), []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines += describe_keys(tp, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
        shown = yaml.safe_dump(to_dict(default), default_flow_style=True, width=10**6).strip()
        shown = shown.removesuffix("\n...").removesuffix("...").strip()
        help_text = f.metadata.get("help", "")
        lines.append(f"  {prefix}{f.name} = {shown}  ({_type_name(tp)})" + (f" {help_text}" if help_text else ""))
    return lines


def digest(cfg: Any) -> str:
    """Short stable hash of a config, stored in checkpoints and stats to tie outputs to inputs."""
    blob = json.dumps(to_dict(cfg), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def save(cfg: Any, path: str | Path) -> Path:
    """Write the config used by a run beside its outputs (atomic)."""
    from awm.imageio import atomic_write_text

    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    return atomic_write_text(Path(path), text)


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Expose a config dataclass as ``--flag`` options (help and defaults from the fields).

    Nested dataclasses are left to YAML and ``key=value`` overrides.
    """
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.name in skip or dataclasses.is_dataclass(hints[f.name]):
            continue
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        help_text = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        tp = hints[f.name]
        said = "" if default in (None, "", []) else f" (default: {shown})"  # nothing to show: say nothing
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text + said}
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["metavar"] = f.metadata.get("metavar", f.name.upper())
            if get_origin(tp) is Literal:
                kw["help"] = f"{help_text} {{{','.join(map(str, get_args(tp)))}}}{said}"
        parser.add_argument(flag, **kw)


def from_args(cls: type[T], args: argparse.Namespace, overrides: list[str] | None = None) -> T:
    """Build ``cls`` from parsed flags (only those given) plus ``key=value`` overrides."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    given = {k: v for k, v in vars(args).items() if k in names}
    return load(cls, getattr(args, "config", None), overrides, base=given)


def save_beside(cfg: Any, directory: str | Path, name: str) -> Path | None:
    """Write ``<directory>/<name>_config.yaml`` from rank 0: every output folder says how it was made."""
    from awm import dist

    if not dist.is_main():
        return None
    return save(cfg, Path(directory) / f"{name}_config.yaml")
