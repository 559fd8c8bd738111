"""JSON request bodies: parse within the size limit and check them against a small schema.

``jsonschema`` is not a dependency, and the API's bodies are small flat objects, so this
is the subset of JSON Schema they need: ``type``, ``properties``, ``required``,
``additionalProperties: false``, ``minLength``/``maxLength``, ``pattern`` and
``minimum``/``maximum``. Every problem is reported, each with its JSON path, so a client
learns everything wrong with a request at once.
"""

from __future__ import annotations

import json
import re
from typing import Any

from flask import request
from werkzeug.exceptions import BadRequest, UnsupportedMediaType

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
            f"expected Content-Type application/json, got {request.mimetype or 'none'}"
        )
    raw = request.get_data(cache=False)
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise BadRequest("body is not valid JSON: nested too deeply") from None
    found = problems(value, schema)
    if found:
        raise BadRequest("invalid request body: " + "; ".join(found))
    return value
