"""Typed, frozen configuration loaded from TOML with ``EC_SECTION__KEY`` overrides.

A node's configuration is a frozen dataclass whose fields are *sections*, each itself a
frozen dataclass of plain values (str, int, float, bool, Path, or tuples of those).
:func:`load_config` reads one TOML file, applies environment overrides such as
``EC_MQTT__PORT=1884``, converts and checks every value, and raises one
:class:`~edgecascade.device_sdk.errors.ConfigError` that lists every problem found. This module is the
only place in the project that reads the environment for configuration.

A relative path written in a file (a ``Path`` setting, or the file part of a ``sqlite:///``
URL) is relative to that file's directory, so a site's files can move together; one from an
environment variable, an override or a default is relative to the working directory. A
setting whose field has :func:`must_exist` metadata names a file or directory that has to be there
when it is set: every missing one is listed in the same error.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from edgecascade.device_sdk.errors import ConfigError

T = TypeVar("T")
ENV_PREFIX = "EC_"
_EXISTS = "edgecascade.must_exist"  # field metadata key: "file" or "dir"
_SQLITE_URL = re.compile(r"^(sqlite(?:\+\w+)?:///)(?!/)(?!:memory:)(.+)$")  # three slashes: a relative file


def must_exist(kind: str) -> Mapping[str, str]:
    """Field metadata for a path that must name an existing ``kind`` ("file" or "dir") when set.

    Use as ``field(default=None, metadata=must_exist("file"))``. Only :func:`load_config`
    checks it (and only for values that were set, not defaults), so code and tests may
    still build a settings object for a file that is made later.
    """
    if kind not in ("file", "dir"):
        raise ValueError(f"must_exist takes 'file' or 'dir', got {kind!r}")
    return types.MappingProxyType({_EXISTS: kind})


@dataclasses.dataclass(frozen=True)
class MqttConfig:
    """Where and how to reach the MQTT broker, over TLS 1.2+ with a client certificate.

    ``ca_file`` is the CA that signed the broker's certificate (the broker's host name or IP
    must be in its SAN); ``cert_file``/``key_file`` are this node's client certificate,
    whose CN the broker takes as the MQTT username. Connecting without ``ca_file`` is
    refused (there is no plaintext mode). The files are checked when the config is built.
    """

    host: str = "127.0.0.1"
    port: int = 8883
    keepalive: int = 30
    qos: int = 1
    client_id: str = ""
    username: str = ""
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def __post_init__(self) -> None:
        problems = self._tls_problems()
        if not 0 < self.port < 65536:
            problems.append(f"mqtt.port must be in 1..65535, got {self.port}")
        if self.qos not in (0, 1, 2):
            problems.append(f"mqtt.qos must be 0, 1 or 2, got {self.qos}")
        if self.keepalive < 5:
            problems.append(f"mqtt.keepalive must be >= 5 s, got {self.keepalive}")
        if problems:
            raise ConfigError(problems)

    @property
    def tls(self) -> bool:
        """Whether TLS settings are present (connections without them are refused)."""
        return self.ca_file is not None

    def _tls_problems(self) -> list[str]:
        problems = []
        if (self.cert_file is None) != (self.key_file is None):
            problems.append("mqtt.cert_file and mqtt.key_file must be set together")
        if self.cert_file is not None and self.ca_file is None:
            problems.append("mqtt.ca_file is required with a client certificate")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                problems.append(f"mqtt.{name}: no such file {path}")
        return problems


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> T:
    """Build ``cls`` from a TOML file, then ``overrides``, then ``EC_SECTION__KEY`` env vars.

    ``env`` defaults to ``os.environ``; pass ``{}`` to ignore the environment.
    """
    data: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    if path is not None:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        base = Path(path).resolve().parent
        for name, section in raw.items():
            if not isinstance(section, dict):
                problems.append(f"{name}: expected a [{name}] table")
            else:
                data[name] = _relative_to(base, hints.get(name) if name in known else None, section)
    for name, section in (overrides or {}).items():
        data.setdefault(name, {}).update(section)
    env = os.environ if env is None else env
    for key, value in env.items():
        if key.startswith(ENV_PREFIX) and "__" in key:
            section_name, _, field_name = key[len(ENV_PREFIX) :].partition("__")
            data.setdefault(section_name.lower(), {})[field_name.lower()] = value

    problems += [f"unknown section [{name}]" for name in data if name not in known]
    sections: dict[str, Any] = {}
    for name in known:  # every section is checked, whatever the others' problems
        section_problems: list[str] = []
        try:
            sections[name] = _build_section(hints[name], name, data.get(name, {}), section_problems)
        except ConfigError as exc:
            section_problems += exc.problems
        problems += section_problems
    if problems:
        raise ConfigError(problems)
    return cls(**sections)


def _relative_to(base: Path, section_cls: Any, values: dict[str, Any]) -> dict[str, Any]:
    """The section's values with relative paths made relative to ``base`` (the file's directory)."""
    if section_cls is None or not dataclasses.is_dataclass(section_cls):
        return dict(values)
    hints = typing.get_type_hints(section_cls)
    resolved = dict(values)
    for key, value in values.items():
        tp = hints.get(key)
        if tp is None:
            continue
        if _is_path(tp):
            if isinstance(value, str) and value and not Path(value).is_absolute():
                resolved[key] = str(base / value)
            elif isinstance(value, list) and _is_path(_item_type(tp)):
                resolved[key] = [
                    str(base / v) if isinstance(v, str) and v and not Path(v).is_absolute() else v
                    for v in value
                ]
        elif isinstance(value, str) and (match := _SQLITE_URL.match(value)):
            resolved[key] = match.group(1) + str(base / match.group(2))
    return resolved


def _is_path(tp: Any) -> bool:
    """Whether a setting's type is a path: ``Path``, ``Path | None`` or ``tuple[Path, ...]``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_is_path(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is tuple:
        return _is_path(_item_type(tp))
    return tp is Path


def _item_type(tp: Any) -> Any:
    args = typing.get_args(tp)
    return args[0] if args else None


def _build_section(cls: Any, name: str, values: dict[str, Any], problems: list[str]) -> Any:
    """The section built from ``values``; its problems (all of them) are added to ``problems``."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            problems.append(f"{name}.{key}: unknown setting")
            continue
        try:
            kwargs[key] = _convert(hints[key], value)
        except (TypeError, ValueError) as exc:
            problems.append(f"{name}.{key}: {exc}")
    if problems:
        return None
    missing = []
    for key, value in kwargs.items():  # paths that must exist, when set
        kind = fields[key].metadata.get(_EXISTS)
        for item in value if isinstance(value, tuple) else (value,):
            if kind is not None and item is not None and not _exists(Path(item), kind):
                missing.append(f"{name}.{key}: no such {'file' if kind == 'file' else 'directory'} {item}")
    try:
        section = cls(**kwargs)
    except ConfigError as exc:  # the section's own checks, listed beside the missing paths
        problems += missing + exc.problems
        return None
    problems += missing
    return None if missing else section


def _exists(path: Path, kind: str) -> bool:
    return path.is_file() if kind == "file" else path.is_dir()


def _convert(tp: Any, value: Any) -> Any:
    """Convert a TOML or environment value to the annotated type, or raise ValueError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or value == "":
            return None
        return _convert(args[0], value)
    if origin is tuple:
        (item,) = typing.get_args(tp)[:1]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ValueError(f"expected a list, got {value!r}")
        return tuple(_convert(item, v) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        return float(value)
    if tp is Path:
        if not isinstance(value, str | Path):
            raise ValueError(f"expected a path, got {value!r}")
        return Path(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported setting type {tp!r}")
