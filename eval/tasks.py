"""Tasks: what a model is asked, the tools it may call, and the calls a correct answer makes.

    {"id": "simple_python_12", "category": "simple_python",
     "messages": [{"role": "user", "content": "What's the weather in Paris in celsius?"}],
     "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {...}}}],
     "expected": [{"name": "get_weather", "arguments": {"city": ["Paris"], "unit": ["celsius", ""]}}]}

`load_tasks` checks every record once (keys, types, tool schemas, expected calls naming listed tools) and
compiles the validators, so verifying a trace later re-parses nothing. Errors name the file, line and task, for
any content: besides what `read_jsonl` refuses (bytes that are not UTF-8, numbers past Python's 4,300-digit limit,
nesting past its recursion limit), a record nested deeper than MAX_TASK_NESTING levels (the schema checkers
recurse) or holding text UTF-8 cannot store (a lone surrogate, a legal JSON escape) is refused here.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from eval.io import DistillError, read_jsonl
from eval.schema import SchemaError, ToolSpec, compile_tool

MAX_TASK_NESTING = 64  # lists/objects in one task record (BFCL's deepest: 10; the schema checkers recurse)


@dataclass
class Task:
    id: str
    category: str
    messages: list[dict]
    tools: list[dict]
    expected: list[dict]
    record: dict = field(repr=False)  # the task as read, extra keys included
    specs: dict[str, ToolSpec] = field(repr=False, default_factory=dict)
    matcher: object = field(repr=False, default=None)  # eval.match.compile_expected(...), built on load


def _fail(where: str, msg: str):
    raise DistillError(f"{where}: {msg}")


def task_from_dict(record: dict, where: str = "task") -> Task:
    """Validate one task record and compile it. `where` prefixes errors (e.g. 'tasks.jsonl:12')."""
    from eval.match import compile_expected

    if not isinstance(record, dict):
        _fail(where, "a task must be a JSON object")
    for key, typ in (("id", str), ("messages", list), ("tools", list), ("expected", list)):
        if key not in record:
            _fail(where, f"missing key {key!r}")
        if not isinstance(record[key], typ):
            _fail(where, f"key {key!r} must be a {typ.__name__}, got {type(record[key]).__name__}")
    tid = record["id"]
    problem = _json_problem(record)
    if problem is not None:
        _fail(f"{where} (task {tid[:100]!r})", problem)
    where = f"{where} (task {tid!r})"
    category = record.get("category", "default")
    if not isinstance(category, str):
        _fail(where, "key 'category' must be a string")
    if not record["messages"]:
        _fail(where, "key 'messages' is empty")
    for i, m in enumerate(record["messages"]):
        if not isinstance(m, dict) or "role" not in m:
            _fail(where, f"messages[{i}] must be an object with a 'role'")
    specs: dict[str, ToolSpec] = {}
    for i, tool in enumerate(record["tools"]):
        try:
            spec = compile_tool(tool)
        except SchemaError as e:
            _fail(where, f"tools[{i}]: {e}")
        if spec.name in specs:
            _fail(where, f"tools[{i}]: duplicate tool name {spec.name!r}")
        specs[spec.name] = spec
    for i, call in enumerate(record["expected"]):
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            _fail(where, f"expected[{i}] must be an object with a 'name'")
        if call["name"] not in specs:
            _fail(where, f"expected[{i}] calls {call['name']!r}, which is not among the task's tools")
        args = call.get("arguments", {})
        if not isinstance(args, dict) or not all(isinstance(v, list) for v in args.values()):
            _fail(where, f"expected[{i}].arguments must map each argument to a list of acceptable values")
    task = Task(
        id=tid,
        category=category,
        messages=record["messages"],
        tools=record["tools"],
        expected=record["expected"],
        record=record,
        specs=specs,
    )
    task.matcher = compile_expected(task.expected, specs)
    return task


def _json_problem(record: dict) -> str | None:
    """Why a decoded record cannot be checked and stored again (too deep, a lone surrogate), or None."""
    stack = [(record, "", 1)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_TASK_NESTING:
            return f"nested deeper than {MAX_TASK_NESTING} levels (at {path[1:][:120] or 'the top'})"
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, v in items:
            here = f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]"
            for text in (key, v):
                if isinstance(text, str) and not text.isascii():
                    try:
                        text.encode("utf-8")
                    except UnicodeEncodeError:
                        return f"text that UTF-8 cannot store (a lone surrogate such as \\ud800) at {here[1:][:120]}"
            if isinstance(v, (dict, list)):
                stack.append((v, here, depth + 1))
    return None


def load_tasks(path: str | os.PathLike) -> dict[str, Task]:
    """Read and check a tasks .jsonl file; return tasks by id, in file order."""
    tasks: dict[str, Task] = {}
    for lineno, record in read_jsonl(path):
        task = task_from_dict(record, f"{path}:{lineno}")
        if task.id in tasks:
            raise DistillError(f"{path}:{lineno}: duplicate task id {task.id!r}")
        tasks[task.id] = task
    if not tasks:
        raise DistillError(f"{path}: no tasks")
    return tasks


def file_fingerprint(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, 'sha256:<hex>' (recorded in reports, cards and fleet entries)."""
    h = hashlib.sha256()
    with open(Path(path), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()
