"""Typed, frozen configuration loaded from TOML with ``EC_SECTION__KEY`` overrides.

A node's configuration is a frozen dataclass whose fields are *sections*, each itself a
frozen dataclass of plain values (str, int, float, bool, Path, or tuples of those).
:func:`load_config` reads one TOML file, applies environment overrides such as
``EC_MQTT__PORT=1884``, converts and checks every value, and raises one
:class:`~edgecascade.device_sdk.errors.ConfigError` that lists every problem found. This module is the
only place in the project that reads the environment for configuration.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from edgecascade.device_sdk.errors import ConfigError

T = TypeVar("T")
ENV_PREFIX = "EC_"


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
    if path is not None:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        for name, section in raw.items():
            if not isinstance(section, dict):
                problems.append(f"{name}: expected a [{name}] table")
            else:
                data[name] = dict(section)
    for name, section in (overrides or {}).items():
        data.setdefault(name, {}).update(section)
    env = os.environ if env is None else env
    for key, value in env.items():
        if key.startswith(ENV_PREFIX) and "__" in key:
            section_name, _, field_name = key[len(ENV_PREFIX) :].partition("__")
            data.setdefault(section_name.lower(), {})[field_name.lower()] = value

    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    problems += [f"unknown section [{name}]" for name in data if name not in known]
    sections: dict[str, Any] = {}
    for name in known:
        try:
            sections[name] = _build_section(hints[name], name, data.get(name, {}), problems)
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems)
    return cls(**sections)


def _build_section(cls: Any, name: str, values: dict[str, Any], problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
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
    return cls(**kwargs)


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
