"""JSON Schema checks of tool definitions and of call arguments.

    spec = compile_tool({"type": "function", "function": {"name": "get_weather", "parameters": {...}}})
    spec.validate({"city": "Paris"})   -> None (valid) or "unit: 'kelvin' is not one of ['celsius', ...]"

A tool's `parameters` is checked once against the Draft 2020-12 meta-schema with `jsonschema` (clear errors with
the path inside the schema), then compiled once with `jsonschema-rs` and reused for every call: the compiled
validator checks a call in about 0.6 us, `jsonschema`'s pure-Python one in about 20 us, which alone is as slow as
BFCL's whole check. Identical schemas (BFCL's live categories reuse tools) share one compiled validator.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field

import jsonschema
import jsonschema_rs

from eval.parse import clip

# BFCL-style match semantics per JSON Schema type: the Python type a value must have (see eval/match.py).
# A property without a single type is treated like BFCL's "any", which BFCL checks as a string.
PY_TYPES = {"string": str, "integer": int, "number": float, "boolean": bool, "array": list, "object": dict}


class SchemaError(ValueError):
    """A tool definition that is not a valid function schema; the message says which tool and where."""


@dataclass(frozen=True)
class ParamType:
    py: type  # the type BFCL's matcher expects (str for untyped, like BFCL's "any")
    item: type | None  # for arrays with typed items: the item type (one level deep, as BFCL checks)
    number: bool  # JSON Schema "number": an int is accepted and compared as a float


@dataclass(frozen=True)
class ToolSpec:
    name: str
    parameters: dict
    required: tuple[str, ...]
    properties: dict
    param_types: dict[str, ParamType]
    validator: object = field(repr=False)  # jsonschema_rs validator

    def validate(self, arguments: dict) -> str | None:
        """None when the arguments pass the schema, else the first error as 'path: message', cut to a few
        hundred characters (the validator's message quotes the failing value whole)."""
        try:
            if self.validator.is_valid(arguments):
                return None
            # evaluate() reports errors as plain dicts, about 3x cheaper than building ValidationError objects
            for err in self.validator.evaluate(arguments).errors():
                path = err["instanceLocation"].lstrip("/").replace("/", ".")
                return clip(f"{path}: {err['error']}" if path else err["error"])
        except (ValueError, TypeError, UnicodeError, RecursionError) as e:
            # what jsonschema-rs raises for values JSON cannot carry (eval.parse.calls_problem rules them out
            # before a check; arguments built in Python may still hold them)
            return clip(f"arguments cannot be checked against the schema ({type(e).__name__}: {e})")
        return "invalid"  # is_valid and evaluate disagree only on validator bugs


def _param_type(schema: dict) -> ParamType:
    t = schema.get("type") if isinstance(schema, dict) else None
    py = PY_TYPES.get(t, str) if isinstance(t, str) else str
    item = None
    if t == "array" and isinstance(schema.get("items"), dict):
        it = schema["items"].get("type")
        item = PY_TYPES.get(it, str) if isinstance(it, str) else str
    return ParamType(py=py, item=item, number=(t == "number"))


# One meta-schema validator, and one compiled validator per distinct schema: BFCL's live categories repeat the
# same tools across hundreds of tasks, and checking a schema costs milliseconds. The cache is bounded (least
# recently used out) because a long-lived process (`distill fleet serve`) sees new schemas with every request.
# By hand rather than functools.lru_cache: a schema's errors name the tool, which is not part of the key.
_META = jsonschema.Draft202012Validator(jsonschema.Draft202012Validator.META_SCHEMA)
COMPILED_CACHE_SIZE = 1024  # compiled tools keep their own validator: this only shares identical schemas
_COMPILED: OrderedDict[str, object] = OrderedDict()


def _checked_and_compiled(name: str, params: dict):
    key = json.dumps(params, sort_keys=True, default=str)
    v = _COMPILED.get(key)
    if v is not None:
        _COMPILED.move_to_end(key)
        return v
    # jsonschema-rs answers "is this a valid schema?" in microseconds; jsonschema (8 ms a schema) is asked only
    # for the readable error of one that is not.
    try:
        error = None if jsonschema_rs.meta.is_valid(params) else jsonschema.exceptions.best_match(_META.iter_errors(params))
    except (RecursionError, ValueError) as e:  # jsonschema recurses per level; jsonschema-rs stops at 255 levels
        raise SchemaError(f"tool {name!r}: schema cannot be checked ({type(e).__name__}: {str(e)[:100]})") from None
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise SchemaError(f"tool {name!r}: invalid JSON Schema at parameters/{where}: {error.message}")
    try:
        v = jsonschema_rs.Draft202012Validator(params)
    except Exception as e:  # jsonschema-rs refuses a few schemas jsonschema accepts (e.g. unsupported regexes)
        raise SchemaError(f"tool {name!r}: schema cannot be compiled: {e}") from None
    _COMPILED[key] = v
    if len(_COMPILED) > COMPILED_CACHE_SIZE:
        _COMPILED.popitem(last=False)
    return v


def compile_tool(tool: dict) -> ToolSpec:
    """Check one OpenAI-format tool and compile its parameter schema. Raises SchemaError saying what is wrong."""
    if not isinstance(tool, dict):
        raise SchemaError(f"a tool must be an object, got {type(tool).__name__}")
    fn = tool.get("function", tool) if tool.get("type", "function") == "function" else None
    if not isinstance(fn, dict):
        raise SchemaError(f"tool of type {tool.get('type')!r} is not a function tool")
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise SchemaError("tool without a 'name'")
    params = fn.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(params, dict):
        raise SchemaError(f"tool {name!r}: 'parameters' must be an object schema")
    if params.get("type", "object") != "object":
        raise SchemaError(f"tool {name!r}: parameters.type must be 'object', got {params.get('type')!r}")
    validator = _checked_and_compiled(name, params)
    props = params.get("properties", {})
    required = tuple(params.get("required", ()))
    return ToolSpec(
        name=name,
        parameters=params,
        required=required,
        properties=props,
        param_types={p: _param_type(s) for p, s in props.items()},
        validator=validator,
    )
