"""What a request brings, checked before a view uses it: body, JSON, path and query values.

- Bodies (:func:`read_body`) are read whole or refused with 413 beyond their limit, with a
  ``Content-Length`` or chunked, before any byte of them is used.
- JSON bodies (:func:`json_body`) are checked against a small schema. ``jsonschema`` is
  not a dependency, and the API's bodies are small flat objects, so this is the subset of
  JSON Schema they need: ``type``, ``properties``, ``required``,
  ``additionalProperties: false``, ``minLength``/``maxLength``, ``pattern`` and
  ``minimum``/``maximum``. Every problem is reported, each with its JSON path, so a client
  learns everything wrong with a request at once.
- Path parameters (:func:`bound_url_parameters`): every ``<int:…>`` of the app is at most
  :data:`MAX_INT` (what the database stores) and every ``<string>`` at most
  :data:`MAX_PATH_TEXT` characters; a value outside is no route (404), never a database
  error.
- Query values are read with the parsers :func:`bounded_int`, :func:`finite_float` and
  :func:`bounded_text` (each raises ValueError, which the view turns into a 400).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from flask import Flask, request
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, UnsupportedMediaType
from werkzeug.routing import IntegerConverter, Map, UnicodeConverter

MAX_INT = 2**63 - 1
"""Largest integer a path or query value may hold: SQLite's INTEGER, PostgreSQL's BIGINT."""
MAX_PATH_TEXT = 255
"""Longest text a path parameter may hold unless its route says less (a file name's limit)."""

Schema = dict[str, Any]

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def problems(value: Any, schema: Schema, path: str = "$") -> list[str]:
    """Every way ``value`` breaks ``schema``; empty when it conforms."""
    expected = schema.get("type")
    if expected is not None:
        ok = isinstance(value, _TYPES[expected])
        if expected in ("integer", "number") and isinstance(value, bool):
            ok = False  # JSON true is not a number
        if not ok:
            return [f"{path}: expected {expected}, got {_json_type(value)}"]
    found: list[str] = []
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            found.append(f"{path}: shorter than {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            found.append(f"{path}: longer than {schema['maxLength']} characters")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            found.append(f"{path}: does not match {schema['pattern']}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            found.append(f"{path}: less than {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            found.append(f"{path}: greater than {schema['maximum']}")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        found += [f"{path}.{name}: required" for name in schema.get("required", ()) if name not in value]
        for name, item in value.items():
            if name in properties:
                found += problems(item, properties[name], f"{path}.{name}")
            elif schema.get("additionalProperties", True) is False:
                found.append(f"{path}.{name}: unknown field")
    return found


def _json_type(value: Any) -> str:
    for name, types in _TYPES.items():
        if isinstance(value, types) and not (name in ("integer", "number") and isinstance(value, bool)):
            return name
    return type(value).__name__


def json_body(schema: Schema) -> Any:
    """The request's JSON body, checked against ``schema``.

    415 unless the content type is JSON; 413 (from Werkzeug) beyond the size limit; 400
    with a message naming every problem when it is not JSON or does not fit the schema.
    """
    if request.mimetype != "application/json":
        raise UnsupportedMediaType(
            f"expected Content-Type application/json, got {(request.mimetype or 'none')[:100]}"
        )
    raw = read_body()
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise BadRequest(f"body is not acceptable JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("body is not valid JSON: nested too deeply") from None
    found = problems(value, schema)
    if found:
        raise BadRequest("invalid request body: " + "; ".join(found))
    return value


def read_body(limit: int | None = None) -> bytes:
    """The whole request body; 413 when it is longer than ``limit`` (default: the request's limit).

    Werkzeug stops a body without ``Content-Length`` (chunked) at the limit and hands over
    what it read, so an oversized chunked body would arrive cut at the limit and be used as
    if it were whole. Reading one byte more tells a body at the limit from one beyond it.
    """
    if limit is None:
        limit = request.max_content_length
    if limit is None:
        return request.get_data(cache=False)
    declared = request.content_length
    if declared is not None and declared > limit:
        raise RequestEntityTooLarge(f"the body of {declared} bytes exceeds the limit of {limit}")
    request.max_content_length = limit + 1  # before the stream is opened: it is made with this limit
    data = request.get_data(cache=False)
    if len(data) > limit:
        raise RequestEntityTooLarge(f"the body exceeds the limit of {limit} bytes")
    return data


class _BoundedInt(IntegerConverter):
    """``<int:…>``: a non-negative integer of at most :data:`MAX_INT` unless the route says less."""

    def __init__(self, map: Map, *args: Any, **kwargs: Any) -> None:
        super().__init__(map, *args, **kwargs)
        self.max = MAX_INT if self.max is None else min(self.max, MAX_INT)


class _BoundedText(UnicodeConverter):
    """``<name>`` and ``<string:…>``: one path segment of at most :data:`MAX_PATH_TEXT` characters."""

    def __init__(
        self, map: Map, minlength: int = 1, maxlength: int | None = MAX_PATH_TEXT, length: int | None = None
    ) -> None:
        super().__init__(map, minlength, maxlength, length)


def bound_url_parameters(app: Flask) -> None:
    """Bound every path parameter of ``app``'s routes; call before any route is registered."""
    app.url_map.converters.update(int=_BoundedInt, string=_BoundedText, default=_BoundedText)


def query_arg(args: Any, name: str, parse: Callable[[str], Any], problems: list[str]) -> Any:
    """Query value ``name`` read by ``parse`` (None when absent or empty); a value it refuses
    adds a problem, so one 400 can name every bad parameter."""
    value = args.get(name)
    if value is None or value == "":
        return None
    try:
        return parse(value)
    except ValueError as exc:
        problems.append(f"{name}: cannot read {value[:40]!r} ({exc})")
        return None


def bounded_int(lo: int, hi: int) -> Callable[[str], int]:
    """A query value parser: a decimal integer in ``lo..hi`` (at most :data:`MAX_INT`)."""
    hi = min(hi, MAX_INT)

    def parse(text: str) -> int:
        if not re.fullmatch(r"-?[0-9]{1,19}", text) or not lo <= int(text) <= hi:
            raise ValueError(f"expected an integer in {lo}..{hi}")
        return int(text)

    return parse


def finite_float(text: str) -> float:
    """A query value parser: a finite number (no ``nan``, no ``inf``, nothing that overflows)."""
    try:
        value = float(text) if len(text) <= 64 else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError("expected a finite number")
    return value


def bounded_text(max_length: int, pattern: str | None = None) -> Callable[[str], str]:
    """A query value parser: text of 1..``max_length`` characters, matching ``pattern`` if given."""

    def parse(text: str) -> str:
        if not 0 < len(text) <= max_length or (pattern is not None and not re.fullmatch(pattern, text)):
            raise ValueError(
                f"expected at most {max_length} characters" + (f" matching {pattern}" if pattern else "")
            )
        return text

    return parse
