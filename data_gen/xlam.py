"""Tasks from xLAM/APIGen-style rows, so users can bring their own function-calling data.

    row   {"query": "Where can I find live giveaways for beta access?",
           "tools": "[{\"name\": \"live_giveaways_by_type\", \"description\": \"...\",
                       \"parameters\": {\"type\": {\"description\": \"...\", \"type\": \"str\", \"default\": \"game\"}}}]",
           "answers": "[{\"name\": \"live_giveaways_by_type\", \"arguments\": {\"type\": \"beta\"}}]"}
    task  {"id": "xlam_0", "category": "xlam", "messages": [{"role": "user", "content": "..."}],
           "tools": [{"type": "function", "function": {"name": "live_giveaways_by_type", "parameters":
                      {"type": "object", "properties": {"type": {"type": "string", ...}}, "required": [],
                       "additionalProperties": false}}}],
           "expected": [{"name": "live_giveaways_by_type", "arguments": {"type": ["beta"]}}]}

`tools` and `answers` may be JSON strings (as in the published dataset) or lists. A tool's `parameters` may be
xLAM's map of argument -> {type, description, default} with Python-style types ("str", "int, optional",
"List[int]", "Dict[str, Any]") or already a JSON Schema object. Each answered argument accepts exactly its value;
an optional argument the answer leaves out may be omitted or given its default.
"""

from __future__ import annotations

import argparse
import json
import re

from data_gen.bfcl import to_json_schema
from eval.io import DistillError, read_jsonl, write_jsonl
from eval.tasks import task_from_dict

_PY_TYPES = {
    "str": "string",
    "string": "string",
    "int": "integer",
    "integer": "integer",
    "float": "number",
    "number": "number",
    "bool": "boolean",
    "boolean": "boolean",
    "list": "array",
    "array": "array",
    "tuple": "array",
    "set": "array",
    "dict": "object",
    "object": "object",
}
_OPTIONAL = re.compile(r",\s*(optional|default\b.*)$", re.I)


def _json_field(row: dict, key: str, where: str):
    value = row.get(key)
    if value is None:
        raise DistillError(f"{where}: missing key {key!r}")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise DistillError(f"{where}: key {key!r} is a string but not valid JSON ({e.msg})") from None
    if not isinstance(value, list):
        raise DistillError(f"{where}: key {key!r} must be a list (or a JSON string of one)")
    return value


def python_type_to_schema(type_text: str) -> tuple[dict, bool]:
    """("List[int], optional") -> ({"type": "array", "items": {"type": "integer"}}, optional=True)."""
    text = type_text.strip()
    optional = bool(_OPTIONAL.search(text))
    text = _OPTIONAL.sub("", text).strip()
    m = re.fullmatch(r"Optional\[(.*)\]", text)
    if m:
        text, optional = m.group(1).strip(), True
    m = re.fullmatch(r"(\w+)\s*\[(.*)\]", text)
    base, inner = (m.group(1), m.group(2)) if m else (text, None)
    kind = _PY_TYPES.get(base.lower())
    schema: dict = {} if kind is None else {"type": kind}
    if kind == "array" and inner:
        item, _ = python_type_to_schema(inner.split(",")[0])
        if item:
            schema["items"] = item
    return schema, optional


def tool_to_openai(tool: dict, where: str) -> tuple[dict, dict]:
    """(OpenAI tool, {argument: default or None for optional arguments})."""
    if not isinstance(tool, dict):
        raise DistillError(f"{where}: a tool must be an object, got {type(tool).__name__}")
    if tool.get("type") == "function" and isinstance(tool.get("function"), dict):
        tool = tool["function"]
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise DistillError(f"{where}: a tool without a 'name'")
    params = tool.get("parameters") or {}
    if not isinstance(params, dict):
        raise DistillError(f"{where}: tool {name!r}: 'parameters' must be an object, got {type(params).__name__}")
    optional: dict = {}
    if params.get("type") in ("object", "dict") or "properties" in params:
        schema = to_json_schema(params, top=True)
        required = set(schema.get("required", []))
        for p, s in schema.get("properties", {}).items():
            if p not in required:
                optional[p] = s.get("default") if isinstance(s, dict) else None
    else:
        props, required = {}, []
        for p, spec in params.items():
            spec = spec if isinstance(spec, dict) else {"type": str(spec)}
            prop, is_optional = python_type_to_schema(str(spec.get("type", "")))
            if spec.get("description"):
                prop["description"] = spec["description"]
            if "default" in spec:
                prop["default"] = spec["default"]
                is_optional = True
            props[p] = prop
            if is_optional:
                optional[p] = spec.get("default")
            else:
                required.append(p)
        schema = {"type": "object", "properties": props, "required": required, "additionalProperties": False}
    fn = {"name": name, "description": tool.get("description", ""), "parameters": schema}
    return {"type": "function", "function": fn}, optional


def row_to_task(row: dict, index: int, category: str, prefix: str, where: str) -> dict:
    query = row.get("query")
    if not isinstance(query, str) or not query.strip():
        raise DistillError(f"{where}: missing or empty 'query'")
    tools, optionals = [], {}
    for t in _json_field(row, "tools", where):
        tool, optional = tool_to_openai(t, where)
        tools.append(tool)
        optionals[tool["function"]["name"]] = optional
    expected = []
    for i, ans in enumerate(_json_field(row, "answers", where)):
        if not isinstance(ans, dict) or not isinstance(ans.get("name"), str):
            raise DistillError(f"{where}: answers[{i}] must be an object with a 'name'")
        args = ans.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except (ValueError, RecursionError) as e:
                raise DistillError(f"{where}: answers[{i}].arguments is a string but not valid JSON "
                                   f"({getattr(e, 'msg', type(e).__name__)})") from None
        if not isinstance(args, dict):
            raise DistillError(f"{where}: answers[{i}].arguments must be an object (or a JSON string of one)")
        arguments = {k: [v] for k, v in args.items()}
        for p, default in optionals.get(ans["name"], {}).items():
            if p not in arguments:
                arguments[p] = [""] if default is None else [default, ""]
        expected.append({"name": ans["name"], "arguments": arguments})
    return {
        "id": str(row.get("id", f"{prefix}_{index}")),
        "category": category,
        "messages": [{"role": "user", "content": query}],
        "tools": tools,
        "expected": expected,
        "source": "xlam-jsonl",
    }


def import_xlam(path: str, category: str = "xlam", id_prefix: str | None = None) -> list[dict]:
    records = []
    first_line: dict[str, int] = {}
    for index, (lineno, row) in enumerate(read_jsonl(path)):
        where = f"{path}:{lineno}"
        record = row_to_task(row, index, category, id_prefix or category, where)
        task_from_dict(record, where)
        if record["id"] in first_line:
            raise DistillError(f"{where}: duplicate task id {record['id']!r} (first at line {first_line[record['id']]})")
        first_line[record["id"]] = lineno
        records.append(record)
    if not records:
        raise DistillError(f"{path}: no rows")
    return records


def import_xlam_cli(args) -> int:
    records = import_xlam(args.path, args.category, args.id_prefix)
    n = write_jsonl(args.out, records)
    print(f"wrote {n} tasks to {args.out} (category {args.category})")
    return 0


def add_parser(sources: argparse._SubParsersAction) -> None:
    """`distill import jsonl` (registered under `distill import`)."""
    j = sources.add_parser(
        "jsonl",
        help="tasks from xLAM/APIGen-style rows (query, tools, answers)",
        description="Convert rows in the xLAM/APIGen format ({\"query\": str, \"tools\": [...] or JSON string, "
        "\"answers\": [...] or JSON string}) into tasks. Tools may be in OpenAI form or xLAM's "
        "{name, description, parameters: {arg: {type, description}}} form; answers become the expected calls.",
    )
    j.add_argument("path", help="input .jsonl file")
    j.add_argument("--category", default="xlam", help="category written on every task (default: %(default)s)")
    j.add_argument("--id-prefix", default=None, help="task id prefix (default: the category)")
    j.add_argument("--out", required=True, help="output tasks .jsonl file (written atomically)")
    j.set_defaults(run=import_xlam_cli)
