"""Tasks from the Berkeley Function Calling Leaderboard data shipped in the `bfcl-eval` package.

    BFCL  {"id": "simple_python_0", "question": [[{"role": "user", "content": "Find the area ..."}]],
           "function": [{"name": "calculate_triangle_area", "parameters": {"type": "dict", "properties": {
               "base": {"type": "integer"}, "unit": {"type": "string"}}, "required": ["base"]}}]}
          + possible_answer {"id": "simple_python_0", "ground_truth": [{"calculate_triangle_area": {"base": [10],
               "unit": ["units", ""]}}]}
    task  {"id": "simple_python_0", "category": "simple_python", "messages": [...],
           "tools": [{"type": "function", "function": {"name": ..., "parameters": {"type": "object", ...,
                      "additionalProperties": false}}}],
           "expected": [{"name": "calculate_triangle_area", "arguments": {"base": [10], "unit": ["units", ""]}}],
           "source": "bfcl-eval==2026.3.23"}

The data is read from the installed package (`pip install --no-deps bfcl-eval`), never copied into this
repository. BFCL's parameter types become JSON Schema: dict -> object, float -> number, tuple -> array, any -> no
type; its non-standard `optional` flag is dropped (optionality is `required`); top-level parameters get
`additionalProperties: false`, since BFCL refuses arguments outside the schema.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm import tqdm

from eval.bfcl_data import bfcl_data_dir, bfcl_version
from eval.io import DistillError, write_jsonl
from eval.tasks import task_from_dict

# Single-turn categories whose answers BFCL checks by AST (Python) or by "no call" (irrelevance).
SUPPORTED_CATEGORIES = (
    "simple_python",
    "multiple",
    "parallel",
    "parallel_multiple",
    "irrelevance",
    "live_simple",
    "live_multiple",
    "live_parallel",
    "live_parallel_multiple",
    "live_irrelevance",
)
ALIASES = {"simple": "simple_python"}
_TYPES = {"dict": "object", "float": "number", "tuple": "array"}


def to_json_schema(schema: dict, top: bool = False) -> dict:
    """One BFCL parameter schema as JSON Schema (Draft 2020-12)."""
    out: dict = {}
    for key, value in schema.items():
        if key == "type":
            if value != "any":
                out["type"] = _TYPES.get(value, value)
        elif key == "properties" and isinstance(value, dict):
            out["properties"] = {p: to_json_schema(s) for p, s in value.items()}
        elif key == "items" and isinstance(value, dict):
            out["items"] = to_json_schema(value)
        elif key == "optional":
            continue
        else:
            out[key] = value
    if top:
        out.setdefault("properties", {})
        out["additionalProperties"] = False
    return out


def to_tool(function: dict) -> dict:
    fn = {"name": function["name"], "description": function.get("description", "")}
    fn["parameters"] = to_json_schema(function.get("parameters", {"type": "dict", "properties": {}}), top=True)
    return {"type": "function", "function": fn}


def convert_entry(entry: dict, answer: dict | None, category: str, source: str) -> dict:
    turns = entry["question"]
    if len(turns) != 1:
        raise DistillError(f"BFCL entry {entry['id']!r} has {len(turns)} turns; only single-turn categories are supported")
    expected = []
    if answer is not None:
        for call in answer["ground_truth"]:
            ((name, args),) = call.items()
            expected.append({"name": name, "arguments": args})
    return {
        "id": entry["id"],
        "category": category,
        "messages": turns[0],
        "tools": [to_tool(f) for f in entry["function"]],
        "expected": expected,
        "source": source,
    }


def _read_lines(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def parse_categories(spec: str) -> list[str]:
    if spec.strip() == "all":
        return list(SUPPORTED_CATEGORIES)
    cats = []
    for c in (c.strip() for c in spec.split(",") if c.strip()):
        c = ALIASES.get(c, c)
        if c not in SUPPORTED_CATEGORIES:
            raise DistillError(f"unknown BFCL category {c!r}; supported: {', '.join(SUPPORTED_CATEGORIES)}, or 'all'")
        cats.append(c)
    if not cats:
        raise DistillError("no categories given")
    return cats


def import_bfcl(categories: list[str], limit: int | None = None) -> list[dict]:
    """BFCL entries of the given categories as task records, each checked by the task loader."""
    data = bfcl_data_dir()
    source = f"bfcl-eval=={bfcl_version()}"
    records = []
    for cat in categories:
        entries = _read_lines(data / f"BFCL_v4_{cat}.json")
        answers = {}
        if "irrelevance" not in cat:
            answers = {a["id"]: a for a in _read_lines(data / "possible_answer" / f"BFCL_v4_{cat}.json")}
        for entry in tqdm(entries[:limit], desc=f"import {cat}", unit="task", leave=False):
            if "irrelevance" not in cat and entry["id"] not in answers:
                raise DistillError(f"BFCL entry {entry['id']!r} has no possible answer in the bfcl-eval data")
            record = convert_entry(entry, answers.get(entry["id"]), cat, source)
            task_from_dict(record, f"BFCL_v4_{cat}.json")  # fail here, naming the entry, not at scoring time
            records.append(record)
    return records


def import_bfcl_cli(args) -> int:
    categories = parse_categories(args.categories)
    records = import_bfcl(categories, args.limit)
    n = write_jsonl(args.out, records)
    counts = {c: sum(r["category"] == c for r in records) for c in categories}
    print(f"wrote {n} tasks to {args.out} ({', '.join(f'{c}: {k}' for c, k in counts.items())}; {records[0]['source']})")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    return value


def add_parser(sources: argparse._SubParsersAction) -> None:
    """`distill import bfcl` (registered under `distill import`)."""
    b = sources.add_parser(
        "bfcl",
        help="tasks from the BFCL data shipped in the bfcl-eval package",
        description="Convert Berkeley Function Calling Leaderboard categories (read from the installed "
        "bfcl-eval package; install it with `pip install --no-deps bfcl-eval`) into tasks. BFCL parameter types "
        "become JSON Schema (dict->object, float->number, tuple->array); ids and categories stay BFCL's.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="categories: " + ", ".join(SUPPORTED_CATEGORIES),
    )
    b.add_argument(
        "--categories",
        default="simple_python,multiple,parallel,parallel_multiple,irrelevance",
        help="comma-separated BFCL categories, or 'all' (default: %(default)s)",
    )
    b.add_argument("--limit", type=_positive_int, default=None, help="keep at most this many tasks per category "
                   "(the first ones in BFCL's order)")
    b.add_argument("--out", required=True, help="output tasks .jsonl file (written atomically)")
    b.set_defaults(run=import_bfcl_cli)
